"""Run a prepared sweep: Optuna (seeded TPE) proposes configurations, Ray Tune runs them as trials, MLflow
records them; then the summary (best trial, Pareto front), seed repeats and figures.

The input was validated by :func:`orchestrator.sweep.prepare.prepare`; a sweep saves its state
(:mod:`orchestrator.sweep.state`) so that ``--resume`` can continue it after the driver died.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import methods
from orchestrator import search_space
from orchestrator.cache import wait_for_writes
from orchestrator.errors import UsageError
from orchestrator.metrics import OODMatrix
from orchestrator.sweep import batched, constraint, extraction, scheduling, state, study
from orchestrator.sweep.dashboard import job_config, job_metadata, task_name
from orchestrator.sweep.interrupt import StopSignals
from orchestrator.sweep.prepare import Prepared, SweepOptions
from orchestrator.tracking.runs import STUDY_TAG
from orchestrator.tracking.trial_runs import TrialRuns


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
    #: model cache key → True when this sweep trained that network, False when it came from the cache.
    networks: dict[str, bool] = field(default_factory=dict)
    #: "SIGINT" or "SIGTERM" when the user stopped the sweep (its runs are then KILLED), else None.
    interrupted: str | None = None
    #: The command that continues this sweep.
    resume_command: str = ""
    #: Optuna storage URL holding the sweep's study (named after the sweep); None when it has none.
    study_storage: str | None = None
    #: The ID-accuracy constraint's verdict on the best trial (orchestrator.sweep.constraint): the summary's line
    #: ("" without a constraint or for a post-hoc sweep), and whether the best trial is feasible (None: no constraint).
    constraint_note: str = ""
    best_feasible: bool | None = None
    #: Tracking records that went to the spool because a store was away (``python -m orchestrator sync``
    #: replays them), the spool's folder, and the stores that were away.
    spooled: int = 0
    spool: str = ""
    away: list[str] = field(default_factory=list)
    #: The command that writes the spool into the stores.
    sync_command: str = ""

    def spool_line(self) -> str:
        """The one line of a sweep whose stores did not take some records (exit code 3)."""
        away = " and ".join(self.away) or "the tracking stores"
        return (f"{away} did not take {self.spooled} records of this sweep; they are kept in {self.spool}: write "
                f"them with {self.sync_command} [--tracking-uri URI]")


#: Loggers of the libraries a sweep drives; their records go to the sweep's log file, not to the terminal.
#: ``ray.init`` resets the "ray" logger, so its busiest children get the handler too (and it is set again after).
LIBRARY_LOGGERS = ("ray", "ray._private", "ray.tune", "ray.train", "ray.air", "ray.util", "ray.autoscaler",
                   "mlflow", "optuna", "alembic", "sqlalchemy", "urllib3", "filelock", "py.warnings",
                   "oodsweep")  # ours: the tracking queue's waits and MLflow's "View run" links


def _quiet_libraries():
    """Keep the libraries' log records off the terminal, so stderr carries only what the user must act on (our
    progress lines replace Ray's table reporter). Records are held in memory until :func:`_start_log_file` knows
    that the sweep really starts (bad input writes nothing), then go to one file whose path is printed."""
    from logging.handlers import MemoryHandler

    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    # Snapshot Tune's experiment state every second (default: >= 10 s): a driver killed later than that after a
    # trial finished resumes without rerunning it. The state is small (trial list + Optuna study).
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "1")
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    # Import them first: each installs its own terminal handler at import time, which is replaced here.
    import mlflow  # noqa: F401
    import optuna  # noqa: F401
    import ray  # noqa: F401

    held = MemoryHandler(capacity=100_000, flushLevel=logging.CRITICAL + 1)
    _log_to(held)
    logging.captureWarnings(True)
    return held


def _start_log_file(prep: Prepared, held) -> Path:
    """The sweep's log file (in its results folder, or the temp folder for remote storage), with the held records."""
    import tempfile

    if "://" in prep.storage_path:
        path = Path(tempfile.gettempdir()) / f"oodsweep-{prep.name}.log"
    else:
        path = Path(prep.experiment_path) / "oodsweep.log"
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    held.setTarget(handler)
    held.flush()
    held.close()
    _log_to(handler)
    return path


def log_libraries_to(path: Path):
    """A study's driver: the libraries' records go to ``path`` only (a sweep's go to its results folder). Returns
    the handler, to be given to the libraries again after ``ray.init`` (:func:`log_again`)."""
    _quiet_libraries()
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    _log_to(handler)
    return handler


