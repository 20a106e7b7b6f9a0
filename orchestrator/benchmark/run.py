"""``python -m orchestrator benchmark STUDY.yaml``: every sweep of a study on one Ray cluster, then its leaderboard.

The study's driver starts the cluster (or joins ``--address``) and runs each sweep in a driver process of its own
(:mod:`orchestrator.benchmark.drivers`), as many at once as the cluster's free resources allow
(:mod:`orchestrator.benchmark.schedule`; ``--max-concurrent-sweeps`` / ``max_concurrent_sweeps`` bound it): each
sweep is a whole sweep as when run alone — its own Ray job, Optuna study, MLflow parent run (nested under the
study's: tag ``oodsweep.study``) and resume state. All share the model and output cache, so a classifier that
several post-hoc entries score is trained once per benchmark and seed: the first sweep that starts trains it, the
others wait for it while other sweeps run. Why processes, and what was measured: docs/study_concurrency.md.
Running the same command again continues the study: finished sweeps are kept, interrupted ones are resumed
(``--resume`` semantics), the rest run. Ctrl-C / SIGTERM stop every running sweep (each KILLED) and the study
exits 130 / 143 with the command that continues it. State: ``<storage>/<study>/oodsweep_study.json``.
"""
from __future__ import annotations

import json
import os
import shlex
import sys
import time
from pathlib import Path
from typing import Any

from orchestrator.benchmark import leaderboard, plan
from orchestrator.errors import UsageError
from orchestrator.tracking.spool import SPOOL_DIR

STATE_FILE = "oodsweep_study.json"


def _read_state(folder: Path) -> dict[str, Any]:
    path = folder / STATE_FILE
    return json.loads(path.read_text()) if path.is_file() else {"sweeps": {}}


