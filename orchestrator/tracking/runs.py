"""MLflow runs: one parent run per sweep, one nested child run per trial (the store, the tags, the helpers).

All logging happens on the driver (a Ray Tune callback), so one process writes the store: SQLite never
sees concurrent writers, and trials on remote nodes need no access to the tracking server.
Child runs carry the tag ``oodsweep.trial_id``; a resumed sweep finds and continues them instead of
creating duplicates. Every write of a sweep goes through one :class:`~orchestrator.tracking.writer.WriteQueue`
(:attr:`SweepRun.writes`) and its :class:`~orchestrator.tracking.stores.TrackingClient`: a store that goes away
delays them, then they go to the sweep's spool (:mod:`orchestrator.tracking.spool`).
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from orchestrator.metrics import OODMatrix
from orchestrator.tracking.tags import (  # noqa: F401 - the tag names, also read from here
    SEED_REPEAT_TAG,
    SOURCE_TRIAL_TAG,
    SPOOL_TAG,
    STUDY_TAG,
    SWEEP_TAG,
    TRIAL_TAG,
)

#: Per-epoch metrics of a trial are written at most this often (the final result and the end of a trial at once).
FLUSH_SECONDS = 5.0
#: Result key carrying, as JSON, the per-epoch metrics of the epochs a Tune report stands for before its own.
HISTORY_KEY = "epoch_history_json"


def resolve_tracking_uri(uri: str | None, workdir: str | os.PathLike = ".") -> str:
    """Default ``sqlite:///mlflow.db`` in the working directory; relative SQLite/file paths made absolute."""
    uri = uri or "sqlite:///mlflow.db"
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        return "sqlite:///" + str((Path(workdir) / uri[len("sqlite:///"):]).resolve())
    if "://" not in uri:
        if uri.endswith(".db"):
            return "sqlite:///" + str((Path(workdir) / uri).resolve())
        return Path(uri).resolve().as_uri()
    return uri


def client_for(uri: str):
    """MLflow's own client for reads (and the writes of tools that are no sweep), with the sweep's settings."""
    from mlflow.tracking import MlflowClient

    from orchestrator.tracking.stores import quiet_mlflow_env

    quiet_mlflow_env()
    return MlflowClient(tracking_uri=uri)


def check_store(uri: str, timeout: float = 5.0) -> None:
    """Fail fast, with one line, when the MLflow store cannot work: a server that is down, a folder (MLflow 3 needs
    a database), an SQLite file that cannot be created or opened, or one that is not a database. Writes nothing."""
    if uri.startswith("file:"):
        raise ConnectionError(f"--tracking-uri {uri} is a folder, and MLflow 3 keeps runs in a database: pass "
                              f"sqlite:///PATH/mlflow.db, or an http:// tracking server")
    if uri.startswith("sqlite:///"):
        _check_sqlite(Path(uri[len("sqlite:///"):]), timeout)
        return
    check_reachable(uri, timeout)


def _check_sqlite(path: Path, timeout: float) -> None:
    import sqlite3

    if path.is_dir():
        raise ConnectionError(f"MLflow store {path} is a folder, not an SQLite file; pass sqlite:///{path}/mlflow.db")
    if not path.exists():
        folder = path.parent
        if not folder.is_dir():
            raise ConnectionError(f"MLflow store {path} cannot be created: folder {folder} does not exist")
        if not os.access(folder, os.W_OK):
            raise ConnectionError(f"MLflow store {path} cannot be created: folder {folder} is not writable")
        return
    if not os.access(path, os.R_OK | os.W_OK):
        raise ConnectionError(f"MLflow store {path} is not readable and writable by this user")
    try:  # read-only: opening a damaged file must not change it
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=timeout)) as db:
            db.execute("SELECT name FROM sqlite_master LIMIT 1").fetchall()
            bad = db.execute("PRAGMA quick_check").fetchone()
    except sqlite3.Error as exc:
        raise ConnectionError(f"MLflow store {path} cannot be read ({exc}); move it aside or pass another "
                              f"--tracking-uri") from None
    if bad and bad[0] != "ok":
        raise ConnectionError(f"MLflow store {path} is damaged (SQLite quick_check: {bad[0][:120]}); move it aside "
                              f"or pass another --tracking-uri")


def check_reachable(uri: str, timeout: float = 5.0) -> None:
    """Fail fast, before any trial starts, when an MLflow server is down."""
    if not uri.startswith(("http://", "https://")):
        return
    import urllib.error
    import urllib.request

    try:
        urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout).read()
    except (urllib.error.URLError, OSError) as exc:
        raise ConnectionError(f"MLflow tracking server {uri} is not reachable ({exc}); start it "
                              f"(python -m orchestrator ui) or pass another --tracking-uri") from None