def log_again(handler) -> None:
    """``handler`` takes the library loggers back (``ray.init`` resets Ray's)."""
    _log_to(handler)


def _log_to(handler) -> None:
    """``handler`` becomes the only handler of the library loggers (again after ``ray.init`` reset them)."""
    for name in LIBRARY_LOGGERS:
        logger = logging.getLogger(name)
        for old in list(logger.handlers):
            logger.removeHandler(old)
        logger.addHandler(handler)
        # INFO of what we drive; database and HTTP internals only when they warn.
        logger.setLevel(logging.WARNING if name in ("sqlalchemy", "alembic", "urllib3", "filelock") else logging.INFO)
        logger.propagate = False


def init_ray(opts: SweepOptions, metadata: dict[str, str] | None = None) -> tuple[str | None, str]:
    """Join the cluster the user named (``--address`` / ``RAY_ADDRESS``) or start a private local one, as a Ray job
    whose ``metadata`` the dashboard shows (:mod:`orchestrator.sweep.dashboard`).

    Without an address the sweep always starts its own instance (``address="local"``): a bare ``ray.init()`` would
    join — or, through a stale address file, fail to join — a cluster someone started with ``ray start`` on this
    machine. Returns (dashboard URL or None, a line saying which cluster this sweep uses).
    """
    import ray

    if ray.is_initialized():
        return None, "Ray: the instance already running in this process"
    address = opts.address or os.environ.get("RAY_ADDRESS")
    if address:
        ctx = ray.init(address=address, log_to_driver=False, configure_logging=False,
                       job_config=job_config(metadata))
        return ctx.dashboard_url, f"Ray: joined the cluster at {ctx.address_info.get('gcs_address', address)}"
    # configure_logging=False: Ray keeps its records in the "ray" logger, which _quiet_libraries sends to a file.
    kwargs = dict(address="local", num_cpus=opts.num_cpus or os.cpu_count(), log_to_driver=False,
                  include_dashboard=opts.dashboard, configure_logging=False, job_config=job_config(metadata))
    if opts.num_gpus is not None:
        kwargs["num_gpus"] = opts.num_gpus
    if opts.dashboard:
        kwargs["dashboard_host"] = opts.dashboard_host
    if os.environ.get("OODSWEEP_OBJECT_STORE_MB"):
        kwargs["object_store_memory"] = int(os.environ["OODSWEEP_OBJECT_STORE_MB"]) * 2**20
    ctx = ray.init(**kwargs)
    return ctx.dashboard_url, (f"Ray: a private local instance ({kwargs['num_cpus']} CPUs; other Ray clusters on "
                               f"this machine are left alone; --address auto joins a running one)")


def check_resources(resources: dict[str, float], opts: SweepOptions) -> None:
    """A trial asking for more CPUs or GPUs than any node has would wait forever: refuse it with one line — unless
    an autoscaler runs, which may add such a node (then say that the sweep waits for it)."""
    import ray

    nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
    biggest = {"cpu": max((n.get("CPU", 0) for n in nodes), default=0),
               "gpu": max((n.get("GPU", 0) for n in nodes), default=0)}
    short = [f"{resources[k]:g} {k.upper()}s per trial, but the largest node has {biggest[k]:g}"
             for k in ("cpu", "gpu") if resources[k] > biggest[k]]
    if not short:
        return
    joined = bool(opts.address or os.environ.get("RAY_ADDRESS"))
    if joined and _autoscaling():
        _say(opts, f"Waiting for the autoscaler to add a node: {'; '.join(short)}")
        return
    flags = "--cpus-per-trial/--gpus-per-trial (or the YAML's resources)"
    raise UsageError(f"no node of this Ray cluster can run a trial: {'; '.join(short)}; lower {flags}"
                     f"{'' if joined else ' or pass --num-cpus/--num-gpus'}")


def _autoscaling() -> bool:
    """True when this cluster's autoscaler knows node types of its own (a cluster-launcher or KubeRay config), so
    it may add the nodes a trial needs. A plain ``ray start`` or local instance maps each node to an ad-hoc type
    named after the node itself."""
    import json

    try:
        from ray.experimental.internal_kv import _internal_kv_get  # Ray exposes no public check of this

        status = json.loads(_internal_kv_get("__autoscaling_status") or b"{}")
    except Exception:  # noqa: BLE001 - no way to tell: assume a fixed cluster
        return False
    mapping = (status.get("autoscaler_report") or {}).get("node_type_mapping") or {}
    return any(node_type != f"node_{node}" for node, node_type in mapping.items())


