"""i-ODIN (Regmi, Going Beyond Conventional OOD Detection — ASCOOD, arXiv 2411.10794; ``iodin_postprocessor``
of sudarshanregmi/ASCOOD).

ODIN with a single-element perturbation: per sample, only the input element (over C×H×W) with the largest
|∇ CE(z/T, ŷ)| is stepped, by −ε·sign(∇) as in ODIN (the step raises the max softmax); S = max softmax(z(x̃)/T).

Like ODIN, ε is a raw-space step (= ε/std_c in normalised space, the authors' convention). The element is chosen
on the gradient with respect to the *normalised* input, |∇_xn| = |∇ₓ|·std_c, as in ASCOOD, whose data are
already normalised; for a single-channel model this is the same as the raw gradient.
"""
from __future__ import annotations

import torch

from methods import register
from methods.base import Method
from methods.odin import DEFAULT_EPSILON, DEFAULT_TEMPERATURE, OdinScorer, step_sign
from orchestrator.knobs import Float


def largest_gradient_mask(grad: torch.Tensor, std: torch.Tensor | None = None) -> torch.Tensor:
    """1 at the element of largest |grad·std| per sample (ties: the first), 0 elsewhere; shape of ``grad``."""
    if std is not None:
        std = torch.as_tensor(std, dtype=grad.dtype, device=grad.device)
        if std.numel() > 1 and grad.dim() >= 2:
            std = std.reshape(1, -1, *([1] * (grad.dim() - 2)))
        grad = grad * std
    flat = grad.abs().flatten(1)
    mask = torch.zeros_like(flat)
    mask.scatter_(1, flat.argmax(dim=1, keepdim=True), 1.0)
    return mask.view_as(grad)


class IodinScorer(OdinScorer):
    method = "iodin"

    def _direction(self, model, grad):
        return step_sign(grad) * largest_gradient_mask(grad, getattr(model, "std", None))


@register("iodin")
class Iodin(Method):
    reads = "network"
    paper = "Regmi, Going Beyond Conventional OOD Detection (ASCOOD, i-ODIN), arXiv 2411.10794"
    knobs = (Float("temperature", DEFAULT_TEMPERATURE, gt=0, help="softmax temperature T"),
             Float("epsilon", DEFAULT_EPSILON, ge=0,
                   help="step on the one input element of largest |gradient·std| (raw pixel scale)"))

    def scorer(self, params):
        return IodinScorer(params["temperature"], params["epsilon"])
