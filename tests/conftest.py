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
