"""Deep nearest neighbours (Sun, Ming, Zhu & Li, Out-of-Distribution Detection with Deep Nearest Neighbors,
ICML 2022).

Features are L2-normalised, ẑ = h/‖h‖; the bank holds the normalised fit (training) features.
S = −‖ẑ − ẑ_(k)‖, minus the Euclidean distance to the k-th nearest bank entry (the authors' code returns the
squared distance, which ranks identically). k is clamped to the bank size. Search is exact (faiss IndexFlatL2),
on the GPU when faiss was built with GPU support and CUDA is available.
"""
from __future__ import annotations

from numbers import Integral

import numpy as np

from methods import register
from methods.base import Method, Outputs, Scorer

DEFAULT_K = 50


def check_k(k) -> int:
    if isinstance(k, bool) or not (isinstance(k, Integral) or (isinstance(k, float) and k.is_integer())):
        raise ValueError(f"knn: k must be a positive integer, got {k!r}")
    if int(k) < 1:
        raise ValueError(f"knn: k must be >= 1, got {k}")
    return int(k)


def l2_normalise(h: np.ndarray) -> np.ndarray:
    """Rows divided by their norm (+1e-10, as the authors), as a C-contiguous float32 array for faiss."""
    h = np.asarray(h, dtype=np.float64)
    h = h / (np.linalg.norm(h, axis=1, keepdims=True) + 1e-10)
    return np.ascontiguousarray(h, dtype=np.float32)


def _gpu_available(faiss) -> bool:
    if not hasattr(faiss, "StandardGpuResources"):
        return False
    try:
        import torch

        return torch.cuda.is_available() and faiss.get_num_gpus() > 0
    except Exception:  # noqa: BLE001 - any failure means: stay on the CPU
        return False


class KnnScorer(Scorer):
    needs = frozenset({"features"})
    needs_fit = True

    def __init__(self, k: int = DEFAULT_K, use_gpu: bool | None = None):
        self.k = check_k(k)
        self.use_gpu = use_gpu  # None: automatic
        self.bank_: np.ndarray | None = None
        self._index = None
        self._gpu_resources = None

    def __getstate__(self):  # faiss indexes do not pickle; rebuild from the bank on first use
        state = dict(self.__dict__)
        state["_index"] = state["_gpu_resources"] = None
        return state

    def fit(self, train: Outputs, model=None) -> "KnnScorer":
        if train is None or len(train) == 0:
            raise ValueError("knn needs fit outputs (training features) for its bank")
        self.bank_ = l2_normalise(train.features)
        self._index = None
        return self

    def index(self):
        if self.bank_ is None:
            raise RuntimeError("KnnScorer used before fit")
        if self._index is None:
            import faiss

            dim = self.bank_.shape[1]
            gpu = _gpu_available(faiss) if self.use_gpu is None else self.use_gpu
            if gpu:
                self._gpu_resources = faiss.StandardGpuResources()
                self._index = faiss.GpuIndexFlatL2(self._gpu_resources, dim)
            else:
                self._index = faiss.IndexFlatL2(dim)
            self._index.add(self.bank_)
        return self._index

    def score(self, outputs: Outputs) -> np.ndarray:
        index = self.index()
        k = min(self.k, len(self.bank_))
        squared, _ = index.search(l2_normalise(outputs.features), k)
        return -np.sqrt(np.maximum(squared[:, k - 1].astype(np.float64), 0.0))


@register("knn")
class Knn(Method):
    paper = "Sun et al., Out-of-Distribution Detection with Deep Nearest Neighbors, ICML 2022"

    def scorer(self, params):
        return KnnScorer(params.get("k", DEFAULT_K))
