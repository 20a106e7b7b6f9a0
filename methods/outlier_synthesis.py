"""Shared pieces of the outlier-synthesis methods (DMR, KIRBY, Outlier Exposure). No method is registered here.

* The rejection head (DMR / KIRBY): MLP feature → hidden (2048) → 1, trained with BCE (OOD label 1) on frozen ID
  features where each ID sample is swapped for a synthetic one with probability ``ood_prob`` (0.5);
  SGD lr 0.01, wd 4e-4, momentum 0.8 nesterov, cosine per step, 10 epochs [Dasol-Choi/DMR].
  The score is S = −logit (higher = more in-distribution). :class:`RejectionScorer` is the Scorer both use;
  :data:`HEAD_KNOBS` declares its knobs (both methods list ``*HEAD_KNOBS``).
* DMR in feature space (substitute for StyleGAN-XL latents): marginal representation m = h − μ_y;
  ``single``: each sample's own marginal; ``multiple``: mean of the marginals of k samples of k distinct classes;
  ``without_dmr`` (ablation): mean of the raw, uncentred features of k samples of k distinct classes.
  In every variant the result is multiplied by s with probability p (so the ablation differs only by centring).
* KIRBY (pixel space): Grad-CAM on the last feature map for the predicted class, normalised to [0, 1] per
  image ((cam − min)/(max − min)), bilinearly upsampled to the image size; pixels with CAM ≥ threshold (0.3)
  are erased and filled by harmonic (Laplace) inpainting: erased pixels start at the mean of the image's
  un-erased pixels, then Jacobi iterations replace each erased pixel by the mean of its 4 neighbours
  (replicate padding at the border) while un-erased pixels stay fixed. No OpenCV.
* Outlier sources for Outlier Exposure (pixel or normalised space), see :class:`OutlierSource`.
"""
from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from methods import ascood
from methods.ascood import OUTLIER_KNOBS as ASCOOD_OUTLIER_KNOBS
from methods.base import FeatureScorer, Outputs
from orchestrator.knobs import Choice, Float, Int

VARIANTS = ("single", "multiple", "without_dmr")
ANCHORS = ("origin", "mean")


# ============================================================================ rejection head (DMR, KIRBY)
class RejectionHead(nn.Module):
    """feature → hidden → 1 (the OOD logit)."""

    def __init__(self, dim: int, hidden: int = 2048):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, 1))

    def forward(self, h):
        return self.net(h).squeeze(1)


def train_rejection_head(features: np.ndarray, synth: Callable[[np.ndarray, np.random.Generator], np.ndarray],
                         hidden: int = 2048, epochs: int = 10, lr: float = 0.01, weight_decay: float = 4e-4,
                         momentum: float = 0.8, batch_size: int = 128, ood_prob: float = 0.5,
                         seed: int = 0) -> RejectionHead:
    """Train the head on ID ``features`` (N, d); ``synth(idx, rng)`` returns synthetic features for those ID
    indices (rows aligned with ``idx``). Each ID sample of a batch is swapped for its synthetic counterpart with
    probability ``ood_prob`` (label 1), the rest keep label 0. Runs on the CPU (the head is tiny)."""
    if not 0.0 < ood_prob < 1.0:
        raise ValueError(f"ood_prob must be in (0, 1), got {ood_prob}")
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    feats = np.asarray(features, dtype=np.float32)
    n = len(feats)
    head = RejectionHead(feats.shape[1], int(hidden))
    opt = torch.optim.SGD(head.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=True)
    steps = max(1, int(epochs) * math.ceil(n / batch_size))
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
    head.train()
    for _ in range(int(epochs)):
        order = rng.permutation(n)
        for start in range(0, n, batch_size):
            idx = order[start:start + batch_size]
            xb = feats[idx].copy()
            swap = rng.random(len(idx)) < ood_prob
            if swap.any():
                xb[swap] = synth(idx[swap], rng)
            logit = head(torch.from_numpy(xb))
            loss = F.binary_cross_entropy_with_logits(logit, torch.from_numpy(swap.astype(np.float32)))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    return head.eval()


#: The rejection head's knobs (the authors' defaults), read by :func:`head_kwargs`; post-hoc: the network is frozen.
HEAD_KNOBS = (
    Int("hidden", 2048, ge=1, help="width of the rejection head's hidden layer"),
    Int("head_epochs", 10, ge=1, help="training epochs of the rejection head"),
    Float("head_lr", 0.01, gt=0, help="the rejection head's SGD learning rate (cosine-annealed per step)"),
    Float("head_wd", 4e-4, ge=0, help="the rejection head's weight decay"),
    Float("ood_prob", 0.5, gt=0, lt=1, help="probability that an ID sample is swapped for its synthetic counterpart"),
    Int("head_seed", 0, ge=0, help="seed of the rejection head's initialisation, batches and swaps"),
)


