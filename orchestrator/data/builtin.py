"""The built-in benchmarks that need no download: ``digits`` (scikit-learn) and ``fashion-mnist`` (Debian package,
``--data-root`` or torchvision's download)."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from orchestrator.data import BENCHMARKS
from orchestrator.data.base import DATA_SEED, Benchmark, DataUnavailable, Split, read_idx, stratified_split, to_uint8


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
@BENCHMARKS.register("digits", description="scikit-learn digits 8×8: ID = odd digits, near-OOD = even digits, "
                              "far-OOD = scikit-image textures/natural patches and noise (no download)")
def _digits(data_root: str | None = None) -> Benchmark:
    from sklearn.datasets import load_digits

    rng = np.random.default_rng(DATA_SEED)
    d = load_digits()
    x = to_uint8(d.images, 16.0)[:, None]
    y = d.target
    id_classes = [1, 3, 5, 7, 9]
    is_id = np.isin(y, id_classes)
    xi, yi = x[is_id], np.searchsorted(id_classes, y[is_id]).astype(np.int64)
    tr, va, te = stratified_split(yi, (0.6, 0.15, 0.25), rng)
    xo = x[~is_id]
    o = rng.permutation(len(xo))
    n_val = len(xo) // 3
    near_val, near_test = xo[np.sort(o[:n_val])], xo[np.sort(o[n_val:])]
    n_far = 400
    return Benchmark(
        name="digits", num_classes=len(id_classes), hflip_invariant=False,
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
    default = Path.home() / ".cache" / "oodsweep" / "data"
    root = Path(data_root) if data_root else Path(os.environ.get("OODSWEEP_DATA", default))
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


@BENCHMARKS.register("fashion-mnist",
                     description="Fashion-MNIST 28×28: ID = classes 0-5, near-OOD = classes 6-9, far-OOD = "
                                 "upsampled digits, texture patches, noise (--data-root, Debian package, or download)")
def _fashion(data_root: str | None = None) -> Benchmark:
    import torch
    import torch.nn.functional as F
    from sklearn.datasets import load_digits

    folder = _find_fashion_dir(data_root)
    arr = {k: read_idx(folder / f) for k, f in _FASHION_FILES.items()}
    rng = np.random.default_rng(DATA_SEED)
    x_tr, y_tr = arr["train_x"][:, None], arr["train_y"].astype(np.int64)
    x_te, y_te = arr["test_x"][:, None], arr["test_y"].astype(np.int64)
    id_tr = y_tr < 6
    fit, val = stratified_split(y_tr[id_tr], (5 / 6, 1 / 6), rng)
    xi, yi = x_tr[id_tr], y_tr[id_tr]
    id_te = y_te < 6
    near_pool = x_tr[~id_tr]
    near_val = near_pool[np.sort(rng.choice(len(near_pool), 2000, replace=False))]
    digits = load_digits().images.astype(np.float32)[:, None] / 16.0
    digits = F.interpolate(torch.from_numpy(digits), size=(28, 28), mode="bilinear", align_corners=False).numpy()
    n_far = 2000
    return Benchmark(
        name="fashion-mnist", num_classes=6, hflip_invariant=True,
        id_train=Split(xi[fit], yi[fit]), id_val=Split(xi[val], yi[val]), id_test=Split(x_te[id_te], y_te[id_te]),
        ood_val={"fashion-6-9": Split(near_val),
                 "val-patches": Split(np.concatenate([_patches(_VAL_SOURCES, n_far // 2, 28, 2, rng),
                                                      _gaussian_noise(n_far // 2, 28, rng)]))},
        near={"fashion-6-9": Split(x_te[~id_te])},
        far={"digits": Split(to_uint8(digits, 1.0)),
             "textures": Split(_patches(_TEXTURES, n_far, 28, 2, rng)),
             "noise": Split(_uniform_noise(n_far, 28, rng))},
        recipe={"backbone": "small_cnn", "epochs": 3, "batch_size": 128, "lr": 0.05, "momentum": 0.9,
                "weight_decay": 5e-4, "nesterov": True},
    )

