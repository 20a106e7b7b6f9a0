"""RankFeat (Song, Sebe & Wang, RankFeat: Rank-1 Feature Removal for Out-of-distribution Detection, NeurIPS 2022).

Per sample, the last feature map X (C × HW, the (C, H, W) map flattened) loses its rank-1 component,
    X' = X − s₁u₁v₁ᵀ   (s₁, u₁, v₁: the top singular value and vectors of X),
is pooled like the network pools it, h' = mean over HW of X' = h − s₁u₁·mean(v₁), and scored by the energy of the
classifier's final layer on it:
    S = T·logsumexp(head.logits(h') / T)     (T = ``temperature``, 1 in the paper and OpenOOD v1.5).

Requirements, checked at fit (on the training outputs): the outputs carry the last feature map (N, C, H, W) and the
final layer (:class:`~methods.base.Head`), and the penultimate features are the global average pool of that map
(h = fmap.mean over H and W, as every built-in network defines them): otherwise h' would not be what the head
reads, and fit raises a ValueError.

Deliberate differences and choices:
- Block 4 only: the paper's best numbers fuse the logits of block 4 and of block 3 (block 3's map with its rank-1
  component removed, run through block 4), and OpenOOD v1.5's postprocessor always fuses the two; only the last
  feature map is cached here (no network at scoring time), so this is the paper's "RankFeat (Block 4)" variant.
- Exact SVD: ``np.linalg.svd`` batched over (N, C, HW) in float64 (chunks of :data:`CHUNK_BYTES`); the paper's and
  OpenOOD's ``accelerate`` option, 20 power iterations from a random start, only approximates the top triple for
  speed. The removed component is the same whichever sign the SVD picks (s₁u₁v₁ᵀ is sign-invariant); when
  s₁ = s₂ the top triple is not unique and neither is h' (as for any SVD-based implementation).
- Only the pooled vector is formed (h − s₁u₁·mean(v₁) = mean over HW of X'), never X' itself.
- Speed of a sweep: h' depends on the feature map only, not on the temperature, so it is computed once per feature
  map and memoised in this process by the map's content digest (:func:`pooled_without_rank1`), and
  :meth:`RankFeatScorer.sweep_work` computes it once per network for every trial of a sweep (kept in the model
  cache beside the outputs).
Edge cases: an all-zero map has s₁ = 0 and h' = 0; a rank-1 map (e.g. HW = 1, or C = 1) loses everything:
X' = 0, h' = 0 and the logits are the head's bias for every sample — with HW = 1 every score is the same, and fit
warns about it.
"""
from __future__ import annotations

import warnings
from numbers import Real

import numpy as np
from scipy.special import logsumexp

from methods import register
from methods.base import FeatureMapScorer, Head, HeadScorer, Method, Outputs
from methods.memo import ArrayDigests, Memo
from orchestrator.knobs import Float

#: Feature-map bytes (float64) decomposed at once.
CHUNK_BYTES = 64 * 2**20
#: Pooled rank-1-removed features memoised in this process, by feature-map digest (least recently used dropped
#: beyond this many bytes in memory; memory-mapped sweep work from the model cache does not count).
MEMO_BYTES = 512 * 2**20
#: How far the spatial mean of the training map may be from the training features (relative to their scale).
POOL_TOLERANCE = 1e-4
_MEMO = Memo(max_bytes=MEMO_BYTES)
#: Digests of the feature maps this process scored (each hashed once, not once per trial of a sweep).
_DIGESTS = ArrayDigests()


def check_temperature(temperature) -> float:
    if isinstance(temperature, bool) or not isinstance(temperature, Real) or not (
            np.isfinite(temperature) and temperature > 0):
        raise ValueError(f"rankfeat: temperature must be a finite number > 0, got {temperature!r}")
    return float(temperature)


def _as_maps(fmap) -> np.ndarray:
    fmap = np.asarray(fmap)
    if fmap.ndim != 4:
        raise ValueError(f"rankfeat: expected a feature map (N, C, H, W), got shape {fmap.shape}")
    return fmap


