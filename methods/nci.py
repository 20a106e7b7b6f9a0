"""Neural Collapse Inspired OOD detector, NCI (Liu & Qin, Detecting Out-of-Distribution Through the Lens of Neural
Collapse, CVPR 2025).

Fit: μ_G, the global mean of the training features (in the space the final linear layer multiplies).
Score, with ŷ = argmax_c z_c the predicted class and w_ŷ its row of the final layer's weight W:
    S = ⟨h − μ_G, w_ŷ⟩ / ‖h − μ_G‖ + α·‖h‖₁
the proximity of the centred feature to the predicted class's weight vector (pScore), plus the L1 norm of the
feature as a filter (ID features lie farther from the origin). This is OpenOOD v1.5's ``nci_postprocessor`` (which
the paper's authors contributed): the proximity is not divided by ‖w_ŷ‖ — under Neural Collapse the weight vectors
have equal norms, so it ranks like the cosine between h − μ_G and w_ŷ there. Default α = 1e-4 and the sweep grid
{1e-4, 1e-3, 1e-2, 0.1} are OpenOOD's (``configs/postprocessors/nci.yml``).

Deliberate choices and differences:
- The proximity term is computed on ``Head.fc_input(h)`` (μ_G the mean of fc_input over the training features),
  the space in which W's rows live: h itself for a linear head, its per-sample standardisation for ASCOOD's
  z-scored head. The filter α·‖h‖₁ reads the raw penultimate feature h (OpenOOD's ``feature``): the two coincide
  for a linear head, and a standardised fc input has a (nearly) constant norm, which would filter nothing.
- h = μ_G exactly (‖h − μ_G‖ = 0, the direction undefined) gets proximity 0: the sample is then scored by the
  filter alone (OpenOOD divides 0 by 0 and gets NaN).
- ŷ is the argmax of the cached logits (the first class on ties), as OpenOOD's ``output.max(1)``.
"""
from __future__ import annotations

from numbers import Real

import numpy as np

from methods import register
from methods.base import Head, HeadScorer, Method, Outputs
from orchestrator.knobs import Float

DEFAULT_ALPHA = 1e-4


def check_alpha(alpha) -> float:
    if isinstance(alpha, bool) or not isinstance(alpha, Real) or not np.isfinite(alpha) or alpha < 0:
        raise ValueError(f"nci: alpha must be a finite number >= 0, got {alpha!r}")
    return float(alpha)


class NciScorer(HeadScorer):
    """``NciScorer(alpha).fit(train)`` — train: training features, with the final layer as ``train.head`` — then
    ``score(outputs)``."""

    needs_fit = True  # the global mean of the training features

    def __init__(self, alpha: float = DEFAULT_ALPHA):
        self.alpha = check_alpha(alpha)
        self.head_: Head | None = None
        self.weight_: np.ndarray | None = None
        self.mean_: np.ndarray | None = None  # μ_G in fc-input space

    def fit(self, train: Outputs, model=None) -> NciScorer:
        if train is None or len(train) == 0:
            raise ValueError("nci needs fit outputs (training features) for the global feature mean")
        self.head_ = self.head_of(train, "nci")
        self.weight_ = np.asarray(self.head_.weight, dtype=np.float64)
        h = self.head_.fc_input(train.features)
        if self.weight_.shape[1] != h.shape[1]:
            raise ValueError(f"nci: the final layer expects {self.weight_.shape[1]}-d features, fit features are "
                             f"{h.shape[1]}-d")
        self.mean_ = h.mean(axis=0)
        return self

    def proximity(self, outputs: Outputs) -> np.ndarray:
        """⟨h − μ_G, w_ŷ⟩ / ‖h − μ_G‖ (0 where h = μ_G)."""
        if self.mean_ is None:
            raise RuntimeError("NciScorer used before fit")
        centred = self.head_.fc_input(outputs.features) - self.mean_
        predicted = np.asarray(outputs.logits).argmax(axis=1)
        dot = (centred * self.weight_[predicted]).sum(axis=1)
        norm = np.linalg.norm(centred, axis=1)
        return np.divide(dot, norm, out=np.zeros_like(dot), where=norm > 0)

    def score(self, outputs: Outputs) -> np.ndarray:
        l1 = np.abs(np.asarray(outputs.features, dtype=np.float64)).sum(axis=1)
        return self.proximity(outputs) + self.alpha * l1


@register("nci")
class Nci(Method):
    reads = "head"
    paper = "Liu & Qin, Detecting Out-of-Distribution Through the Lens of Neural Collapse, CVPR 2025"
    knobs = (Float("alpha", DEFAULT_ALPHA, ge=0, help="weight α of the L1 feature-norm filter α·‖h‖₁"),)

    def scorer(self, params):
        return NciScorer(params["alpha"])
