"""Gram matrices (Sastry & Oore, Detecting Out-of-Distribution Examples with Gram Matrices, ICML 2020).

For every block l of the backbone (its output F, C_l × HW per sample) and every power p = 1…P, the Gram features
are the row sums of the p-th order Gram matrix, to the 1/p (sign-preserving):

    G_{l,p}[i] = sign(r_i)·|r_i|^{1/p},   r = rowsum((F^p)(F^p)ᵀ),   F^p elementwise,   C_l values per (l, p).

Fit (ID training images, predicted class ŷ as in the paper): per class c the elementwise min and max of every
G_{l,p} over the images predicted as c. Deviation of an image predicted as c, per layer:

    δ_l(x) = Σ_{p ≤ P} Σ_i relu(min − G)/max(|min|, ε) + relu(G − max)/max(|max|, ε),   ε = 1e-6,

then D_l(x) = δ_l(x)/conf(x), conf = the maximum softmax probability (``divide_by_confidence``; δ_l itself when
off), and the ID-ness score

    S(x) = −Σ_l D_l(x) / (E_holdout[D_l] + 1e-7),

the total deviation normalised per layer by its mean on held-out ID images (higher = more in-distribution).

Where this follows which reference, and every deliberate difference:

- Powers: P = 10 by default, the paper's (its code uses p ∈ range(1, 11)); OpenOOD v1.5 uses 1…5 (its sweep has that
  single grid point). The search space covers P ∈ [1, 10].
- Layers: the output of every backbone block, through the classifier's optional member ``forward_blocks``
  (:mod:`orchestrator.models.protocol`): the small CNN's three conv-bn-relu(-pool) blocks; ResNet-18's stem and its
  four stages (OpenOOD's ResNet18_32x32 ``feature_list``, the last un-pooled). The paper's code records far more
  maps (each conv, BN-ReLU, shortcut and block output inside every residual block) and OpenOOD's gram postprocessor
  hooks every ``nn.Conv2d``/``nn.ReLU`` module (for ResNet18_32x32, whose ReLUs are functional: its 20 conv
  outputs, before BN). Block outputs are what any backbone can expose through one protocol member, at a fraction
  of the cost. A network without the member (an ``adapt``-ed module) raises a ValueError naming it.
- Class: the predicted class, in the fit as in scoring (the paper and its code); OpenOOD takes the training
  labels for the min/max. A class that no fit image is predicted as gets the min/max over all fit images.
- Normalisation: the paper divides by the expected deviation on validation data (its code: 10% of the ID *test*
  set). Our fit sees training images only, and on the images that set the min/max every deviation is 0 by
  construction, so a seeded random 10% of the training images (``holdout``, ``seed``) is held out of the min/max and
  normalises: OpenOOD's 90/10 split (it splits per label; we split uniformly). With no image held out (fewer than
  10 training images) the normaliser is 1. The 1e-7 is the paper's code's (OpenOOD has none: a layer on which no
  held-out image deviates would divide by zero).
- Confidence: the paper's code and OpenOOD both divide the deviation by the maximum softmax probability (METHODS.md's
  formula does not). Default on (what their numbers use); ``divide_by_confidence: false`` gives the plain
  normalised deviation. The normaliser is the held-out mean of the same (divided) D_l, as in the paper's
  code (OpenOOD normalises the undivided δ_l and divides by conf afterwards).
- ε: max(|min|, 1e-6) where both references write |min + 1e-6| (which is 0 for min = −1e-6).
- Numerics: r = F^p·(F^pᵀ·1) (the same row sums, O(C·HW) instead of O(C²·HW)), in float64, with each sample's map
  scaled by m = max|F| first and m² multiplied back after the root (exact: G_p(mF̃) = m²·G_p(F̃)); the references
  compute (F^p)(F^p)ᵀ in float32, which overflows for large activations at p = 10.

Cost: the network runs on the training images at fit and on every scored split (batches of 256, no gradients).
Everything before the knobs apply — per image its predicted class, confidence and the per-(layer, power) deviations
for p ≤ max(P, 10) — is memoised in the process (keyed by digests of the network, the fit images and the batch),
so the next trial of a P sweep on the same network runs no network at all.
"""
from __future__ import annotations

