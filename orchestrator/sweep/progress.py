"""A one-line-per-event progress report for the terminal (Ray's own table reporter is turned off)."""
from __future__ import annotations

import sys
import time

from ray.tune import Callback


class ProgressPrinter(Callback):
    def __init__(self, metric: str, mode: str, total: int, quiet: bool = False):
        # No stream attribute: Tune pickles its callbacks with the experiment state; stdout is looked up per line.
        self.metric, self.mode, self.total, self.quiet = metric, mode, total, quiet
        self.done = self.failed = 0
        self.running: set[str] = set()
        self.best: tuple[float, str] | None = None
        self.started = time.time()

    def _line(self, event: str) -> None:
        if self.quiet:
            return
        best = f"best {self.metric} = {self.best[0]:.4f} ({self.best[1]})" if self.best else "best: -"
        print(f"[{time.time() - self.started:6.1f}s] {self.done}/{self.total} done, {len(self.running)} running, "
              f"{self.failed} failed | {best} | {event}", file=sys.stdout, flush=True)

    def on_trial_start(self, iteration, trials, trial, **info):
        self.running.add(trial.trial_id)
        self._line(f"{trial.trial_id} started")

    def on_trial_result(self, iteration, trials, trial, result, **info):
        value = result.get(self.metric)
        if result.get("final") and isinstance(value, (int, float)):
            better = self.best is None or (value > self.best[0] if self.mode == "max" else value < self.best[0])
            if better:
                self.best = (float(value), trial.trial_id)

    def on_trial_complete(self, iteration, trials, trial, **info):
        self.running.discard(trial.trial_id)
        self.done += 1
        last = trial.last_result or {}
        value = last.get(self.metric)
        shown = f"{value:.4f}" if isinstance(value, (int, float)) else "?"
        if last.get("final"):
            self._line(f"{trial.trial_id} finished ({self.metric} = {shown})")
        else:
            self._line(f"{trial.trial_id} stopped early at epoch {last.get('epoch', '?')} ({self.metric} = {shown})")

    def on_trial_error(self, iteration, trials, trial, **info):
        self.running.discard(trial.trial_id)
        self.failed += 1
        self._line(f"{trial.trial_id} FAILED (see its MLflow run / {trial.local_path})")
