"""Benchmarks: name → ID train/val/test, an OOD validation group, near-OOD and far-OOD test sets.

Images are stored as uint8 arrays (N, C, H, W) so a benchmark is cheap to ship to every trial through
Ray's object store; models scale them to [0, 1]. Splits are drawn with a fixed data seed, so every trial
of every sweep sees the same benchmark, and ``fingerprint()`` identifies it in cache keys.
OOD validation sets are disjoint from the test sets (other samples and other image sources): they are
what hyperparameters are chosen on; the test sets are only reported.
"""
from __future__ import annotations

import gzip
import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

DATA_SEED = 0


class DataUnavailable(RuntimeError):
    """A benchmark's data could not be found or fetched; the message says where it was looked for."""


@dataclass
class Split:
    x: np.ndarray  # uint8, (N, C, H, W)
    y: np.ndarray | None = None  # int64 class labels for ID splits

    def __len__(self) -> int:
        return len(self.x)

    def take(self, n: int, rng: np.random.Generator) -> "Split":
        if len(self) <= n:
            return self
        idx = np.sort(rng.choice(len(self), n, replace=False))
        return Split(self.x[idx], None if self.y is None else self.y[idx])


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

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.id_train.x.shape[1:])

    def mean_std(self) -> tuple[list[float], list[float]]:
        x = self.id_train.x.astype(np.float32) / 255.0
        mean = x.mean(axis=(0, 2, 3))
        std = x.std(axis=(0, 2, 3)) + 1e-6
        return mean.tolist(), std.tolist()

    def splits(self) -> dict[str, Split]:
        """Every split by a unique name: id_train, id_val, id_test, ood_val/<n>, near/<n>, far/<n>."""
        out = {"id_train": self.id_train, "id_val": self.id_val, "id_test": self.id_test}
        for group in ("ood_val", "near", "far"):
            for key, split in getattr(self, group).items():
                out[f"{group}/{key}"] = split
        return out

    def fingerprint(self) -> str:
        h = hashlib.sha256(self.name.encode())
        for key, split in sorted(self.splits().items()):
            h.update(key.encode())
            h.update(np.ascontiguousarray(split.x).data)
            if split.y is not None:
                h.update(np.ascontiguousarray(split.y).data)
        return h.hexdigest()[:16]

    def shrink(self, n_train: int = 300, n_eval: int = 120) -> "Benchmark":
        """A tiny copy for smoke tests and CI."""
        rng = np.random.default_rng(DATA_SEED)
        small = lambda d: {k: v.take(n_eval, rng) for k, v in d.items()}  # noqa: E731
        return Benchmark(self.name, self.num_classes, self.id_train.take(n_train, rng), self.id_val.take(n_eval, rng),
                         self.id_test.take(n_eval, rng), small(self.ood_val), small(self.near), small(self.far),
                         dict(self.recipe), smoke=True, aux={k: v.take(n_train, rng) for k, v in self.aux.items()})


_BENCHMARKS: dict[str, Callable[[str | None], Benchmark]] = {}
_DESCRIPTIONS: dict[str, str] = {}


def register_benchmark(name: str, description: str):
    def wrap(fn):
        _BENCHMARKS[name] = fn
        _DESCRIPTIONS[name] = description
        return fn

    return wrap


def is_custom(name: str) -> bool:
    return str(name).lower().endswith((".yaml", ".yml"))


def available() -> dict[str, str]:
    """Benchmark names → one-line descriptions."""
    return dict(sorted(_DESCRIPTIONS.items()))


def load(name: str, data_root: str | None = None, smoke: bool = False) -> Benchmark:
    """A registered benchmark by name, or a custom benchmark YAML file (docs/custom_benchmark.md)."""
    if is_custom(name):
        from orchestrator.benchmarks_custom import load_custom

        bench = load_custom(name, data_root)
        return bench.shrink() if smoke else bench
    try:
        loader = _BENCHMARKS[name]
    except KeyError:
        raise KeyError(f"unknown benchmark {name!r}; known benchmarks: {', '.join(sorted(_BENCHMARKS))}") from None
    bench = loader(data_root)
    return bench.shrink() if smoke else bench


# --------------------------------------------------------------------------------------------- helpers
def _to_uint8(a: np.ndarray, vmax: float) -> np.ndarray:
    return np.clip(np.rint(a * (255.0 / vmax)), 0, 255).astype(np.uint8)


