"""Figures: the matrix heatmap, the best configuration's histograms/ROC (recomputed through the model cache, equal to
what the trial reported), and Optuna's plots from a study rebuilt from MLflow child runs. No Ray: the trial runs
in-process through `run_trial` (a real tiny training), the store is real SQLite."""

import matplotlib.pyplot as plt
import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from orchestrator.metrics import OODMatrix, ood_matrix
from orchestrator.sweep.prepare import SweepOptions, prepare
from orchestrator.sweep.runner import SweepResult
from orchestrator.tracking import figures
from orchestrator.trial import TrialSettings, best_scores, run_trial

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module", autouse=True)
def _cwd(mlflow_cwd):
    yield


@pytest.fixture(scope="module")
def trial(tmp_path_factory):
    """A prepared energy smoke sweep and one real trial of it (trains the tiny classifier once, into the cache)."""
    tmp = tmp_path_factory.mktemp("figures")
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    prep = prepare(SweepOptions(method="energy", smoke_test=True, dashboard=False, tracking_uri=uri,
                                            storage_path=str(tmp / "ray"), cache_dir=str(tmp / "cache"), quiet=True))
    config = {**prep.fixed, "temperature": 2.0}
    settings = TrialSettings(method="energy", seed=0, cache_dir=str(tmp / "cache"),
                             data_fingerprint=prep.bench.fingerprint())
    result = run_trial(config, prep.bench, settings)
    return prep, config, result, uri, tmp


def _png(client, run_id, path, tmp):
    data = open(client.download_artifacts(run_id, path, str(tmp)), "rb").read()
    assert data.startswith(PNG), path
    return data


def _matrix(result):
    import json

    return OODMatrix.from_json(json.loads(result["matrix_json"]))


def test_heatmap_is_logged_per_trial(trial, tmp_path):
    _, _, result, uri, _ = trial
    matrix = _matrix(result)
    client = MlflowClient(uri)
    exp = client.create_experiment("heatmap")
    run_id = client.create_run(exp).info.run_id
    figures.log_trial_figures(client, run_id, matrix)
    assert [a.path for a in client.list_artifacts(run_id)] == ["ood_matrix_heatmap.png"]
    _png(client, run_id, "ood_matrix_heatmap.png", tmp_path)
    assert not plt.get_fignums()  # closed after logging


def test_best_scores_reproduce_the_trials_matrix(trial):
    prep, config, result, _, _ = trial
    s_id, ood = best_scores(config, prep.bench, prep.trial_settings())
    near = {n: s for n, (g, s) in ood.items() if g == "near"}
    far = {n: s for n, (g, s) in ood.items() if g == "far"}
    assert set(near) == set(prep.bench.near) and set(far) == set(prep.bench.far)
    again = ood_matrix(s_id, near, far).flat()
    for name, value in _matrix(result).flat().items():
        if name != "id/acc":
            assert again[name] == pytest.approx(value, abs=1e-12), name
    for make in (figures.histogram_figure, figures.roc_figure):
        fig = make(s_id, ood, "t")
        assert len(fig.axes) >= 1
        plt.close(fig)


def _sweep_runs(client, exp, result, values):
    parent = client.create_run(exp, run_name="figs", tags={"oodsweep.sweep": "figs"}).info.run_id
    for i, (temperature, val) in enumerate(values):
        child = client.create_run(exp, tags={"mlflow.parentRunId": parent, "oodsweep.trial_id": f"t{i}"}).info.run_id
        client.log_param(child, "temperature", temperature)
        client.log_param(child, "epochs", 1)
        client.log_metric(child, "val/auroc", val)
        client.set_terminated(child)
    repeat = client.create_run(exp, tags={"mlflow.parentRunId": parent, "oodsweep.trial_id": "t0",
                                          "oodsweep.seed_repeat": "true"}).info.run_id
    client.log_param(repeat, "temperature", values[0][0])
    client.log_metric(repeat, "val/auroc", 0.0)
    client.set_terminated(repeat)
    return parent


def test_sweep_figures_and_optuna_study(trial, tmp_path):
    prep, config, result, uri, _ = trial
    client = MlflowClient(uri)
    exp = client.create_experiment("sweep-figures")
    values = [(2.0, 0.61), (0.5, 0.55), (7.5, 0.58)]
    parent = _sweep_runs(client, exp, result, values)
    study = figures.study_from_runs(client, parent, prep.space, prep.fixed)
    assert [t.params["temperature"] for t in study.trials] == [v[0] for v in values]  # seed repeat left out
    assert [t.value for t in study.trials] == [v[1] for v in values]
    assert study.best_value == 0.61

    res = SweepResult("figs", parent, uri, "", best_config=config, best_metrics={}, best_matrix=_matrix(result))
    scores = best_scores(config, prep.bench, prep.trial_settings())
    notes = figures.log_sweep_figures(prep, res, client, scores=scores)
    assert len(notes) == 1 and "importances skipped" in notes[0] and "1 knob" in notes[0]
    names = {a.path for a in client.list_artifacts(parent, "figures") if a.path.endswith(".png")}
    assert names == {f"figures/{n}.png" for n in ("best_ood_matrix_heatmap", "best_score_histograms", "best_roc_curves",
                                                  "optuna_history", "optuna_parallel_coordinate")}
    for name in names:
        _png(client, parent, name, tmp_path)
    # Optuna's plots switch to the ggplot style; that must not leak into anyone's later figures
    assert plt.rcParams["axes.facecolor"] == "white" and not plt.get_fignums()