import contextlib
from numbers import Integral

import numpy as np
import torch

from methods import register
from methods.base import Method, NetworkScorer, Outputs
from methods.memo import Memo, NetworkDigests, digest_bytes
from orchestrator.knobs import Bool, Int
from orchestrator.models.protocol import forward_blocks

#: The paper's P (its code: p = 1…10).
DEFAULT_POWERS = 10
#: Powers computed (and memoised) at least, so that every P up to it reuses one pass of the network.
MEMO_POWERS = 10
#: Floor of |min| and |max| in the deviation's denominators.
EPS = 1e-6
#: Added to the held-out mean deviation of each layer (the paper's code's 10**-7).
NORM_EPS = 1e-7
#: Fraction of the training images held out of the min/max to normalise the deviations (OpenOOD's 10%).
HOLDOUT = 0.1
BATCH_SIZE = 256
#: Process-wide memos: fits by (network, images, holdout, seed, powers), per-batch tables by (fit, network, batch).
FIT_ENTRIES = 2
MEMO_BYTES = 256 * 2**20
_FITS = Memo(max_entries=FIT_ENTRIES)
_TABLES = Memo(max_bytes=MEMO_BYTES)


def forget_memoised() -> None:
    """Forget the fits and per-batch deviation tables memoised in this process."""
    _FITS.clear()
    _TABLES.clear()


def gram_features(fmap: torch.Tensor, powers: int) -> torch.Tensor:
    """(N, powers, C) float64: for p = 1…powers the row sums of (F^p)(F^p)ᵀ to the 1/p, sign-preserving, of each
    sample's map F (C × H·W) of ``fmap`` (N, C, H, W)."""
    n, c = fmap.shape[:2]
    f = fmap.detach().reshape(n, c, -1).to(torch.float64)
    scale = f.abs().amax(dim=(1, 2), keepdim=True)  # (N, 1, 1): G_p(m·F̃) = m²·G_p(F̃)
    unit = f / scale.clamp_min(torch.finfo(torch.float64).tiny)
    out, q = [], unit
    for p in range(1, powers + 1):
        if p > 1:
            q = q * unit
        rows = torch.bmm(q, q.sum(dim=1).unsqueeze(2)).squeeze(2)  # (N, C): F^p (F^pᵀ 1)
        out.append(rows.sign() * rows.abs().pow(1.0 / p))
    return torch.stack(out, dim=1) * scale.view(n, 1, 1) ** 2


def deviation(values: np.ndarray, low: np.ndarray, high: np.ndarray, eps: float = EPS) -> np.ndarray:
    """Σ over the last axis of relu(low − v)/max(|low|, eps) + relu(v − high)/max(|high|, eps)."""
    below = np.maximum(low - values, 0.0) / np.maximum(np.abs(low), eps)
    above = np.maximum(values - high, 0.0) / np.maximum(np.abs(high), eps)
    return (below + above).sum(axis=-1)


@contextlib.contextmanager
def _evaluating(model):
    """``model`` in eval mode (its mode restored after), no gradients recorded."""
    training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        model.train(training)


