"""OpenOOD v1.5's ImageNet-200 and ImageNet-1K benchmarks, streamed from its image lists (for ``--model``).

Layout under ``--data-root`` (``$OODSWEEP_DATA``), as OpenOOD's ``scripts/download/download.py`` leaves it::

    benchmark_imglist/<imagenet200|imagenet>/train_<id>.txt, val_<id>.txt, test_<id>.txt      ID ("path label")
    benchmark_imglist/<...>/val_openimage_o.txt                                                OOD validation
    benchmark_imglist/<...>/test_ssb_hard.txt, test_ninco.txt                                  near-OOD
    benchmark_imglist/<...>/test_inaturalist.txt, test_textures.txt, test_openimage_o.txt      far-OOD
    images_largescale/{imagenet_1k,ssb_hard,ninco,inaturalist,openimage_o}/...                 the images
    images_classic/texture/...                                                                 Textures

Images stay on disk (:class:`orchestrator.data.lazy.ImageFiles`) and are decoded batch by batch with torchvision's
evaluation preprocessing: shorter side to 256, centre crop 224, RGB; normalisation is ImageNet's. These benchmarks
are for scoring a given network (``--model openood:resnet18_224x224 --weights ...``, ``torchvision:resnet50``...):
oodsweep does not train ImageNet classifiers. Before anything runs, every list is read and a seeded sample of 200
images per list is checked on disk; ONE error names everything missing.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from orchestrator.data import BENCHMARKS
from orchestrator.data.base import Benchmark, DataUnavailable, Split
from orchestrator.data.lazy import ImageFiles
from orchestrator.data.openood import default_root

IMAGE_SIZE = 224
IMAGENET_STATS = ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
#: Images per list checked on disk before a sweep starts (all of ImageNet would take minutes on a network disk).
CHECKED_PER_LIST = 200
HINT = ("get them with OpenOOD's scripts/download/download.py --contents datasets --datasets ood_v1.5 "
        "--dataset_mode benchmark --save_dir <data root> (ImageNet-1K itself from image-net.org, under "
        "images_largescale/imagenet_1k)")


def openood_sets(id_name: str) -> dict[str, dict[str, tuple[str, str]]]:
    """group → {set name: (image folder, list file)} as OpenOOD v1.5 defines the benchmark."""
    large, classic = "images_largescale", "images_classic"
    return {"id": {"train": (large, f"train_{id_name}.txt"), "val": (large, f"val_{id_name}.txt"),
                   "test": (large, f"test_{id_name}.txt")},
            "ood_val": {"openimage_o": (large, "val_openimage_o.txt")},
            "near": {"ssb_hard": (large, "test_ssb_hard.txt"), "ninco": (large, "test_ninco.txt")},
            "far": {"inaturalist": (large, "test_inaturalist.txt"), "textures": (classic, "test_textures.txt"),
                    "openimage_o": (large, "test_openimage_o.txt")}}


def _read(path: Path) -> tuple[list[str], np.ndarray]:
    names, labels = [], []
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            name, _, label = line.partition(" ")
            names.append(name)
            labels.append(int(label.split()[0]) if label.strip() else -1)
    return names, np.asarray(labels, dtype=np.int64)


def load_imagenet(id_name: str, num_classes: int, data_root: str | None) -> Benchmark:
    root = default_root(data_root)
    missing, found = [], {}
    rng = np.random.default_rng(0)
    for group, sets in openood_sets(id_name).items():
        for name, (folder, list_file) in sets.items():
            lst = root / "benchmark_imglist" / id_name / list_file
            if not lst.is_file():
                missing.append(f"{group}.{name}: image list {lst} not found")
                continue
            files, labels = _read(lst)
            if not files:
                missing.append(f"{group}.{name}: image list {lst} is empty")
                continue
            paths = [str(root / folder / f) for f in files]
            sample = rng.choice(len(paths), min(CHECKED_PER_LIST, len(paths)), replace=False)
            absent = [paths[i] for i in sample if not Path(paths[i]).is_file()]
            if absent:
                missing.append(f"{group}.{name}: {len(absent)} of {len(sample)} sampled images of {list_file} "
                               f"missing under {root / folder} (first: {absent[0]})")
                continue
            found[(group, name)] = (paths, labels)
    if missing:
        raise DataUnavailable(f"{id_name} (OpenOOD v1.5) under {root}: {len(missing)} set(s) missing — "
                              + "; ".join(missing) + f"; {HINT}")

    def split(group, name, labelled=False):
        paths, labels = found[(group, name)]
        return Split(ImageFiles(paths, 3, (IMAGE_SIZE, IMAGE_SIZE), "imagenet"), labels if labelled else None)

    groups = {g: {n: split(g, n) for n in sets} for g, sets in openood_sets(id_name).items() if g != "id"}
    return Benchmark(id_name, num_classes, split("id", "train", True), split("id", "val", True),
                     split("id", "test", True), groups["ood_val"], groups["near"], groups["far"],
                     recipe={"backbone": "resnet18", "epochs": 90, "batch_size": 256, "lr": 0.1, "momentum": 0.9,
                             "weight_decay": 1e-4, "nesterov": False, "augment": "none"},
                     hflip_invariant=True, stats=IMAGENET_STATS, trainable=False)


@BENCHMARKS.register("imagenet200",
                     description="OpenOOD v1.5 ImageNet-200 224×224 (streamed; for --model): near-OOD = SSB-hard, "
                     "NINCO; far-OOD = iNaturalist, Textures, OpenImage-O; OOD val = OpenImage-O val list")
def imagenet200(data_root: str | None = None) -> Benchmark:
    return load_imagenet("imagenet200", 200, data_root)


@BENCHMARKS.register("imagenet",
                     description="OpenOOD v1.5 ImageNet-1K 224×224 (streamed; for --model): near-OOD = SSB-hard, "
                     "NINCO; far-OOD = iNaturalist, Textures, OpenImage-O; OOD val = OpenImage-O val list")
def imagenet(data_root: str | None = None) -> Benchmark:
    return load_imagenet("imagenet", 1000, data_root)
