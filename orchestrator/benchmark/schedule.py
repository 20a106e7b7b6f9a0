"""Which of a study's sweeps run now: as many at once as the cluster's free resources allow, the longest chains of
work first, and never two trainings of the same network.

A study used to run its sweeps one after another, each with at most its own ``max_concurrent`` trials: on a cluster
larger than that the rest idled, every sweep waited while the first post-hoc sweep of a seed trained its
classifier, and every sweep's tail (ASHA's last survivors, the last batch) idled the cluster again. Here each
sweep is a :class:`Work` — one trial's resources, how many trials it runs at once, the shared networks it reads
(model-cache keys), an estimate of its work — and :class:`Scheduler` decides, every poll, which to start:

- **Room.** A sweep starts when one of its trials fits either beside what the running sweeps may claim at most
  (their width × their trial's resources), or in resources that the cluster has left idle for
  :data:`IDLE_POLLS` polls in a row — a sweep's tail, a post-hoc sweep using fewer evaluators than it may — minus
  all that the sweeps started in the last :data:`CLAIM_SECONDS` may claim. ``cap`` (``--max-concurrent-sweeps``)
  bounds the count.
- **Networks.** A sweep that reads a network which is not cached yet and which a running sweep is training waits
  (:meth:`Scheduler.waiting` says for what) while other sweeps run; the first sweep started that needs it trains
  it (and the model cache's per-key lock would still keep a second trainer waiting).
- **Order.** Among the sweeps that may start, the one heading the longest chain of work goes first (highest level
  first list scheduling): its own shortest run (its work over the trials it runs at once), plus — when it will
  train a network others wait for — that training and the longest of those others. Short sweeps then fill the
  gaps at the end instead of a long one starting last.

:func:`run` is the loop around it: it starts sweeps through a ``launch`` callback (driver processes in a study,
:mod:`orchestrator.benchmark.drivers`; anything with the same handle in ``scripts/study_concurrency_speed.py``),
collects their ends, passes SIGINT/SIGTERM on to every running sweep, and prints what runs and what waits.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

#: Seconds between two looks at the sweeps and the cluster.
POLL_SECONDS = 0.5
#: Polls in a row that resources must stay idle before a sweep is started into them (a trial ending and the next
#: one starting leave them free for a moment).
IDLE_POLLS = 2
#: Seconds during which a started sweep counts as claiming all it may (its width × its trial's resources) from the
#: idle resources, although Ray does not show it yet: its driver connects (forked: milliseconds; Ray: ~0.05 s),
#: opens its MLflow run and submits its trials or first evaluator within about this time on a quiet machine. Longer
#: only delays the next sweep; shorter (or a busy machine) may start one sweep more than fits, whose trials then wait
#: in Ray's queue for the next free resources.
CLAIM_SECONDS = 3.0
#: A line saying what runs and what waits at least this often.
HEARTBEAT_SECONDS = 30.0


@dataclass
class Work:
    """One sweep as the scheduler sees it."""

    name: str
    #: One trial's resources in Ray's names, e.g. {"CPU": 1.0, "GPU": 0.5}.
    demand: dict[str, float]
    #: Trials at once (the sweep's max_concurrent, at most its trials).
    width: int = 1
    #: Model-cache keys of the networks it reads that other sweeps of the study read too.
    needs: frozenset[str] = frozenset()
    #: Its work, in any unit shared by the study (epochs × trials): only the order depends on it.
    cost: float = 0.0
    #: The work of training each network of ``needs`` (same unit), for the order.
    needs_cost: dict[str, float] = field(default_factory=dict)
    #: What to call each network of ``needs`` in a line ("the classifier of digits, seed 0").
    needs_label: dict[str, str] = field(default_factory=dict)


class Scheduler:
    """The policy (see the module's docstring); it calls nothing outside itself but ``cached``."""

    def __init__(self, works: list[Work], capacity: dict[str, float], cached: Callable[[str], bool],
                 cap: int | None = None, clock: Callable[[], float] = time.monotonic):
        self.queue = list(works)
        self.capacity = dict(capacity)
        self.cached, self.cap, self.clock = cached, cap, clock
        self.running: dict[str, Work] = {}
        self.started_at: dict[str, float] = {}
        #: network key -> the running sweep training it
        self.producer: dict[str, str] = {}
        self._idle: dict[str, int] = {}

    def admit(self, available: dict[str, float], capacity: dict[str, float] | None = None) -> list[Work]:
        """The sweeps to start now, given the cluster's ``available`` resources and its ``capacity`` when that
        changed (an autoscaler added a node); they count as started."""
        if capacity is not None:
            self.capacity = dict(capacity)
        self._count_idle(available)
        out = []
        for work in sorted((w for w in self.queue if not self._blocked(w)), key=self._priority, reverse=True):
            if self.cap is not None and len(self.running) >= self.cap:
                break
            if not self._blocked(work) and self._fits(work, available):  # blocked by one started just now?
                self._start(work)
                out.append(work)
        return out

    def finished(self, name: str) -> None:
        """Sweep ``name`` ended (however): its resources and the networks it was training are released."""
        self.running.pop(name, None)
        self.started_at.pop(name, None)
        for key in [k for k, who in self.producer.items() if who == name]:
            del self.producer[key]  # cached by now, or a waiting sweep trains it next

    def waiting(self) -> list[tuple[Work, str, str]]:
        """(sweep, network key, the sweep training it) for every queued sweep that waits for a network."""
        out = []
        for work in self.queue:
            key = next((k for k in sorted(work.needs) if k in self.producer and not self.cached(k)), None)
            if key is not None:
                out.append((work, key, self.producer[key]))
        return out

    # ---- the policy
    def _blocked(self, work: Work) -> bool:
        return any(k in self.producer and not self.cached(k) for k in work.needs)

    def _priority(self, work: Work) -> tuple[float, int]:
        """How long the chain of work this sweep heads takes at least (ties: the study's order, first first): its
        work over its width — its trials run that many at once — and, when it will train a network other sweeps
        wait for, that training and the longest of those sweeps."""
        chain = _duration(work)
        for key in work.needs:
            if key in self.producer or self.cached(key):
                continue
            others = [_duration(w) for w in self.queue if w is not work and key in w.needs]
            chain += work.needs_cost.get(key, 0.0) + max(others, default=0.0)
        return chain, -self.queue.index(work)

    def _count_idle(self, available: dict[str, float]) -> None:
        for name in set(self.capacity) | set(available):
            self._idle[name] = self._idle.get(name, 0) + 1 if available.get(name, 0.0) > 0 else 0

    def _fits(self, work: Work, available: dict[str, float]) -> bool:
        now = self.clock()
        for name, need in work.demand.items():
            if need <= 0:
                continue
            committed = sum(w.width * w.demand.get(name, 0.0) for w in self.running.values())
            claiming = sum(w.width * w.demand.get(name, 0.0) for n, w in self.running.items()
                           if now - self.started_at[n] < CLAIM_SECONDS)
            beside = self.capacity.get(name, 0.0) - committed >= need
            idle = (self._idle.get(name, 0) >= IDLE_POLLS
                    and available.get(name, 0.0) - claiming >= need)
            if not (beside or idle):
                return False
        return True

    def _start(self, work: Work) -> None:
        self.queue.remove(work)
        self.running[work.name] = work
        self.started_at[work.name] = self.clock()
        for key in work.needs:
            if not self.cached(key) and key not in self.producer:
                self.producer[key] = work.name


def _duration(work: Work) -> float:
    """A sweep's shortest run, in the unit of its cost: its trials ``width`` at once."""
    return work.cost / max(1, work.width)


class Handle(Protocol):
    """A started sweep, as :func:`run` drives it."""

    def poll(self) -> Any | None:
        """Its outcome once it ended (anything but None), else None."""

    def signal(self, signum: int) -> None:
        """Pass a stop signal on to it."""


def run(scheduler: Scheduler, launch: Callable[[Work], Handle],
        resources: Callable[[], tuple[dict[str, float], dict[str, float]]], ended: Callable[[Work, Any], None],
        say: Callable[[str], None], signals=None, poll_seconds: float = POLL_SECONDS,
        heartbeat_seconds: float = HEARTBEAT_SECONDS, wait: Callable[[float], Any] | None = None) -> None:
    """Start sweeps while the scheduler admits them, until every one ended; ``ended(work, outcome)`` for each.
    ``resources()``: the cluster's (available, total) resources (``ray.available_resources()``,
    ``ray.cluster_resources()``); ``wait(seconds)``: returns once a sweep may have ended, or after ``seconds``
    (default: sleeps them) — a study of one-second sweeps would otherwise lose up to a poll on each.

    ``signals`` (an :class:`orchestrator.sweep.interrupt.StopSignals` in its polled mode): once a stop signal came,
    nothing more starts and each running sweep gets that signal once; a second signal (KeyboardInterrupt here) is
    passed on too, and the loop still waits for every running sweep to end (each then stops at once).
    """
    import signal as signal_module

    handles: dict[str, tuple[Work, Handle]] = {}
    forwarded = 0
    said: dict[str, str] = {}  # the waiting lines printed so far
    last_line = time.monotonic()
    while scheduler.queue or handles:
        try:
            for name, (work, handle) in list(handles.items()):
                outcome = handle.poll()
                if outcome is not None:
                    del handles[name]
                    scheduler.finished(name)
                    ended(work, outcome)
            received = getattr(signals, "received", None)
            if received:
                if not forwarded:
                    for _, handle in handles.values():
                        handle.signal(getattr(signal_module, received))
                    forwarded = 1
                if not handles:
                    return
            else:
                for work in scheduler.admit(*resources()):
                    handles[work.name] = (work, launch(work))
                    last_line = time.monotonic()
                for line in _waiting_lines(scheduler.waiting()):
                    if line not in said:
                        said[line] = ""
                        say(line)
            if time.monotonic() - last_line >= heartbeat_seconds and handles:
                waits = len(scheduler.waiting())
                say(f"running: {', '.join(handles)}" + (f"; {waits} waiting for a network" if waits else "")
                    + (f"; {len(scheduler.queue) - waits} queued" if len(scheduler.queue) > waits else ""))
                last_line = time.monotonic()
            (wait or time.sleep)(poll_seconds)
        except KeyboardInterrupt:  # a second signal: passed on, each sweep then stops at once
            received = getattr(signals, "received", None) or "SIGINT"
            for _, handle in handles.values():
                handle.signal(getattr(signal_module, received))
            forwarded = 2
            signals = _Stopped(received)
        except BaseException:  # this loop failed: the running sweeps stop (KILLED, resumable), then it raises
            for _, handle in handles.values():
                handle.signal(signal_module.SIGTERM)
            raise


def _waiting_lines(waiting: list[tuple[Work, str, str]]) -> list[str]:
    """One line per network that sweeps wait for: what it is, who trains it, who waits."""
    by_key: dict[tuple[str, str], list[Work]] = {}
    for work, key, producer in waiting:
        by_key.setdefault((key, producer), []).append(work)
    return [f"waiting for {works[0].needs_label.get(key, 'network ' + key)} (network {key}), which {producer} is "
            f"training: {', '.join(w.name for w in works)}" for (key, producer), works in by_key.items()]


@dataclass
class _Stopped:
    """What :func:`run` reads once a second signal came (it has been passed on)."""

    received: str