def _say(opts: SweepOptions, msg: str) -> None:
    if not opts.quiet:
        print(msg, flush=True)


def _open_parent_run(prep: Prepared, method, tags: dict[str, str]):
    """The sweep's parent run — a new one, or the resumed sweep's (RUNNING again) with the status it had."""
    from orchestrator.tracking.runs import SweepRun

    opts, space, bench = prep.opts, prep.space, prep.bench
    if prep.resume:
        sweep_run = SweepRun(prep.tracking_uri, opts.experiment, prep.name, run_id=prep.resume["parent_run_id"],
                             spool=spool_folder(prep), on_status=lambda line: _say(opts, line))
        run = sweep_run.client.get_run(sweep_run.run_id)
        before = run.info.status
        recorded, margin = constraint.recorded_margin(run.data.params)
        if recorded:  # a resumed sweep keeps the ID-accuracy margin it started with
            space.max_id_acc_drop = margin
        sweep_run.client.update_run(sweep_run.run_id, status="RUNNING")
        return sweep_run, before
    sweep_run = SweepRun(prep.tracking_uri, opts.experiment, prep.name, spool=spool_folder(prep),
                         on_status=lambda line: _say(opts, line))
    sweep_run.log_params({"method": method.name, "benchmark": bench.name, "num_samples": prep.num_samples,
                          "max_concurrent": prep.max_concurrent, "seed": opts.seed,
                          "objectives": ",".join(f"{m}:{d}" for m, d in space.objectives),
                          "fpr95_convention": opts.convention, "smoke_test": opts.smoke_test,
                          "scheduler": opts.scheduler, "cpus_per_trial": prep.resources["cpu"],
                          "gpus_per_trial": prep.resources["gpu"], **constraint.margin_param(space.max_id_acc_drop),
                          **{f"fixed.{k}": v for k, v in prep.fixed.items()}})
    sweep_run.set_tags(tags)
    if opts.study_run_id:  # a sweep of a study (python -m orchestrator benchmark): nested under the study's run
        sweep_run.set_tags({"mlflow.parentRunId": opts.study_run_id, STUDY_TAG: opts.study or ""})
    sweep_run.log_dict({**space.as_dict(), "fixed": prep.fixed}, "search_space.json")
    return sweep_run, None


def spool_folder(prep: Prepared) -> Path:
    """Where the sweep keeps the tracking records its stores did not take (its results folder; the temp folder for
    remote results)."""
    import tempfile

    from orchestrator.tracking.spool import SPOOL_DIR

    if "://" in prep.storage_path:
        return Path(tempfile.gettempdir()) / f"oodsweep-spool-{prep.name}"
    return Path(prep.experiment_path) / SPOOL_DIR


def _replay_spool(prep: Prepared) -> None:
    """A resumed sweep first writes what its last run spooled (its stores must be complete: a batched sweep
    counts the trials of its stored study)."""
    from orchestrator.tracking.spool import read_records
    from orchestrator.tracking.sync import replay

    folder = spool_folder(prep)
    if not read_records(folder):
        return
    try:
        done = replay(folder)
    except ConnectionError as exc:
        raise UsageError(f"cannot resume {prep.name}: its spool {folder} could not be written ({exc})") from None
    _say(prep.opts, f"Spool of the previous run: {done.line()}")


def run(prep: Prepared) -> SweepResult:
    """Run the sweep to its end — finished, failed, or stopped by SIGINT/SIGTERM (``result.interrupted``)."""
    with StopSignals() as signals:
        return _run(prep, signals)


