"""``python -m orchestrator benchmark STUDY.yaml``: every sweep of a study in one Ray job, then its leaderboard.

The sweeps run one after another in this driver on one Ray instance (the first sweep starts it, or joins
``--address``); each sweep spreads its own trials over the cluster, and all of them share the model and output
cache, so a classifier that several post-hoc entries score is trained once per benchmark and seed. One MLflow
parent run stands for the study; each sweep's parent run is nested under it (tag ``oodsweep.study``).
Running the same command again continues the study: finished sweeps are kept, an interrupted one is resumed
(``--resume`` semantics), the rest run. State: ``<storage>/<study>/oodsweep_study.json``.
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
        argv: list[str] | None = None) -> int:
    """Plan (and with ``dry_run`` only print) the study, run its sweeps, write the leaderboard; the exit code."""
    from orchestrator.sweep import state as sweep_state
    from orchestrator.sweep.batched import kept_between_sweeps
    from orchestrator.tracking import runs

    spec = plan.load(study_file)
    storage = common.get("storage_path") or "ray_results"
    if "://" in storage:
        raise UsageError("a study keeps its state in a local --storage-path folder (shared filesystems work)")
    folder = Path(storage).resolve() / spec.name
    state = _read_state(folder)
    started = frozenset(n for n in state["sweeps"] if (folder.parent / n / sweep_state.STATE_FILE).is_file())
    common = {**common, "storage_path": str(folder.parent)}
    planned = plan.expand(spec, common, started=started)
    if dry_run:
        print(plan.describe(planned))
        return 0
    for s in planned.sweeps:  # fixed configurations: kept beside the study, for --resume of their sweeps
        if s.entry.fixed is not None:
            s.prep.opts.search_space = plan.space_file(folder / "spaces", s.entry)

    uri = planned.sweeps[0].prep.tracking_uri
    experiment = common.get("experiment") or "oodsweep"
    if state.get("study_run_id"):
        study_run = runs.SweepRun(uri, experiment, spec.name, run_id=state["study_run_id"])
        study_run.client.update_run(study_run.run_id, status="RUNNING")
    else:
        study_run = runs.SweepRun(uri, experiment, spec.name, tags={runs.STUDY_TAG: spec.name})
        study_run.log_params({"study_file": str(spec.path), "benchmarks": ",".join(spec.benchmarks),
                              "seeds": ",".join(map(str, spec.seeds)), "entries": ",".join(e.label for e in
                                                                                            spec.entries),
                              "fpr95_convention": spec.convention, "smoke_test": spec.smoke_test})
        study_run.log_dict({"entries": [e.__dict__ for e in spec.entries], "benchmarks": spec.benchmarks,
                            "seeds": spec.seeds}, "study.json")
        state["study_run_id"] = study_run.run_id
    _write_state(folder, state)
    again = command_line(argv or ["benchmark", study_file])
    print(plan.describe(planned), flush=True)
    status = "FAILED"
    try:
        with kept_between_sweeps():  # consecutive post-hoc sweeps share one evaluator pool, started once
            for i, s in enumerate(planned.sweeps, 1):
                done = state["sweeps"].get(s.name, {})
                if done.get("status") == "FINISHED":
                    print(f"[{i}/{len(planned.sweeps)}] {s.name}: finished earlier, kept", flush=True)
                    continue
                print(f"[{i}/{len(planned.sweeps)}] {s.name}: {s.entry.method} on {s.benchmark}, seed {s.seed}",
                      flush=True)
                code = _run_sweep(s, folder, state, study_run.run_id, spec.name)
                if code in (130, 143):
                    status = "KILLED"
                    print(f"Study {spec.name} stopped; run the same command to continue it:\n  {again}", flush=True)
                    return code
        rows = _leaderboard(planned, uri, experiment)
        _write_leaderboard(rows, spec, folder if out is None else Path(out), study_run, again)
        status = "FINISHED" if all(v.get("status") == "FINISHED" for v in state["sweeps"].values()) else "FAILED"
        return 0 if status == "FINISHED" else 1
    except KeyboardInterrupt:  # between sweeps
        status = "KILLED"
        print(f"Study {spec.name} stopped; run the same command to continue it:\n  {again}", flush=True)
        return 130
    finally:
        study_run.client.set_terminated(study_run.run_id, status)


def _run_sweep(s: plan.PlannedSweep, folder: Path, state: dict, study_run_id: str, study: str) -> int:
    from orchestrator.sweep import state as sweep_state
    from orchestrator.sweep.interrupt import EXIT_CODES
    from orchestrator.sweep.runner import run as run_sweep

    prep = s.prep
    prep.opts.study_run_id, prep.opts.study = study_run_id, study
    sweep_folder = folder.parent / s.name
    if (sweep_folder / sweep_state.STATE_FILE).is_file():
        sweep_state.check_trusted(sweep_folder)
        prep.resume = sweep_state.read(sweep_folder)
    result = run_sweep(prep)
    status = "KILLED" if result.interrupted else ("FINISHED" if result.best_matrix is not None else "FAILED")
    state["sweeps"][s.name] = {"parent_run_id": result.parent_run_id, "status": status, "entry": s.entry.label,
                               "benchmark": s.benchmark, "seed": s.seed, "finished": time.time()}
    _write_state(folder, state)
    if result.best_matrix is not None:
        flat = result.best_matrix.flat()
        print(f"    best on validation: {prep.space.metric} = {result.best_metrics.get(prep.space.metric, 0):.4f}; "
              f"test near AUROC {100 * flat['near/auroc']:.2f}, far AUROC {100 * flat['far/auroc']:.2f} "
              f"({result.num_trials} trials, {result.seconds:.0f} s)", flush=True)
    elif not result.interrupted:
        print(f"    no trial finished ({result.num_errors} failed): see MLflow run {result.parent_run_id}",
              file=sys.stderr, flush=True)
    return EXIT_CODES[result.interrupted] if result.interrupted else 0


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
    fig = leaderboard.figure(rows, title)
    fig.savefig(out / "leaderboard.png", dpi=100)
    plt.close(fig)
    for name in ("leaderboard.md", "leaderboard.csv", "leaderboard.png"):
        study_run.client.log_artifact(study_run.run_id, str(out / name))
    print("\n" + md + f"\nLeaderboard: {out / 'leaderboard.md'} (.csv, .png); MLflow run {study_run.run_id}",
          flush=True)
