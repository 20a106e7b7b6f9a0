"""KIRBY (Kwon et al., AAAI 2023: virtual outliers by class-discriminative region erasing and inpainting), the
baseline generator of the DMR paper; post-hoc on the frozen CE classifier.

For each training image: Grad-CAM on the last feature map for the predicted class, normalised to [0, 1] per image
((cam − min)/(max − min)) and bilinearly upsampled to the image size; pixels with CAM ≥ ``threshold`` (0.3) are
erased and refilled, the result passed through the frozen classifier; the same rejection head as DMR
(:func:`methods.outlier_synthesis.train_rejection_head`) is trained on ID features vs these features, each ID sample
swapped for its own erased-and-inpainted version with probability ood_prob; S = −(rejection logit).

**Substitute:** the authors fill the erased region with a pretrained inpainting network; we use harmonic (Laplace)
diffusion
inpainting — erased pixels start at the mean of the image's un-erased pixels, then ``inpaint_iters`` (default
2·max(H, W)) Jacobi iterations set each erased pixel to the mean of its 4 neighbours (replicate padding),
un-erased pixels fixed. No OpenCV. The classifier's weights are never changed (Grad-CAM uses
``torch.autograd.grad`` w.r.t. the feature map only, in eval mode).
"""
from __future__ import annotations

import numpy as np
import torch

from methods import register
from methods.base import Method, Outputs
from methods.outlier_synthesis import HEAD_KNOBS, RejectionScorer, head_kwargs, kirby_images
from orchestrator.knobs import Float, Int
from orchestrator.training import to_float

SUBSTITUTE = "Grad-CAM erasing with diffusion (Laplace) inpainting instead of a learned inpainting network"


def kirby_features(model, images: np.ndarray, threshold: float = 0.3, iters: int | None = None,
                   batch_size: int = 256) -> np.ndarray:
    """Penultimate features of the erased-and-inpainted ``images`` (uint8), through the frozen ``model``."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    feats = []
    for s in range(0, len(images), batch_size):
        x = to_float(images[s:s + batch_size], device)
        xk, _ = kirby_images(model, x, threshold, iters)
        with torch.no_grad():
            feats.append(model.forward_all(xk)[1].float().cpu().numpy())
    model.train(was_training)
    return np.concatenate(feats)


class KirbyScorer(RejectionScorer):
    needs_train_images = True

    def __init__(self, threshold: float = 0.3, inpaint_iters: int | None = None, **head_kw):
        super().__init__(**head_kw)
        self.threshold = float(threshold)
        if not 0.0 < self.threshold <= 1.0:
            raise ValueError(f"kirby threshold must be in (0, 1], got {threshold}")
        self.inpaint_iters = None if inpaint_iters is None else int(inpaint_iters)

    def fit(self, train: Outputs, model=None, images=None, **extra) -> KirbyScorer:
        if model is None or images is None:
            raise ValueError("kirby needs the model and the training images (needs_train_images) to fit")
        if len(images) != len(train):
            raise ValueError(f"kirby: {len(images)} images for {len(train)} training outputs")
        synth = kirby_features(model, images, self.threshold, self.inpaint_iters)
        self.synth_features_ = synth
        return self.train_head(train.features, lambda idx, rng: synth[idx])


@register("kirby")
class Kirby(Method):
    reads = "network"
    paper = "Kwon et al., KIRBY: virtual outliers from class-discriminative region erasing, AAAI 2023"
    substitute = SUBSTITUTE
    knobs = (
        Float("threshold", 0.3, gt=0, le=1, help="erase the pixels whose normalised Grad-CAM is ≥ threshold"),
        Int("inpaint_iters", None, ge=0, optional=True,
            help="Jacobi iterations of the diffusion inpainting (null: 2·max(H, W))"),
        *HEAD_KNOBS,
    )

    def scorer(self, params):
        return KirbyScorer(params["threshold"], params["inpaint_iters"], **head_kwargs(params))
