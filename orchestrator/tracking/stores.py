"""The two stores a sweep writes, seen through its write queue: MLflow (:class:`TrackingClient`) and the stored
Optuna study (:class:`StoredStudy`).

Both write through :class:`orchestrator.tracking.writer.WriteQueue`: a failure becomes :class:`StoreAway` (tried
again, then spooled) or :class:`Refused` (spooled at once), and once the queue counts the store as away they append
their writes to the sweep's :class:`~orchestrator.tracking.spool.Spool` instead. :class:`TrackingClient` keeps
MLflow's own client for every call (MLflow's REST and SQL stores, its artifact repositories); it only decides
*where* a write goes, and answers reads of the runs it wrote from memory while the store is away.
"""
from __future__ import annotations

import json
import logging
import os
import tempfile
import uuid
from pathlib import Path
from typing import Any

from orchestrator.tracking.spool import Spool, apply_mlflow, metric_rows, trial_identity, trial_record
from orchestrator.tracking.tags import PARENT_TAG, SPOOL_TAG
from orchestrator.tracking.writer import Refused, StoreAway, WriteQueue

MLFLOW = "mlflow"
OPTUNA = "optuna"
#: MLflow error codes of a store that answered and refused the write (it would refuse it again).
REFUSALS = {"INVALID_PARAMETER_VALUE", "RESOURCE_ALREADY_EXISTS", "RESOURCE_DOES_NOT_EXIST", "INVALID_STATE",
            "BAD_REQUEST", "PERMISSION_DENIED", "UNAUTHENTICATED"}
#: Statuses of a run that has ended.
ENDED = {"FINISHED", "FAILED", "KILLED"}

log = logging.getLogger("oodsweep.tracking")


def quiet_mlflow_env() -> None:
    """MLflow settings for a sweep's clients (each only where the user set nothing):

    - no per-request HTTP retries: the write queue retries whole writes, with backoff, for
      ``--store-retry-seconds``; MLflow's own retries (7, doubling waits) would multiply that wait per write;
    - a 10-s request timeout, so that a server that hangs counts as not answering;
    - ``MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT``: ``MlflowClient.set_terminated`` on a server store writes
      "View run ... / View experiment ..." to stdout (``TrackingServiceClient._log_url``, with a ``get_run``
      request of its own) for every run — 2 lines per trial between the progress lines. The link goes to the
      sweep's log file instead (:meth:`TrackingClient._log_url`).
    """
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")


def is_refusal(exc: BaseException) -> bool:
    return getattr(exc, "error_code", None) in REFUSALS


def now_ms() -> int:
    import time

    return int(time.time() * 1000)


