"""T2FNorm (Regmi, Panthi, Dotel, Gyawali, Stoyanov & Bhattarai, T2FNorm: Train-time Feature Normalization for OOD
Detection in Image Classification, CVPR Workshops 2024) [OpenOOD v1.5 ``networks/t2fnorm_net.py``,
``trainers/t2fnorm_trainer.py``].

Trained from scratch with the benchmark's recipe. During training the final layer sees the penultimate feature h
projected onto the hypersphere and scaled, h / (τ‖h‖₂) (τ = ``t2f_tau``, 0.1 as in OpenOOD's config), and the loss
is plain cross-entropy:  z_train = W · h / (τ‖h‖) + b.  At test time h is not normalised ("non-transformed space"):
z = W · h / τ + b, OpenOOD's ``forward_ood_inference`` for networks trained from scratch — the logits every scorer
reads, while feature-based scorers read the raw h.

How the network stores it: its final layer holds W' = W / τ, so the cached network *is* the test-time network
(z = W' h + b; per-epoch validation, checkpoints, the model cache and head-based scorers all see it), and training
computes z_train = W' · h/‖h‖ + b, the same number. Trained naively, W' would not follow the trajectory SGD gives W;
it does exactly when W' starts at W₀/τ and its learning rate is lr/τ² and its weight decay wd·τ² (then every SGD
step — momentum and Nesterov included, and the cosine schedule, which scales each group's rate alike — moves W' by
the step of W divided by τ; ``tests/methods/test_t2fnorm.py`` checks it against the paper's parametrisation). The
bias and the rest of the network keep the recipe's rate and decay. Scoring: MSP by default (OpenOOD's T2FNorm
postprocessor is MSP of these logits), any post-hoc scorer via knob ``scorer``.

Deliberate difference: none in the loss or the test-time network; the schedule is the recipe's (SGD, cosine to 0
per step), not the paper's 100 epochs at lr 0.1, so that every trained method of a study shares one recipe.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from methods import register
from methods.base import Method
from orchestrator.knobs import Float, ScorerChoice
from orchestrator.training import Trainer


def train_logits(model, x: torch.Tensor) -> torch.Tensor:
    """The training-time logits of raw images x: the final layer (holding W' = W/τ) on h/‖h‖₂, i.e. W·h/(τ‖h‖) + b."""
    h, _ = model.embed_normalized(model.normalize(x))
    return model.head(F.normalize(h, dim=1))


class T2FNormTrainer(Trainer):
    def __init__(self, params, device="cpu", seed=0):
        super().__init__(params, device, seed)
        self.tau = float(params["t2f_tau"])
        self.weight_decay = float(params["weight_decay"])

    def prepare(self, model) -> None:
        """W'₀ = W₀ / τ (a checkpoint loaded after this replaces it, as it replaces every other weight)."""
        with torch.no_grad():
            model.head.fc.weight.div_(self.tau)

    def param_groups(self, model):
        weight = model.head.fc.weight
        rest = [p for p in model.parameters() if p is not weight]
        return [{"params": rest},
                {"params": [weight], "lr": self.lr / self.tau ** 2, "weight_decay": self.weight_decay * self.tau ** 2}]

    def loss(self, model, x, y, epoch):
        return F.cross_entropy(train_logits(model, x), y)


@register("t2fnorm")
class T2FNorm(Method):
    paper = ("Regmi et al., T2FNorm: Train-time Feature Normalization for OOD Detection in Image Classification, "
             "CVPRW 2024")
    knobs = (
        Float("t2f_tau", 0.1, gt=0, network=True,
              help="temperature τ: the final layer sees h/(τ‖h‖) in training, h/τ at test time"),
        ScorerChoice("scorer", "msp", help="post-hoc method scoring the trained network"),
    )

    def trainer_class(self):
        return T2FNormTrainer
