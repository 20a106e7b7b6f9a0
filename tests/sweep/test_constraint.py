"""The ID-accuracy constraint (orchestrator.sweep.constraint): verdicts by hand, the choice of the best trial, the
reference thread, Optuna and Ray's searcher carrying it, the search-space / study / CLI keys, the leaderboard's
marks — and, through real Ray, Optuna and MLflow on one local Ray, a smoke sweep of each of the five trained
baselines (logitnorm, t2fnorm, regmixup, mixoe, vos) and a UM sweep whose one configuration wrecks the classifier."""
import csv
import io
import os
import pickle
import subprocess
import sys
import time
from types import SimpleNamespace

import optuna
import pytest
from mlflow.tracking import MlflowClient

from orchestrator import search_space
from orchestrator.benchmark import leaderboard, plan
from orchestrator.errors import UsageError
from orchestrator.sweep import constraint
from orchestrator.sweep.constraint import Constraint, Reference
from orchestrator.sweep.runner import SweepResult, print_summary
from tests.conftest import ROOT

RULE = Constraint(1.0, Reference.known(0.97, 0.95, "abc"))


def _r(acc, auroc=0.5, tid="t"):
    return SimpleNamespace(metrics={"val/acc": acc, "val/auroc": auroc, "trial_id": tid})


# ---------------------------------------------------------------- verdicts
def test_drop_is_reference_minus_accuracy_in_points():
    assert RULE.drop({"val/acc": 0.925}) == pytest.approx(4.5)


def test_one_point_below_is_feasible_despite_float_noise():
    assert (100 * (0.97 - 0.96) > 1.0, RULE.value({"val/acc": 0.96}), RULE.feasible({"val/acc": 0.96})) == \
        (True, 0.0, True)


def test_more_than_the_margin_below_is_infeasible():
    assert (RULE.value({"val/acc": 0.955}), RULE.feasible({"val/acc": 0.955})) == (pytest.approx(0.5), False)


def test_a_gain_is_a_negative_drop():
    assert RULE.drop({"val/acc": 0.99}) == pytest.approx(-2.0)


def test_a_result_without_accuracy_gets_no_verdict():
    assert (RULE.value({"val/auroc": 0.9}), RULE.feasible({"val/auroc": 0.9}), RULE.annotate({})) == \
        (None, False, ({}, {}))


def test_a_post_hoc_sweep_scores_its_reference_itself():
    assert (Constraint(1.0).drop({"val/acc": 0.2}), Constraint(1.0).feasible({"val/acc": 0.2})) == (0.0, True)


def test_annotate_gives_the_metrics_and_the_tag():
    metrics, tags = RULE.annotate({"val/acc": 0.9})
    assert (metrics, tags) == ({"constraint/id_acc_drop": pytest.approx(7.0), "constraint/feasible": 0.0,
                                "constraint/max_id_acc_drop": 1.0, "constraint/reference_val_acc": 0.97},
                               {"feasible": "false"})


# ---------------------------------------------------------------- the best trial
def test_the_best_is_chosen_among_the_feasible_even_below_a_better_infeasible_one():
    wrecked, sound = _r(0.25, auroc=0.84, tid="w"), _r(0.965, auroc=0.70, tid="s")
    assert constraint.candidates(RULE, [wrecked, sound]) == ([sound], True)


def test_with_none_feasible_the_least_infeasible_are_kept():
    a, b, c = _r(0.90), _r(0.95), _r(0.95, auroc=0.9)
    assert constraint.candidates(RULE, [a, b, c]) == ([b, c], False)


def test_without_a_constraint_every_finished_trial_is_a_candidate():
    finished = [_r(0.1), _r(0.9)]
    assert constraint.candidates(None, finished) == (finished, None)


def test_the_summary_line_says_when_none_is_feasible():
    line, metrics, tags = constraint.outcome(RULE, [_r(0.5, tid="x")], _r(0.5, tid="x"), False)
    assert line.startswith("No trial met the ID-accuracy constraint") and "trial x, 47.00 points below" in line
    assert (metrics["constraint/feasible_trials"], tags) == (0.0, {"best_feasible": "false"})


