"""fDBD: boundary distances and normalisers against hand values and a direct loop; degenerate boundaries."""
import numpy as np
import pytest

from methods.base import Head, Outputs
from methods.fdbd import FLOOR, Fdbd, FdbdScorer
from orchestrator.knobs import KnobError

# ‖w0 − w1‖ = √2, ‖w0 − w2‖ = ‖w1 − w2‖ = 1
W = np.array([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]])
B = np.array([0.0, 0.0, 0.5])
TRAIN = np.array([[1.0, 1.0], [3.0, 1.0]])  # mean (2, 1)
# x = (3, 1): z = (3, 1, .5), ŷ = 0, distances 2/√2 and 2.5/1;  x = (0, 2): z = (0, 2, .5), ŷ = 1, 2/√2 and 1.5/1
X = np.array([[3.0, 1.0], [0.0, 2.0]])
MEAN_DISTANCE = np.array([(np.sqrt(2) + 2.5) / 2, (np.sqrt(2) + 1.5) / 2])


def outs(features, head):
    h = np.asarray(features, dtype=np.float64)
    return Outputs(head.logits(h), h, None, None, head)


def fitted(normalizer="train_mean", head=None, train=TRAIN):
    head = head or Head(W, B)
    return FdbdScorer(normalizer).fit(outs(train, head))


def loop_scores(x, weight, bias, mean):
    """The paper's score written out: mean over j ≠ ŷ of the boundary distance, over ‖x − mean‖."""
    out = []
    for row in x:
        z = weight @ row + bias
        top = int(np.argmax(z))
        d = [abs((weight[top] - weight[j]) @ row + bias[top] - bias[j]) / np.linalg.norm(weight[top] - weight[j])
             for j in range(len(z)) if j != top]
        out.append(np.mean(d) / np.linalg.norm(row - mean))
    return np.array(out)


def test_train_mean_normaliser_by_hand():
    # ‖(3, 1) − (2, 1)‖ = 1, ‖(0, 2) − (2, 1)‖ = √5
    expected = MEAN_DISTANCE / [1.0, np.sqrt(5)]
    np.testing.assert_allclose(fitted().score(outs(X, Head(W, B))), expected, atol=1e-12)


def test_norm_normaliser_by_hand():
    # ‖(3, 1)‖ = √10, ‖(0, 2)‖ = 2
    expected = MEAN_DISTANCE / [np.sqrt(10), 2.0]
    np.testing.assert_allclose(fitted("norm").score(outs(X, Head(W, B))), expected, atol=1e-12)


def test_no_normaliser_is_the_mean_distance():
    np.testing.assert_allclose(fitted("none").score(outs(X, Head(W, B))), MEAN_DISTANCE, atol=1e-12)


def test_matches_a_direct_loop_on_random_data():
    rng = np.random.default_rng(0)
    w, b = rng.normal(size=(5, 8)), rng.normal(size=5)
    train, x = np.abs(rng.normal(size=(40, 8))), np.abs(rng.normal(size=(10, 8)))
    head = Head(w, b)
    got = fitted(head=head, train=train).score(outs(x, head))
    np.testing.assert_allclose(got, loop_scores(x, w, b, train.mean(axis=0)), rtol=1e-10)


def test_standardised_head_measures_in_the_fc_input_space():
    rng = np.random.default_rng(1)
    w, b, sigma = rng.normal(size=(3, 4)), rng.normal(size=3), 1.5
    head = Head(w, b, sigma)
    train, x = np.abs(rng.normal(size=(20, 4))), np.abs(rng.normal(size=(6, 4)))
    u_train, u = head.fc_input(train), head.fc_input(x)
    got = fitted(head=head, train=train).score(outs(x, head))
    np.testing.assert_allclose(got, loop_scores(u, w, b, u_train.mean(axis=0)), rtol=1e-10)


def test_a_head_other_than_the_fitted_one_uses_its_own_boundaries():
    rng = np.random.default_rng(2)
    w, b = rng.normal(size=(4, 3)), rng.normal(size=4)
    train, x = np.abs(rng.normal(size=(10, 3))), np.abs(rng.normal(size=(5, 3)))
    scorer = FdbdScorer().fit(outs(train, Head(w[::-1].copy(), b[::-1].copy())))
    np.testing.assert_allclose(scorer.score(outs(x, Head(w, b))), loop_scores(x, w, b, train.mean(axis=0)),
                               rtol=1e-10)


def test_identical_weight_rows_leave_that_boundary_out():
    # w0 = w1: classes 0 and 1 differ by the bias only; x = (2, 0): z = (2, 3, 0), ŷ = 1; only j = 2 counts:
    # |3 − 0| / ‖(1, 0) − (0, 1)‖ = 3/√2
    head = Head(np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]]), np.array([0.0, 1.0, 0.0]))
    np.testing.assert_allclose(fitted("none", head=head).score(outs([[2.0, 0.0]], head)), [3 / np.sqrt(2)],
                               atol=1e-12)


def test_all_rows_identical_score_zero():
    head = Head(np.ones((3, 2)), np.array([0.0, 1.0, 2.0]))
    np.testing.assert_array_equal(fitted(head=head).score(outs([[2.0, 0.0], [0.0, 5.0]], head)), [0.0, 0.0])


def test_one_class_scores_zero():
    head = Head(np.array([[1.0, 2.0]]), np.array([0.0]))
    np.testing.assert_array_equal(fitted(head=head).score(outs([[2.0, 0.0]], head)), [0.0])


def test_a_feature_at_the_training_mean_is_finite():
    assert np.isfinite(fitted().score(outs([[2.0, 1.0]], Head(W, B)))).all()


def test_a_feature_at_the_training_mean_divides_by_the_floor():
    # x = (2, 1): z = (2, 1, .5), ŷ = 0; distances 1/√2 and 1.5
    expected = (1 / np.sqrt(2) + 1.5) / 2 / FLOOR
    np.testing.assert_allclose(fitted().score(outs([[2.0, 1.0]], Head(W, B))), [expected], rtol=1e-12)


def test_a_zero_feature_under_the_norm_normaliser_is_finite():
    assert np.isfinite(fitted("norm").score(outs([[0.0, 0.0]], Head(W, B)))).all()


def test_far_from_boundaries_scores_above_near():
    s = fitted("none").score(outs([[10.0, 0.0], [1.0, 0.9]], Head(W, B)))
    assert s[0] > s[1]


def test_fit_without_a_head_is_refused():
    with pytest.raises(ValueError, match="final layer"):
        FdbdScorer().fit(Outputs(np.zeros((2, 3)), np.zeros((2, 2))))


def test_score_before_fit_fails():
    with pytest.raises(RuntimeError, match="before fit"):
        FdbdScorer().score(outs(X, Head(W, B)))


@pytest.mark.parametrize("normalizer", [True, "mean", None, "L2"])
def test_bad_normalizer_is_refused(normalizer):
    with pytest.raises(ValueError, match="normalizer"):
        FdbdScorer(normalizer)


def test_resolve_refuses_a_bad_normalizer():
    with pytest.raises(KnobError, match="normalizer"):
        Fdbd().resolve({"normalizer": "mean"})


def test_default_is_the_papers_training_mean():
    assert Fdbd().resolve({})["normalizer"] == "train_mean"
