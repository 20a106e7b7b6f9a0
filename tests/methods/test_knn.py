"""KNN's approximate index (index: ivf) against exact search on clustered features."""
import numpy as np
import pytest


# ---------------------------------------------------------------- approximate search (index: ivf)
def _clustered(n, seed):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(8, 16))
    return (centres[rng.integers(0, 8, n)] + 0.3 * rng.normal(size=(n, 16))).astype(np.float32)


def _knn_scores(index, nprobe, k=5, nlist=8):
    from methods.base import Outputs
    from methods.knn import KnnScorer

    bank, queries = _clustered(2000, 0), _clustered(300, 1)
    scorer = KnnScorer(k, use_gpu=False, index=index, nlist=nlist, nprobe=nprobe)
    scorer.fit(Outputs(np.zeros((len(bank), 2)), bank))
    return scorer.score(Outputs(np.zeros((len(queries), 2)), queries))


def test_ivf_probing_every_cell_is_exact():
    assert np.allclose(_knn_scores("ivf", nprobe=8), _knn_scores("flat", nprobe=8), atol=1e-5)


def test_ivf_probing_few_cells_ranks_like_exact_search():
    from scipy.stats import spearmanr

    assert spearmanr(_knn_scores("ivf", nprobe=2), _knn_scores("flat", nprobe=2)).statistic > 0.95


def test_ivf_scores_are_finite_when_cells_hold_fewer_than_k():
    assert np.isfinite(_knn_scores("ivf", nprobe=1, k=400, nlist=40)).all()


def test_an_unknown_index_is_refused():
    from methods.knn import KnnScorer

    with pytest.raises(ValueError, match="flat or ivf"):
        KnnScorer(5, index="hnsw")


# ---------------------------------------------------------------- an out-of-core bank (memory-mapped features)
def test_an_out_of_core_bank_gives_the_in_memory_scores(tmp_path, monkeypatch):
    import pickle

    from methods import knn
    from methods.base import Outputs

    bank, queries = _clustered(3000, 0), _clustered(200, 1)
    np.save(tmp_path / "features.npy", bank)
    mapped = np.load(tmp_path / "features.npy", mmap_mode="r")
    monkeypatch.setattr(knn, "OUT_OF_CORE_BYTES", 1000)  # this small bank counts as large
    monkeypatch.setattr(knn, "SHARD_ROWS", 700)  # five shards, the last one short
    scorer = knn.KnnScorer(20, use_gpu=False).fit(Outputs(np.zeros((3000, 2)), mapped))
    scorer = pickle.loads(pickle.dumps(scorer))  # as it travels to a Ray worker: the file, not the data
    reference = knn.KnnScorer(20, use_gpu=False).fit(Outputs(np.zeros((3000, 2)), bank))
    q = Outputs(np.zeros((200, 2)), queries)
    assert np.allclose(scorer.score(q), reference.score(q), atol=1e-5)
