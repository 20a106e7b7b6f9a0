"""Ctrl-C and SIGTERM during a sweep: stop the trials, keep what can be resumed, and say how the sweep ended.

Ray Tune stops gracefully on its own SIGINT handler (trials stopped, experiment state saved), but its run then
returns like a finished one, and SIGTERM it does not handle at all. :class:`StopSignals` takes both signals for
the whole sweep: while Tune runs, the first one is passed on as SIGUSR1 — the stop request Tune always listens to —
and remembered, so the sweep can mark its runs KILLED and exit 130 (SIGINT) or 143 (SIGTERM); outside Tune's loop
(preparing the shared classifier, seed repeats, figures) or on a second signal it interrupts at once. The batched
post-hoc loop (:mod:`orchestrator.sweep.batched`) polls the first signal instead (:meth:`StopSignals.polled`).
"""
from __future__ import annotations

import contextlib
import os
import signal
import threading

EXIT_CODES = {"SIGINT": 130, "SIGTERM": 143}


class StopSignals:
    """Context manager: SIGINT/SIGTERM handlers for a sweep (main thread only; elsewhere it does nothing)."""

    def __init__(self):
        self.received: str | None = None
        self._tune_running = False
        self._polled = False
        self._previous: dict[int, object] = {}
        self._saved_env: str | None = None

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is not threading.main_thread():
            return self
        # Tune's own SIGINT handler would swallow the signal; ours forwards it as SIGUSR1, which Tune also obeys.
        self._saved_env = os.environ.get("TUNE_DISABLE_SIGINT_HANDLER")
        os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def install(self) -> None:
        """Take the signals back (``ray.init`` installs its own SIGTERM handler, which aborts the driver)."""
        if self._previous:
            for sig in (signal.SIGINT, signal.SIGTERM):
                signal.signal(sig, self._handle)

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        if self._previous:
            if self._saved_env is None:
                os.environ.pop("TUNE_DISABLE_SIGINT_HANDLER", None)
            else:
                os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = self._saved_env

    def _handle(self, signum: int, frame) -> None:
        first = self.received is None
        if first:
            self.received = signal.Signals(signum).name
        if first and self._tune_running:
            os.kill(os.getpid(), signal.SIGUSR1)  # Tune: stop every trial, save the experiment state, return
            return
        if first and self._polled:
            return  # the loop that polls ``received`` stops at its next check
        raise KeyboardInterrupt(self.received)

    @contextlib.contextmanager
    def tune_running(self):
        """While Tune's loop runs, a first signal stops it gracefully instead of raising."""
        self._tune_running = True
        try:
            yield
        finally:
            self._tune_running = False

    @contextlib.contextmanager
    def polled(self):
        """While a loop of ours runs that checks ``received`` often, a first signal only sets it."""
        self._polled = True
        try:
            yield
        finally:
            self._polled = False

    @property
    def exit_code(self) -> int:
        return EXIT_CODES.get(self.received or "", 130)
