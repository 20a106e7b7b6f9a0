"""NNGuide: hand-computed guided scores, a loop reference, the bank subsample and the edge cases."""
from __future__ import annotations

import pickle

import numpy as np
import pytest
from scipy.special import logsumexp

import methods
from methods import nnguide
from methods.base import Outputs
from methods.nnguide import NNGuideScorer


def outs(logits, features):
    return Outputs(np.asarray(logits, dtype=np.float64), np.asarray(features, dtype=np.float64))


# Bank (α = 1): ĥ = (1, 0), (0, 1), (0.6, 0.8) with energies log 2, log 4, log 8.
TRAIN = outs(np.log([[1.0, 1.0], [3.0, 1.0], [5.0, 3.0]]), [[1.0, 0.0], [0.0, 2.0], [3.0, 4.0]])
# Query ĥ = (1, 0), energy log 2: products with the bank = log 2, 0, 0.6·log 8.
QUERY = outs(np.log([[1.0, 1.0]]), [[2.0, 0.0]])


def test_hand_value_k2():
    expected = np.log(2) * (np.log(2) + 0.6 * np.log(8)) / 2
    assert NNGuideScorer(2, 1.0).fit(TRAIN).score(QUERY)[0] == pytest.approx(expected, rel=1e-6)


def test_hand_value_k1_is_the_largest_product():
    expected = np.log(2) * 0.6 * np.log(8)
    assert NNGuideScorer(1, 1.0).fit(TRAIN).score(QUERY)[0] == pytest.approx(expected, rel=1e-6)


def test_neighbours_larger_than_the_bank_average_the_whole_bank():
    expected = np.log(2) * (np.log(2) + 0.0 + 0.6 * np.log(8)) / 3
    assert NNGuideScorer(100, 1.0).fit(TRAIN).score(QUERY)[0] == pytest.approx(expected, rel=1e-6)


def test_bank_entries_are_confidence_scaled_unit_features():
    expected = np.array([[np.log(2), 0.0], [0.0, np.log(4)], [0.6 * np.log(8), 0.8 * np.log(8)]])
    np.testing.assert_allclose(NNGuideScorer(1, 1.0).fit(TRAIN).bank_, expected, atol=1e-6)


def test_the_feature_scale_does_not_matter():
    scaled = outs(QUERY.logits, QUERY.features * 1000)
    scorer = NNGuideScorer(2, 1.0).fit(TRAIN)
    assert scorer.score(scaled)[0] == pytest.approx(scorer.score(QUERY)[0])


def test_matches_a_loop_over_queries():
    rng = np.random.default_rng(0)
    train = outs(rng.normal(size=(40, 3)), rng.normal(size=(40, 6)))
    test = outs(rng.normal(size=(7, 3)), rng.normal(size=(7, 6)))
    bank = [h / np.linalg.norm(h) * logsumexp(z) for h, z in zip(train.features, train.logits, strict=True)]
    expected = []
    for h, z in zip(test.features, test.logits, strict=True):
        products = sorted((float(np.dot(h / np.linalg.norm(h), b)) for b in bank), reverse=True)
        expected.append(logsumexp(z) * np.mean(products[:5]))
    np.testing.assert_allclose(NNGuideScorer(5, 1.0).fit(train).score(test), expected, rtol=1e-5)


def test_blocks_give_the_unblocked_scores(monkeypatch):
    rng = np.random.default_rng(1)
    train = outs(rng.normal(size=(30, 3)), rng.normal(size=(30, 4)))
    test = outs(rng.normal(size=(11, 3)), rng.normal(size=(11, 4)))
    whole = NNGuideScorer(4, 1.0).fit(train).score(test)
    monkeypatch.setattr(nnguide, "BLOCK_ENTRIES", 70)  # 2 queries per block, the last one short
    np.testing.assert_allclose(NNGuideScorer(4, 1.0).fit(train).score(test), whole)


