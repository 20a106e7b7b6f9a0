"""OpenOOD v1.5's ImageNet-200 definition on a generated tree in its on-disk format (image lists + JPEG folders)."""
import numpy as np
import pytest
from PIL import Image

from orchestrator import data as benchmarks
from orchestrator.data.base import DataUnavailable
from orchestrator.data.lazy import ImageFiles
from orchestrator.data.openood_imagenet import openood_sets


def _tree(root, skip=()):
    rng = np.random.default_rng(0)
    for group, sets in openood_sets("imagenet200").items():
        for name, (folder, list_file) in sets.items():
            if (group, name) in skip:
                continue
            lines = []
            for i in range(4):
                rel = f"{name}/{group}_{i}.jpg"
                (root / folder / name).mkdir(parents=True, exist_ok=True)
                Image.fromarray(rng.integers(0, 255, (40 + i, 60, 3), dtype=np.uint8)).save(root / folder / rel)
                lines.append(f"{rel} {i % 2}")
            (root / "benchmark_imglist" / "imagenet200").mkdir(parents=True, exist_ok=True)
            (root / "benchmark_imglist" / "imagenet200" / list_file).write_text("\n".join(lines) + "\n")


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    root = tmp_path_factory.mktemp("openood")
    _tree(root)
    return benchmarks.load("imagenet200", str(root))


def test_imagenet200_has_openoods_sets(bench):
    assert (sorted(bench.near), sorted(bench.far)) == (["ninco", "ssb_hard"], ["inaturalist", "openimage_o",
                                                                               "textures"])


def test_imagenet200_streams_its_images(bench):
    assert all(isinstance(s.x, ImageFiles) for s in bench.splits().values())


def test_imagenet200_images_are_224_centre_crops(bench):
    assert bench.far["textures"].x[:2].shape == (2, 3, 224, 224)


def test_imagenet200_reads_labels_from_the_lists(bench):
    assert bench.id_train.y.tolist() == [0, 1, 0, 1]


def test_imagenet200_is_not_trained_on(bench):
    assert bench.trainable is False


def test_every_missing_set_is_named_in_one_error(tmp_path):
    _tree(tmp_path, skip={("near", "ninco"), ("far", "textures")})
    with pytest.raises(DataUnavailable, match=r"2 set\(s\) missing.*near\.ninco.*far\.textures"):
        benchmarks.load("imagenet200", str(tmp_path))
