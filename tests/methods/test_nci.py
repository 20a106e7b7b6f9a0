"""NCI: hand-computed proximity + L1 filter, ASCOOD's z-scored head, and the edge cases."""
from __future__ import annotations

import pickle

import numpy as np
import pytest

import methods
from methods.base import Head, Outputs
from methods.nci import NciScorer

IDENTITY = Head(np.eye(2), np.zeros(2))


def outs(features, head=IDENTITY):
    features = np.asarray(features, dtype=np.float64)
    return Outputs(head.logits(features), features, head=head)


# Training features with mean μ_G = (1, 1).
TRAIN = outs([[1.0, 0.0], [3.0, 0.0], [0.0, 2.0], [0.0, 2.0]])


def test_mean_is_the_training_mean():
    np.testing.assert_allclose(NciScorer().fit(TRAIN).mean_, [1.0, 1.0])


def test_hand_value_predicted_class_0():
    # h = (4, 1): ŷ = 0, h − μ = (3, 0), ⟨(3, 0), (1, 0)⟩/3 = 1; ‖h‖₁ = 5
    assert NciScorer(0.1).fit(TRAIN).score(outs([[4.0, 1.0]]))[0] == pytest.approx(1.0 + 0.1 * 5)


def test_hand_value_predicted_class_1():
    # h = (2, 3): ŷ = 1, h − μ = (1, 2), ⟨(1, 2), (0, 1)⟩/√5 = 2/√5; ‖h‖₁ = 5
    assert NciScorer(0.1).fit(TRAIN).score(outs([[2.0, 3.0]]))[0] == pytest.approx(2 / np.sqrt(5) + 0.5)


def test_proximity_can_be_negative():
    # h = (0.5, 0.2): ŷ = 0, h − μ = (−0.5, −0.8): ⟨·, (1, 0)⟩/‖·‖ = −0.5/√0.89
    assert NciScorer(0.0).fit(TRAIN).score(outs([[0.5, 0.2]]))[0] == pytest.approx(-0.5 / np.sqrt(0.89))


def test_weight_norm_is_not_divided_out():
    # OpenOOD's form: W = diag(2, 1), h = (4, 1): ŷ = 0, ⟨(3, 0), (2, 0)⟩/3 = 2
    head = Head(np.diag([2.0, 1.0]), np.zeros(2))
    train = outs(TRAIN.features, head)
    assert NciScorer(0.0).fit(train).score(outs([[4.0, 1.0]], head))[0] == pytest.approx(2.0)


def test_l1_norm_counts_negative_entries():
    # h = (4, −1): ŷ = 0, h − μ = (3, −2): 3/√13; ‖h‖₁ = 5
    assert NciScorer(1.0).fit(TRAIN).score(outs([[4.0, -1.0]]))[0] == pytest.approx(3 / np.sqrt(13) + 5)


def test_alpha_zero_is_the_proximity_alone():
    assert NciScorer(0.0).fit(TRAIN).score(outs([[4.0, 1.0]]))[0] == pytest.approx(1.0)


def test_feature_at_the_global_mean_scores_its_filter_alone():
    assert NciScorer(0.1).fit(TRAIN).score(outs([[1.0, 1.0]]))[0] == pytest.approx(0.2)


def test_feature_at_the_global_mean_is_finite():
    assert np.isfinite(NciScorer(0.1).fit(TRAIN).score(outs([[1.0, 1.0]]))).all()


def test_ties_in_the_logits_take_the_first_class():
    # h = (3, 3): logits tie, ŷ = 0: ⟨(2, 2), (1, 0)⟩/√8 = 1/√2
    assert NciScorer(0.0).fit(TRAIN).score(outs([[3.0, 3.0]]))[0] == pytest.approx(1 / np.sqrt(2))


def test_reads_the_predicted_class_from_the_logits():
    # the cached logits say class 1 although the head would say class 0
    x = Outputs(np.array([[0.0, 1.0]]), np.array([[4.0, 1.0]]), head=IDENTITY)
    assert NciScorer(0.0).fit(TRAIN).score(x)[0] == pytest.approx(0.0)


def test_zscored_head_measures_proximity_in_fc_input_space():
    rng = np.random.default_rng(0)
    head = Head(rng.normal(size=(3, 5)), rng.normal(size=3), zscore_sigma=2.0)
    train = outs(np.abs(rng.normal(size=(20, 5))), head)
    test = outs(np.abs(rng.normal(size=(6, 5))), head)

    def standardise(h):  # ASCOOD's fc input, written out
        centred = h - h.mean(axis=1, keepdims=True)
        return 2.0 * centred / (centred.std(axis=1, ddof=1, keepdims=True) + 1e-6)

    mean = standardise(train.features).mean(axis=0)
    expected = []
    for h, z in zip(test.features, test.logits, strict=True):
        u = standardise(h[None])[0] - mean
        expected.append(np.dot(u, head.weight[np.argmax(z)]) / np.linalg.norm(u) + 0.01 * np.abs(h).sum())
    np.testing.assert_allclose(NciScorer(0.01).fit(train).score(test), expected, rtol=1e-9)


def test_fit_without_a_head_raises():
    with pytest.raises(ValueError, match="final layer"):
        NciScorer().fit(Outputs(np.zeros((2, 2)), np.ones((2, 2))))


def test_fit_without_outputs_raises():
    with pytest.raises(ValueError, match="nci needs fit outputs"):
        NciScorer().fit(None)


def test_score_before_fit_raises():
    with pytest.raises(RuntimeError, match="before fit"):
        NciScorer().score(outs([[1.0, 1.0]]))


def test_head_width_mismatch_raises():
    with pytest.raises(ValueError, match="2-d features"):
        NciScorer().fit(Outputs(np.zeros((2, 2)), np.ones((2, 3)), head=IDENTITY))


@pytest.mark.parametrize("bad", [-0.1, float("nan"), float("inf"), True, "small"])
def test_bad_alpha_raises(bad):
    with pytest.raises(ValueError, match="alpha"):
        NciScorer(bad)


def test_pickles_with_its_fit():
    scorer = pickle.loads(pickle.dumps(NciScorer(0.1).fit(TRAIN)))
    assert scorer.score(outs([[4.0, 1.0]]))[0] == pytest.approx(1.5)


def test_method_default_is_openoods():
    assert methods.get("nci").own_knobs()["alpha"].default == 1e-4


def test_method_passes_alpha():
    method = methods.get("nci")
    assert method.scorer(method.resolve({"alpha": 0.01})).alpha == 0.01
