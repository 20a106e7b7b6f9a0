"""The leaderboard's statistics against hand-computed values."""
import pytest

from orchestrator.benchmark.leaderboard import Row, build, csv_text, markdown, paired_bootstrap


def test_bootstrap_mean_is_the_mean_difference():
    assert paired_bootstrap([0.1, 0.3])[0] == pytest.approx(0.2)


def test_bootstrap_interval_of_two_seeds_spans_their_differences():
    # Resampling 2 seeds gives means 0.1 (p=1/4), 0.2 (1/2), 0.3 (1/4): the 2.5% and 97.5% quantiles are the ends.
    _, low, high = paired_bootstrap([0.1, 0.3])
    assert (low, high) == pytest.approx((0.1, 0.3))


def test_bootstrap_of_one_seed_is_a_point():
    assert paired_bootstrap([0.05]) == pytest.approx((0.05, 0.05, 0.05))


def test_bootstrap_interval_contains_the_mean():
    mean, low, high = paired_bootstrap([0.02, -0.01, 0.04, 0.03, 0.0])
    assert low <= mean <= high


def test_bootstrap_is_seeded():
    assert paired_bootstrap([0.02, -0.01, 0.04]) == paired_bootstrap([0.02, -0.01, 0.04])


def _rows():
    base = Row("msp", "msp", "digits", None, {0: {"near/auroc": 0.90, "far/auroc": 0.60},
                                               1: {"near/auroc": 0.80, "far/auroc": 0.70}})
    new = Row("energy", "energy", "digits", "msp", {0: {"near/auroc": 0.95, "far/auroc": 0.65},
                                                    1: {"near/auroc": 0.81, "far/auroc": 0.70},
                                                    2: {"near/auroc": 0.99, "far/auroc": 0.99}})
    return build([base, new])


def test_mean_and_sample_std_over_seeds():
    base = _rows()[0]
    assert base.stats["near_auroc"] == pytest.approx((0.85, 0.0707107), abs=1e-6)


def test_n_counts_distinct_seeds():
    assert [r.n for r in _rows()] == [2, 3]


def test_difference_is_paired_on_common_seeds_only():
    # seed 2 has no baseline: the differences are 0.05 and 0.01
    mean, low, high, n = _rows()[1].diffs["near_auroc"]
    assert (mean, low, high, n) == pytest.approx((0.03, 0.01, 0.05, 2))


def test_a_baseline_row_has_no_difference():
    assert _rows()[0].diffs == {}


def test_markdown_names_the_fpr_convention():
    assert "Near FPR@95 (openood, ↓)" in markdown(_rows(), "openood", "t", "cmd")


def test_markdown_shows_the_interval():
    assert "+3.00 [+1.00, +5.00]" in markdown(_rows(), "classic", "t", "cmd")


def test_csv_has_one_line_per_row():
    assert len(csv_text(_rows(), "classic").strip().splitlines()) == 3
