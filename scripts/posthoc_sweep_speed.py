"""How much a post-hoc sweep costs on top of one trained classifier (issue: "train once, sweep the knobs").

Measures, in one run on one machine:
  1. T_train  — training + evaluating one cross-entropy classifier (a plain `run_trial` of msp, empty cache);
  2. T_knn16  — a 16-trial `knn` sweep through real Ray Tune + Optuna + MLflow reusing that classifier;
  3. T_energy16 — the same for `energy`.
and prints T_sweep / T_train (goal: < 0.30). Sweep times are the driver's wall time from the start of
`sweep.run` (Ray already started, so its ~3 s boot is reported separately) to the end.

    python scripts/posthoc_sweep_speed.py [--benchmark fashion-mnist] [--trials 16]
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import ray

from orchestrator import data as benchmarks
from orchestrator.cache import ModelCache
from orchestrator.sweep.prepare import SweepOptions, prepare
from orchestrator.sweep.runner import run as run_sweep
from orchestrator.trial import TrialSettings, run_trial


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--benchmark", default="fashion-mnist")
    ap.add_argument("--trials", type=int, default=16)
    ap.add_argument("--concurrent", type=int, default=2)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="oodsweep-bench-"))
    cache_dir = str(work / "cache")
    bench = benchmarks.load(args.benchmark)

    t0 = time.perf_counter()
    first = run_trial({}, bench, TrialSettings("msp", cache_dir=cache_dir, threads=2,
                                              data_fingerprint=bench.fingerprint()))
    t_train = time.perf_counter() - t0
    print(f"train + evaluate one classifier ({args.benchmark}, {bench.recipe['epochs']} epochs): {t_train:.1f} s "
          f"(near AUROC msp {first['near/auroc']:.3f})", flush=True)

    t0 = time.perf_counter()
    ray.init(num_cpus=args.concurrent, include_dashboard=False, log_to_driver=False)
    t_ray = time.perf_counter() - t0
    rows = []
    for method in ("knn", "energy"):
        opts = SweepOptions(method=method, benchmark=args.benchmark, num_samples=args.trials,
                                  max_concurrent=args.concurrent, tracking_uri=f"sqlite:///{work / 'mlflow.db'}",
                                  storage_path=str(work / "results"), cache_dir=cache_dir, dashboard=False, quiet=True)
        prep = prepare(opts)
        t0 = time.perf_counter()
        res = run_sweep(prep)
        elapsed = time.perf_counter() - t0
        rows.append((method, elapsed, res))
    ray.shutdown()
    cache = ModelCache(cache_dir)
    print(f"Ray start-up (once per sweep process): {t_ray:.1f} s")
    for method, elapsed, res in rows:
        print(f"{args.trials}-trial {method} sweep on the cached classifier: {elapsed:.1f} s "
              f"({res.num_errors} failed; best near AUROC {res.best_matrix.flat()['near/auroc']:.3f}) "
              f"-> ratio to one training: {elapsed / t_train:.2f} (goal < 0.30)")
    print(f"classifiers trained in total: {cache.trained_count()} (expected 1); "
          f"split extractions: {cache.extracted_count()} (each split once)")


if __name__ == "__main__":
    main()
