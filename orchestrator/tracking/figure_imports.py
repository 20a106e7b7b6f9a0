"""Importing the figures' libraries ahead of drawing, on a thread: matplotlib (~0.4 s in a fresh process), Optuna's
plots and, for an importance plot, Optuna's importances (which import scikit-learn, ~1 s). A sweep starts it while
it waits for other work, so that drawing at its end only draws. Apart from :mod:`orchestrator.tracking.figures`,
whose import is the very thing to do ahead."""
from __future__ import annotations

import contextlib
import os
import sys
import threading


def warm_figure_imports(optuna_plots: bool, importances: bool, low_priority: bool) -> threading.Thread:
    """Start importing them on a daemon thread (returned; join it before drawing). ``low_priority``: at the lowest
    CPU priority (Linux: the thread's own), so that the import uses what other work leaves of the CPUs — for a
    process whose other threads do not wait on this one's interpreter lock (a Ray actor between calls)."""

    def load():
        if low_priority and sys.platform.startswith("linux"):  # elsewhere a thread id is no process id
            with contextlib.suppress(OSError):
                os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
        try:
            if importances:
                import optuna.importance  # noqa: F401
            if optuna_plots:
                import optuna.visualization.matplotlib  # noqa: F401

            import orchestrator.tracking.figures  # noqa: F401
        except Exception:  # noqa: BLE001, S110 - drawing imports them again and turns a failure into a note
            pass

    thread = threading.Thread(target=load, name="oodsweep-figure-imports", daemon=True)
    thread.start()
    return thread
