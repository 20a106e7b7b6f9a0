"""A one-line-per-event progress report for the terminal (Ray's own table reporter is turned off).

:class:`ProgressLines` keeps the counts and the best value and prints the lines; :class:`BatchProgress` feeds it
from a batched post-hoc sweep, :class:`orchestrator.sweep.tune_progress.ProgressPrinter` from Ray Tune's events
(kept apart so that a batched sweep never imports Ray Tune: ~0.4 s of the driver's time). While trials run without
reporting (a long first epoch, the shared classifier being trained), a heartbeat line says what is running at least
every ``HEARTBEAT_SECONDS``.
"""
from __future__ import annotations

import sys
import time

#: A line at least this often while trials run (an event line resets the clock).
HEARTBEAT_SECONDS = 30.0


class ProgressLines:
    """Counts (done, running, failed), the best value of the sweep's metric, and the line that shows them."""

    def __init__(self, metric: str, mode: str, total: int, quiet: bool = False,
                 heartbeat_seconds: float = HEARTBEAT_SECONDS):
        # No stream attribute: Tune pickles its callbacks with the experiment state; stdout is looked up per line.
        self.metric, self.mode, self.total, self.quiet = metric, mode, total, quiet
        self.heartbeat_seconds = heartbeat_seconds
        self.done = self.failed = self.running = 0
        self.best: tuple[float, str] | None = None
        self.started = self.last_line = time.time()

    def consider(self, value, trial_id: str) -> None:
        """``value`` of the metric, reached by ``trial_id``: the new best when it beats the best so far."""
        if isinstance(value, (int, float)):
            better = self.best is None or (value > self.best[0] if self.mode == "max" else value < self.best[0])
            if better:
                self.best = (float(value), trial_id)

    def line(self, event: str) -> None:
        self.last_line = time.time()
        if self.quiet:
            return
        best = f"best {self.metric} = {self.best[0]:.4f} ({self.best[1]})" if self.best else "best: -"
        print(f"[{time.time() - self.started:6.1f}s] {self.done}/{self.total} done, {self.running} running, "
              f"{self.failed} failed | {best} | {event}", file=sys.stdout, flush=True)

    def heartbeat_due(self) -> bool:
        return time.time() - self.last_line >= self.heartbeat_seconds


class BatchProgress(ProgressLines):
    """The lines of a batched post-hoc sweep (:mod:`orchestrator.sweep.batched`), one per finished batch rather
    than per configuration (hundreds of configurations finish in seconds)."""

    def __init__(self, metric: str, mode: str, total: int, quiet: bool = False,
                 heartbeat_seconds: float = HEARTBEAT_SECONDS):
        super().__init__(metric, mode, total, quiet, heartbeat_seconds)
        self._finished: list[str] = []

    def update(self, outcomes) -> None:
        """Counts and best from every configuration that ended (a resumed sweep's earlier ones included)."""
        self.done = sum(o.error is None for o in outcomes)
        self.failed = sum(o.error is not None for o in outcomes)
        for o in outcomes:
            if o.error is None:
                self.consider(o.metrics.get(self.metric), o.trial_id)

    def finished(self, trial_id: str, result: dict) -> None:
        self.done += 1
        self.consider(result.get(self.metric), trial_id)
        self._finished.append(trial_id)

    def failed_one(self, trial_id: str) -> None:
        self.failed += 1
        self.line(f"{trial_id} FAILED (see its MLflow run)")

    def batch_done(self) -> None:
        if self._finished:
            ids = self._finished
            self.line(f"{ids[0]}{'-' + ids[-1] if len(ids) > 1 else ''} finished")
            self._finished = []

    def heartbeat(self) -> None:
        if self.heartbeat_due() and self.running:
            self.line(f"scoring {self.running} configuration(s)")
