"""GradNorm (Huang, Geng & Li, On the Importance of Gradients for Detecting Distributional Shifts in the Wild,
NeurIPS 2021).

S = ‖∂ D_KL(u ‖ softmax(z / T)) / ∂W‖₁, the L1 norm of the gradient, with respect to the weight W of the final
linear layer, of the KL divergence between the uniform distribution u = (1/C, …, 1/C) and the softmax of the
temperature-scaled logits. Up to a constant, D_KL(u ‖ p) = −(1/C) Σ_c log p_c, whose gradient with respect to the
logits is (p − 1/C)/T, p = softmax(z / T). With x the input of the final layer (z = W x + b), the weight gradient
is the outer product ((p − 1/C)/T) xᵀ, whose L1 norm factorises:
    S = (1/T) · (Σ_c |p_c − 1/C|) · (Σ_d |x_d|).
No backward pass is needed: the scorer reads the cached logits and features and the final layer (:class:`Head`):
x = ``head.fc_input(h)``, the penultimate feature h itself (≥ 0 after the ReLU, so Σ|x| = Σx) or its
standardisation for ASCOOD's z-scored head. A network without a linear final layer cannot be scored.

Checked against the authors' code (deeplearning-wisc/gradnorm_ood, ``iterate_data_gradnorm``) and OpenOOD v1.5
(``gradnorm_postprocessor.py``): both back-propagate Σ_c −log softmax(z/T)_c (targets all ones, i.e. C times the
KL's gradient, without the paper's 1/C) and take the L1 norm of the weight gradient only (the authors' 1×1
convolution has no bias; OpenOOD reads ``fc.weight.grad``). This module follows the paper: its scores are theirs
divided by C, which ranks identically. The bias gradient is left out, as in the paper and both codes. Default
T = 1 (the authors' ``--temperature_gradnorm`` and OpenOOD's, which has no grid for it).
"""
from __future__ import annotations

from numbers import Real

import numpy as np
from scipy.special import softmax

from methods import register
from methods.base import HeadScorer, Method, Outputs
from orchestrator.knobs import Float

DEFAULT_TEMPERATURE = 1.0


def check_temperature(temperature) -> float:
    if isinstance(temperature, bool) or not isinstance(temperature, Real) or not np.isfinite(temperature) \
            or temperature <= 0:
        raise ValueError(f"gradnorm: temperature must be a finite number > 0, got {temperature!r}")
    return float(temperature)


class GradNormScorer(HeadScorer):
    """``GradNormScorer(temperature).score(outputs)``; ``outputs.head`` gives the final layer's input."""

    def __init__(self, temperature: float = DEFAULT_TEMPERATURE):
        self.temperature = check_temperature(temperature)

    def score(self, outputs: Outputs) -> np.ndarray:
        head = self.head_of(outputs, "gradnorm")
        z = np.asarray(outputs.logits, dtype=np.float64)
        p = softmax(z / self.temperature, axis=1)
        logit_grad_l1 = np.abs(p - 1.0 / z.shape[1]).sum(axis=1)
        input_l1 = np.abs(head.fc_input(outputs.features)).sum(axis=1)
        return logit_grad_l1 * input_l1 / self.temperature


@register("gradnorm")
class GradNorm(Method):
    reads = "head"
    paper = ("Huang, Geng & Li, On the Importance of Gradients for Detecting Distributional Shifts in the Wild, "
             "NeurIPS 2021")
    knobs = (Float("temperature", DEFAULT_TEMPERATURE, gt=0, help="softmax temperature T in KL(u ‖ softmax(z/T))"),)

    def scorer(self, params):
        return GradNormScorer(params["temperature"])