def as_params(config: dict[str, Any]) -> dict[str, str]:
    return {k: str(v)[:500] for k, v in sorted(config.items())}


def numeric_metrics(result: dict[str, Any]) -> dict[str, float]:
    """The finite numeric metrics of a result (namespaced keys only)."""
    out = {}
    for k, v in result.items():
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            continue
        if math.isfinite(v) and (k.startswith(("val/", "train/", "near/", "far/", "id/")) or "/" in k):
            out[k] = float(v)
    return out


class SweepRun:
    """The sweep's parent MLflow run, and the write queue and client that every MLflow write of the sweep goes
    through."""

    def __init__(self, uri: str, experiment: str, sweep_name: str, run_id: str | None = None,
                 tags: dict[str, str] | None = None, spool: str | os.PathLike | None = None, on_status=None):
        """A new run named ``sweep_name`` (tags: ``oodsweep.sweep``, or ``tags`` — a study's run is no sweep), or
        the existing ``run_id``. ``spool``: the folder that keeps the writes the store does not take (default: a
        folder named after the sweep in the temp folder); ``on_status``: called with a line when the writes wait
        for a store (:attr:`orchestrator.tracking.writer.WriteQueue.on_status`)."""
        from orchestrator.tracking.spool import Spool
        from orchestrator.tracking.stores import TrackingClient
        from orchestrator.tracking.writer import WriteQueue

        self.uri = uri
        self.writes = WriteQueue("MLflow", on_status=on_status)
        folder = spool or Path(tempfile.gettempdir()) / f"oodsweep-spool-{sweep_name}"
        self.client = TrackingClient(uri, self.writes, Spool(folder, {"tracking_uri": uri, "sweep": sweep_name,
                                                                      "experiment": experiment}))
        exp = self.client.get_experiment_by_name(experiment)
        self.experiment_id = exp.experiment_id if exp else self.client.create_experiment(experiment)
        self.client.know_experiment(self.experiment_id, experiment)
        if run_id is None:
            run = self.client.create_run(self.experiment_id, run_name=sweep_name,
                                         tags={SWEEP_TAG: sweep_name} if tags is None else tags)
            run_id = run.info.run_id
        else:
            self.client.adopt(self.client.store.get_run(run_id))
        self.run_id = run_id

    @property
    def spool(self):
        """The :class:`~orchestrator.tracking.spool.Spool` of this run's writes (``spool.count``: how many went
        there)."""
        return self.client.spool

    def log_params(self, params: dict[str, Any], overwrite_ok: bool = False) -> None:
        """Params are immutable in MLflow; with ``overwrite_ok`` (a resumed sweep's best.*) existing ones are kept
        as tags instead."""
        from mlflow.entities import Param

        values = as_params(params)
        if overwrite_ok:
            existing = self.client.get_run(self.run_id).data.params
            for k in [k for k in values if k in existing and existing[k] != values[k]]:
                self.client.set_tag(self.run_id, k, values.pop(k))
            values = {k: v for k, v in values.items() if k not in existing}
        if values:
            self.client.log_batch(self.run_id, params=[Param(k, v) for k, v in values.items()])

    def set_tags(self, tags: dict[str, Any]) -> None:
        for k, v in tags.items():
            self.client.set_tag(self.run_id, k, str(v))

    def log_dict(self, data: dict, name: str) -> None:
        self.client.log_dict(self.run_id, data, name)

    def log_metrics(self, metrics: dict[str, float]) -> None:
        from mlflow.entities import Metric

        now = now_ms()
        self.client.log_batch(self.run_id, metrics=[Metric(k, v, now, 0) for k, v in numeric_metrics(metrics).items()])

    def end(self, status: str = "FINISHED") -> None:
        self.client.set_terminated(self.run_id, status)


def now_ms() -> int:
    return int(time.time() * 1000)


def log_matrix_artifacts(client, run_id: str, matrix: OODMatrix) -> None:
    with tempfile.TemporaryDirectory() as folder:
        (Path(folder) / "ood_matrix.csv").write_text(matrix.to_csv())
        (Path(folder) / "ood_matrix.json").write_text(json.dumps(matrix.to_json(), indent=1))
        client.log_artifacts(run_id, folder)


def typed_config(space, fixed: dict[str, Any], params: dict[str, str]) -> dict[str, Any]:
    """A trial's config back from its MLflow params (strings), typed by the search space and fixed values."""
    config = dict(fixed)
    for knob in space.knobs:
        if knob.name not in params:
            continue
        raw = params[knob.name]
        if knob.type == "categorical":
            config[knob.name] = next((c for c in knob.choices if str(c) == raw), raw)
        elif knob.type == "int":
            config[knob.name] = int(float(raw))
        else:
            config[knob.name] = float(raw)
    return config
