"""Per-trial cost of a post-hoc sweep against the engine's own floor, measured in one run (issue #16).

    python scripts/posthoc_overhead.py [--benchmark digits] [--small 16] [--large 256] [--profile FILE]

1. floor  — plain Ray Tune + OptunaSearch (seeded TPE, one float knob, 2 at once) on a function that returns at
            once: wall time of a ``small``- and a ``large``-trial run; marginal cost = (T_large - T_small) / (large -
            small).
2. sweep  — ``sweep energy`` (the full path: Optuna, trials, MLflow parent + child runs, artifacts, figures) on the
            cached classifier of ``--benchmark``, same trial counts, same marginal cost.
Prints both marginal costs and their ratio (goal: <= 2 at 256 trials). The classifier is trained and extracted once
before anything is timed; Ray is started once for all runs. ``--profile FILE`` writes a cProfile of the driver
during the large sweep (read it with ``python -m pstats FILE``).
"""
from __future__ import annotations

import argparse
import cProfile
import tempfile
import time
from pathlib import Path

import ray


def _trivial(config):
    from ray import tune

    tune.report({"score": -abs(config["x"] - 1.0)})


def _space(trial):
    trial.suggest_float("x", 0.1, 10.0, log=True)


def floor(trials: int, concurrent: int) -> float:
    """Wall seconds of ``trials`` trivial trials through Tune + OptunaSearch (what no sweep can go below)."""
    import optuna
    from ray import tune
    from ray.tune.search.optuna import OptunaSearch

    searcher = OptunaSearch(space=_space, metric="score", mode="max", sampler=optuna.samplers.TPESampler(seed=0))
    with tempfile.TemporaryDirectory() as storage:
        tuner = tune.Tuner(_trivial, tune_config=tune.TuneConfig(search_alg=searcher, num_samples=trials,
                                                               max_concurrent_trials=concurrent, reuse_actors=True),
                           run_config=tune.RunConfig(storage_path=storage, verbose=0))
        t0 = time.perf_counter()
        tuner.fit()
        return time.perf_counter() - t0


def sweep(work: Path, benchmark: str, trials: int, concurrent: int, tag: str, profile: str | None = None) -> float:
    """Wall seconds of a ``trials``-trial ``sweep energy`` on the cached classifier (Ray already running)."""
    from orchestrator.sweep.prepare import SweepOptions, prepare
    from orchestrator.sweep.runner import run

    opts = SweepOptions(method="energy", benchmark=benchmark, num_samples=trials, max_concurrent=concurrent,
                        tracking_uri=f"sqlite:///{work / 'mlflow.db'}", storage_path=str(work / "results"),
                        cache_dir=str(work / "cache"), dashboard=False, quiet=True, name=f"energy-{tag}")
    prep = prepare(opts)
    profiler = cProfile.Profile() if profile else None
    t0 = time.perf_counter()
    if profiler:
        profiler.enable()
    res = run(prep)
    if profiler:
        profiler.disable()
        profiler.dump_stats(profile)
    took = time.perf_counter() - t0
    assert res.num_trials == trials and res.num_errors == 0, (res.num_trials, res.num_errors)
    return took


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--benchmark", default="digits")
    ap.add_argument("--small", type=int, default=16)
    ap.add_argument("--large", type=int, default=256)
    ap.add_argument("--concurrent", type=int, default=2)
    ap.add_argument("--profile", default=None)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="oodsweep-overhead-"))
    ray.init(address="local", num_cpus=args.concurrent, include_dashboard=False, log_to_driver=False)
    sweep(work, args.benchmark, 2, args.concurrent, "warm-up")  # trains + extracts the classifier once
    floors = {n: floor(n, args.concurrent) for n in (args.small, args.large)}
    sweeps = {n: sweep(work, args.benchmark, n, args.concurrent, str(n),
                       args.profile if n == args.large else None) for n in (args.small, args.large)}
    ray.shutdown()
    span = args.large - args.small
    floor_each = (floors[args.large] - floors[args.small]) / span
    sweep_each = (sweeps[args.large] - sweeps[args.small]) / span
    for n in (args.small, args.large):
        print(f"{n:4d} trials: Tune+Optuna floor {floors[n]:6.1f} s   sweep energy ({args.benchmark}) "
              f"{sweeps[n]:6.1f} s")
    print(f"per additional trial: floor {floor_each * 1000:.0f} ms, sweep {sweep_each * 1000:.0f} ms "
          f"-> ratio {sweep_each / floor_each:.2f} (goal <= 2)")


if __name__ == "__main__":
    main()
