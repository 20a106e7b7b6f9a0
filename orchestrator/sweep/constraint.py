"""Constrained selection: a search over a method that trains or fine-tunes never picks a broken classifier.

Why: a sweep optimises OOD validation AUROC, and a network can raise that by wrecking its classifier — one seed of
an ASCOOD study chose a configuration with 24.6 % ID accuracy (another trial of the same sweep: 84.5 %) for its
0.84 AUROC (issue 25). Every seed paper claims its gain "without hurting ID accuracy"; this makes the search keep
that promise.

Definition. A configuration is *feasible* when its ID validation accuracy (``val/acc``) is at most ``margin``
percentage points below the reference's: the cross-entropy classifier of the same recipe and seed — the network the
post-hoc methods score and the fine-tuning methods start from, taken from the model cache (trained once on a miss,
:func:`orchestrator.trial.reference_accuracy`; on a one-machine CPU cluster measured on a thread of the driver
while the first trials run, else in a Ray task before them: :class:`Reference`, :func:`measured_here`) — or, with
``--model``, the user's network. ``margin`` is the search
space's ``max_id_acc_drop`` (default 1.0; a study's key or ``sweep --max-id-acc-drop`` overrides it; ``none``
turns the constraint off). The drop is reference − trial, in points, rounded to 1e-9 (accuracies are fractions of a
finite split: 0.97 − 0.96 must be 1.0 point, not 1.0000000000000009).

Where it acts:

* Optuna: every finished trial is given the constraint value c = drop − margin (``Trial.set_constraint("id_acc_drop",
  c)``; c ≤ 0 is feasible) before it is told. Optuna's samplers read it from the trial (TPE puts infeasible trials
  in its "bad" group, ranked by violation; NSGA-II uses constrained domination) and ``Study.best_trial`` skips
  infeasible trials. This is what the samplers' ``constraints_func`` argument computes from a finished trial;
  Optuna 5 deprecates that argument (FutureWarning) for ``set_constraint``, which stores the same system attribute
  (``constraints:id_acc_drop``), also in the sweep's stored study. Tune sweeps do it in
  :class:`orchestrator.sweep.constrained_search.ConstrainedOptunaSearch`, batched sweeps in their loop.
* The sweep's best trial is the best feasible one (:func:`candidates`; for several objectives, from the Pareto front
  of the feasible ones); when none is feasible the sweep says so in one line (its summary, and a warning on stderr)
  and reports the least infeasible (smallest drop; on ties, the best objective).
* MLflow: every finished child run gets tag ``feasible`` (true/false) and metrics ``constraint/id_acc_drop``
  (points), ``constraint/feasible`` (1/0), ``constraint/max_id_acc_drop`` and ``constraint/reference_val_acc``; the
  parent run records the margin (param ``max_id_acc_drop``), the reference's validation and test accuracy and
  cache key, how many trials were feasible, and whether the best is (tag ``best_feasible``). A study's leaderboard
  marks a row whose chosen configuration is infeasible for any seed.
* Post-hoc sweeps (batched or not): every configuration scores the reference network itself, so the drop is 0 by
  construction; they are recorded feasible, nothing is computed.
* ASHA's promotions are not constrained: it compares trials at epochs before the last, where no reference exists
  (the cached reference is the fully trained classifier, and a network halfway through training is below it by
  design). A trial stopped early is judged on its last report when it is told to Optuna.

A resumed sweep keeps the margin its parent run recorded. Searching a recipe knob (lr, epochs...) would give every
trial its own reference, which the sweep cannot train in the middle of its trials: :func:`check` refuses that
combination before anything runs.
"""
from __future__ import annotations

import dataclasses
import math
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from orchestrator.errors import UsageError
from orchestrator.recipe import RECIPE_KNOBS
from orchestrator.search_space import SearchSpaceError, parse_max_id_acc_drop
from orchestrator.tracking.tags import DROP_METRIC, FEASIBLE_METRIC

