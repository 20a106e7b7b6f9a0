"""Sweep driver processes ("lanes"): a study runs its sweeps in driver processes of its own, forked from a server
that has imported what a sweep needs once; each lane runs one sweep at a time, each sweep as a Ray job of its own.

Why processes (docs/study_concurrency.md): a sweep then stays exactly the sweep it is when run alone — its own main
thread (Ctrl-C/SIGTERM handling and Ray Tune's graceful stop work in a main thread only), its own log file, its own
Ray job (whose name and metadata the dashboard shows: :mod:`orchestrator.sweep.dashboard`), its own Optuna study,
MLflow run and resume state — and the drivers' own work (Optuna's sampler, MLflow writes, figures) runs in parallel
instead of taking turns on one interpreter lock. Why a fork server (:mod:`multiprocessing`'s ``forkserver``): a
fresh interpreter spends ~5 s of CPU importing PyTorch, Ray, MLflow and Optuna; forked from a server that imported
them once (:data:`PRELOAD`; no thread, no Ray), a lane starts in milliseconds and joins the study's cluster
(``RAY_ADDRESS``). Why lanes rather than a process per sweep: a post-hoc sweep on a cached classifier is ~1 s of
work, and a process of its own would add its own MLflow and Optuna stores, Ray connection and, above all, its own
evaluator and figure-drawer processes (measured: the post-hoc zoo smoke study took 62 s instead of 32 s); a lane
keeps them between consecutive post-hoc sweeps (:func:`orchestrator.sweep.batched.kept_between_sweeps`, the pool
detached so that it outlives each sweep's Ray job).

A lane runs in a process group of its own, so a terminal's Ctrl-C reaches the study only, which passes exactly one
signal to each running sweep (:func:`orchestrator.benchmark.schedule.run`; a second one stops a sweep at once, as it
does for a sweep run alone). Its stdout lines carry the label of the sweep it runs, so that the study's output shows
which sweep says what; its stderr is left alone (a sweep keeps it quiet).
"""
from __future__ import annotations

import contextlib
import io
import os
import sys
import time
from collections.abc import Callable
from typing import Any

#: Modules the fork server imports once for every sweep driver it forks (a missing one is skipped): ~6.5 s of CPU
#: on 2 cores, of which a sweep driver would otherwise spend ~2.5 s (MLflow's SQL store 0.7 s, the figures' libraries
#: 0.5 s, Optuna's importances 1 s) before its first trial. Not Ray (0.15 s; Ray Tune 0.5 s, which only Tune sweeps
#: import): Ray reads its settings when it is imported — the cluster's authentication mode among them, which the
#: study's own ``ray.init`` decides after the server started — so each driver imports it itself, with the study's
#: ``RAY_*`` variables. None of these imports Ray.
PRELOAD = ("torch", "mlflow", "optuna", "orchestrator.sweep.runner", "orchestrator.trial", "orchestrator.posthoc",
           "orchestrator.benchmark.run", "mlflow.store.tracking.sqlalchemy_store", "orchestrator.tracking.figures",
           "optuna.visualization.matplotlib", "optuna.importance")


def server(preload: tuple[str, ...] = PRELOAD):
    """The multiprocessing context whose processes are forked from a server that imported ``preload``; the server
    starts now and imports in the background (the study meanwhile starts Ray)."""
    import multiprocessing
    from multiprocessing import forkserver

    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(list(preload))
    forkserver.ensure_running()
    return context


class Prefixed(io.TextIOBase):
    """A text stream that writes each line to ``stream`` behind ``prefix`` (a sweep's label in a study's output)."""

    def __init__(self, stream, prefix: str):
        super().__init__()
        self._stream, self.prefix, self._partial = stream, prefix, ""

    def write(self, text: str) -> int:
        lines = (self._partial + text).split("\n")
        self._partial = lines.pop()
        for line in lines:
            self._stream.write(f"{self.prefix}{line}\n")
        return len(text)

    def flush(self) -> None:
        self._stream.flush()

    def fileno(self) -> int:
        return self._stream.fileno()

    def isatty(self) -> bool:
        return self._stream.isatty()

    def writable(self) -> bool:
        return True

    @property
    def encoding(self) -> str:
        return getattr(self._stream, "encoding", "utf-8")


#: What a lane is told to do between sweeps: let its kept evaluator pool go (another lane's sweep needs the CPUs).
RELEASE = "release"


