"""A sweep: Optuna (seeded TPE) proposes configurations, Ray Tune runs them as trials, MLflow records them.

Everything that can be wrong with the user's input (method, benchmark, search space, data, tracking
server) is checked before Ray starts or an MLflow run is created, so bad input writes nothing.
A sweep writes ``oodsweep_sweep.json`` (its options and MLflow parent run) next to Tune's experiment state,
which is what ``--resume`` reads to continue it after the driver died.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import methods
from orchestrator import benchmarks, search_space
from orchestrator.errors import UsageError
from orchestrator.metrics import CONVENTIONS, OODMatrix

SMOKE_BUDGET = {"num_samples": 2, "max_concurrent": 2, "epochs": 1}
STATE_FILE = "oodsweep_sweep.json"


@dataclass
class SweepOptions:
    method: str
    benchmark: str = "digits"
    num_samples: int | None = None
    max_concurrent: int | None = None
    epochs: int | None = None
    seed: int = 0
    name: str | None = None
    tracking_uri: str | None = None
    storage_path: str | None = None
    address: str | None = None
    smoke_test: bool = False
    search_space: str | None = None
    data_root: str | None = None
    cache_dir: str | None = None
    cpus_per_trial: float | None = None  # None: the YAML's resources, else 1
    gpus_per_trial: float | None = None  # None: the YAML's resources, else 0
    num_cpus: int | None = None
    num_gpus: int | None = None
    dashboard: bool = True
    dashboard_host: str = "127.0.0.1"
    convention: str = "classic"
    experiment: str = "oodsweep"
    max_failures: int = 2
    scheduler: str = "none"  # none | asha
    grace_period: int = 1
    reduction_factor: int = 2
    report_seconds: float = 5.0  # a training trial reports to Tune at most this often (0: every epoch)
    objectives: list[str] | None = None  # ["val/auroc:max", "val/acc:max"] overrides the YAML's metric/mode
    seeds: int = 0  # re-run the best configuration with this many more seeds
    seeds_every_trial: bool = False
    figures: bool = True
    quiet: bool = False


@dataclass
class SweepResult:
    name: str
    parent_run_id: str
    tracking_uri: str
    results_path: str
    best_config: dict[str, Any] = field(default_factory=dict)
    best_metrics: dict[str, Any] = field(default_factory=dict)
    best_matrix: OODMatrix | None = None
    pareto: list[dict[str, Any]] = field(default_factory=list)
    num_trials: int = 0
    num_errors: int = 0
    seconds: float = 0.0


@dataclass
class Prepared:
    """A validated sweep, ready to run."""

    opts: SweepOptions
    space: search_space.SearchSpace
    bench: benchmarks.Benchmark
    name: str
    tracking_uri: str
    storage_path: str
    num_samples: int
    max_concurrent: int
    fixed: dict[str, Any]
    resources: dict[str, float]
    resume: dict[str, Any] | None = None  # the saved state of the sweep being resumed

    @property
    def experiment_path(self) -> str:
        return f"{self.storage_path.rstrip('/')}/{self.name}"


def prepare(opts: SweepOptions) -> Prepared:
    """Validate everything and load the data; raises UsageError with one clear line."""
    from orchestrator import tracking

    try:
        method = methods.get(opts.method)
    except KeyError as exc:
        raise UsageError(exc.args[0]) from None
    if benchmarks.is_custom(opts.benchmark):
        opts.benchmark = str(Path(opts.benchmark).resolve())  # so --resume works from another folder
    elif opts.benchmark not in benchmarks.available():
        raise UsageError(f"unknown benchmark {opts.benchmark!r}; known benchmarks: {', '.join(benchmarks.available())}")
    if opts.convention not in CONVENTIONS:
        raise UsageError(f"unknown FPR@95 convention {opts.convention!r}; choose one of {', '.join(CONVENTIONS)}")
    for flag, value in (("--num-samples", opts.num_samples), ("--max-concurrent", opts.max_concurrent),
                        ("--epochs", opts.epochs), ("--grace-period", opts.grace_period)):
        if value is not None and value < 1:
            raise UsageError(f"{flag} must be at least 1, got {value}")
    if opts.report_seconds < 0:
        raise UsageError(f"--report-seconds must be 0 or more, got {opts.report_seconds}")
    if opts.reduction_factor < 2:
        raise UsageError(f"--reduction-factor must be at least 2, got {opts.reduction_factor}")
    if opts.scheduler not in ("none", "asha"):
        raise UsageError(f"--scheduler must be asha or none, got {opts.scheduler!r}")
    try:
        space = search_space.load(method.name, opts.search_space)
        if opts.objectives:
            pairs = [o.rsplit(":", 1) if ":" in o else [o, "max"] for o in opts.objectives]
            space.objectives = search_space.parse_objectives([p[0] for p in pairs], [p[1] for p in pairs], "--objective")
            space.metric, space.mode = space.objectives[0]
    except search_space.SearchSpaceError as exc:
        raise UsageError(str(exc)) from None
    if space.multi_objective and opts.scheduler != "none":
        raise UsageError("a multi-objective sweep needs --scheduler none (Tune's schedulers take one metric)")
    resources = {"cpu": opts.cpus_per_trial if opts.cpus_per_trial is not None else space.resources.get("cpu", 1),
                 "gpu": opts.gpus_per_trial if opts.gpus_per_trial is not None else space.resources.get("gpu", 0)}
    if resources["cpu"] < 0 or resources["gpu"] < 0 or resources["cpu"] + resources["gpu"] == 0:
        raise UsageError(f"a trial needs some CPU or GPU, got {resources}")
    try:
        bench = benchmarks.load(opts.benchmark, opts.data_root, smoke=opts.smoke_test)
    except benchmarks.DataUnavailable as exc:
        raise UsageError(str(exc)) from None
    fixed = dict(space.fixed)
    searched = {k.name for k in space.knobs}
    smoke = {**SMOKE_BUDGET, **space.smoke} if opts.smoke_test else {}
    for key, value in smoke.items():  # the YAML's smoke block may also fix cheap values (e.g. teacher: self)
        if key not in SMOKE_BUDGET and key not in searched:
            fixed[key] = value
    epochs = opts.epochs or smoke.get("epochs")
    if epochs is not None:
        if "epochs" in searched:
            raise UsageError(f"{space.path} searches 'epochs'; drop --epochs or fix it in the YAML")
        fixed["epochs"] = epochs
    label = Path(opts.benchmark).stem if benchmarks.is_custom(opts.benchmark) else opts.benchmark
    name = opts.name or f"{method.name}-{label}-{time.strftime('%Y%m%d-%H%M%S')}"
    if not name.replace("-", "").replace("_", "").replace(".", "").isalnum():
        raise UsageError(f"--name may hold letters, digits, '-', '_' and '.' only, got {name!r}")
    uri = tracking.resolve_tracking_uri(opts.tracking_uri)
    try:
        tracking.check_reachable(uri)
    except ConnectionError as exc:
        raise UsageError(str(exc)) from None
    storage = opts.storage_path or "ray_results"
    if "://" not in storage:
        storage = str(Path(storage).resolve())
    return Prepared(opts, space, bench, name, uri, storage,
                    opts.num_samples or smoke.get("num_samples") or space.num_samples,
                    opts.max_concurrent or smoke.get("max_concurrent") or space.max_concurrent, fixed, resources)


def prepare_resume(target: str, storage_path: str | None = None, **overrides) -> Prepared:
    """Re-validate an interrupted sweep from its saved state (a sweep name, or its results folder)."""
    folder = Path(target) if Path(target).is_dir() else Path(storage_path or "ray_results").resolve() / target
    state_file = folder / STATE_FILE
    if not state_file.is_file():
        raise UsageError(f"no sweep to resume at {folder} (expected {STATE_FILE} there); pass the sweep's name "
                         f"with the same --storage-path, or its results folder")
    state = json.loads(state_file.read_text())
    opts = SweepOptions(**{**state["options"], **{k: v for k, v in overrides.items() if v is not None}})
    opts.name, opts.storage_path = folder.name, str(folder.parent)
    prep = prepare(opts)
    prep.resume = state
    return prep


def _write_state(prep: Prepared, parent_run_id: str) -> None:
    state = {"options": asdict(prep.opts), "parent_run_id": parent_run_id, "tracking_uri": prep.tracking_uri,
             "name": prep.name, "created": time.time()}
    state["options"]["name"] = prep.name
    data = json.dumps(state, indent=1).encode()
    if "://" in prep.storage_path:
        import pyarrow.fs

        fs, path = pyarrow.fs.FileSystem.from_uri(prep.experiment_path)
        fs.create_dir(path, recursive=True)
        with fs.open_output_stream(f"{path}/{STATE_FILE}") as f:
            f.write(data)
    else:
        folder = Path(prep.experiment_path)
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / f".{STATE_FILE}.tmp"
        tmp.write_bytes(data)
        os.replace(tmp, folder / STATE_FILE)


def _quiet_libraries() -> None:
    """Our progress lines replace Ray's table reporter; keep Optuna and Tune's chatter out of them."""
    import logging

    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    # Snapshot Tune's experiment state every second (default: >= 10 s): a driver killed later than that after a
    # trial finished resumes without rerunning it. The state is small (trial list + Optuna study).
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "1")
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    logging.getLogger("optuna").setLevel(logging.WARNING)


def _init_ray(opts: SweepOptions):
    import ray

    if ray.is_initialized():
        return None
    address = opts.address or os.environ.get("RAY_ADDRESS")
    if address:
        return ray.init(address=address, log_to_driver=False).dashboard_url
    kwargs = dict(num_cpus=opts.num_cpus or os.cpu_count(), log_to_driver=False,
                  include_dashboard=opts.dashboard, configure_logging=True, logging_level="WARNING")
    if opts.num_gpus is not None:
        kwargs["num_gpus"] = opts.num_gpus
    if opts.dashboard:
        kwargs["dashboard_host"] = opts.dashboard_host
    if os.environ.get("OODSWEEP_OBJECT_STORE_MB"):
        kwargs["object_store_memory"] = int(os.environ["OODSWEEP_OBJECT_STORE_MB"]) * 2**20
    return ray.init(**kwargs).dashboard_url


def _say(opts: SweepOptions, msg: str) -> None:
    if not opts.quiet:
        print(msg, flush=True)


def _open_parent_run(prep: Prepared, method, tags: dict[str, str]):
    from orchestrator import tracking

    opts, space, bench = prep.opts, prep.space, prep.bench
    if prep.resume:
        sweep_run = tracking.SweepRun(prep.tracking_uri, opts.experiment, prep.name, run_id=prep.resume["parent_run_id"])
        sweep_run.client.update_run(sweep_run.run_id, status="RUNNING")
        return sweep_run
    sweep_run = tracking.SweepRun(prep.tracking_uri, opts.experiment, prep.name)
    sweep_run.log_params({"method": method.name, "benchmark": bench.name, "num_samples": prep.num_samples,
                          "max_concurrent": prep.max_concurrent, "seed": opts.seed,
                          "objectives": ",".join(f"{m}:{d}" for m, d in space.objectives),
                          "fpr95_convention": opts.convention, "smoke_test": opts.smoke_test,
                          "scheduler": opts.scheduler, "cpus_per_trial": prep.resources["cpu"],
                          "gpus_per_trial": prep.resources["gpu"],
                          **{f"fixed.{k}": v for k, v in prep.fixed.items()}})
    sweep_run.set_tags(tags)
    sweep_run.log_dict({**space.as_dict(), "fixed": prep.fixed}, "search_space.json")
    return sweep_run


def _scheduler(prep: Prepared):
    if prep.opts.scheduler != "asha":
        return None
    from ray.tune.schedulers import ASHAScheduler

    # Time is the epoch (a report may stand for several, see trainable.ReportPolicy); max_t is one past the last
    # epoch so that no report, the final evaluation included, hits ASHA's "reached max_t: stop" rule.
    return ASHAScheduler(time_attr="epoch", max_t=_max_t(prep), grace_period=prep.opts.grace_period,
                         reduction_factor=prep.opts.reduction_factor)


def _max_t(prep: Prepared) -> int:
    """ASHA's max_t: one past the last epoch (see :func:`_scheduler`)."""
    return int(prep.fixed.get("epochs", prep.bench.recipe.get("epochs", 10))) + 1


