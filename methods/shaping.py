"""Shared parts of the feature-shaping methods (ReAct, ASH, SCALE, DICE, VRA): shape the penultimate features h (or
the final layer's weight), then score the shaped logits through the classifier's head (:class:`methods.base.Head`).

- Logit scores of the shaped logits z' (knob ``score``, :data:`SCORE_KNOB`): ``energy`` = logsumexp(z'), every one
  of the five papers' default; ``msp`` = max softmax(z'); ``maxlogit`` = max z'. Higher = more in-distribution.
- Percentiles are NumPy's ``np.percentile`` with its default linear interpolation (Hyndman & Fan's type 7, as
  OpenOOD v1.5 and the papers' code): the p-th percentile of n sorted values v is v[i] + g·(v[i+1] − v[i]) with
  i + g = p/100·(n − 1). p = 0 is the minimum, p = 100 the maximum.
- ASH and SCALE keep, per sample, the k = D − round(D·p/100) largest of the D units (``round`` is NumPy's, half to
  even), as the authors' and OpenOOD's code (``torch.topk``), not "the units above the p-th percentile" (which
  differs where values tie or p/100·(D − 1) is not whole). Among units tied at the k-th largest value the lowest
  indices are kept (``torch.topk`` leaves that order unspecified); sums of the kept units do not depend on it.
- Percentiles of every ID-training activation (ReAct, VRA: tens of millions of values) cost a selection pass
  (~0.1 s for 60000×128 float32) per configuration: a sweep sorts them once (:meth:`Scorer.sweep_work`, ~0.2 s)
  and each trial then reads its percentiles from the sorted copy (microseconds) with the same interpolation,
  identical to ``np.percentile(activations, p)``. Without that copy (one trial, a notebook) one partial sort serves
  all of a scorer's percentiles (VRA's two).
"""
from __future__ import annotations

import math
from numbers import Real
from typing import Any, ClassVar

import numpy as np
from scipy.special import logsumexp

from methods.base import HeadScorer, Outputs
from orchestrator.knobs import Choice

#: The logit scores a shaping method may apply to its shaped logits.
SCORES = ("energy", "msp", "maxlogit")
#: Every shaping method's ``score`` knob (``list`` reads it from here).
SCORE_KNOB = Choice("score", "energy", SCORES,
                    help="score of the shaped logits: energy (logsumexp, the papers'), msp or maxlogit")
#: exp(r) of ASH-S and SCALE is taken with r capped here, so that the shaped features and their logits stay finite
#: in float64 (e^200 ≈ 7e86). Only reachable when very few units are kept or the kept units nearly cancel.
MAX_EXPONENT = 200.0
#: Sweep work: every ID-training activation, sorted (ReAct, VRA).
SORTED_ACTIVATIONS = "sorted training activations"


# ---------------------------------------------------------------------------------------------- logit scores
def energy(logits: np.ndarray) -> np.ndarray:
    """logsumexp over classes: the negative free energy at T = 1."""
    return logsumexp(np.asarray(logits, dtype=np.float64), axis=1)


def msp(logits: np.ndarray) -> np.ndarray:
    """The maximum softmax probability, exp(max z − logsumexp z) (stable for any logit scale)."""
    z = np.asarray(logits, dtype=np.float64)
    return np.exp(z.max(axis=1) - logsumexp(z, axis=1))


def maxlogit(logits: np.ndarray) -> np.ndarray:
    """The largest logit."""
    return np.asarray(logits, dtype=np.float64).max(axis=1)


LOGIT_SCORES = {"energy": energy, "msp": msp, "maxlogit": maxlogit}


def check_score(score: Any, method: str) -> str:
    """``score`` when it names a logit score; a ValueError naming the knob otherwise."""
    if not isinstance(score, str) or score not in LOGIT_SCORES:
        raise ValueError(f"{method}: score must be one of {', '.join(SCORES)}, got {score!r}")
    return score


def logit_score(logits: np.ndarray, score: str) -> np.ndarray:
    """The logit score named ``score`` (one of :data:`SCORES`) of each row of ``logits``."""
    return LOGIT_SCORES[check_score(score, "logit_score")](logits)


