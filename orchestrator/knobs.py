"""Declared knobs: the contract between a method, its search space and the model cache.

A method declares every hyperparameter it reads — name, type and domain, default, and whether it changes the
trained network — beside the scorer or trainer that reads it::

    knobs = (Float("temperature", 1.0, gt=0, help="softmax temperature T"),
             Int("k", 50, ge=1),
             Choice("ood_type", "gradient", ("gradient", "shuffle", "gaussian"), network=True))

That declaration is the single source of truth:

- a search space's ``space:``/``fixed:`` entries are checked against it before anything runs
  (:func:`check_value`, :func:`check_searched`; unknown names get the closest known one);
- :class:`Params`, what trainers and scorers receive, holds exactly the declared knobs (defaults filled in) and
  raises :class:`UndeclaredKnob` when code reads a name it did not declare;
- the model cache keys a trained network on the values of the declared ``network=True`` knobs;
- ``python -m orchestrator list`` shows them (this module imports neither torch nor numpy).
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

KINDS = ("float", "int", "bool", "categorical", "scorer")


class KnobError(ValueError):
    """A knob value or search range that its declaration does not admit; the message names knob and domain."""


class UndeclaredKnob(KeyError):
    """Code read a knob that its method does not declare (a contract bug, not a user error)."""

    def __str__(self) -> str:
        return str(self.args[0])


@dataclass(frozen=True)
class Knob:
    """One declared hyperparameter.

    ``kind``: float, int, bool, categorical (one of ``choices``) or scorer (the name of a post-hoc method, whose own
    knobs then apply too). Bounds ``ge``/``gt``/``le``/``lt`` restrict numbers. ``optional``: ``None`` is a valid
    value (the default then means "derive it", e.g. UM's floor estimated when ``um`` is None). ``network``: the
    value changes the trained network (it is part of the model cache key); every other knob is post-hoc.
    """

    name: str
    kind: str
    default: Any
    network: bool = False
    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None
    choices: tuple | None = None
    optional: bool = False
    help: str = ""

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"knob {self.name!r}: kind must be one of {KINDS}, got {self.kind!r}")
        if self.kind == "categorical" and not self.choices:
            raise ValueError(f"knob {self.name!r}: a categorical knob needs choices")
        if self.default is not None or not self.optional:
            check_value(self, self.default, f"the default of knob {self.name!r}")

    def domain(self) -> str:
        """The admitted values in words, e.g. ``float > 0``, ``int in [1, 2048]``, ``one of [a, b]``."""
        if self.kind == "categorical":
            text = f"one of {list(self.choices)}"
        elif self.kind == "scorer":
            text = "the name of a post-hoc method"
        elif self.kind == "bool":
            text = "true or false"
        else:
            low = f"[{_num(self.ge)}" if self.ge is not None else f"({_num(self.gt)}" if self.gt is not None else None
            high = f"{_num(self.le)}]" if self.le is not None else f"{_num(self.lt)})" if self.lt is not None else None
            if low and high:
                text = f"{self.kind} in {low}, {high}"
            elif low:
                text = f"{self.kind} {'>=' if self.ge is not None else '>'} {low[1:]}"
            elif high:
                text = f"{self.kind} {'<=' if self.le is not None else '<'} {high[:-1]}"
            else:
                text = self.kind
        return f"{text} or null" if self.optional else text

    def describe(self) -> str:
        """``name: domain = default [network]`` — one line of ``list``."""
        flag = ", retrains" if self.network else ""
        return f"{self.name}: {self.domain()} = {self.default!r}{flag}"

    def admits(self, value: Any) -> bool:
        try:
            check_value(self, value)
        except KnobError:
            return False
        return True


def _num(x: float) -> str:
    return f"{x:g}"


# ---------------------------------------------------------------------------------------------- constructors
# Capitalised like the types they declare (Float(...) reads as a declaration); ``help`` is argparse's word.
def Float(name: str, default: float | None, *, ge=None, gt=None, le=None, lt=None, network: bool = False,
          optional: bool = False, help: str = "") -> Knob:
    return Knob(name, "float", default, network, ge, gt, le, lt, None, optional, help)


def Int(name: str, default: int | None, *, ge=None, gt=None, le=None, lt=None, network: bool = False,
        optional: bool = False, help: str = "") -> Knob:
    return Knob(name, "int", default, network, ge, gt, le, lt, None, optional, help)


def Bool(name: str, default: bool, *, network: bool = False, help: str = "") -> Knob:
    return Knob(name, "bool", default, network, help=help)


def Choice(name: str, default: Any, choices: Iterable, *, network: bool = False, optional: bool = False,
           help: str = "") -> Knob:
    return Knob(name, "categorical", default, network, choices=tuple(choices), optional=optional, help=help)


def ScorerChoice(name: str = "scorer", default: str = "msp", *, help: str = "") -> Knob:
    """The post-hoc method that scores a trained network (its knobs become this method's knobs too)."""
    return Knob(name, "scorer", default, False, help=help or "post-hoc method that scores the trained network")


# ---------------------------------------------------------------------------------------------- checking
def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_value(knob: Knob, value: Any, where: str | None = None) -> Any:
    """``value`` as the knob's type (an integral float for an int knob becomes an int); KnobError otherwise."""
    where = where or f"knob {knob.name!r}"
    if value is None and knob.optional:
        return None
    bad = KnobError(f"{where} = {value!r} is not {knob.domain()}")
    if knob.kind == "bool":
        if not isinstance(value, bool):
            raise bad
        return value
    if knob.kind in ("categorical", "scorer"):
        if knob.kind == "categorical" and value not in knob.choices:
            raise bad
        if knob.kind == "scorer" and not isinstance(value, str):
            raise bad
        return value
    if not _is_number(value) or (isinstance(value, float) and not math.isfinite(value)):
        raise bad
    if knob.kind == "int":
        if not (_is_int(value) or float(value).is_integer()):
            raise bad
        value = int(value)
    else:
        value = float(value)
    if ((knob.ge is not None and value < knob.ge) or (knob.gt is not None and value <= knob.gt)
            or (knob.le is not None and value > knob.le) or (knob.lt is not None and value >= knob.lt)):
        raise bad
    return value


def check_searched(knob: Knob, spec_kind: str, low=None, high=None, choices=None, where: str | None = None) -> None:
    """A search range (Optuna distribution) must lie inside the knob's domain and match its type."""
    where = where or f"searched knob {knob.name!r}"
    if spec_kind == "categorical":
        for choice in choices or ():
            check_value(knob, choice, f"{where}: choice")
        return
    if knob.kind in ("categorical", "scorer", "bool"):
        raise KnobError(f"{where} is declared {knob.domain()}; search it as type: categorical with choices")
    if knob.kind == "int" and spec_kind != "int":
        raise KnobError(f"{where} is declared {knob.domain()}; search it with type: int, not {spec_kind}")
    check_value(knob, low, f"{where}: low")
    check_value(knob, high, f"{where}: high")


# ---------------------------------------------------------------------------------------------- values
class Params(Mapping):
    """The knob values a trainer or scorer receives: every declared knob, defaults filled in.

    Reading a name that is not declared raises :class:`UndeclaredKnob` — with or without a fallback
    (``params.get("x", 1)``) — so a method cannot depend on a knob that validation, caching and docs do not know.
    """

    def __init__(self, values: Mapping[str, Any], declared: Mapping[str, Knob], owner: str):
        self._values = dict(values)
        self._declared = dict(declared)
        self._owner = owner

    def _check(self, key: str) -> None:
        if key not in self._declared:
            raise UndeclaredKnob(f"{self._owner} reads knob {key!r}, which it does not declare (declared: "
                                 f"{', '.join(sorted(self._declared))}); add it to the method's knobs")

    def __getitem__(self, key: str) -> Any:
        self._check(key)
        return self._values[key]

    def get(self, key: str, default: Any = None) -> Any:
        self._check(key)
        return self._values.get(key, default)

    def __contains__(self, key: object) -> bool:
        return key in self._values

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def __repr__(self) -> str:
        return f"Params({self._values!r})"

    def __reduce__(self):
        return (Params, (self._values, self._declared, self._owner))

    @property
    def declared(self) -> dict[str, Knob]:
        return dict(self._declared)

    def network_values(self) -> dict[str, Any]:
        """The values of the knobs that change the trained network (what a cached model is keyed on)."""
        return {k: self._values.get(k) for k, knob in sorted(self._declared.items()) if knob.network}