def _report_policy(prep: Prepared):
    """Report at every epoch ASHA decides at (its rungs: grace·rf^k below max_t), else at most every N seconds."""
    from orchestrator.trainable import ReportPolicy

    milestones: tuple[int, ...] = ()
    if prep.opts.scheduler == "asha":
        milestones = asha_milestones(prep.opts.grace_period, prep.opts.reduction_factor, _max_t(prep))
    return ReportPolicy(seconds=prep.opts.report_seconds, epochs=milestones)


def asha_milestones(grace_period: int, reduction_factor: int, max_t: int) -> tuple[int, ...]:
    """The epochs at which ASHA (one bracket, Ray's default) compares trials: grace·rf^k, k < log_rf(max_t/grace)+1."""
    rungs = int(math.log(max_t / grace_period) / math.log(reduction_factor) + 1)
    return tuple(int(grace_period * reduction_factor ** k) for k in range(rungs))


def run(prep: Prepared) -> SweepResult:
    import optuna
    from ray import tune
    from ray.tune.search.optuna import OptunaSearch

    from orchestrator import tracking
    from orchestrator.progress import ProgressPrinter
    from orchestrator.trainable import TrialSettings, settings_dict, tune_trainable

    opts, space, bench = prep.opts, prep.space, prep.bench
    method = methods.get(opts.method)
    started = time.time()
    _quiet_libraries()
    dashboard = _init_ray(opts)
    if dashboard:
        _say(opts, f"Ray dashboard: http://{dashboard}  (access token: `ray get-auth-token`)")
    tags = {"method": method.name, "benchmark": bench.name, "paper": method.paper}
    if method.substitute:
        tags["substitute"] = method.substitute
    sweep_run = _open_parent_run(prep, method, tags)
    if not prep.resume:
        _write_state(prep, sweep_run.run_id)
    _say(opts, f"Sweep {prep.name}{' (resumed)' if prep.resume else ''}: {method.name} on {bench.name}"
               f"{' (smoke test)' if opts.smoke_test else ''}, {prep.num_samples} trials, ≤{prep.max_concurrent} at "
               f"once; MLflow {prep.tracking_uri} (run {sweep_run.run_id})")
    status = "FAILED"
    try:
        settings = TrialSettings(method=method.name, seed=opts.seed, cache_dir=opts.cache_dir,
                                 convention=opts.convention, threads=max(1, int(prep.resources["cpu"])),
                                 data_fingerprint=bench.fingerprint())
        shared = _prewarm(method, space, prep.fixed, bench, settings, prep.resources, opts)
        trainable = tune.with_resources(
            tune.with_parameters(tune_trainable, bench=bench, settings=settings_dict(settings), shared=shared,
                                 reporting=_report_policy(prep)),
            dict(prep.resources))
        logger = tracking.MLflowTrialLogger(sweep_run, tags=tags)
        progress = ProgressPrinter(space.metric, space.mode, prep.num_samples, quiet=opts.quiet)
        run_config = tune.RunConfig(name=prep.name, storage_path=prep.storage_path, callbacks=[logger, progress],
                                    verbose=0, failure_config=tune.FailureConfig(max_failures=opts.max_failures),
                                    checkpoint_config=tune.CheckpointConfig(num_to_keep=1))
        if prep.resume:
            tuner = tune.Tuner.restore(prep.experiment_path, trainable, resume_unfinished=True, resume_errored=True)
            # The restored run config holds the pickled callbacks of the dead driver; use fresh ones (ray pinned).
            tuner._local_tuner.get_run_config().callbacks = run_config.callbacks
        else:
            multi = space.multi_objective
            metrics = [m for m, _ in space.objectives]
            modes = [d for _, d in space.objectives]
            searcher = OptunaSearch(space=search_space.DefineByRun(space.knobs, prep.fixed),
                                    metric=metrics if multi else space.metric, mode=modes if multi else space.mode,
                                    sampler=optuna.samplers.TPESampler(seed=opts.seed))
            tune_config = tune.TuneConfig(search_alg=searcher, num_samples=prep.num_samples,
                                          max_concurrent_trials=prep.max_concurrent, reuse_actors=True,
                                          scheduler=_scheduler(prep),
                                          metric=None if multi else space.metric, mode=None if multi else space.mode)
            tuner = tune.Tuner(trainable, tune_config=tune_config, run_config=run_config)
        grid = tuner.fit()
        result = _summarise(prep, grid, sweep_run, started)
        if opts.seeds and result.best_matrix is not None:
            from orchestrator.seeds import rerun_best_with_seeds

            _say(opts, f"Re-running the best configuration with {opts.seeds} more seed(s)...")
            rerun_best_with_seeds(prep, result, opts.seeds, every_trial=opts.seeds_every_trial, client=sweep_run.client)
        if opts.figures and result.best_matrix is not None:
            from orchestrator.figures import log_sweep_figures

            for note in log_sweep_figures(prep, result, sweep_run.client):
                _say(opts, f"figures: {note}")
        status = "FINISHED" if result.best_matrix is not None else "FAILED"
        return result
    finally:
        sweep_run.end(status)


