"""Neural relation graph: hand-computed edge sums, a pair-by-pair loop reference, blocks and the edge cases."""
from __future__ import annotations

import pickle

import numpy as np
import pytest
from scipy.special import softmax

import methods
from methods import relation
from methods.base import Outputs
from methods.relation import RelationScorer


def outs(probs, features):
    return Outputs(np.log(np.asarray(probs, dtype=np.float64)), np.asarray(features, dtype=np.float64))


# Training: f̂ = (1, 0), (0, 1), (−1, 0); p = (.8, .2), (.5, .5), (.8, .2).
TRAIN = outs([[0.8, 0.2], [0.5, 0.5], [0.8, 0.2]], [[2.0, 0.0], [0.0, 3.0], [-1.0, 0.0]])
# Query f̂ = (.6, .8), p = (.8, .2). Edges: .6·(.64 + .04) = .408;  .8·(.4 + .1) = .4;  max(0, −.6)·.68 = 0.
QUERY = outs([[0.8, 0.2]], [[3.0, 4.0]])


def test_hand_value_power_1():
    assert RelationScorer(1.0).fit(TRAIN).score(QUERY)[0] == pytest.approx(0.808, abs=1e-6)


def test_hand_value_power_2():
    assert RelationScorer(2.0).fit(TRAIN).score(QUERY)[0] == pytest.approx(0.408**2 + 0.4**2, abs=1e-6)


def test_hand_edges():
    np.testing.assert_allclose(RelationScorer().fit(TRAIN).edges(QUERY), [[0.408, 0.4, 0.0]], atol=1e-6)


def test_threshold_drops_the_weaker_edge():
    assert RelationScorer(1.0, threshold=0.405).fit(TRAIN).score(QUERY)[0] == pytest.approx(0.408, abs=1e-6)


def test_threshold_applies_before_the_power():
    # the cut-off compares edges, not powered edges: .408 > .405 survives as .408², .4 < .405 is dropped
    assert RelationScorer(2.0, threshold=0.405).fit(TRAIN).score(QUERY)[0] == pytest.approx(0.408**2, abs=1e-6)


def test_an_edge_equal_to_the_threshold_is_dropped():
    # identical samples, uniform probabilities: the edge is exactly 1 · 0.5
    train = outs([[0.5, 0.5]], [[1.0, 0.0]])
    assert RelationScorer(1.0, threshold=0.5).fit(train).score(outs([[0.5, 0.5]], [[1.0, 0.0]]))[0] == 0.0


def test_an_edge_above_the_threshold_is_kept():
    train = outs([[0.5, 0.5]], [[1.0, 0.0]])
    assert RelationScorer(1.0, threshold=0.49).fit(train).score(outs([[0.5, 0.5]], [[1.0, 0.0]]))[0] == 0.5


def test_threshold_zero_keeps_every_positive_edge():
    train = outs([[0.5, 0.5]], [[1.0, 0.0]])
    query = outs([[0.5, 0.5]], [[1.0, 0.001]])  # cosine just below 1: edge just below .5
    assert RelationScorer(1.0, threshold=0.0).fit(train).score(query)[0] == pytest.approx(0.5, abs=1e-6)


def test_a_sample_without_edges_scores_zero():
    assert RelationScorer().fit(TRAIN).score(outs([[0.8, 0.2]], [[0.0, -1.0]]))[0] == 0.0


def test_zero_features_score_zero():
    assert RelationScorer().fit(TRAIN).score(outs([[0.5, 0.5]], [[0.0, 0.0]]))[0] == 0.0


def test_zero_training_features_are_finite():
    train = outs([[0.5, 0.5], [0.8, 0.2]], [[0.0, 0.0], [1.0, 1.0]])
    assert np.isfinite(RelationScorer().fit(train).score(QUERY)).all()


