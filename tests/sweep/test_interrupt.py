"""How a sweep ends when the user stops it (real Ray, Optuna and MLflow in a subprocess): SIGINT → exit 130,
SIGTERM → exit 143, every run KILLED, the exact resume command printed; a resume continues it; a failed or
untrusted resume changes nothing."""
import os
import signal
import subprocess
import sys
import time

import pytest
from mlflow.tracking import MlflowClient

from tests.conftest import ROOT

pytestmark = pytest.mark.integration


def _start(args, cwd):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OODSWEEP_CACHE": str(cwd / "cache"), "RAY_USAGE_STATS_ENABLED": "0"}
    return subprocess.Popen([sys.executable, "-m", "orchestrator", "sweep", *args], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _stop_when_running(proc, sig, running: int = 2, timeout: float = 120):
    """Send ``sig`` once ``running`` trials have started; returns (exit code, stdout, stderr)."""
    lines, started, deadline = [], 0, time.time() + timeout
    while time.time() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        started += line.rstrip().endswith("started")
        if started >= running:
            time.sleep(1.0)
            proc.send_signal(sig)
            break
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, "".join(lines) + out, err


def _statuses(cwd):
    client = MlflowClient(f"sqlite:///{cwd / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("oodsweep").experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    return [r.info.status for r in parents], sorted(r.info.status for r in children)


# Trials of 30 epochs on the smoke data (several seconds): still running when the signal comes a second after the
# second one started, short when a resume continues them. No ID-accuracy constraint: its reference classifier would
# only compete for the CPU here.
LONG = ["ascood", "--smoke-test", "--epochs", "30", "--no-dashboard", "--no-figures", "--num-cpus", "2",
        "--max-id-acc-drop", "none"]


@pytest.fixture(scope="module")
def interrupted(tmp_path_factory):
    cwd = tmp_path_factory.mktemp("sigint")
    code, out, err = _stop_when_running(_start([*LONG, "--name", "stopme"], cwd), signal.SIGINT)
    return cwd, code, out, err


def test_ctrl_c_exits_130(interrupted):
    _, code, _, err = interrupted
    assert code == 130, err[-2000:]


def test_ctrl_c_marks_the_parent_run_killed(interrupted):
    cwd, *_ = interrupted
    assert _statuses(cwd)[0] == ["KILLED"]


def test_ctrl_c_leaves_no_child_run_running(interrupted):
    cwd, *_ = interrupted
    assert _statuses(cwd)[1] == ["KILLED", "KILLED"]


def test_ctrl_c_prints_the_resume_command(interrupted):
    _, _, out, _ = interrupted
    assert "python -m orchestrator sweep ascood --resume stopme" in out


def test_ctrl_c_keeps_stderr_quiet(interrupted):
    _, _, _, err = interrupted
    assert err.strip() == ""


@pytest.fixture(scope="module")
def resumed(interrupted):
    """The interrupted sweep, continued with ``--resume`` (its results then serve the failed-resume test too)."""
    cwd, *_ = interrupted
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OODSWEEP_CACHE": str(cwd / "cache"), "RAY_USAGE_STATS_ENABLED": "0"}
    res = subprocess.run([sys.executable, "-m", "orchestrator", "sweep", "ascood", "--resume", "stopme",
                          "--no-dashboard"], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    return cwd, env, res


def test_resume_after_ctrl_c_exits_0(resumed):
    _, _, res = resumed
    assert res.returncode == 0, res.stderr[-2000:]


def test_resume_after_ctrl_c_finishes_every_run(resumed):
    cwd, _, _ = resumed
    assert _statuses(cwd) == (["FINISHED"], ["FINISHED", "FINISHED"])


def test_sigterm_exits_143_and_kills_the_runs(tmp_path):
    code, out, err = _stop_when_running(_start([*LONG, "--name", "termme"], tmp_path), signal.SIGTERM)
    assert code == 143, err[-2000:]
    assert _statuses(tmp_path) == (["KILLED"], ["KILLED", "KILLED"])


def test_a_failed_resume_leaves_the_sweeps_runs_as_they_were(resumed):
    # The finished (resumed) sweep's folder, made unrestorable: Tune cannot restore it without tuner.pkl.
    cwd, env, _ = resumed
    (cwd / "ray_results" / "stopme" / "tuner.pkl").unlink()
    res = subprocess.run([sys.executable, "-m", "orchestrator", "sweep", "ascood", "--resume", "stopme",
                          "--no-dashboard"], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 2, res.stderr[-2000:]
    assert _statuses(cwd) == (["FINISHED"], ["FINISHED", "FINISHED"])


def test_resume_refuses_a_folder_others_can_write(tmp_path):
    # The check runs on the results folder before anything is read from it: a folder with a saved state suffices.
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OODSWEEP_CACHE": str(tmp_path / "cache")}
    folder = tmp_path / "ray_results" / "done"
    folder.mkdir(parents=True)
    (folder / "oodsweep_sweep.json").write_text("{}")
    (folder / "tuner.pkl").write_bytes(b"")
    folder.chmod(0o777)
    res = subprocess.run([sys.executable, "-m", "orchestrator", "sweep", "energy", "--resume", "done",
                          "--no-dashboard"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 2
    assert "is writable by others" in res.stderr
