"""Nearest Neighbor Guidance, NNGuide (Park, Jung & Teoh, Nearest Neighbor Guidance for Out-of-Distribution
Detection, ICCV 2023).

Fit: a random subsample (fraction α, ``bank_fraction``; seeded) of the training features h_i and logits z_i;
each bank entry is the L2-normalised feature scaled by its confidence, b_i = c_i · ĥ_i with ĥ = h/‖h‖ and
c_i = logsumexp(z_i) (the energy score, the paper's base score and OpenOOD's).
Score: S(x) = c(x) · G(x), G(x) = mean of the k (``neighbours``) largest inner products ⟨ĥ(x), b_i⟩ over the bank
(a k-NN in the "guided" bank: the neighbours are those with the largest confidence-scaled cosine similarity).

This is the formula of the paper, of the authors' code (roomo7time/nnguide, ``ood_detectors/nnguide.py``) and of
OpenOOD v1.5's ``nnguide_postprocessor``. Defaults are OpenOOD's (k = 100, α = 0.01, its whole sweep grid); the
authors' public config uses k = 10, which the search space contains.

Deliberate choices and differences:
- ĥ = h / (‖h‖ + 1e-10). OpenOOD writes ``x / ‖x‖ + 1e-10`` (adds 1e-10 to every entry, and gives NaN for an
  all-zero feature); the paper and the authors normalise plainly. An all-zero feature here is ĥ = 0: G = 0 for a
  query, and a zero bank entry whose inner products are 0.
- The bank is a uniform random subsample without replacement of ⌈α·N⌉ training samples (at least 1), drawn with
  a fixed seed (``seed``, 0), so a sweep's trials with the same α share the same bank. OpenOOD takes the first
  batches of its (shuffled) training loader until it holds more than ⌊α·N⌋ samples (a whole number of batches).
  α = 1 keeps the whole training set.
- k larger than the bank is clamped to the bank size (G is then the mean over the whole bank); faiss would pad the
  missing neighbours with a huge negative product instead (both references search with faiss).
- Search is exact: blocks of queries, one BLAS product each (float32, like faiss' IndexFlatIP in both
  references) and a threshold selection of the k largest (methods.neighbours), blocks run in parallel; the mean is
  taken in float64. Ties among the k-th largest products do not matter: G only reads their values.
- A negative energy (all logits very negative) is used as it is, as in the paper: c(x) < 0 flips the sign of that
  sample's guidance, and a bank entry with c_i < 0 points away from its feature.
"""
from __future__ import annotations

import math
from numbers import Integral, Real

import numpy as np
from scipy.special import logsumexp

from methods import register
from methods.base import FeatureScorer, Method, Outputs
from methods.neighbours import largest, map_blocks
from orchestrator.knobs import Float, Int

DEFAULT_NEIGHBOURS = 100
DEFAULT_BANK_FRACTION = 0.01
#: Inner products held per block while scoring (float32: 16 MB; one block per BLAS thread in flight).
BLOCK_ENTRIES = 4 * 2**20


def check_neighbours(k) -> int:
    if isinstance(k, bool) or not (isinstance(k, Integral) or (isinstance(k, float) and k.is_integer())):
        raise ValueError(f"nnguide: neighbours must be a positive integer, got {k!r}")
    if int(k) < 1:
        raise ValueError(f"nnguide: neighbours must be >= 1, got {k}")
    return int(k)


def check_bank_fraction(alpha) -> float:
    if isinstance(alpha, bool) or not isinstance(alpha, Real) or not 0.0 < float(alpha) <= 1.0:
        raise ValueError(f"nnguide: bank_fraction must be a number in (0, 1], got {alpha!r}")
    return float(alpha)


def normalise(h: np.ndarray) -> np.ndarray:
    """Rows divided by their L2 norm (+1e-10), in float64."""
    h = np.asarray(h, dtype=np.float64)
    return h / (np.linalg.norm(h, axis=1, keepdims=True) + 1e-10)


