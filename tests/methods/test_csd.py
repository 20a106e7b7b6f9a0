"""CSD (MODE's cross-scale decision): reduces to KNN, picks the closest scale, handles any map size."""
import numpy as np
import pytest

from methods.base import Outputs
from methods.csd import CSDScorer, centre_window, num_scales, scale_vectors


def _knn_reference(train_h, test_h, k):
    """Deep-KNN written out: normalised global features, −squared distance to the k-th nearest neighbour."""
    a = train_h / (np.linalg.norm(train_h, axis=1, keepdims=True) + 1e-10)
    b = test_h / (np.linalg.norm(test_h, axis=1, keepdims=True) + 1e-10)
    d = ((b[:, None, :] - a[None, :, :]) ** 2).sum(-1)
    return -np.sort(d, axis=1)[:, k - 1]


def _maps(n, c=8, h=4, w=4, seed=0):
    return np.random.default_rng(seed).random((n, c, h, w)).astype(np.float32)


def test_grid1_without_centre_equals_knn():
    train, test = _maps(60, seed=0), _maps(25, seed=1)
    k = 5
    scorer = CSDScorer(k=k, grid=1, centre=False).fit(Outputs(np.zeros((60, 2)), train.mean((2, 3)), fmap=train))
    got = scorer.score(Outputs(np.zeros((25, 2)), test.mean((2, 3)), fmap=test))
    want = _knn_reference(train.mean((2, 3)).astype(np.float64), test.mean((2, 3)).astype(np.float64), k)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    assert np.corrcoef(got, want)[0, 1] > 0.9999


def test_score_is_the_scale_with_the_smallest_distance():
    train, test = _maps(40, seed=2), _maps(10, seed=3)
    scorer = CSDScorer(k=3, grid=2, centre=True).fit_maps(train)
    d = scorer.distances(test)
    assert d.shape == (10, 6)  # 4 quadrants + global + centre
    np.testing.assert_allclose(scorer.score_maps(test), -d.min(axis=1))
    assert CSDScorer(k=3, aggregator="mean").fit_maps(train).score_maps(test) == pytest.approx(-d.mean(axis=1))
    # a test map whose top-left quadrant copies a training quadrant exactly: that scale has the smallest distance
    probe = _maps(1, seed=9) * 5.0
    probe[:, :, :2, :2] = train[0, :, :2, :2]
    scorer1 = CSDScorer(k=1, grid=2, centre=True).fit_maps(train)
    d1 = scorer1.distances(probe)[0]
    assert d1[0] == pytest.approx(0.0, abs=1e-5)
    assert d1.argmin() == 0 and scorer1.score_maps(probe)[0] == pytest.approx(0.0, abs=1e-5)


def test_bank_holds_every_scale_of_every_image_and_k_is_clamped():
    train = _maps(7, seed=4)
    scorer = CSDScorer(k=1000, grid=3, centre=True).fit_maps(train)
    assert scorer.bank_.shape == (7 * num_scales(3, True), 8) == (7 * 11, 8)
    assert np.isfinite(scorer.score_maps(_maps(3, seed=5))).all()


def test_centre_window_generalises_to_any_size():
    assert centre_window(4, 4) == (slice(1, 3), slice(1, 3))  # the paper's central 2×2 of a 4×4 map
    assert centre_window(7, 7) == (slice(1, 5), slice(1, 5))
    assert centre_window(1, 1) == (slice(0, 1), slice(0, 1))
    fmap = _maps(2, h=7, w=5)
    v = scale_vectors(fmap, grid=2, centre=True)
    assert v.shape == (2, 6, 8)
    np.testing.assert_allclose(v[:, 4], fmap.mean((2, 3)), rtol=1e-5)
    np.testing.assert_allclose(v[:, 5], fmap[:, :, 1:5, 1:4].mean((2, 3)), rtol=1e-5)


def test_bad_knobs_and_missing_fmap():
    with pytest.raises(ValueError):
        CSDScorer(k=0)
    with pytest.raises(ValueError):
        CSDScorer(aggregator="median")
    with pytest.raises(ValueError):
        CSDScorer().fit(Outputs(np.zeros((2, 2)), np.zeros((2, 3))))


def test_registered_and_pickles():
    import pickle

    import methods

    csd = methods.get("csd")
    scorer = csd.scorer(csd.resolve({"k": 2, "grid": 1, "centre": False}))
    assert scorer.reads_feature_map and scorer.needs_fit and not scorer.centre
    scorer.fit_maps(_maps(10))
    before = scorer.score_maps(_maps(4, seed=8))
    again = pickle.loads(pickle.dumps(scorer))
    np.testing.assert_allclose(again.score_maps(_maps(4, seed=8)), before)


# ------------------------------------------------------------------------------------------ the process memo
@pytest.fixture
def fresh_memo():
    from methods import csd

    csd.forget_memoised()
    yield csd
    csd.forget_memoised()


def test_a_second_k_reads_the_memoised_table(fresh_memo):
    train, test = _maps(30, seed=1), _maps(5, seed=2)
    CSDScorer(k=3).fit_maps(train).score_maps(test)
    CSDScorer(k=7).fit_maps(train).score_maps(test)
    assert len(fresh_memo._TABLES) == 1


def test_the_memoised_score_equals_a_fresh_one(fresh_memo):
    train, test = _maps(30, seed=1), _maps(5, seed=2)
    CSDScorer(k=3).fit_maps(train).score_maps(test)
    from_memo = CSDScorer(k=7).fit_maps(train).score_maps(test)
    fresh_memo.forget_memoised()
    np.testing.assert_allclose(from_memo, CSDScorer(k=7).fit_maps(train).score_maps(test), rtol=1e-6)


def test_a_k_wider_than_the_memo_searches_again(fresh_memo, monkeypatch):
    monkeypatch.setattr(fresh_memo, "MEMO_WIDTH", 4)
    train, test = _maps(30, seed=1), _maps(5, seed=2)
    CSDScorer(k=2).fit_maps(train).score_maps(test)
    wide = CSDScorer(k=20).fit_maps(train).score_maps(test)
    fresh_memo.forget_memoised()
    np.testing.assert_allclose(wide, CSDScorer(k=20).fit_maps(train).score_maps(test), rtol=1e-6)


def test_another_grid_is_another_table(fresh_memo):
    train, test = _maps(30, seed=1), _maps(5, seed=2)
    CSDScorer(k=3, grid=2).fit_maps(train).score_maps(test)
    CSDScorer(k=3, grid=1).fit_maps(train).score_maps(test)
    assert len(fresh_memo._TABLES) == 2