class TrackingClient:
    """An ``MlflowClient`` whose writes go through the sweep's write queue and, while the store is away, to its
    spool. Reads are MLflow's (``get_run`` falls back to what this client wrote when the store does not answer).

    Runs get a key before they exist (tag ``oodsweep.spool_id``); callers see the run's id — MLflow's when the run
    was created in the store, its key when it went to the spool — and may pass either back.
    """

    def __init__(self, uri: str, writes: WriteQueue, spool: Spool | None = None):
        from mlflow.tracking import MlflowClient

        quiet_mlflow_env()
        self.uri = uri
        #: MLflow's own client: every read and write is made with it.
        self.store = MlflowClient(tracking_uri=uri)
        self.writes = writes
        self.spool = spool
        self.label = f"MLflow at {uri}"
        self._run_ids: dict[str, str] = {}  # key -> MLflow run id
        self._keys: dict[str, str] = {}  # MLflow run id -> key
        self._shadow: dict[str, dict[str, Any]] = {}  # key -> what this client wrote about the run
        self._in_spool: set[str] = set()  # keys whose run is in the spool (created, or its identity written)
        self._pending: dict[str, str] = {}  # a create_run that failed -> its key (a retry reuses it)
        self._tried: set[str] = set()  # keys whose create_run failed once (a retry first looks for the run)
        self._experiments: dict[str, str] = {}  # experiment id -> name
        self._experiment_ids: dict[str, str] = {}  # name -> id

    # Ray Tune pickles the callbacks that hold this client with its experiment state (every second): only the URI
    # travels (a restored driver's callbacks are replaced by fresh ones).
    def __getstate__(self) -> dict:
        return {"uri": self.uri}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["uri"], WriteQueue())

    def __getattr__(self, name: str):
        # MLflow's reads (search_runs, get_metric_history, list_artifacts, ...). Private names never: pickle asks
        # for __setstate__ before __dict__ is filled.
        if name.startswith("_") or name == "store":
            raise AttributeError(name)
        return getattr(self.store, name)

    # ------------------------------------------------------------------ ids
    def _key(self, run_id: str) -> str:
        return self._keys.get(run_id, run_id)

    def _live_id(self, key: str) -> str:
        return self._run_ids.get(key, key)

    def run_id(self, key_or_id: str) -> str:
        """The MLflow run id of a run (its key while it exists only in the spool)."""
        return self._live_id(self._key(key_or_id))

    def know_experiment(self, experiment_id: str, name: str) -> None:
        self._experiments[experiment_id], self._experiment_ids[name] = name, experiment_id

    def _experiment_name(self, experiment_id: str) -> str:
        if experiment_id not in self._experiments:
            self.know_experiment(experiment_id, self.store.get_experiment(experiment_id).name)
        return self._experiments[experiment_id]

    def _experiment_id(self, name: str) -> str:
        if name not in self._experiment_ids:
            exp = self.store.get_experiment_by_name(name)
            self.know_experiment(exp.experiment_id if exp else self.store.create_experiment(name), name)
        return self._experiment_ids[name]

    def adopt(self, run) -> str:
        """A run that exists in the store (a resumed sweep's): known by its key from now on; returns the key."""
        key = run.data.tags.get(SPOOL_TAG) or run.info.run_id
        self._run_ids[key], self._keys[run.info.run_id] = run.info.run_id, key
        self._shadow[key] = {"experiment": self._experiment_name(run.info.experiment_id),
                             "experiment_id": run.info.experiment_id, "name": run.info.run_name,
                             "start_time": run.info.start_time, "tags": dict(run.data.tags),
                             "params": dict(run.data.params), "status": run.info.status}
        return key

    # ------------------------------------------------------------------ reads
    def get_run(self, run_id: str):
        """MLflow's run — or, while the store is away or for a run only in the spool, the run as this client
        wrote it (tags, params and status; no metrics)."""
        key = self._key(run_id)
        if key in self._shadow and (key not in self._run_ids or self.writes.spooling(MLFLOW)):
            return self._shadow_run(key)
        try:
            return self.store.get_run(self._live_id(key))
        except Exception:
            if key in self._shadow:
                return self._shadow_run(key)
            raise

    def ended(self, run_id: str) -> bool:
        """Whether this client ended the run (FINISHED, FAILED or KILLED)."""
        return self._shadow.get(self._key(run_id), {}).get("status") in ENDED

    def _shadow_run(self, key: str):
        from mlflow.entities import Param, Run, RunData, RunInfo, RunTag

        s = self._shadow[key]
        info = RunInfo(run_id=self._live_id(key), experiment_id=s.get("experiment_id", ""), user_id="",
                       status=s.get("status", "RUNNING"), start_time=s.get("start_time") or 0, end_time=None,
                       lifecycle_stage="active", run_name=s.get("name"))
        data = RunData(params=[Param(k, v) for k, v in s["params"].items()],
                       tags=[RunTag(k, v) for k, v in s["tags"].items()])
        return Run(info, data)

    # ------------------------------------------------------------------ writes (MlflowClient's signatures)
    def create_run(self, experiment_id: str, start_time: int | None = None, tags: dict[str, Any] | None = None,
                   run_name: str | None = None):
        if not self.writes.executing():
            return self.writes.call(lambda: self.create_run(experiment_id, start_time, tags, run_name))
        tags = {k: str(v) for k, v in (tags or {}).items()}
        if tags.get(PARENT_TAG):
            tags[PARENT_TAG] = self._key(tags[PARENT_TAG])
        signature = json.dumps([experiment_id, run_name, sorted(tags.items())])
        key = self._pending.setdefault(signature, uuid.uuid4().hex)
        record = {"op": "create_run", "run": key, "experiment": self._experiment_name(experiment_id),
                  "start_time": start_time or now_ms(), "name": run_name, "tags": {**tags, SPOOL_TAG: key}}
        run = self._write(record)
        del self._pending[signature]
        return run

    def log_batch(self, run_id: str, metrics=(), params=(), tags=(), synchronous=None) -> None:
        tag_values = {t.key: str(t.value) for t in tags}
        if tag_values.get(PARENT_TAG):
            tag_values[PARENT_TAG] = self._key(tag_values[PARENT_TAG])
        self._write({"op": "log_batch", "run": self._key(run_id), "metrics": metric_rows(metrics),
                     "params": {p.key: str(p.value) for p in params}, "tags": tag_values})

    def log_metric(self, run_id: str, key: str, value: float, timestamp: int | None = None, step: int | None = None,
                   **_) -> None:
        from mlflow.entities import Metric

        self.log_batch(run_id, metrics=[Metric(key, value, timestamp or now_ms(), step or 0)])

    def log_param(self, run_id: str, key: str, value: Any, **_) -> None:
        from mlflow.entities import Param

        self.log_batch(run_id, params=[Param(key, str(value))])

    def set_tag(self, run_id: str, key: str, value: Any, **_) -> None:
        from mlflow.entities import RunTag

        self.log_batch(run_id, tags=[RunTag(key, str(value))])

    def set_terminated(self, run_id: str, status: str | None = None, end_time: int | None = None) -> None:
        self._write({"op": "terminate", "run": self._key(run_id), "status": status or "FINISHED",
                     "end_time": end_time or now_ms()})

    def update_run(self, run_id: str, status: str | None = None, name: str | None = None) -> None:
        self._write({"op": "update", "run": self._key(run_id), "status": status, "name": name})

    def delete_run(self, run_id: str) -> None:
        self._write({"op": "delete", "run": self._key(run_id)})

    def log_artifact(self, run_id: str, local_path: str, artifact_path: str | None = None) -> None:
        self._write({"op": "artifact", "run": self._key(run_id), "file": str(Path(local_path).resolve()),
                     "artifact_path": artifact_path})

    def log_artifacts(self, run_id: str, local_dir: str, artifact_path: str | None = None) -> None:
        self.log_artifact(run_id, local_dir, artifact_path)

    def log_text(self, run_id: str, text: str, artifact_file: str) -> None:
        folder = os.path.dirname(artifact_file) or None
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / os.path.basename(artifact_file)
            path.write_text(text)
            self.log_artifact(run_id, str(path), folder)

    def log_dict(self, run_id: str, dictionary: dict[str, Any], artifact_file: str) -> None:
        if artifact_file.endswith((".yaml", ".yml")):
            import yaml

            text = yaml.safe_dump(dictionary, default_flow_style=False)
        else:
            text = json.dumps(dictionary, indent=2)
        self.log_text(run_id, text, artifact_file)

    # ------------------------------------------------------------------ where a write goes
    def _write(self, record: dict[str, Any]):
        if not self.writes.executing():  # keep one order with the queued writes
            return self.writes.call(lambda: self._write(record))
        key = record["run"]
        self._remember(record)
        if self.writes.spooling(MLFLOW):
            return self._to_spool(record)
        try:
            result = self._adopt_lost(record) if key in self._tried else None
            if result is None:
                result = apply_mlflow(record, self.store, self._live_id, experiment_id=self._experiment_id)
        except Exception as exc:
            if record["op"] == "create_run":
                self._tried.add(key)
            raise (Refused if is_refusal(exc) else StoreAway)(MLFLOW, self.label, exc) from exc
        if record["op"] == "create_run":
            self._run_ids[key], self._keys[result.info.run_id] = result.info.run_id, key
            self._shadow[key]["experiment_id"] = result.info.experiment_id
        elif record["op"] == "terminate" and self.uri.startswith(("http://", "https://")):
            self._log_url(key)
        return result

    def _adopt_lost(self, record: dict[str, Any]):
        """A create_run tried again after a failure: the run the store made although its answer was lost."""
        if record["op"] != "create_run":
            return None
        key = record["run"]
        found = self.store.search_runs([self._experiment_id(record["experiment"])],
                                       filter_string=f"tags.`{SPOOL_TAG}` = '{key}'", max_results=1)
        return found[0] if found else None

    def _remember(self, record: dict[str, Any]) -> None:
        """What a write says about its run (for reads while the store is away, and the run's identity in a
        spool)."""
        op, key = record["op"], record["run"]
        if op == "create_run":
            self._shadow[key] = {"experiment": record["experiment"], "name": record["name"],
                                 "experiment_id": self._experiment_ids.get(record["experiment"], ""),
                                 "start_time": record["start_time"], "tags": dict(record["tags"]), "params": {},
                                 "status": "RUNNING"}
            return
        shadow = self._shadow.get(key)
        if shadow is None:
            return
        if op == "log_batch":
            shadow["params"].update(record["params"])
            shadow["tags"].update(record["tags"])
        elif op in ("terminate", "update") and record.get("status"):
            shadow["status"] = record["status"]

    def _to_spool(self, record: dict[str, Any]):
        if self.spool is None:
            raise RuntimeError(f"{self.label} is away and this client has no spool")
        key = record["run"]
        if record["op"] == "create_run":
            self._introduce(record["tags"].get(PARENT_TAG))
            self._in_spool.add(key)
        else:
            self._introduce(key)
        self.spool.append(record)
        if record["op"] == "create_run":
            from types import SimpleNamespace

            info = SimpleNamespace(run_id=key, experiment_id=self._experiment_ids.get(record["experiment"], ""),
                                   run_name=record["name"], status="RUNNING")
            return SimpleNamespace(info=info, data=SimpleNamespace(tags=dict(record["tags"]), params={},
                                                                   metrics={}))
        return None

    def _introduce(self, key: str | None) -> None:
        """Before the first spooled write to a run that was created in the store: the run as it is known here
        (created with its tags and params, under its parent, itself introduced first), so that a replay into
        another store can create it. A replay into the same store finds it and writes these again as no-ops."""
        if not key or key in self._in_spool or key not in self._shadow:
            return
        self._in_spool.add(key)
        shadow = self._shadow[key]
        self._introduce(shadow["tags"].get(PARENT_TAG))
        tags = {k: v for k, v in shadow["tags"].items() if not k.startswith("mlflow.") or k == PARENT_TAG}
        self.spool.append({"op": "create_run", "run": key, "experiment": shadow["experiment"],
                           "start_time": shadow["start_time"], "name": shadow["name"],
                           "tags": {**tags, SPOOL_TAG: key}})
        if shadow["params"]:
            self.spool.append({"op": "log_batch", "run": key, "metrics": [], "params": shadow["params"],
                               "tags": {}})

    def _log_url(self, key: str) -> None:
        """The link MLflow would have printed on stdout (see :func:`quiet_mlflow_env`), to the sweep's log file."""
        shadow = self._shadow.get(key, {})
        experiment = shadow.get("experiment_id") or self._experiment_ids.get(shadow.get("experiment", ""), "")
        log.info("View run %s at: %s/#/experiments/%s/runs/%s", shadow.get("name"), self.uri.rstrip("/"),
                 experiment, self._live_id(key))


