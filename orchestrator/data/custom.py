"""User-defined benchmarks from a YAML file: ``python -m orchestrator sweep METHOD --benchmark my_bench.yaml``.

Format (see ``docs/how-to/custom-benchmark.md`` for a worked example)::

    name: my-bench               # optional; default: the file name without .yaml
    image_size: 32               # optional: N or [H, W]; default: the size of the first ID training image
    channels: 3                  # optional: 1 or 3; default: 1 if the ID training images are grey, else 3
    resize: crop                 # optional: crop (shorter side to size, centre crop; default) or stretch
    seed: 0                      # optional: seed of the ID split and of `limit` subsets (default 0)
    num_classes: 10              # optional; default: the number of class folders, else the largest label + 1
    hflip: false                 # optional: horizontal flips preserve labels (natural images: true); default false
    stream: false                # optional: folder images stay on disk, decoded batch by batch (large folders)
    id:
      train: SOURCE              # required ("source" is an alias)
      val: SOURCE                # optional: carved from train (stratified) when absent
      test: SOURCE               # optional: carved from train (stratified) when absent
      split: {val: 0.1, test: 0.2}   # fractions of train carved out for the splits not given (these defaults)
      classes: [cat, dog]        # optional: class-folder order (folder sources); default: sorted names
    ood_val:                     # required, at least one set: what hyperparameters are chosen on
      NAME: SOURCE
    near:                        # near-OOD test sets   } at least one test set in near + far;
      NAME: SOURCE               #                      } no image may be both in ood_val and in a test set
    far:                         # far-OOD test sets
      NAME: SOURCE
    recipe:                      # optional, merged over the default (resnet18 for ≥32×32 RGB, else small_cnn)
      backbone: resnet18         # small_cnn | resnet18
      epochs: 30
      batch_size: 128
      lr: 0.1
      momentum: 0.9
      weight_decay: 5.0e-4
      nesterov: true

A SOURCE is one of::

    {type: torchvision, class: CIFAR10, kwargs: {train: false}}
        # torchvision.datasets.<class>(root=<data root>, **kwargs); kwargs.root overrides the root,
        # kwargs.download defaults to false. Labels from the dataset (ID), ignored for OOD.
    {type: folder, path: images/train}
        # ID: one sub-folder per class (label = index in `classes` / sorted folder names);
        # OOD: every image below the folder (recursively). png, jpg, jpeg, bmp, gif, tif, tiff, webp, ppm, pgm.
    {type: npy, x: x.npy, y: y.npy, layout: NHWC}
        # x: (N, H, W), (N, H, W, C) or (N, C, H, W) with C in {1, 3}, uint8 (or integers in 0..255) or float
        # in [0, 1]; layout (NHW | NHWC | NCHW) only where the shape is ambiguous; y: int labels (ID only).
    path/to/folder  or  path/to/x.npy       # shorthand for a folder / an npy source without labels

Every source also takes ``range: [start, stop]`` (a slice, in file order; stop may be null) and ``limit: N`` (a
seeded random subset of N), e.g. to cut one OOD pool into disjoint validation and test parts.
Relative paths are resolved against the YAML file's folder, then against ``--data-root``.

Images become uint8 (N, C, H, W) of ``channels`` × ``image_size``: grey is repeated over 3 channels, RGB becomes
grey by PIL's luma (L = 0.299 R + 0.587 G + 0.114 B), other sizes are resized bilinearly.

Errors are one line naming the file and the entry (``bench.yaml: far.noise.x: ...``): a malformed file raises
:class:`CustomBenchmarkError` (a ``ValueError`` and a ``DataUnavailable``); missing data raises ONE
``DataUnavailable`` that names every missing entry, before anything is read.
"""
from __future__ import annotations

import hashlib
import inspect
import os
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from orchestrator.data.base import DATA_SEED, Benchmark, DataUnavailable, Split, stratified_split
from orchestrator.data.lazy import ImageFiles, convert_image, resize_image, select
from orchestrator.knobs import KnobError, check_value
from orchestrator.recipe import RECIPE
from orchestrator.registry import closest

IMAGE_EXTS = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}
TOP_KEYS = {"stream", "name", "image_size", "channels", "resize", "seed", "num_classes", "hflip", "id", "ood_val",
            "near", "far", "recipe"}