#: The name of the constraint on Optuna trials (system attribute ``constraints:id_acc_drop``).
OPTUNA_KEY = "id_acc_drop"
#: The metric a configuration is judged on, and the metrics and tag every finished child run gets.
ACCURACY = "val/acc"
MARGIN_METRIC = "constraint/max_id_acc_drop"
REFERENCE_METRIC = "constraint/reference_val_acc"
REFERENCE_TEST_METRIC = "constraint/reference_test_acc"
FEASIBLE_TAG = "feasible"
#: The parent run's param holding the margin ("none" when off), and its tags.
MARGIN_PARAM = "max_id_acc_drop"
REFERENCE_TAG = "constraint.reference_key"
BEST_FEASIBLE_TAG = "best_feasible"


def points(margin: float) -> str:
    """``1 point``, ``2.5 points``."""
    return f"{margin:g} point{'' if margin == 1 else 's'}"


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


class Reference:
    """The reference classifier's accuracies ({key, trained, val_acc, test_acc}:
    :func:`orchestrator.trial.reference_accuracy`), computed once by ``compute()`` on a thread of this driver (in this
    process while Tune starts the trials — a training the cache lacks overlaps theirs —, or waiting for a Ray task:
    :func:`reference_computer`), and waited for where a verdict first needs it.
    ``value``: already known (tests; a searcher restored from Tune's state keeps the value it had). ``on_wait()`` is
    called once, when a verdict has to wait for it (to say so). Pickled (Tune saves its searcher every second) with
    its value only; ``error`` says why there is none."""

    def __init__(self, compute: Callable[[], dict[str, Any]] | None = None, value: dict[str, Any] | None = None,
                 on_wait: Callable[[], None] | None = None):
        self.value, self.error = value, ""
        self._thread, self._on_wait = None, on_wait
        if compute is not None and value is None:
            self._thread = threading.Thread(target=self._run, args=(compute,), name="oodsweep-reference", daemon=True)
            self._thread.start()

    @classmethod
    def known(cls, val_acc: float, test_acc: float | None = None, key: str = "") -> Reference:
        return cls(value={"key": key, "trained": False, "val_acc": float(val_acc),
                          "test_acc": None if test_acc is None else float(test_acc)})

    def _run(self, compute) -> None:
        try:
            self.value = compute()
        except BaseException as exc:  # noqa: BLE001 - said where the verdict needed it (result, the summary)
            self.error = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ''}"

    def result(self) -> dict[str, Any] | None:
        """The accuracies, waiting for them (a signal still reaches the driver between waits); None when they could
        not be computed (:attr:`error`)."""
        if self._thread is not None and self._thread.is_alive() and self._on_wait is not None:
            self._on_wait, on_wait = None, self._on_wait
            on_wait()
        while self._thread is not None and self._thread.is_alive():
            self._thread.join(timeout=0.5)
        if self.value is None and not self.error:
            self.error = "not computed (a sweep restored from a state saved before its reference was measured)"
        return self.value

    def __getstate__(self) -> dict:
        done = self._thread is None or not self._thread.is_alive()
        return {"value": self.value if done else None, "error": self.error if done else ""}

    def __setstate__(self, state: dict) -> None:
        self.value, self.error, self._thread, self._on_wait = state["value"], state["error"], None, None