def test_print_summary_shows_the_constraint_line():
    res = SweepResult("s", "run", "uri", "path", best_config={"k": 1}, best_metrics={"val/auroc": 0.5},
                      constraint_note="No trial met the ID-accuracy constraint (...)")
    res.best_matrix = SimpleNamespace(format=lambda: "matrix")
    out = io.StringIO()
    print_summary(res, "val/auroc", out)
    assert "Best trial (val/auroc = 0.5000 on validation): k=1\nNo trial met" in out.getvalue()


# ---------------------------------------------------------------- the reference
def test_the_reference_is_computed_on_a_thread_and_waited_for():
    ref = Reference(lambda: (time.sleep(0.2), {"key": "k", "trained": True, "val_acc": 0.5, "test_acc": 0.4})[1])
    assert Constraint(1.0, ref).drop({"val/acc": 0.49}) == pytest.approx(1.0)


def test_a_failed_reference_gives_no_verdict_and_says_why():
    rule = Constraint(1.0, Reference(lambda: 1 / 0))
    line, _, _ = constraint.outcome(rule, [_r(0.5)], _r(0.5), None)
    assert (rule.drop({"val/acc": 0.5}), constraint.candidates(rule, [_r(0.5)])[1]) == (None, None)
    assert "could not be measured (ZeroDivisionError" in line


def test_a_pickled_reference_keeps_its_value_only():
    ref = pickle.loads(pickle.dumps(Reference(lambda: {"key": "k", "trained": False, "val_acc": 0.8,
                                                        "test_acc": 0.7})))
    assert ref.result()["val_acc"] == 0.8


# ---------------------------------------------------------------- Optuna and Ray's searcher
def test_optuna_skips_an_infeasible_best_value():
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=0))
    for acc, auroc in ((0.25, 0.84), (0.965, 0.70)):
        trial = study.ask()
        RULE.tell(trial, {"val/acc": acc})
        study.tell(trial, auroc)
    assert (study.best_trial.value, study.trials[0].constraints) == (0.70, {"id_acc_drop": pytest.approx(71.0)})


def test_rays_searcher_tells_optuna_the_constraint():
    from orchestrator.sweep.constrained_search import ConstrainedOptunaSearch

    searcher = ConstrainedOptunaSearch(space=search_space.DefineByRun([search_space.Knob("x", "float", 0, 1)], {}),
                                       metric="val/auroc", mode="max", sampler=optuna.samplers.TPESampler(seed=0),
                                       constraint=RULE)
    searcher.suggest("t1")
    searcher.on_trial_complete("t1", {"val/auroc": 0.9, "val/acc": 0.5})
    frozen = searcher._ot_study.trials[0]  # Ray's OptunaSearch keeps its study there (ray pinned)
    assert (frozen.state, frozen.constraints) == (optuna.trial.TrialState.COMPLETE, {"id_acc_drop": pytest.approx(46.0)})


# ---------------------------------------------------------------- the keys and the checks
@pytest.mark.parametrize("text, margin", [("", 1.0), ("max_id_acc_drop: 2.5\n", 2.5), ("max_id_acc_drop: none\n", None),
                                          ("max_id_acc_drop: null\n", None)])
def test_the_search_space_key(text, margin):
    import yaml

    assert search_space.parse(yaml.safe_load(f"metric: val/auroc\n{text}"), "vos").max_id_acc_drop == margin


@pytest.mark.parametrize("value", ["-1", "lots", True])
def test_a_bad_margin_is_refused_in_one_line(value):
    with pytest.raises(UsageError, match="--max-id-acc-drop must be a number of percentage points >= 0"):
        constraint.check_margin(value, "--max-id-acc-drop")


def _prep(method, space_text):
    import yaml

    return SimpleNamespace(opts=SimpleNamespace(method=method),
                           space=search_space.parse(yaml.safe_load(space_text), method, "s.yaml"))


def test_searching_a_recipe_knob_of_a_trained_method_is_refused():
    with pytest.raises(UsageError, match=r"s.yaml searches recipe knob\(s\) lr.*max_id_acc_drop: none"):
        constraint.check(_prep("logitnorm", "space: {lr: {type: float, low: 0.01, high: 0.1}}"))


