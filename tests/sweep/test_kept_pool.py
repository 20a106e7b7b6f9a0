"""A study's consecutive post-hoc sweeps share one evaluator pool (batched.kept_between_sweeps), through real Ray,
Optuna and MLflow: the second sweep runs on the first sweep's evaluator process, scores exactly as a sweep with a
pool of its own, and the pool is stopped when the block ends or when a sweep needs its CPU for Tune trials."""
import pytest
import ray

from orchestrator.sweep import batched
from orchestrator.sweep.prepare import SweepOptions, prepare
from orchestrator.sweep.runner import run

pytestmark = pytest.mark.integration


def _prep(work, name, loaded, method="energy", **opts):
    return prepare(SweepOptions(method=method, benchmark="digits", smoke_test=True, num_samples=3, name=name,
                                cache_dir=str(work / "cache"), tracking_uri=f"sqlite:///{work / 'mlflow.db'}",
                                storage_path=str(work / "results"), dashboard=False, quiet=True, figures=False,
                                **opts), loaded=loaded)


def _evaluator_process():
    pool = batched.kept_pool()
    return None if pool is None else ray.get(pool.actors[0].process_id.remote())


def _stopped(actor) -> bool:
    try:
        ray.get(actor.process_id.remote(), timeout=60)
    except ray.exceptions.RayActorError:
        return True
    return False


@pytest.fixture(scope="module")
def kept(tmp_path_factory):
    work = tmp_path_factory.mktemp("kept")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, address="local")
    loaded: dict = {}
    out = {}
    with batched.kept_between_sweeps():
        run(_prep(work, "first", loaded))
        out["first_process"] = _evaluator_process()
        first_actor = batched.kept_pool().actors[0]
        out["second"] = run(_prep(work, "second", loaded, method="gen"))
        out["second_process"] = _evaluator_process()
        out["tune"] = run(_prep(work, "tune", loaded, method="msp", batch_size=0))
        out["kept_after_tune"] = batched.kept_pool()
        out["first_actor_stopped_by_tune"] = _stopped(first_actor)
        run(_prep(work, "third", loaded))
        third_actor = batched.kept_pool().actors[0]
    out["kept_after_block"] = batched.kept_pool()
    out["third_actor_stopped"] = _stopped(third_actor)
    out["alone"] = run(_prep(work, "alone", {}, method="gen"))  # the second sweep's configuration, its own pool
    yield out
    ray.shutdown()


def test_the_next_post_hoc_sweep_runs_on_the_kept_evaluator(kept):
    assert kept["second_process"] == kept["first_process"]


def test_a_sweep_on_a_kept_pool_scores_as_one_with_its_own(kept):
    assert kept["second"].best_metrics["val/auroc"] == kept["alone"].best_metrics["val/auroc"]


def test_a_tune_sweep_releases_the_kept_pool(kept):
    assert (kept["tune"].best_matrix is not None, kept["kept_after_tune"], kept["first_actor_stopped_by_tune"]) == \
        (True, None, True)


def test_leaving_the_block_stops_the_kept_pool(kept):
    assert (kept["kept_after_block"], kept["third_actor_stopped"]) == (None, True)