@dataclass(frozen=True)
class Constraint:
    """The ID-accuracy constraint of one sweep: at most ``margin`` points below ``reference``'s validation accuracy
    (None: each configuration scores the reference network itself — a post-hoc sweep — so its drop is 0)."""

    margin: float
    reference: Reference | None = None

    @property
    def reference_acc(self) -> float | None:
        """The reference's validation accuracy (a fraction; waits for it); None when self-referential or failed."""
        value = self.reference.result() if self.reference is not None else None
        return None if value is None else float(value["val_acc"])

    @property
    def failed(self) -> bool:
        """Whether the reference could not be computed (no verdict is possible then)."""
        return self.reference is not None and self.reference.result() is None

    def drop(self, result: Mapping[str, Any]) -> float | None:
        """Points of ID validation accuracy ``result`` loses against the reference (negative: it gains); None
        when the result reports no accuracy or the reference could not be computed."""
        acc = result.get(ACCURACY)
        if not _number(acc) or self.failed:
            return None
        if self.reference is None:
            return 0.0
        return round(100.0 * (self.reference_acc - float(acc)), 9)

    def value(self, result: Mapping[str, Any]) -> float | None:
        """Optuna's constraint value, drop − margin (≤ 0: feasible); None without a verdict."""
        drop = self.drop(result)
        return None if drop is None else round(drop - self.margin, 9)

    def feasible(self, result: Mapping[str, Any]) -> bool:
        value = self.value(result)
        return value is not None and value <= 0

    def tell(self, trial, result: Mapping[str, Any]) -> None:
        """Set ``result``'s constraint value on Optuna's ``trial`` (a running Trial, before it is told, or a
        FrozenTrial about to be added), as ``constraints:id_acc_drop``; nothing without a verdict."""
        value = self.value(result)
        if value is not None:
            trial.set_constraint(OPTUNA_KEY, value)

    def annotate(self, result: Mapping[str, Any]) -> tuple[dict[str, float], dict[str, str]]:
        """(metrics, tags) a finished trial's MLflow run gets (none without a verdict)."""
        drop = self.drop(result)
        if drop is None:
            return {}, {}
        ok = self.feasible(result)
        reference = self.reference_acc if self.reference is not None else float(result[ACCURACY])
        return ({DROP_METRIC: drop, FEASIBLE_METRIC: float(ok), MARGIN_METRIC: self.margin,
                 REFERENCE_METRIC: reference}, {FEASIBLE_TAG: "true" if ok else "false"})

    def describe(self) -> str:
        """The rule in words, e.g. ``ID validation accuracy at most 1 point below the cross-entropy classifier's
        93.37 %``."""
        if self.reference is None:
            return f"ID validation accuracy at most {points(self.margin)} below the scored classifier's (met by " \
                   f"construction)"
        acc = self.reference_acc
        return (f"ID validation accuracy at most {points(self.margin)} below the cross-entropy classifier's"
                + ("" if acc is None else f" {100 * acc:.2f} %"))


def candidates(constraint: Constraint | None, finished: list) -> tuple[list, bool | None]:
    """The finished results (objects with ``.metrics``) the best is chosen from, and whether they are feasible: the
    feasible ones (True); when there is none, the least infeasible — the smallest constraint value, every result
    that has it (False); without a constraint all of them (None)."""
    if constraint is None or not finished or constraint.failed:
        return finished, None
    feasible = [r for r in finished if constraint.feasible(r.metrics)]
    if feasible:
        return feasible, True
    values = [constraint.value(r.metrics) for r in finished]
    least = min((v for v in values if v is not None), default=None)
    if least is None:
        return finished, False
    return [r for r, v in zip(finished, values, strict=True) if v == least], False


def check_margin(value: Any, where: str) -> float | None:
    """``value`` (a number of points, or none) as a margin; UsageError naming ``where`` when it is not one."""
    try:
        return parse_max_id_acc_drop(value, where)
    except SearchSpaceError as exc:
        raise UsageError(str(exc)) from None


def set_margin(prep, value: Any, where: str) -> None:
    """Override ``prep``'s margin with ``value`` (checked as :func:`check_margin` does)."""
    prep.space.max_id_acc_drop = check_margin(value, where)


def applies(prep) -> bool:
    """Whether ``prep`` has a constraint to compute a reference for: a margin and a method that trains."""
    import methods

    return prep.space.max_id_acc_drop is not None and methods.get(prep.opts.method).trains()


def check(prep) -> None:
    """Before anything runs: UsageError when the constraint cannot be applied — a method that trains, with a margin,
    whose space searches recipe knobs (every trial would need its own reference classifier)."""
    if not applies(prep):
        return
    searched = sorted(k.name for k in prep.space.knobs if k.name in RECIPE_KNOBS)
    if searched:
        raise UsageError(f"{prep.space.path} searches recipe knob(s) {', '.join(searched)}, so every trial would need "
                         f"its own cross-entropy reference for max_id_acc_drop; fix them, or turn the constraint off "
                         f"(max_id_acc_drop: none, or --max-id-acc-drop none)")


def recorded_margin(params: Mapping[str, str]) -> tuple[bool, float | None]:
    """(whether the parent run recorded a margin, that margin) from its params (a resumed sweep keeps it)."""
    if MARGIN_PARAM not in params:
        return False, None
    return True, parse_max_id_acc_drop(params[MARGIN_PARAM], f"param {MARGIN_PARAM}")


