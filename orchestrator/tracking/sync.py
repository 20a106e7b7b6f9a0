"""``python -m orchestrator sync SWEEP``: write a sweep's spool (:mod:`orchestrator.tracking.spool`) into its
stores — or into others (``--tracking-uri``, ``--optuna-storage``: moving a laptop sweep to the team's server).

A replay is idempotent, so it can be run again after it was interrupted, and a second one writes nothing:

- MLflow: a spooled run is looked up by its key (tag ``oodsweep.spool_id``) before it is created; a run whose
  records were all replayed gets the tag ``oodsweep.spool_synced`` = the digest of those records, and a later
  replay skips its records (params, metrics with their timestamps, tags, artifacts, status). Records of a run
  that a replay was cut short in are written again, which MLflow takes without duplicates: identical metrics
  (key, value, timestamp, step) are kept once, params and tags are set to the same values, artifacts overwritten.
- Optuna: a trial is added to the stored study unless the study holds one with its ``trial_id`` user attribute.

``--resume`` replays the spool first too (:func:`replay`), so a resumed sweep starts from complete stores.
"""
from __future__ import annotations

import hashlib
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from orchestrator.tracking.spool import apply_mlflow, find_spool, read_meta, read_records
from orchestrator.tracking.tags import SPOOL_TAG, SYNCED_TAG


@dataclass
class Replayed:
    """What a replay did."""

    records: int = 0
    written: int = 0
    skipped: int = 0  # already in the store
    runs_created: int = 0
    trials_added: int = 0
    #: One line per record the store refused (it would refuse it again).
    refused: list[str] = field(default_factory=list)
    targets: list[str] = field(default_factory=list)

    def line(self) -> str:
        where = " and ".join(self.targets) or "nowhere"
        return (f"{self.written} of {self.records} spooled records written into {where} ({self.runs_created} runs "
                f"created, {self.trials_added} Optuna trials added), {self.skipped} already there"
                + (f"; {len(self.refused)} refused (first: {self.refused[0]})" if self.refused else ""))


def replay(folder: str | Path, tracking_uri: str | None = None, optuna_storage: str | None = None) -> Replayed:
    """Write the spool in ``folder`` into its stores (or ``tracking_uri`` / ``optuna_storage``). Raises
    ConnectionError when a store does not answer (nothing is lost: run it again)."""
    folder = Path(folder)
    records = read_records(folder)
    report = Replayed(records=len(records))
    mlflow_records = [r for r in records if r.get("store", "mlflow") == "mlflow"]
    optuna_records = [r for r in records if r.get("store") == "optuna"]
    if mlflow_records:
        uri = tracking_uri or read_meta(folder).get("tracking_uri")
        if not uri:
            raise ConnectionError(f"{folder} does not say which MLflow store it belongs to; pass --tracking-uri")
        try:
            _replay_mlflow(mlflow_records, folder, uri, report)
        except ConnectionError:
            raise
        except Exception as exc:  # noqa: BLE001 - a store that does not answer raises MLflow's or the HTTP stack's
            raise ConnectionError(f"MLflow at {uri} did not answer ({type(exc).__name__}: "
                                  f"{str(exc).splitlines()[0][:200] if str(exc) else ''}); nothing is lost: run "
                                  f"sync again") from None
    if optuna_records:
        _replay_optuna(optuna_records, optuna_storage, report)
    return report