def test_without_a_margin_a_recipe_knob_may_be_searched():
    assert constraint.check(_prep("logitnorm", "max_id_acc_drop: none\nspace: {lr: {type: float, low: 0.01, "
                                               "high: 0.1}}")) is None


def test_the_cli_refuses_a_bad_margin_before_anything_runs(tmp_path):
    res = subprocess.run([sys.executable, "-m", "orchestrator", "sweep", "vos", "--max-id-acc-drop", "-2"],
                         cwd=tmp_path, capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert (res.returncode, res.stderr.count("\n"), list(tmp_path.iterdir())) == (2, 1, []), res.stderr
    assert "--max-id-acc-drop must be a number of percentage points" in res.stderr


def test_a_study_sets_margins_per_entry_or_for_all(tmp_path):
    path = tmp_path / "study.yaml"
    path.write_text("benchmarks: [digits]\nseeds: [0]\nsmoke_test: true\nmax_id_acc_drop: 3\n"
                    "entries: {vos: {}, logitnorm: {max_id_acc_drop: none}, msp: {}}\n")
    planned = plan.expand(plan.load(str(path)), {"tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}",
                                                 "storage_path": str(tmp_path / "results")})
    assert [s.prep.space.max_id_acc_drop for s in planned.sweeps] == [3.0, None, 3.0]
    assert "ID accuracy at most 3 pt below CE" in plan.describe(planned)


def test_a_study_refuses_a_bad_margin(tmp_path):
    path = tmp_path / "study.yaml"
    path.write_text("benchmarks: [digits]\nseeds: [0]\nentries: {vos: {max_id_acc_drop: -1}}\n")
    with pytest.raises(UsageError, match=r"entries.vos.max_id_acc_drop must be a number"):
        plan.load(str(path))


# ---------------------------------------------------------------- the leaderboard
def _row(feasible):
    samples = {0: {"id/acc": 0.9, "constraint/feasible": 1.0, "constraint/id_acc_drop": 0.5},
               1: {"id/acc": 0.5, "constraint/feasible": float(feasible), "constraint/id_acc_drop": 30.0}}
    return leaderboard.build([leaderboard.Row("um", "um", "digits", None, samples)])[0]


def test_the_leaderboard_marks_a_row_with_an_infeasible_choice():
    cells = dict(zip(leaderboard.headers("classic"), leaderboard.cells(_row(False)), strict=True))
    assert (cells["Entry"], cells["Feasible"], cells["Max ID-acc drop (val, pts)"]) == ("um ✗", "1/2 ✗", "+30.00")


def test_the_leaderboard_csv_counts_feasible_seeds():
    row = next(csv.DictReader(io.StringIO(leaderboard.csv_text([_row(True)], "classic"))))
    assert (row["feasible_seeds"], row["constrained_seeds"], float(row["max_id_acc_drop_points"])) == ("2", "2", 30.0)


# ---------------------------------------------------------------- end to end
# um = 50 puts UM's loss floor far above the cross-entropy: it climbs the loss and wrecks the classifier (val accuracy
# 1.0 → ~0.2 on the smoke digits); um = 0 is plain fine-tuning. Seed 0's first two TPE draws are 50 then 0.
UM_CHOICE = """\
metric: val/auroc
mode: max
max_id_acc_drop: 20
space:
  um: {type: categorical, choices: [0.0, 50.0]}
fixed: {finetune_lr: 0.05, scorer: energy}
"""
TRAINED = ("logitnorm", "t2fnorm", "regmixup", "mixoe", "vos")


@pytest.fixture(scope="module")
def sweeps(tmp_path_factory):
    """A smoke sweep (2 trials, 1 epoch, 300 images) of each trained baseline and the UM sweep, in one process on one
    local Ray (one cache: the cross-entropy reference of the smoke recipe is trained once)."""
    import ray

    from orchestrator.sweep.prepare import SweepOptions, prepare
    from orchestrator.sweep.runner import run

    cwd = tmp_path_factory.mktemp("constrained")
    (cwd / "um_choice.yaml").write_text(UM_CHOICE)
    # One trial at a time: the sweep's second trial reuses the first one's worker (a worker's start-up, PyTorch's import
    # included, is most of a smoke trial's cost).
    common = dict(tracking_uri=f"sqlite:///{cwd / 'mlflow.db'}", storage_path=str(cwd / "r"),
                  cache_dir=str(cwd / "cache"), dashboard=False, quiet=True, smoke_test=True, figures=False,
                  max_concurrent=1)
    ray.init(address="local", num_cpus=2, include_dashboard=False, object_store_memory=100 * 2**20,
             log_to_driver=False)  # a private instance, whatever else runs on this machine
    try:
        results = {m: run(prepare(SweepOptions(method=m, name=m, **common))) for m in TRAINED}
        results["um"] = run(prepare(SweepOptions(method="um", name="um", epochs=10,
                                                 search_space=str(cwd / "um_choice.yaml"), **common)))
        # the reference as a cluster (or a GPU sweep) measures it: in a Ray task, from the same cache
        prep = prepare(SweepOptions(method="vos", name="vos-again", **common))
        in_task = constraint.reference_computer(prep, prep.trial_settings(), here=False)()
    finally:
        ray.shutdown()
    client = MlflowClient(common["tracking_uri"])
    runs = client.search_runs([client.get_experiment_by_name("oodsweep").experiment_id], max_results=1000)
    parents = {r.data.tags["oodsweep.sweep"]: r for r in runs if "oodsweep.sweep" in r.data.tags}
    children = {name: [r for r in runs if r.data.tags.get("mlflow.parentRunId") == p.info.run_id]
                for name, p in parents.items()}
    return SimpleNamespace(cwd=cwd, results=results, parents=parents, children=children, in_task=in_task)


@pytest.mark.integration
@pytest.mark.parametrize("method", TRAINED)
def test_each_trained_baseline_sweeps_its_smoke_test_to_the_matrix(sweeps, method):
    kids = sweeps.children[method]
    assert (len(kids), {k.info.status for k in kids}, sweeps.results[method].best_matrix is not None) == \
        (2, {"FINISHED"}, True)
    assert all(0 <= k.data.metrics[m] <= 1 for k in kids for m in ("near/auroc", "far/fpr95", "id/acc", "val/auroc"))


@pytest.mark.integration
@pytest.mark.parametrize("method", (*TRAINED, "um"))
def test_every_trial_is_tagged_with_its_verdict(sweeps, method):
    verdicts = {(k.data.tags["feasible"], k.data.metrics["constraint/id_acc_drop"]
                 <= k.data.metrics["constraint/max_id_acc_drop"]) for k in sweeps.children[method]}
    assert verdicts <= {("true", True), ("false", False)}


@pytest.mark.integration
def test_the_wrecked_configuration_is_infeasible_and_never_chosen(sweeps):
    kids = {float(k.data.params["um"]): k for k in sweeps.children["um"]}
    parent = sweeps.parents["um"]
    assert (kids[50.0].data.tags["feasible"], kids[0.0].data.tags["feasible"]) == ("false", "true")
    assert (parent.data.tags["best_trial_id"], sweeps.results["um"].best_config["um"]) == \
        (kids[0.0].data.tags["oodsweep.trial_id"], 0.0)
    assert (parent.data.tags["best_feasible"], parent.data.params["max_id_acc_drop"]) == ("true", "20")


@pytest.mark.integration
def test_the_parent_records_the_reference_accuracy(sweeps):
    parent = sweeps.parents["um"]
    assert 0.5 < parent.data.metrics["constraint/reference_val_acc"] <= 1.0
    assert parent.data.tags["constraint.reference_key"] in sweeps.results["um"].networks


@pytest.mark.integration
def test_the_stored_optuna_study_carries_the_constraints(sweeps):
    stored = optuna.load_study(study_name="um", storage=f"sqlite:///{sweeps.cwd / 'optuna.db'}")
    assert sorted(t.constraints["id_acc_drop"] > 0 for t in stored.trials) == [False, True]


@pytest.mark.integration
def test_a_ray_task_measures_the_same_reference_from_the_cache(sweeps):
    parent = sweeps.parents["vos"]
    assert (sweeps.in_task["trained"], sweeps.in_task["key"], sweeps.in_task["val_acc"]) == \
        (False, parent.data.tags["constraint.reference_key"], parent.data.metrics["constraint/reference_val_acc"])