ID_KEYS = {"train", "source", "val", "test", "split", "classes"}
SOURCE_KEYS = {"torchvision": {"type", "class", "kwargs", "range", "limit"},
               "folder": {"type", "path", "range", "limit"},
               "npy": {"type", "x", "y", "layout", "range", "limit"}}
DEFAULT_RECIPES = {
    "resnet18": {"backbone": "resnet18", "epochs": 100, "batch_size": 128, "lr": 0.1, "momentum": 0.9,
                 "weight_decay": 5e-4, "nesterov": True},
    "small_cnn": {"backbone": "small_cnn", "epochs": 10, "batch_size": 128, "lr": 0.05, "momentum": 0.9,
                  "weight_decay": 5e-4, "nesterov": True},
}


class CustomBenchmarkError(DataUnavailable, ValueError):
    """A malformed custom-benchmark YAML; the message names the file and the entry."""


@dataclass
class _Source:
    entry: str  # e.g. "far.noise"
    type: str
    spec: dict
    is_id: bool
    paths: dict[str, Path] = field(default_factory=dict)  # resolved files/folders by key (path, x, y)
    dataset: object = None  # the opened torchvision dataset


@dataclass
class _Raw:
    """Loaded, not yet normalised: a uint8 array (N, C, H, W) or a list of uint8 (C, H, W) of varying sizes."""

    images: np.ndarray | list
    labels: np.ndarray | None = None
    class_names: list[str] | None = None  # folder sources: the class of each label


class _FirstKnown(ImageFiles):
    """Streamed ID images before the benchmark's format is known: the first one is decoded (its channels and size
    are the defaults of ``channels`` and ``image_size``)."""

    def __init__(self, files, first: np.ndarray):
        super().__init__(files, first.shape[0], first.shape[1:])
        self.first = first

    def __getitem__(self, index):
        return self.first if isinstance(index, (int, np.integer)) and index == 0 else super().__getitem__(index)


