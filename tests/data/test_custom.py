"""Custom benchmarks from YAML: npy arrays, image folders, torchvision datasets, and one-line errors."""
from pathlib import Path

import numpy as np
import pytest
import yaml

from orchestrator.data import is_custom
from orchestrator.data.base import DataUnavailable
from orchestrator.data.custom import CustomBenchmarkError, load_custom


def _png(path: Path, arr: np.ndarray):
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)


def _write(tmp_path: Path, cfg: dict, name="bench.yaml") -> Path:
    p = tmp_path / name
    p.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return p


@pytest.fixture
def arrays(tmp_path):
    rng = np.random.default_rng(0)
    np.save(tmp_path / "id_x.npy", rng.integers(0, 256, (60, 16, 16, 3), dtype=np.uint8))  # NHWC
    np.save(tmp_path / "id_y.npy", np.arange(60) % 3)
    np.save(tmp_path / "far_x.npy", rng.random((10, 3, 16, 16)).astype(np.float32))  # NCHW float in [0, 1]
    np.save(tmp_path / "pool.npy", rng.integers(0, 256, (20, 16, 16), dtype=np.uint8))  # NHW grey
    for i in range(4):  # OOD folder: mixed sizes, grey and RGB, nested
        _png(tmp_path / "ood" / f"sub{i % 2}" / f"{i}.png",
             rng.integers(0, 256, (20 + i, 24, 3) if i % 2 else (12, 12), dtype=np.uint8))
    return tmp_path


def _basic(**over):
    cfg = {"name": "mine", "id": {"train": {"type": "npy", "x": "id_x.npy", "y": "id_y.npy"}},
           "ood_val": {"pool-a": {"type": "npy", "x": "pool.npy", "range": [0, 8]}},
           "near": {"pool-b": {"type": "npy", "x": "pool.npy", "range": [8, None]}},
           "far": {"floats": "far_x.npy", "folder": "ood"}}
    cfg.update(over)
    return cfg


def test_npy_and_folder_sources_with_carved_id_splits(arrays):
    b = load_custom(_write(arrays, _basic()))
    assert b.name == "mine" and b.num_classes == 3 and b.image_shape == (3, 16, 16)
    assert (len(b.id_train), len(b.id_val), len(b.id_test)) == (42, 6, 12)  # 0.7 / 0.1 / 0.2, stratified
    assert set(np.unique(b.id_val.y)) == {0, 1, 2}
    assert set(b.ood_val) == {"pool-a"} and set(b.near) == {"pool-b"} and set(b.far) == {"floats", "folder"}
    assert len(b.ood_val["pool-a"]) == 8 and len(b.near["pool-b"]) == 12 and len(b.far["folder"]) == 4
    for s in b.splits().values():
        assert s.x.dtype == np.uint8 and s.x.shape[1:] == (3, 16, 16)
    src = np.load(arrays / "far_x.npy")
    assert np.array_equal(b.far["floats"].x, np.rint(src * 255).astype(np.uint8))
    grey = b.ood_val["pool-a"].x
    assert (grey[:, 0] == grey[:, 2]).all()
    rows = lambda s: {r.tobytes() for r in s.x}  # noqa: E731
    assert not rows(b.id_train) & rows(b.id_test) and not rows(b.id_val) & rows(b.id_test)
    assert b.recipe["backbone"] == "small_cnn"  # < 32×32
    assert load_custom(arrays / "bench.yaml").fingerprint() == b.fingerprint()


def test_hflip_declares_whether_flips_preserve_labels(arrays):
    assert load_custom(_write(arrays, _basic())).hflip_invariant is False  # default: flips may change the label
    b = load_custom(_write(arrays, _basic(hflip=True)))
    assert b.hflip_invariant is True and b.shrink(20, 5).hflip_invariant is True
    assert load_custom(_write(arrays, _basic(hflip=False))).hflip_invariant is False


