"""RankFeat: rank-1 removal by hand and against a per-sample SVD loop, energy, pooling check, edge cases, memo."""
import math
import pickle
import warnings

import numpy as np
import pytest

import methods
from methods import rankfeat
from methods.base import Head, Outputs
from methods.rankfeat import RankFeatScorer, rank1_removed_pooled


@pytest.fixture(autouse=True)
def _fresh_memo():
    rankfeat.forget_memoised()
    yield
    rankfeat.forget_memoised()


def _outs(fmap, head=None, features=None, n_classes=3):
    fmap = np.asarray(fmap, dtype=np.float32)
    n, c = fmap.shape[:2]
    if head is None:
        rng = np.random.default_rng(99)
        head = Head(rng.normal(size=(n_classes, c)), rng.normal(size=n_classes))
    h = fmap.mean(axis=(2, 3)) if features is None else features
    return Outputs(np.asarray(head.logits(h)), h, np.zeros(n, dtype=int), fmap, head)


def _maps(n=6, c=5, h=3, w=2, seed=0):
    return np.random.default_rng(seed).normal(size=(n, c, h, w)).astype(np.float32)


def _reference_pooled(fmap):
    """Written out per sample: X' = X − s₁u₁v₁ᵀ from a full SVD, then the mean over H·W."""
    out = []
    for x in np.asarray(fmap, dtype=np.float64):
        x = x.reshape(x.shape[0], -1)
        u, s, vt = np.linalg.svd(x)
        out.append((x - s[0] * np.outer(u[:, 0], vt[0])).mean(axis=1))
    return np.array(out)


def _lse(values):
    return math.log(sum(math.exp(v) for v in values))


# ------------------------------------------------------------------------------------------ the formula
def test_rank1_removal_by_hand():
    # X = diag(3, 1) (C = 2, HW = 2): s₁ = 3, u₁ = v₁ = e₁, so X' = diag(0, 1) and h' = [0, 0.5]
    fmap = np.array([[[[3.0, 0.0]], [[0.0, 1.0]]]])
    np.testing.assert_allclose(rank1_removed_pooled(fmap), [[0.0, 0.5]], atol=1e-12)


def test_score_by_hand():
    # h' = [0, 0.5]; W = I, b = [0.1, −0.2]: logits [0.1, 0.3]; S = log(e^0.1 + e^0.3)
    fmap = np.array([[[[3.0, 0.0]], [[0.0, 1.0]]]])
    head = Head(np.eye(2), np.array([0.1, -0.2]))
    scorer = RankFeatScorer().fit(_outs(fmap, head))
    assert scorer.score(_outs(fmap, head))[0] == pytest.approx(_lse([0.1, 0.3]), rel=1e-6)


def test_temperature_by_hand():
    # T = 2: S = 2·log(e^0.05 + e^0.15)
    fmap = np.array([[[[3.0, 0.0]], [[0.0, 1.0]]]])
    head = Head(np.eye(2), np.array([0.1, -0.2]))
    scorer = RankFeatScorer(temperature=2.0).fit(_outs(fmap, head))
    assert scorer.score(_outs(fmap, head))[0] == pytest.approx(2 * _lse([0.05, 0.15]), rel=1e-6)


def test_matches_a_per_sample_svd_loop():
    fmap = _maps(n=7, c=6, h=3, w=3)
    np.testing.assert_allclose(rank1_removed_pooled(fmap), _reference_pooled(fmap), atol=1e-10)


def test_matches_the_loop_when_channels_are_fewer_than_positions():
    fmap = _maps(n=4, c=2, h=3, w=4)
    np.testing.assert_allclose(rank1_removed_pooled(fmap), _reference_pooled(fmap), atol=1e-10)


def test_chunks_give_the_same_result(monkeypatch):
    fmap = _maps(n=9)
    whole = rank1_removed_pooled(fmap)
    monkeypatch.setattr(rankfeat, "CHUNK_BYTES", 2 * 5 * 6 * 8)  # two samples per chunk, the last one short
    np.testing.assert_allclose(rank1_removed_pooled(fmap), whole, atol=1e-12)


