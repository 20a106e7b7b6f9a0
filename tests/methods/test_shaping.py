"""Feature-shaping methods (react, ash, scale, dice, vra) and their shared helpers (methods/shaping.py): values
computed by hand on 4-d features and a 3-class head, each logit score, ASCOOD's z-scored head, percentile 0 / 100,
all-zero and constant features, ties at the threshold, the sweep's sorted activations, pickling, bad knobs."""
from __future__ import annotations

import pickle

import numpy as np
import pytest

import methods
from methods.ash import AshScorer
from methods.base import Head, HeadScorer, Outputs
from methods.dice import DiceScorer
from methods.react import ReactScorer
from methods.scale import ScaleScorer
from methods.shaping import (
    MAX_EXPONENT,
    SORTED_ACTIVATIONS,
    kept_count,
    percentiles_of,
    sharpening,
    sorted_percentile,
    top_k_mask,
    top_k_sum,
)
from methods.vra import VraScorer

NAMES = ("react", "ash", "scale", "dice", "vra")

# The head: logits = [h0, h1 + 1, h2 + h3 − 1].
W = np.array([[1.0, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 1]])
B = np.array([0.0, 1, -1])
HEAD = Head(W, B)
# Training activations 0 … 7 (n = 8): the p-th percentile is 7·p/100 (linear interpolation), e.g. 90 → 6.3.
TRAIN = np.arange(8.0).reshape(2, 4)
E = np.e


def outs(features, head=HEAD) -> Outputs:
    features = np.asarray(features)
    features = features if features.dtype.kind == "f" else features.astype(np.float64)  # float32 stays float32
    return Outputs(np.zeros((len(features), 3)), features, None, None, head)


def energy_of(*logits) -> float:
    return float(np.log(sum(np.exp(z) for z in logits)))


def by_hand(logit_rows, score):
    """energy / msp / maxlogit of each row, written out."""
    out = []
    for row in logit_rows:
        e = [np.exp(z) for z in row]
        out.append({"energy": np.log(sum(e)), "msp": max(e) / sum(e), "maxlogit": max(row)}[score])
    return np.array(out)


def fitted(scorer, train=TRAIN, head=HEAD):
    return scorer.fit(outs(train, head))


# ------------------------------------------------------------------------------------------ helpers
def test_kept_count_is_the_authors_rule():
    assert [kept_count(4, p) for p in (0, 25, 50, 90, 100)] == [4, 3, 2, 0, 0]


def test_kept_count_rounds_half_to_even():
    # D·p/100 = 1.5 → 2 (NumPy's round), 2.5 → 2
    assert (kept_count(6, 25), kept_count(4, 62.5)) == (4, 2)


def test_top_k_mask_keeps_lowest_indices_among_ties():
    np.testing.assert_array_equal(top_k_mask(np.array([[2.0, 5, 2, 2]]), 2), [[True, True, False, False]])


def test_top_k_mask_keeps_exactly_k_with_many_ties():
    mask = top_k_mask(np.array([[0.0, 0, 0, 0, 0, 1], [3, 3, 3, 3, 3, 3]]), 3)
    np.testing.assert_array_equal(mask, [[True, True, False, False, False, True], [True, True, True, False, False, False]])


def test_top_k_mask_k_zero_and_all():
    h = np.array([[1.0, 2, 3]])
    assert (top_k_mask(h, 0).sum(), top_k_mask(h, 3).sum(), top_k_mask(h, 5).sum()) == (0, 3, 3)


def test_top_k_sum_by_hand():
    np.testing.assert_allclose(top_k_sum(np.array([[1.0, 4, 2, 3], [2, 5, 2, 2]]), 2), [7, 7])


def test_sharpening_is_one_where_nothing_kept():
    np.testing.assert_allclose(sharpening(np.array([5.0, 0]), np.array([0.0, 0])), [1, 1])