def _lane(conn, env: dict[str, str], namespace: str) -> None:
    """A sweep driver process: runs the sweeps the study sends it (``(target, args, label)``: ``target(*args)``
    returns (exit code, outcome), the outcome goes back), one after another, each as a Ray job of its own; consecutive
    post-hoc sweeps on one benchmark share its kept evaluator pool (detached actors in ``namespace``); ``None`` or a
    closed pipe ends it."""
    import signal

    os.setpgid(0, 0)  # a terminal's Ctrl-C reaches the study only, which passes one signal on to each sweep
    out = Prefixed(sys.stdout, "")
    sys.stdout = out
    os.environ.update(env)

    def idle_stop(signum, frame):  # between sweeps a signal ends the lane (during one, the sweep takes it)
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, idle_stop)
    from orchestrator.sweep.batched import kept_between_sweeps, release_kept

    hooks = _post_init_hooks()
    base = len(hooks)
    try:
        with kept_between_sweeps(namespace):
            while True:
                message = conn.recv()
                if message is None:
                    break
                if message == RELEASE:
                    release_kept()
                    continue
                target, args, label = message
                out.prefix = f"[{label}] "
                _new_job(hooks, base)
                try:
                    code, outcome = target(*args)
                except Exception as exc:  # noqa: BLE001 - the sweep's end, told to the study; the lane goes on
                    import traceback

                    traceback.print_exc()
                    outcome = {"exitcode": 1, "line": f"its driver failed: {type(exc).__name__}: {exc}"}
                out.flush()
                conn.send(outcome)
    except (EOFError, KeyboardInterrupt):  # the study is gone, or stopped this idle lane
        pass
    finally:
        conn.close()
        with contextlib.suppress(Exception):  # the last job ends now, not when Ray notices the process is gone
            import ray

            if ray.is_initialized():
                ray.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
    # The sweeps have said all they had to (their outcomes are sent, their writers are done). What the interpreter's
    # teardown might still print is not for the user: a stopped sweep's TensorBoard writer thread (Tune's) sometimes
    # polls a queue that multiprocessing's exit has just closed, and prints a traceback. (Leaving with os._exit
    # instead would skip that exit, and the semaphores of those queues would be reported as leaked.)
    os.dup2(os.open(os.devnull, os.O_WRONLY), 2)
    sys.exit(0)


def _post_init_hooks() -> list:
    """Ray's list of callables run at every ``ray.init`` of this process. ``tune.with_parameters`` adds one per Tune
    sweep, which puts that sweep's parameters (its benchmark) into the object store again at each later
    ``ray.init``: a lane drops those of its earlier sweeps (Ray exposes no public way; ray is pinned)."""
    import ray._private.worker

    return ray._private.worker._post_init_hooks


def _new_job(hooks: list, base: int) -> None:
    """Before a lane's next sweep: the last sweep's Ray job ends (the next one connects with its own metadata:
    :func:`orchestrator.sweep.runner.init_ray`), and the Tune hooks it left are dropped."""
    import ray

    if ray.is_initialized():
        ray.shutdown()
    del hooks[base:]


