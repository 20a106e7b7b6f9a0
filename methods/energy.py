"""Energy score (Liu et al., NeurIPS 2020): S = T·logsumexp(z/T), the negative free energy."""
from __future__ import annotations

import numpy as np
from scipy.special import logsumexp

from methods import register
from methods.base import LogitScorer, Method, Outputs
from orchestrator.knobs import Float


class EnergyScorer(LogitScorer):
    def __init__(self, temperature: float = 1.0):
        if temperature <= 0:
            raise ValueError(f"energy temperature must be > 0, got {temperature}")
        self.temperature = float(temperature)

    def score(self, outputs: Outputs) -> np.ndarray:
        t = self.temperature
        return t * logsumexp(outputs.logits.astype(np.float64) / t, axis=1)


@register("energy")
class Energy(Method):
    reads = "logits"
    paper = "Liu et al., Energy-based Out-of-distribution Detection, NeurIPS 2020"
    knobs = (Float("temperature", 1.0, gt=0, help="T in T·logsumexp(z/T)"),)

    def scorer(self, params):
        return EnergyScorer(params["temperature"])