class StoredStudy:
    """The sweep's stored Optuna study (an RDB storage) as the write queue sees it: :meth:`add_trial` writes an
    ended trial to the storage, or — once the storage counts as away — appends it to the spool; ``python -m
    orchestrator sync`` (or ``--resume``) adds it later. Everything else is the Optuna study's."""

    def __init__(self, study, url: str, writes: WriteQueue, spool: Spool | None = None):
        self.study, self.url, self.writes, self.spool = study, url, writes, spool
        self.label = f"the Optuna storage {url}"
        # Read now, while the storage answers: a spooled trial's record names them.
        self.study_name, self._directions = study.study_name, [d.name.lower() for d in study.directions]
        self._tried: set[str] = set()  # trials whose write failed once (a retry first looks for them)

    def __getattr__(self, name: str):
        if name.startswith("_") or name == "study":
            raise AttributeError(name)
        return getattr(self.study, name)

    def __getstate__(self) -> dict:  # pickled with Tune's callbacks: a restored driver opens the study again
        return {"url": self.url}

    def __setstate__(self, state: dict) -> None:
        self.study, self.url, self.writes, self.spool, self._tried = None, state["url"], None, None, set()
        self.label, self.study_name, self._directions = f"the Optuna storage {self.url}", "", []

    def add_trial(self, frozen) -> None:
        if self.study is None:
            return
        if not self.writes.executing():
            return self.writes.call(lambda: self.add_trial(frozen))
        if self.writes.spooling(OPTUNA):
            if self.spool is None:
                raise RuntimeError(f"{self.label} is away and this study has no spool")
            self.spool.append(trial_record(self.url, self.study_name, self._directions, frozen))
            return
        identity = trial_identity(frozen)
        try:
            if identity in self._tried and identity in {trial_identity(t)
                                                        for t in self.study.get_trials(deepcopy=False)}:
                return  # written by the try whose answer was lost
            self.study.add_trial(frozen)
        except Exception as exc:
            self._tried.add(identity)
            raise (Refused if isinstance(exc, (ValueError, TypeError)) else StoreAway)(OPTUNA, self.label,
                                                                                        exc) from exc