def test_folders_classes_channels_size_and_recipe(tmp_path):
    rng = np.random.default_rng(1)
    for split, n in (("train", 6), ("test", 2)):
        for cls in ("cat", "dog"):
            for i in range(n):
                _png(tmp_path / split / cls / f"{i}.png", rng.integers(0, 256, (40, 40, 3), dtype=np.uint8))
    _png(tmp_path / "val" / "dog" / "0.png", rng.integers(0, 256, (40, 40, 3), dtype=np.uint8))  # dog only
    _png(tmp_path / "o1" / "a.jpg", rng.integers(0, 256, (50, 70, 3), dtype=np.uint8))
    _png(tmp_path / "o2" / "b.png", rng.integers(0, 256, (33, 33), dtype=np.uint8))
    cfg = {"image_size": 32, "channels": 1, "resize": "stretch",
           "id": {"train": {"type": "folder", "path": "train"}, "val": "val", "test": "test"},
           "ood_val": {"o1": "o1"}, "far": {"o2": "o2"},
           "recipe": {"backbone": "resnet18", "epochs": 3, "lr": 0.05}}
    b = load_custom(_write(tmp_path, cfg, "b.yml"))
    assert b.name == "b" and b.num_classes == 2 and b.image_shape == (1, 32, 32)
    assert (len(b.id_train), len(b.id_val), len(b.id_test)) == (12, 1, 4)
    assert b.id_val.y.tolist() == [1]  # "dog" is class 1 of train's sorted folders
    assert b.recipe == {"backbone": "resnet18", "epochs": 3, "batch_size": 128, "lr": 0.05, "momentum": 0.9,
                        "weight_decay": 5e-4, "nesterov": True}


def test_torchvision_sources(tmp_path):
    import gzip

    raw = tmp_path / "tv" / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(2)
    x = rng.integers(0, 256, (30, 28, 28), dtype=np.uint8)
    (raw / "t10k-images-idx3-ubyte").write_bytes(bytes([0, 0, 8, 3]) + b"".join(
        int(v).to_bytes(4, "big") for v in x.shape) + x.tobytes())
    (raw / "t10k-labels-idx1-ubyte").write_bytes(bytes([0, 0, 8, 1]) + (30).to_bytes(4, "big")
                                                 + (np.arange(30) % 5).astype(np.uint8).tobytes())
    for f in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"):  # MNIST checks all four exist
        with gzip.open(raw / (f + ".gz"), "wb"):
            pass
        (raw / f).write_bytes(b"")
    cfg = {"id": {"train": {"type": "torchvision", "class": "MNIST", "kwargs": {"train": False}}},
           "ood_val": {"fake": {"type": "torchvision", "class": "FakeData",
                                "kwargs": {"size": 6, "image_size": [3, 20, 20], "random_offset": 0}}},
           "far": {"fake2": {"type": "torchvision", "class": "FakeData",
                             "kwargs": {"size": 5, "image_size": [1, 28, 28], "random_offset": 100}}}}
    b = load_custom(_write(tmp_path, cfg), data_root=str(tmp_path / "tv"))
    assert b.num_classes == 5 and b.image_shape == (1, 28, 28)
    assert len(b.id_train) + len(b.id_val) + len(b.id_test) == 30
    assert b.ood_val["fake"].x.shape == (6, 1, 28, 28) and len(b.far["fake2"]) == 5


def test_missing_data_is_one_message_naming_every_entry(tmp_path):
    cfg = {"id": {"train": {"type": "npy", "x": "nope_x.npy", "y": "nope_y.npy"}},
           "ood_val": {"v": "no_folder"},
           "far": {"tv": {"type": "torchvision", "class": "SVHN", "kwargs": {"split": "test"}}}}
    with pytest.raises(DataUnavailable) as err:
        load_custom(_write(tmp_path, cfg), data_root=str(tmp_path / "root"))
    msg = str(err.value)
    assert "\n" not in msg and str(tmp_path / "bench.yaml") in msg and "4 data entries missing" in msg
    for what in ("id.train.x", "id.train.y", "ood_val.v.path", "far.tv: torchvision SVHN",
                 str(tmp_path / "nope_x.npy")):
        assert what in msg, what
    with pytest.raises(DataUnavailable, match="not found"):
        load_custom(tmp_path / "absent.yaml")


