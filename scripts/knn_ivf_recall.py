"""Recall and speed of KNN's approximate IVF index against exact search, measured in one run (issue #14).

    python scripts/knn_ivf_recall.py [--bank 200000] [--queries 5000] [--dim 128] [--k 50] [--nprobe 1 4 16 64]

Features: L2-normalised Gaussian clusters (like penultimate features of a classifier: one cluster per class) plus
queries drawn the same way. For each nprobe, prints recall@k (the share of the exact k nearest neighbours that IVF
returns), the relative error of the k-th distance (what KNN scores) and the AUROC agreement proxy: Spearman
correlation of IVF's and exact scores; and the search time ratio (exact / IVF, same machine, same threads).
"""
from __future__ import annotations

import argparse
import time

import numpy as np
from scipy.stats import spearmanr

from methods.knn import default_nlist, flat_l2_index, ivf_l2_index, l2_normalise


def clustered(n: int, dim: int, classes: int, rng) -> np.ndarray:
    centres = rng.normal(size=(classes, dim))
    return l2_normalise(centres[rng.integers(0, classes, n)] + 0.35 * rng.normal(size=(n, dim)))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--bank", type=int, default=200_000)
    ap.add_argument("--queries", type=int, default=5_000)
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--classes", type=int, default=100)
    ap.add_argument("--k", type=int, default=50)
    ap.add_argument("--nprobe", type=int, nargs="+", default=[1, 4, 16, 64])
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    bank, queries = clustered(args.bank, args.dim, args.classes, rng), clustered(args.queries, args.dim,
                                                                                  args.classes, rng)
    flat, _ = flat_l2_index(bank, use_gpu=False)
    t0 = time.perf_counter()
    d_exact, i_exact = flat.search(queries, args.k)
    t_exact = time.perf_counter() - t0
    nlist = default_nlist(args.bank)
    print(f"bank {args.bank:,} × {args.dim}, {args.queries:,} queries, k = {args.k}, nlist = {nlist}; "
          f"exact search {t_exact:.2f} s")
    for nprobe in args.nprobe:
        t0 = time.perf_counter()
        ivf, _ = ivf_l2_index(bank, nlist, nprobe, use_gpu=False)
        t_build = time.perf_counter() - t0
        t0 = time.perf_counter()
        d_ivf, i_ivf = ivf.search(queries, args.k)
        t_ivf = time.perf_counter() - t0
        recall = np.mean([len(set(a) & set(b)) / args.k for a, b in zip(i_exact, i_ivf, strict=True)])
        kth_exact, kth_ivf = d_exact[:, -1], np.where(i_ivf[:, -1] >= 0, d_ivf[:, -1], np.nan)
        rel = np.nanmean(np.abs(kth_ivf - kth_exact) / np.maximum(kth_exact, 1e-12))
        rho = spearmanr(-kth_exact, -np.nan_to_num(kth_ivf, nan=np.nanmax(kth_ivf))).statistic
        print(f"nprobe {nprobe:3d}: recall@{args.k} {recall:.3f}, k-th distance error {100 * rel:.2f} %, "
              f"score rank correlation {rho:.4f}, search {t_exact / t_ivf:.1f}x faster than exact "
              f"(index built in {t_build:.1f} s)")


if __name__ == "__main__":
    main()