def _run(prep: Prepared, signals: StopSignals) -> SweepResult:
    opts, space, bench = prep.opts, prep.space, prep.bench
    method = methods.get(opts.method)
    if not prep.resume:  # bad input: before anything is written (a resumed sweep keeps its recorded margin)
        constraint.check(prep)
    started = time.time()
    held = _quiet_libraries()
    tags = {"method": method.name, "benchmark": bench.name, "paper": method.paper}
    if method.substitute:
        tags["substitute"] = method.substitute
    # A study's sweep (the study checked its resources) opens its MLflow run first, so that its Ray job's metadata
    # names the run: Ray takes a job's metadata when the driver connects (orchestrator.sweep.dashboard).
    early = _open_parent_run(prep, method, tags) if opts.study_run_id and not prep.resume else None
    try:
        run_id = early[0].run_id if early else (prep.resume or {}).get("parent_run_id")
        dashboard, which = init_ray(opts, job_metadata(prep, run_id, early[0].experiment_id if early else None))
        signals.install()  # ray.init replaced our SIGTERM handler
        _log_to(held)  # ray.init reset the "ray" logger
        check_resources(prep.resources, opts)
    except BaseException as exc:
        if early:
            early[0].end("KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED")
        raise
    _say(opts, f"{which}\nLibrary logs (Ray, MLflow, Optuna): {_start_log_file(prep, held)}")
    for note in prep.notes:
        _say(opts, note)
    if dashboard:
        _say(opts, f"Ray dashboard: http://{dashboard}  (access token: `ray get-auth-token`)")
    # A post-hoc sweep's first evaluator starts now, while MLflow opens the parent run — unless large splits must
    # be extracted by Ray tasks first (the evaluator would hold their CPUs). The shared network is prepared once the
    # run is open (by this driver on a one-node cluster, else by that evaluator): opening it beside the preparation
    # thread, which shares this interpreter, took 0.42 s instead of 0.06 s (measured), and the preparation lost it.
    pool = preparing = None
    if prep.batch_size and not extraction.needed(bench):
        pool = batched.pool_for(prep)  # a study's previous sweep's, when it can serve this one
    else:
        batched.release_kept()  # Tune trials or extraction tasks need the CPU a kept pool holds
    # A batched sweep's first evaluator draws its figures; a Tune sweep's driver does.
    figure_imports = None if prep.batch_size else _import_figure_libraries(opts, len(space.knobs))
    try:
        if prep.resume:
            _replay_spool(prep)
        sweep_run, status_before = early or _open_parent_run(prep, method, tags)
    except BaseException:
        if pool is not None:
            pool.close()
        raise
    if not prep.resume:
        state.write(prep, sweep_run.run_id)
    if pool is not None:
        preparing = pool.submit_prepare(prep.fixed)
    _say(opts, f"Sweep {prep.name}{' (resumed)' if prep.resume else ''}: {method.name} on {bench.name}"
               f"{' (smoke test)' if opts.smoke_test else ''}, {prep.num_samples} trials, ≤{prep.max_concurrent} at "
               f"once; MLflow {prep.tracking_uri} (run {sweep_run.run_id})")
    status = "FAILED"
    logger = rule = None
    drawing: dict = {}  # a batched sweep's figures being drawn (EvaluatorPool.draw_figures): config, refs
    result = SweepResult(prep.name, sweep_run.run_id, prep.tracking_uri, prep.experiment_path,
                         resume_command=resume_command(prep), study_storage=prep.study_storage,
                         sync_command=sync_command(prep))
    try:
        settings = prep.trial_settings()
        if prep.batch_size:  # post-hoc knobs only: configurations in batches on evaluator actors
            pool, prepared_network = _prepared_pool(prep, pool, preparing)
            shared = pool.shared
            rule = _constraint(prep, settings)
            logger = TrialRuns(sweep_run, tags=tags, annotate=rule.annotate if rule else None)
            status_before = None  # from here on, the sweep's own outcome is what its parent run records
            grid = _run_batched(prep, pool, logger, signals, drawing if opts.figures else None, rule)
        else:  # Ray Tune, imported only here (~0.4 s): a batched sweep never needs it
            from ray import tune

            from orchestrator.sweep.trainable import named_trainable, tune_trainable
            from orchestrator.sweep.tune_progress import ProgressPrinter
            from orchestrator.tracking.callback import MLflowTrialLogger

            shared, prepared_network = _prewarm(method, space, prep.fixed, bench, settings, prep.resources, opts)
            rule = _constraint(prep, settings)
            logger = MLflowTrialLogger(sweep_run, tags=tags, study=_study_mirror(prep, sweep_run, rule),
                                       annotate=rule.annotate if rule else None)
            # Trials that all run at once get an actor each anyway: the Ray dashboard names each by its trial. Trials
            # that queue reuse actors (a new one costs a process and PyTorch's import), named by the sweep.
            trainable = named_trainable(tune.with_resources(
                tune.with_parameters(tune_trainable, bench=bench, settings=settings.as_dict(), shared=shared,
                                     reporting=scheduling.report_policy(prep)),
                dict(prep.resources)), method.name, prep.name, per_trial=prep.num_samples <= prep.max_concurrent)
            progress = ProgressPrinter(space.metric, space.mode, prep.num_samples, quiet=opts.quiet)
            sweep_run.writes.on_status = progress.line  # "waiting for MLflow at ..." in the progress lines
            logger.writes.start_thread()  # a store that does not answer never holds up Tune's loop
            run_config = tune.RunConfig(name=prep.name, storage_path=prep.storage_path,
                                        callbacks=[logger, progress], verbose=0,
                                        failure_config=tune.FailureConfig(max_failures=opts.max_failures),
                                        checkpoint_config=tune.CheckpointConfig(num_to_keep=1))
            tuner = _tuner(prep, trainable, run_config, rule)
            status_before = None  # from here on, the sweep's own outcome is what its parent run records
            with signals.tune_running():
                grid = tuner.fit()
        result = _summarise(prep, grid, sweep_run, started, result, rule)
        result.networks.update(prepared_network)
        if signals.received:
            raise KeyboardInterrupt(signals.received)
        if opts.seeds and result.best_matrix is not None:
            from orchestrator.sweep.seeds import rerun_best_with_seeds

            _say(opts, f"Re-running the best configuration with {opts.seeds} more seed(s)...")
            try:
                rerun_best_with_seeds(prep, result, opts.seeds, every_trial=opts.seeds_every_trial,
                                      client=sweep_run.client)
            except Exception as exc:  # noqa: BLE001 - a read the store did not answer: the sweep's results stand
                if not sweep_run.writes.away:
                    raise
                _say(opts, f"Seed repeats stopped: {', '.join(sweep_run.writes.away_labels)} is away ({exc})")
        if opts.figures and result.best_matrix is not None:
            from orchestrator.tracking.figures import log_sweep_figures

            stored = scores = drawn = None
            notes = []
            if drawing.get("config") == result.best_config:  # drawn meanwhile by the evaluator and the drawer
                drawn = lambda: pool.drawn(drawing["figures"])  # noqa: E731
            else:
                if figure_imports is not None:
                    figure_imports.join()
                try:  # a storage that went away: the figures rebuild the study from the MLflow runs
                    stored = study.load(prep.study_storage, prep.name) if prep.study_storage else None
                except Exception:  # noqa: BLE001
                    stored = None
                scores, notes = _best_scores(prep, result, settings, shared)
            for note in notes + log_sweep_figures(prep, result, sweep_run.client, stored, scores, drawn):
                _say(opts, f"figures: {note}")
        status = "FINISHED" if result.best_matrix is not None else "FAILED"
        return result
    except KeyboardInterrupt:
        # Stopped by the user: every run this sweep left open is KILLED, never FINISHED or RUNNING.
        status = "KILLED"
        result.interrupted = signals.received or "SIGINT"
        result.seconds = time.time() - started
        if logger is not None:
            logger.end_unfinished("KILLED")
        return result
    finally:
        if pool is not None:
            pool.close(keep=status == "FINISHED")  # kept for a study's next sweep (batched.kept_between_sweeps)
        if rule is not None and rule.reference is not None and status != "KILLED":
            rule.reference.result()  # measured in this process: done before another sweep of it seeds PyTorch
        wait_for_writes()  # the sweep work its preparation wrote behind (orchestrator.cache): cached when it ends
        # A resume that failed before its trials ran leaves the resumed sweep's parent run as it found it.
        sweep_run.end(status_before if status_before and status != "KILLED" else status)
        sweep_run.writes.close()
        result.spooled, result.spool = sweep_run.spool.count, str(sweep_run.spool.folder)
        result.away = list(sweep_run.writes.away_labels)