def _prewarm(method, space, fixed, bench, settings, resources, opts):
    """For a post-hoc sweep whose knobs never change the network: train/load it and extract its outputs in
    one Ray task, and return the ObjectRef that every trial reads them from. None when trials differ in network.
    """
    import ray

    from orchestrator.trainable import shared_outputs
    from orchestrator.training import RECIPE_KNOBS

    if method.trains() or any(k.name in RECIPE_KNOBS or k.name in method.training_knobs for k in space.knobs):
        return None
    _say(opts, "Preparing the shared classifier and its outputs (trained once, cached by config hash)...")
    # Nothing else runs yet: give the preparation every CPU of the largest node.
    node_cpus = max([int(n["Resources"].get("CPU", 0)) for n in ray.nodes() if n.get("Alive")] or [1])
    cpus = max(resources["cpu"], node_cpus)
    task = ray.remote(shared_outputs).options(num_cpus=cpus, num_gpus=resources["gpu"], max_retries=opts.max_failures)
    ref = task.remote(dict(fixed), bench, dataclasses.replace(settings, threads=max(1, int(cpus))))
    ray.get(ref)  # surface a failure here, before any trial starts
    return ref


def pareto_front(rows: list[dict[str, Any]], objectives: list[tuple[str, str]]) -> list[dict[str, Any]]:
    """The rows no other row dominates (at least as good in every objective, better in one)."""
    def key(r):
        return [r[m] if d == "max" else -r[m] for m, d in objectives]

    front = []
    for r in rows:
        kr = key(r)
        dominated = any(all(a >= b for a, b in zip(key(o), kr)) and key(o) != kr for o in rows)
        if not dominated:
            front.append(r)
    return front