def test_sharpening_caps_its_exponent():
    assert sharpening(np.array([1e6]), np.array([1.0]))[0] == np.exp(MAX_EXPONENT)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_sorted_percentile_is_identical_to_numpy(dtype):
    values = np.random.default_rng(0).standard_normal(1001).astype(dtype)
    values[::7] = values[3]  # ties
    ordered = np.sort(values)
    for p in (0.0, 0.001, 10.0, 33.3, 50.0, 62.5, 90.0, 99.9, 100.0):
        assert sorted_percentile(ordered, p) == np.percentile(values, p)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_percentiles_of_is_identical_to_numpy(dtype):
    values = np.random.default_rng(5).standard_normal((37, 11)).astype(dtype)
    values[:, 3] = values[0, 0]  # ties
    ps = (0.0, 5.0, 12.5, 50.0, 87.5, 99.0, 100.0)
    assert percentiles_of(values, ps) == tuple(np.percentile(values, p) for p in ps)


def test_percentiles_of_leaves_its_input_alone():
    values = np.array([[3.0, 1, 2]])
    percentiles_of(values, (50.0,))
    np.testing.assert_array_equal(values, [[3, 1, 2]])


def test_sorted_percentile_of_one_value():
    assert sorted_percentile(np.array([3.0]), 40.0) == 3.0


# ------------------------------------------------------------------------------------------ react
def test_react_threshold_by_hand():
    assert fitted(ReactScorer(90)).threshold == pytest.approx(6.3)


@pytest.mark.parametrize("score", ["energy", "msp", "maxlogit"])
def test_react_hand_values(score):
    # c = 3.5 (p = 50): [1, 7, 2, 8] → [1, 3.5, 2, 3.5] → logits [1, 4.5, 4.5]; zeros → logits b
    got = fitted(ReactScorer(50, score)).score(outs([[1, 7, 2, 8], [0, 0, 0, 0]]))
    np.testing.assert_allclose(got, by_hand([[1, 4.5, 4.5], [0, 1, -1]], score), rtol=1e-12)


def test_react_energy_written_out():
    got = fitted(ReactScorer(50)).score(outs([[1, 7, 2, 8]]))
    assert got[0] == pytest.approx(4.5 + np.log(2 + np.exp(-3.5)))


def test_react_percentile_100_is_energy_below_the_training_maximum():
    # c = 7: [1, 6, 2, 7] is not clipped → logits [1, 7, 8]
    got = fitted(ReactScorer(100)).score(outs([[1, 6, 2, 7]]))
    assert got[0] == pytest.approx(energy_of(1, 7, 8))


def test_react_percentile_0_clips_at_the_training_minimum():
    # c = 0: [1, 6, -2, 7] → [0, 0, -2, 0] → logits [0, 1, -3]
    got = fitted(ReactScorer(0)).score(outs([[1, 6, -2, 7]]))
    assert got[0] == pytest.approx(energy_of(0, 1, -3))


def test_react_constant_training_features():
    assert fitted(ReactScorer(37), train=np.full((3, 4), 2.0)).threshold == 2.0


def test_react_zscored_head():
    head = Head(W, B, zscore_sigma=0.5)
    h = np.array([[1.0, 7, 2, 8]])
    clipped = np.minimum(h, 3.5)
    centred = clipped - clipped.mean()
    z = 0.5 * centred / (np.sqrt((centred ** 2).sum() / 3) + 1e-6)
    got = fitted(ReactScorer(50), head=head).score(outs(h, head))
    assert got[0] == pytest.approx(energy_of(*(W @ z[0] + B)), rel=1e-12)


def test_react_reads_the_sorted_sweep_work():
    scorer = fitted(ReactScorer(90))
    scorer.adopt(fitted(ReactScorer(50)).sweep_work(None))
    assert scorer._sorted is not None


def test_react_sweep_work_gives_the_same_threshold():
    train = np.random.default_rng(1).random((50, 16), dtype=np.float32)
    scorer = ReactScorer(87.5).fit(outs(train, HEAD))
    scorer.adopt(ReactScorer(10).fit(outs(train, HEAD)).sweep_work(None))
    assert scorer.threshold == float(np.percentile(train, 87.5))