# ---------------------------------------------------------------------------------------------- knob checks
def check_percentile(value: Any, knob: str, method: str) -> float:
    """``value`` as a float in [0, 100]; a ValueError naming ``method`` and ``knob`` otherwise."""
    if isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(value) or not 0 <= value <= 100:
        raise ValueError(f"{method}: {knob} must be a number in [0, 100], got {value!r}")
    return float(value)


# ---------------------------------------------------------------------------------------------- percentiles
def sorted_percentile(sorted_values: np.ndarray, percentile: float):
    """``np.percentile(values, percentile)`` (linear interpolation, a Python-number percentile) read from
    ``sorted_values`` = ``np.sort(values, axis=None)`` in O(1): the same virtual index and the same two-sided linear
    interpolation as NumPy's, in the values' dtype, so the result is identical."""
    n = sorted_values.size
    if n == 0:
        raise ValueError("percentile of no values")
    virtual = (n - 1) * np.true_divide(percentile, 100)
    if virtual >= n - 1:
        return sorted_values[n - 1]
    below = int(math.floor(virtual))
    gamma = float(virtual - below)
    a, b = sorted_values[below], sorted_values[below + 1]
    diff = b - a
    return b - diff * (1 - gamma) if gamma >= 0.5 else a + diff * gamma


def _order_statistics(n: int, percentile: float) -> tuple[int, ...]:
    """The positions of the sorted values that :func:`sorted_percentile` reads for ``percentile``."""
    virtual = (n - 1) * np.true_divide(percentile, 100)
    if virtual >= n - 1:
        return (n - 1,)
    below = int(math.floor(virtual))
    return below, below + 1


def percentiles_of(values: np.ndarray, percentiles: tuple[float, ...]) -> tuple:
    """``np.percentile(values, p)`` for each p (Python numbers), identical to it, from one partial sort of a
    flattened copy of ``values`` (the order statistics the interpolations read), not one per percentile."""
    flat = np.array(values, copy=True).ravel()
    if flat.size == 0:
        raise ValueError("percentile of no values")
    kth = sorted({i for p in percentiles for i in _order_statistics(flat.size, p)})
    flat.partition(kth)  # flat[i] is now the i-th smallest value at every i in kth
    return tuple(sorted_percentile(flat, p) for p in percentiles)


# ---------------------------------------------------------------------------------------------- top-k per sample
def kept_count(dim: int, percentile: float) -> int:
    """k = D − round(D·p/100): how many units ASH and SCALE keep per sample (the authors' rule)."""
    return int(dim) - int(np.round(dim * percentile / 100.0))


def top_k_mask(h: np.ndarray, k: int) -> np.ndarray:
    """Boolean mask of the k largest entries of each row of ``h``; among entries tied at the k-th largest value
    the lowest column indices are kept, so exactly min(max(k, 0), D) entries per row are True."""
    n, dim = h.shape
    if k <= 0:
        return np.zeros(h.shape, dtype=bool)
    if k >= dim:
        return np.ones(h.shape, dtype=bool)
    kth = np.partition(h, dim - k, axis=1)[:, dim - k:dim - k + 1]  # the k-th largest value of each row
    greater = h > kth
    tied = h == kth
    room = k - greater.sum(axis=1, keepdims=True)  # >= 1: how many tied entries to keep
    return greater | (tied & (np.cumsum(tied, axis=1) <= room))


def top_k_sum(h: np.ndarray, k: int) -> np.ndarray:
    """Sum of the k largest entries of each row (0 when k <= 0): independent of how ties are broken."""
    n, dim = h.shape
    if k <= 0:
        return np.zeros(n)
    if k >= dim:
        return h.sum(axis=1)
    return np.partition(h, dim - k, axis=1)[:, dim - k:].sum(axis=1)


def sharpening(s1: np.ndarray, s2: np.ndarray) -> np.ndarray:
    """exp(s1/s2), ASH-S's and SCALE's per-sample multiplier; 1 where s2 = 0 (nothing kept, or kept units summing
    to zero: the ratio is undefined, and an all-zero h stays zero whatever multiplies it) and the exponent capped at
    :data:`MAX_EXPONENT`."""
    s1, s2 = np.asarray(s1, dtype=np.float64), np.asarray(s2, dtype=np.float64)
    nonzero = s2 != 0
    ratio = np.divide(s1, s2, out=np.zeros_like(s1), where=nonzero)
    return np.exp(np.minimum(ratio, MAX_EXPONENT))


