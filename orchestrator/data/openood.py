"""OpenOOD v1.5's CIFAR benchmarks: ``cifar10`` and ``cifar100`` (32×32 RGB, CIFAR-style ResNet-18 recipe).

Groups, as in OpenOOD v1.5 (``openood/evaluation_api/datasets.py``)::

    ID        CIFAR-10 (or CIFAR-100)            torchvision
    ood_val   TinyImageNet ("tin")               benchmark_imglist/<bench>/val_tin.txt  (disjoint from test_tin)
    near      CIFAR-100 (or CIFAR-10), TIN       torchvision test set;  benchmark_imglist/<bench>/test_tin.txt
    far       MNIST, SVHN, Textures, Places365   torchvision (MNIST train+test = 70,000, SVHN test);
                                                 benchmark_imglist/<bench>/test_texture.txt, test_places365.txt

Data layout under the data root (``--data-root``, else ``$OODSWEEP_DATA``, else ``~/.cache/oodsweep/data``)::

    <root>/cifar-10-batches-py/{data_batch_1..5,test_batch}      torchvision CIFAR10
    <root>/cifar-100-python/{train,test}                         torchvision CIFAR100
    <root>/MNIST/raw/{train,t10k}-images-idx3-ubyte[.gz]         torchvision MNIST
    <root>/test_32x32.mat  (or <root>/svhn/test_32x32.mat)       torchvision SVHN (split="test")
    <root>/benchmark_imglist/cifar10/{val_tin,test_tin,test_texture,test_places365}.txt   OpenOOD v1.5 lists
    <root>/benchmark_imglist/cifar100/...                        (same names)
    <root>/images_classic/{tin,texture,places365}/...            OpenOOD v1.5 images

The torchvision sets are downloaded into the root when they are missing and the machine is online (set
``OODSWEEP_NO_DOWNLOAD=1`` to never try). If the torchvision files of an OOD set (the other CIFAR, MNIST,
SVHN) are missing and cannot be downloaded, OpenOOD's own list for it (``test_cifar100.txt``/``test_cifar10.txt``,
``test_mnist.txt``, ``test_svhn.txt``) with its images under ``images_classic/`` is used instead.
An image list has one ``relative/path label`` line per image (path relative to ``images_classic/``, label -1 for
OOD), OpenOOD's ``ImglistDataset`` format; OpenOOD's ``scripts/download/download.py`` fetches lists and images.

Every set is located before any is read; whatever is missing is reported in ONE ``DataUnavailable`` message
that names each missing set and where it was expected. The ID validation split is 1,000 training images
(stratified, fixed data seed); the ID test split is the full 10,000-image CIFAR test set. Images become uint8
(N, 3, 32, 32): grey images are repeated over 3 channels, other sizes are resized like OpenOOD's test
preprocessing (shorter side to 32, bilinear, then a 32×32 centre crop). Decoded image lists are kept as ``.npy``
under ``<root>/.oodsweep_arrays/`` (keyed by the list, each image's size and mtime, and the image size), so a
later sweep reads one array instead of decoding tens of thousands of JPEGs again; a read-only root skips it.
"""
from __future__ import annotations

import hashlib
import os
import pickle
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from orchestrator.data import BENCHMARKS
from orchestrator.data.base import DATA_SEED, Benchmark, DataUnavailable, Split, read_idx, stratified_split

IMAGE_SIZE = 32
ID_VAL_SIZE = 1000
#: OpenOOD v1.5's CIFAR baseline (configs/pipelines/train/baseline.yml + configs/networks/resnet18_32x32.yml).
#: OpenOOD v1.5's CIFAR baseline recipe, its augmentation included (RandomCrop(32, padding=4) + horizontal flip).
RECIPE = {"backbone": "resnet18", "epochs": 100, "batch_size": 128, "lr": 0.1, "momentum": 0.9,
          "weight_decay": 5e-4, "nesterov": True, "augment": "crop_flip"}
