"""ASCOOD (Regmi, arXiv 2411.10794): train with outliers synthesised from the ID batch itself.

Each batch, a saliency map G = ∂z_y/∂x (true-class logit, normalised input, eval mode, on a copy of x) picks
the "invariant" input elements; an outlier x' is made by (gradient) adding α·G on the top p_inv fraction of
|G|, (shuffle) permuting the pixels of highest Σ_c exp(G_c), or (gaussian) α·N(0, I). One forward pass on
[x, x'] gives L = CE(f(x), y) + w·KL(U ‖ softmax(f(x'))). α decays linearly per epoch from α_max to α_min
(epochs counted from 1, as in the authors' OpenOOD trainer, so the last epoch uses α_min). The head works on
z-scored features (σ·(h − mean h)/std h) and its learning rate is scaled by fc_lr_factor.
Scoring: any post-hoc scorer by name (knob ``scorer``, default msp; i-ODIN via ``scorer: iodin``).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from methods import register
from methods.base import Method
from orchestrator.knobs import Choice, Float, ScorerChoice
from orchestrator.training import Trainer

OOD_TYPES = ("gradient", "shuffle", "gaussian")


def alpha_at(epoch: int, epochs: int, alpha_min: float, alpha_max: float) -> float:
    """Linear decay: α_max·(1 − e/E) + α_min·e/E for epoch e in 1..E."""
    return (alpha_max - alpha_min) * (1.0 - epoch / epochs) + alpha_min


def saliency(model, xn: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """∂z_y/∂x_n for every sample, in eval mode, without touching the parameters' gradients."""
    was_training = model.training
    model.eval()
    with torch.enable_grad():
        xg = xn.detach().clone().requires_grad_(True)
        logits = model.logits_from_normalized(xg)
        (grad,) = torch.autograd.grad(logits.gather(1, y[:, None]).sum(), xg)
    model.train(was_training)
    return grad.detach()


def gradient_outliers(xn: torch.Tensor, grad: torch.Tensor, alpha: float, p_inv: float) -> torch.Tensor:
    """x' = x + α·G⊙M, M = the top p_inv fraction of |G| over C×H×W of each sample."""
    b = xn.shape[0]
    flat = grad.reshape(b, -1)
    k = max(1, int(flat.shape[1] * p_inv))
    top = flat.abs().topk(k, dim=1).indices
    mask = torch.zeros_like(flat).scatter_(1, top, 1.0).view_as(xn)
    return xn + alpha * grad * mask


def shuffle_outliers(xn: torch.Tensor, grad: torch.Tensor, p_inv: float, generator=None) -> torch.Tensor:
    """Randomly permute the channel vectors of the top p_inv·H·W pixels by Σ_c exp(G_c)."""
    b, c, h, w = xn.shape
    k = max(1, int(h * w * p_inv))
    top = grad.exp().sum(dim=1).reshape(b, -1).topk(k, dim=1).indices  # (b, k)
    perm = torch.argsort(torch.rand(b, k, generator=generator, device=xn.device), dim=1)
    src = top.gather(1, perm)
    flat = xn.reshape(b, c, h * w)
    out = flat.clone()
    out.scatter_(2, top[:, None, :].expand(b, c, k), flat.gather(2, src[:, None, :].expand(b, c, k)))
    return out.view_as(xn)


def gaussian_outliers(xn: torch.Tensor, alpha: float) -> torch.Tensor:
    return alpha * torch.randn_like(xn)


def uniform_kl(logits: torch.Tensor) -> torch.Tensor:
    """Batch mean of KL(U ‖ softmax(z)) = −log K − mean_c log p_c."""
    k = logits.shape[1]
    return (-math.log(k) - F.log_softmax(logits, dim=1).mean(dim=1)).mean()


