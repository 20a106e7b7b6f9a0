"""An ordered queue of tracking writes that survives a tracking store going away, optionally on its own thread.

Every write (an MLflow call, a stored Optuna trial) is a closure queued in order. A write that raises stays at
the head of the queue and is retried later — at the next write, and a few times at the end — so trials go on while
a tracking server is down and their results wait here instead of being lost. With :meth:`WriteQueue.start_thread`
the writes leave the caller's loop: a batched post-hoc sweep asks Optuna and dispatches configurations while a
thread writes the previous batch's runs (SQLite commits wait on the disk, not on the interpreter).
"""
from __future__ import annotations

import sys
import threading
import time
from collections import deque
from collections.abc import Callable

#: Retries at the end (doubling waits from 1 s) before the queue gives up on a store that is gone.
CLOSE_ATTEMPTS = 5


class WriteQueue:
    def __init__(self, what: str = "MLflow"):
        self.what = what
        self.ops: deque[Callable[[], object]] = deque()
        self.warned = False
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._stopping = False

    # Ray Tune pickles its callbacks (and so this queue) with the experiment state: locks and pending closures
    # stay behind; a restored driver starts with an empty queue.
    def __getstate__(self) -> dict:
        return {"what": self.what}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["what"])

    def __len__(self) -> int:
        return len(self.ops)

    def submit(self, op: Callable[[], object]) -> None:
        with self._lock:
            self.ops.append(op)
        if self._thread is not None:
            self._wake.set()
        else:
            self.flush()

    def flush(self) -> bool:
        """Run queued writes in order until one fails; True when the queue is empty."""
        while True:
            with self._lock:
                if not self.ops:
                    return True
                op = self.ops[0]
            try:
                op()
            except Exception as exc:  # noqa: BLE001 - any tracking failure: keep the write, retry later
                if not self.warned:
                    print(f"warning: {self.what} logging failed ({type(exc).__name__}: {str(exc)[:200]}); "
                          f"results are kept and retried", file=sys.stderr, flush=True)
                    self.warned = True
                return False
            with self._lock:
                self.ops.popleft()

    def start_thread(self) -> None:
        """From now on, writes run on a background thread (in submission order)."""
        self._thread = threading.Thread(target=self._drain, name="oodsweep-tracking-writer", daemon=True)
        self._thread.start()

    def _drain(self) -> None:
        while True:
            self._wake.wait(timeout=1.0)
            self._wake.clear()
            if not self.flush():
                time.sleep(1.0)  # the store is away: do not spin
            if self._stopping:
                return

    def close(self) -> bool:
        """Stop the thread (if any) and write what is left, retrying with doubling waits; True when all written."""
        if self._thread is not None:
            self._stopping = True
            self._wake.set()
            self._thread.join()
            self._thread = None
        for attempt in range(CLOSE_ATTEMPTS):
            if self.flush():
                return True
            time.sleep(2 ** attempt)
        return False
