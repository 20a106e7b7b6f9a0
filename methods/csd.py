"""CSD — MODE's cross-scale decision (MODE: Multi-scale OOD DEtection, TIP 2023) as a post-hoc scorer.

From the last feature map F (C×H×W) of every image take M L2-normalised vectors ("scales"):

- the ``grid``×``grid`` adaptive-average-pooled cells (``torch.nn.functional.adaptive_avg_pool2d``, so any
  map size works; the cells overlap when H or W is not a multiple of ``grid``). grid = 2 is the paper's 2×2
  quadrants. With grid = 1 the single cell *is* the global average, so it is not added twice;
- the global average (the usual penultimate feature h);
- with ``centre`` on, the average of the central ⌈H/2⌉×⌈W/2⌉ window, starting at row ⌊(H − ⌈H/2⌉)/2⌋ and
  column ⌊(W − ⌈W/2⌉)/2⌋ (our generalisation of the paper's centre region: the central 2×2 of a 4×4 map;
  a 7×7 map gets rows/cols 1..4).

One exact kNN bank (faiss ``IndexFlatL2``; ``GpuIndexFlatL2`` when faiss has GPU support and CUDA is up) holds
all M vectors of every fit (training) image. For a test image, d_m is the squared L2 distance of its scale-m
vector to the k-th nearest bank entry (any scale), and S = max_m(−d_m) (``aggregator: max``, the paper) or
mean_m(−d_m) (``aggregator: mean``). k (default 10) is clamped to the bank size.

With grid = 1 and centre off the only scale is the normalised global average, so CSD equals Deep-KNN with
squared distances (same ranking as KNN's −distance).

Cost: what does not depend on ``k`` or ``aggregator`` — the bank of a (fit maps, grid, centre) and, per scored split,
the sorted distances to its ``MEMO_WIDTH`` nearest bank entries — is memoised in the process (``methods.memo``), so
the next configuration of a sweep with the same grid and centre reads column k−1 instead of searching again. On
the CPU the exact search is :func:`methods.neighbours.nearest_sq_distances` (KNN's, block-parallel BLAS); faiss
serves the GPU.
"""
from __future__ import annotations

from numbers import Integral

import numpy as np

from methods import register
from methods.base import FeatureMapScorer, Method, Outputs
from methods.knn import flat_l2_index, gpu_wanted, l2_normalise
from methods.memo import ArrayDigests, Memo, array_digest
from methods.neighbours import nearest_sq_distances
from orchestrator.knobs import Bool, Choice, Int

DEFAULT_K = 10
AGGREGATORS = ("max", "mean")
#: Sorted neighbour distances memoised per (bank, scored maps) this wide (wider when a k asks for more).
MEMO_WIDTH = 64
#: Banks by (fit maps, grid, centre) and neighbour tables by (bank, scored maps), least recently used dropped beyond.
_BANKS = Memo(max_entries=2)
_TABLES = Memo(max_bytes=512 * 2**20)
_MAPS = ArrayDigests()


def forget_memoised() -> None:
    """Forget the banks and neighbour tables memoised in this process."""
    _BANKS.clear()
    _TABLES.clear()
    _MAPS.clear()

#: CSD's knobs (post-hoc); MODE scores with CSD and lists them too.
CSD_KNOBS = (
    Int("k", DEFAULT_K, ge=1, help="the k-th nearest training scale vector (clamped to the bank size)"),
    Int("grid", 2, ge=1, help="grid×grid pooled cells of the feature map (2 = the paper's quadrants)"),
    Bool("centre", True, help="add the central window as a scale"),
    Choice("aggregator", "max", AGGREGATORS, help="how the per-scale scores combine"),
)


def _check_int(name: str, value, low: int) -> int:
    integral = isinstance(value, Integral) or (isinstance(value, float) and value.is_integer())
    if isinstance(value, bool) or not integral:
        raise ValueError(f"csd: {name} must be an integer, got {value!r}")
    if int(value) < low:
        raise ValueError(f"csd: {name} must be >= {low}, got {value}")
    return int(value)


def _as_bool(name: str, value) -> bool:
    if isinstance(value, str):
        if value.lower() in ("true", "on", "yes", "1"):
            return True
        if value.lower() in ("false", "off", "no", "0"):
            return False
        raise ValueError(f"csd: {name} must be on/off, got {value!r}")
    return bool(value)


