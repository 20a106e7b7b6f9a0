"""What a study of every post-hoc method costs on a classifier already in the cache (issue 24, item 8).

Measures, in one run on one machine:
  1. T_train — training + evaluating one cross-entropy classifier (a plain `run_trial` of msp, empty cache);
  2. T_zoo   — right after it, one sweep per post-hoc method on that classifier, through real Ray + Optuna +
     MLflow, one after another in this process as `benchmark` runs them (the benchmark loaded once, one evaluator
     pool kept between the sweeps: batched.kept_between_sweeps): 16 configurations for a method that searches a
     knob, 1 for one that has none; each sweep's wall time from its preparation to its end.
and prints T_zoo / T_train (goal: <= 2), with the methods that read cached outputs and those that run the
network (input gradients, training images, intermediate blocks) summed apart. Ray's start-up and the creation of
the MLflow / Optuna stores (once per process or project) are printed apart, not counted in a sweep.

    python scripts/posthoc_zoo_speed.py [--benchmark fashion-mnist] [--trials 16] [--skip-network] [--skip csd]
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import optuna
import ray
from mlflow.tracking import MlflowClient

import methods
from orchestrator import data as benchmarks
from orchestrator import search_space
from orchestrator.cache import ModelCache
from orchestrator.sweep.batched import kept_between_sweeps
from orchestrator.sweep.prepare import SweepOptions, prepare
from orchestrator.sweep.runner import run as run_sweep
from orchestrator.trial import TrialSettings, run_trial


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--benchmark", default="fashion-mnist")
    ap.add_argument("--trials", type=int, default=16, help="configurations of a method that searches a knob")
    ap.add_argument("--concurrent", type=int, default=2)
    ap.add_argument("--skip-network", action="store_true", help="leave out the methods that run the network")
    ap.add_argument("--only", nargs="*", help="these methods only")
    ap.add_argument("--skip", nargs="*", default=[], help="leave these methods out")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="oodsweep-zoo-"))
    cache_dir = str(work / "cache")
    bench = benchmarks.load(args.benchmark)
    zoo = [m for m in methods.catalog() if m["kind"] == "post-hoc" and (not args.only or m["name"] in args.only)
           and not (args.skip_network and m["reads"] == "network") and m["name"] not in args.skip]

    t0 = time.perf_counter()
    ray.init(address="local", num_cpus=args.concurrent, include_dashboard=False, log_to_driver=False)
    t_ray = time.perf_counter() - t0
    tracking = f"sqlite:///{work / 'mlflow.db'}"
    t0 = time.perf_counter()
    MlflowClient(tracking).search_experiments()
    optuna.storages.RDBStorage(f"sqlite:///{work / 'optuna.db'}")
    t_stores = time.perf_counter() - t0

    t0 = time.perf_counter()
    run_trial({}, bench, TrialSettings("msp", cache_dir=cache_dir, threads=2, data_fingerprint=bench.fingerprint()))
    t_train = time.perf_counter() - t0
    print(f"train + evaluate one classifier ({args.benchmark}, {bench.recipe['epochs']} epochs): {t_train:.1f} s",
          flush=True)

    rows = []
    loaded = {(args.benchmark, None, False): bench}  # as prepare() keys the benchmarks it loaded
    with kept_between_sweeps():
        for m in zoo:
            trials = args.trials if search_space.load(m["name"]).knobs else 1
            opts = SweepOptions(method=m["name"], benchmark=args.benchmark, num_samples=trials,
                                name=f"zoo-{m['name']}", max_concurrent=args.concurrent, tracking_uri=tracking,
                                storage_path=str(work / "results"), cache_dir=cache_dir, dashboard=False, quiet=True)
            t0 = time.perf_counter()
            res = run_sweep(prepare(opts, loaded=loaded))
            elapsed = time.perf_counter() - t0
            near = res.best_matrix.flat()["near/auroc"] if res.best_matrix is not None else float("nan")
            rows.append((m["name"], m["reads"], trials, elapsed, res.num_errors))
            print(f"  {m['name']:<12} reads {m['reads']:<12} {trials:>2} configurations: {elapsed:6.1f} s "
                  f"({res.num_errors} failed; best near AUROC {near:.3f})", flush=True)
    ray.shutdown()
    cache = ModelCache(cache_dir)
    outputs = sum(r[3] for r in rows if r[1] != "network")
    network = sum(r[3] for r in rows if r[1] == "network")
    print(f"Ray start-up (once per process): {t_ray:.1f} s; MLflow + Optuna stores created (once per project): "
          f"{t_stores:.1f} s")
    print(f"{sum(r[1] != 'network' for r in rows)} methods reading cached outputs: {outputs:.1f} s -> "
          f"{outputs / t_train:.2f}x one training")
    if network:
        print(f"{sum(r[1] == 'network' for r in rows)} methods running the network: {network:.1f} s -> "
              f"{network / t_train:.2f}x one training")
    print(f"the whole zoo: {outputs + network:.1f} s -> ratio to one training: {(outputs + network) / t_train:.2f} "
          f"(goal <= 2)")
    print(f"classifiers trained in total: {cache.trained_count()} (expected 1)")


if __name__ == "__main__":
    main()
