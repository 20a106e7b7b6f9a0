"""Exact k-nearest-neighbour distances on the CPU for a wide k: a matrix product and a threshold selection.

Why not faiss here: faiss' exact CPU search (IndexFlatL2) selects the k smallest distances of every query with a
reservoir for k ≥ 100, which at KNN's table width (k = 1,024 of Fashion-MNIST's 30,000-row bank, 25,797 queries,
128-d) costs twice its matrix product: 4.3–5.0 s against 1.4 s for k = 1 on 2 cores. Here each block of queries
gets its inner products from one BLAS call; a per-query threshold estimated from a strided sample of them keeps
~1.7 k candidates, and only those are partitioned and sorted: 2.6–2.7 s for the same distances (to float32
rounding). ``scripts/posthoc_sweep_speed.py`` times both. faiss stays for the GPU and the approximate IVF index.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np

#: Inner products held per block of queries (two blocks in flight): small enough to stay near the CPU caches.
BLOCK_BYTES = 32 * 2**20
#: Columns of a block sampled to estimate each query's k-th largest inner product.
SAMPLE_COLUMNS = 1024
#: How many more candidates than k the estimated threshold aims to keep (a query that gets fewer than k is
#: selected exactly from its whole row instead; with 1.5 none did on Fashion-MNIST).
MARGIN = 1.5


def nearest_sq_distances(queries: np.ndarray, bank: np.ndarray, k: int, threads: int | None = None) -> np.ndarray:
    """The ``k`` smallest squared L2 distances from each query row to the bank rows, ascending per row (what
    ``faiss.IndexFlatL2(d).search(queries, k)[0]`` returns), shape ``(len(queries), k)``, float32.

    ``threads`` blocks are computed at once, each with a one-thread BLAS (default: the BLAS pool's size, which
    Ray sets to a task's CPUs)."""
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    bank = np.ascontiguousarray(bank, dtype=np.float32)
    n = len(bank)
    if not 1 <= k <= n:
        raise ValueError(f"k must be between 1 and the bank size {n}, got {k}")
    bank_t = np.ascontiguousarray(bank.T)
    # ‖q − b‖² = ‖q‖² − 2 (q·b − ‖b‖²/2): the k nearest are the k largest of q·b − ‖b‖²/2.
    half_norms = 0.5 * np.einsum("ij,ij->i", bank, bank)
    rows = int(np.clip(BLOCK_BYTES // (4 * n), 1, 256))

    def block(start: int, stop: int) -> np.ndarray:
        q = queries[start:stop]
        key = q @ bank_t
        key -= half_norms
        top = largest(key, k)
        top *= -2.0
        top += np.einsum("ij,ij->i", q, q)[:, None]
        np.maximum(top, 0.0, out=top)
        top.sort(axis=1)
        return top

    if len(queries) == 0:
        return np.empty((0, k), np.float32)
    return map_blocks(block, len(queries), rows, threads)


def map_blocks(block, n: int, rows: int, threads: int | None = None) -> np.ndarray:
    """``concatenate([block(start, stop) for each block of rows of n])`` — ``threads`` blocks at a time, each with a
    one-thread BLAS (default: the BLAS pool's size, which Ray sets to a task's CPUs): the block-parallel loop of the
    exact searches here and of NNGuide's and the relation graph's products."""
    from threadpoolctl import threadpool_info, threadpool_limits

    starts = range(0, n, rows)
    if len(starts) == 0:
        return np.empty(0)
    if threads is None:
        threads = max([p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas"] or [1])
    if threads <= 1 or len(starts) == 1:
        return np.concatenate([block(s, min(s + rows, n)) for s in starts])
    with threadpool_limits(1, user_api="blas"), ThreadPoolExecutor(threads) as pool:
        return np.concatenate(list(pool.map(lambda s: block(s, min(s + rows, n)), starts)))


def largest(key: np.ndarray, k: int) -> np.ndarray:
    """The k largest values of each row of ``key`` (unordered), shape (rows, k)."""
    rows, n = key.shape
    if n <= 4 * k:  # too few columns for a sample to save anything
        return np.partition(key, n - k, axis=1)[:, n - k:].copy()
    sample = key[:, ::max(1, n // SAMPLE_COLUMNS)]  # strided: robust to a bank stored class by class
    keep = min(sample.shape[1], int(np.ceil(k * sample.shape[1] / n * MARGIN)) + 8)
    threshold = np.partition(sample, sample.shape[1] - keep, axis=1)[:, sample.shape[1] - keep]
    where = np.flatnonzero(key >= threshold[:, None])
    row = where // n
    counts = np.bincount(row, minlength=rows)
    starts = np.cumsum(counts) - counts
    candidates = np.full((rows, max(int(counts.max()), k)), -np.inf, np.float32)
    candidates[row, np.arange(len(where)) - starts[row]] = key.ravel()[where]
    short = counts < k  # the sample overestimated this query's threshold: select from its whole row
    if short.any():
        candidates[short, :k] = np.partition(key[short], n - k, axis=1)[:, n - k:]
    width = candidates.shape[1]
    return np.partition(candidates, width - k, axis=1)[:, width - k:]