def margin_param(margin: float | None) -> dict[str, str]:
    """The parent run's param recording ``margin``."""
    return {MARGIN_PARAM: "none" if margin is None else f"{margin:g}"}


def for_sweep(prep, margin: float | None, compute: Callable[[], dict[str, Any]],
              on_wait: Callable[[], None] | None = None) -> Constraint | None:
    """The sweep's constraint: None without a margin; for a method that trains, against the reference that
    ``compute()`` measures (:func:`reference_computer`; started now, on a thread; ``on_wait``: see
    :class:`Reference`); else self-referential."""
    if margin is None:
        return None
    import methods

    if not methods.get(prep.opts.method).trains():
        return Constraint(margin)
    return Constraint(margin, Reference(compute, on_wait=on_wait))


def measured_here(prep) -> bool:
    """Whether the reference is measured in this process, beside the trials: a cluster of this machine alone (the
    cache is here, nothing to start) and trials without GPUs (this driver is given none: the classifier would train
    on its CPUs). Else a Ray task with a trial's resources measures it before the trials start — started later, it
    could wait for resources the trials hold while the trials wait for the driver."""
    from orchestrator.sweep.batched import prepares_here

    return not prep.resources["gpu"] and prepares_here()


def reference_computer(prep, settings, here: bool) -> Callable[[], dict[str, Any]]:
    """What measures ``prep``'s reference (:func:`orchestrator.trial.reference_accuracy` of its fixed recipe): in this
    process with a trial's CPU share when ``here`` (:func:`measured_here`), else in a Ray task with a trial's
    resources."""
    threads = max(1, int(prep.resources["cpu"]))
    config, bench, settings = dict(prep.fixed), prep.bench, dataclasses.replace(settings, threads=threads)

    def compute() -> dict[str, Any]:
        from orchestrator.trial import reference_accuracy

        if here:
            return reference_accuracy(config, bench, settings)
        import ray

        task = ray.remote(reference_accuracy).options(num_cpus=prep.resources["cpu"], num_gpus=prep.resources["gpu"],
                                                     max_retries=prep.opts.max_failures)
        return ray.get(task.remote(config, bench, settings))

    return compute


def reference_record(constraint: Constraint) -> tuple[dict[str, float], dict[str, str]]:
    """(metrics, tags) of the parent run describing the reference (none when self-referential or failed)."""
    value = constraint.reference.result() if constraint.reference is not None else None
    if value is None:
        return {}, {}
    metrics = {REFERENCE_METRIC: float(value["val_acc"])}
    if value.get("test_acc") is not None:
        metrics[REFERENCE_TEST_METRIC] = float(value["test_acc"])
    return metrics, {REFERENCE_TAG: str(value.get("key", ""))}


def outcome(constraint: Constraint, finished: list, best, feasible: bool | None) -> tuple[str, dict, dict]:
    """(the summary's line — empty for a self-referential constraint —, the parent run's metrics, its tags) once
    ``best`` was chosen from ``finished`` (feasible: what :func:`candidates` said)."""
    if constraint.failed:
        return (f"The ID-accuracy reference could not be measured ({constraint.reference.error}): the best trial was "
                f"chosen without the constraint", {}, {BEST_FEASIBLE_TAG: "unknown"})
    ok = sum(constraint.feasible(r.metrics) for r in finished)
    metrics = {"constraint/feasible_trials": float(ok), "constraint/finished_trials": float(len(finished))}
    tags = {} if feasible is None else {BEST_FEASIBLE_TAG: "true" if feasible else "false"}
    drop = constraint.drop(best.metrics) if best is not None else None
    if drop is not None:
        metrics[f"best/{DROP_METRIC}"] = drop
    if constraint.reference is None or drop is None:
        return "", metrics, tags
    if feasible:
        line = (f"ID-accuracy constraint: {ok} of {len(finished)} finished trial(s) feasible "
                f"({constraint.describe()}); the best loses {drop:.2f} points")
    else:
        line = (f"No trial met the ID-accuracy constraint ({constraint.describe()}): reporting the least infeasible, "
                f"trial {best.metrics.get('trial_id', '?')}, {drop:.2f} points below")
    return line, metrics, tags
