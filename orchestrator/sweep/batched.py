"""Post-hoc sweeps in batches: Optuna asks, Ray actors score, MLflow records — one trial per configuration.

A post-hoc configuration costs milliseconds to score, while a Ray Tune trial costs a trial's bookkeeping on the
driver (and the trial used to reload the network): measured at 8-17x Tune + Optuna's own per-trial floor. When
every searched knob is post-hoc (the network is fixed), the sweep instead keeps up to ``max_concurrent`` Ray
actors (:class:`EvaluatorPool`: the shared network and its outputs are prepared once; the other actors, started
when the work left pays for their start-up, hold them from the object store), and sends each a batch of
configurations that the driver asked Optuna for (``study.ask``; TPE treats the batch's pending trials with its
constant liar). Each configuration is still one Optuna trial (told its objectives) and one MLflow child run,
with the same metrics and matrix artifacts as a Tune trial.
``--batch-size 0`` runs post-hoc sweeps through Tune.

Failure and stopping follow the Tune path: a configuration that raises is a FAILED run and a FAIL Optuna trial;
a lost actor is replaced and its batch resubmitted, up to ``--max-failures`` times; SIGINT/SIGTERM stop the
submission loop, in-flight configurations become KILLED runs and FAIL trials (user attribute ``stopped``), and
``--resume`` continues the stored study with the trials that are left.
"""
from __future__ import annotations

import contextlib
import time
import traceback
from dataclasses import dataclass, field
from typing import Any

#: Configurations per actor call: small enough that TPE sees results often, large enough that a call's round trip
#: (a few ms) is spread. ``--batch-size`` overrides it.
BATCH_SIZE = 4
#: How often the loop looks at the signals while batches run.
POLL_SECONDS = 0.5
#: About what one more evaluator costs to start: a Ray worker, the PyTorch import and the prepared outputs from
#: the object store (1.5-2.5 s measured on 2 cores, ``scripts/posthoc_sweep_speed.py``; an evaluator whose scorer
#: reads outputs only imports no PyTorch and is constructed in ~0.4 s, but such sweeps rarely need a second
#: one: their configurations take milliseconds). The pool grows beyond the
#: preparing evaluator only while the configurations left would keep the present evaluators busy longer than this:
#: a sweep of millisecond configurations (knn, energy) is over before another evaluator could start, and starting
#: it anyway would take CPU from the driver's figures and MLflow writes.
EVALUATOR_START_SECONDS = 2.0
#: Optuna user attribute of a trial that the user stopped (it is told FAIL: Optuna has no "killed" state).
STOPPED_ATTR = "stopped"
#: Optuna user attribute with the trial's id in MLflow (tag oodsweep.trial_id): the stored study numbers trials in
#: the order they ended, which differs from the order they were asked.
TRIAL_ID_ATTR = "trial_id"
#: Optuna user attribute with a finished configuration's metrics and matrix (what a resumed sweep's summary reads).
RESULT_ATTR = "result"


@dataclass
class Outcome:
    """One configuration's end, shaped like a Tune result for the summary (``config``, ``metrics``, ``error``)."""

    trial_id: str
    config: dict[str, Any]
    metrics: dict[str, Any] = field(default_factory=dict)
    error: str | None = None


class Outcomes(list):
    """The finished configurations of a batched sweep, read like Tune's ResultGrid by the summary."""

    def __init__(self, items, experiment_path: str):
        super().__init__(items)
        self.experiment_path = experiment_path

    @property
    def num_errors(self) -> int:
        return sum(o.error is not None for o in self)


