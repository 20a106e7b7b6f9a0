"""Outlier Exposure (Hendrycks, Mazeika & Dietterich, Deep Anomaly Detection with Outlier Exposure, ICLR 2019).

Trained from scratch (the benchmark's recipe): one forward pass on [x_in, x_out],
L = CE(f(x_in), y) + λ·mean over outliers of [logsumexp(z) − mean_c z_c]   (CE to the uniform distribution),
λ = ``oe_lambda`` (0.5). One outlier per ID sample of each batch. Scoring: MSP by default, any post-hoc scorer
via knob ``scorer``.

Outlier source, knob ``outliers`` (see :class:`methods.outlier_synthesis.OutlierSource` for exact definitions):
``aux`` a real auxiliary set from ``bench.aux``, all its sets pooled (error when the benchmark has none — the
bundled ones have none),
``dmr`` a **pixel-space substitute** of DMR: no generator is trained; the marginal is taken on images,
x̄ + (x − μ_y) (single), x̄ + mean of k class-distinct marginals (multiple) or the mean of k class-distinct
raw images (without_dmr), the deviation from the mean image x̄ amplified ×s with probability p, clipped to [0, 1];
``kirby`` Grad-CAM erase (CAM ≥ threshold) + diffusion inpainting of the ID batch, with the network being
trained; ``ascood`` ASCOOD's generators (methods.ascood: gradient / shuffle / gaussian, α decaying per epoch;
ASCOOD's knobs and defaults);
``gaussian`` N(0, gaussian_std²) in normalised input space (the default: it needs no extra data).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from methods import register
from methods.base import Method
from methods.outlier_synthesis import OE_SOURCE_KNOBS, OutlierSource
from orchestrator.knobs import Float, ScorerChoice
from orchestrator.training import Trainer


def oe_penalty(logits: torch.Tensor) -> torch.Tensor:
    """Batch mean of logsumexp(z) − mean_c z_c, the cross-entropy to the uniform distribution."""
    return (torch.logsumexp(logits, dim=1) - logits.mean(dim=1)).mean()


class OETrainer(Trainer):
    def __init__(self, params, device="cpu", seed=0):
        super().__init__(params, device, seed)
        self.lam = float(params["oe_lambda"])
        self.source = OutlierSource(params)

    def prepare(self, model) -> None:
        self.source.prepare(self.bench, self.seed)

    def loss(self, model, x, y, epoch):
        x_out = self.source.batch(model, x, y, epoch, self.epochs)
        logits = model.logits_from_normalized(torch.cat([model.normalize(x), x_out]))
        z_in, z_out = logits[: len(x)], logits[len(x):]
        return F.cross_entropy(z_in, y) + self.lam * oe_penalty(z_out)


@register("oe")
class OutlierExposure(Method):
    paper = "Hendrycks, Mazeika & Dietterich, Deep Anomaly Detection with Outlier Exposure, ICLR 2019"
    substitute = ("only with outliers=dmr or kirby: pixel-space marginal images instead of StyleGAN-XL latents (dmr); "
                  "Grad-CAM erase + diffusion inpainting (kirby)")
    knobs = (
        Float("oe_lambda", 0.5, ge=0, network=True, help="weight λ of the outliers' cross-entropy to uniform"),
        *OE_SOURCE_KNOBS,
        ScorerChoice("scorer", "msp", help="post-hoc method scoring the trained network"),
    )

    def trainer_class(self):
        return OETrainer
