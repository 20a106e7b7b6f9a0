"""Peak memory of a KNN trial over a feature bank larger than memory should need (issue #14), in one run.

    python scripts/knn_memory.py [--gb 2.0] [--dim 128] [--queries 5000] [--k 50] [--folder DIR]

Writes a float32 bank of ``--gb`` GB (normalised Gaussian clusters, as penultimate features are) into the feature
store's format (``features.npy``, read memory-mapped, as the cache serves it), then, in a fresh process, fits and
scores a KNN scorer exactly as a trial does (exact search, the k-th neighbour distance of every query) and prints
that process's peak RSS (``ru_maxrss``) and wall time. Goal: a 2 GB bank peaks below 1.5 GB RSS.
"""
from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent

TRIAL = """
import resource, sys, time
import numpy as np
sys.path.insert(0, {root!r})
from methods.base import Outputs
from methods.knn import KnnScorer
folder = {folder!r}
bank = np.load(folder + "/features.npy", mmap_mode="r")
queries = np.load(folder + "/queries.npy")
t0 = time.perf_counter()
scorer = KnnScorer({k}, use_gpu=False).fit(Outputs(np.zeros((len(bank), 1), np.float32), bank))
scores = scorer.score(Outputs(np.zeros((len(queries), 1), np.float32), queries))
took = time.perf_counter() - t0
assert np.isfinite(scores).all()
print(f"{{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f}} {{took:.1f}}")
"""


def write_bank(folder: Path, gb: float, dim: int, queries: int, classes: int = 100) -> int:
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(classes, dim)).astype(np.float32)
    rows = int(gb * 2**30 / (4 * dim))
    bank = np.lib.format.open_memmap(folder / "features.npy", mode="w+", dtype=np.float32, shape=(rows, dim))
    for start in range(0, rows, 262_144):
        n = min(262_144, rows - start)
        bank[start:start + n] = centres[rng.integers(0, classes, n)] + 0.35 * rng.normal(size=(n, dim))
    bank.flush()
    del bank
    q = centres[rng.integers(0, classes, queries)] + 0.35 * rng.normal(size=(queries, dim))
    np.save(folder / "queries.npy", q.astype(np.float32))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--gb", type=float, default=2.0)
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--queries", type=int, default=5_000)
    ap.add_argument("--k", type=int, default=50)
    ap.add_argument("--folder", default=None, help="where to write the bank (default: a temporary folder)")
    args = ap.parse_args()
    folder = Path(args.folder or tempfile.mkdtemp(prefix="oodsweep-knn-memory-"))
    folder.mkdir(parents=True, exist_ok=True)
    try:
        t0 = time.perf_counter()
        # The bank is written by a child process: a process's peak RSS passes on to the processes it starts (Linux
        # keeps the high-water mark across fork and exec), so this one must never hold the bank.
        writer = (f"import sys; sys.path.insert(0, {str(ROOT / 'scripts')!r}); import knn_memory; "
                  f"print(knn_memory.write_bank(__import__('pathlib').Path({str(folder)!r}), {args.gb}, {args.dim}, "
                  f"{args.queries}))")
        rows = int(subprocess.run([sys.executable, "-c", writer], capture_output=True, text=True,
                                  check=True).stdout.split()[-1])
        print(f"bank: {rows:,} × {args.dim} float32 = {rows * args.dim * 4 / 2**30:.2f} GB "
              f"(written in {time.perf_counter() - t0:.0f} s); {args.queries:,} queries; k = {args.k}")
        code = TRIAL.format(root=str(ROOT), folder=str(folder), k=args.k)
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
        print(f"knn trial (fit + score, exact, out of core): peak RSS {float(out[0]):.2f} GB (goal < 1.5 GB), "
              f"{out[1]} s")
    finally:
        if args.folder is None:
            shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