def head_kwargs(params) -> dict:
    """:func:`train_rejection_head`'s keyword arguments from the :data:`HEAD_KNOBS` values in ``params``."""
    return {"hidden": int(params["hidden"]), "epochs": int(params["head_epochs"]), "lr": float(params["head_lr"]),
            "weight_decay": float(params["head_wd"]), "ood_prob": float(params["ood_prob"]),
            "seed": int(params["head_seed"])}


class RejectionScorer(FeatureScorer):
    """S = −(rejection logit) of the penultimate feature; subclasses build the synthetic features in ``fit``."""

    needs_fit = True

    def __init__(self, **head_kw):
        self.head_kw = head_kw
        self.head_: RejectionHead | None = None

    def train_head(self, features: np.ndarray, synth) -> RejectionScorer:
        self.head_ = train_rejection_head(features, synth, **self.head_kw)
        return self

    def score(self, outputs: Outputs) -> np.ndarray:
        if self.head_ is None:
            raise RuntimeError(f"{type(self).__name__}: call fit() before score()")
        with torch.no_grad():
            # A copy: cached outputs are read-only memory maps, which PyTorch warns about wrapping.
            logit = self.head_(torch.from_numpy(np.array(outputs.features, dtype=np.float32)))
        return -logit.double().numpy()


# ============================================================================ DMR in feature space
def class_means(h: np.ndarray, y: np.ndarray, num_classes: int | None = None) -> np.ndarray:
    num_classes = int(num_classes or (y.max() + 1))
    return np.stack([h[y == c].mean(axis=0) if (y == c).any() else np.zeros(h.shape[1]) for c in range(num_classes)])


def amplify(v: np.ndarray, s: float, p: float, rng: np.random.Generator) -> np.ndarray:
    """Multiply each row by s with probability p."""
    hit = rng.random(len(v)) < p
    out = v.copy()
    out[hit] *= s
    return out


class ClassSampler:
    """Draws, n times, one random sample from each of k distinct random classes (vectorised)."""

    def __init__(self, y: np.ndarray):
        y = np.asarray(y).astype(np.int64)
        self.classes = np.unique(y)
        self.order = np.argsort(y, kind="stable")
        counts = np.array([(y == c).sum() for c in self.classes])
        self.counts, self.offsets = counts, np.concatenate([[0], np.cumsum(counts)[:-1]])

    def draw(self, n: int, k: int, rng: np.random.Generator) -> np.ndarray:
        """(n, k) sample indices; the k samples of a row have k distinct classes."""
        cls = np.argsort(rng.random((n, len(self.classes))), axis=1)[:, :k]  # positions in self.classes
        pick = self.offsets[cls] + np.floor(rng.random((n, k)) * self.counts[cls]).astype(np.int64)
        return self.order[pick]


