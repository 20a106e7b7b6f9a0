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

SIGNALS = {"SIGTERM": (signal.SIGTERM, 143), "SIGINT": (signal.SIGINT, 130)}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _answers(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


@pytest.fixture(scope="module")
def stopped(tmp_path_factory):
    """Two `ui` servers started at once (their start-up, most of the cost, overlaps), each stopped by one signal
    once it answers: {signal name: (exit code, whether its port still answered a second later, stderr)}."""
    servers = {}
    for name in SIGNALS:
        cwd = tmp_path_factory.mktemp(name)
        MlflowClient(f"sqlite:///{cwd / 'mlflow.db'}").create_experiment("x")
        port = _free_port()
        servers[name] = (port, subprocess.Popen([sys.executable, "-m", "orchestrator", "ui", "--port", str(port)],
                                                cwd=cwd, env={**os.environ, "PYTHONPATH": str(ROOT)},
                                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    out = {}
    try:
        deadline = time.time() + 120
        for port, proc in servers.values():
            while not _answers(port) and time.time() < deadline and proc.poll() is None:
                time.sleep(0.5)
            assert _answers(port), proc.stderr.read() if proc.poll() is not None else "server did not start in 120 s"
        for name, (_, proc) in servers.items():
            proc.send_signal(SIGNALS[name][0])
        codes = {name: proc.wait(timeout=30) for name, (_, proc) in servers.items()}
        time.sleep(1.0)
        out = {name: (codes[name], _answers(port), proc.stderr.read()) for name, (port, proc) in servers.items()}
    finally:
        for _, proc in servers.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return out


@pytest.mark.parametrize("name", SIGNALS)
def test_ui_exits_with_the_signals_code(stopped, name):
    assert stopped[name][0] == SIGNALS[name][1], stopped[name][2][-2000:]


@pytest.mark.parametrize("name", SIGNALS)
def test_ui_leaves_no_server_listening(stopped, name):
    assert not stopped[name][1]
