"""OpenMax: the Weibull tail fit and CDF against SciPy, the recalibration by hand, degenerate classes, knobs."""
import math
import pickle

import numpy as np
import pytest
from scipy.stats import weibull_min

import methods
from methods.base import Outputs
from methods.openmax import (
    EUCOS_EUCLID_WEIGHT,
    TRANSLATION,
    OpenMaxScorer,
    fit_weibull_tail,
    mav_distances,
    weibull_cdf,
)


def _outs(logits, labels=None):
    logits = np.asarray(logits, dtype=np.float64)
    return Outputs(logits, np.zeros((len(logits), 2)), None if labels is None else np.asarray(labels))


def _clusters(n_per_class=40, n_classes=3, seed=0, spread=0.5):
    """Logits of a well-separated toy classifier: class c's logit vectors around 5·e_c, all correctly classified."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(n_classes), n_per_class)
    z = 5.0 * np.eye(n_classes)[labels] + spread * rng.normal(size=(len(labels), n_classes))
    return z, labels


# ------------------------------------------------------------------------------------------ Weibull CDF and fit
def test_weibull_cdf_is_the_closed_form():
    d, k, lam, shift = 0.7, 3.5, 2.0, 1.1
    want = 1.0 - math.exp(-(((d + shift) / lam) ** k))
    assert weibull_cdf(np.array([d]), k, lam, shift)[0] == pytest.approx(want, rel=1e-12)


def test_weibull_cdf_matches_scipy_weibull_min():
    d = np.linspace(-2.0, 6.0, 17)
    k, lam, shift = 2.3, 3.0, 1.5
    np.testing.assert_allclose(weibull_cdf(d, k, lam, shift), weibull_min.cdf(d + shift, k, scale=lam), atol=1e-14)


def test_weibull_cdf_is_zero_below_the_translated_origin():
    assert weibull_cdf(np.array([-5.0]), 2.0, 1.0, 1.0)[0] == 0.0


def _tail(seed=1, n=20):
    return np.sort(np.random.default_rng(seed).gamma(4.0, 1.0, 200))[-n:]


def test_tail_fit_shift_is_libmr_translation():
    tail = _tail()
    assert fit_weibull_tail(tail)[2] == pytest.approx(TRANSLATION - tail.min())


def test_tail_fit_matches_scipy_weibull_min_fit():
    tail = _tail()
    shape, scale, shift = fit_weibull_tail(tail)
    ref_shape, _, ref_scale = weibull_min.fit(tail + shift, floc=0)
    assert shape == pytest.approx(ref_shape, rel=1e-4)
    assert scale == pytest.approx(ref_scale, rel=1e-9)


def test_tail_fit_maximises_the_likelihood():
    tail = _tail(seed=2)
    shape, scale, shift = fit_weibull_tail(tail)
    y = tail + shift
    best = weibull_min.logpdf(y, shape, scale=scale).sum()
    for factor in (0.99, 1.01):
        assert best > weibull_min.logpdf(y, shape * factor, scale=scale).sum()
        assert best > weibull_min.logpdf(y, shape, scale=scale * (1 + (factor - 1) * 1e-5)).sum()


def test_tail_fit_with_a_small_translation_matches_scipy():
    # SciPy solves the same likelihood equation to a looser tolerance (rel. 1.5e-5 on the shape here)
    tail = _tail(seed=3)
    shape, scale, shift = fit_weibull_tail(tail, translation=1.0)
    ref_shape, _, ref_scale = weibull_min.fit(tail + shift, floc=0)
    np.testing.assert_allclose([shape, scale], [ref_shape, ref_scale], rtol=1e-4)


def test_tail_fit_solves_the_likelihood_equations():
    # ∂/∂k: Σ yᵏ ln y / Σ yᵏ − 1/k − mean(ln y) = 0;  ∂/∂λ: λᵏ = mean(yᵏ)
    tail = _tail(seed=3)
    k, lam, shift = fit_weibull_tail(tail, translation=1.0)
    y = tail + shift
    assert (y**k * np.log(y)).sum() / (y**k).sum() - 1 / k - np.log(y).mean() == pytest.approx(0.0, abs=1e-12)
    assert lam**k == pytest.approx(np.mean(y**k), rel=1e-12)


def test_tail_fit_keeps_a_tiny_spread():
    # SciPy's generic fit loses this one (shape ~340); the log1p form keeps a sharp, finite Weibull
    tail = 5.0 + 1e-8 * np.random.default_rng(4).random(20)
    shape, scale, shift = fit_weibull_tail(tail)
    assert np.isfinite(shape) and shape > 1e10
    w = weibull_cdf(np.array([tail.min() - 1e-6, tail.max() + 1e-6]), shape, scale, shift)
    np.testing.assert_allclose(w, [0.0, 1.0], atol=1e-9)


def test_tail_of_identical_distances_is_a_step_not_nan():
    shape, scale, shift = fit_weibull_tail(np.full(20, 0.3))
    assert math.isinf(shape) and np.isfinite(scale) and np.isfinite(shift)


def test_tail_of_one_distance_is_a_step():
    assert math.isinf(fit_weibull_tail([0.0])[0])


# ------------------------------------------------------------------------------------------ distances
def test_euclidean_distance_by_hand():
    assert mav_distances(np.array([3.0, 4.0]), np.zeros(2), "euclidean") == pytest.approx(5.0)


def test_cosine_distance_by_hand():
    # cos(z, μ) = (1·1 + 1·0)/(√2·1) = 1/√2
    assert mav_distances(np.array([1.0, 1.0]), np.array([1.0, 0.0]), "cosine") == pytest.approx(1 - 2 ** -0.5)


def test_eucos_distance_by_hand():
    z, mu = np.array([1.0, 1.0]), np.array([1.0, 0.0])
    want = EUCOS_EUCLID_WEIGHT * 1.0 + (1 - 2 ** -0.5)  # ‖z − μ‖ = 1
    assert mav_distances(z, mu, "eucos") == pytest.approx(want)


def test_cosine_distance_of_a_zero_vector_is_one():
    assert mav_distances(np.zeros(3), np.array([1.0, 2.0, 3.0]), "cosine") == pytest.approx(1.0)


# ------------------------------------------------------------------------------------------ fit
def test_mav_averages_only_correctly_classified_samples():
    z = np.array([[2.0, 0.0], [4.0, 0.0], [0.0, 9.0], [0.0, 3.0]])
    labels = np.array([0, 0, 0, 1])  # the third sample is class 0 but predicted 1: left out
    scorer = OpenMaxScorer().fit(_outs(z, labels))
    np.testing.assert_allclose(scorer.mavs_[0], [3.0, 0.0])


def test_counts_of_correct_samples_per_class():
    z = np.array([[2.0, 0.0], [4.0, 0.0], [0.0, 9.0], [0.0, 3.0]])
    scorer = OpenMaxScorer().fit(_outs(z, [0, 0, 0, 1]))
    np.testing.assert_array_equal(scorer.counts_, [2, 1])


def test_tail_is_the_largest_distances_of_the_class():
    z, labels = _clusters(n_per_class=50)
    scorer = OpenMaxScorer(tail_size=7, distance="euclidean").fit(_outs(z, labels))
    zc = z[labels == 1]
    d = np.linalg.norm(zc - zc.mean(axis=0), axis=1)
    want = fit_weibull_tail(np.sort(d)[-7:])
    np.testing.assert_allclose([scorer.shape_[1], scorer.scale_[1], scorer.shift_[1]], want)


def test_a_class_with_fewer_samples_than_the_tail_uses_them_all():
    z, labels = _clusters(n_per_class=6)
    scorer = OpenMaxScorer(tail_size=20, distance="euclidean").fit(_outs(z, labels))
    zc = z[labels == 2]
    want = fit_weibull_tail(np.linalg.norm(zc - zc.mean(axis=0), axis=1))
    np.testing.assert_allclose([scorer.shape_[2], scorer.scale_[2], scorer.shift_[2]], want)


def test_a_class_with_one_correct_sample_is_a_step_at_distance_zero():
    z, labels = _clusters(n_per_class=10)
    keep = np.r_[np.flatnonzero(labels != 2), np.flatnonzero(labels == 2)[:1]]
    scorer = OpenMaxScorer().fit(_outs(z[keep], labels[keep]))
    w = scorer.cdf(np.array([2, 2]), np.array([0.0, 1e-9]))
    np.testing.assert_array_equal(w, [0.0, 1.0])


def test_a_class_without_correct_samples_is_always_outside():
    z, labels = _clusters(n_per_class=10)
    keep = labels != 2
    scorer = OpenMaxScorer().fit(_outs(z[keep], labels[keep]))
    assert scorer.empty_classes_ == [2]
    assert scorer.cdf(np.array([2]), np.array([0.0]))[0] == 1.0


def test_scores_stay_finite_with_degenerate_and_empty_classes():
    z, labels = _clusters(n_per_class=10)
    train = np.r_[z[labels == 0], np.tile(z[labels == 1][:1], (5, 1))]  # class 1: five identical vectors
    scorer = OpenMaxScorer().fit(_outs(train, np.r_[np.zeros(10), np.ones(5)].astype(int)))
    assert np.isfinite(scorer.score(_outs(z))).all()


def test_identical_distances_give_a_step_in_the_scorer():
    z = np.tile([[4.0, 0.0]], (5, 1))
    scorer = OpenMaxScorer().fit(_outs(np.r_[z, [[0.0, 4.0]]], [0, 0, 0, 0, 0, 1]))
    np.testing.assert_array_equal(scorer.cdf(np.array([0, 0]), np.array([0.0, 0.5])), [0.0, 1.0])


# ------------------------------------------------------------------------------------------ recalibration by hand
Z_HAND = np.array([3.0, 1.0, -2.0])
LN2 = math.log(2.0)


def _hand_scorer(**kwargs) -> OpenMaxScorer:
    """Fitted parameters set by hand: euclidean distances 1, 2, 3 of Z_HAND to the MAVs of classes 0, 1, 2, and
    exponential class models W(d) = 1 − 2^(−d), so that W = 0.5, 0.75, 0.875."""
    scorer = OpenMaxScorer(distance="euclidean", **kwargs)
    scorer.mavs_ = Z_HAND + np.array([[1.0, 0, 0], [0, 2.0, 0], [0, 0, 3.0]])
    scorer.shape_ = np.ones(3)
    scorer.scale_ = np.full(3, 1 / LN2)
    scorer.shift_ = np.zeros(3)
    scorer.threshold_ = np.zeros(3)
    return scorer


def _one_minus_p_unknown(v0, v):
    e0 = math.exp(v0)
    return 1 - e0 / (e0 + sum(math.exp(x) for x in v))


def test_hand_cdf_values():
    np.testing.assert_allclose(_hand_scorer().cdf(np.arange(3), np.array([1.0, 2.0, 3.0])), [0.5, 0.75, 0.875])


def test_recalibration_by_hand_authors_weights():
    # α = 3, weights (α + 1 − r)/α = 1, 2/3, 1/3 on ranks 0, 1, 2:
    # ω = 1 − 0.5 = 0.5;  1 − (2/3)(0.75) = 0.5;  1 − (1/3)(0.875) = 17/24
    v0, v = _hand_scorer().recalibrated(Z_HAND[None, :])
    np.testing.assert_allclose(v[0], [1.5, 0.5, -2 * 17 / 24])
    assert v0[0] == pytest.approx(3 * 0.5 + 1 * 0.5 + (-2) * (7 / 24))


def test_score_by_hand_authors_weights():
    want = _one_minus_p_unknown(1.5 + 0.5 - 14 / 24, [1.5, 0.5, -34 / 24])
    assert _hand_scorer().score(_outs(Z_HAND[None, :]))[0] == pytest.approx(want, rel=1e-12)


def test_recalibration_by_hand_paper_weights():
    # weights (α − r)/α = 2/3, 1/3, 0:  ω = 1 − (2/3)(0.5) = 2/3;  1 − (1/3)(0.75) = 0.75;  1
    v0, v = _hand_scorer(rank_weights="paper").recalibrated(Z_HAND[None, :])
    np.testing.assert_allclose(v[0], [2.0, 0.75, -2.0])
    assert v0[0] == pytest.approx(3 / 3 + 0.25)


def test_alpha_rank_one_revises_only_the_top_class():
    v0, v = _hand_scorer(alpha_rank=1).recalibrated(Z_HAND[None, :])
    np.testing.assert_allclose(v[0], [1.5, 1.0, -2.0])
    assert v0[0] == pytest.approx(1.5)


def test_alpha_rank_is_clamped_to_the_class_count():
    scores = [_hand_scorer(alpha_rank=a).score(_outs(Z_HAND[None, :]))[0] for a in (3, 50)]
    assert scores[0] == scores[1]


def test_default_alpha_rank_is_min_of_classes_and_ten():
    assert (OpenMaxScorer().alpha(3), OpenMaxScorer().alpha(100)) == (3, 10)


def test_a_negative_logit_moves_up_and_lowers_the_unknown_logit():
    # the paper's z_c·ω_c: class 2's logit −2 becomes −2·17/24 > −2 and adds −2·7/24 to v̂_0
    v0, v = _hand_scorer().recalibrated(Z_HAND[None, :])
    assert v[0, 2] > Z_HAND[2] and v0[0] < 3 * 0.5 + 1 * 0.5


def test_ranks_follow_the_logits_not_the_class_index():
    # the same logits permuted: the top logit's class gets the top weight
    scorer = _hand_scorer(alpha_rank=1)
    z = np.array([[1.0, 3.0, -2.0]])
    scorer.mavs_ = z + np.array([[1.0, 0, 0], [0, 2.0, 0], [0, 0, 3.0]])
    v0, v = scorer.recalibrated(z)
    np.testing.assert_allclose(v[0], [1.0, 3.0 * 0.25, -2.0])  # class 1 is top: ω = 1 − W(2) = 0.25


def test_log_odds_score_is_the_log_odds_of_the_probability():
    z, labels = _clusters()
    p = OpenMaxScorer().fit(_outs(z, labels)).score(_outs(z[:10] * 0.5))
    lo = OpenMaxScorer(score="log_odds").fit(_outs(z, labels)).score(_outs(z[:10] * 0.5))
    np.testing.assert_allclose(lo, np.log(p / (1 - p)), rtol=1e-9)


def test_matches_a_per_sample_loop_of_the_reference_algorithm():
    # OpenOOD's / the authors' loop, written out with SciPy's Weibull CDF on the fitted parameters
    z, labels = _clusters(n_per_class=30, n_classes=4, spread=1.0)
    scorer = OpenMaxScorer(tail_size=10, alpha_rank=3).fit(_outs(z, labels))
    test = np.random.default_rng(5).normal(size=(25, 4)) * 3
    want = []
    for x in test:
        ranked = np.argsort(x)[::-1][:3]
        alpha_weights = [(3 + 1 - i) / 3 for i in range(1, 4)]
        ranked_alpha = np.zeros(4)
        ranked_alpha[ranked] = alpha_weights
        modified, unknown = [], 0.0
        for c in range(4):
            mu = scorer.mavs_[c]
            dist = np.linalg.norm(x - mu) / 200 + 1 - x @ mu / (np.linalg.norm(x) * np.linalg.norm(mu))
            w = weibull_min.cdf(dist + scorer.shift_[c], scorer.shape_[c], scale=scorer.scale_[c])
            modified.append(x[c] * (1 - w * ranked_alpha[c]))
            unknown += x[c] - modified[-1]
        want.append(_one_minus_p_unknown(unknown, modified))
    np.testing.assert_allclose(scorer.score(_outs(test)), want, rtol=1e-9, atol=1e-12)


def test_one_class():
    z = np.random.default_rng(6).normal(size=(30, 1)) + 3
    scorer = OpenMaxScorer().fit(_outs(z, np.zeros(30, dtype=int)))
    assert np.isfinite(scorer.score(_outs(z))).all()


def test_samples_near_their_mav_score_above_far_ones():
    z, labels = _clusters()
    scorer = OpenMaxScorer().fit(_outs(z, labels))
    near = scorer.score(_outs(5.0 * np.eye(3)))
    far = scorer.score(_outs(np.array([[5.0, 5.0, 0.0], [2.0, 2.0, 2.0], [20.0, -10.0, 0.0]])))
    assert near.min() > far.max()


# ------------------------------------------------------------------------------------------ errors and knobs
@pytest.mark.parametrize("value", [0, -1, 2.5, True, "20"])
def test_bad_tail_size_is_refused(value):
    with pytest.raises(ValueError, match="tail_size"):
        OpenMaxScorer(tail_size=value)


@pytest.mark.parametrize("value", [0, -3, 1.5, False])
def test_bad_alpha_rank_is_refused(value):
    with pytest.raises(ValueError, match="alpha_rank"):
        OpenMaxScorer(alpha_rank=value)


def test_bad_distance_is_refused():
    with pytest.raises(ValueError, match="distance"):
        OpenMaxScorer(distance="manhattan")


@pytest.mark.parametrize("value", [-0.1, float("nan"), True])
def test_bad_euclid_weight_is_refused(value):
    with pytest.raises(ValueError, match="euclid_weight"):
        OpenMaxScorer(euclid_weight=value)


def test_bad_rank_weights_are_refused():
    with pytest.raises(ValueError, match="rank_weights"):
        OpenMaxScorer(rank_weights="linear")


def test_bad_score_is_refused():
    with pytest.raises(ValueError, match="score"):
        OpenMaxScorer(score="odds")


def test_fit_needs_labels():
    with pytest.raises(ValueError, match="labels"):
        OpenMaxScorer().fit(_outs(np.eye(3)))


def test_score_before_fit_is_refused():
    with pytest.raises(RuntimeError, match="before fit"):
        OpenMaxScorer().score(_outs(np.eye(3)))


def test_a_different_class_count_is_refused():
    z, labels = _clusters()
    with pytest.raises(ValueError, match="3 classes"):
        OpenMaxScorer().fit(_outs(z, labels)).score(_outs(np.zeros((2, 4))))


def test_registered_with_its_defaults_and_pickles():
    method = methods.get("openmax")
    scorer = method.scorer(method.resolve({}))
    assert (scorer.tail_size, scorer.alpha_rank, scorer.distance) == (20, None, "eucos")
    z, labels = _clusters()
    scorer.fit(_outs(z, labels))
    copy = pickle.loads(pickle.dumps(scorer))
    np.testing.assert_array_equal(copy.score(_outs(z)), scorer.score(_outs(z)))


def test_knob_values_reach_the_scorer():
    method = methods.get("openmax")
    scorer = method.scorer(method.resolve({"tail_size": 5, "alpha_rank": 2, "distance": "euclidean"}))
    assert (scorer.tail_size, scorer.alpha_rank, scorer.distance) == (5, 2, "euclidean")
