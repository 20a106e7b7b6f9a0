"""What the Ray dashboard shows of a sweep: its Ray job's name and metadata, and the names of its actors and tasks.

Every sweep is a Ray job of its own (a study runs each sweep in its own driver process, see
:mod:`orchestrator.benchmark.drivers`): the dashboard's Jobs page lists it under ``job_name`` — the sweep and its
method — and :func:`ray.util.state.list_jobs` / the Jobs API return the rest of :func:`job_metadata` (sweep,
method, benchmark, seed, study, MLflow run id and a link to that run in the MLflow UI). Inside the job, trial actors
carry the method in their class name and the trial in their repr (:func:`orchestrator.sweep.trainable.named_trainable`),
a post-hoc sweep's evaluators and their batches carry the method, the sweep and the trial ids
(:func:`evaluator_repr`, :func:`batch_task`), the one-off tasks say what they prepare (:func:`task_name`).
Ray takes a job's metadata when the driver connects, so a sweep that opens a new MLflow run connects after it.
"""
from __future__ import annotations

#: The metadata key the dashboard's Jobs page shows in its Name column.
JOB_NAME = "job_name"
#: Default address of ``python -m orchestrator ui`` (an SQLite store has no server of its own).
LOCAL_UI = "http://127.0.0.1:5000"


def mlflow_link(tracking_uri: str, experiment_id: str | None, run_id: str | None) -> str:
    """The run's page in the MLflow UI: on the tracking server itself, or on ``python -m orchestrator ui`` for a
    local store (started on demand with that command)."""
    base = tracking_uri.rstrip("/") if tracking_uri.startswith(("http://", "https://")) else LOCAL_UI
    if experiment_id is None:  # the UI finds a run's experiment itself
        return f"{base}/#/runs/{run_id}" if run_id else base
    return f"{base}/#/experiments/{experiment_id}" + (f"/runs/{run_id}" if run_id else "")


def job_metadata(prep, run_id: str | None, experiment_id: str | None) -> dict[str, str]:
    """The Ray job metadata of sweep ``prep`` (all values strings, as Ray requires); ``run_id`` None: the sweep's
    MLflow run is opened after Ray connects (a sweep started on its own: see :mod:`orchestrator.sweep.runner`)."""
    opts = prep.opts
    meta = {JOB_NAME: f"{prep.name} ({opts.method})", "oodsweep.sweep": prep.name, "oodsweep.method": opts.method,
            "oodsweep.benchmark": prep.bench.name, "oodsweep.seed": str(opts.seed),
            "mlflow.tracking_uri": prep.tracking_uri,
            "mlflow.ui": mlflow_link(prep.tracking_uri, experiment_id, run_id)}
    if run_id:
        meta["mlflow.run_id"] = run_id
    if opts.study:
        meta["oodsweep.study"] = opts.study
    return meta


def study_metadata(study: str, tracking_uri: str, run_id: str, experiment_id: str) -> dict[str, str]:
    """The Ray job metadata of a study's own driver (it schedules the sweeps, each a job of its own)."""
    return {JOB_NAME: f"study {study}", "oodsweep.study": study, "mlflow.tracking_uri": tracking_uri,
            "mlflow.run_id": run_id, "mlflow.ui": mlflow_link(tracking_uri, experiment_id, run_id)}


def job_config(metadata: dict[str, str] | None):
    """A :class:`ray.job_config.JobConfig` carrying ``metadata`` (None without)."""
    if not metadata:
        return None
    from ray.job_config import JobConfig

    return JobConfig(metadata=dict(metadata))


def evaluator_repr(method: str, sweep: str) -> str:
    """The repr of a post-hoc sweep's evaluator actor (the dashboard's Repr column)."""
    return f"{method} evaluator · {sweep}"


def batch_task(method: str, sweep: str, trial_ids: list[str]) -> str:
    """The task name of a batch of configurations sent to an evaluator: the trials it scores."""
    ids = f"{trial_ids[0]}-{trial_ids[-1]}" if len(trial_ids) > 1 else (trial_ids[0] if trial_ids else "-")
    return f"{method} trials {ids} · {sweep}"


def task_name(method: str, sweep: str, what: str) -> str:
    """The name of a one-off task or actor call of a sweep (preparing its network, drawing its figures...)."""
    return f"{method} {what} · {sweep}"