def _digest(records: list[dict[str, Any]]) -> str:
    return hashlib.sha1(json.dumps(records, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _replay_mlflow(records: list[dict[str, Any]], folder: Path, uri: str, report: Replayed) -> None:
    from mlflow.entities import ViewType

    from orchestrator.tracking.runs import check_store, client_for
    from orchestrator.tracking.stores import is_refusal

    check_store(uri)
    client = client_for(uri)
    report.targets.append(uri)
    by_key: dict[str, list[dict[str, Any]]] = {}
    for r in records:
        by_key.setdefault(r["run"], []).append(r)
    creates = {key: next((r for r in rs if r["op"] == "create_run"), None) for key, rs in by_key.items()}
    experiments: dict[str, str] = {}

    def experiment_id(name: str, create: bool = True) -> str | None:
        if name not in experiments:
            exp = client.get_experiment_by_name(name)
            if exp is None and not create:
                return None
            experiments[name] = exp.experiment_id if exp else client.create_experiment(name)
        return experiments[name]

    def find(key: str):
        """The run of ``key`` in this store (deleted ones too), or None."""
        create = creates.get(key)
        if create is not None:
            exp = experiment_id(create["experiment"], create=False)
            if exp is not None:
                found = client.search_runs([exp], filter_string=f"tags.`{SPOOL_TAG}` = '{key}'",
                                           run_view_type=ViewType.ALL, max_results=1)
                if found:
                    return found[0]
        try:  # a run the spool did not create (a resumed sweep's from before): by its id
            return client.get_run(key)
        except Exception as exc:  # noqa: BLE001 - MLflow says "not found" with an exception
            if is_refusal(exc):
                return None
            raise

    runs: dict[str, Any] = {}  # key -> run found in (or created in) this store
    skip: set[str] = set()
    for key, rs in by_key.items():
        run = runs[key] = find(key)
        deleting = any(r["op"] == "delete" for r in rs)
        if run is None and deleting:
            skip.add(key)  # never reached this store: nothing to create only to delete
        elif run is not None and (run.info.lifecycle_stage == "deleted"
                                  or run.data.tags.get(SYNCED_TAG) == _digest(rs)):
            skip.add(key)
    params: dict[str, dict[str, str]] = {k: dict(r.data.params) for k, r in runs.items() if r is not None}

    def resolve(key: str) -> str:
        run = runs.get(key)
        if run is None:
            run = runs[key] = find(key)
        if run is None:
            create = creates.get(key)
            if create is None:
                raise LookupError(f"run {key} is neither in {uri} nor created by the spool")
            run = runs[key] = apply_mlflow(create, client, resolve, folder, experiment_id)
            params[key] = {}
            report.runs_created += 1
        return run.info.run_id

    failed: set[str] = set()
    for record in records:
        key = record["run"]
        if key in skip:
            report.skipped += 1
            continue
        if record["op"] == "create_run" and runs.get(key) is not None:
            report.skipped += 1  # the run is there
            continue
        try:
            if record["op"] == "create_run":
                resolve(key)
            else:
                apply_mlflow(_new_params_only(record, params.setdefault(key, {})), client, resolve, folder,
                             experiment_id)
        except Exception as exc:  # noqa: BLE001 - a refusal is reported, a store that went away stops the replay
            if not (is_refusal(exc) or isinstance(exc, LookupError)):
                raise ConnectionError(f"MLflow at {uri} stopped answering during the replay ({exc}); "
                                      f"{report.written} records were written: run sync again") from None
            failed.add(key)
            report.refused.append(f"{record['op']} of run {key}: {str(exc).splitlines()[0][:200]}")
            continue
        report.written += 1
    for key, rs in by_key.items():  # every record of these runs is in the store: a later replay skips them
        if key not in skip and key not in failed and runs.get(key) is not None and not any(
                r["op"] == "delete" for r in rs):
            client.set_tag(runs[key].info.run_id, SYNCED_TAG, _digest(rs))


def _new_params_only(record: dict[str, Any], known: dict[str, str]) -> dict[str, Any]:
    """A log_batch record without the params the run already has with that value; a param it has with another
    value becomes a tag of that name (MLflow's params never change; what a resumed sweep's parent run does too)."""
    if record["op"] != "log_batch" or not record.get("params"):
        return record
    new, moved = {}, {}
    for k, v in record["params"].items():
        if k not in known:
            new[k] = known[k] = v
        elif known[k] != v:
            moved[k] = v
    return {**record, "params": new, "tags": {**(record.get("tags") or {}), **moved}}


def _replay_optuna(records: list[dict[str, Any]], storage: str | None, report: Replayed) -> None:
    import optuna

    from orchestrator.tracking.spool import trial_from_record, trial_identity

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # no "Using an existing study" line
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in records:
        groups.setdefault((storage or r["storage"], r["study"]), []).append(r)
    for (url, name), rs in groups.items():
        # The sweep's own settings (orchestrator.sweep.study).
        kwargs = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {"pool_pre_ping": True}
        try:
            study = optuna.create_study(storage=optuna.storages.RDBStorage(url, engine_kwargs=kwargs),
                                        study_name=name, directions=rs[0]["directions"], load_if_exists=True)
            present = {trial_identity(t) for t in study.get_trials(deepcopy=False)}
        except Exception as exc:  # noqa: BLE001 - whatever the storage said: one line
            raise ConnectionError(f"the Optuna storage {url} cannot be opened ({type(exc).__name__}: "
                                  f"{str(exc).splitlines()[0][:200] if str(exc) else ''})") from None
        report.targets.append(f"{url} (study {name})")
        for r in rs:
            trial = trial_from_record(r)
            if trial_identity(trial) in present:
                report.skipped += 1
                continue
            study.add_trial(trial)
            present.add(trial_identity(trial))
            report.written += 1
            report.trials_added += 1


# ---------------------------------------------------------------------------------------------------- the command
def add_parser(sub) -> None:
    p = sub.add_parser("sync", help="write a sweep's spooled tracking records into its stores (or others)",
                       description="Replay the records a sweep could not write (its MLflow server or Optuna storage "
                                   "was away; they are in <results folder>/tracking_spool) into the stores it used, "
                                   "or into others. Running it again writes nothing twice. See "
                                   "docs/store_outages.md.")
    p.add_argument("sweep", metavar="SWEEP", help="the sweep's name (with --storage-path), its results folder, or "
                                                  "a spool folder")
    p.add_argument("--storage-path", help="results folder the sweep ran in (default: ./ray_results)")
    p.add_argument("--tracking-uri", help="write the MLflow records into this store instead of the sweep's")
    p.add_argument("--optuna-storage", metavar="URL", help="add the Optuna trials to this storage instead")


def run(args) -> int:
    import logging

    from orchestrator.errors import UsageError
    from orchestrator.tracking.runs import resolve_tracking_uri

    target = Path(args.sweep)
    folder = target if target.is_dir() else Path(args.storage_path or "ray_results").resolve() / args.sweep
    if not folder.is_dir():
        raise UsageError(f"no sweep at {folder}; pass the sweep's name with the same --storage-path, its results "
                         f"folder, or the spool folder its last line named")
    spool = find_spool(folder)
    if spool is None or not read_records(spool):
        print(f"Nothing to sync: {folder} holds no spooled records.")
        return 0
    for name in ("mlflow", "alembic", "optuna"):  # their INFO lines (a store's migrations) stay off the terminal
        logging.getLogger(name).setLevel(logging.WARNING)
    uri = resolve_tracking_uri(args.tracking_uri) if args.tracking_uri else None
    try:
        report = replay(spool, uri, args.optuna_storage)
    except ConnectionError as exc:
        raise UsageError(str(exc)) from None
    print(f"Synced {spool}: {report.line()}")
    if report.refused:
        print(f"error: {len(report.refused)} records were refused; first: {report.refused[0]}", file=sys.stderr)
        return 1
    return 0