def _study_mirror(prep: Prepared, sweep_run, rule=None):
    """What writes a Tune sweep's ended trials to its stored study (None: the sweep has no storage), with their
    ID-accuracy constraint values (``rule``)."""
    if not prep.study_storage:
        return None
    from orchestrator.tracking.stores import StoredStudy

    stored = study.open_study(prep.study_storage, prep.name, prep.space.objectives, prep.opts.seed)
    return study.TuneStudyMirror(StoredStudy(stored, prep.study_storage, sweep_run.writes, sweep_run.spool),
                                 search_space.DefineByRun(prep.space.knobs, prep.fixed), prep.space.objectives,
                                 constraint=rule)


def _constraint(prep: Prepared, settings):
    """The sweep's ID-accuracy constraint (:mod:`orchestrator.sweep.constraint`; None when it is off). For a method
    that trains, its reference — the cross-entropy classifier of this recipe and seed, from the model cache or
    trained once — starts being measured now: beside the trials on a one-machine CPU cluster, else first, in a Ray
    task (:func:`orchestrator.sweep.constraint.measured_here`); :func:`_summarise` records it."""
    here = constraint.measured_here(prep)
    rule = constraint.for_sweep(prep, prep.space.max_id_acc_drop, constraint.reference_computer(prep, settings, here),
                                on_wait=lambda: _say(prep.opts, "Waiting for the ID-accuracy reference (the cross-"
                                                                "entropy classifier being measured or trained)..."))
    if rule is not None and rule.reference is not None:
        _say(prep.opts, f"ID-accuracy constraint: a configuration counts only with ID validation accuracy at most "
                        f"{constraint.points(rule.margin)} below the cross-entropy classifier of this recipe and seed "
                        f"(max_id_acc_drop; none turns it off), measured {'meanwhile' if here else 'first'} "
                        f"(trained on a cache miss)")
        if not here:
            rule.reference.result()  # in a Ray task, before any trial holds the resources it needs
    return rule