def test_react_reads_sweep_work_back_from_the_model_cache(tmp_path):
    from orchestrator.cache import ModelCache

    train = np.random.default_rng(6).random((30, 8), dtype=np.float32)
    cache = ModelCache(str(tmp_path))
    cache.save_work("net", "react", ReactScorer().fit(outs(train, HEAD)).sweep_work(None))
    scorer = ReactScorer(97).fit(outs(train, HEAD))
    scorer.adopt(cache.load_work("net", "react"))  # memory-mapped
    assert (scorer._sorted is not None, scorer.threshold) == (True, float(np.percentile(train, 97.0)))


def test_react_ignores_sweep_work_of_other_features():
    scorer = fitted(ReactScorer(90))
    scorer.adopt({SORTED_ACTIVATIONS: np.arange(12.0)})
    assert scorer._sorted is None


def test_react_pickles_its_threshold_not_the_activations():
    scorer = fitted(ReactScorer(90))
    clone = pickle.loads(pickle.dumps(scorer))
    assert (clone._activations, clone.threshold) == (None, pytest.approx(6.3))


# ------------------------------------------------------------------------------------------ ash
# h = [1, 4, 2, 3], p = 50 → k = 2: keep 4 and 3 (units 1, 3); s1 = 10, s2 = 7.
H = [[1.0, 4, 2, 3]]


def test_ash_p_hand_values():
    # [0, 4, 0, 3] → logits [0, 5, 2]
    assert AshScorer(50, "p").score(outs(H))[0] == pytest.approx(energy_of(0, 5, 2))


def test_ash_b_hand_values():
    # kept units = s1/k = 5: [0, 5, 0, 5] → logits [0, 6, 4]
    assert AshScorer(50, "b").score(outs(H))[0] == pytest.approx(energy_of(0, 6, 4))


def test_ash_s_hand_values():
    m = np.exp(10 / 7)  # [0, 4m, 0, 3m] → logits [0, 4m + 1, 3m − 1]
    assert AshScorer(50, "s").score(outs(H))[0] == pytest.approx(energy_of(0, 4 * m + 1, 3 * m - 1))


@pytest.mark.parametrize("score", ["energy", "msp", "maxlogit"])
def test_ash_each_score(score):
    np.testing.assert_allclose(AshScorer(50, "p", score).score(outs(H)), by_hand([[0, 5, 2]], score), rtol=1e-12)


def test_ash_percentile_0_p_is_energy():
    # nothing pruned → logits [1, 5, 4]
    assert AshScorer(0, "p").score(outs(H))[0] == pytest.approx(energy_of(1, 5, 4))


def test_ash_percentile_0_s_multiplies_by_e():
    # s1 = s2 → h·e → logits [e, 4e + 1, 5e − 1]
    assert AshScorer(0, "s").score(outs(H))[0] == pytest.approx(energy_of(E, 4 * E + 1, 5 * E - 1))


@pytest.mark.parametrize("variant", ["p", "b", "s"])
def test_ash_percentile_100_scores_the_bias(variant):
    assert AshScorer(100, variant).score(outs(H))[0] == pytest.approx(energy_of(0, 1, -1))


@pytest.mark.parametrize("variant", ["p", "b", "s"])
def test_ash_all_zero_features_score_the_bias(variant):
    assert AshScorer(90, variant).score(outs([[0.0, 0, 0, 0]]))[0] == pytest.approx(energy_of(0, 1, -1))


def test_ash_b_constant_features():
    # [3, 3, 3, 3], k = 2 → units 0, 1 kept, set to 12/2 = 6 → logits [6, 7, −1]
    assert AshScorer(50, "b").score(outs([[3.0, 3, 3, 3]]))[0] == pytest.approx(energy_of(6, 7, -1))


def test_ash_s_constant_features():
    # s1 = 12, s2 = 6 → [3e², 3e², 0, 0] → logits [3e², 3e² + 1, −1]
    m = 3 * np.exp(2)
    assert AshScorer(50, "s").score(outs([[3.0, 3, 3, 3]]))[0] == pytest.approx(energy_of(m, m + 1, -1))


def test_ash_b_ties_at_the_threshold_keep_the_lowest_index():
    # [2, 5, 2, 2], k = 2: 5 and the first 2 kept, both set to 11/2 → logits [5.5, 6.5, −1]
    assert AshScorer(50, "b").score(outs([[2.0, 5, 2, 2]]))[0] == pytest.approx(energy_of(5.5, 6.5, -1))