def centre_window(h: int, w: int) -> tuple[slice, slice]:
    """The central ⌈H/2⌉×⌈W/2⌉ window of an H×W map."""
    ch, cw = -(-h // 2), -(-w // 2)
    top, left = (h - ch) // 2, (w - cw) // 2
    return slice(top, top + ch), slice(left, left + cw)


def scale_vectors(fmap, grid: int = 2, centre: bool = True):
    """(N, M, C) pooled vectors (un-normalised) of an (N, C, H, W) map: grid cells, global, centre.

    Works on numpy arrays (returns float32 numpy) and on torch tensors (returns a tensor, differentiable).
    """
    import torch
    import torch.nn.functional as F

    is_numpy = not isinstance(fmap, torch.Tensor)
    t = torch.as_tensor(np.asarray(fmap, dtype=np.float32)) if is_numpy else fmap
    if t.dim() != 4:
        raise ValueError(f"csd: expected a feature map (N, C, H, W), got shape {tuple(t.shape)}")
    n, c, h, w = t.shape
    parts = []
    if grid > 1:
        parts.append(F.adaptive_avg_pool2d(t, grid).reshape(n, c, grid * grid).transpose(1, 2))
    parts.append(t.mean(dim=(2, 3))[:, None, :])
    if centre:
        rows, cols = centre_window(h, w)
        parts.append(t[:, :, rows, cols].mean(dim=(2, 3))[:, None, :])
    out = torch.cat(parts, dim=1)
    return out.numpy() if is_numpy else out


def num_scales(grid: int, centre: bool) -> int:
    return (grid * grid if grid > 1 else 0) + 1 + int(centre)


class CSDScorer(FeatureMapScorer):
    """Cross-scale decision on the last feature map; ``fit`` on training outputs, ``score`` on any split.

    Plain Python: ``CSDScorer(k=10).fit(Outputs(..., fmap=train_maps)).score(Outputs(..., fmap=test_maps))``,
    or :meth:`fit_maps` / :meth:`score_maps` directly on (N, C, H, W) arrays.
    """

    needs_fit = True

    def __init__(self, k: int = DEFAULT_K, grid: int = 2, centre=True, aggregator: str = "max",
                 use_gpu: bool | None = None):
        self.k = _check_int("k", k, 1)
        self.grid = _check_int("grid", grid, 1)
        self.centre = _as_bool("centre", centre)
        if aggregator not in AGGREGATORS:
            raise ValueError(f"csd: aggregator must be one of {AGGREGATORS}, got {aggregator!r}")
        self.aggregator = aggregator
        self.use_gpu = use_gpu
        self.bank_: np.ndarray | None = None
        self.bank_key_: str | None = None  # what determines the bank (memo key)
        self._index = None
        self._gpu_resources = None

    def __getstate__(self):  # faiss indexes do not pickle; rebuilt from the bank on first use
        state = dict(self.__dict__)
        state["_index"] = state["_gpu_resources"] = None
        return state

    def vectors(self, fmap) -> np.ndarray:
        """(N, M, C) L2-normalised scale vectors."""
        return l2_normalise(scale_vectors(fmap, self.grid, self.centre))

    def _geometry(self) -> str:
        return f"grid={self.grid}|centre={self.centre}"

    def _maps_key(self, fmap) -> str:
        return _MAPS.digest(fmap) if isinstance(fmap, np.ndarray) else array_digest(np.asarray(fmap))

    def fit_maps(self, fmap) -> CSDScorer:
        if len(fmap) == 0:
            raise ValueError("csd needs at least one fit feature map")
        self.bank_key_ = f"{self._maps_key(fmap)}|{self._geometry()}"
        bank = _BANKS.get(self.bank_key_)
        if bank is None:
            v = self.vectors(fmap)
            bank = _BANKS.put(self.bank_key_, np.ascontiguousarray(v.reshape(-1, v.shape[-1])))
        self.bank_ = bank
        self._index = None
        return self

    def fit(self, train: Outputs, model=None, **extra) -> CSDScorer:
        if train is None or train.fmap is None:
            raise ValueError("csd needs the training feature maps (Outputs.fmap) to build its bank")
        return self.fit_maps(train.fmap)

    def index(self):
        if self.bank_ is None:
            raise RuntimeError("CSDScorer used before fit")
        if self._index is None:
            self._index, self._gpu_resources = flat_l2_index(self.bank_, self.use_gpu)
        return self._index

    def distances(self, fmap) -> np.ndarray:
        """(N, M) squared distance of each scale vector to its k-th nearest bank entry."""
        if self.bank_ is None:
            raise RuntimeError("CSDScorer used before fit")
        k = min(self.k, len(self.bank_))
        if getattr(self, "bank_key_", None) is None:  # a bank set by hand
            self.bank_key_ = array_digest(self.bank_)
        key = f"{self.bank_key_}|{self._geometry()}|{self._maps_key(fmap)}"
        table = _TABLES.get(key)
        if table is None or table.shape[1] < k:
            v = self.vectors(fmap)
            n, m, c = v.shape
            width = min(max(k, MEMO_WIDTH), len(self.bank_))
            queries = np.ascontiguousarray(v.reshape(-1, c))
            if gpu_wanted(self.use_gpu):
                squared = self.index().search(queries, width)[0]
            else:
                squared = nearest_sq_distances(queries, self.bank_, width)
            table = _TABLES.put(key, squared.reshape(n, m, width))
        return np.maximum(table[:, :, k - 1].astype(np.float64), 0.0)

    def score_maps(self, fmap) -> np.ndarray:
        neg = -self.distances(fmap)
        return neg.max(axis=1) if self.aggregator == "max" else neg.mean(axis=1)

    def score(self, outputs: Outputs) -> np.ndarray:
        if outputs.fmap is None:
            raise ValueError("csd scores feature maps; the outputs carry none (scorer.needs must include 'fmap')")
        return self.score_maps(outputs.fmap)


def csd_from_params(params) -> CSDScorer:
    """The CSD scorer of the :data:`CSD_KNOBS` values in ``params`` (CSD's and MODE's)."""
    return CSDScorer(params["k"], params["grid"], params["centre"], params["aggregator"])


@register("csd")
class CSD(Method):
    reads = "feature map"
    paper = "MODE: Multi-scale OOD DEtection (cross-scale decision), IEEE TIP 2023"
    knobs = CSD_KNOBS

    def scorer(self, params):
        return csd_from_params(params)
