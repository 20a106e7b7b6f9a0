"""Benchmarks: shapes, class splits, and OOD validation data disjoint from the OOD test data."""
from pathlib import Path

import numpy as np
import pytest

from orchestrator import data as benchmarks
from orchestrator.data import builtin
from orchestrator.data.base import DataUnavailable
from orchestrator.data.builtin import DEBIAN_FASHION


def _rows(split):
    return {x.tobytes() for x in split.x}


def _check(b):
    assert b.id_train.y.max() == b.num_classes - 1 and set(np.unique(b.id_test.y)) == set(range(b.num_classes))
    val = set().union(*(_rows(s) for s in b.ood_val.values()))
    test = set().union(*(_rows(s) for g in (b.near, b.far) for s in g.values()))
    assert not (val & test), "OOD validation images appear in the OOD test sets"
    id_test = _rows(b.id_test)
    assert not (_rows(b.id_train) & id_test) and not (_rows(b.id_val) & id_test)
    for split in b.splits().values():
        assert split.x.dtype == np.uint8 and split.x.shape[1:] == b.image_shape


def test_digits_benchmark():
    b = benchmarks.load("digits")
    assert b.image_shape == (1, 8, 8) and b.num_classes == 5
    assert set(b.near) == {"even-digits"} and set(b.far) == {"textures", "natural", "noise"}
    _check(b)
    assert benchmarks.load("digits").fingerprint() == b.fingerprint()  # fixed data seed


def test_smoke_copy_is_small_and_distinct():
    b = benchmarks.load("digits", smoke=True)
    assert len(b.id_train) == 300 and b.smoke
    assert b.fingerprint() != benchmarks.load("digits").fingerprint()


@pytest.mark.skipif(not Path(DEBIAN_FASHION).is_dir(), reason="apt-get install dataset-fashion-mnist")
def test_fashion_mnist_from_debian_package():
    b = benchmarks.load("fashion-mnist")
    assert b.image_shape == (1, 28, 28) and b.num_classes == 6 and len(b.id_test) == 6000
    assert len(b.near["fashion-6-9"]) == 4000
    _check(b)


def test_missing_fashion_data_names_every_place(tmp_path, monkeypatch):
    monkeypatch.setattr(builtin, "DEBIAN_FASHION", str(tmp_path / "nowhere"))
    # torchvision's download fails offline (or on this empty, read-only-for-us root)
    monkeypatch.setenv("OODSWEEP_DATA", str(tmp_path / "dl"))
    import torchvision.datasets

    def no_download(*a, **k):
        raise RuntimeError("no internet")

    monkeypatch.setattr(torchvision.datasets, "FashionMNIST", no_download)
    with pytest.raises(DataUnavailable) as err:
        benchmarks.load("fashion-mnist", data_root=str(tmp_path / "root"))
    msg = str(err.value)
    assert "--data-root" in msg and "nowhere" in msg and "download" in msg and "no internet" in msg