def test_ties_among_the_neighbours():
    # two identical bank entries tie for the largest product: k = 2 averages both
    train = outs(np.zeros((3, 2)), [[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    assert NNGuideScorer(2, 1.0).fit(train).score(outs([[0.0, 0.0]], [[1.0, 0.0]]))[0] == pytest.approx(
        np.log(2) * np.log(2))


def test_a_zero_query_feature_scores_zero():
    assert NNGuideScorer(2, 1.0).fit(TRAIN).score(outs([[0.0, 0.0]], [[0.0, 0.0]]))[0] == 0.0


def test_a_zero_training_feature_is_finite():
    train = outs(np.zeros((2, 2)), [[0.0, 0.0], [1.0, 1.0]])
    assert np.isfinite(NNGuideScorer(1, 1.0).fit(train).score(QUERY)).all()


def test_bank_size_is_the_fraction_rounded_up():
    train = outs(np.zeros((50, 2)), np.random.default_rng(0).normal(size=(50, 3)))
    assert len(NNGuideScorer(1, 0.07).fit(train).bank_) == 4  # ⌈3.5⌉


def test_bank_holds_at_least_one_sample():
    train = outs(np.zeros((50, 2)), np.random.default_rng(0).normal(size=(50, 3)))
    assert len(NNGuideScorer(1, 0.001).fit(train).bank_) == 1


def test_bank_size_exact_fraction():
    train = outs(np.zeros((100, 2)), np.random.default_rng(0).normal(size=(100, 3)))
    assert len(NNGuideScorer(1, 0.07).fit(train).bank_) == 7  # 0.07·100 is 7.000000000000001 in floats


def test_bank_is_a_subset_of_distinct_training_rows():
    train = outs(np.zeros((50, 2)), np.random.default_rng(0).normal(size=(50, 3)))
    index = NNGuideScorer(1, 0.2).fit(train).bank_index_
    assert len(set(index.tolist())) == 10


def test_bank_rows_are_the_scaled_training_rows():
    rng = np.random.default_rng(0)
    train = outs(rng.normal(size=(50, 2)), rng.normal(size=(50, 3)))
    scorer = NNGuideScorer(1, 0.2).fit(train)
    h, z = train.features[scorer.bank_index_], train.logits[scorer.bank_index_]
    expected = h / np.linalg.norm(h, axis=1, keepdims=True) * logsumexp(z, axis=1)[:, None]
    np.testing.assert_allclose(scorer.bank_, expected, rtol=1e-5)


def test_bank_subsample_is_seeded():
    train = outs(np.zeros((50, 2)), np.random.default_rng(0).normal(size=(50, 3)))
    first = NNGuideScorer(1, 0.2).fit(train).bank_index_
    np.testing.assert_array_equal(NNGuideScorer(1, 0.2).fit(train).bank_index_, first)


def test_another_seed_draws_another_bank():
    train = outs(np.zeros((50, 2)), np.random.default_rng(0).normal(size=(50, 3)))
    first = NNGuideScorer(1, 0.2).fit(train).bank_index_
    assert not np.array_equal(NNGuideScorer(1, 0.2, seed=1).fit(train).bank_index_, first)


def test_full_fraction_keeps_every_training_sample():
    assert len(NNGuideScorer(1, 1.0).fit(TRAIN).bank_) == 3


@pytest.mark.parametrize("bad", [0, -3, 2.5, True, "ten"])
def test_bad_neighbours_raise(bad):
    with pytest.raises(ValueError, match="neighbours"):
        NNGuideScorer(bad, 0.5)


@pytest.mark.parametrize("bad", [0.0, -0.1, 1.5, float("nan"), True, "half"])
def test_bad_bank_fraction_raises(bad):
    with pytest.raises(ValueError, match="bank_fraction"):
        NNGuideScorer(10, bad)


def test_fit_without_outputs_raises():
    with pytest.raises(ValueError, match="nnguide needs fit outputs"):
        NNGuideScorer().fit(None)


def test_score_before_fit_raises():
    with pytest.raises(RuntimeError, match="before fit"):
        NNGuideScorer().score(QUERY)


def test_feature_width_mismatch_raises():
    with pytest.raises(ValueError, match="2-d features"):
        NNGuideScorer(1, 1.0).fit(TRAIN).score(outs([[0.0, 0.0]], [[1.0, 2.0, 3.0]]))


def test_pickles_with_its_bank():
    scorer = pickle.loads(pickle.dumps(NNGuideScorer(2, 1.0).fit(TRAIN)))
    assert scorer.score(QUERY)[0] == pytest.approx(np.log(2) * (np.log(2) + 0.6 * np.log(8)) / 2)


def test_method_defaults_are_openoods():
    knobs = methods.get("nnguide").own_knobs()
    assert (knobs["neighbours"].default, knobs["bank_fraction"].default) == (100, 0.01)


def test_method_passes_its_knobs():
    method = methods.get("nnguide")
    scorer = method.scorer(method.resolve({"neighbours": 7, "bank_fraction": 0.5}))
    assert (scorer.neighbours, scorer.bank_fraction) == (7, 0.5)


def test_parallel_blocks_keep_their_order():
    blocks = nnguide.map_blocks(lambda start, stop: np.arange(start, stop, dtype=np.float64), 10, 3, threads=3)
    np.testing.assert_array_equal(blocks, np.arange(10))


def test_no_queries_give_no_scores():
    assert NNGuideScorer(2, 1.0).fit(TRAIN).score(outs(np.zeros((0, 2)), np.zeros((0, 2)))).shape == (0,)