def top_k_mean(queries: np.ndarray, bank: np.ndarray, k: int) -> np.ndarray:
    """Per query row, the mean of its k largest inner products with the bank rows (1 ≤ k ≤ len(bank)); the
    products in float32 (as faiss' IndexFlatIP in the references), their mean in float64."""
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    bank_t = np.ascontiguousarray(np.asarray(bank, dtype=np.float32).T)
    n = bank_t.shape[1]
    if not 1 <= k <= n:
        raise ValueError(f"nnguide: k must be between 1 and the bank size {n}, got {k}")

    def block(start: int, stop: int) -> np.ndarray:
        products = queries[start:stop] @ bank_t
        if k < n:
            products = largest(products, k)
        return products.mean(axis=1, dtype=np.float64)

    return map_blocks(block, len(queries), max(1, BLOCK_ENTRIES // n))


class NNGuideScorer(FeatureScorer):
    """``NNGuideScorer(neighbours, bank_fraction).fit(train)`` (training features and logits), then ``score``."""

    needs_fit = True  # the bank: training features and logits

    def __init__(self, neighbours: int = DEFAULT_NEIGHBOURS, bank_fraction: float = DEFAULT_BANK_FRACTION,
                 seed: int = 0):
        self.neighbours = check_neighbours(neighbours)
        self.bank_fraction = check_bank_fraction(bank_fraction)
        self.seed = int(seed)
        self.bank_: np.ndarray | None = None  # (bank size, D): c_i · ĥ_i, float32
        self.bank_index_: np.ndarray | None = None  # which training rows the bank holds

    def fit(self, train: Outputs, model=None) -> NNGuideScorer:
        if train is None or len(train) == 0:
            raise ValueError("nnguide needs fit outputs (training features and logits) for its bank")
        n = len(train)
        size = min(n, max(1, math.ceil(self.bank_fraction * n - 1e-9)))
        if size == n:
            index = np.arange(n)
        else:
            index = np.sort(np.random.default_rng(self.seed).choice(n, size, replace=False))
        features = normalise(np.asarray(train.features)[index])
        confidence = logsumexp(np.asarray(train.logits, dtype=np.float64)[index], axis=1)
        self.bank_index_ = index
        self.bank_ = np.ascontiguousarray(features * confidence[:, None], dtype=np.float32)
        return self

    def guidance(self, outputs: Outputs) -> np.ndarray:
        """G(x): the mean of the k largest ⟨ĥ(x), b_i⟩ (k clamped to the bank size)."""
        if self.bank_ is None:
            raise RuntimeError("NNGuideScorer used before fit")
        queries = normalise(outputs.features)
        if queries.ndim != 2 or queries.shape[1] != self.bank_.shape[1]:
            raise ValueError(f"nnguide was fitted on {self.bank_.shape[1]}-d features, got shape {queries.shape}")
        return top_k_mean(queries, self.bank_, min(self.neighbours, len(self.bank_)))

    def score(self, outputs: Outputs) -> np.ndarray:
        confidence = logsumexp(np.asarray(outputs.logits, dtype=np.float64), axis=1)
        return confidence * self.guidance(outputs)


@register("nnguide")
class NNGuide(Method):
    reads = "features"
    paper = "Park et al., Nearest Neighbor Guidance for Out-of-Distribution Detection, ICCV 2023"
    knobs = (Int("neighbours", DEFAULT_NEIGHBOURS, ge=1,
                 help="k: how many nearest bank entries the guidance averages (clamped to the bank size)"),
             Float("bank_fraction", DEFAULT_BANK_FRACTION, gt=0, le=1,
                   help="α: fraction of the training set (seeded random subsample) held in the guidance bank"))

    def scorer(self, params):
        return NNGuideScorer(params["neighbours"], params["bank_fraction"])
