"""`python -m orchestrator ui`: the MLflow server it starts listens on 127.0.0.1 and stops on SIGTERM as on Ctrl-C."""
import os
import signal
import socket
import subprocess
import sys
import time

import pytest
from mlflow.tracking import MlflowClient

from tests.conftest import ROOT


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _answers(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


@pytest.mark.parametrize("sig, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_ui_stops_its_server_on_a_signal(tmp_path, sig, code):
    MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}").create_experiment("x")
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "orchestrator", "ui", "--port", str(port)], cwd=tmp_path,
                            env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 90
    while not _answers(port) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.5)
    assert _answers(port), proc.stderr.read() if proc.poll() is not None else "server did not start in 90 s"
    proc.send_signal(sig)
    assert proc.wait(timeout=30) == code
    time.sleep(1.0)
    assert not _answers(port)