OPENOOD_HINT = ("OpenOOD v1.5's benchmark_imglist/ and images_classic/ come from OpenOOD's "
                "scripts/download/download.py --contents datasets --datasets ood_v1.5 --dataset_mode benchmark "
                "--save_dir <data root>")


def default_root(data_root: str | None) -> Path:
    if data_root:
        return Path(data_root).expanduser()
    return Path(os.environ.get("OODSWEEP_DATA", Path.home() / ".cache" / "oodsweep" / "data")).expanduser()


def _download_allowed() -> bool:
    return os.environ.get("OODSWEEP_NO_DOWNLOAD", "").strip().lower() in ("", "0", "false", "no")


# --------------------------------------------------------------------------------------------- torchvision sets
@dataclass(frozen=True)
class _TVSet:
    """A dataset in torchvision's on-disk format, read here without torchvision's MD5 checks."""

    title: str
    tv_class: str  # torchvision.datasets class used to download it
    tv_kwargs: tuple[dict, ...]  # one download call per dict
    candidates: Callable[[Path], list[Path]]  # folders/files that would hold it
    required: tuple[str, ...]  # file names (relative to a candidate folder) that must all be there

    def find(self, root: Path) -> Path | None:
        for c in self.candidates(root):
            if all(_exists(c / f) for f in self.required):
                return c
        return None

    def where(self, root: Path) -> str:
        return " or ".join(str(c) for c in self.candidates(root)) + f" ({', '.join(self.required)})"


def _exists(path: Path) -> bool:
    # MNIST's raw files may be left gzipped.
    return path.is_file() or (path.parent / (path.name + ".gz")).is_file()


_CIFAR10_FILES = tuple(f"data_batch_{i}" for i in range(1, 6)) + ("test_batch",)
TV_SETS = {
    "cifar10": _TVSet("CIFAR-10", "CIFAR10", ({"train": True}, {"train": False}),
                      lambda r: [r / "cifar-10-batches-py"], _CIFAR10_FILES),
    "cifar100": _TVSet("CIFAR-100", "CIFAR100", ({"train": True}, {"train": False}),
                       lambda r: [r / "cifar-100-python"], ("train", "test")),
    "mnist": _TVSet("MNIST", "MNIST", ({"train": True}, {"train": False}),
                    lambda r: [r / "MNIST" / "raw"], ("train-images-idx3-ubyte", "t10k-images-idx3-ubyte")),
    "svhn": _TVSet("SVHN", "SVHN", ({"split": "test"},), lambda r: [r, r / "svhn"], ("test_32x32.mat",)),
}


def _download(tv: _TVSet, root: Path) -> None:
    """torchvision's download into ``root`` (replaced in tests: nothing may download there)."""
    import torchvision.datasets

    root.mkdir(parents=True, exist_ok=True)
    cls = getattr(torchvision.datasets, tv.tv_class)
    for kw in tv.tv_kwargs:
        cls(str(root), download=True, **kw)


def _read_cifar_file(path: Path, label_key: str) -> tuple[np.ndarray, np.ndarray]:
    with open(path, "rb") as f:
        d = pickle.load(f, encoding="latin1")
    x = np.asarray(d["data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
    return x, np.asarray(d[label_key], dtype=np.int64)


def read_cifar(folder: Path, which: str, train: bool) -> tuple[np.ndarray, np.ndarray]:
    """CIFAR-10/100 python-pickle batches → uint8 (N, 3, 32, 32), int64 labels (fine labels for CIFAR-100)."""
    if which == "cifar10":
        files = [f"data_batch_{i}" for i in range(1, 6)] if train else ["test_batch"]
        parts = [_read_cifar_file(folder / f, "labels") for f in files]
    else:
        parts = [_read_cifar_file(folder / ("train" if train else "test"), "fine_labels")]
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def _read_idx_any(path: Path) -> np.ndarray:
    if path.is_file():
        data = path.read_bytes()
        ndim = data[3]
        dims = [int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim)]
        return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)
    return read_idx(path.parent / (path.name + ".gz"))


