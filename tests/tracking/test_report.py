"""The leaderboard (`python -m orchestrator report`) and seed repeats.

Real store: two real smoke sweeps (energy --seed 0, energy --seed 1), then `rerun_best_with_seeds(energy seed 0, 1)`,
whose seed-1 network is the one energy --seed 1 already trained (model cache). Every leaderboard number must equal
(or be the mean/std of) metrics stored in MLflow. Sorting, rendering and the selection rules (the sweep's own
best_trial_id, min-mode objectives, failed runs, conventions, smoke sweeps) run on a hand-built store (no Ray).
"""
import time

import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from orchestrator.sweep import seeds
from orchestrator.sweep.prepare import SweepOptions, prepare
from orchestrator.sweep.runner import run as run_sweep
from orchestrator.tracking import report

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module", autouse=True)
def _cwd(mlflow_cwd):
    yield


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    import ray

    tmp = tmp_path_factory.mktemp("report")
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    runs = {}
    try:
        for key, method, seed in (("energy0", "energy", 0), ("energy1", "energy", 1)):
            opts = SweepOptions(method=method, seed=seed, name=f"{key}-sweep", smoke_test=True, dashboard=False,
                                      tracking_uri=uri, storage_path=str(tmp / "ray"), cache_dir=str(tmp / "cache"),
                                      quiet=True, num_cpus=2)
            prep = prepare(opts)
            started = time.time()
            runs[key] = (prep, run_sweep(prep))
            print(f"{key}: {time.time() - started:.1f} s")
            assert runs[key][1].best_matrix is not None
        prep, result = runs["energy0"]
        started = time.time()
        runs["repeats"] = seeds.rerun_best_with_seeds(prep, result, 1)
        print(f"repeats: {time.time() - started:.1f} s")
        yield uri, runs
    finally:
        ray.shutdown()


def _parent(client, run_id):
    return client.get_run(run_id).data


def test_single_sweep_row_equals_the_parent_runs_best_metrics(store):
    uri, runs = store
    client = MlflowClient(uri)
    df = report.leaderboard(uri, sweeps=["energy1-sweep"])
    assert len(df) == 1
    row = df.iloc[0]
    parent = _parent(client, runs["energy1"][1].parent_run_id)
    assert (row["method"], row["benchmark"], row["convention"], row["seeds"], row["sweeps"]) == \
        ("energy", "digits", "classic", 1, 1)
    for col, name in report.METRICS.items():
        assert row[col] == pytest.approx(parent.metrics[f"best/{name}"], abs=1e-12), col
        assert row[f"{col}_std"] == 0.0
    assert row["val"] == pytest.approx(parent.metrics["best/val/auroc"])
    assert row["best_config"] == f"temperature={report._short(parent.params['best.temperature'])}"
    best_child = client.get_run(row["best_run_id"])
    assert best_child.data.tags["oodsweep.trial_id"] == parent.tags["best_trial_id"]


def test_seed_repeats_are_logged_and_summarised_on_the_parent(store):
    uri, runs = store
    client = MlflowClient(uri)
    prep, result = runs["energy0"]
    rep = runs["repeats"]
    assert rep["seeds"] == [0, 1] and len(rep["runs"]) == 1
    child = client.get_run(rep["runs"][0])
    assert child.data.tags["oodsweep.seed_repeat"] == "true"
    assert child.data.tags["mlflow.parentRunId"] == result.parent_run_id
    assert child.data.tags["oodsweep.source_trial_id"] == client.get_run(result.parent_run_id).data.tags["best_trial_id"]
    assert child.data.params["seed"] == "1" and child.info.status == "FINISHED"
    assert {a.path for a in client.list_artifacts(child.info.run_id)} >= {"ood_matrix.json", "ood_matrix_heatmap.png"}
    # seed 1 of the best energy config == the best trial of the energy --seed 1 sweep only if both chose the same
    # temperature; what must hold: the parent's summary is the mean/std over the sweep's best and the repeat.
    parent = _parent(client, result.parent_run_id)
    for name in seeds.SEED_METRICS:
        values = [result.best_matrix.flat()[name], child.data.metrics[name]]
        assert parent.metrics[f"seeds/{name}_mean"] == pytest.approx(np.mean(values))
        assert parent.metrics[f"seeds/{name}_std"] == pytest.approx(np.std(values, ddof=1))
    assert parent.metrics["seeds/n"] == 2