def test_ash_p_ties_at_the_threshold():
    # [2, 5, 2, 2] → [2, 5, 0, 0] → logits [2, 6, −1]
    assert AshScorer(50, "p").score(outs([[2.0, 5, 2, 2]]))[0] == pytest.approx(energy_of(2, 6, -1))


def test_ash_s_kept_units_that_cancel_are_not_sharpened():
    # [1, −1, −3, −5], k = 2: s2 = 0 → factor 1 → [1, −1, 0, 0] → logits [1, 0, −1]
    assert AshScorer(50, "s").score(outs([[1.0, -1, -3, -5]]))[0] == pytest.approx(energy_of(1, 0, -1))


def test_ash_s_nearly_cancelling_units_stay_finite():
    # s1 ≈ −8, s2 ≈ −1e-9: s1/s2 ≈ 8e9, capped
    assert np.isfinite(AshScorer(50, "s").score(outs([[1.0, -1.000000001, -3, -5]]))).all()


def test_ash_rows_are_shaped_independently():
    both = AshScorer(50, "s").score(outs([H[0], [3.0, 3, 3, 3]]))
    np.testing.assert_allclose(both, [AshScorer(50, "s").score(outs(H))[0],
                                      AshScorer(50, "s").score(outs([[3.0, 3, 3, 3]]))[0]], rtol=1e-12)


# ------------------------------------------------------------------------------------------ scale
def test_scale_hand_values():
    # p = 50: s1 = 10, s2 = 7 → h·m → logits [m, 4m + 1, 5m − 1]
    m = np.exp(10 / 7)
    assert ScaleScorer(50).score(outs(H))[0] == pytest.approx(energy_of(m, 4 * m + 1, 5 * m - 1))


@pytest.mark.parametrize("score", ["energy", "msp", "maxlogit"])
def test_scale_each_score(score):
    m = np.exp(10 / 7)
    expected = by_hand([[m, 4 * m + 1, 5 * m - 1]], score)
    np.testing.assert_allclose(ScaleScorer(50, score).score(outs(H)), expected, rtol=1e-12)


def test_scale_percentile_0_multiplies_by_e():
    assert ScaleScorer(0).score(outs(H))[0] == pytest.approx(energy_of(E, 4 * E + 1, 5 * E - 1))


def test_scale_percentile_100_is_energy():
    assert ScaleScorer(100).score(outs(H))[0] == pytest.approx(energy_of(1, 5, 4))


def test_scale_all_zero_features_score_the_bias():
    assert ScaleScorer(85).score(outs([[0.0, 0, 0, 0]]))[0] == pytest.approx(energy_of(0, 1, -1))


def test_scale_ties_do_not_matter():
    # [2, 5, 2, 2], k = 2: s2 = 7 whichever 2 is kept, s1 = 11 → h·e^(11/7) → logits [2m, 5m + 1, 4m − 1]
    m = np.exp(11 / 7)
    assert ScaleScorer(50).score(outs([[2.0, 5, 2, 2]]))[0] == pytest.approx(energy_of(2 * m, 5 * m + 1, 4 * m - 1))


def test_scale_constant_features():
    # [1, 1, 1, 1], p = 50: s1 = 4, s2 = 2 → h·e² → logits [e², e² + 1, 2e² − 1]
    m = np.exp(2)
    assert ScaleScorer(50).score(outs([[1.0, 1, 1, 1]]))[0] == pytest.approx(energy_of(m, m + 1, 2 * m - 1))


# ------------------------------------------------------------------------------------------ dice
# ū of [[1, 2, 0, 4], [3, 2, 2, 0]] = [2, 2, 1, 2]; with WD below, V = WD ⊙ ū = [[2, −2, 0, 4], [0, 2, 1, −2],
# [4, 0, −1, 2]], sorted: −2 −2 −1 0 0 0 1 2 2 2 4 4.
DICE_TRAIN = np.array([[1.0, 2, 0, 4], [3, 2, 2, 0]])
WD = np.array([[1.0, -1, 0, 2], [0, 1, 1, -1], [2, 0, -1, 1]])
DICE_HEAD = Head(WD, B)