def read_mnist(folder: Path) -> np.ndarray:
    """MNIST train + test images (70,000, as OpenOOD's test_mnist list) → uint8 (N, 3, 32, 32)."""
    x = np.concatenate([_read_idx_any(folder / "train-images-idx3-ubyte"),
                        _read_idx_any(folder / "t10k-images-idx3-ubyte")])
    return _resize_batch(x[:, None])


def read_svhn(folder: Path) -> np.ndarray:
    import scipy.io

    mat = scipy.io.loadmat(str(folder / "test_32x32.mat"))
    return np.ascontiguousarray(np.transpose(mat["X"], (3, 2, 0, 1)).astype(np.uint8))  # (H,W,C,N) → (N,C,H,W)


def _resize_batch(x: np.ndarray, size: int = IMAGE_SIZE, chunk: int = 8192) -> np.ndarray:
    """uint8 (N, C, H, W) → uint8 (N, 3, size, size): bilinear resize, grey repeated over 3 channels."""
    import torch
    import torch.nn.functional as F

    out = np.empty((len(x), 3, size, size), dtype=np.uint8)
    for i in range(0, len(x), chunk):
        b = torch.from_numpy(np.ascontiguousarray(x[i:i + chunk])).float()
        if b.shape[-2:] != (size, size):
            b = F.interpolate(b, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
        b = b.round().clamp(0, 255).to(torch.uint8)
        out[i:i + chunk] = b.expand(-1, 3, -1, -1).numpy() if b.shape[1] == 1 else b.numpy()
    return out


# --------------------------------------------------------------------------------------------- OpenOOD image lists
def read_imglist(path: Path) -> list[str]:
    """Relative image paths of an OpenOOD image list ("relative/path label" lines, split at the first space)."""
    out = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            out.append(line.split(" ", 1)[0])
    return out


def load_image(path: Path, size: int = IMAGE_SIZE) -> np.ndarray:
    """One image → uint8 (3, size, size): RGB, shorter side resized to ``size`` (bilinear), centre crop."""
    from PIL import Image

    with Image.open(path) as im:
        im = im.convert("RGB")
        w, h = im.size
        if (w, h) != (size, size):
            s = size / min(w, h)
            nw, nh = max(size, round(w * s)), max(size, round(h * s))
            im = im.resize((nw, nh), Image.BILINEAR)
            left, top = (nw - size) // 2, (nh - size) // 2
            im = im.crop((left, top, left + size, top + size))
        return np.asarray(im, dtype=np.uint8).transpose(2, 0, 1)


def load_images(paths: list[Path], size: int = IMAGE_SIZE) -> np.ndarray:
    out = np.empty((len(paths), 3, size, size), dtype=np.uint8)
    workers = min(8, os.cpu_count() or 1)
    with ThreadPoolExecutor(workers) as pool:  # PIL decodes without the GIL
        for i, img in enumerate(pool.map(lambda p: load_image(p, size), paths, chunksize=64)):
            out[i] = img
    return out


ARRAY_CACHE = ".oodsweep_arrays"


def _list_key(paths: list[Path], size: int) -> str:
    """Changes when an image is added, removed, replaced or touched, or the output size changes."""
    digest = hashlib.sha256(f"{size}\n".encode())
    for p in paths:
        st = p.stat()
        digest.update(f"{p}\t{st.st_size}\t{st.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:20]


def load_images_cached(root: Path, label: str, paths: list[Path], size: int = IMAGE_SIZE) -> np.ndarray:
    """:func:`load_images`, remembered as ``<root>/.oodsweep_arrays/<label>-<key>.npy`` (written atomically)."""
    stem = label.replace("/", "_").replace("-", "_")  # no "-": it separates the stem from the key
    target = root / ARRAY_CACHE / f"{stem}-{_list_key(paths, size)}.npy"
    if target.is_file():
        try:
            x = np.load(target, allow_pickle=False)
            if x.shape == (len(paths), 3, size, size) and x.dtype == np.uint8:
                return x
        except (OSError, ValueError):
            pass  # a damaged file: decode again and replace it
    x = load_images(paths, size)
    try:
        target.parent.mkdir(exist_ok=True)
        tmp = target.with_suffix(f".{os.getpid()}.tmp")
        with open(tmp, "wb") as f:
            np.save(f, x, allow_pickle=False)
        os.replace(tmp, target)
        for stale in target.parent.glob(f"{stem}-*.npy"):  # older versions of this list
            if stale != target:
                stale.unlink(missing_ok=True)
    except OSError:
        pass  # a read-only data root: no cache, same arrays
    return x


def _check_imglist(root: Path, rel_list: str) -> tuple[list[Path] | None, str | None]:
    """(image paths, None) when the list and all its images are there, else (None, what is missing)."""
    lst = root / "benchmark_imglist" / rel_list
    if not lst.is_file():
        return None, f"image list {lst} not found"
    images = root / "images_classic"
    rel = read_imglist(lst)
    if not rel:
        return None, f"image list {lst} is empty"
    paths = [images / r for r in rel]
    absent = [p for p in paths if not p.is_file()]
    if absent:
        return None, f"{len(absent)} of {len(paths)} images of {lst.name} missing under {images} (first: {absent[0]})"
    return paths, None


# --------------------------------------------------------------------------------------------- the benchmarks
#: group → [(set name, title, torchvision key or None, OpenOOD list file name)]
def _plan(id_name: str) -> dict[str, list[tuple[str, str, str | None, str]]]:
    other = "cifar100" if id_name == "cifar10" else "cifar10"
    return {
        "ood_val": [("tin", "TinyImageNet (OOD validation)", None, "val_tin.txt")],
        "near": [(other, f"{TV_SETS[other].title} test (near-OOD)", other, f"test_{other}.txt"),
                 ("tin", "TinyImageNet (near-OOD test)", None, "test_tin.txt")],
        "far": [("mnist", "MNIST (far-OOD)", "mnist", "test_mnist.txt"),
                ("svhn", "SVHN test (far-OOD)", "svhn", "test_svhn.txt"),
                ("texture", "Textures (far-OOD)", None, "test_texture.txt"),
                ("places365", "Places365 (far-OOD)", None, "test_places365.txt")],
    }


def load_openood(id_name: str, data_root: str | None = None, download: bool | None = None) -> Benchmark:
    """Build ``cifar10`` or ``cifar100``; raises one DataUnavailable naming every missing set."""
    if id_name not in ("cifar10", "cifar100"):
        raise KeyError(f"no OpenOOD benchmark {id_name!r}")
    root = default_root(data_root)
    download = _download_allowed() if download is None else download
    missing: list[str] = []
    download_error: list[str] = []  # after one failed download (offline), don't try the others

    def locate_tv(key: str) -> Path | None:
        tv = TV_SETS[key]
        found = tv.find(root)
        if found is None and download and not download_error:
            try:
                _download(tv, root)
            except Exception as exc:  # noqa: BLE001 - any failure means "not available", reported below
                download_error.append(f"{type(exc).__name__}: {str(exc)[:120]}")
            found = tv.find(root)
        return found

    # 1. Locate everything.
    id_dir = locate_tv(id_name)
    if id_dir is None:
        missing.append(f"{TV_SETS[id_name].title} (ID; torchvision files in {TV_SETS[id_name].where(root)})")
    sources: dict[str, dict[str, tuple[str, object]]] = {"ood_val": {}, "near": {}, "far": {}}
    for group, sets in _plan(id_name).items():
        for name, title, tv_key, list_name in sets:
            rel_list = f"{id_name}/{list_name}"
            if tv_key is not None:
                folder = locate_tv(tv_key)
                if folder is not None:
                    sources[group][name] = ("tv", (tv_key, folder))
                    continue
                paths, why = _check_imglist(root, rel_list)
                if paths is not None:
                    sources[group][name] = ("list", paths)
                    continue
                missing.append(f"{title} (torchvision files in {TV_SETS[tv_key].where(root)}, "
                               f"or OpenOOD's list: {why})")
            else:
                paths, why = _check_imglist(root, rel_list)
                if paths is None:
                    missing.append(f"{title} ({why})")
                else:
                    sources[group][name] = ("list", paths)
    if missing:
        tail = f"; torchvision download into {root} failed ({download_error[0]})" if download_error else (
            "" if download else "; downloads are off (OODSWEEP_NO_DOWNLOAD)")
        raise DataUnavailable(
            f"{id_name}: {len(missing)} data set(s) missing under {root} (--data-root): " + "; ".join(missing)
            + tail + f". {OPENOOD_HINT}")
    # OpenOOD's TIN validation images must not be among the test images.
    val_paths = {p for kind, v in sources["ood_val"].values() if kind == "list" for p in v}
    for group in ("near", "far"):
        for name, (kind, v) in sources[group].items():
            if kind == "list" and val_paths.intersection(v):
                raise DataUnavailable(
                    f"{id_name}: {len(val_paths.intersection(v))} OOD validation images (val_tin.txt) are also in "
                    f"the {group}-OOD test list for {name!r} under {root / 'benchmark_imglist' / id_name}; "
                    "the OOD validation set must be disjoint from the test sets")

    # 2. Read.
    x_tr, y_tr = read_cifar(id_dir, id_name, train=True)
    x_te, y_te = read_cifar(id_dir, id_name, train=False)
    rng = np.random.default_rng(DATA_SEED)
    frac = min(ID_VAL_SIZE / len(y_tr), 0.5)
    fit, val = stratified_split(y_tr, (1 - frac, frac), rng)

    def read(name: str, kind: str, v) -> Split:
        if kind == "list":
            return Split(load_images_cached(root, f"{id_name}-{name}", v))
        key, folder = v
        if key in ("cifar10", "cifar100"):
            return Split(read_cifar(folder, key, train=False)[0])
        return Split(read_mnist(folder) if key == "mnist" else read_svhn(folder))

    groups = {g: {n: read(f"{g}-{n}", *s) for n, s in sets.items()} for g, sets in sources.items()}
    return Benchmark(
        name=id_name, num_classes=10 if id_name == "cifar10" else 100,
        id_train=Split(x_tr[fit], y_tr[fit]), id_val=Split(x_tr[val], y_tr[val]), id_test=Split(x_te, y_te),
        ood_val=groups["ood_val"], near=groups["near"], far=groups["far"], recipe=dict(RECIPE),
        hflip_invariant=True)


# Descriptions are literal strings: `list` reads them from this file's source without importing it.
@BENCHMARKS.register("cifar10",
                     description="OpenOOD v1.5 CIFAR-10 32×32: near-OOD = CIFAR-100, TinyImageNet; far-OOD = "
                     "MNIST, SVHN, Textures, Places365; OOD val = TinyImageNet val_tin (torchvision + OpenOOD image "
                     "lists under --data-root)")
def cifar10(data_root: str | None = None) -> Benchmark:
    return load_openood("cifar10", data_root)


@BENCHMARKS.register("cifar100",
                     description="OpenOOD v1.5 CIFAR-100 32×32: near-OOD = CIFAR-10, TinyImageNet; far-OOD = "
                     "MNIST, SVHN, Textures, Places365; OOD val = TinyImageNet val_tin (torchvision + OpenOOD image "
                     "lists under --data-root)")
def cifar100(data_root: str | None = None) -> Benchmark:
    return load_openood("cifar100", data_root)