def test_rows_average_over_sweeps_and_seed_repeats(store):
    uri, runs = store
    client = MlflowClient(uri)
    df = report.leaderboard(uri)
    assert list(df["method"]) == ["energy"]
    energy = df.iloc[0]
    # seeds 0 and 1: energy1's best trial and energy0's repeat with seed 1 measure the same seed-1 network
    assert energy["sweeps"] == 2
    assert energy["seeds"] == 2
    assert energy["merged"] == 1
    best = {key: {k[len("best/"):]: v for k, v in _parent(client, runs[key][1].parent_run_id).metrics.items()
                  if k.startswith("best/")} for key in ("energy0", "energy1")}
    repeat = client.get_run(runs["repeats"]["runs"][0]).data.metrics
    energy0_wins = best["energy0"]["val/auroc"] > best["energy1"]["val/auroc"]  # a tie goes to the later sweep
    samples = [best["energy0"], repeat if energy0_wins else best["energy1"]]  # the better sweep keeps its seed 1
    for col, name in report.METRICS.items():
        values = [s[name] for s in samples]
        assert energy[col] == pytest.approx(np.mean(values)), col
        assert energy[f"{col}_std"] == pytest.approx(np.std(values, ddof=1)), col
    # the best config shown is the one of the sweep with the best validation value
    top = max(("energy0", "energy1"), key=lambda k: _parent(client, runs[k][1].parent_run_id).metrics["best/val/auroc"])
    assert energy["best_sweep"] == f"{top}-sweep"
    table = report.render(df, "table")
    assert "FPR@95 (classic)" in table and "±" in table
    assert f"{100 * energy['near_auroc']:.2f} ± {100 * energy['near_auroc_std']:.2f}" in table


# ---------------------------------------------------------------- a hand-built store (no Ray)
def _sweep(client, exp, name, method, children, best=None, seed=0, objective="val/auroc:max", convention="classic",
           smoke=False):
    parent = client.create_run(exp, run_name=name, tags={"oodsweep.sweep": name}).info.run_id
    for k, v in {"method": method, "benchmark": "digits", "seed": seed, "objectives": objective,
                 "fpr95_convention": convention, "smoke_test": smoke, "fixed.epochs": 1}.items():
        client.log_param(parent, k, v)
    metric = objective.split(":")[0]
    for i, (val, near, status) in enumerate(children):
        child = client.create_run(exp, run_name=f"trial-{i}", tags={"mlflow.parentRunId": parent,
                                                                  "oodsweep.trial_id": f"{name}-{i}"}).info.run_id
        client.log_param(child, "epochs", 1)
        client.log_param(child, "k", i)
        values = {metric: val, "near/auroc": near, "far/auroc": near / 2, "near/fpr95": 1 - near,
                  "far/fpr95": 0.5, "near/aupr_in": near, "near/aupr_out": near, "far/aupr_in": near,
                  "far/aupr_out": near, "id/acc": 0.9}
        for k, v in values.items():
            client.log_metric(child, k, v)
        client.set_terminated(child, status)
    if best is not None:
        client.set_tag(parent, "best_trial_id", f"{name}-{best}")
    client.set_terminated(parent)
    return parent


@pytest.fixture(scope="module")
def fake_store(tmp_path_factory):
    uri = f"sqlite:///{tmp_path_factory.mktemp('fake') / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp = client.create_experiment("oodsweep")
    # the sweep chose trial 0 (e.g. from a Pareto front) although trial 1 has the higher val/auroc: trust the sweep
    _sweep(client, exp, "a-chosen", "a", [(0.7, 0.60, "FINISHED"), (0.8, 0.50, "FINISHED")], best=0)
    # no best_trial_id (interrupted): best FINISHED child by a min-mode objective; the FAILED one never counts
    _sweep(client, exp, "b-interrupted", "b", [(0.3, 0.70, "FINISHED"), (0.2, 0.80, "FINISHED"),
                                               (0.1, 0.99, "FAILED")], objective="val/loss:min")
    _sweep(client, exp, "a-openood", "a", [(0.9, 0.40, "FINISHED")], best=0, convention="openood")
    _sweep(client, exp, "a-smoke", "a", [(0.9, 0.30, "FINISHED")], best=0, smoke=True)
    _sweep(client, exp, "c-failed", "c", [(0.9, 0.90, "FAILED")])
    other = client.create_experiment("other")
    _sweep(client, other, "d-elsewhere", "d", [(0.9, 0.90, "FINISHED")], best=0)
    return uri