def test_score_is_the_energy_of_the_head_on_the_shaped_features():
    fmap = _maps()
    outs = _outs(fmap)
    scorer = RankFeatScorer().fit(outs)
    logits = outs.head.logits(_reference_pooled(fmap))
    want = [_lse(row) for row in logits]
    np.testing.assert_allclose(scorer.score(outs), want, rtol=1e-5)


def test_zscore_head_reads_the_standardised_shaped_features():
    fmap = _maps()
    rng = np.random.default_rng(3)
    head = Head(rng.normal(size=(3, 5)), rng.normal(size=3), zscore_sigma=2.0)
    outs = _outs(fmap, head)
    h = _reference_pooled(fmap)
    z = 2.0 * (h - h.mean(1, keepdims=True)) / (h.std(1, ddof=1, keepdims=True) + 1e-6)
    want = [_lse(row) for row in z @ head.weight.T + head.bias]
    np.testing.assert_allclose(RankFeatScorer().fit(outs).score(outs), want, rtol=1e-4)


# ------------------------------------------------------------------------------------------ edge cases
def test_all_zero_map_scores_the_energy_of_the_bias():
    fmap = np.zeros((2, 4, 2, 2))
    head = Head(np.ones((3, 4)), np.array([0.0, 1.0, -1.0]))
    scorer = RankFeatScorer().fit(_outs(fmap, head))
    np.testing.assert_allclose(scorer.score(_outs(fmap, head)), _lse([0.0, 1.0, -1.0]), rtol=1e-12)


def test_rank1_map_leaves_nothing():
    u, v = np.array([1.0, -2.0, 0.5]), np.array([0.3, 1.0, 2.0, -1.0])
    fmap = np.outer(u, v).reshape(1, 3, 2, 2)
    np.testing.assert_allclose(rank1_removed_pooled(fmap), 0.0, atol=1e-12)


def test_rank1_map_scores_the_energy_of_the_bias():
    fmap = np.outer([1.0, -2.0, 0.5], [0.3, 1.0, 2.0, -1.0]).reshape(1, 3, 2, 2)
    head = Head(np.ones((2, 3)), np.array([0.5, -0.5]))
    scorer = RankFeatScorer().fit(_outs(fmap, head))
    assert scorer.score(_outs(fmap, head))[0] == pytest.approx(_lse([0.5, -0.5]), rel=1e-6)


def test_a_1x1_map_warns_at_fit():
    with pytest.warns(RuntimeWarning, match="1×1"):
        RankFeatScorer().fit(_outs(_maps(h=1, w=1)))


def test_a_1x1_map_scores_the_energy_of_the_bias():
    outs = _outs(_maps(h=1, w=1))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        scorer = RankFeatScorer().fit(outs)
    np.testing.assert_allclose(scorer.score(outs), _lse(outs.head.bias), rtol=1e-6)


def test_scores_are_finite_on_a_digits_sized_map():
    outs = _outs(np.abs(_maps(n=20, c=128, h=2, w=2)), n_classes=5)
    assert np.isfinite(RankFeatScorer().fit(outs).score(outs)).all()


# ------------------------------------------------------------------------------------------ requirements
def test_features_that_are_not_the_average_pool_are_refused():
    fmap = _maps()
    outs = _outs(fmap, features=fmap.max(axis=(2, 3)))
    with pytest.raises(ValueError, match="global average pool"):
        RankFeatScorer().fit(outs)


def test_features_of_another_width_are_refused():
    fmap = _maps()
    outs = _outs(fmap)
    outs.features = np.zeros((len(fmap), 7))
    with pytest.raises(ValueError, match="global average pool"):
        RankFeatScorer().fit(outs)


def test_float32_pooling_noise_is_accepted():
    fmap = _maps()
    outs = _outs(fmap, features=fmap.mean(axis=(2, 3)) * (1 + 1e-6))
    assert RankFeatScorer().fit(outs).channels_ == 5