#: The knobs of ASCOOD's outlier synthesis (shared with Outlier Exposure's ``outliers: ascood`` source).
OUTLIER_KNOBS = (
    Choice("ood_type", "gradient", OOD_TYPES, network=True, help="how outliers are synthesised"),
    Float("p_inv", 0.1, gt=0, le=1, network=True, help="fraction of input elements perturbed / shuffled"),
    Float("alpha_max", 300.0, gt=0, network=True, help="perturbation size α at the first epoch"),
    Float("alpha_min", None, ge=0, optional=True, network=True,
          help="α at the last epoch (null: alpha_min_frac · alpha_max)"),
    Float("alpha_min_frac", 0.1, gt=0, le=1, network=True, help="α_min as a fraction of α_max"),
)


class OutlierSynthesis:
    """ASCOOD's outliers for a normalised ID batch, from the :data:`OUTLIER_KNOBS` values in ``params``: the one
    implementation both ASCOOD's trainer and Outlier Exposure's ``ascood`` source use."""

    def __init__(self, params, owner: str = "ascood"):
        self.ood_type = params.get("ood_type", "gradient")
        if self.ood_type not in OOD_TYPES:
            raise ValueError(f"{owner} ood_type must be one of {OOD_TYPES}, got {self.ood_type!r}")
        self.p_inv = float(params.get("p_inv", 0.1))
        self.alpha_max = float(params.get("alpha_max", 300.0))
        alpha_min = params.get("alpha_min")
        if alpha_min is None:
            alpha_min = params.get("alpha_min_frac", 0.1) * self.alpha_max
        self.alpha_min = float(alpha_min)
        if not 0 < self.p_inv <= 1:
            raise ValueError(f"{owner} p_inv must be in (0, 1], got {self.p_inv}")
        if self.alpha_min > self.alpha_max:
            raise ValueError(f"{owner} alpha_min ({self.alpha_min}) exceeds alpha_max ({self.alpha_max})")

    def __call__(self, model, xn: torch.Tensor, y: torch.Tensor, epoch: int, epochs: int) -> torch.Tensor:
        alpha = alpha_at(epoch, epochs, self.alpha_min, self.alpha_max)
        if self.ood_type == "gaussian":
            return gaussian_outliers(xn, alpha)
        grad = saliency(model, xn, y)
        if self.ood_type == "shuffle":
            return shuffle_outliers(xn, grad, self.p_inv)
        return gradient_outliers(xn, grad, alpha, self.p_inv)


class ASCOODTrainer(Trainer):
    def __init__(self, params, device="cpu", seed=0):
        super().__init__(params, device, seed)
        self.synthesis = OutlierSynthesis(params)
        self.w = float(params.get("w", 1.0))
        self.fc_lr_factor = float(params.get("fc_lr_factor", 1.0))

    def param_groups(self, model):
        head = list(model.head.parameters())
        head_ids = {id(p) for p in head}
        body = [p for p in model.parameters() if id(p) not in head_ids]
        return [{"params": body}, {"params": head, "lr": self.lr * self.fc_lr_factor}]

    def outliers(self, model, xn, y, epoch):
        return self.synthesis(model, xn, y, epoch, self.epochs)

    def loss(self, model, x, y, epoch):
        xn = model.normalize(x)
        x_ood = self.outliers(model, xn, y, epoch).detach()
        logits = model.logits_from_normalized(torch.cat([xn, x_ood]))
        z_id, z_ood = logits[: len(x)], logits[len(x):]
        return F.cross_entropy(z_id, y) + self.w * uniform_kl(z_ood)


@register("ascood")
class ASCOOD(Method):
    paper = "Regmi, ASCOOD: Going Beyond Conventional OOD Detection, arXiv 2411.10794"
    head = "zscore"
    knobs = (
        *OUTLIER_KNOBS,
        Float("w", 1.0, ge=0, network=True, help="weight of the uniform-KL outlier loss"),
        Float("sigma", 0.5, gt=0, network=True, help="scale of the z-scored head"),
        Float("fc_lr_factor", 1.0, gt=0, network=True, help="head learning rate as a fraction of lr"),
        ScorerChoice("scorer", "msp", help="post-hoc method scoring the trained network (i-ODIN: iodin)"),
    )

    def trainer_class(self):
        return ASCOODTrainer
