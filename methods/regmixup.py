"""RegMixup (Pinto, Yang, Lim, Torr & Dokania, Using Mixup as a Regularizer Can Surprisingly Improve Accuracy and
Out-of-Distribution Robustness, NeurIPS 2022) [FrancescoPinto/RegMixup ``models/regmixup.py``; OpenOOD v1.5
``trainers/regmixup_trainer.py``].

Trained from scratch with the benchmark's recipe. Each batch (x, y) of B images draws one λ ~ Beta(α, α)
(α = ``mix_alpha``, 20 as in the paper's CIFAR runs and both codes) and a random permutation π of the batch, makes
x̃ = λ x + (1 − λ) x_π, runs one forward pass on the 2B images [x; x̃] and minimises

    L = λ · CE([x; x̃], [y; y]) + (1 − λ) · CE([x; x̃], [y; y_π])
      = ½ CE(x, y) + ½ (λ CE(x̃, y) + (1 − λ) CE(x̃, y_π)),

each CE the mean over the 2B rows — the authors' ``regmixup_criterion`` on the concatenated batch. (The paper writes
CE(x, y) + η·mixup-CE with η = 1; the code's mean over 2B rows halves both terms, which is what is trained here.)
Images are mixed in raw pixel space; the network's per-channel normalisation is affine, so this is the same x̃ the
authors mix after normalising. λ and π come from a generator seeded by (seed, epoch), so a trial resumed from a
checkpoint draws the same ones. Scoring: predictive entropy by default (the paper's OOD score; its code also
reports maximum probability and Dempster–Shafer, and OpenOOD's script scores RegMixup with MSP), any post-hoc
scorer via knob ``scorer``.

Deliberate difference: none in the loss; the schedule is the recipe's, not the paper's (SGD lr 0.1, 200 epochs on
CIFAR), so that every trained method of a study shares one recipe.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from methods import register
from methods.base import Method
from orchestrator.knobs import Float, ScorerChoice
from orchestrator.training import EpochStreams, Trainer

#: Tag of RegMixup's random stream (keeps it apart from other streams seeded by (seed, epoch)).
STREAM = 0x7E6


def regmixup_loss(logits: torch.Tensor, y: torch.Tensor, y_perm: torch.Tensor, lam: float) -> torch.Tensor:
    """λ·CE(logits, [y; y]) + (1 − λ)·CE(logits, [y; y_perm]), logits of the 2B images [x; x̃] (means over 2B)."""
    return (lam * F.cross_entropy(logits, torch.cat([y, y]))
            + (1.0 - lam) * F.cross_entropy(logits, torch.cat([y, y_perm])))


def mix(x: torch.Tensor, lam: float, perm: torch.Tensor) -> torch.Tensor:
    """x̃ = λ x + (1 − λ) x[π]."""
    return lam * x + (1.0 - lam) * x[perm]


class RegMixupTrainer(Trainer):
    def __init__(self, params, device="cpu", seed=0):
        super().__init__(params, device, seed)
        self.alpha = float(params["mix_alpha"])
        self.streams = EpochStreams(seed, STREAM)

    def loss(self, model, x, y, epoch):
        s = self.streams.at(epoch)
        lam = float(s.numpy.beta(self.alpha, self.alpha))
        perm = torch.randperm(len(x), generator=s.torch).to(x.device)
        logits = model(torch.cat([x, mix(x, lam, perm)]))
        return regmixup_loss(logits, y, y[perm], lam)


@register("regmixup")
class RegMixup(Method):
    paper = ("Pinto et al., Using Mixup as a Regularizer Can Surprisingly Improve Accuracy and Out-of-Distribution "
             "Robustness, NeurIPS 2022")
    knobs = (
        Float("mix_alpha", 20.0, gt=0, network=True, help="mixing weight λ ~ Beta(mix_alpha, mix_alpha)"),
        ScorerChoice("scorer", "entropy", help="post-hoc method scoring the trained network"),
    )

    def trainer_class(self):
        return RegMixupTrainer