def _import_figure_libraries(opts: SweepOptions, searched: int):
    """Start importing what a Tune sweep's figures need (:mod:`orchestrator.tracking.figure_imports`; importances
    only when ``searched`` knobs are enough for their plot) on a thread now, while the driver only waits for its
    trials, instead of after the last one; at normal priority (the driver's other threads would wait on a
    low-priority thread holding the interpreter lock). Returns the thread, or None when the sweep draws none."""
    from orchestrator.tracking.figure_imports import warm_figure_imports

    return warm_figure_imports(True, searched >= 2, low_priority=False) if opts.figures else None


def _best_scores(prep: Prepared, result: SweepResult, settings, shared):
    """The best configuration's test-set scores for the figures, recomputed here from the model cache (a Tune
    sweep; a batched one's evaluator draws them), and notes on a failure (a sweep's results matter more than its
    pictures)."""
    import ray

    from orchestrator.trial import best_scores

    try:
        prepared = ray.get(shared) if shared is not None else None  # zero-copy from the object store
        return best_scores(result.best_config, prep.bench, settings, prepared), []
    except Exception as exc:  # noqa: BLE001
        return None, [f"best-trial score figures failed: {type(exc).__name__}: {exc}"]


def _tuner(prep: Prepared, trainable, run_config, rule=None):
    """A new Tuner with the seeded Optuna searcher (told each trial's ID-accuracy constraint, ``rule``), or the
    restored one of the sweep being resumed."""
    import optuna
    from ray import tune

    from orchestrator.sweep.constrained_search import ConstrainedOptunaSearch

    space, opts = prep.space, prep.opts
    if prep.resume:
        try:
            tuner = tune.Tuner.restore(prep.experiment_path, trainable, resume_unfinished=True, resume_errored=True)
        except Exception as exc:  # noqa: BLE001 - whatever Tune found wrong with the folder, say it in one line
            raise UsageError(f"cannot resume {prep.experiment_path}: Tune could not restore it "
                             f"({type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''})") from None
        # The restored run config holds the pickled callbacks of the dead driver; use fresh ones (ray pinned).
        tuner._local_tuner.get_run_config().callbacks = run_config.callbacks
        return tuner
    multi = space.multi_objective
    metrics = [m for m, _ in space.objectives]
    modes = [d for _, d in space.objectives]
    searcher = ConstrainedOptunaSearch(space=search_space.DefineByRun(space.knobs, prep.fixed),
                                       metric=metrics if multi else space.metric, mode=modes if multi else space.mode,
                                       sampler=optuna.samplers.TPESampler(seed=opts.seed), study_name=prep.name,
                                       constraint=rule)
    tune_config = tune.TuneConfig(search_alg=searcher, num_samples=prep.num_samples,
                                  max_concurrent_trials=prep.max_concurrent, reuse_actors=not trainable.actor_per_trial,
                                  scheduler=scheduling.scheduler(prep),
                                  metric=None if multi else space.metric, mode=None if multi else space.mode)
    return tune.Tuner(trainable, tune_config=tune_config, run_config=run_config)


def _start_pool(prep: Prepared):
    """Start a post-hoc sweep's first evaluator and the preparation of the shared network: (pool, the preparation
    that :meth:`~orchestrator.sweep.batched.EvaluatorPool.prepared` waits for)."""
    pool = batched.pool_for(prep)
    return pool, pool.submit_prepare(prep.fixed)


def _prepared_pool(prep: Prepared, pool, preparing):
    """The evaluators with the shared network and its outputs ready, and {cache key: whether this sweep trained
    it}. Large splits are first extracted shard by shard on Ray tasks (resumable), then the pool starts."""
    opts = prep.opts
    _say(opts, "Preparing the shared classifier and its outputs (trained once, cached by config hash)...")
    trained_first = False
    if pool is None:
        net = extraction.extract_sharded(dict(prep.fixed), prep.bench, prep.trial_settings(), prep.resources,
                                         lambda msg: _say(opts, msg))
        trained_first = bool(net["trained"])
        pool, preparing = _start_pool(prep)
    done = pool.prepared(preparing, prep.fixed, opts.max_failures)
    return pool, {done["key"]: bool(done["trained"]) or trained_first}