class Evaluator:
    """Ray actor: prepares the sweep's shared network and outputs (the pool's first actor) or holds the prepared
    ones (the others), then scores batches of configurations with a :class:`orchestrator.posthoc.PosthocEvaluator`.
    An actor that only holds outputs imports no PyTorch unless its scorer reads the network."""

    def __init__(self, refs: list, settings: dict[str, Any], sweep: str = ""):
        import ray

        from orchestrator.settings import TrialSettings

        # The benchmark comes as a reference inside a list, fetched here: Ray then does not count it as a
        # constructor argument it must keep to restart the actor (the driver keeps it alive).
        (self.bench,) = ray.get(refs)
        self.settings = TrialSettings(**settings)
        self.evaluate = None
        self.sweep = sweep

    def __repr__(self) -> str:  # the Ray dashboard's name for this actor (read once, when it starts)
        from orchestrator.sweep.dashboard import evaluator_repr

        return evaluator_repr(self.settings.method, self.sweep)

    def prepare(self, config: dict[str, Any]) -> dict[str, Any]:
        """Train or load the network of ``config`` and extract its outputs (:func:`orchestrator.trial.shared_outputs`)
        with every CPU of this node — the other evaluators wait for the result — and keep them for scoring."""
        import dataclasses

        import ray

        from orchestrator.posthoc import PosthocEvaluator
        from orchestrator.trial import prepare_shared

        node = ray.get_runtime_context().get_node_id()
        cpus = next((n["Resources"].get("CPU", 0) for n in ray.nodes() if n["NodeID"] == node), 0)
        threads = max(1, int(max(cpus, self.settings.threads)))
        store, shared = prepare_shared(config, self.bench, dataclasses.replace(self.settings, threads=threads))
        self.evaluate = PosthocEvaluator(self.bench, self.settings, shared, store)  # the network stays loaded
        return shared

    def process_id(self) -> int:
        """This actor's process (which sweeps it served: a study's kept pool serves several)."""
        import os

        return os.getpid()

    def retarget(self, settings: dict[str, Any]) -> None:
        """Serve another sweep on the same benchmark (a study's next one): its settings; its prepared outputs come
        next, by :meth:`hold` or :meth:`prepare`."""
        from orchestrator.settings import TrialSettings

        self.settings = TrialSettings(**settings)
        self.evaluate = None

    def hold(self, refs: list) -> None:
        """Score with the outputs another evaluator prepared (``[ObjectRef]``: read from the object store)."""
        import ray

        from orchestrator.posthoc import PosthocEvaluator

        (shared,) = ray.get(refs)
        self.evaluate = PosthocEvaluator(self.bench, self.settings, shared)

    def warm_figures(self) -> None:
        """Import matplotlib at the lowest priority while this actor scores (it draws the score figures)."""
        from orchestrator.tracking.figure_imports import warm_figure_imports

        warm_figure_imports(optuna_plots=False, importances=False, low_priority=True)

    def draw_figures(self, config: dict[str, Any], what: str):
        """The score histograms and ROC curves of the best configuration ``config``
        (:func:`orchestrator.tracking.figures.draw_score_figures`), drawn here, where its scores are."""
        from orchestrator.tracking.figures import SweepFigures, draw_score_figures

        try:
            scores = self.evaluate.scores(config)
        except Exception as exc:  # noqa: BLE001 - the figures are skipped with a note, the sweep goes on
            return SweepFigures(notes=[f"best configuration's scores failed: {type(exc).__name__}: {exc}"])
        return draw_score_figures(scores, what)

    def run(self, configs: list[dict[str, Any]]) -> list[tuple[dict[str, Any] | None, str | None]]:
        out = []
        for config in configs:
            try:
                out.append((self.evaluate(config), None))
            except Exception as exc:  # noqa: BLE001 - one configuration failing is that trial's end, not the batch's
                out.append((None, f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}"))
        return out


class FigureDrawer:
    """Ray actor (no CPU reserved) that draws a batched sweep's heatmap and Optuna plots while the first evaluator
    draws its score figures and the driver writes the last MLflow runs (a batched sweep's driver draws nothing)."""

    def __init__(self, name: str = "FigureDrawer"):
        self.name = name

    def __repr__(self) -> str:  # the Ray dashboard's name for this actor
        return self.name

    def warm(self, searched: int) -> None:
        """Import matplotlib and Optuna's plots (and importances for ``searched`` >= 2 knobs) at the lowest priority
        while the sweep runs."""
        from orchestrator.tracking.figure_imports import warm_figure_imports

        warm_figure_imports(optuna_plots=True, importances=searched >= 2, low_priority=True)

    def draw(self, matrix_json: str, trials: list, directions: list, metric: str):
        """:func:`orchestrator.tracking.figures.draw_result_figures` of the best trial's matrix (JSON) and a study
        of ``trials``."""
        import json

        import optuna

        from orchestrator.metrics import OODMatrix
        from orchestrator.tracking.figures import draw_result_figures

        optuna.logging.set_verbosity(optuna.logging.WARNING)  # no "A new study created in memory" line
        study = optuna.create_study(directions=directions)
        study.add_trials(trials)
        return draw_result_figures(OODMatrix.from_json(json.loads(matrix_json)), study, metric)


class EvaluatorPool:
    """A post-hoc sweep's evaluator actors and the network they share.

    The first actor starts at once (it loads the benchmark, and PyTorch when its scorer reads the network, while
    the driver opens its MLflow runs). On a cluster of several nodes it prepares the network and its outputs inside
    its own process (:meth:`Evaluator.prepare`) with every CPU of its node, and keeps them; when the cluster is this
    machine alone, the driver prepares them meanwhile (:class:`DriverPreparation`) and the first actor holds the
    result. The others start once that is done (:meth:`grow`: they would only compete for CPUs), and only when the
    sweep's pace says they pay for their start-up (:class:`Pace`); they hold the result from the object store while
    the first already scores. A lost actor is replaced by one that holds the same outputs. The first actor also
    draws the sweep's figures once the last configuration is scored (:meth:`draw_figures`).
    """

    def __init__(self, prep):
        import ray

        from orchestrator.sweep.dashboard import task_name

        self._cls = ray.remote(Evaluator)
        self._resources = {"num_cpus": prep.resources["cpu"], "num_gpus": prep.resources["gpu"]}
        self._refs = [ray.put(prep.bench)]
        self._settings = prep.trial_settings().as_dict()
        self._prep = prep
        self._job = ray.get_runtime_context().get_job_id()
        #: Names of the first actor and the drawer when they are kept across Ray jobs (a study lane, _detached).
        self._kept_names: dict[str, str] = {}
        self.actors = [self._start(first=True)]
        #: Draws the heatmap and Optuna's plots while the first actor draws the score figures (None: no figures).
        self.drawer = None
        if prep.opts.figures:  # both import the figures' libraries meanwhile, at the lowest priority
            self.actors[0].warm_figures.remote()
            self.drawer = ray.remote(FigureDrawer).options(num_cpus=0, **self._detached("drawer")).remote(
                task_name(prep.opts.method, prep.name, "figures"))
            self.drawer.warm.remote(len(prep.space.knobs))
        #: ObjectRef of :func:`orchestrator.trial.shared_outputs`' result, once :meth:`prepared` succeeded.
        self.shared = None

    def _start(self, first: bool = False):
        options = {**self._resources, **(self._detached("first") if first else {})}
        return self._cls.options(**options).remote(self._refs, self._settings, self._prep.name)

    def _detached(self, role: str) -> dict[str, Any]:
        """Ray options of the pool's first actor or drawer (``role``): none — unless a study lane keeps pools across
        its sweeps' Ray jobs (:func:`kept_between_sweeps` with a namespace): then detached and named in that
        namespace, so that they outlive the job of the sweep that started them and the next sweep finds them
        (:meth:`_reattach`). The others are never kept: they stop with their sweep."""
        import uuid

        if not _KEPT["namespace"]:
            return {}
        self._kept_names[role] = f"{role}-{uuid.uuid4().hex[:12]}"
        return {"lifetime": "detached", "name": self._kept_names[role], "namespace": _KEPT["namespace"]}

    def _reattach(self) -> bool:
        """Whether the pool's actors are this Ray job's to use: they are in the job that started them; a kept pool
        of a study lane is found again by name in the lane's next job (the benchmark put again: the last job's
        objects are gone)."""
        import ray

        job = ray.get_runtime_context().get_job_id()
        if job == self._job or not self._kept_names:
            return job == self._job
        try:
            self.actors = [ray.get_actor(self._kept_names["first"], namespace=_KEPT["namespace"])]
            if "drawer" in self._kept_names:
                self.drawer = ray.get_actor(self._kept_names["drawer"], namespace=_KEPT["namespace"])
        except ValueError:  # lost meanwhile
            return False
        self._refs, self._job, self.shared = [ray.put(self._prep.bench)], job, None
        return True

    def fits(self, prep) -> bool:
        """Whether this pool can serve sweep ``prep`` too: the same benchmark (object), resources and figure setting,
        in the same Ray session, with its first actor still there."""
        import ray

        return (bool(self.actors) and prep.bench is self._prep.bench and prep.resources == self._prep.resources
                and bool(prep.opts.figures) == (self.drawer is not None) and ray.is_initialized()
                and self._reattach())

    def retarget(self, prep) -> None:
        """Serve sweep ``prep`` (see :func:`pool_for`): the first actor, which has imported everything and holds
        the benchmark, takes the new sweep's settings; the others stop (the new sweep grows the pool again when its
        pace pays for it); the drawer stays. The preparation follows as for a new pool."""
        import ray

        for actor in self.actors[1:]:
            ray.kill(actor)
        del self.actors[1:]
        self._prep, self._settings, self.shared = prep, prep.trial_settings().as_dict(), None
        self.actors[0].retarget.remote(self._settings)  # runs before anything this sweep sends it (actor order)
        if self.drawer is not None:
            self.drawer.warm.remote(len(prep.space.knobs))  # importances, if this sweep's plot needs them

    def submit_prepare(self, config: dict[str, Any], here: bool | None = None):
        """Start the preparation: in this process (``here``; by default when the cluster is this machine alone,
        :func:`prepares_here`) as a :class:`DriverPreparation`, else on the first actor (its ObjectRef).
        :meth:`prepared` waits for it."""
        if prepares_here() if here is None else here:
            return DriverPreparation(self._prep, config)
        return self._prepare(self.actors[0], config)

    def prepared(self, preparing, config: dict[str, Any], retries: int) -> dict[str, Any]:
        """Wait for the preparation ``preparing``; a lost actor is replaced (and its preparation rerun), up to
        ``retries`` times (a failure otherwise fails the sweep here, before any trial)."""
        import ray

        if isinstance(preparing, DriverPreparation):
            done = preparing.result()
            self.shared = ray.put(done)  # one copy in the object store; the evaluators read it zero-copy
            hold = lambda actor: actor.hold.remote([self.shared])  # noqa: E731
            self._on_first(hold(self.actors[0]), hold, retries)  # the first actor, started meanwhile, holds it
            return done
        done, self.shared = self._on_first(preparing, lambda actor: self._prepare(actor, config), retries)
        return done

    def _prepare(self, actor, config: dict[str, Any]):
        """:meth:`Evaluator.prepare` on ``actor``, as a task named after what it prepares."""
        from orchestrator.sweep.dashboard import task_name

        name = task_name(self._prep.opts.method, self._prep.name, "network and outputs")
        return actor.prepare.options(name=name).remote(dict(config))

    def _on_first(self, ref, call, retries: int):
        """(``ray.get(ref)``, ``ref``) of a call ``ref`` on the first actor; when that actor is lost it is replaced
        and ``call(new actor)`` repeated, up to ``retries`` times (the last loss is raised)."""
        import ray

        for attempt in range(retries + 1):
            try:
                return ray.get(ref), ref
            except ray.exceptions.RayActorError:
                if attempt == retries:
                    raise
                ray.kill(self.actors[0])
                self.actors[0] = self._start(first=True)
                ref = call(self.actors[0])

    def _holding(self):
        """A new actor told to hold the prepared outputs: (actor, ObjectRef ready once it holds them)."""
        actor = self._start()
        return actor, actor.hold.remote([self.shared])

    def grow(self, count: int) -> dict:
        """Start actors holding the prepared outputs until there are ``count``; returns {ObjectRef that is ready
        when the actor holds them: actor} (a batch sent earlier would wait for the actor's start-up)."""
        new = {}
        for _ in range(count - len(self.actors)):
            actor, ready = self._holding()
            new[ready] = actor
            self.actors.append(actor)
        return new

    def drop(self, actor) -> None:
        """Stop using ``actor`` (it failed to start)."""
        import ray

        self.actors.remove(actor)
        ray.kill(actor)

    def replace(self, actor):
        """A new actor, holding the prepared outputs, in place of ``actor`` (lost with its worker or node)."""
        import ray

        new, _ = self._holding()
        self.actors[self.actors.index(actor)] = new
        ray.kill(actor)
        return new

    def draw_figures(self, config: dict[str, Any], matrix_json: str, study, metric: str, what: str) -> list:
        """Start drawing the sweep's figures for its best configuration ``config`` (its matrix as JSON) and the
        complete ``study``, in two processes at once: the score figures on the first actor (it holds the outputs
        and the sweep work: nothing is loaded again; it is idle once the last configuration is scored), the
        heatmap and Optuna's plots on the drawer. Returns what :meth:`drawn` waits for."""
        return [self.actors[0].draw_figures.remote(config, what),
                self.drawer.draw.remote(matrix_json, study.trials, study.directions, metric)]

    @staticmethod
    def drawn(refs: list):
        """The :class:`orchestrator.tracking.figures.SweepFigures` of :meth:`draw_figures`, merged; a part whose
        process was lost becomes a note."""
        import ray

        from orchestrator.tracking.figures import SweepFigures

        figures = SweepFigures()
        for ref, what in zip(refs, ("score figures", "heatmap and Optuna plots"), strict=True):
            try:
                figures = figures.merged(ray.get(ref))
            except ray.exceptions.RayError as exc:
                figures.notes.append(f"{what} could not be drawn: {type(exc).__name__}: {str(exc)[:300]}")
        return figures

    def close(self, keep: bool = False) -> None:
        """Stop the actors — or, with ``keep`` inside :func:`kept_between_sweeps` (a study), keep them for the next
        sweep (a sweep that finished: its actors are idle and sound)."""
        import ray

        if keep and _KEPT["on"] and self.actors:
            release_kept()
            if _KEPT["namespace"]:  # only the first actor and the drawer outlive this sweep's Ray job
                for actor in self.actors[1:]:
                    ray.kill(actor)
                del self.actors[1:]
            _KEPT["pool"] = self
            return
        if not self._reattach():  # a kept pool's actors, gone with their node
            self.actors, self.drawer = [], None
        for actor in [*self.actors, *([self.drawer] if self.drawer is not None else [])]:
            ray.kill(actor)
        self.actors, self.drawer = [], None


#: The pool a study keeps between consecutive post-hoc sweeps (:func:`kept_between_sweeps`). Its first actor has
#: imported the scoring and figure libraries and holds the benchmark; a fresh pool's actor and figure drawer spend
#: ~0.5 s each starting and importing, which was ~1 s of the 1.5-2 s a post-hoc sweep on a cached classifier took
#: (measured, fashion-mnist, 2 cores) — the fixed cost a study of many methods on one classifier pays per sweep.
_KEPT: dict[str, Any] = {"on": False, "pool": None, "namespace": None}


@contextlib.contextmanager
def kept_between_sweeps(namespace: str | None = None):
    """Within this block a finished post-hoc sweep's pool is kept (holding its CPU) for the next sweep that
    :func:`pool_for` can serve; a sweep that it cannot serve (another benchmark, a Tune sweep that needs the CPUs)
    releases it first. Everything is stopped when the block ends. With a ``namespace`` (a study's sweep driver
    process, whose sweeps are each a Ray job of their own: :mod:`orchestrator.benchmark.drivers`), the kept actors
    are detached and named in it, and outlive the job of the sweep that started them."""
    _KEPT["on"], _KEPT["namespace"] = True, namespace
    try:
        yield
    finally:
        _KEPT["on"] = False
        release_kept()
        _KEPT["namespace"] = None


def kept_pool() -> EvaluatorPool | None:
    """The pool kept for a study's next sweep, if any."""
    return _KEPT["pool"]


def release_kept() -> None:
    """Stop the kept pool, if any (before work that needs its resources)."""
    pool, _KEPT["pool"] = _KEPT["pool"], None
    if pool is not None:
        pool.close()


def pool_for(prep) -> EvaluatorPool:
    """The evaluator pool of post-hoc sweep ``prep``: the one a study kept from its previous sweep, re-aimed at this
    one when it fits (:meth:`EvaluatorPool.fits`), else a new one."""
    pool, _KEPT["pool"] = _KEPT["pool"], None
    if pool is not None and pool.fits(prep):
        pool.retarget(prep)
        return pool
    if pool is not None:
        pool.close()
    return EvaluatorPool(prep)


def prepares_here() -> bool:
    """Whether the cluster is this machine alone (a laptop or workstation; Ray started by this sweep or joined on
    it). The driver then prepares the shared network and its outputs itself: it has imported PyTorch and holds the
    benchmark already, while an evaluator would first spend ~1.5 s importing PyTorch and then extract ~40 % slower
    than this process in its first seconds (measured on 2 cores; where the work runs changes nothing else on one
    node). On a cluster of several nodes the first evaluator prepares, where Ray placed it (its GPU, its data)."""
    import ray

    alive = [n for n in ray.nodes() if n.get("Alive")]
    return len(alive) == 1 and alive[0]["NodeID"] == ray.get_runtime_context().get_node_id()


class DriverPreparation:
    """:func:`orchestrator.trial.prepare_shared` run in this process with every CPU of the node, on a daemon thread:
    the driver meanwhile opens the sweep's MLflow run and the evaluators start. A daemon, so that Ctrl-C while it
    runs ends the sweep at once (the cache's writes are atomic: nothing half-written is ever read)."""

    def __init__(self, prep, config: dict[str, Any]):
        import dataclasses
        import threading

        from orchestrator.sweep.extraction import largest_node_cpus

        threads = max(1, int(max(prep.resources["cpu"], largest_node_cpus())))
        settings = dataclasses.replace(prep.trial_settings(), threads=threads)
        self._done: dict[str, Any] | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(dict(config), prep.bench, settings),
                                        name="oodsweep-prepare", daemon=True)
        self._thread.start()

    def _run(self, config, bench, settings) -> None:
        from orchestrator.trial import prepare_shared

        try:
            _, self._done = prepare_shared(config, bench, settings)
        except BaseException as exc:  # noqa: BLE001 - raised again in the driver's thread by result()
            self._error = exc

    def result(self) -> dict[str, Any]:
        """The prepared outputs (:func:`orchestrator.trial.prepare_shared`'s second value); raises its error."""
        while self._thread.is_alive():
            self._thread.join(timeout=POLL_SECONDS)  # a signal still interrupts the driver between waits
        if self._error is not None:
            raise self._error
        done, self._done = self._done, None
        return done


