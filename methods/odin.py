"""ODIN (Liang, Li & Srikant, Enhancing the Reliability of OOD Image Detection in Neural Networks, ICLR 2018).

Input preprocessing plus temperature scaling:
    x̃ = x − ε·sign(∇ₓ CE(z(x)/T, ŷ)),  ŷ = argmax z(x);   S = max_c softmax(z(x̃)/T)_c.

ε is a step in RAW image space (pixels in [0, 1]). The :class:`~orchestrator.backbones.Classifier` normalises
internally, xn = (x − mean_c)/std_c, so a raw-space step of ε is a step of ε/std_c in normalised space: exactly
the authors' (and OpenOOD's) ``gradient /= std_c`` before stepping on the normalised input. The sign follows
their code, ``torch.ge(grad, 0)``: sign(0) = +1. Like the authors, the perturbed image is not clamped to [0, 1].
With ε = 0 no gradient is needed: the scorer then reads cached logits (``needs_input`` is False).

Cost: the step's direction D (x̃ = x − ε·D) does not depend on ε, so it is memoised in the process
(:data:`DIRECTIONS`, keyed by digests of the network and the batch, and the temperature), 2 bits per input element:
every other configuration of a sweep with the same T runs the network forward once, on x̃, instead of forward +
backward + forward. i-ODIN and Mahalanobis' preprocessing share the memo.
"""
from __future__ import annotations

import math
from numbers import Real
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from scipy.special import softmax

from methods import register
from methods.base import InputGradientScorer, LogitScorer, Method, Outputs
from methods.memo import Memo, NetworkDigests, array_digest
from orchestrator.knobs import Float

DEFAULT_TEMPERATURE = 1000.0
DEFAULT_EPSILON = 0.0014
#: Preprocessing directions (values in {−1, 0, +1}, 2 bits per element) by (method, network, batch, what else
#: determines the gradient); least recently used dropped beyond these bytes.
DIRECTIONS = Memo(max_bytes=512 * 2**20)
_NETWORKS = NetworkDigests()


def real_knob(method: str, name: str, value: Any, *, positive: bool = False) -> float:
    """``value`` as a finite float ≥ 0 (> 0 with ``positive``); ValueError naming the knob otherwise."""
    if isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(float(value)):
        raise ValueError(f"{method}: {name} must be a finite number, got {value!r}")
    value = float(value)
    if positive and value <= 0:
        raise ValueError(f"{method}: {name} must be > 0, got {value}")
    if value < 0:
        raise ValueError(f"{method}: {name} must be >= 0, got {value}")
    return value


def step_sign(grad: torch.Tensor) -> torch.Tensor:
    """±1 per element, sign(0) = +1 (the authors' ``(torch.ge(grad, 0).float() - 0.5) * 2``)."""
    return torch.where(grad >= 0, 1.0, -1.0).to(grad.dtype)


def forget_memoised() -> None:
    """Forget the preprocessing directions memoised in this process."""
    DIRECTIONS.clear()


def memoised_direction(key: str, model, x: torch.Tensor, compute) -> torch.Tensor:
    """``compute()`` (a direction tensor of x's shape, values in {−1, 0, +1}), memoised by ``key`` + digests of the
    network and of the batch ``x``; returned on x's device and dtype."""
    full = f"{key}|{_NETWORKS.digest(model)}|{array_digest(x)}"
    hit = DIRECTIONS.get(full)
    if hit is None:
        d = compute().detach()
        hit = DIRECTIONS.put(full, (np.packbits((d != 0).cpu().numpy()), np.packbits((d > 0).cpu().numpy())))
    nonzero, positive = (torch.from_numpy(np.unpackbits(bits, count=x.numel()).reshape(x.shape)) for bits in hit)
    return ((2 * positive.to(x.dtype) - 1) * nonzero.to(x.dtype)).to(x.device)


def ce_input_gradient(model, x: torch.Tensor, temperature: float) -> torch.Tensor:
    """∇ₓ Σ_i CE(z(x_i)/T, ŷ_i) with respect to the raw input, ŷ = argmax z(x); parameters get no .grad."""
    with torch.enable_grad():
        x = x.detach().requires_grad_(True)
        z = model(x)
        z = z.to(torch.promote_types(z.dtype, torch.float32))  # half precision → float32
        loss = F.cross_entropy(z / temperature, z.detach().argmax(dim=1), reduction="sum")
        (grad,) = torch.autograd.grad(loss, x)
    return grad


def tempered_msp(logits: np.ndarray, temperature: float) -> np.ndarray:
    return softmax(np.asarray(logits, dtype=np.float64) / temperature, axis=1).max(axis=1)


class OdinScorer(InputGradientScorer, LogitScorer):
    """Temperature-scaled MSP of the input perturbed against its gradient; with ε = 0 no gradient is needed and
    the scorer reads cached logits (``uses_input_gradients`` is False)."""

    method = "odin"

    def __init__(self, temperature: float = DEFAULT_TEMPERATURE, epsilon: float = DEFAULT_EPSILON):
        self.temperature = real_knob(self.method, "temperature", temperature, positive=True)
        self.epsilon = real_knob(self.method, "epsilon", epsilon)

    @property
    def uses_input_gradients(self) -> bool:
        # ε = 0 is plain temperature-scaled MSP: score cached logits instead of running the network again.
        return self.epsilon > 0

    def _direction(self, model, grad: torch.Tensor) -> torch.Tensor:
        """D of x̃ = x − ε·D from the input gradient."""
        return step_sign(grad)

    @torch.no_grad()
    def perturb(self, model, x: torch.Tensor) -> torch.Tensor:
        """The preprocessed input x̃ (raw space) for a batch of raw images ``x``."""
        x = x.detach()
        if self.epsilon == 0:
            return x.clone()
        d = memoised_direction(f"{self.method}|{self.temperature!r}|{getattr(model, 'std', None)!r}", model, x,
                               lambda: self._direction(model, ce_input_gradient(model, x, self.temperature)))
        return (x - self.epsilon * d).detach()

    def score_inputs(self, model, x: torch.Tensor) -> np.ndarray:
        x_tilde = self.perturb(model, x)
        with torch.no_grad():
            logits = model(x_tilde)
        return tempered_msp(logits.double().cpu().numpy(), self.temperature)

    def score(self, outputs: Outputs) -> np.ndarray:
        if self.epsilon > 0:
            raise ValueError(f"{self.method} with epsilon={self.epsilon} perturbs the input: call "
                             "score_inputs(model, x); cached outputs are enough only for epsilon = 0")
        return tempered_msp(outputs.logits, self.temperature)


@register("odin")
class Odin(Method):
    reads = "network"
    paper = ("Liang, Li & Srikant, Enhancing the Reliability of Out-of-distribution Image Detection in Neural "
             "Networks, ICLR 2018")
    knobs = (Float("temperature", DEFAULT_TEMPERATURE, gt=0, help="softmax temperature T"),
             Float("epsilon", DEFAULT_EPSILON, ge=0, help="input perturbation size ε (raw [0, 1] pixel scale)"))

    def scorer(self, params):
        return OdinScorer(params["temperature"], params["epsilon"])
