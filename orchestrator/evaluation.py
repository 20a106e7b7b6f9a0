"""Evaluation: run a model over benchmark splits once, score them, build the val metrics and the matrix.

Outputs (logits, h, optional feature map) are extracted once per (model, split) and kept by an
:class:`OutputStore`, which the cache persists to disk so that every post-hoc trial on the same model
reads them instead of re-running the network. Gradient scorers (ODIN...) get the images instead.
"""
from __future__ import annotations

import os
from collections.abc import Callable

import numpy as np
import torch

from methods.base import Outputs, Scorer
from orchestrator.data.base import Benchmark, Split
from orchestrator.data.lazy import ImageFiles
from orchestrator.metrics import OODMatrix, ood_matrix, ood_metrics
from orchestrator.training import to_float

#: Images per forward pass when extracting: small batches stay in the CPU caches (measured fastest on 2 cores);
#: a GPU wants large ones.
EVAL_BATCH = {"cpu": 128, "cuda": 1024}


@torch.no_grad()
def extract(model, split: Split, device, with_fmap: bool = False, batch_size: int | None = None) -> Outputs:
    """Logits, penultimate features (and the last feature map) of every image of ``split``."""
    model.eval()
    batch_size = batch_size or EVAL_BATCH.get(torch.device(device).type, 256)
    logits, feats, fmaps = [], [], []
    for batch in _batches(split, batch_size):
        z, h, fmap = model.forward_all(to_float(batch, device))
        logits.append(z.float().cpu().numpy())
        feats.append(h.float().cpu().numpy())
        if with_fmap:
            if fmap is None:
                raise ValueError("this scorer reads the last feature map, but the model gives none: adapt it with "
                                 "feature_map=<layer name> (orchestrator.models.protocol.adapt)")
            fmaps.append(fmap.float().contiguous().cpu().numpy())
    return Outputs(np.concatenate(logits), np.concatenate(feats), split.y,
                   np.concatenate(fmaps) if with_fmap else None)


#: DataLoader worker processes decoding a streamed split's images while the network runs.
STREAM_WORKERS = max(1, min(4, (os.cpu_count() or 2) - 1))


class _Slices(torch.utils.data.Dataset):
    """Batch i of a split's images (what a DataLoader worker decodes)."""

    def __init__(self, x, batch_size: int):
        self.x, self.batch_size = x, batch_size

    def __len__(self) -> int:
        return -(-len(self.x) // self.batch_size)

    def __getitem__(self, i: int):
        return self.x[i * self.batch_size:(i + 1) * self.batch_size]


def _batches(split: Split, batch_size: int):
    """The split's images batch by batch: slices of the array, or, for images on disk, decoded by DataLoader
    workers ahead of the network."""
    if not isinstance(split.x, ImageFiles):
        for start in range(0, len(split), batch_size):
            yield split.x[start:start + batch_size]
        return
    loader = torch.utils.data.DataLoader(_Slices(split.x, batch_size), batch_size=None, shuffle=False,
                                         num_workers=STREAM_WORKERS, prefetch_factor=2, persistent_workers=False)
    yield from loader


class OutputStore:
    """Outputs per split name, extracted on first use.

    ``persist(name, with_fmap, compute)`` — e.g. :meth:`orchestrator.cache.ModelCache.outputs` — may return
    a stored copy instead of calling ``compute``; without it outputs live in memory only.
    """

    def __init__(self, model, bench: Benchmark, device, persist: Callable | None = None):
        self.model, self.bench, self.device = model, bench, device
        self._splits = bench.splits()
        self._mem: dict[tuple[str, bool], Outputs] = {}
        self._persist = persist
        self.extracted = 0  # how many splits this store ran the network on (tests and benchmarks count it)

    def _compute(self, name: str, with_fmap: bool) -> Outputs:
        self.extracted += 1
        return extract(self.model, self._splits[name], self.device, with_fmap)

    def get(self, name: str, with_fmap: bool = False) -> Outputs:
        key = (name, with_fmap)
        if key not in self._mem:
            compute = lambda: self._compute(name, with_fmap)  # noqa: E731
            self._mem[key] = self._persist(name, with_fmap, compute) if self._persist else compute()
        return self._mem[key]


def score_split(scorer: Scorer, store: OutputStore, name: str, batch_size: int = 256) -> np.ndarray:
    """ID-ness scores of one split, from cached outputs or, for gradient scorers, from the images."""
    if scorer.uses_input_gradients:
        split = store.bench.splits()[name]
        store.model.eval()
        parts = [scorer.score_inputs(store.model, to_float(split.x[s:s + batch_size], store.device))
                 for s in range(0, len(split), batch_size)]
        scores = np.concatenate(parts)
    else:
        scores = scorer.score(store.get(name, with_fmap=scorer.reads_feature_map))
    scores = np.asarray(scores, dtype=np.float64)
    if not np.isfinite(scores).all():
        raise FloatingPointError(f"{type(scorer).__name__} produced non-finite scores on {name}")
    return scores


def fit_scorer(scorer: Scorer, store: OutputStore, max_train: int | None = None) -> Scorer:
    """Fit on training outputs (a seeded subsample of at most ``max_train`` when given)."""
    if not scorer.needs_fit:
        return scorer.fit(None, store.model)
    train = store.get("id_train", with_fmap=scorer.reads_feature_map)
    index = np.arange(len(train))
    if max_train is not None and len(train) > max_train:
        index = np.sort(np.random.default_rng(0).choice(len(train), max_train, replace=False))
        train = train.subset(index)
    if scorer.needs_train_images:
        return scorer.fit(train, store.model, images=store.bench.id_train.x[index])
    return scorer.fit(train, store.model)


def accuracy(store: OutputStore, name: str) -> float:
    out = store.get(name)
    return float((out.logits.argmax(1) == out.labels).mean())


def validate(scorer: Scorer, store: OutputStore, convention: str = "classic") -> dict[str, float]:
    """Metrics on ID-val vs the OOD validation sets: what hyperparameters are chosen on."""
    s_id = score_split(scorer, store, "id_val")
    per_set = [ood_metrics(s_id, score_split(scorer, store, f"ood_val/{n}"), convention) for n in store.bench.ood_val]
    out = {f"val/{c}": float(np.mean([m[c] for m in per_set])) for c in ("auroc", "aupr_in", "aupr_out", "fpr95")}
    out["val/acc"] = accuracy(store, "id_val")
    return out


def test_matrix(scorer: Scorer, store: OutputStore, convention: str = "classic") -> OODMatrix:
    """The OOD metric matrix on the test sets (reported, never optimised on)."""
    s_id = score_split(scorer, store, "id_test")
    near = {n: score_split(scorer, store, f"near/{n}") for n in store.bench.near}
    far = {n: score_split(scorer, store, f"far/{n}") for n in store.bench.far}
    return ood_matrix(s_id, near, far, accuracy(store, "id_test"), convention)