class Lane:
    """A sweep driver process of a study (:func:`_lane`), on the parent's side."""

    def __init__(self, context, env: dict[str, str], namespace: str):
        self._conn, child = context.Pipe(duplex=True)
        self.process = context.Process(target=_lane, args=(child, env, namespace), name="oodsweep sweep driver")
        self.process.start()
        child.close()
        #: The sweep it runs (None: idle), and what its kept evaluator pool holds ({} when it keeps none).
        self.sweep: str | None = None
        self.holds: dict[str, float] = {}
        #: What its kept pool can serve (:class:`Lanes`' ``keeps`` of the sweep that left it), and what the pool of
        #: the sweep it runs could.
        self.kept_for: Any = None
        self.keeps: Any = None

    def run(self, target: Callable[..., tuple[int, Any]], args: tuple, label: str) -> LaneSweep:
        self._conn.send((target, args, label))
        self.sweep = label
        return LaneSweep(self)

    def release(self) -> None:
        """Let its kept pool go (it is idle)."""
        if self.holds and self.process.is_alive():
            self._conn.send(RELEASE)
        self.holds, self.kept_for = {}, None

    def outcome(self) -> Any | None:
        """What its sweep sent once it ended, ``{"exitcode": N}`` when the process died meanwhile, else None."""
        alive = self.process.is_alive()  # looked at first: what it sent before it died is in the pipe by then
        with contextlib.suppress(EOFError, OSError):
            if self._conn.poll():
                self.sweep = None
                return self._conn.recv()
        if alive:
            return None
        self.sweep = None
        return {"exitcode": self.process.exitcode}

    def signal(self, signum: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            if self.process.is_alive():
                os.kill(self.process.pid, signum)

    def waitables(self) -> list:
        """What :func:`multiprocessing.connection.wait` may wait on: its outcome arriving, or the process ending."""
        return [self._conn, self.process.sentinel]

    def end(self) -> None:
        """Tell it to end (it stops its kept pool first); :meth:`close` waits for it."""
        with contextlib.suppress(OSError, BrokenPipeError):
            if self.process.is_alive():
                self._conn.send(None)

    def close(self, timeout: float = 60.0) -> None:
        """End it (its kept pool stopped) and wait for it."""
        self.end()
        self.process.join(timeout)
        if self.process.is_alive():
            self.signal(15)
            self.process.join(timeout)
        self._conn.close()


class LaneSweep:
    """One sweep running in a :class:`Lane` (:class:`orchestrator.benchmark.schedule.Handle`)."""

    def __init__(self, lane: Lane):
        self.lane = lane

    def poll(self) -> Any | None:
        return self.lane.outcome()

    def signal(self, signum: int) -> None:
        self.lane.signal(signum)


class Lanes:
    """A study's lanes. A sweep goes to an idle lane whose kept evaluator pool can serve it (``keeps``: what a
    sweep's pool could serve next — its benchmark, resources, figures — or None), else to an idle lane keeping none,
    else to any idle one (the sweep stops the pool it cannot use), else to a new lane. When a sweep starts, the other
    idle lanes let their pools go: the sweep may need those CPUs. Until then, what idle lanes' pools hold counts as
    free for the scheduler (:meth:`free`): it is given up as soon as a sweep needs it."""

    def __init__(self, context, address: str, namespace: str):
        self._context, self.namespace = context, namespace
        self._env = {k: v for k, v in os.environ.items() if k.startswith("RAY_")} | {"RAY_ADDRESS": address}
        self.lanes: list[Lane] = []

    def start(self, target: Callable[..., tuple[int, Any]], args: tuple, label: str, keeps: Any = None) -> LaneSweep:
        idle = [lane for lane in self.lanes if lane.sweep is None and lane.process.is_alive()]
        lane = (next((lane for lane in idle if keeps is not None and lane.kept_for == keeps), None)
                or next((lane for lane in idle if not lane.holds), None) or (idle[0] if idle else None))
        if lane is None:
            lane = Lane(self._context, self._env, self.namespace)
            self.lanes.append(lane)
        for other in idle:
            if other is not lane:
                other.release()
        lane.holds, lane.kept_for, lane.keeps = {}, None, keeps  # its pool serves this sweep, or the sweep stops it
        return lane.run(target, args, label)

    @staticmethod
    def ended(handle: LaneSweep, kept: dict[str, float]) -> None:
        """``handle``'s sweep ended; ``kept``: the resources of the evaluator pool its lane keeps now ({}: none)."""
        lane = handle.lane
        lane.holds, lane.kept_for = (dict(kept), lane.keeps) if kept and lane.keeps is not None else ({}, None)

    def wait(self, seconds: float) -> None:
        """Return once a running sweep sent its outcome (or its lane died), or after ``seconds``."""
        from multiprocessing.connection import wait

        busy = [lane for lane in self.lanes if lane.sweep is not None]
        if busy:
            wait([handle for lane in busy for handle in lane.waitables()], seconds)
        else:
            time.sleep(seconds)

    def free(self, available: dict[str, float]) -> dict[str, float]:
        """The cluster's ``available`` resources plus those that idle lanes' kept pools hold."""
        out = dict(available)
        for lane in self.lanes:
            if lane.sweep is None:
                for name, amount in lane.holds.items():
                    out[name] = out.get(name, 0.0) + amount
        return out

    def close(self) -> None:
        """End every lane (each stops its kept pool; all at once), then whatever a lane that died left in the
        namespace."""
        for lane in self.lanes:
            lane.end()
        for lane in self.lanes:
            lane.close()
        with contextlib.suppress(Exception):
            import ray

            for actor in ray.util.list_named_actors(all_namespaces=True):
                if actor["namespace"] == self.namespace:
                    ray.kill(ray.get_actor(actor["name"], namespace=self.namespace))
