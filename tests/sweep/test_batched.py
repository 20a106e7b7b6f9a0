"""Batched post-hoc sweeps (real Ray, Optuna and MLflow): one Optuna trial and one MLflow child run per
configuration, the study stored beside the MLflow store and opened by optuna-dashboard, Ctrl-C and --resume (the
Tune path's stored study: tests/sweep/test_sweep_integration.py)."""
import json
import os
import signal
import subprocess
import sys
import time

import optuna
import pytest
from mlflow.tracking import MlflowClient

from tests.conftest import ROOT

pytestmark = pytest.mark.integration


def _env(cwd, **extra):
    return {**os.environ, "PYTHONPATH": str(ROOT), "OODSWEEP_CACHE": str(cwd / "cache"),
            "RAY_USAGE_STATS_ENABLED": "0", **extra}


def _sweep(cwd, *args, timeout=300, env=None, method="energy"):
    return subprocess.run([sys.executable, "-m", "orchestrator", "sweep", method, "--smoke-test", "--no-dashboard",
                           "--num-cpus", "2", *args], cwd=cwd, env=env or _env(cwd), capture_output=True, text=True,
                          timeout=timeout)


def _children(cwd, parent_status=None):
    client = MlflowClient(f"sqlite:///{cwd / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("oodsweep").experiment_id], max_results=5000)
    return client, [r for r in runs if "mlflow.parentRunId" in r.data.tags]


def _study(cwd, name):
    return optuna.load_study(study_name=name, storage=f"sqlite:///{cwd / 'optuna.db'}")


@pytest.fixture(scope="module")
def batched(tmp_path_factory):
    cwd = tmp_path_factory.mktemp("batched")
    res = _sweep(cwd, "--num-samples", "6", "--batch-size", "2", "--name", "b6")
    assert res.returncode == 0, res.stderr[-3000:]
    return cwd, res


def test_a_posthoc_search_runs_in_batches(batched):
    _, res = batched
    assert "configurations run in batches of 2" in res.stdout


def test_every_configuration_is_one_finished_child_run(batched):
    cwd, _ = batched
    _, children = _children(cwd)
    assert sorted(r.info.status for r in children) == ["FINISHED"] * 6


def test_child_runs_have_distinct_trial_ids(batched):
    cwd, _ = batched
    _, children = _children(cwd)
    assert len({r.data.tags["oodsweep.trial_id"] for r in children}) == 6


def test_child_runs_carry_the_matrix_metrics(batched):
    cwd, _ = batched
    _, children = _children(cwd)
    assert all({"near/auroc", "far/fpr95", "val/auroc", "id/acc"} <= set(r.data.metrics) for r in children)


def test_child_runs_carry_the_matrix_artifacts(batched):
    cwd, _ = batched
    client, children = _children(cwd)
    names = {a.path for a in client.list_artifacts(children[0].info.run_id)}
    assert {"ood_matrix.csv", "ood_matrix.json"} <= names


def test_the_study_is_stored_beside_the_mlflow_store(batched):
    cwd, _ = batched
    study = _study(cwd, "b6")
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.COMPLETE] * 6


def test_stored_trials_hold_the_values_logged_to_mlflow(batched):
    cwd, _ = batched
    _, children = _children(cwd)
    logged = {r.data.tags["oodsweep.trial_id"]: r.data.metrics["val/auroc"] for r in children}
    stored = {t.user_attrs["trial_id"]: t.value for t in _study(cwd, "b6").trials}
    assert stored == pytest.approx(logged)


def test_stored_trials_hold_the_searched_knob(batched):
    cwd, _ = batched
    _, children = _children(cwd)
    logged = {r.data.tags["oodsweep.trial_id"]: float(r.data.params["temperature"]) for r in children}
    stored = {t.user_attrs["trial_id"]: t.params["temperature"] for t in _study(cwd, "b6").trials}
    assert stored == pytest.approx(logged)


def test_the_best_trial_gets_its_heatmap(batched):
    cwd, _ = batched
    client, children = _children(cwd)
    with_heatmap = [r for r in children
                    if "ood_matrix_heatmap.png" in {a.path for a in client.list_artifacts(r.info.run_id)}]
    assert len(with_heatmap) == 1


def test_the_evaluator_draws_the_best_configurations_score_figures(batched):
    cwd, _ = batched
    client, children = _children(cwd)
    parent = children[0].data.tags["mlflow.parentRunId"]
    figures = {a.path for a in client.list_artifacts(parent, "figures")}
    assert {"figures/best_score_histograms.png", "figures/best_roc_curves.png"} <= figures


def test_a_second_sweep_of_the_same_name_is_refused(batched):
    cwd, _ = batched
    (cwd / "ray_results" / "b6").rename(cwd / "ray_results" / "b6-moved")  # only the study still holds the name
    try:
        res = _sweep(cwd, "--num-samples", "2", "--name", "b6")
    finally:
        (cwd / "ray_results" / "b6-moved").rename(cwd / "ray_results" / "b6")
    assert res.returncode == 2 and "already holds a study named 'b6'" in res.stderr


# ---------------------------------------------------------------- after a sharded extraction
@pytest.fixture(scope="module")
def sharded(tmp_path_factory):
    """A batched knn sweep whose splits over 200 images (the smoke training split: 300) are extracted in shards
    by Ray tasks before its evaluators start (they would otherwise hold the CPUs the shard tasks need)."""
    cwd = tmp_path_factory.mktemp("sharded")
    res = _sweep(cwd, "--num-samples", "2", "--name", "sh", env=_env(cwd, OODSWEEP_SHARD_IMAGES="200"), method="knn")
    return cwd, res


