"""A sweep's spool: the tracking writes its stores did not take, kept as plain JSON lines to be replayed.

When a store stays away longer than ``--store-retry-seconds`` (:mod:`orchestrator.tracking.writer`), its writes
are appended here instead — the same calls the sweep would have made: MLflow runs created with their parent and
tags, params, metrics with their steps and timestamps, tags, artifacts (copied into the spool's ``artifacts/``
folder), runs ended with their status, and Optuna trials told to the stored study. ``python -m orchestrator sync``
(:mod:`orchestrator.tracking.sync`) replays them, into the same stores or others. JSON, never pickle: a spool may
come from another machine, and replaying it must not run code.

Runs are named by a *key* chosen by the sweep before the run exists (a uuid hex, tag ``oodsweep.spool_id`` on the
run), so that a replay finds a run it created before instead of creating it twice, in any store. The one function
that turns a record into MLflow calls, :func:`apply_mlflow`, serves both the live writes and the replay: what is
replayed is exactly what would have been written.

Layout of ``<results folder>/tracking_spool/``: ``spool.json`` (the tracking URI and sweep it belongs to),
``records.jsonl`` (one record a line, in write order), ``artifacts/NNNNNN/<file>`` (files of artifact records).
"""
from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from orchestrator.tracking.tags import PARENT_TAG

#: The spool's folder inside a sweep's results folder.
SPOOL_DIR = "tracking_spool"
RECORDS = "records.jsonl"
META = "spool.json"
#: MLflow's limits per log_batch call.
BATCH_LIMITS = {"metrics": 1000, "params": 100, "tags": 100}


class Spool:
    """Append-only JSON-lines file of records (and their artifact files) in ``folder``, created on first use."""

    def __init__(self, folder: str | os.PathLike, meta: dict[str, Any] | None = None):
        self.folder = Path(folder)
        self.meta = dict(meta or {})
        #: Records this process appended.
        self.count = 0
        self._artifacts: int | None = None  # artifact folders in the spool (counted once, then kept)

    def __getstate__(self) -> dict:  # Ray Tune pickles the callbacks that hold it
        return {"folder": str(self.folder), "meta": self.meta}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["folder"], state["meta"])

    @property
    def records_path(self) -> Path:
        return self.folder / RECORDS

    def append(self, record: dict[str, Any]) -> None:
        """Append ``record``; an artifact record's ``file`` (a local file or folder) is copied into the spool first
        and named relative to it."""
        self.folder.mkdir(parents=True, exist_ok=True)
        if not (self.folder / META).exists():
            (self.folder / META).write_text(json.dumps({**self.meta, "created": time.time()}, indent=1))
        if record.get("op") == "artifact":
            source = Path(record["file"])
            target = self.folder / "artifacts" / f"{self._next_number():06d}" / source.name
            target.parent.mkdir(parents=True, exist_ok=True)
            if source.is_dir():
                shutil.copytree(source, target)
            else:
                shutil.copyfile(source, target)
            record = {**record, "file": str(target.relative_to(self.folder))}
        line = json.dumps(record, default=str) + "\n"  # NaN stays NaN (Python's JSON reads it back)
        with open(self.records_path, "a") as f:
            f.write(line)
            f.flush()
            os.fsync(f.fileno())  # the store is away: this line is the only copy of what a trial computed
        self.count += 1

    def _next_number(self) -> int:
        if self._artifacts is None:
            folder = self.folder / "artifacts"
            self._artifacts = len(list(folder.iterdir())) if folder.is_dir() else 0
        self._artifacts += 1
        return self._artifacts - 1


def read_meta(folder: str | os.PathLike) -> dict[str, Any]:
    path = Path(folder) / META
    return json.loads(path.read_text()) if path.is_file() else {}


def read_records(folder: str | os.PathLike) -> list[dict[str, Any]]:
    """The records of the spool in ``folder``, in order ([] when there is none). A last line cut short (the
    process died while writing it) is left out."""
    path = Path(folder) / RECORDS
    if not path.is_file():
        return []
    records = []
    lines = path.read_text().splitlines()
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            if i == len(lines) - 1:
                break
            raise ValueError(f"{path}: line {i + 1} is not a JSON record") from None
    return records


def find_spool(target: str | os.PathLike) -> Path | None:
    """The spool folder of ``target``: a spool folder itself, or a results folder holding one."""
    path = Path(target)
    if (path / RECORDS).is_file() or (path / META).is_file():
        return path
    if (path / SPOOL_DIR).is_dir():
        return path / SPOOL_DIR
    return None


# ---------------------------------------------------------------------------------------------------------- MLflow
def metric_rows(metrics) -> list[list]:
    """``[key, value, timestamp, step]`` rows of MLflow ``Metric`` entities (what a record holds)."""
    return [[m.key, float(m.value), int(m.timestamp), int(m.step or 0)] for m in metrics]