def test_selection_rules_on_a_hand_built_store(fake_store):
    df = report.leaderboard(fake_store)
    rows = {(r.method, r.convention, r.smoke_test): r for r in df.itertuples()}
    assert set(rows) == {("a", "classic", False), ("b", "classic", False), ("a", "openood", False),
                         ("a", "classic", True)}  # c: nothing finished; d: another experiment
    assert rows["a", "classic", False].near_auroc == pytest.approx(0.60)
    assert rows["a", "classic", False].best_config == "k=0"  # fixed knobs (epochs) are not repeated
    assert rows["b", "classic", False].near_auroc == pytest.approx(0.80)
    assert rows["b", "classic", False].val_metric == "val/loss" and rows["b", "classic", False].val == 0.2
    assert list(df["near_auroc"]) == sorted(df["near_auroc"], reverse=True)  # default sort: near AUROC, best first
    assert report.leaderboard(fake_store, experiment="other")["method"].tolist() == ["d"]
    assert report.leaderboard(fake_store, sweeps=["b-interrupted", "c-failed"])["method"].tolist() == ["b"]
    assert report.leaderboard(fake_store, experiment="missing").empty


def test_sort_render_and_cli(fake_store, tmp_path, capsys):
    import argparse

    df = report.leaderboard(fake_store)
    by_fpr = report.sort(df, "near_fpr95")
    assert list(by_fpr["near_fpr95"]) == sorted(df["near_fpr95"])  # lower is better: ascending
    by_far = report.sort(df, "far-auroc")
    assert list(by_far["far_auroc"]) == sorted(df["far_auroc"], reverse=True)
    with pytest.raises(ValueError, match="unknown sort column"):
        report.sort(df, "nope")

    table = report.render(df, "table")
    assert "FPR@95 conv." in table and "openood" in table and "digits (smoke)" in table  # mixed conventions
    assert "±" not in table.split("Test metrics")[0]  # one seed per row
    md = report.render(df, "markdown")
    assert md.startswith("| Method | Benchmark | FPR@95 conv. |") and md.count("\n| ") == len(df)
    csv = report.render(df, "csv")
    assert csv.splitlines()[0].startswith("method,benchmark,convention") and len(csv.splitlines()) == len(df) + 1
    with pytest.raises(ValueError):
        report.render(df, "html")

    parser = argparse.ArgumentParser()
    report.add_parser(parser.add_subparsers(dest="command"))
    out = tmp_path / "board.md"
    args = parser.parse_args(["report", "--tracking-uri", fake_store, "--format", "markdown", "--sort", "far_auroc",
                              "--output", str(out)])
    assert report.run(args) == 0
    assert out.read_text() == report.render(report.sort(df, "far_auroc"), "markdown")
    capsys.readouterr()
    args = parser.parse_args(["report", "b-interrupted", "missing-sweep", "--tracking-uri", fake_store])
    assert report.run(args) == 0
    captured = capsys.readouterr()
    body = captured.out.splitlines()
    assert body[0].startswith("Method") and body[2].startswith("b ") and len(body) == 4
    assert "no finished sweep named missing-sweep" in captured.err


def test_missing_store_and_empty_experiment(tmp_path):
    import argparse

    from orchestrator.errors import UsageError

    parser = argparse.ArgumentParser()
    report.add_parser(parser.add_subparsers(dest="command"))
    with pytest.raises(UsageError, match="no MLflow store"):
        report.run(parser.parse_args(["report", "--tracking-uri", f"sqlite:///{tmp_path / 'none.db'}"]))
    uri = f"sqlite:///{tmp_path / 'empty.db'}"
    MlflowClient(uri).create_experiment("oodsweep")
    df = report.leaderboard(uri)
    assert df.empty and "No finished sweep" in report.render(df, "table")
    assert report.render(df, "csv").startswith("method,benchmark")


@pytest.fixture(scope="module")
def constrained_store(tmp_path_factory):
    """Two seeds of a trained method under the ID-accuracy constraint: seed 0's chosen trial feasible, seed 1's not
    (its sweep found none feasible); and a post-hoc method, never judged."""
    uri = f"sqlite:///{tmp_path_factory.mktemp('constrained') / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp = client.create_experiment("oodsweep")
    for seed, feasible in ((0, 1.0), (1, 0.0)):
        parent = _sweep(client, exp, f"t-s{seed}", "t", [(0.7, 0.6, "FINISHED")], best=0, seed=seed)
        (child,) = client.search_runs([exp], f"tags.`mlflow.parentRunId` = '{parent}'")
        client.log_metric(child.info.run_id, "constraint/feasible", feasible)
    _sweep(client, exp, "p-s0", "p", [(0.7, 0.5, "FINISHED")], best=0)
    return uri


def test_report_counts_the_seeds_whose_chosen_configuration_is_feasible(constrained_store):
    df = report.leaderboard(constrained_store)
    assert dict(zip(df["method"], df["feasible"], strict=True)) == {"t": "1/2", "p": ""}


def test_report_shows_a_feasible_column_only_when_something_was_judged(constrained_store, fake_store):
    assert ("Feasible" in report.render(report.leaderboard(constrained_store), "table"),
            "Feasible" in report.render(report.leaderboard(fake_store), "table")) == (True, False)
