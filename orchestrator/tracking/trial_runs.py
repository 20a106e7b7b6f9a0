"""The child runs of a sweep's trials in MLflow, written by the driver.

All logging happens on the driver, so one process writes the store: SQLite never sees concurrent writers, and
trials on remote nodes need no access to the tracking server. Child runs carry the tag ``oodsweep.trial_id``; a
resumed sweep finds and continues them instead of creating duplicates. No Ray Tune here: a batched post-hoc sweep
never imports it (:mod:`orchestrator.tracking.callback` is the Tune callback).
"""
from __future__ import annotations

import json

from orchestrator.metrics import OODMatrix
from orchestrator.tracking.runs import (
    TRIAL_TAG,
    SweepRun,
    as_params,
    log_matrix_artifacts,
    now_ms,
    numeric_metrics,
)


class TrialRuns:
    """A sweep's child run per trial — params, per-epoch validation, the final matrix — written on the sweep's
    write queue (:attr:`orchestrator.tracking.runs.SweepRun.writes`; retried, then spooled, while the store is
    away). Batched post-hoc sweeps call it directly; :class:`orchestrator.tracking.callback.MLflowTrialLogger`
    feeds it Ray Tune's events. ``study``: what tells the sweep's stored Optuna study the trials of a Tune sweep
    (:class:`orchestrator.sweep.study.TuneStudyMirror`; a batched sweep writes its study itself). ``annotate``:
    ``result -> (metrics, tags)`` added to a trial's final result (the ID-accuracy constraint's verdict,
    :meth:`orchestrator.sweep.constraint.Constraint.annotate`)."""

    def __init__(self, sweep: SweepRun, tags: dict[str, str] | None = None, study=None, annotate=None):
        self.sweep = sweep
        self.client = sweep.client
        self.tags = tags or {}
        self.study = study
        self.annotate = annotate
        self.child: dict[str, str] = {}
        self.failures = 0
        self.recorded: dict[str, str] = {}  # trial id -> run id of runs written in one go (record)
        #: Every write, in order (the sweep's queue: see orchestrator.tracking.writer).
        self.writes = sweep.writes
        self.pending: dict[str, list] = {}  # per-epoch metrics not yet written, per trial
        self.flushed: dict[str, float] = {}

    def _existing_children(self) -> dict[str, str]:
        runs = self.client.search_runs([self.sweep.experiment_id],
                                       filter_string=f"tags.mlflow.parentRunId = '{self.sweep.run_id}'",
                                       max_results=5000)
        for r in runs:
            self.client.adopt(r)
        return {r.data.tags[TRIAL_TAG]: r.info.run_id for r in runs if TRIAL_TAG in r.data.tags}

    def setup(self, **info):
        self.child.update(self._existing_children())

    def _run_for(self, trial_id: str, config: dict) -> str:
        run_id = self.child.get(trial_id)
        if run_id is None:
            tags = {"mlflow.parentRunId": self.sweep.run_id, TRIAL_TAG: trial_id, **self.tags}
            run = self.client.create_run(self.sweep.experiment_id, run_name=f"trial-{trial_id}", tags=tags)
            run_id = self.child[trial_id] = run.info.run_id
            from mlflow.entities import Param

            self.client.log_batch(run_id, params=[Param(k, v) for k, v in as_params(config).items()])
        return run_id

    def _submit(self, op) -> None:
        self.writes.submit(op)

    def flush(self) -> bool:
        return self.writes.flush()

    # ------------------------------------------------------------ one trial's life (Tune events and batched sweeps)
    def start(self, trial_id: str, config: dict) -> None:
        """The trial's child run, RUNNING."""
        config = dict(config)
        self._submit(lambda: self._run_for(trial_id, config))

    def finish(self, trial_id: str, config: dict, result: dict) -> None:
        """A trial that ended with its final result: metrics and matrix artifacts in one go, FINISHED."""
        from mlflow.entities import Metric

        config, result = dict(config), dict(result)
        step = int(result.get("epoch", 0)) + 1
        metrics = [*self.pending.pop(trial_id, []),
                   *(Metric(k, v, now_ms(), step) for k, v in numeric_metrics(result).items())]
        self._submit(lambda: self._log_result(trial_id, config, result, metrics))
        self._submit(lambda: self._complete(trial_id, config, result))

    def fail(self, trial_id: str, config: dict, error: str) -> None:
        """A trial that raised: its error (last line as a tag, the rest as ``error.txt``), FAILED."""
        self._flush_pending(trial_id, config)
        self.failures += 1
        config = dict(config)
        self._submit(lambda: self._fail(trial_id, config, error))

    def record(self, trial_id: str, config: dict, status: str, result: dict | None = None, error: str = "",
               started_ms: int | None = None) -> None:
        """A configuration that has already ended, written as its child run in one go — created, params, metrics and
        tags in one batch, the matrix artifacts, terminated with ``status`` — for batched post-hoc sweeps, whose
        configurations end within milliseconds of starting (a RUNNING run first would cost two more writes)."""
        from mlflow.entities import Metric, Param, RunTag

        config, result, ended = dict(config), dict(result or {}), now_ms()

        def write():
            run_id = self.recorded.get(trial_id)
            if run_id is None:  # a retry after a failed write reuses the run it created
                tags = {"mlflow.parentRunId": self.sweep.run_id, TRIAL_TAG: trial_id, **self.tags}
                run = self.client.create_run(self.sweep.experiment_id, start_time=started_ms or ended, tags=tags,
                                             run_name=f"trial-{trial_id}")
                run_id = self.recorded[trial_id] = run.info.run_id
            step = int(result.get("epoch", 0)) + 1
            judged, judged_tags = self._judged(result, step, ended)
            metrics = [*(Metric(k, v, ended, step) for k, v in numeric_metrics(result).items()), *judged]
            tags = [RunTag("error", error.strip().splitlines()[0][:5000])] if error.strip() else []
            tags += judged_tags
            params = [Param(k, v) for k, v in as_params(config).items()]
            self.client.log_batch(run_id, metrics=metrics[:1000], params=params, tags=tags)
            for start in range(1000, len(metrics), 1000):  # MLflow's log_batch limit
                self.client.log_batch(run_id, metrics=metrics[start:start + 1000])
            if result.get("matrix_json"):
                log_matrix_artifacts(self.client, run_id, OODMatrix.from_json(json.loads(result["matrix_json"])))
            if error:
                self.client.log_text(run_id, error, "error.txt")
            self.client.set_terminated(run_id, status, end_time=ended)

        self._submit(write)

    def _flush_pending(self, trial_id, config):
        batch = self.pending.pop(trial_id, [])
        if batch:
            config = dict(config)
            self._submit(lambda: self._log_result(trial_id, config, {}, batch))

    def _judged(self, result: dict, step: int, at_ms: int) -> tuple[list, list]:
        """The MLflow metrics and tags ``annotate`` adds to a final result (none to per-epoch ones)."""
        if self.annotate is None or not result.get("final"):
            return [], []
        from mlflow.entities import Metric, RunTag

        metrics, tags = self.annotate(result)
        return [Metric(k, v, at_ms, step) for k, v in metrics.items()], [RunTag(k, v) for k, v in tags.items()]

    def _log_result(self, trial_id, config, result, metrics):
        run_id = self._run_for(trial_id, config)
        judged, tags = self._judged(result, int(result.get("epoch", 0)) + 1, now_ms())
        metrics = [*metrics, *judged]
        for start in range(0, len(metrics), 1000):  # MLflow's log_batch limit
            self.client.log_batch(run_id, metrics=metrics[start:start + 1000], tags=tags if start == 0 else [])
        if result.get("matrix_json"):
            # The CSV and JSON of the matrix; its heatmap is drawn for the best trial only (a figure per trial cost
            # more than scoring a post-hoc configuration: ~0.15 s of the driver's time each).
            log_matrix_artifacts(self.client, run_id, OODMatrix.from_json(json.loads(result["matrix_json"])))

    def _complete(self, trial_id, config, last):
        run_id = self._run_for(trial_id, config)
        if not last.get("final"):  # stopped by the scheduler: keep what it reached, say so
            self.client.set_tag(run_id, "stopped_early", f"epoch {last.get('epoch', '?')}")
        self.client.set_terminated(run_id, "FINISHED")

    def _fail(self, trial_id, config, error):
        run_id = self._run_for(trial_id, config)
        self.client.set_tag(run_id, "error", error.strip().splitlines()[-1][:5000] if error.strip() else "trial failed")
        if error:
            self.client.log_text(run_id, error, "error.txt")
        self.client.set_terminated(run_id, "FAILED")

    def end_unfinished(self, status: str = "KILLED") -> None:
        """Give every child run this sweep left RUNNING (its trial was stopped) a final ``status`` (through the
        spool when the store is away)."""
        self.flush()
        for run_id in self.child.values():
            if self.client.ended(run_id):
                continue
            try:
                running = self.client.get_run(run_id).info.status == "RUNNING"
            except Exception:  # noqa: BLE001 - the store does not answer: end it anyway (queued, then spooled)
                running = True
            if running:
                self.client.set_terminated(run_id, status)

    def drop_unknown(self, known: set[str]) -> None:
        # A driver killed between creating a child run and Tune's next experiment-state snapshot leaves a run for a
        # trial the resumed sweep never heard of (Tune runs a fresh trial instead): drop it, one run per trial.
        for trial_id, run_id in list(self.child.items()):
            if trial_id not in known:
                self._submit(lambda run_id=run_id: self.client.delete_run(run_id))
                del self.child[trial_id]

    def close(self, rows: list[dict] | None = None) -> None:
        """Write what is queued: a store that is away is waited for (``--store-retry-seconds``), then the rest goes
        to the spool (``rows``, every trial's final result, is no longer needed: the spool holds the same)."""
        self.writes.close()

    # ------------------------------------------------------------ the stored Optuna study of a Tune sweep
    def keep_trial(self, trial_id: str, config: dict, result: dict | None, failed: bool) -> None:
        """Tell the stored study (``study``) that the trial ended, on the write queue."""
        if self.study is None or self.study.stored is None:
            return
        frozen, stored = self.study.ended(trial_id, dict(config), dict(result or {}), failed), self.study.stored
        self._submit(lambda: stored.add_trial(frozen))