def _loop_reference(train, test, power, threshold):
    """Every (test, training) pair written out, in float64."""
    pt, pq = softmax(train.logits, axis=1), softmax(test.logits, axis=1)
    ft = train.features / np.sqrt((train.features**2).sum(1, keepdims=True) + 1e-10)
    fq = test.features / np.sqrt((test.features**2).sum(1, keepdims=True) + 1e-10)
    scores = []
    for i in range(len(fq)):
        total = 0.0
        for j in range(len(ft)):
            edge = max(0.0, float(fq[i] @ ft[j])) * float(pq[i] @ pt[j])
            if edge > threshold:
                total += edge**power
        scores.append(total)
    return np.array(scores)


def _random_sets(seed):
    rng = np.random.default_rng(seed)
    train = Outputs(rng.normal(size=(40, 3)) * 2, np.abs(rng.normal(size=(40, 5))) + 0.1 * rng.normal(size=(40, 5)))
    test = Outputs(rng.normal(size=(9, 3)) * 2, np.abs(rng.normal(size=(9, 5))) + 0.1 * rng.normal(size=(9, 5)))
    return train, test


def test_matches_a_loop_over_pairs():
    train, test = _random_sets(0)
    expected = _loop_reference(train, test, 2.5, 0.03)
    np.testing.assert_allclose(RelationScorer(2.5).fit(train).score(test), expected, rtol=1e-5)


def test_blocks_give_the_loop_scores(monkeypatch):
    train, test = _random_sets(1)
    monkeypatch.setattr(relation, "BLOCK_ENTRIES", 100)  # 2 test samples per block, the last one short
    expected = _loop_reference(train, test, 4.0, 0.03)
    np.testing.assert_allclose(RelationScorer(4.0).fit(train).score(test), expected, rtol=1e-5)


def test_the_feature_scale_does_not_matter():
    scaled = outs([[0.8, 0.2]], [[300.0, 400.0]])
    scorer = RelationScorer().fit(TRAIN)
    assert scorer.score(scaled)[0] == pytest.approx(scorer.score(QUERY)[0], abs=1e-6)


@pytest.mark.parametrize("bad", [0, -1.0, float("nan"), float("inf"), True, "two"])
def test_bad_power_raises(bad):
    with pytest.raises(ValueError, match="power"):
        RelationScorer(bad)


@pytest.mark.parametrize("bad", [-0.01, float("nan"), False, "low"])
def test_bad_threshold_raises(bad):
    with pytest.raises(ValueError, match="threshold"):
        RelationScorer(1.0, bad)


def test_fit_without_outputs_raises():
    with pytest.raises(ValueError, match="relation needs fit outputs"):
        RelationScorer().fit(None)


def test_score_before_fit_raises():
    with pytest.raises(RuntimeError, match="before fit"):
        RelationScorer().score(QUERY)


def test_feature_width_mismatch_raises():
    with pytest.raises(ValueError, match="2-d features"):
        RelationScorer().fit(TRAIN).score(outs([[0.5, 0.5]], [[1.0, 2.0, 3.0]]))


def test_class_count_mismatch_raises():
    with pytest.raises(ValueError, match="2 classes"):
        RelationScorer().fit(TRAIN).score(outs([[0.2, 0.3, 0.5]], [[1.0, 2.0]]))


def test_pickles_with_its_fit():
    scorer = pickle.loads(pickle.dumps(RelationScorer().fit(TRAIN)))
    assert scorer.score(QUERY)[0] == pytest.approx(0.808, abs=1e-6)


def test_method_defaults_are_the_references():
    knobs = methods.get("relation").own_knobs()
    assert (knobs["power"].default, knobs["threshold"].default) == (1.0, 0.03)


def test_method_passes_its_knobs():
    method = methods.get("relation")
    scorer = method.scorer(method.resolve({"power": 6, "threshold": 0.1}))
    assert (scorer.power, scorer.threshold) == (6.0, 0.1)


def test_no_queries_give_no_scores():
    assert RelationScorer().fit(TRAIN).score(outs(np.ones((0, 2)), np.zeros((0, 2)))).shape == (0,)