def dice(sparsity, score="energy", head=DICE_HEAD):
    return DiceScorer(sparsity, score).fit(outs(DICE_TRAIN, head))


def test_dice_threshold_by_hand():
    # p = 50: index 5.5 → 0 + 0.5·(1 − 0)
    assert dice(50).threshold_ == pytest.approx(0.5)


def test_dice_mask_by_hand():
    np.testing.assert_array_equal(dice(50).masked_weight_, [[1, 0, 0, 2], [0, 1, 1, 0], [2, 0, 0, 1]])


@pytest.mark.parametrize("score", ["energy", "msp", "maxlogit"])
def test_dice_hand_values(score):
    # [1, 4, 2, 3] through the masked weight → [7, 6, 5] + b = [7, 7, 4]
    np.testing.assert_allclose(dice(50, score).score(outs(H, DICE_HEAD)), by_hand([[7, 7, 4]], score), rtol=1e-12)


def test_dice_drops_every_entry_tied_at_the_threshold():
    # p = 75: index 8.25 between two 2s → t = 2; only the 4s stay
    np.testing.assert_array_equal(dice(75).masked_weight_, [[0, 0, 0, 2], [0, 0, 0, 0], [2, 0, 0, 0]])


def test_dice_sparsity_0_is_energy():
    # W h + b = [3, 3, 3] + [0, 1, −1]
    assert dice(0).score(outs(H, DICE_HEAD))[0] == pytest.approx(energy_of(3, 4, 2))


def test_dice_sparsity_100_scores_the_bias():
    assert dice(100).score(outs(H, DICE_HEAD))[0] == pytest.approx(energy_of(0, 1, -1))


def test_dice_all_zero_features_score_the_bias():
    assert dice(50).score(outs([[0.0, 0, 0, 0]], DICE_HEAD))[0] == pytest.approx(energy_of(0, 1, -1))


def test_dice_zscored_head_uses_the_standardised_mean():
    def standardise(rows):
        centred = rows - rows.mean(axis=1, keepdims=True)
        return 0.5 * centred / (np.sqrt((centred ** 2).sum(axis=1, keepdims=True) / 3) + 1e-6)

    head = Head(WD, B, zscore_sigma=0.5)
    contribution = WD * standardise(DICE_TRAIN).mean(axis=0)
    masked = np.where(contribution > np.percentile(contribution, 50), WD, 0.0)
    expected = energy_of(*(masked @ standardise(np.array(H))[0] + B))
    assert dice(50, head=head).score(outs(H, head))[0] == pytest.approx(expected, rel=1e-12)


def test_dice_refuses_a_head_of_another_shape():
    with pytest.raises(ValueError, match="dice was fitted"):
        dice(50).score(outs(H, Head(np.ones((2, 4)), np.zeros(2))))


# ------------------------------------------------------------------------------------------ vra
def test_vra_thresholds_by_hand():
    # 10th → 0.7, 90th → 6.3 of 0 … 7
    assert fitted(VraScorer(10, 90)).thresholds() == (pytest.approx(0.7), pytest.approx(6.3))


@pytest.mark.parametrize("score", ["energy", "msp", "maxlogit"])
def test_vra_hand_values(score):
    # [0.5, 1, 3, 7] → [0, 1, 3, 6.3] → logits [0, 2, 8.3]
    got = fitted(VraScorer(10, 90, score)).score(outs([[0.5, 1, 3, 7]]))
    np.testing.assert_allclose(got, by_hand([[0, 2, 8.3]], score), rtol=1e-12)


def test_vra_units_at_the_thresholds_are_kept():
    # a = 3.5 (p = 50), b = 6.3: [3.5, 6.3, 0, 0] stays → logits [3.5, 7.3, −1]
    scorer = fitted(VraScorer(50, 90))
    low, high = scorer.thresholds()
    assert scorer.score(outs([[low, high, 0, 0]]))[0] == pytest.approx(energy_of(3.5, 7.3, -1))


def test_vra_equal_percentiles():
    # a = b = 3.5: [1, 3.5, 5, 0] → [0, 3.5, 3.5, 0] → logits [0, 4.5, 2.5]
    got = fitted(VraScorer(50, 50)).score(outs([[1, 3.5, 5, 0]]))
    assert got[0] == pytest.approx(energy_of(0, 4.5, 2.5))


