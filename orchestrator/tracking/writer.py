"""An ordered queue of tracking writes that survives a store going away, optionally on its own thread.

Every write (an MLflow call, a stored Optuna trial) is a closure queued in order. A write whose store does not
answer (:class:`StoreAway`) stays at the head of the queue and is tried again with growing waits (1 s, 2 s, ... at
most 30 s), for at most ``retry_seconds`` (``--store-retry-seconds``, default :data:`RETRY_SECONDS`) from the first
failure; meanwhile trials go on, and :attr:`WriteQueue.on_status` says what the queue waits for (the sweep shows it
in its progress lines). Once that time is up the store counts as away for the rest of the process: the write and
every later one for that store are run again in *spool mode*, where the store's client appends them to the sweep's
spool (:mod:`orchestrator.tracking.spool`) instead of sending them; ``python -m orchestrator sync`` replays them. A
write the store refuses for good (:class:`Refused`: a bad value, a deleted run) is spooled at once, so that nothing
a trial computed is dropped.

Whether a store is away is decided here, and the clients (:mod:`orchestrator.tracking.stores`) ask
:meth:`WriteQueue.spooling`; a client's write outside a queued closure goes through :meth:`WriteQueue.call`, so that
every write of a sweep keeps one order. With :meth:`WriteQueue.start_thread` the writes leave the caller's loop: a
batched post-hoc sweep asks Optuna and dispatches configurations while a thread writes the previous batch's runs
(SQLite commits wait on the disk, not on the interpreter), and a Tune sweep's callbacks never wait for a store.
"""
from __future__ import annotations

import logging
import os
import re
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

#: Default of ``--store-retry-seconds``: how long a store may stay silent before its writes go to the spool.
RETRY_SECONDS = float(os.environ.get("OODSWEEP_STORE_RETRY_SECONDS", "300"))
#: The longest wait between two tries of a store that does not answer.
MAX_BACKOFF = 30.0
#: While a store does not answer, a status line at least this often.
STATUS_SECONDS = 30.0

log = logging.getLogger("oodsweep.tracking")


def set_retry_seconds(seconds: float) -> None:
    """The retry time of every queue this process creates from now on (``--store-retry-seconds``)."""
    global RETRY_SECONDS
    RETRY_SECONDS = float(seconds)


class StoreAway(Exception):
    """A write failed because its store did not answer: kept, tried again, then spooled."""

    def __init__(self, store: str, label: str, cause: BaseException):
        super().__init__(f"{label}: {type(cause).__name__}: {str(cause).splitlines()[0][:200] if str(cause) else ''}")
        self.store, self.label, self.cause = store, label, cause

    @property
    def reason(self) -> str:
        """The failure in a few words ("Connection refused", "timed out"; else the exception's start)."""
        text = str(self.cause)
        errno = re.search(r"\[Errno -?\d+\] ([^'\")\]]+)", text)
        if errno:
            return errno.group(1).strip()
        if "timed out" in text.lower() or "timeout" in text.lower():
            return "timed out"
        first = text.splitlines()[0][:100] if text else ""
        return f"{type(self.cause).__name__}: {first}" if first else type(self.cause).__name__


class Refused(StoreAway):
    """The store answered and refused the write (it would refuse it again): spooled at once."""


