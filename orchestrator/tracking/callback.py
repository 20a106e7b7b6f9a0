"""The Ray Tune callback that writes every trial to MLflow, on the driver (:class:`TrialRuns` fed by Tune's
events: trial started, per-epoch results, completed, failed, experiment ended), and each ended trial to the sweep's
stored Optuna study (Tune's searcher keeps its own study in memory: a storage that stops answering must not stop
the search)."""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

from ray.tune import Callback

from orchestrator.tracking.runs import FLUSH_SECONDS, HISTORY_KEY, now_ms, numeric_metrics
from orchestrator.tracking.trial_runs import TrialRuns


class MLflowTrialLogger(TrialRuns, Callback):
    """Ray Tune callback: a nested child run per trial with params, per-epoch validation and the final matrix."""

    # ------------------------------------------------------------ Ray Tune's callback events
    def on_trial_start(self, iteration, trials, trial, **info):
        self.start(trial.trial_id, trial.config)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        from mlflow.entities import Metric

        trial_id, config, result = trial.trial_id, dict(trial.config), dict(result)
        pending = self.pending.setdefault(trial_id, [])
        # A report may stand for several epochs (the earlier ones ride along as JSON); MLflow's step is the epoch,
        # and the final evaluation comes after the last epoch.
        for record in [*json.loads(result.get(HISTORY_KEY) or "[]"), result]:
            step = int(record.get("epoch", result.get("training_iteration", 0))) + bool(record.get("final"))
            pending.extend(Metric(k, v, now_ms(), step) for k, v in numeric_metrics(record).items())
        # Per-epoch metrics are batched (one store write every FLUSH_SECONDS per trial, not one per epoch: each write
        # is a commit, and the trial waits for its report to be consumed); the final result is written at once.
        if result.get("final") or time.monotonic() - self.flushed.get(trial_id, 0.0) >= FLUSH_SECONDS:
            batch, self.pending[trial_id] = pending, []
            self.flushed[trial_id] = time.monotonic()
            self._submit(lambda: self._log_result(trial_id, config, result, batch))

    def on_trial_complete(self, iteration, trials, trial, **info):
        trial_id, config, last = trial.trial_id, dict(trial.config), dict(trial.last_result or {})
        self._flush_pending(trial_id, config)
        self._submit(lambda: self._complete(trial_id, config, last))
        self.keep_trial(trial_id, config, last, failed=False)

    def on_trial_error(self, iteration, trials, trial, **info):
        error = ""
        if getattr(trial, "error_file", None) and os.path.exists(trial.error_file):
            error = Path(trial.error_file).read_text()[-4000:]
        self.fail(trial.trial_id, trial.config, error)
        self.keep_trial(trial.trial_id, trial.config, trial.last_result, failed=True)

    def on_experiment_end(self, trials, **info):
        self.drop_unknown({t.trial_id for t in trials})
        self.close([{"trial_id": t.trial_id, "config": t.config, "last_result": t.last_result, "status": t.status}
                    for t in trials])
