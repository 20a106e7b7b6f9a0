"""A real tiny sweep through the CLI: Ray Tune + Optuna + MLflow, no mocks."""
import json
import subprocess
import sys

import pytest
from mlflow.tracking import MlflowClient

from tests.conftest import ROOT

pytestmark = pytest.mark.integration


def test_ascood_smoke_sweep_logs_parent_children_and_matrix(workdir):
    res = subprocess.run(
        [sys.executable, "-m", "orchestrator", "sweep", "ascood", "--smoke-test", "--no-dashboard", "--num-cpus", "2",
         "--name", "smoke", "--cache-dir", str(workdir / "cache")],
        cwd=workdir, capture_output=True, text=True, timeout=600,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "HOME": str(workdir),
             "OODSWEEP_OBJECT_STORE_MB": "100"})
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    out = res.stdout
    assert "2/2 done" in out and "Test OOD metric matrix" in out and "FPR@95 (classic)" in out
    assert "near (mean)" in out and "ID accuracy" in out and "Ray results:" in out

    client = MlflowClient(tracking_uri=f"sqlite:///{workdir / 'mlflow.db'}")
    exp = client.get_experiment_by_name("oodsweep")
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]
    assert len(parents) == 1 and len(children) == 2
    assert parents[0].info.run_id in out and parents[0].data.params["method"] == "ascood"
    for child in children:
        m = child.data.metrics
        assert child.info.status == "FINISHED"
        for name in ("near/auroc", "far/fpr95", "id/acc", "even-digits/aupr_in", "noise/auroc", "val/auroc"):
            assert 0.0 <= m[name] <= 1.0, name
        assert "p_inv" in child.data.params and "ood_type" in child.data.params
        history = client.get_metric_history(child.info.run_id, "val/auroc")
        assert len(history) >= 2  # the per-epoch report and the final one
        arts = {a.path for a in client.list_artifacts(child.info.run_id)}
        assert {"ood_matrix.csv", "ood_matrix.json"} <= arts
        matrix = json.load(open(client.download_artifacts(child.info.run_id, "ood_matrix.json", str(workdir))))
        assert matrix["fpr95_convention"] == "classic"
        assert {r["ood_dataset"] for r in matrix["rows"]} >= {"even-digits", "textures", "noise", "near (mean)"}
    best = max(children, key=lambda r: r.data.metrics["val/auroc"])
    parent = parents[0]
    assert parent.data.metrics["best/val/auroc"] == pytest.approx(best.data.metrics["val/auroc"])
    assert parent.data.metrics["best/near/auroc"] == pytest.approx(best.data.metrics["near/auroc"])
    assert parent.data.params["best.p_inv"] == best.data.params["p_inv"]
    import optuna  # the Tune path stores its Optuna study beside the MLflow store too

    study = optuna.load_study(study_name="smoke", storage=f"sqlite:///{workdir / 'optuna.db'}")
    assert len(study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))) == 2