class WriteQueue:
    def __init__(self, what: str = "MLflow", retry_seconds: float | None = None,
                 on_status: Callable[[str], None] | None = None):
        self.what = what
        self.retry_seconds = RETRY_SECONDS if retry_seconds is None else float(retry_seconds)
        #: Called with a line whenever the queue starts or stops waiting for a store, and while it waits.
        self.on_status = on_status
        self.ops: deque[Callable[[], object]] = deque()
        #: Stores whose writes go to the spool for the rest of this process (``StoreAway.store`` names).
        self.away: set[str] = set()
        #: Labels of the stores that went away (what the sweep's last line names).
        self.away_labels: list[str] = []
        #: Writes dropped because they raised something that is no store failure (a bug; logged).
        self.dropped = 0
        self._spool_now: set[str] = set()  # stores spooled for the write being run (Refused)
        self._outage: StoreAway | None = None
        self._outage_since = 0.0
        self._next_try = 0.0
        self._tries = 0
        self._last_status = 0.0
        self._lock = threading.Lock()
        self._run_lock = threading.RLock()
        self._local = threading.local()
        self._wake = threading.Event()
        self._done = threading.Condition(self._lock)
        self._finished = 0  # ops that left the queue (written, spooled or dropped)
        self._submitted = 0
        self._thread: threading.Thread | None = None
        self._stopping = False

    # Ray Tune pickles its callbacks (and so this queue) with the experiment state: locks and pending closures
    # stay behind; a restored driver starts with an empty queue.
    def __getstate__(self) -> dict:
        return {"what": self.what, "retry_seconds": self.retry_seconds}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["what"], state.get("retry_seconds"))

    def __len__(self) -> int:
        return len(self.ops)

    # ------------------------------------------------------------------ what the stores' clients ask
    def executing(self) -> bool:
        """True inside a write this queue runs (a client then writes or spools directly)."""
        return getattr(self._local, "executing", False)

    def spooling(self, store: str) -> bool:
        """Whether writes for ``store`` go to the spool now."""
        return store in self.away or store in self._spool_now

    # ------------------------------------------------------------------ submitting
    def submit(self, op: Callable[[], object]) -> None:
        """Queue ``op``; it runs at once (no thread) or on the thread, in order."""
        with self._lock:
            self.ops.append(op)
            self._submitted += 1
        if self._thread is not None:
            self._wake.set()
        else:
            self.flush()

    def call(self, fn: Callable[[], Any]) -> Any:
        """Run ``fn`` as the next write in order and return its result, waiting while its store is away (at most
        ``retry_seconds``, after which it is spooled)."""
        if self.executing():
            return fn()
        box: dict[str, Any] = {}

        def op():
            box["result"] = fn()

        op.box = box  # a write that is no store failure hands its error back to the caller
        with self._lock:
            self.ops.append(op)
            self._submitted += 1
            ticket = self._submitted
        if self._thread is not None:
            self._wake.set()
            with self._done:
                while self._finished < ticket and self._thread is not None:
                    self._done.wait(timeout=1.0)
        while self._finished < ticket:  # no thread (or it stopped meanwhile): write here
            if not self.flush():
                time.sleep(max(0.05, min(1.0, self._next_try - time.monotonic())))
        if "error" in box:
            raise box["error"]
        return box.get("result")

    # ------------------------------------------------------------------ running
    def flush(self) -> bool:
        """Run queued writes in order until one waits for its store; True when the queue is empty."""
        with self._run_lock:
            while True:
                with self._lock:
                    if not self.ops:
                        return True
                    op = self.ops[0]
                if self._outage is not None and time.monotonic() < self._next_try:
                    self._still_waiting()
                    return False
                began = time.monotonic()
                try:
                    self._run(op)
                except Refused as exc:  # the store answered no: this write goes to the spool
                    self._spool_one(op, exc)
                except StoreAway as exc:
                    if self._wait_for(exc, began):
                        return False
                    continue  # its store is away from now on: run the write again, into the spool
                except Exception as exc:  # noqa: BLE001 - not a store failure: a bug; never block the others
                    self.dropped += 1
                    log.error("tracking write dropped", exc_info=exc)
                    if hasattr(op, "box"):
                        op.box["error"] = exc
                    else:
                        print(f"warning: a tracking write failed and was dropped ({type(exc).__name__}: "
                              f"{str(exc)[:200]}); see the sweep's log file", file=sys.stderr, flush=True)
                else:
                    self._back()
                self._pop()

    def _run(self, op) -> None:
        self._local.executing = True
        try:
            op()
        finally:
            self._local.executing = False

    def _pop(self) -> None:
        with self._lock:
            self.ops.popleft()
            self._finished += 1
            self._done.notify_all()

    def _spool_one(self, op, exc: Refused) -> None:
        log.warning("%s refused a write (%s); it is kept in the spool", exc.label, exc)
        self._spool_now.add(exc.store)
        try:
            self._run(op)
        except Exception as again:  # noqa: BLE001 - even the spool failed (disk full): say so, go on
            self.dropped += 1
            log.error("tracking write could not be spooled", exc_info=again)
            print(f"warning: a tracking write could not be written nor spooled ({again})", file=sys.stderr)
        finally:
            self._spool_now.discard(exc.store)

    def _wait_for(self, exc: StoreAway, began: float) -> bool:
        """Note a try (begun at ``began``) that failed; True while the store may still come back (wait), False once
        it counts as away."""
        now = time.monotonic()
        if self._outage is None:  # the outage counts from the first try that failed (a try may take a timeout)
            self._outage, self._outage_since, self._tries = exc, began, 0
            log.info("%s failed", exc.label, exc_info=exc.cause)
            self._status(f"waiting for {exc.label} ({exc.reason}); {len(self.ops)} write(s) held, spooled after "
                         f"{self.retry_seconds:.0f} s")
        self._outage = exc
        waited = now - self._outage_since
        if waited >= self.retry_seconds:
            self.away.add(exc.store)
            if exc.label not in self.away_labels:
                self.away_labels.append(exc.label)
            self._outage = None
            self._status(f"{exc.label} did not answer for {waited:.0f} s: its writes go to the spool from now on")
            return False
        self._tries += 1
        pause = min(MAX_BACKOFF, 2.0 ** (self._tries - 1), max(0.0, self.retry_seconds - waited))
        self._next_try = now + pause
        return True

    def _still_waiting(self) -> None:
        if self._outage is not None and time.monotonic() - self._last_status >= STATUS_SECONDS:
            waited = time.monotonic() - self._outage_since
            self._status(f"still waiting for {self._outage.label}: {waited:.0f} of {self.retry_seconds:.0f} s, "
                         f"{len(self.ops)} write(s) held")

    def _back(self) -> None:
        if self._outage is not None:
            label, waited = self._outage.label, time.monotonic() - self._outage_since
            self._outage = None
            self._status(f"{label} answers again after {waited:.0f} s; the held writes are written")

    def _status(self, line: str) -> None:
        self._last_status = time.monotonic()
        log.info(line)
        if self.on_status is not None:
            try:
                self.on_status(line)
            except Exception:  # noqa: BLE001 - a status line never stops the writes
                log.exception("status line failed")

    # ------------------------------------------------------------------ the thread
    def start_thread(self) -> None:
        """From now on, writes run on a background thread (in submission order)."""
        self._stopping = False
        self._thread = threading.Thread(target=self._drain, name="oodsweep-tracking-writer", daemon=True)
        self._thread.start()

    def _drain(self) -> None:
        while True:
            self._wake.wait(timeout=1.0)
            self._wake.clear()
            self.flush()
            if self._stopping:
                return

    def close(self) -> bool:
        """Stop the thread (if any) and write what is left — waiting for a store that is away at most
        ``retry_seconds``, then spooling; True when nothing had to be dropped."""
        if self._thread is not None:
            self._stopping = True
            self._wake.set()
            self._thread.join()
            self._thread = None
            with self._done:
                self._done.notify_all()
        while not self.flush():
            time.sleep(max(0.05, min(1.0, self._next_try - time.monotonic())))
        return self.dropped == 0
