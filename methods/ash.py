"""ASH — activation shaping (Djurisic, Bozanic, Ashok & Liu, Extremely Simple Activation Shaping for
Out-of-Distribution Detection, ICLR 2023).

Per sample, of the D units of h keep the k = D − round(D·p/100) largest (the authors' ``torch.topk`` rule,
:mod:`methods.shaping`), zero the rest, then
- ``p`` (ASH-P): keep the kept units as they are;
- ``b`` (ASH-B): set every kept unit to s1/k, s1 = Σ h before pruning;
- ``s`` (ASH-S): multiply the kept units by exp(s1/s2), s2 = Σ of the kept units;
and score S(x) = score(W h' + b) through the head, score = energy (the paper's) by default, or msp / maxlogit.
No fit: every statistic is the sample's own.

Edge cases: p = 0 keeps every unit (ASH-P is then plain energy); p = 100 keeps none (h' = 0: every sample scores
score(b)). Among units tied at the k-th largest value the lowest indices are kept (``torch.topk`` leaves the order
unspecified; it matters for ASH-B, whose kept units all become s1/k, and only where ties straddle the cut: tied zeros
in ASH-P and ASH-S are zero either way). Where s2 = 0 (nothing kept, an all-zero h, or kept units that cancel)
exp(s1/s2) is undefined and taken as 1; the exponent is capped at ``shaping.MAX_EXPONENT`` so scores stay finite.
With ASCOOD's z-scored head the per-sample factor exp(s1/s2) cancels in the standardisation (up to its 1e-6), so
ASH-S scores as ASH-P there.

Deliberate differences:
- OpenOOD v1.5's ash postprocessor applies ASH-B (``ASHNet.forward_threshold`` calls ``ash_b``); the default here is
  ASH-S, the paper's recommended variant (and METHODS.md's); ``ash_variant: b`` reproduces OpenOOD.
- pytorch-ood 0.4 takes the percentile as a fraction (0.65); here it is in [0, 100], as in the paper and OpenOOD.
- The papers' code works in float32; this works in float64.
"""
from __future__ import annotations

import numpy as np

from methods import register
from methods.base import Method
from methods.shaping import SCORE_KNOB, ShapingScorer, check_percentile, kept_count, sharpening, top_k_mask
from orchestrator.knobs import Choice, Float

ASH_VARIANTS = ("p", "b", "s")
DEFAULT_VARIANT = "s"
DEFAULT_PERCENTILE = 90.0


class AshScorer(ShapingScorer):
    """``AshScorer(percentile, variant, score).score(outputs)``: prune each sample's h to its k largest units,
    reshape them (variant p / b / s), score through ``outputs.head``."""

    method = "ash"

    def __init__(self, percentile: float = DEFAULT_PERCENTILE, variant: str = DEFAULT_VARIANT, score: str = "energy"):
        super().__init__(score)
        self.percentile = check_percentile(percentile, "percentile", self.method)
        if not isinstance(variant, str) or variant not in ASH_VARIANTS:
            raise ValueError(f"ash: ash_variant must be one of {', '.join(ASH_VARIANTS)}, got {variant!r}")
        self.variant = variant

    def shape(self, h: np.ndarray) -> np.ndarray:
        k = kept_count(h.shape[1], self.percentile)
        mask = top_k_mask(h, k)
        if self.variant == "b":
            if k <= 0:
                return np.zeros_like(h)
            return mask * (h.sum(axis=1, keepdims=True) / k)
        kept = np.where(mask, h, 0.0)
        if self.variant == "p":
            return kept
        return kept * sharpening(h.sum(axis=1), kept.sum(axis=1))[:, None]


@register("ash")
class Ash(Method):
    reads = "head"
    paper = "Djurisic et al., Extremely Simple Activation Shaping for Out-of-Distribution Detection, ICLR 2023"
    knobs = (Choice("ash_variant", DEFAULT_VARIANT, ASH_VARIANTS,
                    help="p: prune only; b: kept units set to s1/k; s: kept units scaled by exp(s1/s2)"),
             Float("percentile", DEFAULT_PERCENTILE, ge=0, le=100,
                   help="prune each sample's units below the top 100 − p percent (k = D − round(D·p/100) kept)"),
             SCORE_KNOB)

    def scorer(self, params):
        return AshScorer(params["percentile"], params["ash_variant"], params["score"])
