"""RMDS: hand-computed relative Mahalanobis scores, OpenOOD's computation as a reference, and the edge cases."""
from __future__ import annotations

import pickle

import numpy as np
import pytest

import methods
from methods.base import Outputs
from methods.rmds import RmdsScorer


def outs(features, labels=None):
    features = np.asarray(features, dtype=np.float64)
    if features.ndim == 1:
        features = features[:, None]
    return Outputs(np.zeros((len(features), 2)), features, None if labels is None else np.asarray(labels))


# 1-d training set: class 0 = {0, 2}, class 1 = {4, 6}. μ_0 = 1, μ_1 = 5, within-class Σ = (1+1+1+1)/4 = 1;
# global mean 3, Σ_0 = (9+1+1+9)/4 = 5.
TRAIN = outs([0.0, 2.0, 4.0, 6.0], [0, 0, 1, 1])


def test_score_at_a_class_mean():
    # MD = (0, 16), MD_0 = (1 − 3)²/5 = 0.8: S = 0.8 − 0
    assert RmdsScorer().fit(TRAIN).score(outs([1.0]))[0] == pytest.approx(0.8)


def test_score_at_the_global_mean():
    # MD = (4, 4), MD_0 = 0: S = −4
    assert RmdsScorer().fit(TRAIN).score(outs([3.0]))[0] == pytest.approx(-4.0)


def test_score_far_away():
    # MD = (81, 25), MD_0 = 49/5: S = 9.8 − 25
    assert RmdsScorer().fit(TRAIN).score(outs([10.0]))[0] == pytest.approx(9.8 - 25.0)


def test_score_is_minus_the_smallest_relative_distance():
    scorer = RmdsScorer().fit(TRAIN)
    x = outs([-1.0, 2.5, 7.0])
    relative = scorer.class_distances(x) - scorer.background_distances(x)[:, None]
    np.testing.assert_allclose(scorer.score(x), -relative.min(axis=1))


def test_class_distances_hand_values():
    np.testing.assert_allclose(RmdsScorer().fit(TRAIN).class_distances(outs([1.0])), [[0.0, 16.0]], atol=1e-12)


def test_background_distance_hand_value():
    assert RmdsScorer().fit(TRAIN).background_distances(outs([1.0]))[0] == pytest.approx(0.8)


def test_a_class_with_one_training_sample():
    # class 2 = {20}: its mean is its sample and it adds nothing to Σ = 4/5; μ_0 = 6.4,
    # Σ_0 = (6.4² + 4.4² + 2.4² + 0.4² + 13.6²)/5 = 50.24. At h = 20: MD_2 = 0, MD_0 = 13.6²/50.24.
    train = outs([0.0, 2.0, 4.0, 6.0, 20.0], [0, 0, 1, 1, 2])
    assert RmdsScorer().fit(train).score(outs([20.0]))[0] == pytest.approx(13.6**2 / 50.24)


def test_a_class_with_one_training_sample_in_the_shared_covariance():
    # same set: MD_0-class at h = 1 is (1 − 1)²/0.8 = 0, MD_1 at h = 6 is (6 − 5)²/0.8 = 1.25
    train = outs([0.0, 2.0, 4.0, 6.0, 20.0], [0, 0, 1, 1, 2])
    assert RmdsScorer().fit(train).class_distances(outs([6.0]))[0, 1] == pytest.approx(1.25)


def test_matches_openood_computation():
    # OpenOOD: sklearn EmpiricalCovariance (pinvh precision) on class-centred and on globally centred features,
    # one class at a time: conf = max_c (−MD_c + MD_0).
    from sklearn.covariance import EmpiricalCovariance

    rng = np.random.default_rng(0)
    labels = np.repeat([0, 1, 2], 20)
    h = rng.normal(size=(60, 5)) + labels[:, None] * 1.5
    test = rng.normal(size=(15, 5)) * 2
    means = np.stack([h[labels == c].mean(0) for c in range(3)])
    precision = EmpiricalCovariance().fit(np.concatenate([h[labels == c] - means[c] for c in range(3)])).precision_
    whole = h.mean(0)
    whole_precision = EmpiricalCovariance().fit(h - whole).precision_
    expected = []
    for x in test:
        md0 = (x - whole) @ whole_precision @ (x - whole)
        expected.append(max(-(x - m) @ precision @ (x - m) + md0 for m in means))
    np.testing.assert_allclose(RmdsScorer().fit(outs(h, labels)).score(outs(test)), expected, rtol=1e-8)


def test_a_constant_feature_does_not_fail():
    train = outs(np.c_[[0.0, 2.0, 4.0, 6.0], np.full(4, 7.0)], [0, 0, 1, 1])
    assert np.isfinite(RmdsScorer().fit(train).score(outs([[1.0, 7.0], [3.0, 100.0]]))).all()


def test_a_constant_feature_adds_nothing():
    # the constant direction has no training variance: the pseudo-inverse ignores it (the 1-d scores remain)
    train = outs(np.c_[[0.0, 2.0, 4.0, 6.0], np.full(4, 7.0)], [0, 0, 1, 1])
    np.testing.assert_allclose(RmdsScorer().fit(train).score(outs([[1.0, 7.0], [3.0, 100.0]])), [0.8, -4.0])


def test_all_zero_features_score_zero():
    train = outs(np.zeros((6, 3)), [0, 0, 1, 1, 2, 2])
    np.testing.assert_array_equal(RmdsScorer().fit(train).score(outs(np.zeros((2, 3)))), [0.0, 0.0])


def test_more_dimensions_than_samples_is_finite():
    rng = np.random.default_rng(1)
    train = outs(rng.normal(size=(4, 10)), [0, 0, 1, 1])
    assert np.isfinite(RmdsScorer().fit(train).score(outs(rng.normal(size=(3, 10))))).all()


def test_one_class_scores_zero():
    # μ_1 = μ_0 and Σ = Σ_0: every relative distance is 0
    train = outs([[0.0, 1.0], [2.0, 0.0], [4.0, 5.0]], [3, 3, 3])
    np.testing.assert_allclose(RmdsScorer().fit(train).score(outs([[1.0, 1.0], [9.0, -2.0]])), [0.0, 0.0],
                               atol=1e-9)


def test_labels_need_not_be_contiguous():
    train = outs([0.0, 2.0, 4.0, 6.0], [7, 7, 3, 3])
    assert RmdsScorer().fit(train).score(outs([1.0]))[0] == pytest.approx(0.8)


def test_fit_without_labels_raises():
    with pytest.raises(ValueError, match="labels"):
        RmdsScorer().fit(outs([0.0, 1.0]))


def test_fit_without_outputs_raises():
    with pytest.raises(ValueError, match="rmds needs fit outputs"):
        RmdsScorer().fit(None)


def test_score_before_fit_raises():
    with pytest.raises(RuntimeError, match="before fit"):
        RmdsScorer().score(outs([1.0]))


def test_feature_width_mismatch_raises():
    with pytest.raises(ValueError, match="1-d features"):
        RmdsScorer().fit(TRAIN).score(outs([[1.0, 2.0]]))


def test_pickles_with_its_fit():
    scorer = pickle.loads(pickle.dumps(RmdsScorer().fit(TRAIN)))
    assert scorer.score(outs([1.0]))[0] == pytest.approx(0.8)


def test_method_has_no_knobs():
    assert methods.get("rmds").knobs == ()


def test_method_builds_its_scorer():
    method = methods.get("rmds")
    assert isinstance(method.scorer(method.resolve({})), RmdsScorer)