class _Loader:
    stream = False  # folder sources stay on disk (``stream: true``)

    def __init__(self, path: Path, data_root: str | None):
        self.file = path
        self.data_root = Path(data_root).expanduser() if data_root else None
        self.seed = DATA_SEED

    def err(self, entry: str, msg: str) -> CustomBenchmarkError:
        return CustomBenchmarkError(f"{self.file}: {entry}: {msg}" if entry else f"{self.file}: {msg}")

    # ----------------------------------------------------------------------------------- parsing
    def resolve(self, value, entry: str) -> Path:
        if not isinstance(value, str) or not value:
            raise self.err(entry, f"expected a path, got {value!r}")
        p = Path(value).expanduser()
        if p.is_absolute():
            return p
        here = self.file.parent / p
        if not here.exists() and self.data_root is not None and (self.data_root / p).exists():
            return self.data_root / p
        return here

    def parse_source(self, spec, entry: str, is_id: bool) -> _Source:
        if isinstance(spec, str):
            spec = {"type": "npy", "x": spec} if spec.lower().endswith(".npy") else {"type": "folder", "path": spec}
        if not isinstance(spec, dict):
            raise self.err(entry, f"expected a source (a mapping with a type, or a path), got {spec!r}")
        kind = spec.get("type")
        if kind not in SOURCE_KEYS:
            raise self.err(entry, f"type must be one of {', '.join(SOURCE_KEYS)}, got {kind!r}")
        unknown = set(spec) - SOURCE_KEYS[kind]
        if unknown:
            raise self.err(entry, f"unknown key(s) {', '.join(sorted(map(str, unknown)))} for a {kind} source "
                                  f"(allowed: {', '.join(sorted(SOURCE_KEYS[kind]))})")
        src = _Source(entry, kind, spec, is_id)
        if kind == "folder":
            src.paths["path"] = self.resolve(spec.get("path"), f"{entry}.path")
        elif kind == "npy":
            src.paths["x"] = self.resolve(spec.get("x"), f"{entry}.x")
            if "y" in spec:
                if not is_id:
                    raise self.err(f"{entry}.y", "labels are only for ID sets")
                src.paths["y"] = self.resolve(spec["y"], f"{entry}.y")
            elif is_id:
                raise self.err(entry, "an ID npy source needs y: labels.npy")
            if spec.get("layout", "NCHW") not in ("NHW", "NHWC", "NCHW"):
                raise self.err(f"{entry}.layout", f"must be NHW, NHWC or NCHW, got {spec['layout']!r}")
        else:
            cls = spec.get("class")
            if not isinstance(cls, str) or not cls:
                raise self.err(f"{entry}.class", f"expected a torchvision.datasets class name, got {cls!r}")
            import torchvision.datasets

            if not isinstance(getattr(torchvision.datasets, cls, None), type):
                raise self.err(f"{entry}.class", f"torchvision.datasets has no dataset class {cls!r}")
            if not isinstance(spec.get("kwargs", {}), dict):
                raise self.err(f"{entry}.kwargs", f"expected a mapping, got {spec['kwargs']!r}")
        if "range" in spec:
            r = spec["range"]
            if not (isinstance(r, list) and len(r) == 2 and all(v is None or isinstance(v, int) for v in r)):
                raise self.err(f"{entry}.range", f"expected [start, stop] (integers or null), got {r!r}")
        if "limit" in spec and not (isinstance(spec["limit"], int) and spec["limit"] > 0):
            raise self.err(f"{entry}.limit", f"expected a positive integer, got {spec['limit']!r}")
        return src

    # ----------------------------------------------------------------------------------- opening
    def missing(self, src: _Source) -> list[str]:
        """What of this source is not there (torchvision datasets are opened here)."""
        out = []
        if src.type == "torchvision":
            try:
                self._open_torchvision(src)
            except CustomBenchmarkError:
                raise
            except DataUnavailable as exc:
                out.append(str(exc))
        for key, p in src.paths.items():
            if key == "path" and not p.is_dir():
                out.append(f"{src.entry}.path: folder {p} not found")
            elif key != "path" and not p.is_file():
                out.append(f"{src.entry}.{key}: file {p} not found")
        return out

    def load(self, src: _Source, classes: list[str] | None) -> _Raw:
        if src.type == "npy":
            raw = self._load_npy(src)
        elif src.type == "folder":
            raw = self._load_folder(src, classes)
        else:
            raw = self._load_torchvision(src)
        n = len(raw.images)
        idx = np.arange(n)
        if "range" in src.spec:
            idx = idx[slice(*src.spec["range"])]
        if "limit" in src.spec and len(idx) > src.spec["limit"]:
            rng = np.random.default_rng([self.seed, zlib.crc32(src.entry.encode())])
            idx = np.sort(rng.choice(idx, src.spec["limit"], replace=False))
        if len(idx) == 0:
            raise self.err(src.entry, "no images (after range/limit)" if n else "no images")
        if len(idx) != n:
            imgs = (select(raw.images, idx) if isinstance(raw.images, (np.ndarray, ImageFiles))
                    else [raw.images[i] for i in idx])
            raw = _Raw(imgs, None if raw.labels is None else raw.labels[idx], raw.class_names)
        return raw

    def _as_nchw(self, x: np.ndarray, entry: str, layout: str | None) -> np.ndarray:
        if x.ndim == 3:
            if layout not in (None, "NHW"):
                raise self.err(entry, f"a 3-d array is (N, H, W), not {layout}")
            x = x[:, None]
        elif x.ndim == 4:
            if layout is None:
                first, last = x.shape[1] in (1, 3), x.shape[3] in (1, 3)
                layout = "NHWC" if last and not first else "NCHW"
            if layout == "NHW":
                raise self.err(entry, f"a 4-d array {x.shape} is not (N, H, W)")
            if layout == "NHWC":
                x = x.transpose(0, 3, 1, 2)
            if x.shape[1] not in (1, 3):
                raise self.err(entry, f"images need 1 or 3 channels, got shape {tuple(x.shape)} read as {layout}")
        else:
            raise self.err(entry, f"expected (N, H, W), (N, H, W, C) or (N, C, H, W), got shape {tuple(x.shape)}")
        return self._to_uint8(x, entry)

    def _to_uint8(self, x: np.ndarray, entry: str) -> np.ndarray:
        if x.dtype == np.uint8:
            return np.ascontiguousarray(x)
        if x.dtype == bool or not (np.issubdtype(x.dtype, np.integer) or np.issubdtype(x.dtype, np.floating)):
            raise self.err(entry, f"images must be uint8 or float in [0, 1], got dtype {x.dtype}")
        if x.size == 0:
            return x.astype(np.uint8)
        lo, hi = x.min(), x.max()
        if np.issubdtype(x.dtype, np.floating):
            if not (np.isfinite(lo) and np.isfinite(hi) and lo >= -1e-6 and hi <= 1 + 1e-6):
                raise self.err(entry, f"float images must lie in [0, 1], found values in [{lo:g}, {hi:g}]")
            return np.clip(np.rint(x * 255.0), 0, 255).astype(np.uint8)
        if lo < 0 or hi > 255:
            raise self.err(entry, f"integer images must lie in 0..255, found {lo}..{hi}")
        return x.astype(np.uint8)

    def _labels(self, y, n: int, entry: str) -> np.ndarray:
        y = np.asarray(y)
        if y.ndim == 2 and 1 in y.shape:
            y = y.reshape(-1)
        if y.ndim != 1 or len(y) != n:
            raise self.err(entry, f"expected {n} labels (one per image), got shape {tuple(y.shape)}")
        if not np.issubdtype(y.dtype, np.integer):
            if not (np.issubdtype(y.dtype, np.floating) and np.all(np.mod(y, 1) == 0)):
                raise self.err(entry, f"labels must be integers, got dtype {y.dtype}")
        if len(y) and y.min() < 0:
            raise self.err(entry, f"labels must be ≥ 0, found {y.min()}")
        return y.astype(np.int64)

    def _load_npy(self, src: _Source) -> _Raw:
        try:
            x = np.load(src.paths["x"], allow_pickle=False)
        except Exception as exc:  # any reason a file is not an .npy array: one line naming the file
            raise self.err(f"{src.entry}.x", f"cannot read {src.paths['x']} as .npy ({type(exc).__name__}: {exc})") \
                from None
        x = self._as_nchw(x, f"{src.entry}.x", src.spec.get("layout"))
        y = None
        if "y" in src.paths:
            try:
                y_arr = np.load(src.paths["y"], allow_pickle=False)
            except Exception as exc:  # any reason a file is not an .npy array: one line naming the file
                raise self.err(f"{src.entry}.y", f"cannot read {src.paths['y']} as .npy ({type(exc).__name__}: "
                                                 f"{exc})") from None
            y = self._labels(y_arr, len(x), f"{src.entry}.y")
        return _Raw(x, y)

    def _load_folder(self, src: _Source, classes: list[str] | None) -> _Raw:
        from PIL import Image

        root = src.paths["path"]

        def images_under(d: Path) -> list[Path]:
            return sorted(p for p in d.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTS
                          and not any(part.startswith(".") for part in p.relative_to(root).parts))

        def read(p: Path) -> np.ndarray:
            try:
                with Image.open(p) as im:
                    im = im.convert("L" if im.mode in ("1", "L", "LA", "I", "I;16", "F") else "RGB")
                    a = np.asarray(im, dtype=np.uint8)
            except Exception as exc:  # noqa: BLE001
                raise self.err(src.entry, f"cannot read image {p} ({type(exc).__name__}: {exc})") from None
            return a[None] if a.ndim == 2 else a.transpose(2, 0, 1)

        if not src.is_id:
            files = images_under(root)
            if not files:
                raise self.err(src.entry, f"no images ({', '.join(sorted(IMAGE_EXTS))}) under {root}")
            if self.stream:  # decoded batch by batch later; the format is set once the first ID image is read
                return _Raw(ImageFiles(files, 0, (0, 0)))
            return _Raw([read(p) for p in files])
        found = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
        if not found:
            raise self.err(src.entry, f"an ID folder needs one sub-folder per class; {root} has none")
        names = list(classes) if classes else found
        extra = sorted(set(found) - set(names))
        if extra:
            raise self.err(src.entry, f"class folder(s) {', '.join(extra)} under {root} are not in id.classes")
        imgs, labels, paths = [], [], []
        for label, name in enumerate(names):
            if not (root / name).is_dir():
                continue
            files = images_under(root / name)
            paths += files
            labels += [label] * len(files)
        if not paths:
            raise self.err(src.entry, f"no images ({', '.join(sorted(IMAGE_EXTS))}) in the class folders of {root}")
        if self.stream:
            first = read(paths[0])  # its channels and size are the benchmark's defaults
            return _Raw(_FirstKnown(paths, first), np.asarray(labels, dtype=np.int64), names)
        imgs = [read(p) for p in paths]
        return _Raw(imgs, np.asarray(labels, dtype=np.int64), names)

    def _open_torchvision(self, src: _Source) -> None:
        import torchvision.datasets

        kwargs = dict(src.spec.get("kwargs") or {})
        root = kwargs.pop("root", None)
        root = self.resolve(root, f"{src.entry}.kwargs.root") if root else (
            self.data_root or Path(os.environ.get("OODSWEEP_DATA", Path.home() / ".cache" / "oodsweep" / "data")))
        cls = getattr(torchvision.datasets, src.spec["class"])
        params = inspect.signature(cls.__init__).parameters
        if "download" in params:
            kwargs.setdefault("download", False)
        try:
            ds = cls(str(root), **kwargs) if "root" in params else cls(**kwargs)  # FakeData has no root
        except (TypeError, ValueError) as exc:
            raise self.err(f"{src.entry}.kwargs", f"{src.spec['class']}: {exc}") from None
        except Exception as exc:  # noqa: BLE001 - not found / corrupt / download failed
            raise DataUnavailable(f"{src.entry}: torchvision {src.spec['class']} not available under {root} "
                                  f"({type(exc).__name__}: {' '.join(str(exc).split())[:160]})") from None
        src.dataset = ds

    def _load_torchvision(self, src: _Source) -> _Raw:
        if src.dataset is None:
            self._open_torchvision(src)
        ds = src.dataset
        data = getattr(ds, "data", None)
        if data is not None and hasattr(data, "shape") and len(getattr(data, "shape", ())) in (3, 4):
            x = self._as_nchw(np.asarray(data), src.entry, None)
            y = None
            if src.is_id:
                labels = getattr(ds, "targets", None)
                labels = getattr(ds, "labels", None) if labels is None else labels
                if labels is None:
                    raise self.err(src.entry, f"{src.spec['class']} has no targets/labels for an ID set")
                y = self._labels(np.asarray(labels), len(x), src.entry)
            return _Raw(x, y)
        imgs, labels = [], []
        for i in range(len(ds)):
            item = ds[i]
            img, label = (item[0], item[1]) if isinstance(item, (tuple, list)) else (item, None)
            a = np.asarray(img)
            if a.ndim == 2:
                a = a[None]
            elif a.ndim == 3 and a.shape[-1] in (1, 3, 4) and a.shape[0] not in (1, 3):
                a = a.transpose(2, 0, 1)
            imgs.append(self._to_uint8(a[:3], src.entry))
            labels.append(label)
        if src.is_id and any(not isinstance(v, (int, np.integer)) for v in labels):
            raise self.err(src.entry, f"{src.spec['class']} items are not (image, integer label) pairs")
        return _Raw(imgs, np.asarray(labels, dtype=np.int64) if src.is_id else None)


