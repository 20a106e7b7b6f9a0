"""A study run again keeps its finished sweeps only while its file still describes them: an entry edited since
(another search space, more trials...) is refused in one line, and ``--rerun ENTRY`` deletes that entry's sweeps
(MLflow runs, stored Optuna study, results folder) and runs them again. The sweeps themselves are replaced by their
outcome here (tests/benchmark/test_study.py runs real ones)."""
import json

import optuna
import pytest
from mlflow.tracking import MlflowClient

from orchestrator.benchmark import plan
from orchestrator.benchmark import run as study
from orchestrator.errors import UsageError
from orchestrator.sweep import state as sweep_state

STUDY = """\
name: edited
benchmarks: [digits]
seeds: [0]
smoke_test: true
entries:
  energy: {num_samples: 2}
"""
SWEEP = "edited-energy-digits-s0"


def _common(tmp_path):
    return {"tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}", "storage_path": str(tmp_path / "results"),
            "cache_dir": str(tmp_path / "cache"), "dashboard": False}


def _finished_earlier(tmp_path, definition):
    """The study's state as a finished run of SWEEP left it, with the definition it recorded."""
    folder = tmp_path / "results" / "edited"
    folder.mkdir(parents=True)
    (folder / "oodsweep_study.json").write_text(json.dumps(
        {"sweeps": {SWEEP: {"status": "FINISHED", "entry": "energy", "definition": definition}}}))


def _current_definition(tmp_path):
    spec = plan.load(str(tmp_path / "study.yaml"))
    (s,) = plan.expand(spec, {**_common(tmp_path), "storage_path": str(tmp_path / "results")}).sweeps
    return plan.definition(s)


@pytest.fixture
def study_dir(tmp_path, monkeypatch):
    (tmp_path / "study.yaml").write_text(STUDY)
    monkeypatch.chdir(tmp_path)
    ran = []
    monkeypatch.setattr(study, "_run_sweeps", lambda planned, folder, state, *a, **k: ran.append(
        [s.name for s in planned.sweeps if state["sweeps"].get(s.name, {}).get("status") != "FINISHED"]) or [])
    return tmp_path, ran


def test_the_definition_changes_with_the_number_of_trials(study_dir):
    tmp_path, _ = study_dir
    before = _current_definition(tmp_path)
    (tmp_path / "study.yaml").write_text(STUDY.replace("num_samples: 2", "num_samples: 3"))
    assert _current_definition(tmp_path) != before


def test_an_entry_changed_since_its_sweeps_ran_is_refused(study_dir):
    tmp_path, _ = study_dir
    _finished_earlier(tmp_path, "0" * 16)
    with pytest.raises(UsageError, match=r"entry 'energy' changed since its sweeps ran \(edited-energy-digits-s0\): "
                                         r"run with --rerun energy"):
        study.run("study.yaml", _common(tmp_path))


def test_a_refused_study_writes_nothing(study_dir):
    tmp_path, _ = study_dir
    _finished_earlier(tmp_path, "0" * 16)
    with pytest.raises(UsageError):
        study.run("study.yaml", _common(tmp_path))
    assert not (tmp_path / "mlflow.db").exists()


def test_an_unchanged_finished_sweep_is_kept(study_dir):
    tmp_path, ran = study_dir
    _finished_earlier(tmp_path, _current_definition(tmp_path))
    assert (study.run("study.yaml", _common(tmp_path)), ran) == (0, [[]])


def test_an_unknown_rerun_label_is_refused(study_dir):
    tmp_path, _ = study_dir
    with pytest.raises(UsageError, match="--rerun msp: no entry of that label"):
        study.run("study.yaml", _common(tmp_path), rerun=["msp"])


@pytest.fixture
def rerun(study_dir):
    """SWEEP finished earlier with another definition, its parent and child runs in MLflow, its Optuna study and its
    results folder on disk; then the study runs with --rerun energy."""
    tmp_path, ran = study_dir
    _finished_earlier(tmp_path, "0" * 16)
    client = MlflowClient(_common(tmp_path)["tracking_uri"])
    exp = client.create_experiment("oodsweep")
    parent = client.create_run(exp, tags={"oodsweep.sweep": SWEEP}).info.run_id
    client.create_run(exp, tags={"mlflow.parentRunId": parent, "oodsweep.trial_id": "t0"})
    other = client.create_run(exp, tags={"oodsweep.sweep": "another-sweep"}).info.run_id
    (tmp_path / "results" / SWEEP).mkdir()
    (tmp_path / "results" / SWEEP / sweep_state.STATE_FILE).write_text("{}")  # a sweep that began: its saved state
    (s,) = plan.expand(plan.load("study.yaml"), {**_common(tmp_path)}).sweeps
    optuna.create_study(study_name=SWEEP, storage=s.prep.study_storage)
    code = study.run("study.yaml", _common(tmp_path), rerun=["energy"])
    return tmp_path, ran, code, client, exp, other, s.prep.study_storage


def test_rerun_runs_the_entrys_sweep_again(rerun):
    _, ran, code, *_ = rerun
    assert (code, ran) == (0, [[SWEEP]])


def test_rerun_deletes_the_sweeps_mlflow_runs(rerun):
    _, _, _, client, exp, _, _ = rerun
    left = client.search_runs([exp], "tags.`oodsweep.sweep` != 'x'")  # active runs with a sweep tag
    assert [r.data.tags.get("oodsweep.sweep") for r in left if r.data.tags.get("oodsweep.sweep") == SWEEP] == []


def test_rerun_leaves_other_sweeps_runs(rerun):
    _, _, _, client, _, other, _ = rerun
    assert client.get_run(other).info.lifecycle_stage == "active"


def test_rerun_deletes_the_sweeps_optuna_study(rerun):
    *_, storage = rerun
    assert SWEEP not in [s.study_name for s in optuna.get_all_study_summaries(storage)]


def test_rerun_removes_the_sweeps_results_folder(rerun):
    tmp_path, *_ = rerun
    assert not (tmp_path / "results" / SWEEP).exists()
