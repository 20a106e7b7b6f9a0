"""OpenOOD v1.5 CIFAR benchmarks on a tiny fake data root in torchvision's and OpenOOD's on-disk layouts."""
import gzip
import pickle
from pathlib import Path

import numpy as np
import pytest

from orchestrator import data as benchmarks
from orchestrator.data import openood as oo
from orchestrator.data.base import DataUnavailable

N_TRAIN_PER_BATCH, N_TEST = 12, 20


def _rand(rng, *shape):
    return rng.integers(0, 256, size=shape, dtype=np.uint8)


def _dump(obj, path: Path):
    with open(path, "wb") as f:
        pickle.dump(obj, f)


def _write_cifar(root: Path, which: str, rng):
    if which == "cifar10":
        d = root / "cifar-10-batches-py"
        d.mkdir(parents=True)
        for i in range(1, 6):
            labels = list(rng.integers(0, 10, N_TRAIN_PER_BATCH))
            _dump({"data": _rand(rng, N_TRAIN_PER_BATCH, 3072), "labels": labels}, d / f"data_batch_{i}")
        _dump({"data": _rand(rng, N_TEST, 3072), "labels": list(np.arange(N_TEST) % 10)}, d / "test_batch")
        _dump({"label_names": [str(i) for i in range(10)]}, d / "batches.meta")
    else:
        d = root / "cifar-100-python"
        d.mkdir(parents=True)
        for part, n in (("train", 5 * N_TRAIN_PER_BATCH), ("test", N_TEST)):
            _dump({"data": _rand(rng, n, 3072), "fine_labels": list(rng.integers(0, 100, n)),
                   "coarse_labels": [0] * n}, d / part)
        _dump({"fine_label_names": [str(i) for i in range(100)]}, d / "meta")


def _idx_images(x: np.ndarray) -> bytes:
    head = bytes([0, 0, 8, 3]) + b"".join(int(s).to_bytes(4, "big") for s in x.shape)
    return head + x.tobytes()


def _write_mnist(root: Path, rng):
    d = root / "MNIST" / "raw"
    d.mkdir(parents=True)
    (d / "train-images-idx3-ubyte").write_bytes(_idx_images(_rand(rng, 7, 28, 28)))
    with gzip.open(d / "t10k-images-idx3-ubyte.gz", "wb") as f:  # gzipped files are read too
        f.write(_idx_images(_rand(rng, 5, 28, 28)))


def _write_svhn(root: Path, rng):
    import scipy.io

    scipy.io.savemat(str(root / "test_32x32.mat"), {"X": _rand(rng, 32, 32, 3, 9), "y": np.ones((9, 1), np.uint8)})


def _write_list(root: Path, bench: str, list_name: str, rel_paths: list[str], rng, size, fmt="PNG"):
    from PIL import Image

    for rel in rel_paths:
        p = root / "images_classic" / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(_rand(rng, size[1], size[0], 3)).save(p, fmt)
    lst = root / "benchmark_imglist" / bench / list_name
    lst.parent.mkdir(parents=True, exist_ok=True)
    lst.write_text("".join(f"{r} -1\n" for r in rel_paths))


def _write_openood(root: Path, bench: str, rng):
    _write_list(root, bench, "val_tin.txt", [f"tin/val/images/val_{i}.JPEG" for i in range(4)], rng, (64, 64), "JPEG")
    _write_list(root, bench, "test_tin.txt", [f"tin/test/n0{i}/img_{i}.JPEG" for i in range(6)], rng, (64, 64), "JPEG")
    _write_list(root, bench, "test_texture.txt", [f"texture/banded/banded_{i}.jpg" for i in range(3)], rng, (50, 40),
                "JPEG")
    _write_list(root, bench, "test_places365.txt", [f"places365/a/{i:05d}.png" for i in range(5)], rng, (32, 32))


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("openood")
    rng = np.random.default_rng(1)
    _write_cifar(root, "cifar10", rng)
    _write_cifar(root, "cifar100", rng)
    _write_mnist(root, rng)
    _write_svhn(root, rng)
    for bench in ("cifar10", "cifar100"):
        _write_openood(root, bench, rng)
    return root


def _rows(split):
    return {x.tobytes() for x in split.x}


def test_cifar10_groups_shapes_and_disjoint_validation(data_root):
    b = oo.load_openood("cifar10", str(data_root), download=False)
    assert b.name == "cifar10" and b.num_classes == 10 and b.image_shape == (3, 32, 32)
    assert set(b.ood_val) == {"tin"} and set(b.near) == {"cifar100", "tin"}
    assert set(b.far) == {"mnist", "svhn", "texture", "places365"}
    assert len(b.id_train) + len(b.id_val) == 5 * N_TRAIN_PER_BATCH and len(b.id_test) == N_TEST
    assert {k: len(v) for k, v in b.splits().items() if "/" in k} == {
        "ood_val/tin": 4, "near/cifar100": N_TEST, "near/tin": 6,
        "far/mnist": 12, "far/svhn": 9, "far/texture": 3, "far/places365": 5}
    for split in b.splits().values():
        assert split.x.dtype == np.uint8 and split.x.shape[1:] == (3, 32, 32)
    assert b.id_train.y.dtype == np.int64
    mnist = b.far["mnist"].x
    assert (mnist[:, 0] == mnist[:, 1]).all() and (mnist[:, 1] == mnist[:, 2]).all()  # grey → 3 channels
    val = _rows(b.ood_val["tin"])
    assert not val & set().union(*(_rows(s) for g in (b.near, b.far) for s in g.values()))
    assert not _rows(b.id_train) & _rows(b.id_val)
    assert b.recipe == {"backbone": "resnet18", "epochs": 100, "batch_size": 128, "lr": 0.1, "momentum": 0.9,
                        "weight_decay": 5e-4, "nesterov": True, "augment": "crop_flip"}
    assert oo.load_openood("cifar10", str(data_root), download=False).fingerprint() == b.fingerprint()