def _run_batched(prep: Prepared, pool, logger, signals, drawing: dict | None, rule=None):
    """A post-hoc search in batches on Ray actors (see :mod:`orchestrator.sweep.batched`). With ``drawing`` (a
    dict), the pool starts drawing the sweep's figures the moment the last configuration is scored, while the
    driver writes the last MLflow runs; ``drawing`` then holds the best configuration and what
    :meth:`orchestrator.sweep.batched.EvaluatorPool.drawn` waits for. ``rule``: the ID-accuracy constraint."""
    from orchestrator.sweep.progress import BatchProgress
    from orchestrator.tracking.stores import StoredStudy

    space, opts = prep.space, prep.opts
    stored = study.open_study(prep.study_storage, prep.name, space.objectives, opts.seed)
    if prep.study_storage:  # its writes wait for a storage that is away, then go to the spool
        stored = StoredStudy(stored, prep.study_storage, logger.writes, logger.sweep.spool)
    logger.setup()
    logger.writes.start_thread()  # MLflow runs and stored trials are written while the next batches are scored
    progress = BatchProgress(space.metric, space.mode, prep.num_samples, quiet=opts.quiet)
    logger.writes.on_status = progress.line  # "waiting for MLflow at ..." in the progress lines
    _say(opts, f"Post-hoc knobs only: configurations run in batches of {prep.batch_size} on "
               f"{prep.max_concurrent} Ray actor(s) holding the shared network (--batch-size 0: one Tune trial each)")

    def draw(done, working):
        best, _ = _best(space, constraint.candidates(rule, _finished(done))[0])
        if best is not None and pool.actors and pool.drawer is not None:
            drawing.update(config=dict(best.config), figures=pool.draw_figures(
                dict(best.config), best.metrics["matrix_json"], working, space.metric,
                f"{prep.opts.method} on {prep.bench.name}"))

    with signals.polled():
        return batched.run(prep, pool, stored, logger, progress, signals, prep.batch_size,
                           on_scored=draw if drawing is not None else None, constraint=rule)


def resume_command(prep: Prepared) -> str:
    """The exact command that continues this sweep."""
    import shlex

    cmd = ["python", "-m", "orchestrator", "sweep", prep.opts.method, "--resume", prep.name]
    if prep.storage_path != str(Path("ray_results").resolve()):
        cmd += ["--storage-path", prep.storage_path]
    return " ".join(shlex.quote(c) for c in cmd)


def sync_command(prep: Prepared) -> str:
    """The exact command that writes this sweep's spool into its stores."""
    import shlex

    if "://" in prep.storage_path:
        return " ".join(shlex.quote(c) for c in ["python", "-m", "orchestrator", "sync", str(spool_folder(prep))])
    return resume_command(prep).replace(f" sweep {shlex.quote(prep.opts.method)} --resume ", " sync ", 1)


def _prewarm(method, space, fixed, bench, settings, resources, opts):
    """For a post-hoc sweep whose knobs never change the network: train/load it and extract its outputs in
    one Ray task, and return the ObjectRef that every trial reads them from (None when trials differ in network),
    with {cache key: whether that task trained the network}.
    """
    import ray

    from orchestrator.trial import shared_outputs

    network = method.network_knobs()
    if method.trains() or any(k.name in network for k in space.knobs):
        return None, {}
    _say(opts, "Preparing the shared classifier and its outputs (trained once, cached by config hash)...")
    trained_first = False
    if extraction.needed(bench):  # large splits: extracted shard by shard on Ray tasks, resumable
        net = extraction.extract_sharded(dict(fixed), bench, settings, resources, lambda msg: _say(opts, msg))
        trained_first = bool(net["trained"])
    cpus = max(resources["cpu"], extraction.largest_node_cpus())  # nothing else runs yet: every CPU of a node
    task = ray.remote(shared_outputs).options(num_cpus=cpus, num_gpus=resources["gpu"], max_retries=opts.max_failures,
                                              name=task_name(method.name, opts.name or bench.name, "network"))
    ref = task.remote(dict(fixed), bench, dataclasses.replace(settings, threads=max(1, int(cpus))))
    done = ray.get(ref)  # surface a failure here, before any trial starts
    return ref, {done["key"]: bool(done["trained"]) or trained_first}


