"""Deep nearest neighbours (Sun, Ming, Zhu & Li, Out-of-Distribution Detection with Deep Nearest Neighbors,
ICML 2022).

Features are L2-normalised, ẑ = h/‖h‖; the bank holds the normalised fit (training) features.
S = −‖ẑ − ẑ_(k)‖, minus the Euclidean distance to the k-th nearest bank entry (the authors' code returns the
squared distance, which ranks identically). k is clamped to the bank size. Search is exact by default (on the CPU
a BLAS product and a threshold selection, :mod:`methods.neighbours`, faster than faiss' IndexFlatL2 at KNN's table
width; on the GPU faiss' GpuIndexFlatL2), or approximate with ``index: ivf`` (faiss IndexIVFFlat: ``nlist`` k-means
cells, ``nprobe`` of them searched per query) for banks too large for exact search; ``scripts/knn_ivf_recall.py``
measures its recall against exact search. Either runs on the GPU when faiss was built with GPU support
(``pip install '.[gpu]'``) and CUDA is available.
"""
from __future__ import annotations

import hashlib
import os
import weakref
from numbers import Integral

import numpy as np

from methods import register
from methods.base import FeatureScorer, Method, Outputs
from methods.memo import Memo
from methods.neighbours import nearest_sq_distances
from orchestrator.knobs import Choice, Int

DEFAULT_K = 50
#: Sorted neighbour distances are memoised per (bank, queries) this wide, so the next trial of a k sweep in the
#: same worker process (Ray Tune reuses actors) reads column k-1 instead of searching again.
MEMO_WIDTH = 1024
MEMO_ENTRIES = 24
_MEMO = Memo(max_entries=MEMO_ENTRIES)
#: faiss marks a neighbour it did not find with the largest float32 distance.
MISSING = 1e30


#: A training bank larger than this, memory-mapped from the feature store, is searched shard by shard instead of
#: being normalised and indexed whole (exact search; memory stays at about one shard).
OUT_OF_CORE_BYTES = 512 * 2**20
#: Rows per shard of an out-of-core bank (~64 MB of float32 features at 512-d).
SHARD_ROWS = 32_768


def _digest(a: np.ndarray) -> str:
    return hashlib.blake2b(np.ascontiguousarray(a).data, digest_size=16).hexdigest()


#: Normalised copies (and their digests) of the feature arrays this process scored, by identity: every trial of a
#: k sweep scores the same outputs (an evaluator holds them), which are then normalised and hashed once, not per
#: trial. Outputs are never modified in place (they come from extraction or the read-only feature store).
_NORMALISED: dict[int, tuple[weakref.ref, np.ndarray, str]] = {}


def normalised(features: np.ndarray) -> tuple[np.ndarray, str]:
    """(``l2_normalise(features)``, its digest), computed once per array object while it lives."""
    key = id(features)
    entry = _NORMALISED.get(key)
    if entry is not None and entry[0]() is features:
        return entry[1], entry[2]
    normal = l2_normalise(features)
    digest = _digest(normal)
    try:
        ref = weakref.ref(features, lambda _: _NORMALISED.pop(key, None))
    except TypeError:  # not an ndarray (a list): nothing to remember it by
        return normal, digest
    _NORMALISED[key] = (ref, normal, digest)
    return normal, digest


def forget_memoised() -> None:
    """Forget the neighbour tables and normalised arrays memoised in this process (a benchmark timing a classifier's
    first sweep again; a long-lived process that is done with a network)."""
    _MEMO.clear()
    _NORMALISED.clear()


def check_k(k) -> int:
    if isinstance(k, bool) or not (isinstance(k, Integral) or (isinstance(k, float) and k.is_integer())):
        raise ValueError(f"knn: k must be a positive integer, got {k!r}")
    if int(k) < 1:
        raise ValueError(f"knn: k must be >= 1, got {k}")
    return int(k)


def l2_normalise(h: np.ndarray) -> np.ndarray:
    """Vectors along the last axis divided by their norm (+1e-10, as the authors), as a C-contiguous float32
    array for faiss (KNN's rows, CSD's scale vectors)."""
    h = np.asarray(h, dtype=np.float64)
    h = h / (np.linalg.norm(h, axis=-1, keepdims=True) + 1e-10)
    return np.ascontiguousarray(h, dtype=np.float32)


