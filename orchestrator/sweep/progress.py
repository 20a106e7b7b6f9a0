"""A one-line-per-event progress report for the terminal (Ray's own table reporter is turned off).

Counts come from Tune's trial list at each event, not from counting events, so a resumed sweep shows the trials
its earlier run finished. While trials run without reporting (a long first epoch, the shared classifier being
trained), a heartbeat line says what is running at least every ``HEARTBEAT_SECONDS``.
"""
from __future__ import annotations

import sys
import time

from ray.tune import Callback

#: A line at least this often while trials run (an event line resets the clock).
HEARTBEAT_SECONDS = 30.0


class ProgressPrinter(Callback):
    def __init__(self, metric: str, mode: str, total: int, quiet: bool = False,
                 heartbeat_seconds: float = HEARTBEAT_SECONDS):
        # No stream attribute: Tune pickles its callbacks with the experiment state; stdout is looked up per line.
        self.metric, self.mode, self.total, self.quiet = metric, mode, total, quiet
        self.heartbeat_seconds = heartbeat_seconds
        self.done = self.failed = self.running = 0
        self.best: tuple[float, str] | None = None
        self.started = self.last_line = time.time()

    def _count(self, trials, ending=None, as_status: str = "") -> None:
        """Counts from the trial list; ``ending`` (the trial of a complete/error event) counts as ``as_status``
        whether or not Tune has updated its status yet."""
        statuses = [as_status if ending is not None and t is ending else t.status for t in trials]
        self.done, self.failed = statuses.count("TERMINATED"), statuses.count("ERROR")
        self.running = statuses.count("RUNNING")
        for t in trials:  # a resumed sweep's finished trials count for "best" too
            last = t.last_result or {}
            if t.status == "TERMINATED" and last.get("final"):
                self._consider(last.get(self.metric), t.trial_id)

    def _consider(self, value, trial_id: str) -> None:
        if isinstance(value, (int, float)):
            better = self.best is None or (value > self.best[0] if self.mode == "max" else value < self.best[0])
            if better:
                self.best = (float(value), trial_id)

    def _line(self, event: str) -> None:
        self.last_line = time.time()
        if self.quiet:
            return
        best = f"best {self.metric} = {self.best[0]:.4f} ({self.best[1]})" if self.best else "best: -"
        print(f"[{time.time() - self.started:6.1f}s] {self.done}/{self.total} done, {self.running} running, "
              f"{self.failed} failed | {best} | {event}", file=sys.stdout, flush=True)

    def on_step(self, iteration, trials, **info):
        if time.time() - self.last_line < self.heartbeat_seconds:
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
        self._line("running: " + ", ".join(parts) + more)

    def on_trial_start(self, iteration, trials, trial, **info):
        self._count(trials)
        self._line(f"{trial.trial_id} started")

    def on_trial_result(self, iteration, trials, trial, result, **info):
        if result.get("final"):
            self._consider(result.get(self.metric), trial.trial_id)

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._count(trials, trial, "TERMINATED")
        last = trial.last_result or {}
        value = last.get(self.metric)
        shown = f"{value:.4f}" if isinstance(value, (int, float)) else "?"
        if last.get("final"):
            self._line(f"{trial.trial_id} finished ({self.metric} = {shown})")
        else:
            self._line(f"{trial.trial_id} stopped early at epoch {last.get('epoch', '?')} ({self.metric} = {shown})")

    def on_trial_error(self, iteration, trials, trial, **info):
        self._count(trials, trial, "ERROR")
        self._line(f"{trial.trial_id} FAILED (see its MLflow run / {trial.local_path})")


class BatchProgress:
    """The same lines for a batched post-hoc sweep (:mod:`orchestrator.sweep.batched`), one per finished batch
    rather than per configuration (hundreds of configurations finish in seconds)."""

    def __init__(self, metric: str, mode: str, total: int, quiet: bool = False,
                 heartbeat_seconds: float = HEARTBEAT_SECONDS):
        self.lines = ProgressPrinter(metric, mode, total, quiet, heartbeat_seconds)
        self.heartbeat_seconds = heartbeat_seconds
        self.running = 0
        self._finished: list[str] = []

    def update(self, outcomes) -> None:
        """Counts and best from every configuration that ended (a resumed sweep's earlier ones included)."""
        self.lines.done = sum(o.error is None for o in outcomes)
        self.lines.failed = sum(o.error is not None for o in outcomes)
        for o in outcomes:
            if o.error is None:
                self.lines._consider(o.metrics.get(self.lines.metric), o.trial_id)

    def finished(self, trial_id: str, result: dict) -> None:
        self.lines.done += 1
        self.lines._consider(result.get(self.lines.metric), trial_id)
        self._finished.append(trial_id)

    def failed(self, trial_id: str) -> None:
        self.lines.failed += 1
        self.lines.running = self.running
        self.lines._line(f"{trial_id} FAILED (see its MLflow run)")

    def batch_done(self) -> None:
        self.lines.running = self.running
        if self._finished:
            ids = self._finished
            self.lines._line(f"{ids[0]}{'-' + ids[-1] if len(ids) > 1 else ''} finished")
            self._finished = []

    def heartbeat(self) -> None:
        if time.time() - self.lines.last_line >= self.heartbeat_seconds and self.running:
            self.lines.running = self.running
            self.lines._line(f"scoring {self.running} configuration(s)")