# --------------------------------------------------------------------------------------------- normalisation
def _normalise(images, channels: int, size: tuple[int, int], mode: str) -> np.ndarray | ImageFiles:
    if isinstance(images, ImageFiles):  # streamed: converted and resized as each batch is decoded
        return ImageFiles(images.files, channels, size, mode)
    if isinstance(images, np.ndarray) and images.shape[1] == channels and images.shape[2:] == size:
        return images
    out = np.empty((len(images), channels, *size), dtype=np.uint8)
    for i, img in enumerate(images):
        out[i] = resize_image(convert_image(img, channels), size, mode)
    return out


# --------------------------------------------------------------------------------------------- the loader
def load_custom(path: str | os.PathLike, data_root: str | None = None) -> Benchmark:
    """Build the benchmark a YAML file describes (format: this module's docstring)."""
    import yaml

    file = Path(path).expanduser()
    ld = _Loader(file, data_root)
    if not file.is_file():
        raise DataUnavailable(f"custom benchmark file {file} not found")
    try:
        cfg = yaml.safe_load(file.read_text())
    except yaml.YAMLError as exc:
        raise ld.err("", f"not valid YAML ({' '.join(str(exc).split())})") from None
    if not isinstance(cfg, dict):
        raise ld.err("", "expected a mapping with id, ood_val, near/far")
    unknown = set(cfg) - TOP_KEYS
    if unknown:
        raise ld.err(", ".join(sorted(map(str, unknown))), f"unknown key(s); allowed: {', '.join(sorted(TOP_KEYS))}")

    # ---- top-level settings
    name = cfg.get("name", file.stem)
    if not isinstance(name, str) or not name.strip():
        raise ld.err("name", f"expected a non-empty string, got {name!r}")
    size = cfg.get("image_size")
    if size is not None:
        if isinstance(size, int) and not isinstance(size, bool):
            size = [size, size]
        if not (isinstance(size, list) and len(size) == 2 and all(isinstance(v, int) and not isinstance(v, bool)
                                                                   and v > 0 for v in size)):
            raise ld.err("image_size", f"expected a positive integer or [H, W], got {cfg['image_size']!r}")
        size = tuple(size)
    channels = cfg.get("channels")
    if channels not in (None, 1, 3):
        raise ld.err("channels", f"must be 1 or 3, got {channels!r}")
    mode = cfg.get("resize", "crop")
    if mode not in ("crop", "stretch"):
        raise ld.err("resize", f"must be crop or stretch, got {mode!r}")
    seed = cfg.get("seed", DATA_SEED)
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise ld.err("seed", f"expected a non-negative integer, got {seed!r}")
    ld.seed = seed
    num_classes = cfg.get("num_classes")
    if num_classes is not None and not (isinstance(num_classes, int) and num_classes >= 1):
        raise ld.err("num_classes", f"expected a positive integer, got {num_classes!r}")
    hflip = cfg.get("hflip", False)
    if not isinstance(hflip, bool):
        raise ld.err("hflip", f"expected true or false, got {hflip!r}")
    stream = cfg.get("stream", False)
    if not isinstance(stream, bool):
        raise ld.err("stream", f"expected true or false, got {stream!r}")
    ld.stream = stream

    # ---- id
    id_cfg = cfg.get("id")
    if not isinstance(id_cfg, dict):
        raise ld.err("id", "required: a mapping with train (and optionally val, test, split, classes)")
    unknown = set(id_cfg) - ID_KEYS
    if unknown:
        raise ld.err("id", f"unknown key(s) {', '.join(sorted(map(str, unknown)))}; "
                           f"allowed: {', '.join(sorted(ID_KEYS))}")
    if ("train" in id_cfg) == ("source" in id_cfg):
        raise ld.err("id", "give exactly one of train or source (its alias)")
    train_key = "train" if "train" in id_cfg else "source"
    id_src = {"train": ld.parse_source(id_cfg[train_key], f"id.{train_key}", True)}
    for part in ("val", "test"):
        if part in id_cfg:
            id_src[part] = ld.parse_source(id_cfg[part], f"id.{part}", True)
    split = id_cfg.get("split", {})
    if not isinstance(split, dict) or set(split) - {"val", "test"}:
        raise ld.err("id.split", f"expected {{val: fraction, test: fraction}}, got {split!r}")
    fractions = {"val": split.get("val", 0.1), "test": split.get("test", 0.2)}
    carved = [p for p in ("val", "test") if p not in id_src]
    for p in carved:
        f = fractions[p]
        if not (isinstance(f, (int, float)) and not isinstance(f, bool) and 0 < f < 1):
            raise ld.err(f"id.split.{p}", f"expected a fraction in (0, 1), got {f!r}")
    if sum(fractions[p] for p in carved) >= 1:
        raise ld.err("id.split", f"the carved-out fractions must sum to less than 1, got {split!r}")
    classes = id_cfg.get("classes")
    if classes is not None and not (isinstance(classes, list) and classes and all(isinstance(c, str) for c in classes)
                                    and len(set(classes)) == len(classes)):
        raise ld.err("id.classes", f"expected a list of distinct folder names, got {classes!r}")

    # ---- OOD groups
    groups: dict[str, dict[str, _Source]] = {}
    for group in ("ood_val", "near", "far"):
        g = cfg.get(group) or {}
        if not isinstance(g, dict):
            raise ld.err(group, f"expected a mapping of set name → source, got {g!r}")
        groups[group] = {str(k): ld.parse_source(v, f"{group}.{k}", False) for k, v in g.items()}
    if not groups["ood_val"]:
        raise ld.err("ood_val", "required: at least one OOD validation set (what hyperparameters are chosen on)")
    if not groups["near"] and not groups["far"]:
        raise ld.err("near/far", "at least one OOD test set is required")

    # ---- recipe (checked before any data is read)
    recipe_cfg = cfg.get("recipe") or {}
    if not isinstance(recipe_cfg, dict):
        raise ld.err("recipe", f"expected a mapping, got {recipe_cfg!r}")
    declared = {k.name: k for k in RECIPE}  # the recipe's knobs, as every method declares them
    for k, v in list(recipe_cfg.items()):
        if k not in declared:
            raise ld.err(f"recipe.{k}", f"unknown key{closest(str(k), list(declared))}; allowed: {', '.join(declared)}")
        try:
            recipe_cfg[k] = check_value(declared[k], v, "value")
        except KnobError as exc:
            raise ld.err(f"recipe.{k}", str(exc)) from None
    if "backbone" in recipe_cfg and recipe_cfg["backbone"] not in DEFAULT_RECIPES:
        raise ld.err("recipe.backbone", f"must be one of {', '.join(DEFAULT_RECIPES)}, got {recipe_cfg['backbone']!r}")

    # ---- all data present? (one message)
    every = list(id_src.values()) + [s for g in groups.values() for s in g.values()]
    missing = [m for s in every for m in ld.missing(s)]
    if missing:
        raise DataUnavailable(f"{file}: {len(missing)} data entr{'y' if len(missing) == 1 else 'ies'} missing: "
                              + "; ".join(missing))

    # ---- read and normalise
    raw_id = {p: ld.load(s, classes) for p, s in id_src.items()}
    first = raw_id["train"].images[0]
    if size is None:
        size = tuple(first.shape[1:])
    if channels is None:
        channels = 1 if first.shape[0] == 1 else 3
    names = raw_id["train"].class_names
    for p, raw in raw_id.items():
        if p != "train" and raw.class_names is not None and names is not None and raw.class_names != names:
            # A folder split with other class folders than train: map its labels onto train's names.
            where = {n: i for i, n in enumerate(names)}
            bad = sorted(set(raw.class_names) - set(where))
            if bad:
                raise ld.err(f"id.{p}", f"class folder(s) {', '.join(bad)} are not among id.train's classes")
            raw.labels = np.asarray([where[raw.class_names[v]] for v in raw.labels], dtype=np.int64)
    n_cls = num_classes or (len(names) if names else 1 + max(int(r.labels.max()) for r in raw_id.values()))
    for p, raw in raw_id.items():
        if raw.labels.max() >= n_cls:
            raise ld.err(f"id.{p}", f"label {int(raw.labels.max())} is out of range for num_classes={n_cls}")
    x = {p: _normalise(r.images, channels, size, mode) for p, r in raw_id.items()}
    y = {p: r.labels for p, r in raw_id.items()}
    if carved:
        rng = np.random.default_rng(seed)
        fr = [fractions[p] for p in carved]
        parts = stratified_split(y["train"], tuple([1 - sum(fr)] + fr), rng)
        xt, yt = x["train"], y["train"]
        x["train"], y["train"] = select(xt, parts[0]), yt[parts[0]]
        for p, idx in zip(carved, parts[1:], strict=False):
            x[p], y[p] = select(xt, idx), yt[idx]
    for p in ("train", "val", "test"):
        if len(x[p]) == 0:
            raise ld.err(f"id.{p}", "is empty (too few ID images for the split fractions)")
    ood = {g: {n: Split(_normalise(ld.load(s, None).images, channels, size, mode)) for n, s in sets.items()}
           for g, sets in groups.items()}

    # ---- OOD validation must be disjoint from the OOD test sets
    def digest(a):  # streamed sets: the same file; in memory: the same pixels
        if isinstance(a, ImageFiles):
            return {os.path.realpath(f) for f in a.files}
        return {hashlib.sha1(r.tobytes()).digest() for r in a}

    val_rows = {n: digest(s.x) for n, s in ood["ood_val"].items()}
    for g in ("near", "far"):
        for n, s in ood[g].items():
            test_rows = digest(s.x)
            for vn, rows in val_rows.items():
                common = len(rows & test_rows)
                if common:
                    raise ld.err(f"ood_val.{vn}", f"{common} of its images are also in the {g}-OOD test set {n!r}; "
                                                  "OOD validation data must be disjoint from the test sets")

    default = DEFAULT_RECIPES["resnet18" if channels == 3 and min(size) >= 32 else "small_cnn"]
    backbone = recipe_cfg.get("backbone", default["backbone"])
    recipe = {**DEFAULT_RECIPES[backbone], **recipe_cfg}
    return Benchmark(name=name.strip(), num_classes=n_cls,
                     id_train=Split(x["train"], y["train"]), id_val=Split(x["val"], y["val"]),
                     id_test=Split(x["test"], y["test"]), ood_val=ood["ood_val"], near=ood["near"], far=ood["far"],
                     recipe=recipe, hflip_invariant=hflip)