def rank1_removed_pooled(fmap) -> np.ndarray:
    """(N, C) float64: the mean over H×W of X − s₁u₁v₁ᵀ for each (C, H·W) map X of an (N, C, H, W) array."""
    fmap = _as_maps(fmap)
    n, c, h, w = fmap.shape
    out = np.empty((n, c), dtype=np.float64)
    rows = max(1, CHUNK_BYTES // max(1, c * h * w * 8))
    for start in range(0, n, rows):
        x = np.asarray(fmap[start:start + rows], dtype=np.float64).reshape(-1, c, h * w)
        u, s, vt = np.linalg.svd(x, full_matrices=False)
        out[start:start + rows] = x.mean(axis=2) - (s[:, 0] * vt[:, 0, :].mean(axis=1))[:, None] * u[:, :, 0]
    return out


def digest(fmap: np.ndarray) -> str:
    """Content digest of a feature map (shape, dtype and bytes), computed once per array object while it lives."""
    return _DIGESTS.digest(fmap)


def pooled_without_rank1(fmap) -> np.ndarray:
    """:func:`rank1_removed_pooled` of ``fmap``, memoised by its content (float32, as the network's features)."""
    fmap = _as_maps(fmap)
    key = digest(fmap)
    pooled = _MEMO.get(key)
    if pooled is None:
        pooled = _MEMO.put(key, rank1_removed_pooled(fmap).astype(np.float32))
    return pooled


def forget_memoised() -> None:
    """Forget the pooled features and digests memoised in this process."""
    _MEMO.clear()
    _DIGESTS.clear()


class RankFeatScorer(FeatureMapScorer):
    """``RankFeatScorer(temperature).fit(train_outputs).score(outputs)``; both outputs need ``fmap`` and ``head``."""

    needs_fit = True  # checks on the training outputs that h is the spatial mean of the map

    def __init__(self, temperature: float = 1.0):
        self.temperature = check_temperature(temperature)
        self.channels_: int | None = None

    @staticmethod
    def _head(outputs: Outputs, channels: int) -> Head:
        head = HeadScorer.head_of(outputs, "rankfeat")
        if np.shape(head.weight)[1] != channels:
            raise ValueError(f"rankfeat: the final layer reads {np.shape(head.weight)[1]}-d features, the feature "
                             f"map has {channels} channels")
        return head

    def fit(self, train: Outputs, model=None) -> RankFeatScorer:
        if train is None or len(train) == 0:
            raise ValueError("rankfeat needs fit outputs (training feature maps and features) to check its pooling")
        if train.fmap is None:
            raise ValueError("rankfeat reads the last feature map; the outputs carry none (Outputs.fmap)")
        fmap = _as_maps(train.fmap)
        n, c, h, w = fmap.shape
        features = np.asarray(train.features, dtype=np.float64)
        self._head(train, c)
        if features.shape != (n, c):
            raise ValueError(f"rankfeat needs the penultimate features to be the global average pool of the feature "
                             f"map: features {features.shape} vs feature map {fmap.shape}")
        pooled = np.asarray(fmap, dtype=np.float64).mean(axis=(2, 3))
        scale = max(float(np.abs(features).max()), 1e-12)
        gap = float(np.abs(pooled - features).max())
        if gap > POOL_TOLERANCE * scale:
            raise ValueError(f"rankfeat needs h = the global average pool of the named feature map (it removes the "
                             f"rank-1 component of that map and pools it again for the final layer), but the spatial "
                             f"mean of the training maps is {gap:.3g} away from the features (scale {scale:.3g}): "
                             f"name the feature map that the network pools into h")
        if h * w == 1:
            warnings.warn("rankfeat: the feature map is 1×1, so each map is rank 1 and its removal leaves nothing: "
                          "every sample scores energy(bias)", RuntimeWarning, stacklevel=2)
        self.channels_ = c
        return self

    def shaped_features(self, outputs: Outputs) -> np.ndarray:
        """h' (N, C): the pooled rank-1-removed feature maps of ``outputs`` (memoised)."""
        if self.channels_ is None:
            raise RuntimeError("RankFeatScorer used before fit")
        if outputs.fmap is None:
            raise ValueError("rankfeat scores feature maps; the outputs carry none (Outputs.fmap)")
        return pooled_without_rank1(outputs.fmap)

    def logits(self, outputs: Outputs) -> np.ndarray:
        pooled = self.shaped_features(outputs)
        return self._head(outputs, pooled.shape[1]).logits(pooled)

    def score(self, outputs: Outputs) -> np.ndarray:
        t = self.temperature
        return t * logsumexp(self.logits(outputs) / t, axis=1)

    def sweep_work(self, store) -> dict[str, np.ndarray]:
        """The pooled rank-1-removed features of every scored split, named by their map's digest: computed once per
        network for a whole temperature sweep."""
        work = {}
        for name in store.bench.splits():
            if name != "id_train":
                fmap = _as_maps(store.get(name, with_fmap=True).fmap)
                work[digest(fmap)] = pooled_without_rank1(fmap)
        return work

    def adopt(self, work: dict) -> None:
        for key, pooled in work.items():
            _MEMO.put(key, pooled)


@register("rankfeat")
class RankFeat(Method):
    reads = "feature map"
    paper = "Song, Sebe & Wang, RankFeat: Rank-1 Feature Removal for Out-of-distribution Detection, NeurIPS 2022"
    knobs = (Float("temperature", 1.0, gt=0, help="T in the energy T·logsumexp(logits(h')/T)"),)

    def scorer(self, params):
        return RankFeatScorer(params["temperature"])
