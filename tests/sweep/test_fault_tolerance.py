"""Failures that happen on clusters, for real: a trial that raises, a worker node that dies, a driver killed
with SIGKILL and resumed. Real Ray (a multi-node ray.cluster_utils.Cluster on 127.0.0.1), Optuna and MLflow."""
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from tests.conftest import ROOT

pytestmark = pytest.mark.integration
ENV = {"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "OODSWEEP_OBJECT_STORE_MB": "100", "RAY_USAGE_STATS_ENABLED": "0"}


def _runs(db: Path):
    client = MlflowClient(tracking_uri=f"sqlite:///{db}")
    exp = client.get_experiment_by_name("oodsweep")
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    return parents, children


def _opts(workdir, **kw):
    from orchestrator.sweep.prepare import SweepOptions

    base = dict(tracking_uri=f"sqlite:///{workdir / 'mlflow.db'}", storage_path=str(workdir / "results"),
                cache_dir=str(workdir / "cache"), dashboard=False, quiet=True)
    return SweepOptions(**{**base, **kw})


def test_a_trial_that_raises_fails_alone_and_its_error_reaches_mlflow(workdir):
    import ray

    from orchestrator.sweep.prepare import prepare
    from orchestrator.sweep.runner import run as run_sweep

    # T = 1e-320 is a valid temperature (> 0) whose z/T overflows to inf: the trial raises on non-finite scores at run time.
    (workdir / "bad.yaml").write_text("space:\n  temperature: {type: categorical, choices: [1.0e-320, 1.0]}\n"
                                      "budget: {num_samples: 6, max_concurrent: 2}\n")
    try:
        prep = prepare(_opts(workdir, method="energy", smoke_test=True, search_space=str(workdir / "bad.yaml"),
                                   num_samples=6, num_cpus=2, max_failures=0))
        res = run_sweep(prep)
    finally:
        ray.shutdown()
    parents, children = _runs(workdir / "mlflow.db")
    failed = [c for c in children if c.info.status == "FAILED"]
    ok = [c for c in children if c.info.status == "FINISHED"]
    assert len(children) == 6 and failed and ok and res.num_errors == len(failed)
    assert all(c.data.params["temperature"] == "1e-320" for c in failed)
    assert all("non-finite scores" in c.data.tags["error"] for c in failed)
    assert all("near/auroc" in c.data.metrics for c in ok)
    assert res.best_matrix is not None and parents[0].info.status == "FINISHED"


def test_sweep_survives_a_worker_node_dying(workdir):
    import ray
    from ray.cluster_utils import Cluster

    from orchestrator.sweep import constraint
    from orchestrator.sweep.prepare import prepare
    from orchestrator.sweep.runner import run as run_sweep

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "object_store_memory": 100 * 2**20})
    workers = [cluster.add_node(num_cpus=1, object_store_memory=80 * 2**20) for _ in range(2)]
    cluster.wait_for_nodes()
    results = workdir / "results"
    killed = []

    def kill_when_checkpointed():
        deadline = time.time() + 120
        while time.time() < deadline and not list(results.glob("*/*/checkpoint_*")):
            time.sleep(0.2)
        cluster.remove_node(workers[0], allow_graceful=False)
        killed.append(time.time())

    killer = threading.Thread(target=kill_when_checkpointed, daemon=True)
    killer.start()
    try:
        prep = prepare(_opts(workdir, method="ascood", address=cluster.address, num_samples=3,
                                   max_concurrent=2, epochs=8, max_failures=3))
        constraint.set_margin(prep, None, "test")  # no reference classifier: this test is about the node
        res = run_sweep(prep)
    finally:
        ray.shutdown()
        cluster.shutdown()
    assert killed, "the worker node was never killed"
    parents, children = _runs(workdir / "mlflow.db")
    assert res.num_trials == 3 and res.num_errors == 0
    assert len(children) == 3 and all(c.info.status == "FINISHED" for c in children)
    assert all("near/auroc" in c.data.metrics for c in children)


def test_killed_driver_resumes_without_rerunning_or_duplicating(workdir):
    # Trials of ~20 epochs (several seconds) so that the kill, 3 s after the first trial ends, lands while the
    # second is training: a trial that finishes less than Tune's 1-s state snapshot before a SIGKILL is re-run
    # from its last checkpoint (a documented limit), and short trials made that race part of the test.
    cmd = [sys.executable, "-m", "orchestrator", "sweep", "ascood", "--num-samples", "3", "--max-concurrent", "1",
           "--epochs", "20", "--name", "resumable", "--no-dashboard", "--num-cpus", "2",
           "--cache-dir", str(workdir / "cache"), "--max-id-acc-drop", "none"]  # (no reference classifier to train)
    env = {**ENV, "HOME": str(workdir)}
    proc = subprocess.Popen(cmd, cwd=workdir, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    seen = []
    try:
        for line in proc.stdout:
            seen.append(line)
            if "1/3 done" in line:
                time.sleep(3.0)  # > Tune's 1-s state snapshot; the second trial gets going meanwhile
                break
        else:
            pytest.fail("sweep ended before it could be killed:\n" + "".join(seen[-30:]))
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    parents, children = _runs(workdir / "mlflow.db")
    assert len(parents) == 1 and parents[0].info.status == "RUNNING"
    done_before = {c.data.tags["oodsweep.trial_id"] for c in children if c.info.status == "FINISHED"}
    assert len(done_before) >= 1

    res = subprocess.run(cmd[:5] + ["--resume", "resumable"], cwd=workdir, env=env, capture_output=True, text=True,
                         timeout=600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "(resumed)" in res.stdout and "Test OOD metric matrix" in res.stdout
    parents, children = _runs(workdir / "mlflow.db")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    ids = [c.data.tags["oodsweep.trial_id"] for c in children]
    assert len(ids) == 3 and len(set(ids)) == 3  # exactly one child run per trial
    assert all(c.info.status == "FINISHED" and "near/auroc" in c.data.metrics for c in children)
    for line in res.stdout.splitlines():  # finished trials are not rerun
        if " started" in line:  # the event is the last field; "best (...)" may name a finished trial
            assert not any(t in line.rsplit("|", 1)[-1] for t in done_before), line