def test_cifar100_is_registered_and_uses_cifar10_as_near_ood(data_root, monkeypatch):
    monkeypatch.setenv("OODSWEEP_NO_DOWNLOAD", "1")
    assert {"cifar10", "cifar100"} <= set(benchmarks.available())
    b = benchmarks.load("cifar100", str(data_root), smoke=True)
    assert b.num_classes == 100 and set(b.near) == {"cifar10", "tin"} and b.smoke


def test_missing_data_is_one_message_naming_every_set(tmp_path, monkeypatch):
    calls = []

    def offline(tv, root):
        calls.append(tv.tv_class)
        raise OSError("no internet")

    monkeypatch.setattr(oo, "_download", offline)
    with pytest.raises(DataUnavailable) as err:
        oo.load_openood("cifar10", str(tmp_path), download=True)
    msg = str(err.value)
    assert "\n" not in msg and calls == ["CIFAR10"]  # one failed download, then no more tries
    assert "8 data set(s) missing" in msg and "no internet" in msg
    for what in ("CIFAR-10 (ID", "CIFAR-100 test", "TinyImageNet (OOD validation)", "TinyImageNet (near-OOD test)",
                 "MNIST", "SVHN", "Textures", "Places365", "cifar-10-batches-py", "test_32x32.mat",
                 str(tmp_path / "benchmark_imglist" / "cifar10" / "val_tin.txt"), "test_places365.txt",
                 "test_texture.txt", "test_tin.txt"):
        assert what in msg, what


def test_partly_missing_lists_only_the_missing_sets(data_root, tmp_path):
    import shutil

    root = tmp_path / "root"
    shutil.copytree(data_root, root)
    shutil.rmtree(root / "images_classic" / "places365")
    (root / "benchmark_imglist" / "cifar10" / "test_texture.txt").unlink()
    with pytest.raises(DataUnavailable) as err:
        oo.load_openood("cifar10", str(root), download=False)
    msg = str(err.value)
    assert "2 data set(s) missing" in msg and "5 of 5 images of test_places365.txt missing" in msg
    assert "test_texture.txt not found" in msg and "MNIST" not in msg and "downloads are off" in msg


def test_ood_sets_fall_back_to_openood_lists(data_root, tmp_path):
    import shutil

    root = tmp_path / "root"
    shutil.copytree(data_root, root)
    shutil.rmtree(root / "MNIST")
    rng = np.random.default_rng(2)
    _write_list(root, "cifar10", "test_mnist.txt", [f"mnist/ood/{i}.png" for i in range(3)], rng, (28, 28))
    b = oo.load_openood("cifar10", str(root), download=False)
    assert b.far["mnist"].x.shape == (3, 3, 32, 32)


def test_validation_overlapping_a_test_list_is_refused(data_root, tmp_path):
    import shutil

    root = tmp_path / "root"
    shutil.copytree(data_root, root)
    lst = root / "benchmark_imglist" / "cifar10" / "test_tin.txt"
    lst.write_text(lst.read_text() + "tin/val/images/val_0.JPEG -1\n")
    with pytest.raises(DataUnavailable, match="disjoint"):
        oo.load_openood("cifar10", str(root), download=False)


def test_image_list_parsing_and_resize(tmp_path):
    from PIL import Image

    (tmp_path / "l.txt").write_text("a/b.png 3\n\n# comment\nc/d.jpg -1\n")
    assert oo.read_imglist(tmp_path / "l.txt") == ["a/b.png", "c/d.jpg"]
    Image.fromarray(np.zeros((40, 80), np.uint8)).save(tmp_path / "g.png")  # grey, wide
    img = oo.load_image(tmp_path / "g.png")
    assert img.shape == (3, 32, 32) and img.dtype == np.uint8


def test_decoded_image_lists_are_cached_and_invalidated_by_a_changed_image(data_root, tmp_path, monkeypatch):
    import os
    import shutil

    from PIL import Image

    root = tmp_path / "root"
    shutil.copytree(data_root, root, ignore=shutil.ignore_patterns(oo.ARRAY_CACHE))
    first = oo.load_openood("cifar10", str(root), download=False)
    cached = sorted(p.name.rsplit("-", 1)[0] for p in (root / oo.ARRAY_CACHE).glob("*.npy"))
    assert cached == ["cifar10_far_places365", "cifar10_far_texture", "cifar10_near_tin", "cifar10_ood_val_tin"]

    def no_decoding(paths, size=32):
        raise AssertionError("decoded again although nothing changed")

    monkeypatch.setattr(oo, "load_images", no_decoding)
    again = oo.load_openood("cifar10", str(root), download=False)
    for name in ("ood_val/tin", "near/tin", "far/texture", "far/places365"):
        assert np.array_equal(again.splits()[name].x, first.splits()[name].x), name
    monkeypatch.undo()

    texture = root / "images_classic" / sorted(
        oo.read_imglist(root / "benchmark_imglist" / "cifar10" / "test_texture.txt"))[0]
    Image.fromarray(np.full((32, 32, 3), 7, np.uint8)).save(texture)
    os.utime(texture, ns=(1, 1))  # a new mtime even on coarse file systems
    changed = oo.load_openood("cifar10", str(root), download=False)
    assert (changed.far["texture"].x == 7).all(axis=(1, 2, 3)).sum() == 1
    assert len(list((root / oo.ARRAY_CACHE).glob("cifar10_far_texture-*.npy"))) == 1  # the old version is gone