# ---------------------------------------------------------------------------------------------- scorers
class ShapingScorer(HeadScorer):
    """Shape then score through the head: S(x) = score(head.logits(shape(h))). A subclass implements
    :meth:`shape` (or, to change the layer instead of the features, :meth:`shaped_logits`)."""

    #: The method's name, for messages.
    method: ClassVar[str] = ""

    def __init__(self, score: str = "energy"):
        self.logit_score = check_score(score, self.method)

    def shape(self, h: np.ndarray) -> np.ndarray:
        """The shaped penultimate features (float64, same shape as ``h``)."""
        raise NotImplementedError

    def shaped_logits(self, outputs: Outputs) -> np.ndarray:
        head = self.head_of(outputs, self.method)
        return head.logits(self.shape(np.asarray(outputs.features, dtype=np.float64)))

    def score(self, outputs: Outputs) -> np.ndarray:
        return logit_score(self.shaped_logits(outputs), self.logit_score)


class TrainingPercentileScorer(ShapingScorer):
    """A shaping scorer whose thresholds are percentiles of every ID-training activation (all entries of the
    training features, flattened): ReAct and VRA. ``fit`` keeps a reference to the training features; the
    percentiles are taken on first use, from the sweep's sorted copy when :meth:`adopt` received one (O(1)), else
    with ``np.percentile``. A pickled scorer carries its thresholds, not the activations."""

    needs_fit = True

    def __init__(self, score: str = "energy"):
        super().__init__(score)
        self._activations: np.ndarray | None = None
        self._sorted: np.ndarray | None = None
        self._thresholds: dict[float, float] = {}

    def percentiles(self) -> tuple[float, ...]:
        """The percentiles this scorer clips at."""
        raise NotImplementedError

    def fit(self, train: Outputs | None, model=None) -> TrainingPercentileScorer:
        if train is None or len(train) == 0:
            raise ValueError(f"{self.method} needs fit outputs: the training features, whose activation percentiles "
                             f"it shapes with")
        features = train.features
        if np.ndim(features) != 2 or np.size(features) == 0:
            raise ValueError(f"{self.method}: the training features must be a non-empty (samples, dims) array, got "
                             f"shape {np.shape(features)}")
        self._activations = features  # a reference: no copy while it is not needed
        self._sorted = None
        self._thresholds = {}
        return self

    def thresholds(self) -> tuple[float, ...]:
        """The training-activation percentiles of :meth:`percentiles`, in order."""
        wanted = self.percentiles()
        missing = tuple(p for p in wanted if p not in self._thresholds)
        if missing:
            if self._sorted is not None:
                values = tuple(sorted_percentile(self._sorted, p) for p in missing)
            elif self._activations is not None:
                values = percentiles_of(np.asarray(self._activations), missing)
            else:
                raise RuntimeError(f"{type(self).__name__} used before fit")
            self._thresholds.update({p: float(v) for p, v in zip(missing, values, strict=True)})
        return tuple(self._thresholds[p] for p in wanted)

    def sweep_work(self, store: Any) -> dict[str, np.ndarray] | None:
        """Every training activation, sorted once for all trials of a sweep."""
        if self._activations is None:
            return None
        return {SORTED_ACTIVATIONS: np.sort(np.asarray(self._activations), axis=None)}

    def adopt(self, work: dict[str, Any]) -> None:
        """Read percentiles from the sweep's sorted activations — when they are those of the fit features (same
        count, minimum and maximum); other work is ignored."""
        values = (work or {}).get(SORTED_ACTIVATIONS)
        if values is None or self._activations is None:
            return
        own = np.asarray(self._activations)
        if values.size != own.size or values[0] != own.min() or values[-1] != own.max():
            return
        self._sorted = values
        self._thresholds = {}

    def __getstate__(self):
        state = dict(self.__dict__)
        if self._activations is not None or self._sorted is not None:
            self.thresholds()
            state["_thresholds"] = dict(self._thresholds)
        state["_activations"] = state["_sorted"] = None
        return state


__all__ = ["LOGIT_SCORES", "MAX_EXPONENT", "SCORES", "SCORE_KNOB", "ShapingScorer",
           "TrainingPercentileScorer", "check_percentile", "check_score", "energy", "kept_count", "logit_score",
           "maxlogit", "msp", "percentiles_of", "sharpening", "sorted_percentile", "top_k_mask", "top_k_sum"]