def _write_state(folder: Path, state: dict[str, Any]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".{STATE_FILE}.tmp"
    tmp.write_text(json.dumps(state, indent=1))
    os.replace(tmp, folder / STATE_FILE)


def command_line(argv: list[str]) -> str:
    return " ".join(shlex.quote(a) for a in ["python", "-m", "orchestrator", *argv])


def run(study_file: str, common: dict[str, Any], dry_run: bool = False, out: str | None = None,
        argv: list[str] | None = None, max_concurrent_sweeps: int | None = None,
        rerun: list[str] | None = None) -> int:
    """Plan (and with ``dry_run`` only print) the study, run its sweeps — as many at once as the cluster's free
    resources allow, at most ``max_concurrent_sweeps`` (else the study's key of that name) — write the leaderboard;
    the exit code. ``rerun``: entry labels whose sweeps are deleted (MLflow runs, Optuna studies, folders) and run
    again; a sweep whose entry changed since it ran is refused unless its entry is named there."""
    from orchestrator.sweep import runner
    from orchestrator.sweep.interrupt import StopSignals
    from orchestrator.tracking import runs

    spec = plan.load(study_file)
    at_most = spec.max_concurrent_sweeps if max_concurrent_sweeps is None else max_concurrent_sweeps
    if at_most is not None and at_most < 1:
        raise UsageError(f"--max-concurrent-sweeps must be at least 1, got {at_most}")
    storage = common.get("storage_path") or "ray_results"
    if "://" in storage:
        raise UsageError("a study keeps its state in a local --storage-path folder (shared filesystems work)")
    folder = Path(storage).resolve() / spec.name
    state = _read_state(folder)
    common = {**common, "storage_path": str(folder.parent)}
    planned = plan.expand(spec, common, started=_started(folder.parent))
    rerun = list(dict.fromkeys(rerun or []))
    unknown = [label for label in rerun if label not in {e.label for e in spec.entries}]
    if unknown:
        raise UsageError(f"--rerun {unknown[0]}: no entry of that label in {study_file} (entries: "
                         f"{', '.join(e.label for e in spec.entries)})")
    _check_unchanged(planned, state, rerun)
    if dry_run:
        for s in planned.sweeps:
            if s.entry.label in rerun and s.name in state["sweeps"]:
                print(f"{s.name}: would be deleted and run again (--rerun {s.entry.label})")
        print(plan.describe(planned, at_most))
        return 0
    if rerun:
        for s in planned.sweeps:
            if s.entry.label in rerun:
                _forget(s, state, folder.parent, common.get("experiment") or "oodsweep")
        _write_state(folder, state)
        planned = plan.expand(spec, common, started=_started(folder.parent))  # the forgotten ones start afresh
    for s in planned.sweeps:  # fixed configurations: kept beside the study, for --resume of their sweeps
        if s.entry.fixed is not None:
            s.prep.opts.search_space = plan.space_file(folder / "spaces", s.entry)
    log = runner.log_libraries_to(folder / "oodsweep.log")  # MLflow's and Ray's records: not on the terminal

    uri = planned.sweeps[0].prep.tracking_uri
    experiment = common.get("experiment") or "oodsweep"
    # The study's own writes go through the same retrying queue as a sweep's; what a store does not take is kept in
    # the study's folder (docs/store_outages.md).
    spool = folder / SPOOL_DIR

    def say(line: str) -> None:  # what the study's writes wait for (a store that does not answer)
        print(f"study {spec.name}: {line}", flush=True)

    if state.get("study_run_id"):
        study_run = runs.SweepRun(uri, experiment, spec.name, run_id=state["study_run_id"], spool=spool,
                                  on_status=say)
        study_run.client.update_run(study_run.run_id, status="RUNNING")
    else:
        study_run = runs.SweepRun(uri, experiment, spec.name, tags={runs.STUDY_TAG: spec.name}, spool=spool,
                                  on_status=say)
        study_run.log_params({"study_file": str(spec.path), "benchmarks": ",".join(spec.benchmarks),
                              "seeds": ",".join(map(str, spec.seeds)), "entries": ",".join(e.label for e in
                                                                                            spec.entries),
                              "fpr95_convention": spec.convention, "smoke_test": spec.smoke_test})
        study_run.log_dict({"entries": [e.__dict__ for e in spec.entries], "benchmarks": spec.benchmarks,
                            "seeds": spec.seeds}, "study.json")
        state["study_run_id"] = study_run.run_id
    _write_state(folder, state)
    again = command_line(argv or ["benchmark", study_file])
    print(plan.describe(planned, at_most), flush=True)
    def conclude() -> tuple[int, str]:
        """Run the sweeps, then write the leaderboard: (exit code, the study run's status)."""
        with StopSignals() as signals:
            ran = _run_sweeps(planned, folder, state, study_run, at_most, signals, log)
        if isinstance(ran, int):
            print(f"Study {spec.name} stopped; run the same command to continue it:\n  {again}", flush=True)
            return ran, "KILLED"
        try:
            rows = _leaderboard(planned, uri, experiment)
        except Exception as exc:  # noqa: BLE001 - MLflow's, SQLAlchemy's or the HTTP stack's, when the store is away
            if _store_answers(uri):
                raise
            print(f"error: the study's sweeps ended, but the MLflow store {uri} does not answer "
                  f"({type(exc).__name__}), so the leaderboard cannot be read from it: run the same command again "
                  f"once it does (finished sweeps are kept):\n  {again}", file=sys.stderr, flush=True)
            return 3, "FINISHED"
        _write_leaderboard(rows, spec, folder if out is None else Path(out), study_run, again)
        status = "FINISHED" if all(v.get("status") == "FINISHED" for v in state["sweeps"].values()) else "FAILED"
        if ran:  # docs/store_outages.md: the leaderboard lacks what the stores did not take
            print(f"error: the tracking stores did not take every record of {len(ran)} sweep(s) ({', '.join(ran)}), "
                  f"so the leaderboard may lack them: run `python -m orchestrator sync SWEEP` for each (lines above), "
                  f"then this command again to rebuild the leaderboard:\n  {again}", file=sys.stderr, flush=True)
            return 3, status
        return (0 if status == "FINISHED" else 1), status

    code, status = 1, "FAILED"
    try:
        code, status = conclude()
    except KeyboardInterrupt:  # before any sweep started
        code, status = 130, "KILLED"
        print(f"Study {spec.name} stopped; run the same command to continue it:\n  {again}", flush=True)
    finally:
        study_run.end(status)
        study_run.writes.close()
    if study_run.spool.count:  # the study's own records (its run, the leaderboard files) wait in its spool
        print(f"error: {' and '.join(study_run.writes.away_labels) or 'the tracking store'} did not take "
              f"{study_run.spool.count} records of the study's own run; they are kept in {spool}: write them with "
              f"{_sync_command(folder)} [--tracking-uri URI]", file=sys.stderr, flush=True)
        code = code or 3
    return code


def _sync_command(folder: Path) -> str:
    """The command that writes the study's own spool (in its folder) into the store."""
    return command_line(["sync", str(folder)])


def _store_answers(uri: str) -> bool:
    """Whether the MLflow store at ``uri`` answers a read now."""
    from orchestrator.tracking.runs import client_for

    try:
        client_for(uri).search_experiments(max_results=1)
        return True
    except Exception:  # noqa: BLE001 - any failure to read means it does not answer
        return False


def _check_unchanged(planned: plan.Plan, state: dict, rerun: list[str]) -> None:
    """UsageError (one line, nothing written) when a sweep that finished or began earlier was run with another
    definition than its entry now gives (plan.definition: a search space edited since, other trials...): its kept
    results would no longer be what the study file says. Sweeps recorded before definitions were kept pass."""
    changed: dict[str, list[str]] = {}
    for s in planned.sweeps:
        recorded = state["sweeps"].get(s.name, {}).get("definition")
        if recorded and s.entry.label not in rerun and recorded != plan.definition(s):
            changed.setdefault(s.entry.label, []).append(s.name)
    if changed:
        label, names = next(iter(changed.items()))
        more = f" (and entries {', '.join(list(changed)[1:])})" if len(changed) > 1 else ""
        raise UsageError(f"entry {label!r}{more} changed since its sweeps ran ({', '.join(names)}): run with "
                         f"--rerun {' --rerun '.join(changed)} to delete and run them again, or restore the entry")


def _forget(s: plan.PlannedSweep, state: dict, storage: Path, experiment: str) -> None:
    """Delete everything sweep ``s`` left — its MLflow runs (deleted, as the UI does: restorable there), its stored
    Optuna study, its results folder, its line in the study's state — so that it runs again from nothing."""
    import shutil

    import optuna

    from orchestrator.tracking.runs import client_for
    from orchestrator.tracking.tags import PARENT_TAG, SWEEP_TAG

    client = client_for(s.prep.tracking_uri)
    exp = client.get_experiment_by_name(experiment)
    deleted = 0
    if exp is not None:
        parents = client.search_runs([exp.experiment_id], f"tags.`{SWEEP_TAG}` = '{s.name}'", max_results=1000)
        for parent in parents:
            children = client.search_runs([exp.experiment_id], f"tags.`{PARENT_TAG}` = '{parent.info.run_id}'",
                                          max_results=10000)
            for run in [*children, parent]:
                client.delete_run(run.info.run_id)
                deleted += 1
    study_deleted = False
    if s.prep.study_storage:
        try:
            optuna.delete_study(study_name=s.name, storage=s.prep.study_storage)
            study_deleted = True
        except KeyError:  # never created
            pass
    results = storage / s.name
    if results.is_dir():
        shutil.rmtree(results)
    state["sweeps"].pop(s.name, None)
    print(f"{s.name}: {deleted} MLflow run(s) deleted"
          + (", its Optuna study deleted" if study_deleted else "") + f", {results} removed (--rerun)", flush=True)


def _started(storage: Path) -> frozenset[str]:
    """The sweeps in ``storage`` that began (a saved sweep state): their stored Optuna studies are continued. Read
    from the folders, not the study's state, which a study stopped while its sweeps ran has not updated."""
    from orchestrator.sweep import state as sweep_state

    if not storage.is_dir():
        return frozenset()
    return frozenset(p.name for p in storage.iterdir() if (p / sweep_state.STATE_FILE).is_file())


def _run_sweeps(planned: plan.Plan, folder: Path, state: dict, study_run, at_most: int | None, signals,
                log) -> int | list[str]:
    """Run the sweeps not finished yet, each in its driver process (:mod:`orchestrator.benchmark.drivers`) on one
    Ray cluster, scheduled by :mod:`orchestrator.benchmark.schedule`; the exit code when a signal stopped them,
    else the names of the sweeps whose records went to their spool (a store was away)."""
    import optuna
    import ray

    from orchestrator.benchmark import drivers, schedule
    from orchestrator.cache import ModelCache
    from orchestrator.sweep import runner
    from orchestrator.sweep.dashboard import study_metadata
    from orchestrator.sweep.interrupt import EXIT_CODES

    spec, first = planned.spec, planned.sweeps[0].prep
    total, todo = len(planned.sweeps), {}
    for i, s in enumerate(planned.sweeps, 1):
        if state["sweeps"].get(s.name, {}).get("status") == "FINISHED":
            print(f"[{i}/{total}] {s.name}: finished earlier, kept", flush=True)
        else:
            todo[s.name] = (i, s)
    if not todo:
        return []
    # The sweep drivers' fork server imports PyTorch, MLflow, Optuna... now, while Ray starts.
    context = drivers.server()
    url, which = runner.init_ray(first.opts, study_metadata(spec.name, first.tracking_uri, study_run.run_id,
                                                            study_run.experiment_id))
    signals.install()  # ray.init replaced our SIGTERM handler
    runner.log_again(log)  # and reset Ray's logger
    print(f"{which}\nLibrary logs of the study's driver: {log.baseFilename} (each sweep's: in its results folder)",
          flush=True)
    if url:
        print(f"Ray dashboard: http://{url}  (each sweep is a job; access token: `ray get-auth-token`)", flush=True)
    for resources in {tuple(sorted(s.prep.resources.items())) for s in planned.sweeps}:
        runner.check_resources(dict(resources), first.opts)
    for url in {s.prep.study_storage for s in planned.sweeps} - {None}:  # the Optuna storage's tables, created
        optuna.storages.RDBStorage(url)  # once: drivers starting at once would each try (SQLite: "already exists")
    # The drivers join this cluster: the one named, else the private instance this driver started.
    address = first.opts.address or os.environ.get("RAY_ADDRESS") or ray.get_runtime_context().gcs_address
    # A post-hoc sweep starts with one evaluator and adds more only while its work left pays for their start-up
    # (batched.Pace): it claims one; a Tune sweep runs max_concurrent trials as soon as it can.
    works = [schedule.Work(s.name, {"CPU": s.prep.resources["cpu"], "GPU": s.prep.resources["gpu"]},
                           width=1 if s.prep.batch_size else max(1, min(s.prep.max_concurrent, s.prep.num_samples)),
                           needs=frozenset(s.networks), cost=s.cost, needs_cost={k: s.network_cost for k in s.networks},
                           needs_label=s.networks)
             for _, s in todo.values()]
    scheduler = schedule.Scheduler(works, ray.cluster_resources(), ModelCache(first.opts.cache_dir).has_model, at_most)
    errors: list[str] = []
    spooled: list[str] = []  # the sweeps whose stores did not take some records
    done = [total - len(todo)]
    lanes = drivers.Lanes(context, address, f"oodsweep-{spec.name}-{os.getpid()}")
    handles: dict[str, drivers.LaneSweep] = {}

    def launch(work: schedule.Work) -> drivers.LaneSweep:
        i, s = todo[work.name]
        print(f"[{i}/{total}] {s.name}: {s.entry.method} on {s.benchmark}, seed {s.seed}", flush=True)
        s.prep.opts.study_run_id, s.prep.opts.study = study_run.run_id, spec.name
        state["sweeps"].setdefault(s.name, {})["definition"] = plan.definition(s)  # what it runs (_check_unchanged)
        _write_state(folder, state)
        label = f"{s.entry.label} {Path(s.benchmark).stem} s{s.seed}"
        # What this sweep's evaluator pool could serve next (batched.EvaluatorPool.fits): a post-hoc sweep's only.
        keeps = (s.benchmark, s.prep.opts.data_root, s.prep.opts.smoke_test, tuple(sorted(s.prep.resources.items())),
                 bool(s.prep.opts.figures)) if s.prep.batch_size else None
        handles[work.name] = lanes.start(drive_sweep, (s.prep,), label, keeps)
        return handles[work.name]

    def ended(work: schedule.Work, outcome: dict) -> None:
        i, s = todo[work.name]
        done[0] += 1
        lanes.ended(handles.pop(work.name), outcome.get("kept") or {})
        if "error" in outcome:  # bad input found by the sweep (a resume it refused): no more sweeps start
            errors.append(outcome["error"])
            scheduler.queue.clear()
            print(f"[{done[0]}/{total} ended] {s.name}: refused: {outcome['error']}", file=sys.stderr, flush=True)
            return
        status = outcome.get("status") or ("KILLED" if signals.received else "FAILED")
        state["sweeps"][s.name] = {"parent_run_id": outcome.get("parent_run_id"), "status": status,
                                   "entry": s.entry.label, "benchmark": s.benchmark, "seed": s.seed,
                                   "finished": time.time(), "definition": plan.definition(s)}
        _write_state(folder, state)
        line = outcome.get("line") or f"its driver ended with exit code {outcome.get('exitcode')}"
        print(f"[{done[0]}/{total} ended] {s.name} {status}: {line}", flush=True)
        if outcome.get("spooled"):  # a store was away: the sweep's records wait in its spool (exit 3 at the end)
            state["sweeps"][s.name]["spooled"] = outcome["spooled"]
            _write_state(folder, state)
            spooled.append(s.name)
            print(f"    {s.name}: {outcome['spool_line']}", file=sys.stderr, flush=True)
        if status == "FAILED":  # what the user must look at
            print(f"    {s.name}: {line} (log: {s.prep.experiment_path}/oodsweep.log)", file=sys.stderr, flush=True)

    try:
        with signals.polled():
            schedule.run(scheduler, launch, lambda: (lanes.free(ray.available_resources()), ray.cluster_resources()),
                         ended, lambda line: print(line, flush=True), signals, wait=lanes.wait)
    finally:
        lanes.close()
    if signals.received:
        return EXIT_CODES[signals.received]
    if errors:
        raise UsageError(errors[0])
    return spooled


#: The benchmarks a sweep driver process has loaded, by fingerprint (drive_sweep).
_BENCHMARKS: dict[str, Any] = {}


def drive_sweep(prep) -> tuple[int, dict[str, Any]]:
    """One sweep of a study, in its driver process (:mod:`orchestrator.benchmark.drivers`): resumed when it began
    earlier, else new, its MLflow parent run nested under the study's. Returns (its exit code, its outcome for the
    study: status, parent run, the line that sums it up — or the one-line error of bad input)."""
    from orchestrator.sweep import batched
    from orchestrator.sweep import state as sweep_state
    from orchestrator.sweep.interrupt import EXIT_CODES
    from orchestrator.sweep.runner import run as run_sweep

    folder = Path(prep.experiment_path)
    # One object per benchmark in this process, as when a study ran in one: a kept evaluator pool serves the next
    # sweep of the same benchmark object (batched.EvaluatorPool.fits); each sweep arrives with a copy of its own.
    prep.bench = _BENCHMARKS.setdefault(prep.bench.fingerprint(), prep.bench)
    try:
        if (folder / sweep_state.STATE_FILE).is_file():
            sweep_state.check_trusted(folder)
            prep.resume = sweep_state.read(folder)
        result = run_sweep(prep)
    except UsageError as exc:
        return 2, {"error": str(exc)}
    except KeyboardInterrupt:  # stopped before the sweep took the signals (runner.run passes them on as KILLED)
        return 130, {"status": "KILLED", "interrupted": "SIGINT", "line": "stopped before it started"}
    status = "KILLED" if result.interrupted else ("FINISHED" if result.best_matrix is not None else "FAILED")
    if result.best_matrix is not None:
        flat = result.best_matrix.flat()
        line = (f"best on validation: {prep.space.metric} = {result.best_metrics.get(prep.space.metric, 0):.4f}; "
                f"test near AUROC {100 * flat['near/auroc']:.2f}, far AUROC {100 * flat['far/auroc']:.2f} "
                f"({result.num_trials} trials, {result.seconds:.0f} s)")
    elif result.interrupted:
        line = f"stopped by {result.interrupted} (its runs are KILLED)"
    else:
        line = f"no trial finished ({result.num_errors} failed): see MLflow run {result.parent_run_id}"
    code = EXIT_CODES[result.interrupted] if result.interrupted else (0 if status == "FINISHED" else 1)
    kept = batched.kept_pool() is not None  # kept for this driver's next sweep: what it holds meanwhile
    return code, {"status": status, "parent_run_id": result.parent_run_id, "line": line,
                  "interrupted": result.interrupted, "spooled": result.spooled,
                  "spool_line": result.spool_line() if result.spooled else "",
                  "kept": {"CPU": prep.resources["cpu"], "GPU": prep.resources["gpu"]} if kept else {}}


def _leaderboard(planned: plan.Plan, uri: str, experiment: str) -> list[leaderboard.Row]:
    """Rows from the store: each sweep's chosen configuration's test metrics, keyed by seed."""
    from orchestrator.tracking.report import sweep_records

    by_name = {s.name: s for s in planned.sweeps}
    records = sweep_records(uri, sweeps=list(by_name), experiment=experiment)
    rows: dict[tuple[str, str], leaderboard.Row] = {}
    for rec in records:
        s = by_name[rec["sweep"]]
        row = rows.setdefault((s.entry.label, s.benchmark),
                              leaderboard.Row(s.entry.label, s.entry.method, s.benchmark, s.entry.baseline, {}))
        metrics = rec["samples"].get(str(s.seed))
        if metrics is not None:
            row.samples[s.seed] = dict(metrics)
    order = {(s.entry.label, s.benchmark): i for i, s in enumerate(planned.sweeps)}
    return leaderboard.build(sorted(rows.values(), key=lambda r: order[(r.entry, r.benchmark)]))


def _write_leaderboard(rows, spec: plan.StudySpec, out: Path, study_run, command: str) -> None:
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    title = f"Study {spec.name}: {', '.join(spec.benchmarks)}, seeds {', '.join(map(str, spec.seeds))}"
    md = leaderboard.markdown(rows, spec.convention, title, command)
    (out / "leaderboard.md").write_text(md)
    (out / "leaderboard.csv").write_text(leaderboard.csv_text(rows, spec.convention))
    names = ["leaderboard.md", "leaderboard.csv"]
    if rows:  # no sweep finished: no figure of nothing
        fig = leaderboard.figure(rows, title)
        fig.savefig(out / "leaderboard.png", dpi=100)
        plt.close(fig)
        names.append("leaderboard.png")
    for name in names:
        study_run.client.log_artifact(study_run.run_id, str(out / name))
    print("\n" + md + f"\nLeaderboard: {out / 'leaderboard.md'} (.csv, .png); MLflow run {study_run.run_id}",
          flush=True)
