"""GEN — generalised entropy (Liu, Lochman & Zach, GEN: Pushing the Limits of Softmax-Based Out-of-Distribution
Detection, CVPR 2023).

With p = softmax(z) sorted in descending order and M = min(top_m, C) (C classes):
    S = −Σ_{j≤M} p_j^γ (1 − p_j)^γ,
minus the generalised entropy of the M largest probabilities (higher = more in-distribution: a peaked softmax
has a small entropy). Defaults γ = 0.1, M = 100, the paper's and OpenOOD v1.5's (``configs/postprocessors/gen.yml``,
whose APS grid is γ ∈ {0.01, 0.1, 0.5, 1, 2, 5, 10}, M ∈ {10, 50, 100, 200, 500, 1000}).

Deliberate differences from OpenOOD v1.5 (``gen_postprocessor.py``), neither of which changes the formula:

- M is clamped to the number of classes C (OpenOOD's slice ``[:, -M:]`` does the same implicitly), so the
  ImageNet default M = 100 means "every class" on a 10-class benchmark.
- Every term is computed in log space, exp(γ·(log p_j + log(1 − p_j))), with log(1 − p_max) =
  log s − log(1 + s), s = Σ_{i≠max} exp(z_i − z_max), and log(1 − p_j) = log1p(−p_j) for the others (each ≤ ½).
  OpenOOD evaluates p^γ(1 − p)^γ on float32 probabilities: for a saturated softmax (p_max rounds to 1, the
  others underflow to 0) every term is 0 and all such inputs tie at S = 0, although with γ = 0.1 the exact terms
  (e.g. (1e-20)^0.1 = 0.01) are far from negligible. Here S is the exact value up to float64 rounding for any
  finite logits, and stays finite; it equals OpenOOD's wherever float32 does not saturate.
"""
from __future__ import annotations

from numbers import Integral, Real

import numpy as np
from scipy.special import log_softmax, logsumexp

from methods import register
from methods.base import LogitScorer, Method, Outputs
from orchestrator.knobs import Float, Int

DEFAULT_GAMMA = 0.1
DEFAULT_TOP_M = 100


def check_gamma(gamma) -> float:
    if isinstance(gamma, bool) or not isinstance(gamma, Real) or not np.isfinite(gamma) or gamma <= 0:
        raise ValueError(f"gen: gamma must be a finite number > 0, got {gamma!r}")
    return float(gamma)


def check_top_m(top_m) -> int:
    if isinstance(top_m, bool) or not (isinstance(top_m, Integral) or (isinstance(top_m, float)
                                                                        and top_m.is_integer())):
        raise ValueError(f"gen: top_m must be a positive integer, got {top_m!r}")
    if int(top_m) < 1:
        raise ValueError(f"gen: top_m must be >= 1, got {top_m}")
    return int(top_m)


def log_one_minus_softmax(z: np.ndarray) -> np.ndarray:
    """log(1 − softmax(z)) per entry, accurate where softmax(z) rounds to 1 (−inf where it is exactly 1: C = 1)."""
    with np.errstate(divide="ignore"):  # the largest entry may give log1p(−1); it is replaced below
        out = np.log1p(-np.exp(log_softmax(z, axis=1)))  # accurate for p <= 1/2: every entry but the largest
    rows = np.arange(len(z))
    top = z.argmax(axis=1)
    others = z - z[rows, top][:, None]
    others[rows, top] = -np.inf
    with np.errstate(divide="ignore"):
        log_s = logsumexp(others, axis=1)  # log Σ_{i≠max} exp(z_i − z_max); −inf with one class
    out[rows, top] = log_s - np.logaddexp(0.0, log_s)
    return out


def generalized_entropy(z: np.ndarray, gamma: float, top_m: int) -> np.ndarray:
    """Σ_{j≤M} p_j^γ (1 − p_j)^γ over the M largest softmax probabilities of each row of logits z."""
    z = np.asarray(z, dtype=np.float64)
    m = min(top_m, z.shape[1])
    log_terms = gamma * (log_softmax(z, axis=1) + log_one_minus_softmax(z))
    # the M largest probabilities are those of the M largest logits; every term is >= 0, so sum the chosen ones
    chosen = np.argsort(-z, axis=1, kind="stable")[:, :m]
    return np.exp(np.take_along_axis(log_terms, chosen, axis=1)).sum(axis=1)


class GenScorer(LogitScorer):
    """``GenScorer(gamma, top_m).score(outputs)`` = −generalised entropy of the top-M softmax probabilities."""

    def __init__(self, gamma: float = DEFAULT_GAMMA, top_m: int = DEFAULT_TOP_M):
        self.gamma = check_gamma(gamma)
        self.top_m = check_top_m(top_m)

    def score(self, outputs: Outputs) -> np.ndarray:
        return -generalized_entropy(outputs.logits, self.gamma, self.top_m)


@register("gen")
class Gen(Method):
    reads = "logits"
    paper = ("Liu, Lochman & Zach, GEN: Pushing the Limits of Softmax-Based Out-of-Distribution Detection, "
             "CVPR 2023")
    knobs = (Float("gamma", DEFAULT_GAMMA, gt=0, help="exponent γ of the generalised entropy Σ p^γ (1 − p)^γ"),
             Int("top_m", DEFAULT_TOP_M, ge=1, help="M: sum over the M largest softmax probabilities "
                                                    "(clamped to the number of classes)"))

    def scorer(self, params):
        return GenScorer(params["gamma"], params["top_m"])