class GramScorer(NetworkScorer):
    """Gram-matrix deviations (module docstring). Fit with the network and uint8 training images
    (``fit(None, model, images=x)``), then ``score_inputs(model, x)`` on float image batches in [0, 1]: the same
    network, unchanged since the fit (the memo assumes it)."""

    needs_fit = True
    needs_train_images = True

    def __init__(self, powers: int = DEFAULT_POWERS, divide_by_confidence: bool = True, holdout: float = HOLDOUT,
                 seed: int = 0, batch_size: int = BATCH_SIZE):
        if isinstance(powers, bool) or not isinstance(powers, Integral) or powers < 1:
            raise ValueError(f"gram: powers must be an integer ≥ 1, got {powers!r}")
        if not isinstance(divide_by_confidence, (bool, np.bool_)):
            raise ValueError(f"gram: divide_by_confidence must be true or false, got {divide_by_confidence!r}")
        if not 0.0 <= holdout < 1.0:
            raise ValueError(f"gram: holdout must be in [0, 1), got {holdout!r}")
        if batch_size < 1:
            raise ValueError(f"gram: batch_size must be ≥ 1, got {batch_size!r}")
        self.powers = int(powers)
        self.divide_by_confidence = bool(divide_by_confidence)
        self.holdout, self.seed, self.batch_size = float(holdout), int(seed), int(batch_size)
        self.width = max(self.powers, MEMO_POWERS)  # powers computed: every P ≤ width shares them
        self.mins_: list[np.ndarray] | None = None  # per layer (classes, width, C_l)
        self.maxs_: list[np.ndarray] | None = None
        self.empty_classes_: list[int] = []
        self.holdout_table_: np.ndarray | None = None  # (held out, layers, width) deviations
        self.holdout_conf_: np.ndarray | None = None
        self.fit_key_: str | None = None
        self._networks = NetworkDigests()

    # ---- per batch: predicted class, confidence, Gram features / deviations
    def _forward(self, model, x: torch.Tensor) -> tuple[np.ndarray, np.ndarray, list[np.ndarray], int]:
        """(predicted class, max softmax probability, per layer (B, width, C_l) Gram features, number of classes)
        of a float batch."""
        with _evaluating(model):
            logits, maps = forward_blocks(model, x, "gram")
            prob = torch.softmax(logits.detach().to(torch.float64), dim=1)
            conf, pred = prob.max(dim=1)
            feats = [gram_features(m, self.width).cpu().numpy() for m in maps]
        return pred.cpu().numpy(), conf.cpu().numpy(), feats, prob.shape[1]

    def _table(self, model, x: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        """((B, layers, width) deviations δ_{l,p} from the fitted ranges of each image's predicted class, (B,)
        confidences), memoised per (fit, network, batch)."""
        if self.mins_ is None:
            raise RuntimeError("GramScorer used before fit")
        batch = x.detach().cpu().contiguous().numpy()
        key = f"{self.fit_key_}|{self._networks.digest(model)}|{batch.shape}|{digest_bytes([batch.tobytes()])}"
        hit = _TABLES.get(key)
        if hit is not None:
            return hit
        pred, conf, feats, _ = self._forward(model, x)
        if len(feats) != len(self.mins_):
            raise ValueError(f"gram was fitted on {len(self.mins_)} blocks, this network gives {len(feats)}")
        table = np.stack([deviation(f, lo[pred], hi[pred])
                          for f, lo, hi in zip(feats, self.mins_, self.maxs_, strict=True)], axis=1)
        _TABLES.put(key, (table, conf))
        return table, conf

    # ---- fit
    def fit(self, train: Outputs | None, model=None, images=None, **extra) -> GramScorer:
        if model is None or images is None:
            raise ValueError("gram needs the network and the training images (needs_train_images) to fit")
        images = np.asarray(images)
        if len(images) == 0:
            raise ValueError("gram needs at least one training image to fit")
        if train is not None and len(train) != len(images):
            raise ValueError(f"gram: {len(images)} images for {len(train)} training outputs")
        net = self._networks.digest(model)
        key = "|".join([net, digest_bytes([np.ascontiguousarray(images).tobytes()]), str(images.shape),
                        images.dtype.str, f"{self.holdout!r}", str(self.seed), str(self.width)])
        fitted = _FITS.get(key)
        if fitted is None:
            fitted = self._fit_ranges(model, images, key)
            _FITS.put(key, fitted)
        self.mins_, self.maxs_, self.empty_classes_ = fitted["mins"], fitted["maxs"], fitted["empty"]
        self.holdout_table_, self.holdout_conf_ = fitted["table"], fitted["conf"]
        self.fit_key_ = key
        return self

    def _batches(self, model, images: np.ndarray):
        from orchestrator.training import to_float

        device = next(iter(model.parameters())).device
        for s in range(0, len(images), self.batch_size):
            yield to_float(images[s:s + self.batch_size], device)

    def _fit_ranges(self, model, images: np.ndarray, key: str) -> dict:
        n = len(images)
        order = np.random.default_rng(self.seed).permutation(n)
        held = int(self.holdout * n)
        ranged, kept = np.sort(order[held:]), np.sort(order[:held])
        mins = maxs = None
        for x in self._batches(model, images[ranged]):
            pred, _, feats, num_classes = self._forward(model, x)
            if mins is None:
                mins = [np.full((num_classes, *f.shape[1:]), np.inf) for f in feats]
                maxs = [np.full((num_classes, *f.shape[1:]), -np.inf) for f in feats]
            for c in np.unique(pred):
                chosen = pred == c
                for f, lo, hi in zip(feats, mins, maxs, strict=True):
                    np.minimum(lo[c], f[chosen].min(axis=0), out=lo[c])
                    np.maximum(hi[c], f[chosen].max(axis=0), out=hi[c])
        empty = [c for c in range(num_classes) if not np.isfinite(mins[0][c]).all()]
        seen = [c for c in range(num_classes) if c not in empty]
        # a class that no fit image is predicted as: the range over all fit images
        for lo, hi in zip(mins, maxs, strict=True):
            lo[empty], hi[empty] = lo[seen].min(axis=0), hi[seen].max(axis=0)
        self.mins_, self.maxs_, self.fit_key_ = mins, maxs, key
        tables, confs = [], []
        for x in self._batches(model, images[kept]):
            table, conf = self._table(model, x)
            tables.append(table)
            confs.append(conf)
        table = np.concatenate(tables) if tables else np.zeros((0, len(mins), self.width))
        conf = np.concatenate(confs) if confs else np.zeros(0)
        return {"mins": mins, "maxs": maxs, "empty": empty, "table": table, "conf": conf}

    # ---- score
    def _layer_deviations(self, table: np.ndarray, conf: np.ndarray) -> np.ndarray:
        """(N, layers) D_l: the deviations summed over p ≤ P, divided by the confidence when asked."""
        d = table[:, :, :self.powers].sum(axis=2)
        return d / conf[:, None] if self.divide_by_confidence else d

    def normalisers(self) -> np.ndarray:
        """E_holdout[D_l] + 1e-7 per layer (1 where no training image was held out)."""
        if self.holdout_table_ is None:
            raise RuntimeError("GramScorer used before fit")
        if len(self.holdout_table_) == 0:
            return np.ones(self.holdout_table_.shape[1])
        return self._layer_deviations(self.holdout_table_, self.holdout_conf_).mean(axis=0) + NORM_EPS

    def score_inputs(self, model, x: torch.Tensor) -> np.ndarray:
        table, conf = self._table(model, x)
        return -(self._layer_deviations(table, conf) / self.normalisers()).sum(axis=1)


@register("gram")
class Gram(Method):
    reads = "network"
    paper = "Sastry & Oore, Detecting Out-of-Distribution Examples with Gram Matrices, ICML 2020"
    knobs = (
        Int("powers", DEFAULT_POWERS, ge=1, le=20, help="P: Gram matrices of orders p = 1…P (paper 10, OpenOOD 5)"),
        Bool("divide_by_confidence", True,
             help="divide each deviation by the maximum softmax probability (the paper's code and OpenOOD)"),
    )

    def scorer(self, params):
        return GramScorer(params["powers"], params["divide_by_confidence"])