def test_vra_percentiles_0_and_100_keep_the_training_range():
    # a = 0, b = 7: [−1, 2, 3, 9] → [0, 2, 3, 7] → logits [0, 3, 9]
    got = fitted(VraScorer(0, 100)).score(outs([[-1, 2, 3, 9]]))
    assert got[0] == pytest.approx(energy_of(0, 3, 9))


def test_vra_constant_training_features():
    # a = b = 2: [1, 2, 3, 0] → [0, 2, 2, 0] → logits [0, 3, 1]
    scorer = fitted(VraScorer(10, 90), train=np.full((2, 4), 2.0))
    assert scorer.score(outs([[1, 2, 3, 0]]))[0] == pytest.approx(energy_of(0, 3, 1))


def test_vra_all_zero_features_score_the_bias():
    assert fitted(VraScorer(10, 90)).score(outs([[0.0, 0, 0, 0]]))[0] == pytest.approx(energy_of(0, 1, -1))


def test_vra_sweep_work_gives_the_same_thresholds():
    train = np.random.default_rng(2).random((40, 8), dtype=np.float32)
    scorer = VraScorer(5, 95).fit(outs(train, HEAD))
    scorer.adopt(VraScorer().fit(outs(train, HEAD)).sweep_work(None))
    assert scorer.thresholds() == (float(np.percentile(train, 5.0)), float(np.percentile(train, 95.0)))


def test_vra_low_above_high_raises():
    with pytest.raises(ValueError, match="low_percentile"):
        VraScorer(95, 90)


# ------------------------------------------------------------------------------------------ knobs and contract
@pytest.mark.parametrize("make, knob", [
    (lambda: ReactScorer(-1), "percentile"), (lambda: ReactScorer(100.5), "percentile"),
    (lambda: ReactScorer(float("nan")), "percentile"), (lambda: ReactScorer(True), "percentile"),
    (lambda: ReactScorer("90"), "percentile"), (lambda: ReactScorer(90, "logsumexp"), "score"),
    (lambda: AshScorer(101), "percentile"), (lambda: AshScorer(90, "x"), "ash_variant"),
    (lambda: AshScorer(90, "s", "max"), "score"), (lambda: ScaleScorer(-0.1), "percentile"),
    (lambda: ScaleScorer(85, None), "score"), (lambda: DiceScorer(150), "sparsity"),
    (lambda: DiceScorer(90, "entropy"), "score"), (lambda: VraScorer(-5, 90), "low_percentile"),
    (lambda: VraScorer(10, 120), "high_percentile"), (lambda: VraScorer(10, 90, "MSP"), "score"),
])
def test_bad_knob_values_raise_naming_the_knob(make, knob):
    with pytest.raises(ValueError, match=knob):
        make()


def default_scorer(name):
    method = methods.get(name)
    return method.scorer(method.resolve({}))


@pytest.mark.parametrize("name", NAMES)
def test_outputs_without_a_head_raise_a_clear_error(name):
    headless = outs(TRAIN, head=None)
    with pytest.raises(ValueError, match="final layer"):
        scorer = default_scorer(name)
        scorer.fit(headless if scorer.needs_fit else None)
        scorer.score(headless)


@pytest.mark.parametrize("name", NAMES)
def test_default_scorer_reads_the_head(name):
    assert isinstance(default_scorer(name), HeadScorer)


@pytest.mark.parametrize("name", NAMES)
def test_default_score_is_energy(name):
    assert default_scorer(name).logit_score == "energy"


@pytest.mark.parametrize("name", ["react", "dice", "vra"])
def test_fitted_scorers_need_fit_outputs(name):
    with pytest.raises(ValueError, match=name):
        default_scorer(name).fit(None)


@pytest.mark.parametrize("name", NAMES)
def test_scorer_pickles_after_fit(name):
    scorer = default_scorer(name)
    scorer.fit(outs(np.random.default_rng(3).random((6, 4))) if scorer.needs_fit else None)
    h = outs(np.random.default_rng(4).random((5, 4)))
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(scorer)).score(h), scorer.score(h))