@pytest.mark.parametrize("change, entry", [
    ({"colour": 3}, "colour: unknown key"),
    ({"channels": 2}, "channels: must be 1 or 3"),
    ({"image_size": [32]}, "image_size: expected"),
    ({"id": {"train": {"type": "npy", "x": "id_x.npy"}}}, "id.train: an ID npy source needs y"),
    ({"id": {"train": {"type": "csv", "x": "id_x.npy"}}}, "id.train: type must be one of"),
    ({"id": {"train": {"type": "npy", "x": "id_x.npy", "y": "id_y.npy"}, "split": {"val": 0.5, "test": 0.5}}},
     "id.split: the carved-out fractions"),
    ({"id": {"train": {"type": "npy", "x": "id_x.npy", "y": "id_y.npy"}, "split": {"val": 2}}}, "id.split.val"),
    ({"ood_val": {}}, "ood_val: required"),
    ({"near": {}, "far": {}}, "near/far: at least one OOD test set"),
    ({"far": {"bad": {"type": "npy", "x": "far_x.npy", "y": "id_y.npy"}}}, "far.bad.y: labels are only for ID"),
    ({"far": {"bad": {"type": "npy", "x": "far_x.npy", "lmit": 3}}}, "far.bad: unknown key(s) lmit"),
    ({"far": {"bad": {"type": "torchvision", "class": "NoSuchSet"}}}, "far.bad.class: torchvision.datasets has no"),
    ({"far": {"bad": {"type": "npy", "x": "far_x.npy", "range": [1]}}}, "far.bad.range"),
    ({"recipe": {"lr": "fast"}}, "recipe.lr: value = 'fast' is not float > 0"),
    ({"recipe": {"optimizer": "adam"}}, "recipe.optimizer: unknown key"),
    ({"recipe": {"backbone": "vit"}}, "recipe.backbone: value = 'vit' is not one of ['resnet18', 'small_cnn']"),
    ({"hflip": "yes"}, "hflip: expected true or false"),
])
def test_malformed_yaml_names_file_and_entry(arrays, change, entry):
    path = _write(arrays, _basic(**change))
    with pytest.raises(CustomBenchmarkError) as err:
        load_custom(path)
    msg = str(err.value)
    assert isinstance(err.value, ValueError) and isinstance(err.value, DataUnavailable)
    assert msg.startswith(f"{path}: ") and entry in msg and "\n" not in msg, msg


def test_bad_data_errors(arrays):
    np.save(arrays / "big.npy", np.full((4, 16, 16), 2.0, np.float32))
    with pytest.raises(CustomBenchmarkError, match=r"far.big.x: float images must lie in \[0, 1\]"):
        load_custom(_write(arrays, _basic(far={"big": "big.npy"})))
    np.save(arrays / "y_short.npy", np.arange(5))
    with pytest.raises(CustomBenchmarkError, match="id.train.y: expected 60 labels"):
        load_custom(_write(arrays, _basic(id={"train": {"type": "npy", "x": "id_x.npy", "y": "y_short.npy"}})))
    with pytest.raises(CustomBenchmarkError, match="ood_val.pool-a: 8 of its images are also in the near-OOD"):
        load_custom(_write(arrays, _basic(near={"pool": "pool.npy"})))
    (arrays / "broken.yaml").write_text("id: [unclosed\n")
    with pytest.raises(CustomBenchmarkError, match="broken.yaml: not valid YAML"):
        load_custom(arrays / "broken.yaml")


def test_limit_is_seeded_and_paths_fall_back_to_data_root(arrays, tmp_path_factory):
    other = tmp_path_factory.mktemp("elsewhere")
    cfg = _basic(far={"few": {"type": "npy", "x": "far_x.npy", "limit": 4}})
    p = _write(other, cfg)  # relative paths are not next to the YAML → found under the data root
    a, b = load_custom(p, data_root=str(arrays)), load_custom(p, data_root=str(arrays))
    assert len(a.far["few"]) == 4 and np.array_equal(a.far["few"].x, b.far["few"].x)


def test_is_custom():
    assert is_custom("a/b.yaml") and is_custom("B.YML") and not is_custom("cifar10")