def _finished(grid) -> list:
    """The trials of ``grid`` (Tune's results, or a batched sweep's outcomes) that reached their final result."""
    return [r for r in grid if r.error is None and r.metrics and r.metrics.get("final")]


def _best(space, finished: list):
    """(the best of the ``finished`` trials — on ``space.metric``, among the Pareto front's for several
    objectives —, the front's rows or None); (None, None) when none finished."""
    if not finished:
        return None, None
    sign = 1 if space.mode == "max" else -1
    candidates, pareto = finished, None
    if space.multi_objective:
        rows = [{"trial_id": r.metrics.get("trial_id"), **{m: r.metrics[m] for m, _ in space.objectives},
                 "config": r.config, "_r": r} for r in finished]
        front = scheduling.pareto_front(rows, space.objectives)
        candidates = [row["_r"] for row in front]
        pareto = [{k: v for k, v in row.items() if k != "_r"} for row in front]
    return max(candidates, key=lambda r: sign * r.metrics[space.metric]), pareto


def _summarise(prep: Prepared, grid, sweep_run, started: float, res: SweepResult, rule=None) -> SweepResult:
    space = prep.space
    finished = _finished(grid)
    res.results_path, res.num_trials, res.num_errors = grid.experiment_path, len(grid), grid.num_errors
    res.seconds = time.time() - started
    for r in finished:
        key = r.metrics.get("model_key")
        if key:
            res.networks[key] = res.networks.get(key, False) or bool(r.metrics.get("trained_model"))
    chosen_from, res.best_feasible = constraint.candidates(rule, finished)  # the feasible, or the least infeasible
    best, pareto = _best(space, chosen_from)
    if best is None:
        return res
    if rule is not None:
        res.constraint_note, metrics, tags = constraint.outcome(rule, finished, best, res.best_feasible)
        reference_metrics, reference_tags = constraint.reference_record(rule)
        sweep_run.log_metrics({**metrics, **reference_metrics})
        sweep_run.set_tags({**tags, **reference_tags})
        value = rule.reference.result() if rule.reference is not None else None
        if value is not None:  # the reference classifier is one of this sweep's networks
            res.networks[value["key"]] = res.networks.get(value["key"], False) or bool(value["trained"])
        if res.best_feasible is False or rule.failed:  # what the user must act on (a study prints no summary)
            print(f"warning: {prep.name}: {res.constraint_note}", file=sys.stderr, flush=True)
    if pareto is not None:
        res.pareto = pareto
        sweep_run.log_dict({"objectives": space.objectives, "front": res.pareto}, "pareto_front.json")
        sweep_run.log_metrics({"pareto/size": len(pareto)})
    res.best_config = dict(best.config)
    res.best_metrics = {k: v for k, v in best.metrics.items()
                        if isinstance(v, (int, float)) and not isinstance(v, bool)}
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
    if res.best_matrix is None and res.interrupted:
        print("No trial finished before the sweep was stopped.", file=out)
    elif res.best_matrix is None:
        print(f"No trial finished ({res.num_errors} of {res.num_trials} failed); see MLflow run "
              f"{res.parent_run_id}.", file=out)
    else:
        cfg = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                        for k, v in sorted(res.best_config.items()))
        print(f"Best trial ({metric} = {res.best_metrics[metric]:.4f} on validation): {cfg}", file=out)
        if res.constraint_note:
            print(res.constraint_note, file=out)
        print("Test OOD metric matrix (%):", file=out)
        print(res.best_matrix.format(), file=out)
    print(f"\nTrials: {res.num_trials} ({res.num_errors} failed) in {res.seconds:.1f} s", file=out)
    if res.networks:
        cached = sorted(k for k, trained in res.networks.items() if not trained)
        print(f"Networks: {len(res.networks) - len(cached)} trained by this sweep, {len(cached)} from the model cache"
              + (f" ({', '.join(cached[:4])}{', ...' if len(cached) > 4 else ''})" if cached else ""), file=out)
    if res.interrupted:
        print(f"Stopped by {res.interrupted}: running trials were stopped and their MLflow runs marked KILLED. "
              f"Continue with:\n  {res.resume_command}", file=out)
    print(f"MLflow: parent run {res.parent_run_id} in {res.tracking_uri}", file=out)
    print(f"        mlflow ui --backend-store-uri {res.tracking_uri}   (or: python -m orchestrator ui)", file=out)
    print(f"Ray results: {res.results_path}", file=out)