class DMRSynthesizer:
    """Synthetic features from the training features (h, y) — see the module docstring for the variants."""

    def __init__(self, h: np.ndarray, y: np.ndarray, variant: str = "single", s: float = 3.0, p: float = 0.5,
                 k: int = 5, anchor: str = "origin"):
        if variant not in VARIANTS:
            raise ValueError(f"dmr variant must be one of {VARIANTS}, got {variant!r}")
        self.h = np.asarray(h, dtype=np.float64)
        self.y = np.asarray(y).astype(np.int64)
        self.variant, self.s, self.p = variant, float(s), float(p)
        self.classes = np.unique(self.y)
        if variant != "single" and not 2 <= int(k) <= len(self.classes):
            raise ValueError(f"dmr k must be in [2, {len(self.classes)}] (number of classes), got {k}")
        self.k = int(k)
        if anchor not in ANCHORS:
            raise ValueError(f"dmr anchor must be one of {ANCHORS}, got {anchor!r}")
        self.anchor = anchor
        self.means = class_means(self.h, self.y)
        self.marginal = self.h - self.means[self.y]
        self.sampler = ClassSampler(self.y)

    def _mix(self, source: np.ndarray, n: int, rng) -> np.ndarray:
        """Mean of ``source`` rows of k samples drawn from k distinct classes, n times."""
        return source[self.sampler.draw(n, self.k, rng)].mean(axis=1)

    def raw(self, idx: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Before amplification."""
        if self.variant == "single":
            return self.marginal[idx]
        return self._mix(self.marginal if self.variant == "multiple" else self.h, len(idx), rng)

    def __call__(self, idx: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        out = amplify(self.raw(idx, rng), self.s, self.p, rng)
        if self.anchor == "mean" and self.variant != "without_dmr":
            # decode the marginal around the data's centre, as a generator decodes latents around w_avg
            out = out + self.h.mean(axis=0)
        return out.astype(np.float32)


# ============================================================================ KIRBY (pixel space)
def grad_cam(model, x: torch.Tensor) -> torch.Tensor:
    """Grad-CAM of the predicted class on the last feature map, normalised to [0, 1] per image and upsampled to
    the input size. ``x`` raw in [0, 1]. Eval mode; parameter gradients are never written."""
    was_training = model.training
    model.eval()
    with torch.enable_grad():
        xg = x.detach()
        h, fmap = model.embed_normalized(model.normalize(xg))
        logits = model.head(h)
        pred = logits.argmax(1)
        (g,) = torch.autograd.grad(logits.gather(1, pred[:, None]).sum(), fmap)
    model.train(was_training)
    weights = g.mean(dim=(2, 3), keepdim=True)
    cam = F.relu((weights * fmap.detach()).sum(1, keepdim=True))
    flat = cam.flatten(1)
    lo, hi = flat.min(1).values.view(-1, 1, 1, 1), flat.max(1).values.view(-1, 1, 1, 1)
    cam = (cam - lo) / (hi - lo).clamp_min(1e-12)
    cam = F.interpolate(cam, size=x.shape[-2:], mode="bilinear", align_corners=False)
    return cam[:, 0].clamp(0.0, 1.0)


def diffusion_inpaint(x: torch.Tensor, erase: torch.Tensor, iters: int | None = None) -> torch.Tensor:
    """Fill pixels where ``erase`` (B, H, W) is True: start from the mean of the image's un-erased pixels (per
    channel), then Jacobi iterations of the 4-neighbour mean on erased pixels only (un-erased pixels fixed)."""
    b, c, hgt, wid = x.shape
    m = erase[:, None].expand(b, c, hgt, wid).to(x.dtype)
    keep = 1.0 - m
    count = keep.sum(dim=(2, 3), keepdim=True)
    fill = (x * keep).sum(dim=(2, 3), keepdim=True) / count.clamp_min(1.0)
    fill = torch.where(count > 0, fill, torch.full_like(fill, 0.5))
    out = x * keep + fill * m
    for _ in range(iters if iters is not None else 2 * max(hgt, wid)):
        p = F.pad(out, (1, 1, 1, 1), mode="replicate")
        avg = (p[:, :, :-2, 1:-1] + p[:, :, 2:, 1:-1] + p[:, :, 1:-1, :-2] + p[:, :, 1:-1, 2:]) / 4.0
        out = x * keep + avg * m
    return out


def kirby_images(model, x: torch.Tensor, threshold: float = 0.3, iters: int | None = None):
    """(inpainted images, erase mask): erase CAM ≥ threshold, inpaint. ``x`` raw in [0, 1]."""
    cam = grad_cam(model, x)
    erase = cam >= threshold
    return diffusion_inpaint(x.detach(), erase, iters), erase


# ============================================================================ Outlier Exposure sources
OE_SOURCES = ("aux", "dmr", "kirby", "ascood", "gaussian")

#: The knobs :class:`OutlierSource` reads (Outlier Exposure lists ``*OE_SOURCE_KNOBS``); they shape the outliers the
#: network is trained against, so all are network knobs. The ascood source's knobs are ASCOOD's own declaration
#: (methods/ascood.py) and its synthesis ASCOOD's code, so ``outliers: ascood`` makes exactly ASCOOD's outliers.
OE_SOURCE_KNOBS = (
    Choice("outliers", "gaussian", OE_SOURCES, network=True,
           help="outlier source (aux needs a benchmark with an auxiliary set)"),
    Choice("dmr_variant", "single", VARIANTS, network=True, help="outliers=dmr: which marginal images"),
    Float("dmr_s", 3.0, gt=0, network=True, help="outliers=dmr: amplification of the deviation from the mean image"),
    Float("dmr_p", 0.5, ge=0, le=1, network=True, help="outliers=dmr: probability of amplifying"),
    Int("dmr_k", 5, ge=2, network=True,
        help="outliers=dmr: images of distinct classes mixed by multiple / without_dmr (at most the class count)"),
    Float("kirby_threshold", 0.3, gt=0, le=1, network=True, help="outliers=kirby: erase pixels with Grad-CAM ≥ it"),
    Float("gaussian_std", 1.0, gt=0, network=True, help="outliers=gaussian: standard deviation in normalised space"),
    *ASCOOD_OUTLIER_KNOBS,  # outliers=ascood
)


class OutlierSource:
    """Per-batch outliers for Outlier Exposure, returned in the model's **normalised** input space.

    * ``aux``: random images from the benchmark's auxiliary sets (``bench.aux``, all sets pooled); a benchmark
      without one is an error.
    * ``dmr`` — pixel-space substitute of DMR (no generator): with x̄ the mean training image and μ_c the class
      mean images, ``single``: x̄ + (x − μ_y); ``multiple``: x̄ + mean of (x_j − μ_{y_j}) over k training images of
      k distinct classes; ``without_dmr``: mean of those k raw images; each amplified (the deviation from x̄ is
      multiplied by s) with probability p, then clipped to [0, 1]. Knobs dmr_variant, dmr_s, dmr_p, dmr_k.
    * ``kirby``: :func:`kirby_images` of the ID batch with the network being trained (Grad-CAM in eval mode).
      Knob kirby_threshold.
    * ``ascood``: methods.ascood's generators on the ID batch (ood_type gradient/shuffle/gaussian, p_inv,
      alpha_max, alpha_min / alpha_min_frac with ascood's linear α decay), with ASCOOD's knobs and defaults.
    * ``gaussian``: N(0, gaussian_std²) in the normalised input space.
    One outlier per ID sample of the batch. ``params``: the resolved knobs (:data:`OE_SOURCE_KNOBS`).
    """

    def __init__(self, params):
        self.kind = params["outliers"]
        if self.kind not in OE_SOURCES:
            raise ValueError(f"oe outliers must be one of {OE_SOURCES}, got {self.kind!r}")
        self.variant = params["dmr_variant"]
        if self.variant not in VARIANTS:
            raise ValueError(f"oe dmr_variant must be one of {VARIANTS}, got {self.variant!r}")
        self.s, self.p, self.k = float(params["dmr_s"]), float(params["dmr_p"]), int(params["dmr_k"])
        self.threshold = float(params["kirby_threshold"])
        self.std = float(params["gaussian_std"])
        self.ascood = ascood.OutlierSynthesis(params, "oe") if self.kind == "ascood" else None
        self.rng = None

    def prepare(self, bench, seed: int = 0) -> None:
        self.rng = np.random.default_rng([seed, 7919])
        if self.kind == "aux":
            if not bench.aux:
                raise ValueError(f"oe outliers=aux needs an auxiliary outlier set, but benchmark {bench.name!r} has "
                                 f"none; use outliers dmr, kirby, ascood or gaussian")
            self.pool = np.concatenate([bench.aux[k].x for k in sorted(bench.aux)])
        elif self.kind == "dmr":
            x = bench.id_train.x.astype(np.float32) / 255.0
            y = np.asarray(bench.id_train.y)
            self.train_x, self.train_y = bench.id_train.x, y
            self.global_mean = torch.from_numpy(x.mean(0))
            self.means = torch.from_numpy(np.stack([x[y == c].mean(0) for c in range(bench.num_classes)]))
            self.sampler = ClassSampler(y)
            if self.variant != "single" and not 2 <= self.k <= len(self.sampler.classes):
                raise ValueError(f"oe dmr_k must be in [2, {len(self.sampler.classes)}], got {self.k}")

    def dmr_pixels(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        dev = x.device
        mean, means = self.global_mean.to(dev), self.means.to(dev)
        if self.variant == "single":
            dev_ = x - means[y]
        else:
            picks = self.sampler.draw(len(x), self.k, self.rng)  # (B, k), distinct classes per row
            imgs = torch.from_numpy(self.train_x[picks.ravel()]).to(dev).float().div_(255.0)
            imgs = imgs.view(len(x), self.k, *x.shape[1:])
            if self.variant == "multiple":
                labels = torch.from_numpy(self.train_y[picks.ravel()]).to(dev).view(len(x), self.k)
                dev_ = (imgs - means[labels]).mean(1)
            else:
                dev_ = imgs.mean(1) - mean
        hit = torch.from_numpy(self.rng.random(len(x)) < self.p).to(dev)
        scale = torch.where(hit, torch.tensor(self.s, device=dev), torch.tensor(1.0, device=dev)).view(-1, 1, 1, 1)
        return (mean + scale * dev_).clamp(0.0, 1.0)

    def batch(self, model, x: torch.Tensor, y: torch.Tensor, epoch: int, epochs: int) -> torch.Tensor:
        """Outliers for the raw ID batch ``x`` in [0, 1], in normalised space, detached."""
        if self.kind == "aux":
            idx = np.sort(self.rng.choice(len(self.pool), len(x), replace=len(self.pool) < len(x)))
            out = model.normalize(torch.from_numpy(self.pool[idx]).to(x.device).float().div_(255.0))
        elif self.kind == "dmr":
            out = model.normalize(self.dmr_pixels(x, y))
        elif self.kind == "kirby":
            out = model.normalize(kirby_images(model, x, self.threshold)[0])
        elif self.kind == "gaussian":
            out = self.std * torch.randn_like(x)
        else:
            out = self.ascood(model, model.normalize(x), y, epoch, epochs)
        return out.detach()