def _gpu_available(faiss) -> bool:
    if not hasattr(faiss, "StandardGpuResources"):
        return False
    try:
        import torch

        return torch.cuda.is_available() and faiss.get_num_gpus() > 0
    except Exception:  # noqa: BLE001 - any failure means: stay on the CPU
        return False


def gpu_wanted(use_gpu: bool | None) -> bool:
    """``use_gpu`` when given, else whether faiss has GPU support and CUDA is there."""
    if use_gpu is not None:
        return bool(use_gpu)
    import faiss

    return _gpu_available(faiss)


def default_nlist(n: int) -> int:
    """faiss' rule of thumb: about 4·√n cells, each trained on at least 39 points."""
    return max(1, min(int(4 * np.sqrt(n)), n // 39))


def ivf_l2_index(bank: np.ndarray, nlist: int | None = None, nprobe: int = 16, use_gpu: bool | None = None):
    """An approximate faiss IVF-Flat L2 index of ``bank``: k-means into ``nlist`` cells (trained on at most 256
    points per cell, seeded), ``nprobe`` cells searched per query. Returns (index, gpu resources or None)."""
    import faiss

    n, dim = bank.shape
    nlist = min(nlist or default_nlist(n), n)
    quantizer = faiss.IndexFlatL2(dim)
    index = faiss.IndexIVFFlat(quantizer, dim, nlist, faiss.METRIC_L2)
    index.cp.seed = 0
    train = bank
    if n > 256 * nlist:
        train = bank[np.sort(np.random.default_rng(0).choice(n, 256 * nlist, replace=False))]
    index.train(np.ascontiguousarray(train))
    index.add(bank)
    index.nprobe = min(nprobe, nlist)
    resources = None
    if gpu_wanted(use_gpu):
        resources = faiss.StandardGpuResources()
        index = faiss.index_cpu_to_gpu(resources, 0, index)
    return index, resources


def flat_l2_index(bank: np.ndarray, use_gpu: bool | None = None):
    """An exact faiss L2 index holding ``bank`` (float32, C-contiguous): on the GPU when faiss has GPU support and
    CUDA is there (``use_gpu=None``), else on the CPU. Returns (index, gpu resources or None) — keep both alive."""
    import faiss

    dim = bank.shape[1]
    if gpu_wanted(use_gpu):
        resources = faiss.StandardGpuResources()
        index = faiss.GpuIndexFlatL2(resources, dim)
    else:
        resources, index = None, faiss.IndexFlatL2(dim)
    index.add(bank)
    return index, resources


class KnnScorer(FeatureScorer):
    needs_fit = True

    def __init__(self, k: int = DEFAULT_K, use_gpu: bool | None = None, index: str = "flat",
                 nlist: int | None = None, nprobe: int = 16):
        self.k = check_k(k)
        self.use_gpu = use_gpu  # None: automatic
        if index not in ("flat", "ivf"):
            raise ValueError(f"knn: index must be flat or ivf, got {index!r}")
        self.kind, self.nlist, self.nprobe = index, nlist, nprobe
        self.bank_: np.ndarray | None = None
        self._file: tuple | None = None  # (path, offset, shape, dtype) of an out-of-core bank
        self._index = None
        self._gpu_resources = None

    def __getstate__(self):  # faiss indexes do not pickle; rebuild from the bank on first use
        state = dict(self.__dict__)
        state["_index"] = state["_gpu_resources"] = None
        if state.get("_file"):  # an out-of-core bank travels as its file, never as its data
            state["bank_"] = None
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        if self.__dict__.get("_file"):
            path, offset, shape, dtype = self._file
            self.bank_ = np.memmap(path, dtype=np.dtype(dtype), mode="r", shape=shape, offset=offset)

    def fit(self, train: Outputs, model=None) -> KnnScorer:
        if train is None or len(train) == 0:
            raise ValueError("knn needs fit outputs (training features) for its bank")
        self._file = None
        features = train.features
        if isinstance(features, np.memmap) and features.nbytes > OUT_OF_CORE_BYTES and self.kind == "flat":
            # Out of core: keep where the bank is, read it shard by shard when searching.
            self._file = (str(features.filename), features.offset, features.shape, features.dtype.str)
            self.bank_ = features  # for its length only; never read whole
            st = os.stat(features.filename)
            self._bank_digest = f"{features.filename}:{st.st_size}:{st.st_mtime_ns}:{features.offset}"
            self._index = None
            return self
        self.bank_, digest = normalised(features)
        # Memoised tables are per bank and per search (approximate tables differ from exact ones).
        search = "" if self.kind == "flat" else f"ivf/{self.nlist}/{self.nprobe}"
        self._bank_digest = digest + search
        self._index = None
        return self

    def index(self):
        if self.bank_ is None:
            raise RuntimeError("KnnScorer used before fit")
        if self._index is None:
            if self.kind == "ivf":
                self._index, self._gpu_resources = ivf_l2_index(self.bank_, self.nlist, self.nprobe, self.use_gpu)
            else:
                self._index, self._gpu_resources = flat_l2_index(self.bank_, self.use_gpu)
        return self._index

    def sweep_work(self, store) -> dict[str, np.ndarray]:
        """Neighbour tables (MEMO_WIDTH wide) of every scored split, computed once for a whole k sweep (and kept
        in the model cache: a later sweep on the same network reads them), named by bank and queries."""
        for name in store.bench.splits():
            if name != "id_train":
                self._table(*normalised(store.get(name).features), MEMO_WIDTH)
        return {key: table for key, table in _MEMO.items() if key.startswith(self._bank_digest + "|")}

    def adopt(self, work: dict) -> None:
        for key, table in work.items():
            _MEMO.put(key, table)

    def _table(self, queries: np.ndarray, digest: str, k: int) -> np.ndarray:
        key = f"{self._bank_digest}|{digest}"
        table = _MEMO.get(key)
        if table is None or table.shape[1] < k:
            width = min(max(k, MEMO_WIDTH), len(self.bank_))
            if self._file:
                table = self._sharded_search(queries, width)
            elif self.kind == "flat" and not gpu_wanted(self.use_gpu):
                table = nearest_sq_distances(queries, self.bank_, width)
            else:
                table = self.index().search(queries, width)[0]
            _MEMO.put(key, table)
        return table

    def _sharded_search(self, queries: np.ndarray, k: int) -> np.ndarray:
        """Exact k-NN distances over a memory-mapped bank, one shard at a time: each shard is mapped, normalised
        and searched, then unmapped, and the k smallest distances so far are kept."""
        path, offset, shape, dtype = self._file
        best = np.full((len(queries), k), np.inf, dtype=np.float32)
        for start in range(0, shape[0], SHARD_ROWS):
            rows = min(SHARD_ROWS, shape[0] - start)
            mapped = np.memmap(path, dtype=np.dtype(dtype), mode="r", shape=(rows, *shape[1:]),
                               offset=offset + start * int(np.prod(shape[1:])) * np.dtype(dtype).itemsize)
            shard = l2_normalise(mapped)
            del mapped  # unmapped: its pages leave this process
            found = nearest_sq_distances(queries, shard, min(k, rows))
            best = np.sort(np.concatenate([best, found], axis=1), axis=1)[:, :k]
        return best

    def score(self, outputs: Outputs) -> np.ndarray:
        if self.bank_ is None:
            raise RuntimeError("KnnScorer used before fit")
        k = min(self.k, len(self.bank_))
        table = self._table(*normalised(outputs.features), k)
        # IVF may find fewer than k neighbours in the cells it probes (faiss pads with the largest float): the
        # farthest one found then stands in for the k-th.
        kth = table[:, k - 1].astype(np.float64)
        if self.kind == "ivf":
            found = table[:, :k] < MISSING
            farthest = np.where(found, table[:, :k], -np.inf).max(axis=1)
            kth = np.where(found[:, -1], kth, farthest)
        return -np.sqrt(np.maximum(kth, 0.0))


@register("knn")
class Knn(Method):
    reads = "features"
    paper = "Sun et al., Out-of-Distribution Detection with Deep Nearest Neighbors, ICML 2022"
    knobs = (Int("k", DEFAULT_K, ge=1, help="the k-th nearest training feature (clamped to the bank size)"),
             Choice("index", "flat", ("flat", "ivf"),
                    help="exact search, or approximate IVF-Flat for large banks (recall: scripts/knn_ivf_recall.py)"),
             Int("nlist", None, ge=1, optional=True, help="IVF cells (null: about 4·√bank size)"),
             Int("nprobe", 16, ge=1, help="IVF cells searched per query (nprobe = nlist: exact)"))

    def scorer(self, params):
        return KnnScorer(params["k"], index=params["index"], nlist=params["nlist"], nprobe=params["nprobe"])