def apply_mlflow(record: dict[str, Any], client, resolve: Callable[[str], str], base: Path | None = None,
                 experiment_id: Callable[[str], str] | None = None):
    """Make the MLflow calls of ``record`` with ``client`` (a plain ``MlflowClient``); ``resolve`` turns a run key
    into the run's id in that store, ``experiment_id`` an experiment name into its id, ``base`` is the spool folder
    that relative artifact paths are read from. Returns the created Run for ``create_run``, else None."""
    from mlflow.entities import Metric, Param, RunTag

    op = record["op"]
    if op == "create_run":
        tags = dict(record.get("tags") or {})
        if tags.get(PARENT_TAG):
            tags[PARENT_TAG] = resolve(tags[PARENT_TAG])
        exp = experiment_id(record["experiment"]) if experiment_id else record["experiment_id"]
        return client.create_run(exp, start_time=record.get("start_time"), tags=tags, run_name=record.get("name"))
    run_id = resolve(record["run"])
    if op == "log_batch":
        metrics = [Metric(k, v, ts, step) for k, v, ts, step in record.get("metrics") or []]
        params = [Param(k, str(v)) for k, v in (record.get("params") or {}).items()]
        tags = [RunTag(k, resolve(v) if k == PARENT_TAG else str(v)) for k, v in (record.get("tags") or {}).items()]
        while metrics or params or tags:
            client.log_batch(run_id, metrics=metrics[:BATCH_LIMITS["metrics"]], params=params[:BATCH_LIMITS["params"]],
                             tags=tags[:BATCH_LIMITS["tags"]])
            metrics, params = metrics[BATCH_LIMITS["metrics"]:], params[BATCH_LIMITS["params"]:]
            tags = tags[BATCH_LIMITS["tags"]:]
    elif op == "artifact":
        path = Path(record["file"])
        path = path if path.is_absolute() or base is None else base / path
        if path.is_dir():
            client.log_artifacts(run_id, str(path), record.get("artifact_path"))
        else:
            client.log_artifact(run_id, str(path), record.get("artifact_path"))
    elif op == "terminate":
        client.set_terminated(run_id, record.get("status"), end_time=record.get("end_time"))
    elif op == "update":
        client.update_run(run_id, status=record.get("status"), name=record.get("name"))
    elif op == "delete":
        client.delete_run(run_id)
    else:
        raise ValueError(f"unknown MLflow record {op!r}")
    return None


# ---------------------------------------------------------------------------------------------------------- Optuna
def trial_record(storage: str, study: str, directions: list[str], frozen) -> dict[str, Any]:
    """The record of telling the stored study ``study`` the ended trial ``frozen`` (an Optuna FrozenTrial)."""
    from optuna.distributions import distribution_to_json

    return {"store": "optuna", "op": "add_trial", "storage": storage, "study": study, "directions": directions,
            "trial": {"state": frozen.state.name, "values": frozen.values, "params": frozen.params,
                      "distributions": {k: distribution_to_json(d) for k, d in frozen.distributions.items()},
                      "user_attrs": frozen.user_attrs, "system_attrs": frozen.system_attrs,
                      "intermediate_values": {str(k): v for k, v in frozen.intermediate_values.items()},
                      "datetime_start": frozen.datetime_start.isoformat() if frozen.datetime_start else None,
                      "datetime_complete": (frozen.datetime_complete.isoformat() if frozen.datetime_complete
                                            else None)}}


def trial_from_record(record: dict[str, Any]):
    """The FrozenTrial of a :func:`trial_record` (number and id are given by the study it is added to)."""
    import datetime

    import optuna
    from optuna.distributions import json_to_distribution

    t = record["trial"]

    def when(text):
        return datetime.datetime.fromisoformat(text) if text else None

    values = t.get("values")
    return optuna.trial.FrozenTrial(
        number=0, state=optuna.trial.TrialState[t["state"]], value=None, values=values,
        datetime_start=when(t.get("datetime_start")), datetime_complete=when(t.get("datetime_complete")),
        params=t.get("params") or {},
        distributions={k: json_to_distribution(d) for k, d in (t.get("distributions") or {}).items()},
        user_attrs=t.get("user_attrs") or {}, system_attrs=t.get("system_attrs") or {},
        intermediate_values={int(k): v for k, v in (t.get("intermediate_values") or {}).items()}, trial_id=0)


def trial_identity(frozen) -> str:
    """What tells one trial of a stored study from another across replays: its sweep trial id (user attribute
    ``trial_id``), else its start time and params."""
    tid = frozen.user_attrs.get("trial_id")
    if tid is not None:
        return f"trial_id={tid}"
    start = frozen.datetime_start.isoformat() if frozen.datetime_start else ""
    return f"{start} {json.dumps(frozen.params, sort_keys=True, default=str)}"