def test_sweep_figures_skip_importances_with_one_trial(trial):
    prep, config, result, uri, _ = trial
    client = MlflowClient(uri)
    exp = client.create_experiment("one-trial")
    parent = _sweep_runs(client, exp, result, [(2.0, 0.6)])
    res = SweepResult("one", parent, uri, "", best_config=config, best_matrix=_matrix(result))
    notes = figures.log_sweep_figures(prep, res, client, scores=best_scores(config, prep.bench, prep.trial_settings()))
    assert len(notes) == 1 and "importances skipped" in notes[0] and "1 trial" in notes[0]
    names = {a.path for a in client.list_artifacts(parent, "figures")}
    assert "figures/optuna_param_importances.png" not in names and "figures/optuna_history.png" in names
    assert "figures/notes.txt" in names


def test_sweep_without_a_finished_trial_gets_notes_not_errors(trial):
    prep, _, _, uri, _ = trial
    client = MlflowClient(uri)
    exp = client.create_experiment("nothing")
    parent = client.create_run(exp, tags={"oodsweep.sweep": "nothing"}).info.run_id
    res = SweepResult("nothing", parent, uri, "")
    notes = figures.log_sweep_figures(prep, res, client)
    assert any("no finished trial" in n for n in notes)
    assert np.all([a.path != "figures/optuna_history.png" for a in client.list_artifacts(parent, "figures")])


def test_importances_are_plotted_for_two_searched_knobs(trial, tmp_path):
    """A single searched knob has importance 1 by definition (skipped above); two get Optuna's plot."""
    import optuna

    _, _, _, uri, _ = trial
    client = MlflowClient(uri)
    run_id = client.create_run(client.create_experiment("two-knobs")).info.run_id
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=0))
    study.optimize(lambda t: t.suggest_float("a", 0, 1) - 0.1 * t.suggest_float("b", 0, 1), n_trials=8)
    pngs, notes = figures.draw_optuna_figures(study, "val/auroc")
    figures.log_pngs(client, run_id, pngs)
    assert notes == []
    _png(client, run_id, "figures/optuna_param_importances.png", tmp_path)


@pytest.fixture(scope="module")
def drawn_elsewhere(trial):
    """The sweep figures drawn apart from MLflow (as a batched sweep's evaluator does), then logged by the driver."""
    import optuna

    prep, config, result, uri, _ = trial
    client = MlflowClient(uri)
    parent = _sweep_runs(client, client.create_experiment("drawn"), result, [(2.0, 0.6), (0.5, 0.5)])
    client.set_tag(parent, "best_trial_id", "t0")
    res = SweepResult("drawn", parent, uri, "", best_config=config, best_matrix=_matrix(result))
    study = optuna.create_study(direction="maximize")
    study.optimize(lambda t: t.suggest_float("temperature", 0.5, 8.0, log=True) / 10, n_trials=3)
    drawn = figures.draw_sweep_figures(_matrix(result), best_scores(config, prep.bench, prep.trial_settings()),
                                       study, "val/auroc", "energy on digits")
    notes = figures.log_sweep_figures(prep, res, client, drawn=lambda: drawn)
    return client, parent, drawn, notes


def test_drawn_figures_are_pngs(drawn_elsewhere):
    _, _, drawn, _ = drawn_elsewhere
    assert {data[:8] for data in [*drawn.parent.values(), drawn.best_trial]} == {PNG}


def test_figures_drawn_elsewhere_are_logged_as_drawn(drawn_elsewhere, tmp_path):
    client, parent, drawn, _ = drawn_elsewhere
    assert {name: _png(client, parent, name, tmp_path) for name in drawn.parent} == drawn.parent


def test_the_best_trials_heatmap_drawn_elsewhere_goes_to_its_child_run(drawn_elsewhere, tmp_path):
    client, parent, drawn, _ = drawn_elsewhere
    exp = client.get_run(parent).info.experiment_id
    (child,) = [r for r in client.search_runs([exp], filter_string="tags.`oodsweep.trial_id` = 't0'")
                if "oodsweep.seed_repeat" not in r.data.tags]  # the trial's run, not its seed repeat
    assert _png(client, child.info.run_id, "ood_matrix_heatmap.png", tmp_path) == drawn.best_trial


def test_figures_drawn_elsewhere_keep_their_notes(drawn_elsewhere):
    _, _, drawn, notes = drawn_elsewhere
    assert notes == drawn.notes


def test_figures_that_could_not_be_drawn_elsewhere_become_a_note(trial):
    prep, config, result, uri, _ = trial
    client = MlflowClient(uri)
    parent = _sweep_runs(client, client.create_experiment("failed-elsewhere"), result, [(2.0, 0.6)])
    res = SweepResult("failed", parent, uri, "", best_config=config, best_matrix=_matrix(result))

    def lost():
        raise RuntimeError("the evaluator was lost")

    notes = figures.log_sweep_figures(prep, res, client, drawn=lost)
    assert notes == ["figures could not be drawn: RuntimeError: the evaluator was lost"]
