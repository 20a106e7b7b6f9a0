import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
# Small Ray object store (it lives in /dev/shm) for CI machines.
os.environ.setdefault("OODSWEEP_OBJECT_STORE_MB", "100")


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """An empty working directory with its own model cache."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("OODSWEEP_CACHE", str(tmp_path / "cache"))
    return tmp_path


@pytest.fixture(scope="module")
def mlflow_cwd(tmp_path_factory):
    """MLflow puts a new experiment's artifacts under ./mlruns: keep them in a temporary folder, not the checkout."""
    old = os.getcwd()
    os.chdir(tmp_path_factory.mktemp("cwd"))
    yield
    os.chdir(old)


@pytest.fixture(scope="session")
def bench():
    """The tiny digits benchmark (300 training images); a test module may define its own ``bench``."""
    from orchestrator import data as benchmarks

    return benchmarks.load("digits", smoke=True)


@pytest.fixture
def small_cnn(bench):
    """Builds the same seeded, untrained small CNN for ``bench`` on every call."""
    from orchestrator.models.backbones import build_classifier

    def make():
        import torch

        torch.manual_seed(0)
        return build_classifier("small_cnn", 1, bench.id_train.x.shape[-1], bench.num_classes,
                                *bench.mean_std())
    return make