def test_a_batched_sweep_with_sharded_extraction_exits_0(sharded):
    _, res = sharded
    assert res.returncode == 0, res.stderr[-3000:]


def test_a_batched_sweep_extracts_its_large_splits_in_shards(sharded):
    cwd, _ = sharded
    assert (cwd / "cache" / "shards.log").read_text().count("\n") == 2  # id_train: images 0-200 and 200-300


def test_a_batched_sweep_with_sharded_extraction_finishes_its_trials(sharded):
    cwd, _ = sharded
    _, children = _children(cwd)
    assert sorted(r.info.status for r in children) == ["FINISHED", "FINISHED"]


# ---------------------------------------------------------------- stopped and resumed
@pytest.fixture(scope="module")
def stopped(tmp_path_factory):
    """A 120-configuration batched sweep stopped by SIGINT once its first batches finished."""
    cwd = tmp_path_factory.mktemp("stopped")
    proc = subprocess.Popen([sys.executable, "-m", "orchestrator", "sweep", "energy", "--smoke-test", "--no-dashboard",
                             "--no-figures", "--num-cpus", "2", "--num-samples", "120", "--batch-size", "1",
                             "--name", "s120"], cwd=cwd, env=_env(cwd), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    lines, deadline = [], time.time() + 240
    while time.time() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        if " done, " in line and not line.split("]")[1].strip().startswith("0/"):
            proc.send_signal(signal.SIGINT)
            break
    out, err = proc.communicate(timeout=240)
    return cwd, proc.returncode, "".join(lines) + out, err


def test_ctrl_c_stops_a_batched_sweep_with_130(stopped):
    _, code, _, err = stopped
    assert code == 130, err[-3000:]


def test_ctrl_c_stops_before_the_budget_is_spent(stopped):
    cwd, *_ = stopped
    _, children = _children(cwd)
    assert len([r for r in children if r.info.status == "FINISHED"]) < 120


def test_ctrl_c_leaves_no_batched_run_running(stopped):
    cwd, *_ = stopped
    _, children = _children(cwd)
    assert {r.info.status for r in children} <= {"FINISHED", "KILLED"}


def test_ctrl_c_marks_stopped_trials_in_the_study(stopped):
    cwd, *_ = stopped
    failed = _study(cwd, "s120").get_trials(states=(optuna.trial.TrialState.FAIL,))
    assert all(t.user_attrs.get("stopped") == "SIGINT" for t in failed)


def test_ctrl_c_of_a_batched_sweep_keeps_stderr_quiet(stopped):
    _, _, _, err = stopped
    assert err.strip() == ""


@pytest.fixture(scope="module")
def resumed(stopped):
    cwd, *_ = stopped
    res = subprocess.run([sys.executable, "-m", "orchestrator", "sweep", "energy", "--resume", "s120",
                          "--no-dashboard"], cwd=cwd, env=_env(cwd), capture_output=True, text=True, timeout=300)
    return cwd, res


def test_resume_of_a_batched_sweep_exits_0(resumed):
    _, res = resumed
    assert res.returncode == 0, res.stderr[-3000:]


def test_resume_finishes_exactly_the_budget(resumed):
    cwd, _ = resumed
    _, children = _children(cwd)
    assert len([r for r in children if r.info.status == "FINISHED"]) == 120


def test_resume_reuses_no_trial_id(resumed):
    cwd, _ = resumed
    _, children = _children(cwd)
    assert len({r.data.tags["oodsweep.trial_id"] for r in children}) == len(children)


def test_resume_continues_the_stored_study(resumed):
    cwd, _ = resumed
    assert len(_study(cwd, "s120").get_trials(states=(optuna.trial.TrialState.COMPLETE,))) == 120


# ---------------------------------------------------------------- optuna-dashboard opens the stored study
@pytest.fixture(scope="module")
def dashboard(batched):
    import socket
    import urllib.request
    from pathlib import Path

    cwd, _ = batched
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    exe = Path(sys.executable).parent / "optuna-dashboard"
    proc = subprocess.Popen([str(exe), f"sqlite:///{cwd / 'optuna.db'}", "--host", "127.0.0.1", "--port", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 60
        while True:
            try:
                urllib.request.urlopen(f"{url}/api/meta", timeout=2).read()
                break
            except OSError:
                if time.time() > deadline or proc.poll() is not None:
                    raise
                time.sleep(0.3)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def _get(url):
    import urllib.request

    with urllib.request.urlopen(url, timeout=10) as resp:
        return resp.status, json.loads(resp.read())


def test_optuna_dashboard_lists_the_sweeps_study(dashboard):
    status, body = _get(f"{dashboard}/api/studies")
    assert status == 200 and "b6" in [s["study_name"] for s in body["study_summaries"]]


def test_optuna_dashboard_reads_the_studys_trials(dashboard):
    _, body = _get(f"{dashboard}/api/studies")
    study_id = next(s["study_id"] for s in body["study_summaries"] if s["study_name"] == "b6")
    status, detail = _get(f"{dashboard}/api/studies/{study_id}")
    assert status == 200 and len(detail["trials"]) == 6
