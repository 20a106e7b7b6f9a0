"""The progress lines of a sweep run by Ray Tune: a Tune callback feeding :class:`ProgressLines`.

Counts come from Tune's trial list at each event, not from counting events, so a resumed sweep shows the trials
its earlier run finished.
"""
from __future__ import annotations

from ray.tune import Callback

from orchestrator.sweep.progress import HEARTBEAT_SECONDS, ProgressLines


class ProgressPrinter(ProgressLines, Callback):
    def __init__(self, metric: str, mode: str, total: int, quiet: bool = False,
                 heartbeat_seconds: float = HEARTBEAT_SECONDS):
        ProgressLines.__init__(self, metric, mode, total, quiet, heartbeat_seconds)

    def _count(self, trials, ending=None, as_status: str = "") -> None:
        """Counts from the trial list; ``ending`` (the trial of a complete/error event) counts as ``as_status``
        whether or not Tune has updated its status yet."""
        statuses = [as_status if ending is not None and t is ending else t.status for t in trials]
        self.done, self.failed = statuses.count("TERMINATED"), statuses.count("ERROR")
        self.running = statuses.count("RUNNING")
        for t in trials:  # a resumed sweep's finished trials count for "best" too
            last = t.last_result or {}
            if t.status == "TERMINATED" and last.get("final"):
                self.consider(last.get(self.metric), t.trial_id)

    def on_step(self, iteration, trials, **info):
        if not self.heartbeat_due():
            return
        self._count(trials)
        running = [t for t in trials if t.status == "RUNNING"]
        if not running:
            return
        parts = []
        for t in running[:4]:
            last = t.last_result or {}
            epoch = f"epoch {last['epoch']}/{last.get('epochs', '?')}" if "epoch" in last else "starting"
            parts.append(f"{t.trial_id} {epoch}")
        more = f", +{len(running) - 4} more" if len(running) > 4 else ""
        self.line("running: " + ", ".join(parts) + more)

    def on_trial_start(self, iteration, trials, trial, **info):
        self._count(trials)
        self.line(f"{trial.trial_id} started")

    def on_trial_result(self, iteration, trials, trial, result, **info):
        if result.get("final"):
            self.consider(result.get(self.metric), trial.trial_id)

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._count(trials, trial, "TERMINATED")
        last = trial.last_result or {}
        value = last.get(self.metric)
        shown = f"{value:.4f}" if isinstance(value, (int, float)) else "?"
        if last.get("final"):
            self.line(f"{trial.trial_id} finished ({self.metric} = {shown})")
        else:
            self.line(f"{trial.trial_id} stopped early at epoch {last.get('epoch', '?')} ({self.metric} = {shown})")

    def on_trial_error(self, iteration, trials, trial, **info):
        self._count(trials, trial, "ERROR")
        self.line(f"{trial.trial_id} FAILED (see its MLflow run / {trial.local_path})")
