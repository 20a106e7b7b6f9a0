"""LogitNorm (Wei, Xie, Cheng, Feng, An & Li, Mitigating Neural Network Overconfidence with Logit Normalization,
ICML 2022) [hongxin001/logitnorm_ood; OpenOOD v1.5 ``trainers/logitnorm_trainer.py``].

Trained from scratch with the benchmark's recipe; the loss is cross-entropy on the normalised logits,

    L = CE(z / (τ · (‖z‖₂ + 1e-7)), y),

so training can no longer lower the loss by growing ‖z‖ (the overconfidence the paper removes); τ = ``logitnorm_tau``
(0.04, the paper's and OpenOOD's CIFAR-10 value; 1e-7 as in both codes). Only training changes: the network's logits
are the plain z = W h + b at test time. Scoring: MSP by default (the paper's score), any post-hoc scorer via knob
``scorer``.

Deliberate difference: none in the loss. The schedule is the recipe's (SGD, cosine to 0 per step), not the paper's
100 epochs at lr 0.1 (cosine to 1e-6), so that every trained method of a study shares one recipe.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from methods import register
from methods.base import Method
from orchestrator.knobs import Float, ScorerChoice
from orchestrator.training import Trainer

#: Added to the logit norm before dividing (both reference codes).
NORM_EPS = 1e-7


def logitnorm_loss(logits: torch.Tensor, y: torch.Tensor, tau: float) -> torch.Tensor:
    """Batch mean of CE(z / (τ (‖z‖₂ + 1e-7)), y)."""
    norms = torch.linalg.vector_norm(logits, dim=1, keepdim=True) + NORM_EPS
    return F.cross_entropy(logits / norms / tau, y)


class LogitNormTrainer(Trainer):
    def __init__(self, params, device="cpu", seed=0):
        super().__init__(params, device, seed)
        self.tau = float(params["logitnorm_tau"])

    def loss(self, model, x, y, epoch):
        return logitnorm_loss(model(x), y, self.tau)


@register("logitnorm")
class LogitNorm(Method):
    paper = "Wei et al., Mitigating Neural Network Overconfidence with Logit Normalization, ICML 2022"
    knobs = (
        Float("logitnorm_tau", 0.04, gt=0, network=True,
              help="temperature τ of the normalised logits z / (τ‖z‖) in the training loss"),
        ScorerChoice("scorer", "msp", help="post-hoc method scoring the trained network"),
    )

    def trainer_class(self):
        return LogitNormTrainer
