"""The batched engine's evaluator pool through real Ray, with the shared outputs prepared by the driver (a one-node
cluster) and by the first actor (a cluster of several nodes): the others hold them, a lost actor is replaced by one
that scores alike, and the prepared outputs outlive the actors (the sweep figures read them after the pool
closed); the pool draws every sweep figure in two processes, and a lost figure drawer costs only its own figures."""
from types import SimpleNamespace

import pytest
import ray

from orchestrator.sweep.batched import DriverPreparation, EvaluatorPool, prepares_here
from orchestrator.sweep.prepare import SweepOptions, prepare

pytestmark = pytest.mark.integration

TEMPERATURES = (0.5, 3.0)


@pytest.fixture(scope="module", params=["driver", "actor"])
def pool(request, tmp_path_factory):
    work = tmp_path_factory.mktemp(f"pool-{request.param}")
    prep = prepare(SweepOptions(method="energy", benchmark="digits", smoke_test=True, num_samples=2,
                                cache_dir=str(work / "cache"), tracking_uri=f"sqlite:///{work / 'mlflow.db'}",
                                storage_path=str(work / "results"), dashboard=False, quiet=True))
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, address="local")
    pool = EvaluatorPool(prep)
    preparing = pool.submit_prepare(prep.fixed, here=request.param == "driver")
    assert isinstance(preparing, DriverPreparation) == (request.param == "driver")
    done = pool.prepared(preparing, prep.fixed, retries=1)
    ray.get(list(pool.grow(2)))
    configs = [{**prep.fixed, "temperature": t} for t in TEMPERATURES]  # as the sweep sends them
    yield SimpleNamespace(pool=pool, done=done, configs=configs)
    pool.close()
    ray.shutdown()


def _scores(s, actor):
    results = ray.get(actor.run.remote(s.configs))
    assert [error for _, error in results] == [None, None]
    return [r["val/auroc"] for r, _ in results]


def test_the_preparation_trains_the_shared_network(pool):
    assert pool.done["trained"] is True


def test_a_local_cluster_is_prepared_by_the_driver(pool):
    assert prepares_here()


def test_an_actor_holding_the_prepared_outputs_scores_like_the_one_that_prepared(pool):
    assert _scores(pool, pool.pool.actors[1]) == _scores(pool, pool.pool.actors[0])


def test_a_lost_actor_is_replaced_by_one_that_scores_alike(pool):
    lost = pool.pool.actors[1]
    ray.kill(lost)
    new = pool.pool.replace(lost)
    assert _scores(pool, new) == _scores(pool, pool.pool.actors[0])


SWEEP_FIGURES = {f"figures/{n}.png" for n in ("best_ood_matrix_heatmap", "best_score_histograms", "best_roc_curves",
                                                "optuna_history", "optuna_parallel_coordinate")}


def _draw(s):
    """The pool's figures of the first configuration and a 3-trial study (as a sweep's end asks for them)."""
    import optuna

    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=0))
    study.optimize(lambda t: t.suggest_float("temperature", 0.5, 8.0, log=True) / 10, n_trials=3)
    ((result, _),) = ray.get(s.pool.actors[0].run.remote(s.configs[:1]))
    refs = s.pool.draw_figures(s.configs[0], result["matrix_json"], study, "val/auroc", "energy on digits")
    return EvaluatorPool.drawn(refs)


def test_the_pool_draws_every_sweep_figure(pool):
    assert set(_draw(pool).parent) == SWEEP_FIGURES


def test_a_lost_figure_drawer_leaves_the_score_figures_and_a_note(pool):
    ray.kill(pool.pool.drawer)
    drawn = _draw(pool)
    assert (set(drawn.parent), [n.split(":")[0] for n in drawn.notes]) == (
        {"figures/best_score_histograms.png", "figures/best_roc_curves.png"},
        ["heatmap and Optuna plots could not be drawn"])


def test_the_prepared_outputs_outlive_the_pool(pool):
    pool.pool.close()
    assert ray.get(pool.pool.shared)["key"] == pool.done["key"]
