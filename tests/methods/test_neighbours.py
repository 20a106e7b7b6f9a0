"""Exact k-nearest distances (methods.neighbours) against hand values and faiss' exact search."""
import numpy as np
import pytest

from methods.neighbours import SAMPLE_COLUMNS, nearest_sq_distances


def _faiss(queries, bank, k):
    import faiss

    index = faiss.IndexFlatL2(bank.shape[1])
    index.add(np.ascontiguousarray(bank, dtype=np.float32))
    return index.search(np.ascontiguousarray(queries, dtype=np.float32), k)[0]


def test_hand_values():
    bank = np.array([[0.0], [1.0], [3.0]], dtype=np.float32)
    queries = np.array([[0.0], [2.0]], dtype=np.float32)
    assert nearest_sq_distances(queries, bank, 2).tolist() == [[0.0, 1.0], [1.0, 1.0]]


@pytest.mark.parametrize("threads", [1, 2])
def test_a_wide_k_equals_faiss_on_a_bank_stored_class_by_class(threads):
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(10, 32))
    bank = (centres[np.sort(rng.integers(0, 10, 6000))] + 0.3 * rng.normal(size=(6000, 32))).astype(np.float32)
    bank[:3] = 0.0  # rows a normalisation leaves at zero
    queries = (centres[rng.integers(0, 10, 700)] + 0.3 * rng.normal(size=(700, 32))).astype(np.float32)
    assert np.allclose(nearest_sq_distances(queries, bank, 1024, threads), _faiss(queries, bank, 1024), atol=1e-4)


def test_a_query_whose_sample_misjudges_its_threshold_is_still_exact():
    # Every sampled column (every `stride`-th bank row) is the query itself, and no other row is near: the sample
    # says the k nearest are all at distance 0, which only a few rows are; the query must fall back to its row.
    n, k = 4 * SAMPLE_COLUMNS * 4, 200
    stride = n // SAMPLE_COLUMNS
    rng = np.random.default_rng(1)
    bank = (10 + rng.random((n, 8))).astype(np.float32)
    bank[::stride][:60] = 0.0
    queries = np.zeros((1, 8), dtype=np.float32)
    assert np.allclose(nearest_sq_distances(queries, bank, k), _faiss(queries, bank, k), rtol=1e-5)


def test_k_equal_to_the_bank_size_sorts_every_distance():
    bank = np.random.default_rng(2).normal(size=(50, 4)).astype(np.float32)
    assert np.allclose(nearest_sq_distances(bank[:5], bank, 50), _faiss(bank[:5], bank, 50), atol=1e-5)


def test_no_queries_give_an_empty_table():
    assert nearest_sq_distances(np.zeros((0, 4), np.float32), np.ones((9, 4), np.float32), 3).shape == (0, 3)


def test_k_beyond_the_bank_is_refused():
    with pytest.raises(ValueError, match="bank size 9"):
        nearest_sq_distances(np.zeros((2, 4), np.float32), np.ones((9, 4), np.float32), 10)
