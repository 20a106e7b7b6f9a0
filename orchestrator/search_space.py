"""Search spaces: one YAML per method, turned into an Optuna define-by-run function.

Format (``search_spaces/<method>.yaml``)::

    description: one line
    metric: val/auroc          # what Optuna optimises (chosen on ID-val + OOD-val only)
    mode: max
    budget: {num_samples: 8, max_concurrent: 2}
    space:                     # Optuna distributions
      T:   {type: float, low: 0.1, high: 10, log: true}
      k:   {type: int, low: 1, high: 200, log: true}
      lr:  {type: float, low: 0.01, high: 0.1, step: 0.01}
      mode: {type: categorical, choices: [a, b]}
    fixed: {epochs: 10}        # constants; override the benchmark's training recipe too
    resources: {cpu: 1, gpu: 0}  # per trial; --cpus-per-trial / --gpus-per-trial override (fractions allowed)
    smoke: {num_samples: 2, epochs: 1, teacher: self}  # --smoke-test budget; other keys are fixed values
    max_id_acc_drop: 1.0       # methods that train: feasible = ID val accuracy at most 1.0 points below the
                               # cross-entropy classifier's (default 1.0; none = off; orchestrator.sweep.constraint)

Multi-objective: ``metric: [val/auroc, val/acc]`` with ``mode: [max, max]`` (Optuna's multi-objective
sampler; the sweep reports the Pareto front).

Any declared knob may be searched or fixed; whether it retrains the network is decided by its declaration
(``network=True``, :mod:`orchestrator.knobs`), never by where it appears. :func:`check_against` checks a space
against the method's declared knobs (names, types, domains, scorer names) and :func:`check_objectives` its
objectives against what trials report — both before anything runs.

The bundled files ship inside the installed package (``search_spaces`` is a package of YAML data, read through
:mod:`importlib.resources`); a user's own file is read by path (``--search-space FILE``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from orchestrator.knobs import KnobError, check_searched, check_value
from orchestrator.registry import closest

if TYPE_CHECKING:
    from methods.base import Method

#: The package holding the bundled ``<method>.yaml`` files.
BUNDLED = "search_spaces"
#: What every trial reports for the validation sets (``orchestrator.evaluation.validate``): the only metrics a
#: sweep may optimise. Test-set metrics are reported, never optimised on.
OBJECTIVES = ("val/auroc", "val/aupr_in", "val/aupr_out", "val/fpr95", "val/acc")
_TOP_KEYS = {"description", "metric", "mode", "budget", "space", "fixed", "smoke", "resources", "max_id_acc_drop"}
#: Default of ``max_id_acc_drop``: a configuration of a method that trains or fine-tunes is feasible when its ID
#: validation accuracy is at most this many percentage points below the cross-entropy classifier's of the same recipe
#: and seed (:mod:`orchestrator.sweep.constraint`); ``none`` turns the constraint off.
DEFAULT_MAX_ID_ACC_DROP = 1.0
_RESOURCE_KEYS = {"cpu", "gpu"}
_BUDGET_KEYS = {"num_samples", "max_concurrent"}


class SearchSpaceError(ValueError):
    """A malformed search-space file; the message names the file and the offending entry."""


@dataclass
class Knob:
    name: str
    type: str
    low: float | int | None = None
    high: float | int | None = None
    log: bool = False
    step: float | int | None = None
    choices: list | None = None

    def suggest(self, trial) -> Any:
        if self.type == "float":
            return trial.suggest_float(self.name, self.low, self.high, log=self.log, step=self.step)
        if self.type == "int":
            return trial.suggest_int(self.name, self.low, self.high, log=self.log, step=self.step or 1)
        return trial.suggest_categorical(self.name, self.choices)

    def describe(self) -> str:
        if self.type == "categorical":
            return f"{self.name} ∈ {self.choices}"
        scale = " log" if self.log else (f" step {self.step}" if self.step else "")
        return f"{self.name} ∈ [{self.low}, {self.high}]{scale} ({self.type})"


@dataclass
class SearchSpace:
    method: str
    path: str
    description: str = ""
    metric: str = "val/auroc"
    mode: str = "max"
    num_samples: int = 8
    max_concurrent: int = 2
    knobs: list[Knob] = field(default_factory=list)
    fixed: dict[str, Any] = field(default_factory=dict)
    smoke: dict[str, Any] = field(default_factory=dict)
    resources: dict[str, float] = field(default_factory=dict)
    #: (metric, mode) pairs; one pair = single-objective, with ``metric``/``mode`` its first entry.
    objectives: list[tuple[str, str]] = field(default_factory=list)
    #: Percentage points of ID validation accuracy a configuration may lose against the cross-entropy classifier
    #: and still be chosen (None: no constraint); see :mod:`orchestrator.sweep.constraint`.
    max_id_acc_drop: float | None = DEFAULT_MAX_ID_ACC_DROP

    def __post_init__(self):
        if not self.objectives:
            self.objectives = [(self.metric, self.mode)]
        self.metric, self.mode = self.objectives[0]

    @property
    def multi_objective(self) -> bool:
        return len(self.objectives) > 1

    def define_by_run(self) -> DefineByRun:
        return DefineByRun(self.knobs, self.fixed)

    def as_dict(self) -> dict[str, Any]:
        return {"objectives": [list(o) for o in self.objectives], "num_samples": self.num_samples,
                "max_concurrent": self.max_concurrent, "space": [k.describe() for k in self.knobs],
                "fixed": self.fixed, "max_id_acc_drop": self.max_id_acc_drop}


@dataclass
class DefineByRun:
    """Optuna define-by-run function: suggests the knobs, returns the fixed values as constants.

    A class rather than a closure because Ray Tune pickles the searcher (and this with it) to resume sweeps.
    """

    knobs: list[Knob]
    fixed: dict[str, Any]

    def __call__(self, trial) -> dict[str, Any] | None:
        for knob in self.knobs:
            knob.suggest(trial)
        return dict(self.fixed) or None


def _fail(path, msg):
    raise SearchSpaceError(f"{path}: {msg}")


def _parse_knob(path, name: str, spec: Any) -> Knob:
    if not isinstance(spec, dict) or "type" not in spec:
        _fail(path, f"space.{name} must be a mapping with a 'type' (float, int or categorical), got {spec!r}")
    kind = spec["type"]
    allowed = {"float": {"type", "low", "high", "log", "step"}, "int": {"type", "low", "high", "log", "step"},
               "categorical": {"type", "choices"}}
    if kind not in allowed:
        _fail(path, f"space.{name}.type must be float, int or categorical, got {kind!r}")
    unknown = set(spec) - allowed[kind]
    if unknown:
        _fail(path, f"space.{name} has unknown keys {sorted(unknown)} (allowed: {sorted(allowed[kind])})")
    if kind == "categorical":
        choices = spec.get("choices")
        if not isinstance(choices, list) or not choices:
            _fail(path, f"space.{name}.choices must be a non-empty list")
        return Knob(name, kind, choices=choices)
    for bound in ("low", "high"):
        if not isinstance(spec.get(bound), (int, float)) or isinstance(spec.get(bound), bool):
            _fail(path, f"space.{name}.{bound} must be a number, got {spec.get(bound)!r}")
    low, high, log, step = spec["low"], spec["high"], bool(spec.get("log", False)), spec.get("step")
    if kind == "int" and not (float(low).is_integer() and float(high).is_integer()):
        _fail(path, f"space.{name}: int bounds must be integers, got {low}..{high}")
    if low > high:
        _fail(path, f"space.{name}: low ({low}) is above high ({high})")
    if log and low <= 0:
        _fail(path, f"space.{name}: a log scale needs low > 0, got {low}")
    if log and step is not None:
        _fail(path, f"space.{name}: use either log or step, not both")
    if kind == "int":
        low, high = int(low), int(high)
    return Knob(name, kind, low, high, log, step)


def parse(data: Any, method: str, path: str = "<search space>") -> SearchSpace:
    if not isinstance(data, dict):
        _fail(path, "must be a YAML mapping with metric, mode, budget, space and fixed")
    unknown = set(data) - _TOP_KEYS
    if unknown:
        _fail(path, f"unknown top-level keys {sorted(unknown)} (allowed: {sorted(_TOP_KEYS)})")
    objectives = parse_objectives(data.get("metric", "val/auroc"), data.get("mode", "max"), path)
    resources = data.get("resources") or {}
    if not isinstance(resources, dict) or set(resources) - _RESOURCE_KEYS or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 0 for v in resources.values()):
        _fail(path, f"resources must map cpu/gpu to non-negative numbers, got {resources!r}")
    budget = data.get("budget") or {}
    if not isinstance(budget, dict) or set(budget) - _BUDGET_KEYS:
        _fail(path, f"budget must be a mapping with keys {sorted(_BUDGET_KEYS)}, got {budget!r}")
    for key, value in budget.items():
        if not isinstance(value, int) or value < 1:
            _fail(path, f"budget.{key} must be a positive integer, got {value!r}")
    space = data.get("space") or {}
    fixed = data.get("fixed") or {}
    smoke = data.get("smoke") or {}
    for key, value in (("space", space), ("fixed", fixed), ("smoke", smoke)):
        if not isinstance(value, dict):
            _fail(path, f"{key} must be a mapping, got {value!r}")
    both = set(space) & set(fixed)
    if both:
        _fail(path, f"knobs {sorted(both)} are both searched (space) and fixed; keep one")
    knobs = [_parse_knob(path, name, spec) for name, spec in space.items()]
    return SearchSpace(method=method, path=str(path), description=str(data.get("description", "")),
                       num_samples=budget.get("num_samples", 8), max_concurrent=budget.get("max_concurrent", 2),
                       knobs=knobs, fixed=dict(fixed), smoke=dict(smoke), resources=dict(resources),
                       objectives=objectives,
                       max_id_acc_drop=parse_max_id_acc_drop(data.get("max_id_acc_drop", DEFAULT_MAX_ID_ACC_DROP),
                                                             f"{path}: max_id_acc_drop"))


def parse_max_id_acc_drop(value: Any, where: str) -> float | None:
    """A margin in percentage points (a number >= 0), or None for ``none`` / null (no constraint); SearchSpaceError
    naming ``where`` otherwise. Accepts the strings a command-line flag gives ("1.5", "none")."""
    if value is None or (isinstance(value, str) and value.strip().lower() in ("none", "null", "off")):
        return None
    number = value
    if isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            number = None
    if isinstance(number, bool) or not isinstance(number, (int, float)) or not math.isfinite(number) or number < 0:
        raise SearchSpaceError(f"{where} must be a number of percentage points >= 0 (e.g. 1.0) or none, "
                               f"got {value!r}")
    return float(number)


def parse_objectives(metric: Any, mode: Any, path: str = "<search space>") -> list[tuple[str, str]]:
    """``metric``/``mode`` as a name and max|min, or as equally long lists of them."""
    metrics = metric if isinstance(metric, list) else [metric]
    modes = mode if isinstance(mode, list) else [mode] * len(metrics)
    if not metrics or not all(isinstance(m, str) and m for m in metrics):
        _fail(path, f"metric must be a metric name such as val/auroc (or a list of them), got {metric!r}")
    if len(modes) != len(metrics):
        _fail(path, f"mode needs one entry per metric: {len(metrics)} metrics, {len(modes)} modes")
    for m in modes:
        if m not in ("max", "min"):
            _fail(path, f"mode must be max or min, got {m!r}")
    if len(set(metrics)) != len(metrics):
        _fail(path, f"metric lists {metrics} twice")
    return list(zip(metrics, modes, strict=False))


def bundled(method: str):
    """The bundled YAML of ``method`` (a Traversable inside the installed package)."""
    return resources.files(BUNDLED).joinpath(f"{method}.yaml")


def load(method: str, path: str | Path | None = None) -> SearchSpace:
    """The search space of ``method``: the bundled ``search_spaces/<method>.yaml`` unless ``path`` is given."""
    file = Path(path) if path else bundled(method)
    shown = str(path) if path else f"search_spaces/{method}.yaml"
    if not file.is_file():
        raise SearchSpaceError(f"{shown}: no search-space file for method {method!r}")
    path = shown
    try:
        data = yaml.safe_load(file.read_text())
    except yaml.YAMLError as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise SearchSpaceError(f"{path}: not valid YAML ({first})") from None
    return parse(data, method, str(path))


def available() -> list[str]:
    """Methods with a bundled search space."""
    return sorted(p.name[:-len(".yaml")] for p in resources.files(BUNDLED).iterdir() if p.name.endswith(".yaml"))


def check_objectives(objectives: list[tuple[str, str]], where: str) -> None:
    """Every objective must be a metric that trials report on the validation sets."""
    for metric, _ in objectives:
        if metric not in OBJECTIVES:
            test = " (test-set metrics are reported, never optimised on)" if not metric.startswith("val/") else ""
            _fail(where, f"objective {metric!r} is not reported by any trial{closest(metric, list(OBJECTIVES))}"
                         f"{test}; reported: {', '.join(OBJECTIVES)}")


def check_against(space: SearchSpace, method: Method) -> None:
    """Every searched and fixed knob (the smoke block's too) must be declared by ``method`` — or by the post-hoc
    method its scorer knob names — with a value or range inside the declared domain."""
    scorer_knob = method.scorer_knob()
    scorers = None
    if scorer_knob is not None:
        searched = next((k for k in space.knobs if k.name == scorer_knob.name), None)
        scorers = searched.choices if searched else [
            space.fixed.get(scorer_knob.name, space.smoke.get(scorer_knob.name, scorer_knob.default))]
        for name in scorers:
            try:
                method.check_scorer(name)
            except KnobError as exc:
                _fail(space.path, str(exc))
    declared = method.declared(scorers)
    budget = {"num_samples", "max_concurrent"}
    entries = [("space", k.name) for k in space.knobs] + [("fixed", k) for k in space.fixed] + [
        ("smoke", k) for k in space.smoke if k not in budget]
    for section, name in entries:
        if name not in declared:
            _fail(space.path, f"{section}.{name}: unknown knob {name!r} for method {method.name}"
                              f"{closest(name, list(declared))} (declared: {', '.join(sorted(declared))})")
    try:
        for knob in space.knobs:
            check_searched(declared[knob.name], knob.type, knob.low, knob.high, knob.choices,
                           f"space.{knob.name}")
        for section, values in (("fixed", space.fixed), ("smoke", space.smoke)):
            for name, value in values.items():
                if name not in budget:
                    check_value(declared[name], value, f"{section}.{name}")
    except KnobError as exc:
        _fail(space.path, str(exc))