def _summarise(prep: Prepared, grid, sweep_run, started: float) -> SweepResult:
    space = prep.space
    finished = [r for r in grid if r.error is None and r.metrics and r.metrics.get("final")]
    res = SweepResult(prep.name, sweep_run.run_id, prep.tracking_uri, grid.experiment_path,
                      num_trials=len(grid), num_errors=grid.num_errors, seconds=time.time() - started)
    if not finished:
        return res
    sign = 1 if space.mode == "max" else -1
    candidates = finished
    if space.multi_objective:
        rows = [{"trial_id": r.metrics.get("trial_id"), **{m: r.metrics[m] for m, _ in space.objectives},
                 "config": r.config, "_r": r} for r in finished]
        front = pareto_front(rows, space.objectives)
        candidates = [row["_r"] for row in front]
        res.pareto = [{k: v for k, v in row.items() if k != "_r"} for row in front]
        sweep_run.log_dict({"objectives": space.objectives, "front": res.pareto}, "pareto_front.json")
        sweep_run.log_metrics({"pareto/size": len(front)})
    best = max(candidates, key=lambda r: sign * r.metrics[space.metric])
    res.best_config = dict(best.config)
    res.best_metrics = {k: v for k, v in best.metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    res.best_matrix = OODMatrix.from_json(json.loads(best.metrics["matrix_json"]))
    sweep_run.log_metrics({f"best/{k}": v for k, v in res.best_matrix.flat().items()})
    sweep_run.log_metrics({f"best/{space.metric}": best.metrics[space.metric]})
    sweep_run.log_params({f"best.{k}": v for k, v in res.best_config.items()}, overwrite_ok=True)
    sweep_run.set_tags({"best_trial_id": best.metrics.get("trial_id", ""), "ray_results": grid.experiment_path})
    sweep_run.log_dict(res.best_matrix.to_json(), "best_ood_matrix.json")
    return res


def print_summary(res: SweepResult, metric: str, out=sys.stdout) -> None:
    print("", file=out)
    if res.pareto:
        names = [k for k in res.pareto[0] if k not in ("trial_id", "config")]
        print(f"Pareto front ({len(res.pareto)} trials): " + ", ".join(names), file=out)
        for row in res.pareto:
            print(f"  {row['trial_id']}: " + ", ".join(f"{n}={row[n]:.4f}" for n in names), file=out)
    if res.best_matrix is None:
        print(f"No trial finished ({res.num_errors} of {res.num_trials} failed); see MLflow run {res.parent_run_id}.", file=out)
    else:
        cfg = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in sorted(res.best_config.items()))
        print(f"Best trial ({metric} = {res.best_metrics[metric]:.4f} on validation): {cfg}", file=out)
        print("Test OOD metric matrix (%):", file=out)
        print(res.best_matrix.format(), file=out)
    print(f"\nTrials: {res.num_trials} ({res.num_errors} failed) in {res.seconds:.1f} s", file=out)
    print(f"MLflow: parent run {res.parent_run_id} in {res.tracking_uri}", file=out)
    print(f"        mlflow ui --backend-store-uri {res.tracking_uri}   (or: python -m orchestrator ui)", file=out)
    print(f"Ray results: {res.results_path}", file=out)
