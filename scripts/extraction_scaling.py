"""Sharded extraction: 2 Ray workers against 1 on the same shards, measured in one run (issue #14).

    python scripts/extraction_scaling.py [--benchmark fashion-mnist] [--shard 4096] [--workers 1 2]

Trains (or finds) the benchmark's cross-entropy classifier once, then for each worker count starts a local Ray
instance with that many CPUs and extracts every split in shards of ``--shard`` images (1 CPU and 1 thread per
task) into an empty output cache; prints the wall time of each and the speed-up (goal: 2 workers ≥ 1.7× one on
2 cores). Ray's start-up is not timed; task start-up is.
"""
from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import ray

from orchestrator import data as benchmarks
from orchestrator.sweep import extraction
from orchestrator.trial import TrialSettings, prepare_network


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--benchmark", default="fashion-mnist")
    ap.add_argument("--shard", type=int, default=4096)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="oodsweep-extract-"))
    bench = benchmarks.load(args.benchmark)
    models = work / "models-only"
    settings = TrialSettings("msp", cache_dir=str(models), threads=2, data_fingerprint=bench.fingerprint())
    net = prepare_network({}, bench, settings)  # the classifier, trained once here (not timed)
    images = sum(len(s) for s in bench.splits().values() if len(s) > args.shard)  # smaller splits are not sharded
    took = {}
    for workers in args.workers:
        cache = work / f"cache-{workers}"
        shutil.copytree(models / "models" / net["key"], cache / "models" / net["key"], ignore=shutil.ignore_patterns(
            "outputs"))
        ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False, address="local")
        t0 = time.perf_counter()
        extraction.extract_sharded({}, bench, TrialSettings("msp", cache_dir=str(cache), threads=1,
                                                            data_fingerprint=bench.fingerprint()),
                                   {"cpu": 1, "gpu": 0}, lambda msg: None, shard_images=args.shard)
        took[workers] = time.perf_counter() - t0
        ray.shutdown()
        print(f"{workers} worker(s): {images:,} images ({args.benchmark}, the splits over {args.shard}, in shards of that size) "
              f"extracted in {took[workers]:.1f} s", flush=True)
    if 1 in took:
        for workers in took:
            if workers != 1:
                print(f"speed-up with {workers} workers: {took[1] / took[workers]:.2f}x (goal >= 1.7x with 2)")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
