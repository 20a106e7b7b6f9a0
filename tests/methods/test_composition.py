"""Every post-hoc method is a valid scorer of every method that trains, its knobs searched with the trainer's;
one trained method (ASCOOD, whose head z-scores h) scored by a shaping method (ASH) through a real trial gives
exactly the metrics of that scorer on the same network's cached outputs."""
import numpy as np
import pytest

import methods
from orchestrator import data as benchmarks
from orchestrator import search_space
from orchestrator.benchmark import plan
from orchestrator.evaluation import fitted_scorer, store_for, validate
from orchestrator.trial import TrialSettings, network_for, run_trial

CATALOG = methods.catalog()
TRAINED = [m["name"] for m in CATALOG if m["kind"] != "post-hoc"]
POST_HOC = [m["name"] for m in CATALOG if m["kind"] == "post-hoc"]


@pytest.mark.parametrize("trainer", TRAINED)
@pytest.mark.parametrize("scorer", POST_HOC)
def test_every_post_hoc_method_scores_every_trained_method(trainer, scorer):
    params = methods.get(trainer).resolve({"scorer": scorer})
    assert params["scorer"] == scorer


@pytest.mark.parametrize("trainer", TRAINED)
def test_a_shaping_scorers_knobs_are_searched_with_the_trainers(trainer):
    space = search_space.parse({"metric": "val/auroc", "mode": "max", "fixed": {"scorer": "ash"},
                                "space": {"percentile": {"type": "float", "low": 65, "high": 95}}}, trainer)
    search_space.check_against(space, methods.get(trainer))  # raises SearchSpaceError when not declared


def test_a_study_compares_a_trained_method_with_cross_entropy_under_the_same_scorer(tmp_path):
    study = tmp_path / "study.yaml"
    study.write_text("benchmarks: [digits]\nseeds: [0]\nsmoke_test: true\nentries:\n  ce-ash: {method: ash}\n"
                     "  ascood-ash: {method: ascood, fixed: {scorer: ash}, baseline: ce-ash}\n")
    planned = plan.expand(plan.load(str(study)), {"storage_path": str(tmp_path / "runs")})
    assert sorted(s.entry.method for s in planned.sweeps) == ["ascood", "ash"]


@pytest.fixture(scope="module")
def ascood_with_ash(tmp_path_factory):
    bench = benchmarks.load("digits", smoke=True)
    config = {"epochs": 1, "scorer": "ash", "percentile": 70.0}
    settings = TrialSettings("ascood", cache_dir=str(tmp_path_factory.mktemp("cache")), threads=1)
    return bench, config, settings, run_trial(config, bench, settings)


def test_a_trained_method_with_a_shaping_scorer_gives_a_finite_matrix(ascood_with_ash):
    *_, result = ascood_with_ash
    assert np.isfinite([result["val/auroc"], result["near/auroc"], result["far/auroc"]]).all()


def test_the_trial_scores_as_the_shaping_scorer_does_on_the_same_network(ascood_with_ash):
    bench, config, settings, result = ascood_with_ash
    net = network_for(config, bench, settings)  # the cached ASCOOD network of this configuration
    store = store_for(net.model, bench, net.device, net.cache, net.key)
    scorer = fitted_scorer(methods.get("ash"), methods.get("ash").resolve({"percentile": 70.0}), store)
    assert validate(scorer, store)["val/auroc"] == pytest.approx(result["val/auroc"], abs=1e-12)


def test_the_cached_head_of_ascood_carries_its_sigma(ascood_with_ash):
    bench, config, settings, _ = ascood_with_ash
    net = network_for(config, bench, settings)
    store = store_for(net.model, bench, net.device, net.cache, net.key)
    assert store.get("id_val").head.zscore_sigma == pytest.approx(net.params["sigma"])
