"""MixOE — Mixture Outlier Exposure (Zhang, Inkawhich, Linderman, Chen & Li, Mixture Outlier Exposure: Towards
Out-of-Distribution Detection in Fine-grained Environments, WACV 2023) [zjysteven/MixOE ``train/train_mixoe.py``;
OpenOOD v1.5 ``trainers/mixoe_trainer.py``].

Fine-tunes the cached cross-entropy classifier (``finetunes = True``), as the authors (and OpenOOD) do: 10 epochs at
lr 0.001 (``finetune_epochs`` / ``finetune_lr``). Each batch (x, y) of B images gets B outliers o (one per image, from
the outlier source below) and one mixing weight λ ~ Beta(α, α) (α = ``mix_alpha``), and

* ``mix_op: cutmix`` (default) pastes a box of the outliers into the ID images — box side √(1 − λ) of the image's
  sides, centre uniform over the image, clipped at the border (the authors' ``rand_bbox``) — and λ becomes the ID
  fraction left, 1 − box area / (H·W);
* ``mix_op: mixup`` blends them, x̃ = λ x + (1 − λ) o.

The mixed images' target is λ·onehot(y) + (1 − λ)·uniform, and the loss (two forward passes, as the authors'):

    L = CE(f(x), y) + β · mean_i [ −Σ_c t_ic log softmax(f(x̃_i))_c ],   t_i = λ onehot(y_i) + (1 − λ) / K,

β = ``mix_beta``. Defaults: the authors' cutmix setting, α = 2, β = 5 (their train.sh; mixup: α = 1, β = 5).
OpenOOD reads the paper's two numbers differently — λ ~ Beta(α, β) with α = 0.1, β = 1 and a separate weight
λ_oe = 1 — which these knobs do not reproduce (set ``mix_alpha``/``mix_beta`` to taste).

Outliers, knob ``outliers`` — the same sources as Outlier Exposure (:class:`methods.outlier_synthesis.OutlierSource`,
its knobs and defaults): ``aux`` is the paper's setting (a real auxiliary set, ``bench.aux``: the authors use
WebVision), which the bundled benchmarks do not have; the synthetic sources (``gaussian`` by default, ``dmr``,
``kirby``, ``ascood``) stand in for it there. Mixing happens in the network's normalised input space, where the
sources return their outliers; normalisation is affine per channel, so mixup and cutmix give the same images as in
pixel space. λ and the box come from a generator seeded by (seed, epoch). Scoring: MSP by default (the paper's
score), any post-hoc scorer via knob ``scorer``.

Deliberate differences: without an auxiliary set the outliers are synthetic (above; tag ``substitute``); the
fine-tuning keeps the recipe's batch size, momentum and weight decay (the authors: batch 32, wd 1e-5).
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from methods import register
from methods.base import Method
from methods.outlier_synthesis import OE_SOURCE_KNOBS, OutlierSource
from orchestrator.knobs import Choice, Float, ScorerChoice
from orchestrator.recipe import finetune_knobs
from orchestrator.training import EpochStreams, FineTuner

MIX_OPS = ("cutmix", "mixup")
#: Tag of MixOE's random stream (see orchestrator.training.EpochStreams).
STREAM = 0x313E


def soft_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Batch mean of −Σ_c t_c log softmax(z)_c."""
    return -(targets * F.log_softmax(logits, dim=1)).sum(dim=1).mean()


def soft_targets(y: torch.Tensor, lam: float, num_classes: int) -> torch.Tensor:
    """λ·onehot(y) + (1 − λ)·uniform over the K classes."""
    return lam * F.one_hot(y, num_classes).float() + (1.0 - lam) / num_classes