def _stratified_split(y: np.ndarray, fractions: tuple[float, ...], rng) -> list[np.ndarray]:
    """Index arrays, one per fraction, each with every class in proportion."""
    parts = [[] for _ in fractions]
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        bounds = np.cumsum([0] + [int(round(f * len(idx))) for f in fractions])
        bounds[-1] = len(idx)
        for i in range(len(fractions)):
            parts[i].append(idx[bounds[i]:bounds[i + 1]])
    return [np.sort(np.concatenate(p)) for p in parts]


def _grey_images(names: list[str]) -> list[np.ndarray]:
    import skimage.data
    from skimage.color import rgb2gray

    out = []
    for n in names:
        img = getattr(skimage.data, n)()
        if img.ndim == 3:
            img = (rgb2gray(img) * 255).astype(np.uint8)
        out.append(img.astype(np.float32))
    return out


def _patches(sources: list[str], n: int, size: int, scale: int, rng, invert_dark: bool = False) -> np.ndarray:
    """n random size×size patches of scikit-image's bundled images, each downsampled by ``scale``."""
    images = _grey_images(sources)
    out = np.empty((n, 1, size, size), dtype=np.uint8)
    win = size * scale
    for i in range(n):
        img = images[rng.integers(len(images))]
        r = rng.integers(img.shape[0] - win + 1)
        c = rng.integers(img.shape[1] - win + 1)
        patch = img[r:r + win, c:c + win].reshape(size, scale, size, scale).mean(axis=(1, 3))
        out[i, 0] = np.clip(np.rint(patch), 0, 255).astype(np.uint8)
    return out


def _uniform_noise(n: int, size: int, rng) -> np.ndarray:
    return rng.integers(0, 256, size=(n, 1, size, size), dtype=np.uint8)


def _gaussian_noise(n: int, size: int, rng) -> np.ndarray:
    return np.clip(rng.normal(128, 64, size=(n, 1, size, size)), 0, 255).astype(np.uint8)


# Test-time far-OOD sources and validation sources never share an image.
_TEXTURES = ["brick", "grass", "gravel"]
_NATURAL = ["camera", "moon", "astronaut", "coffee"]
_VAL_SOURCES = ["coins", "text", "page", "clock"]


# --------------------------------------------------------------------------------------------- digits
@register_benchmark("digits", "scikit-learn digits 8×8: ID = odd digits, near-OOD = even digits, "
                              "far-OOD = scikit-image textures/natural patches and noise (no download)")
