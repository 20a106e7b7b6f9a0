"""MLflow logging from the driver: child runs per trial, no duplicates on resume, nothing lost when the
tracking server drops mid-sweep (events queue and are written once it is back; a server that stays away:
tests/tracking/test_outage.py)."""
import json
from types import SimpleNamespace

from mlflow.tracking import MlflowClient

from orchestrator.metrics import ood_matrix
from orchestrator.tracking.callback import MLflowTrialLogger
from orchestrator.tracking.runs import SweepRun, resolve_tracking_uri


def _trial(tid, **config):
    return SimpleNamespace(trial_id=tid, config=config, last_result={}, error_file=None, status="RUNNING")


def _final():
    m = ood_matrix([0.9, 0.8], {"a": [0.1]}, {"b": [0.2]}, id_acc=1.0)
    return {"val/auroc": 0.7, "final": True, "training_iteration": 2, "matrix_json": json.dumps(m.to_json()),
            **m.flat()}


def _logger(tmp_path, sweep_name="s"):
    """A trial logger on a fresh SQLite store: (uri, parent sweep run, logger after setup)."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    sweep = SweepRun(uri, "exp", sweep_name, spool=tmp_path / "spool")
    logger = MLflowTrialLogger(sweep)
    logger.setup()
    return uri, sweep, logger


def test_resolve_tracking_uri_makes_local_paths_absolute(tmp_path):
    assert resolve_tracking_uri(None, tmp_path) == f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert resolve_tracking_uri("sqlite:///x.db", tmp_path) == f"sqlite:///{tmp_path / 'x.db'}"
    assert resolve_tracking_uri("http://127.0.0.1:5000") == "http://127.0.0.1:5000"


def test_events_survive_a_dropped_server_and_resume_finds_existing_children(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    uri, sweep, logger = _logger(tmp_path, "s1")
    t1 = _trial("t1", k=3)
    logger.on_trial_start(0, [], t1)
    working = logger.client.store
    logger.client.store = MlflowClient(tracking_uri="http://127.0.0.1:9")  # the server goes away
    t2 = _trial("t2", k=5)
    logger.on_trial_start(0, [], t2)
    logger.on_trial_result(0, [], t1, _final())
    t1.last_result = _final()
    logger.on_trial_complete(0, [], t1)
    assert len(logger.writes) == 3  # nothing written, nothing dropped
    logger.client.store = working  # ... and comes back within --store-retry-seconds
    logger.on_experiment_end([t1, t2])
    assert sweep.spool.count == 0  # all written, nothing spooled
    assert len(logger.writes) == 0
    client = MlflowClient(tracking_uri=uri)
    runs = {r.data.tags["oodsweep.trial_id"]: r for r in client.search_runs([sweep.experiment_id])
            if "oodsweep.trial_id" in r.data.tags}
    assert set(runs) == {"t1", "t2"}
    assert runs["t1"].info.status == "FINISHED" and runs["t1"].data.metrics["near/auroc"] == 1.0
    assert {a.path for a in client.list_artifacts(runs["t1"].info.run_id)} >= {"ood_matrix.csv", "ood_matrix.json"}

    # a resumed driver: a new logger on the same parent reuses the child runs
    again = MLflowTrialLogger(SweepRun(uri, "exp", "s1", run_id=sweep.run_id, spool=tmp_path / "spool"))
    again.setup()
    again.on_trial_start(0, [], t2)
    again.on_trial_complete(0, [], t2)
    children = client.search_runs([sweep.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{sweep.run_id}'")
    assert len(children) == 2


def test_failed_trial_logs_its_error(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    sweep = SweepRun(uri, "exp", "s", spool=tmp_path / "spool")
    logger = MLflowTrialLogger(sweep)
    err = tmp_path / "error.txt"
    err.write_text("Traceback ...\nValueError: energy temperature must be > 0, got -1.0\n")
    t = _trial("t", temperature=-1.0)
    t.error_file = str(err)
    logger.on_trial_error(0, [], t)
    run = MlflowClient(tracking_uri=uri).get_run(logger.child["t"])
    assert run.info.status == "FAILED" and "temperature must be > 0" in run.data.tags["error"]


def test_a_report_standing_for_several_epochs_logs_each_at_its_epoch(tmp_path):
    from orchestrator.tracking.runs import HISTORY_KEY

    uri, sweep, logger = _logger(tmp_path)
    t = _trial("t", k=1)
    logger.on_trial_start(0, [], t)
    held = [{"val/auroc": 0.5, "epoch": 1, "epochs": 3}, {"val/auroc": 0.6, "epoch": 2, "epochs": 3}]
    logger.on_trial_result(0, [], t, {"val/auroc": 0.65, "epoch": 3, "epochs": 3, "training_iteration": 1,
                                      HISTORY_KEY: json.dumps(held)})
    logger.on_trial_result(0, [], t, {**_final(), "epoch": 3})
    t.last_result = _final()
    logger.on_trial_complete(0, [], t)
    logger.on_experiment_end([t])
    history = MlflowClient(tracking_uri=uri).get_metric_history(logger.child["t"], "val/auroc")
    # epochs 1-3 at their own steps, the final evaluation after the last epoch
    assert sorted((m.step, m.value) for m in history) == [(1, 0.5), (2, 0.6), (3, 0.65), (4, 0.7)]
