"""Temperature scaling: T* against an analytic optimum and a dense grid, the bounds, one class, the score."""
import math

import numpy as np
import pytest
from scipy.special import logsumexp

from methods.base import Outputs
from methods.tempscale import T_LOWER, T_UPPER, TempScale, TempScaleScorer


def outs(logits, labels=None):
    logits = np.asarray(logits, dtype=np.float64)
    return Outputs(logits, np.zeros((len(logits), 2)), None if labels is None else np.asarray(labels))


def grid_nll(z, y, temperatures):
    """NLL of softmax(z/T) at every T, written out in the test."""
    return np.array([np.mean(logsumexp(z / t, axis=1) - z[np.arange(len(y)), y] / t) for t in temperatures])


def test_fit_split_is_id_validation():
    assert (TempScaleScorer.needs_fit, TempScaleScorer.fit_split) == (True, "id_val")


def test_analytic_optimum():
    # logits (1, 0) on every sample, 80% labelled 0: NLL(β) = log(1 + e^β) − .8β, minimal at σ(β) = .8,
    # β = log 4, T* = 1 / log 4
    scorer = TempScaleScorer().fit(outs(np.tile([1.0, 0.0], (10, 1)), [0] * 8 + [1] * 2))
    assert scorer.temperature_ == pytest.approx(1 / math.log(4), rel=1e-5)


def test_dense_grid_optimum_on_random_logits():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 4, 300)
    z = rng.normal(size=(300, 4)) + 2.5 * np.eye(4)[y] * rng.uniform(0, 2, (300, 1))
    grid = np.exp(np.linspace(np.log(0.05), np.log(20), 20001))
    nll = grid_nll(z, y, grid)
    scorer = TempScaleScorer().fit(outs(z, y))
    assert scorer.temperature_ == pytest.approx(grid[nll.argmin()], rel=1e-3)


def test_fitted_nll_is_the_grid_minimum():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 3, 200)
    z = 4 * rng.normal(size=(200, 3)) + 3 * np.eye(3)[y]
    grid = np.exp(np.linspace(np.log(T_LOWER), np.log(T_UPPER), 20001))
    scorer = TempScaleScorer().fit(outs(z, y))
    assert scorer.nll_ <= grid_nll(z, y, grid).min() + 1e-9


def test_perfect_separation_goes_to_the_lower_bound():
    # every sample classified correctly: NLL falls monotonically as T → 0
    z = np.array([[3.0, 0.0], [0.0, 2.0], [1.0, -1.0]])
    scorer = TempScaleScorer().fit(outs(z, [0, 1, 0]))
    assert scorer.temperature_ == pytest.approx(T_LOWER)


def _saturated_scores():
    z = np.array([[3.0, 0.0], [0.0, 2.0], [1.0, -1.0]])
    scorer = TempScaleScorer().fit(outs(z, [0, 1, 0]))  # T* = 0.01
    return scorer.score(outs([[30.0, 0.0], [20.0, 0.0], [10.0, 0.0]]))  # p_max rounds to 1.0 for all three


def test_perfect_separation_scores_are_finite():
    assert np.isfinite(_saturated_scores()).all()


def test_perfect_separation_scores_still_rank():
    s = _saturated_scores()
    assert s[0] > s[1] > s[2]


def test_all_wrong_validation_goes_to_the_upper_bound():
    # every sample confidently wrong: NLL falls as T grows (towards log C)
    z = np.array([[3.0, 0.0], [0.0, 2.0]])
    scorer = TempScaleScorer().fit(outs(z, [1, 0]))
    assert scorer.temperature_ == pytest.approx(T_UPPER)


def test_one_class_gives_unit_temperature():
    scorer = TempScaleScorer().fit(outs([[1.0], [2.0]], [0, 0]))
    assert scorer.temperature_ == 1.0


def test_one_class_scores_are_finite_constants():
    scorer = TempScaleScorer().fit(outs([[1.0], [2.0]], [0, 0]))
    np.testing.assert_array_equal(scorer.score(outs([[5.0], [-5.0]])), [0.0, 0.0])


def test_score_is_the_log_odds_of_the_calibrated_msp_by_hand():
    # T* = 1/log 4 (as above): z/T = (log 4, 0) → p_max = .8, log-odds log 4;  (0, 0) → .5, log-odds 0
    scorer = TempScaleScorer().fit(outs(np.tile([1.0, 0.0], (10, 1)), [0] * 8 + [1] * 2))
    np.testing.assert_allclose(scorer.score(outs([[1.0, 0.0], [0.0, 0.0]])), [math.log(4), 0.0], atol=1e-4)


def test_confidence_is_the_calibrated_msp_by_hand():
    scorer = TempScaleScorer().fit(outs(np.tile([1.0, 0.0], (10, 1)), [0] * 8 + [1] * 2))
    np.testing.assert_allclose(scorer.confidence(outs([[1.0, 0.0], [0.0, 0.0]])), [0.8, 0.5], atol=1e-5)


def test_score_ranks_as_the_confidence():
    rng = np.random.default_rng(2)
    y = rng.integers(0, 5, 100)
    scorer = TempScaleScorer().fit(outs(rng.normal(size=(100, 5)) + 2 * np.eye(5)[y], y))
    test = outs(rng.normal(scale=2.0, size=(50, 5)))
    np.testing.assert_array_equal(np.argsort(scorer.score(test)), np.argsort(scorer.confidence(test)))


def test_fit_needs_labels():
    with pytest.raises(ValueError, match="labels"):
        TempScaleScorer().fit(outs([[1.0, 0.0]]))


def test_fit_refuses_labels_out_of_range():
    with pytest.raises(ValueError, match="labels"):
        TempScaleScorer().fit(outs([[1.0, 0.0]], [2]))


def test_score_before_fit_fails():
    with pytest.raises(RuntimeError, match="before fit"):
        TempScaleScorer().score(outs([[1.0, 0.0]]))


@pytest.mark.parametrize("bounds", [(0.0, 1.0), (2.0, 1.0), (1.0, float("inf")), (1.0,), "ab"])
def test_bad_bounds_are_refused(bounds):
    with pytest.raises(ValueError, match="bounds"):
        TempScaleScorer(bounds=bounds)


def test_method_has_no_knobs():
    assert TempScale.knobs == ()