def capacity(prep) -> int:
    """How many evaluators the cluster can hold at once (an actor that cannot be placed would hold its batch
    forever; Tune likewise starts only the trials that fit)."""
    import ray

    total = ray.cluster_resources()
    needs = {"CPU": prep.resources["cpu"], "GPU": prep.resources["gpu"]}
    fits = [total.get(name, 0) // need for name, need in needs.items() if need > 0]
    return max(1, int(min(fits)))


class Pace:
    """Evaluator-seconds per configuration, from the batches that came back, to decide whether another evaluator
    would pay for its start-up (:data:`EVALUATOR_START_SECONDS`)."""

    def __init__(self, start_seconds: float = EVALUATOR_START_SECONDS, clock=time.monotonic):
        self.start_seconds, self.clock = start_seconds, clock
        self.busy = 0.0  # evaluator-seconds of the batches that came back
        self.scored = 0  # their configurations
        self.first_sent: float | None = None
        self._sent: dict[int, float] = {}

    def sent(self, batch: list) -> None:
        now = self.clock()
        self._sent[id(batch)] = now
        if self.first_sent is None:
            self.first_sent = now

    def done(self, batch: list) -> None:
        started = self._sent.pop(id(batch), None)
        if started is not None:
            self.busy += self.clock() - started
            self.scored += len(batch)

    def worth_another(self, remaining: int, evaluators: int) -> bool:
        """Whether the ``remaining`` configurations would keep ``evaluators`` busy for longer than one more takes to
        start — before any batch came back: whether the first has run longer than that."""
        if remaining <= 0:
            return False
        if self.scored == 0:
            return self.first_sent is not None and self.clock() - self.first_sent > self.start_seconds
        return remaining * self.busy / self.scored / max(1, evaluators) > self.start_seconds


def trial_id(number: int) -> str:
    return f"{number:05d}"


def _compact(result: dict[str, Any]) -> dict[str, Any]:
    """The numbers and the matrix of a result (no history or bookkeeping strings)."""
    keep = {k: v for k, v in result.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    return {**keep, "matrix_json": result["matrix_json"], "final": True}


def _values(result: dict[str, Any], objectives: list[tuple[str, str]]) -> list[float]:
    return [float(result[metric]) for metric, _ in objectives]


def run(prep, pool: EvaluatorPool, stored, logger, progress, signals, batch_size: int,
        on_scored=None, constraint=None) -> Outcomes:
    """Run the sweep's remaining configurations on ``pool`` (prepared; the caller closes it); returns every
    finished one (earlier runs of a resumed sweep included). Returns early, with ``signals.received`` set, when the
    user stops the sweep. ``on_scored(outcomes, study)``, when given, is called once every configuration is scored,
    before the last MLflow writes are waited for (the sweep's figures start drawing then); ``study`` is the
    in-memory Optuna study, complete. ``constraint``: the sweep's ID-accuracy constraint
    (:class:`orchestrator.sweep.constraint.Constraint`), whose value each finished trial carries into Optuna."""
    import optuna
    import ray

    from orchestrator import search_space
    from orchestrator.sweep.dashboard import batch_task
    from orchestrator.tracking.runs import now_ms

    opts, space = prep.opts, prep.space
    define = search_space.DefineByRun(space.knobs, prep.fixed)
    # TPE works on an in-memory copy of the study (as it does inside Tune's searcher): asking through an RDB
    # storage re-reads every running trial per suggestion. Each ended trial is then written to the stored study
    # (``stored``) on the tracking thread, before its MLflow run; the stored study is behind by what is in flight.
    study = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=opts.seed), directions=stored.directions)
    done = Outcomes([], prep.experiment_path)
    used: list[int] = []
    for t in stored.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,
                                                       optuna.trial.TrialState.FAIL)):
        study.add_trial(t)
        tid, config = t.user_attrs.get(TRIAL_ID_ATTR, trial_id(t.number)), {**prep.fixed, **t.params}
        if t.state == optuna.trial.TrialState.COMPLETE:
            done.append(Outcome(tid, config, {**t.user_attrs.get(RESULT_ATTR, {}), "trial_id": tid}))
        elif "error" in t.user_attrs:  # a FAIL without an error was stopped: the budget still owes it
            done.append(Outcome(tid, config, error=t.user_attrs["error"]))
        if tid.isdigit():
            used.append(int(tid))
    # New trials get ids after every id used so far (stopped trials' runs keep theirs; a driver killed mid-batch
    # lost some asked trials, whose ids no run holds).
    offset = max(0, max(used, default=-1) + 1 - len(study.trials))

    def new_id(number: int) -> str:
        return trial_id(number + offset)

    def keep(trial) -> None:
        """Write the ended ``trial`` (of the working study) to the stored one, on the tracking thread."""
        frozen = study.get_trials(deepcopy=False)[trial.number]
        logger.writes.submit(lambda: stored.add_trial(frozen))

    remaining = prep.num_samples - len(done)

    def send(actor, batch: list):
        """Score ``batch`` on ``actor``: a task the Ray dashboard names by the method, trials and sweep."""
        name = batch_task(opts.method, prep.name, [new_id(trial.number) for trial, _, _ in batch])
        return actor.run.options(name=name).remote([config for _, config, _ in batch])

    # Lost actors are replaced here rather than by Ray's max_restarts, which warns on the terminal about actors
    # whose constructor arguments live in the object store.
    # The preparing actor scores at once; the others start when the work left is worth their start-up
    # (EVALUATOR_START_SECONDS) and join the moment they hold the prepared outputs.
    target = min(prep.max_concurrent, remaining, capacity(prep))
    joining: dict = {}  # ObjectRef ready once the actor holds the outputs -> actor
    idle = list(pool.actors)
    running: dict[Any, tuple[Any, list, int]] = {}  # ObjectRef -> (actor, [(optuna trial, config)], attempt)
    pace = Pace()
    progress.update(done)
    try:
        while remaining > 0 or running:
            if len(pool.actors) < target and pace.worth_another(remaining, len(pool.actors)):
                joining.update(pool.grow(target))
            while idle and remaining > 0 and not signals.received:
                batch = []
                for _ in range(min(batch_size, remaining)):
                    trial = study.ask()
                    trial.set_user_attr(TRIAL_ID_ATTR, new_id(trial.number))
                    config = {**prep.fixed, **(define(trial) or {}), **trial.params}
                    batch.append((trial, config, now_ms()))
                remaining -= len(batch)
                actor = idle.pop()
                running[send(actor, batch)] = (actor, batch, 0)
                pace.sent(batch)
                progress.running = sum(len(b) for _, b, _ in running.values())
            if signals.received:
                break
            ready, _ = ray.wait([*running, *joining], num_returns=1, timeout=POLL_SECONDS)
            if not ready:
                progress.heartbeat()
                continue
            if ready[0] in joining:
                actor = joining.pop(ready[0])
                try:
                    ray.get(ready[0])
                    idle.append(actor)
                except ray.exceptions.RayError:  # it could not start: the others carry on without it
                    pool.drop(actor)
                    target -= 1
                continue
            actor, batch, attempt = running.pop(ready[0])
            pace.done(batch)
            try:
                results = ray.get(ready[0])
            except ray.exceptions.RayActorError as exc:  # the worker or its node was lost: a new actor
                actor = pool.replace(actor)
                if attempt < opts.max_failures:
                    running[send(actor, batch)] = (actor, batch, attempt + 1)
                    continue
                results = [(None, f"{type(exc).__name__}: {exc} (after {attempt + 1} attempts)")] * len(batch)
            idle.append(actor)
            for (trial, config, started), (result, error) in zip(batch, results, strict=True):
                tid = new_id(trial.number)
                if error is None:
                    result = {**result, "trial_id": tid}
                    trial.set_user_attr(RESULT_ATTR, _compact(result))
                    if constraint is not None:
                        constraint.tell(trial, result)
                    study.tell(trial, _values(result, space.objectives))
                    keep(trial)
                    logger.record(tid, config, "FINISHED", result, started_ms=started)
                    done.append(Outcome(tid, config, result))
                    progress.finished(tid, result)
                else:
                    trial.set_user_attr("error", error.splitlines()[0][:1000])
                    study.tell(trial, state=optuna.trial.TrialState.FAIL)
                    keep(trial)
                    logger.record(tid, config, "FAILED", error=error, started_ms=started)
                    done.append(Outcome(tid, config, error=error))
                    progress.failed_one(tid)
            progress.running = sum(len(b) for _, b, _ in running.values())
            progress.batch_done()
        if on_scored is not None and not signals.received:
            on_scored(done, study)
    finally:
        for _, batch, _ in running.values():  # stopped: what was in flight never finished
            for trial, config, started in batch:
                trial.set_user_attr(STOPPED_ATTR, signals.received or "the sweep failed")
                study.tell(trial, state=optuna.trial.TrialState.FAIL)
                keep(trial)
                logger.record(new_id(trial.number), config, "KILLED" if signals.received else "FAILED",
                              started_ms=started)
        logger.close([{"trial_id": o.trial_id, "config": o.config, "result": o.metrics, "error": o.error}
                      for o in done])
    return done