def cutmix_box(height: int, width: int, lam: float, rng: np.random.Generator) -> tuple[int, int, int, int]:
    """(r1, r2, c1, c2): a box of sides int(H·√(1−λ)) × int(W·√(1−λ)) centred at a uniform pixel, clipped to the
    image (the authors' rand_bbox, with rows on the height axis)."""
    cut = math.sqrt(1.0 - lam)
    cut_h, cut_w = int(height * cut), int(width * cut)
    cr, cc = int(rng.integers(height)), int(rng.integers(width))
    r1, r2 = int(np.clip(cr - cut_h // 2, 0, height)), int(np.clip(cr + cut_h // 2, 0, height))
    c1, c2 = int(np.clip(cc - cut_w // 2, 0, width)), int(np.clip(cc + cut_w // 2, 0, width))
    return r1, r2, c1, c2


def cutmix(x: torch.Tensor, outliers: torch.Tensor, box: tuple[int, int, int, int]) -> tuple[torch.Tensor, float]:
    """(x with the box replaced by the outliers' pixels, the ID fraction left 1 − box area / (H·W))."""
    r1, r2, c1, c2 = box
    mixed = x.clone()
    mixed[:, :, r1:r2, c1:c2] = outliers[:, :, r1:r2, c1:c2]
    return mixed, 1.0 - (r2 - r1) * (c2 - c1) / (x.shape[-2] * x.shape[-1])


class MixOETrainer(FineTuner):
    default_epochs = 10
    default_lr = 0.001

    def __init__(self, params, device="cpu", seed=0):
        super().__init__(params, device, seed)
        self.op = params["mix_op"]
        if self.op not in MIX_OPS:
            raise ValueError(f"mixoe mix_op must be one of {MIX_OPS}, got {self.op!r}")
        self.alpha = float(params["mix_alpha"])
        self.beta = float(params["mix_beta"])
        self.source = OutlierSource(params)
        self.streams = EpochStreams(seed, STREAM)

    def prepare(self, model) -> None:
        self.source.prepare(self.bench, self.seed)

    def mixed(self, xn: torch.Tensor, outliers: torch.Tensor, epoch: int) -> tuple[torch.Tensor, float]:
        """The mixed batch (normalised space) and its λ (the ID fraction)."""
        rng = self.streams.at(epoch).numpy
        lam = float(rng.beta(self.alpha, self.alpha))
        if self.op == "mixup":
            return lam * xn + (1.0 - lam) * outliers, lam
        return cutmix(xn, outliers, cutmix_box(xn.shape[-2], xn.shape[-1], lam, rng))

    def loss(self, model, x, y, epoch):
        xn = model.normalize(x)
        id_loss = F.cross_entropy(model.logits_from_normalized(xn), y)
        outliers = self.source.batch(model, x, y, epoch, self.epochs)
        mixed, lam = self.mixed(xn, outliers, epoch)
        targets = soft_targets(y, lam, self.bench.num_classes)
        return id_loss + self.beta * soft_cross_entropy(model.logits_from_normalized(mixed), targets)


@register("mixoe")
class MixOE(Method):
    paper = ("Zhang et al., Mixture Outlier Exposure: Towards Out-of-Distribution Detection in Fine-grained "
             "Environments, WACV 2023")
    substitute = ("without an auxiliary outlier set (outliers=aux): synthetic outliers (gaussian, dmr, kirby, ascood; "
                  "as Outlier Exposure's sources)")
    finetunes = True
    knobs = (
        Choice("mix_op", "cutmix", MIX_OPS, network=True, help="how outliers are mixed into the ID images"),
        Float("mix_alpha", 2.0, gt=0, network=True, help="mixing weight λ ~ Beta(mix_alpha, mix_alpha)"),
        Float("mix_beta", 5.0, ge=0, network=True, help="weight β of the mixed samples' soft cross-entropy"),
        *OE_SOURCE_KNOBS,
        *finetune_knobs(10, 0.001),
        ScorerChoice("scorer", "msp", help="post-hoc method scoring the fine-tuned network"),
    )

    def trainer_class(self):
        return MixOETrainer