def test_fit_without_a_feature_map_is_refused():
    outs = _outs(_maps())
    outs.fmap = None
    with pytest.raises(ValueError, match="feature map"):
        RankFeatScorer().fit(outs)


def test_fit_without_a_head_is_refused():
    outs = _outs(_maps())
    outs.head = None
    with pytest.raises(ValueError, match="final layer"):
        RankFeatScorer().fit(outs)


def test_a_head_of_another_width_is_refused():
    outs = _outs(_maps())
    outs.head = Head(np.ones((3, 4)), np.zeros(3))
    with pytest.raises(ValueError, match="5 channels"):
        RankFeatScorer().fit(outs)


def test_score_before_fit_is_refused():
    with pytest.raises(RuntimeError, match="before fit"):
        RankFeatScorer().score(_outs(_maps()))


@pytest.mark.parametrize("value", [0, -1.0, float("nan"), float("inf"), True, "1"])
def test_bad_temperature_is_refused(value):
    with pytest.raises(ValueError, match="temperature"):
        RankFeatScorer(temperature=value)


# ------------------------------------------------------------------------------------------ memo and sweep work
def _counting(monkeypatch):
    calls = []
    real = rankfeat.rank1_removed_pooled

    def counted(fmap):
        calls.append(len(fmap))
        return real(fmap)

    monkeypatch.setattr(rankfeat, "rank1_removed_pooled", counted)
    return calls


def test_a_temperature_sweep_decomposes_each_map_once(monkeypatch):
    calls = _counting(monkeypatch)
    outs = _outs(_maps())
    for t in (0.5, 1.0, 4.0):
        RankFeatScorer(t).fit(outs).score(outs)
    assert len(calls) == 1


def test_an_equal_copy_of_a_map_hits_the_memo(monkeypatch):
    calls = _counting(monkeypatch)
    outs = _outs(_maps())
    scorer = RankFeatScorer().fit(outs)
    first = scorer.score(outs)
    again = scorer.score(_outs(outs.fmap.copy(), outs.head))
    assert len(calls) == 1 and np.array_equal(first, again)


class _Bench:
    def splits(self):
        return {"id_train": None, "id_test": None, "near/x": None}


class _Store:
    bench = _Bench()

    def __init__(self, outputs):
        self.outputs = outputs

    def get(self, name, with_fmap=False):
        return self.outputs[name]


def test_sweep_work_lets_a_fresh_process_score_without_decomposing(monkeypatch):
    store = _Store({"id_train": _outs(_maps(seed=1)), "id_test": _outs(_maps(seed=2)), "near/x": _outs(_maps(seed=3))})
    scorer = RankFeatScorer().fit(store.get("id_train"))
    work = scorer.sweep_work(store)
    want = scorer.score(store.get("near/x"))
    rankfeat.forget_memoised()  # as in another worker process
    calls = _counting(monkeypatch)
    trial = pickle.loads(pickle.dumps(RankFeatScorer(1.0))).fit(store.get("id_train"))
    trial.adopt(work)
    got = trial.score(_outs(store.get("near/x").fmap.copy(), store.get("near/x").head))
    assert len(work) == 2 and calls == [] and np.array_equal(got, want)


def test_memo_drops_the_least_recently_used_beyond_its_bytes(monkeypatch):
    monkeypatch.setattr(rankfeat._MEMO, "max_bytes", 2 * 6 * 5 * 4)  # two maps' pooled features
    maps = [_maps(seed=s) for s in range(3)]
    for fmap in maps:
        rankfeat.pooled_without_rank1(fmap)
    assert [key for key, _ in rankfeat._MEMO.items()] == [rankfeat.digest(m) for m in maps[1:]]


# ------------------------------------------------------------------------------------------ registration
def test_registered_reads_the_feature_map_and_pickles():
    method = methods.get("rankfeat")
    scorer = method.scorer(method.resolve({}))
    assert scorer.temperature == 1.0 and scorer.reads_feature_map and not scorer.reads_network
    outs = _outs(_maps())
    scorer.fit(outs)
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(scorer)).score(outs), scorer.score(outs))
