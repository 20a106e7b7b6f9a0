"""Scheduling for real (one shared local Ray with a fake logical GPU): ASHA early stopping, multi-objective
search with its Pareto front, fractional GPUs per trial."""
import json

import pytest
import ray
from mlflow.tracking import MlflowClient

from orchestrator.errors import UsageError
from orchestrator.sweep import constraint
from orchestrator.sweep.prepare import SweepOptions, prepare
from orchestrator.sweep.runner import run as run_sweep
from orchestrator.sweep.scheduling import pareto_front

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module", autouse=True)
def local_ray():
    ray.init(address="local", num_cpus=2, num_gpus=1, include_dashboard=False, object_store_memory=100 * 2**20, log_to_driver=False)
    yield
    ray.shutdown()


def _run(tmp_path, **kw):
    opts = SweepOptions(**{**dict(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}", storage_path=str(tmp_path / "r"),
                                  cache_dir=str(tmp_path / "cache"), dashboard=False, quiet=True, smoke_test=True), **kw})
    prep = prepare(opts)
    constraint.set_margin(prep, None, "test")  # scheduling only: no ID-accuracy reference classifier to train
    res = run_sweep(prep)
    client = MlflowClient(tracking_uri=opts.tracking_uri)
    runs = client.search_runs([client.get_experiment_by_name("oodsweep").experiment_id])
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    parent = next(r for r in runs if "mlflow.parentRunId" not in r.data.tags)
    return res, client, parent, children


def test_pareto_front_by_hand():
    rows = [{"a": 1, "b": 1}, {"a": 2, "b": 0}, {"a": 0, "b": 2}, {"a": 0.5, "b": 0.5}, {"a": 2, "b": 0}]
    front = pareto_front(rows, [("a", "max"), ("b", "max")])
    assert front == [{"a": 1, "b": 1}, {"a": 2, "b": 0}, {"a": 0, "b": 2}, {"a": 2, "b": 0}]
    # minimising: only (1, 1) is dominated, by (0.5, 0.5)
    assert pareto_front(rows, [("a", "min"), ("b", "min")]) == [{"a": 2, "b": 0}, {"a": 0, "b": 2},
                                                                  {"a": 0.5, "b": 0.5}, {"a": 2, "b": 0}]


def test_asha_stops_trials_early_and_they_still_log_what_they_reached(tmp_path):
    res, client, parent, children = _run(tmp_path, method="ascood", num_samples=6, max_concurrent=1, epochs=4,
                                         scheduler="asha", grace_period=1, reduction_factor=3)
    stopped = [c for c in children if "stopped_early" in c.data.tags]
    assert len(children) == 6 and stopped and res.best_matrix is not None
    for c in stopped:
        assert c.info.status == "FINISHED" and "val/auroc" in c.data.metrics and "near/auroc" not in c.data.metrics
        assert len(client.get_metric_history(c.info.run_id, "val/auroc")) < 5  # fewer reports than a full trial


def test_throttled_reports_still_log_every_epoch_to_mlflow(tmp_path):
    # report_seconds so long that only the last epoch and the final evaluation go to Tune (2 results, not 5)
    res, client, parent, children = _run(tmp_path, method="ascood", num_samples=1, epochs=4, report_seconds=1e6)
    (child,) = children
    history = client.get_metric_history(child.info.run_id, "val/auroc")
    assert sorted(m.step for m in history) == [1, 2, 3, 4, 5]  # epochs 1-4, then the final evaluation
    (result_file,) = (tmp_path / "r").glob("*/*/result.json")
    assert len(result_file.read_text().splitlines()) == 2


def test_multi_objective_sweep_logs_its_pareto_front(tmp_path):
    res, client, parent, children = _run(tmp_path, method="ascood", num_samples=3,
                                         objectives=["val/auroc:max", "val/acc:max"])
    assert res.pareto and parent.data.metrics["pareto/size"] == len(res.pareto)
    front = json.load(open(client.download_artifacts(parent.info.run_id, "pareto_front.json", str(tmp_path))))
    all_rows = [{"val/auroc": c.data.metrics["val/auroc"], "val/acc": c.data.metrics["val/acc"]} for c in children]
    expected = pareto_front(all_rows, [("val/auroc", "max"), ("val/acc", "max")])
    assert sorted((r["val/auroc"], r["val/acc"]) for r in front["front"]) == \
        sorted((r["val/auroc"], r["val/acc"]) for r in expected)


def test_fractional_gpus_schedule_two_trials_on_one_gpu(tmp_path):
    res, client, parent, children = _run(tmp_path, method="energy", num_samples=2, cpus_per_trial=0.5,
                                         gpus_per_trial=0.5)
    assert res.num_errors == 0 and len(children) == 2
    assert parent.data.params["gpus_per_trial"] == "0.5"


def test_multi_objective_refuses_a_scheduler():
    with pytest.raises(UsageError, match="multi-objective"):
        prepare(SweepOptions(method="energy", smoke_test=True, scheduler="asha",
                                   objectives=["val/auroc", "val/acc"]))


def test_knn_sweep_trains_one_classifier_and_extracts_features_once(tmp_path):
    from orchestrator import data as benchmarks
    from orchestrator.cache import ModelCache

    res, client, parent, children = _run(tmp_path, method="knn", num_samples=6, max_concurrent=2)
    cache = ModelCache(tmp_path / "cache")
    assert cache.trained_count() == 1
    assert cache.extracted_count() == len(benchmarks.load("digits", smoke=True).splits())  # each split once
    assert len(children) == 6 and all("near/auroc" in c.data.metrics for c in children)
    assert len({c.data.params["k"] for c in children}) > 1


def test_a_repeated_failure_is_not_run_again(tmp_path):
    from orchestrator.sweep.trainable import AttemptLog, RepeatedFailure

    log = AttemptLog(tmp_path)
    log.record(ValueError("temperature overflow"))
    log.refuse_a_repeated_failure()  # one failure: a retry may help (a lost worker looks like this too)
    log.record(ValueError("temperature overflow"))
    with pytest.raises(RepeatedFailure, match="failed the same way"):
        log.refuse_a_repeated_failure()


def test_different_failures_are_retried(tmp_path):
    from orchestrator.sweep.trainable import AttemptLog

    log = AttemptLog(tmp_path)
    log.record(RuntimeError("worker died"))
    log.record(ValueError("temperature overflow"))
    log.refuse_a_repeated_failure()