def _digits(data_root: str | None = None) -> Benchmark:
    from sklearn.datasets import load_digits

    rng = np.random.default_rng(DATA_SEED)
    d = load_digits()
    x = _to_uint8(d.images, 16.0)[:, None]
    y = d.target
    id_classes = [1, 3, 5, 7, 9]
    is_id = np.isin(y, id_classes)
    xi, yi = x[is_id], np.searchsorted(id_classes, y[is_id]).astype(np.int64)
    tr, va, te = _stratified_split(yi, (0.6, 0.15, 0.25), rng)
    xo = x[~is_id]
    o = rng.permutation(len(xo))
    n_val = len(xo) // 3
    near_val, near_test = xo[np.sort(o[:n_val])], xo[np.sort(o[n_val:])]
    n_far = 400
    return Benchmark(
        name="digits", num_classes=len(id_classes),
        id_train=Split(xi[tr], yi[tr]), id_val=Split(xi[va], yi[va]), id_test=Split(xi[te], yi[te]),
        ood_val={"even-digits": Split(near_val),
                 "val-patches": Split(np.concatenate([_patches(_VAL_SOURCES, n_far // 2, 8, 4, rng),
                                                      _gaussian_noise(n_far // 2, 8, rng)]))},
        near={"even-digits": Split(near_test)},
        far={"textures": Split(_patches(_TEXTURES, n_far, 8, 4, rng)),
             "natural": Split(_patches(_NATURAL, n_far, 8, 4, rng)),
             "noise": Split(_uniform_noise(n_far, 8, rng))},
        recipe={"backbone": "small_cnn", "epochs": 10, "batch_size": 64, "lr": 0.05, "momentum": 0.9,
                "weight_decay": 5e-4, "nesterov": True},
    )


# --------------------------------------------------------------------------------------------- fashion-mnist
DEBIAN_FASHION = "/usr/share/datasets/fashion-mnist"
_FASHION_FILES = {"train_x": "train-images-idx3-ubyte.gz", "train_y": "train-labels-idx1-ubyte.gz",
                  "test_x": "t10k-images-idx3-ubyte.gz", "test_y": "t10k-labels-idx1-ubyte.gz"}


def _read_idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        data = f.read()
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def _find_fashion_dir(data_root: str | None) -> Path:
    tried = []
    candidates = []
    if data_root:
        candidates += [Path(data_root), Path(data_root) / "FashionMNIST" / "raw", Path(data_root) / "fashion-mnist"]
    candidates.append(Path(DEBIAN_FASHION))
    for c in candidates:
        tried.append(str(c))
        if all((c / f).is_file() for f in _FASHION_FILES.values()):
            return c
    root = Path(data_root) if data_root else Path(os.environ.get("OODSWEEP_DATA", Path.home() / ".cache" / "oodsweep" / "data"))
    try:
        from torchvision.datasets import FashionMNIST

        FashionMNIST(str(root), train=True, download=True)
        FashionMNIST(str(root), train=False, download=True)
        return root / "FashionMNIST" / "raw"
    except Exception as exc:  # noqa: BLE001 - any failure means "not available", reported below
        raise DataUnavailable(
            f"Fashion-MNIST not found: looked in --data-root ({', '.join(tried[:-1]) or 'not given'}), "
            f"in the Debian path {DEBIAN_FASHION} (apt-get install dataset-fashion-mnist), and torchvision's "
            f"download into {root} failed ({type(exc).__name__}: {str(exc)[:120]})") from None


@register_benchmark("fashion-mnist", "Fashion-MNIST 28×28: ID = classes 0-5, near-OOD = classes 6-9, far-OOD = "
                                     "upsampled digits, texture patches, noise (--data-root, Debian package, or download)")
def _fashion(data_root: str | None = None) -> Benchmark:
    import torch
    import torch.nn.functional as F
    from sklearn.datasets import load_digits

    folder = _find_fashion_dir(data_root)
    arr = {k: _read_idx(folder / f) for k, f in _FASHION_FILES.items()}
    rng = np.random.default_rng(DATA_SEED)
    x_tr, y_tr = arr["train_x"][:, None], arr["train_y"].astype(np.int64)
    x_te, y_te = arr["test_x"][:, None], arr["test_y"].astype(np.int64)
    id_tr = y_tr < 6
    fit, val = _stratified_split(y_tr[id_tr], (5 / 6, 1 / 6), rng)
    xi, yi = x_tr[id_tr], y_tr[id_tr]
    id_te = y_te < 6
    near_pool = x_tr[~id_tr]
    near_val = near_pool[np.sort(rng.choice(len(near_pool), 2000, replace=False))]
    digits = load_digits().images.astype(np.float32)[:, None] / 16.0
    digits = F.interpolate(torch.from_numpy(digits), size=(28, 28), mode="bilinear", align_corners=False).numpy()
    n_far = 2000
    return Benchmark(
        name="fashion-mnist", num_classes=6,
        id_train=Split(xi[fit], yi[fit]), id_val=Split(xi[val], yi[val]), id_test=Split(x_te[id_te], y_te[id_te]),
        ood_val={"fashion-6-9": Split(near_val),
                 "val-patches": Split(np.concatenate([_patches(_VAL_SOURCES, n_far // 2, 28, 2, rng),
                                                      _gaussian_noise(n_far // 2, 28, rng)]))},
        near={"fashion-6-9": Split(x_te[~id_te])},
        far={"digits": Split(_to_uint8(digits, 1.0)),
             "textures": Split(_patches(_TEXTURES, n_far, 28, 2, rng)),
             "noise": Split(_uniform_noise(n_far, 28, rng))},
        recipe={"backbone": "small_cnn", "epochs": 3, "batch_size": 128, "lr": 0.05, "momentum": 0.9,
                "weight_decay": 5e-4, "nesterov": True},
    )


from orchestrator import benchmarks_openood  # noqa: E402,F401  (registers cifar10, cifar100)
