"""MSP — maximum softmax probability (Hendrycks & Gimpel, ICLR 2017): S = max_c softmax(z)_c."""
from __future__ import annotations

import numpy as np

from methods import register
from methods.base import LogitScorer, Method, Outputs


def softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


class MSPScorer(LogitScorer):
    def score(self, outputs: Outputs) -> np.ndarray:
        return softmax(outputs.logits.astype(np.float64)).max(axis=1)


@register("msp")
class MSP(Method):
    reads = "logits"
    paper = "Hendrycks & Gimpel, A Baseline for Detecting Misclassified and OOD Examples, ICLR 2017"

    def scorer(self, params):
        return MSPScorer()
