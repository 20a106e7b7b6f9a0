"""MaxLogit (Hendrycks et al., Scaling Out-of-Distribution Detection for Real-World Settings, ICML 2022).

S = max_c z_c, the largest unnormalised logit (higher = more in-distribution).
"""
from __future__ import annotations

import numpy as np

from methods import register
from methods.base import LogitScorer, Method, Outputs


class MaxLogitScorer(LogitScorer):
    def score(self, outputs: Outputs) -> np.ndarray:
        return np.asarray(outputs.logits, dtype=np.float64).max(axis=1)


@register("maxlogit")
class MaxLogit(Method):
    reads = "logits"
    paper = "Hendrycks et al., Scaling Out-of-Distribution Detection for Real-World Settings, ICML 2022"

    def scorer(self, params):
        return MaxLogitScorer()
