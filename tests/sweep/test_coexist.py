"""A sweep without --address works whatever other Ray clusters this machine runs: a `ray start` cluster, a stale
address file it left behind, another sweep started at the same time."""
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.integration


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _sweep(cwd: Path, name: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OODSWEEP_CACHE": str(cwd / "cache"), "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_ADDRESS", None)
    return subprocess.Popen([sys.executable, "-m", "orchestrator", "sweep", "energy", "--smoke-test", "--no-dashboard",
                             "--no-figures", "--num-cpus", "1", "--name", name], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.fixture(scope="module")
def ray_start_cluster(tmp_path_factory):
    """A cluster from `ray start --head --block`, stopped by its own PID (never `ray stop`: other people's too)."""
    ray_cli = Path(sys.executable).parent / "ray"
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    proc = subprocess.Popen([str(ray_cli), "start", "--head", "--block", f"--port={_free_port()}", "--num-cpus=1",
                             "--include-dashboard=false"], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    current = Path("/tmp/ray/ray_current_cluster")
    deadline = time.time() + 60
    while time.time() < deadline and proc.poll() is None and not current.is_file():
        time.sleep(0.5)
    time.sleep(3)  # the GCS answers a moment after the address file appears
    yield proc
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


def test_a_sweep_runs_next_to_a_ray_start_cluster(tmp_path, ray_start_cluster):
    assert ray_start_cluster.poll() is None, "ray start did not keep running"
    out, err = _sweep(tmp_path, "beside").communicate(timeout=300)
    assert "Trials: 2 (0 failed)" in out, err[-2000:]
    assert "private local instance" in out


def test_a_sweep_runs_after_that_cluster_stopped_and_left_its_address_file(tmp_path, ray_start_cluster):
    ray_start_cluster.send_signal(signal.SIGTERM)
    ray_start_cluster.wait(timeout=30)
    out, err = _sweep(tmp_path, "after").communicate(timeout=300)
    assert "Trials: 2 (0 failed)" in out, err[-2000:]


def test_two_sweeps_started_at_once_both_finish(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first = _sweep(tmp_path / "a", "first")
    second = _sweep(tmp_path / "b", "second")
    out1, err1 = first.communicate(timeout=400)
    out2, err2 = second.communicate(timeout=400)
    assert first.returncode == 0, err1[-2000:]
    assert second.returncode == 0, err2[-2000:]
