"""What a benchmark is: name → ID train/val/test, an OOD validation group, near-OOD and far-OOD test sets.

Images are stored as uint8 arrays (N, C, H, W) so a benchmark is cheap to ship to every trial through
Ray's object store; models scale them to [0, 1]. Splits are drawn with a fixed data seed, so every trial
of every sweep sees the same benchmark, and ``fingerprint()`` identifies it in cache keys.
OOD validation sets are disjoint from the test sets (other samples and other image sources): they are
what hyperparameters are chosen on; the test sets are only reported.
"""
from __future__ import annotations

import gzip
import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from orchestrator.data.lazy import ImageFiles, select

DATA_SEED = 0


class DataUnavailable(RuntimeError):
    """A benchmark's data could not be found or fetched; the message says where it was looked for."""


#: Streamed training images sampled for the normalisation statistics.
STATS_SAMPLE = 2000


@dataclass
class Split:
    x: np.ndarray | ImageFiles  # uint8, (N, C, H, W); or files decoded per batch (orchestrator.data.lazy)
    y: np.ndarray | None = None  # int64 class labels for ID splits

    def __len__(self) -> int:
        return len(self.x)

    def take(self, n: int, rng: np.random.Generator) -> Split:
        if len(self) <= n:
            return self
        idx = np.sort(rng.choice(len(self), n, replace=False))
        return Split(select(self.x, idx), None if self.y is None else self.y[idx])


@dataclass
class Benchmark:
    name: str
    num_classes: int
    id_train: Split
    id_val: Split
    id_test: Split
    ood_val: dict[str, Split]
    near: dict[str, Split]
    far: dict[str, Split]
    #: The network's training recipe for this benchmark; a search space's fixed/searched knobs override it.
    recipe: dict = field(default_factory=dict)
    smoke: bool = False
    #: Auxiliary outlier sets for training (Outlier Exposure); never the same data as any OOD test set.
    aux: dict[str, Split] = field(default_factory=dict)
    #: Horizontal flips preserve labels (natural images, clothing: True; digits, text: False). Augmentations
    #: that flip read it (MODE's ``hflip: auto``).
    hflip_invariant: bool = False
    #: Per-channel (mean, std) of the training images when known up front (ImageNet's); else computed once.
    stats: tuple[list[float], list[float]] | None = None
    #: False for benchmarks meant for a given network (``--model``): oodsweep does not train on them.
    trainable: bool = True

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.id_train.x.shape[1:])

    def mean_std(self) -> tuple[list[float], list[float]]:
        """Per-channel statistics of the training images (of a seeded sample of 2,000 when they are streamed)."""
        if self.stats is not None:
            return self.stats
        x = self.id_train.x
        if isinstance(x, ImageFiles):
            n = len(x)
            x = x[np.sort(np.random.default_rng(DATA_SEED).choice(n, min(n, STATS_SAMPLE), replace=False))]
        x = x.astype(np.float32) / 255.0
        mean = x.mean(axis=(0, 2, 3))
        std = x.std(axis=(0, 2, 3)) + 1e-6
        if isinstance(self.id_train.x, ImageFiles):  # decoding the sample is slow: keep the result
            self.stats = (mean.tolist(), std.tolist())
        return mean.tolist(), std.tolist()

    def splits(self) -> dict[str, Split]:
        """Every split by a unique name: id_train, id_val, id_test, ood_val/<n>, near/<n>, far/<n>."""
        out = {"id_train": self.id_train, "id_val": self.id_val, "id_test": self.id_test}
        for group in ("ood_val", "near", "far"):
            for key, split in getattr(self, group).items():
                out[f"{group}/{key}"] = split
        return out

    def fingerprint(self) -> str:
        """What the data a network learns from is: every split's images and labels, and the declared properties
        that change training (whether flips preserve labels)."""
        h = hashlib.sha256(self.name.encode())
        h.update(f"hflip_invariant={self.hflip_invariant}".encode())
        for key, split in sorted(self.splits().items()):
            h.update(key.encode())
            h.update(split.x.digest() if isinstance(split.x, ImageFiles) else np.ascontiguousarray(split.x).data)
            if split.y is not None:
                h.update(np.ascontiguousarray(split.y).data)
        return h.hexdigest()[:16]

    def shrink(self, n_train: int = 300, n_eval: int = 120) -> Benchmark:
        """A tiny copy for smoke tests and CI."""
        rng = np.random.default_rng(DATA_SEED)
        small = lambda d: {k: v.take(n_eval, rng) for k, v in d.items()}  # noqa: E731
        return Benchmark(self.name, self.num_classes, self.id_train.take(n_train, rng), self.id_val.take(n_eval, rng),
                         self.id_test.take(n_eval, rng), small(self.ood_val), small(self.near), small(self.far),
                         dict(self.recipe), smoke=True, aux={k: v.take(n_train, rng) for k, v in self.aux.items()},
                         hflip_invariant=self.hflip_invariant, stats=self.stats, trainable=self.trainable)


# --------------------------------------------------------------------------------------------- helpers
def to_uint8(a: np.ndarray, vmax: float) -> np.ndarray:
    return np.clip(np.rint(a * (255.0 / vmax)), 0, 255).astype(np.uint8)


def stratified_split(y: np.ndarray, fractions: tuple[float, ...], rng) -> list[np.ndarray]:
    """Index arrays, one per fraction, each with every class in proportion."""
    parts = [[] for _ in fractions]
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        bounds = np.cumsum([0] + [int(round(f * len(idx))) for f in fractions])
        bounds[-1] = len(idx)
        for i in range(len(fractions)):
            parts[i].append(idx[bounds[i]:bounds[i + 1]])
    return [np.sort(np.concatenate(p)) for p in parts]


def read_idx(path: Path) -> np.ndarray:
    """A gzipped IDX file (the MNIST family's format) as an array."""
    with gzip.open(path, "rb") as f:
        data = f.read()
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)
