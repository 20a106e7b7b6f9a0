"""SCALE — post-hoc activation scaling (Xu, Chen, Franchi & Yao, Scaling for Training Time and Post-hoc
Out-of-distribution Detection Enhancement, ICLR 2024).

Per sample: s1 = Σ h, s2 = Σ of its k = D − round(D·p/100) largest units (as ASH-S, :mod:`methods.shaping`),
r = s1/s2; nothing is pruned: h' = h·exp(r). Score S(x) = score(W h' + b) through the head, score = energy (the
paper's) by default, or msp / maxlogit. No fit.

Edge cases: where s2 = 0 (p = 100 keeps no unit; an all-zero h; kept units that cancel) r is undefined and taken as
0, so h' = h (at p = 100 SCALE is plain energy); r is capped at ``shaping.MAX_EXPONENT`` so scores stay finite. s2
does not depend on how ties at the k-th largest value are broken. With ASCOOD's z-scored head the factor exp(r)
cancels in the standardisation (up to its 1e-6): SCALE scores as plain energy there.

Deliberate differences: none in the formula (OpenOOD v1.5's scale_postprocessor / ``scale_net.scale``); float64
instead of float32.
"""
from __future__ import annotations

import numpy as np

from methods import register
from methods.base import Method
from methods.shaping import SCORE_KNOB, ShapingScorer, check_percentile, kept_count, sharpening, top_k_sum
from orchestrator.knobs import Float

DEFAULT_PERCENTILE = 85.0


class ScaleScorer(ShapingScorer):
    """``ScaleScorer(percentile, score).score(outputs)``: scale each sample's h by exp(Σh / Σ top-k h), score
    through ``outputs.head``."""

    method = "scale"

    def __init__(self, percentile: float = DEFAULT_PERCENTILE, score: str = "energy"):
        super().__init__(score)
        self.percentile = check_percentile(percentile, "percentile", self.method)

    def shape(self, h: np.ndarray) -> np.ndarray:
        s2 = top_k_sum(h, kept_count(h.shape[1], self.percentile))
        return h * sharpening(h.sum(axis=1), s2)[:, None]


@register("scale")
class Scale(Method):
    reads = "head"
    paper = ("Xu et al., Scaling for Training Time and Post-hoc Out-of-distribution Detection Enhancement, "
             "ICLR 2024")
    knobs = (Float("percentile", DEFAULT_PERCENTILE, ge=0, le=100,
                   help="r = Σh / Σ of the top 100 − p percent of units (k = D − round(D·p/100)); h' = h·exp(r)"),
             SCORE_KNOB)

    def scorer(self, params):
        return ScaleScorer(params["percentile"], params["score"])
