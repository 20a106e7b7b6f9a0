"""`python -m orchestrator benchmark STUDY.yaml`: the study file's checks, the dry run, and a smoke study of
3 methods × 2 seeds through real Ray, Optuna and MLflow (with its leaderboard), continued by running it again."""
import csv
import os
import subprocess
import sys

import pytest
from mlflow.tracking import MlflowClient

from orchestrator.benchmark import plan
from orchestrator.errors import UsageError
from tests.conftest import ROOT

SMOKE = """\
name: smoke
benchmarks: [digits]
seeds: [0, 1]
smoke_test: true
entries:
  msp: {}
  energy: {num_samples: 2, baseline: msp}
  odin: {fixed: {temperature: 1000.0, epsilon: 0.0}, baseline: msp}
"""


def _write(tmp_path, text, name="study.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def _cli(cwd, *args, timeout=600):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OODSWEEP_CACHE": str(cwd / "cache"), "RAY_USAGE_STATS_ENABLED": "0"}
    return subprocess.run([sys.executable, "-m", "orchestrator", "benchmark", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("text, message", [
    ("benchmarks: [digits]\nseeds: [0]\nentries: {msp: {}}\nseed: 3\n", "unknown keys ['seed']"),
    ("benchmarks: [digits]\nseeds: [0, 0]\nentries: {msp: {}}\n", "seeds repeat a value"),
    ("benchmarks: [digits]\nseeds: [0]\nentries: {energy: {baseline: nosuch}}\n", "baseline 'nosuch' is not an entry"),
    ("benchmarks: [digits]\nseeds: [0]\nentries: {msp: {samples: 3}}\n", "entries.msp: unknown keys ['samples']"),
    ("benchmarks: [digits]\nentries: {msp: {}}\n", "'seeds' is missing or empty"),
])
def test_a_bad_study_file_is_refused_with_one_line(tmp_path, text, message):
    with pytest.raises(UsageError, match=message.replace("[", r"\[").replace("]", r"\]")):
        plan.load(_write(tmp_path, text))


def test_a_fixed_configuration_is_a_one_trial_space():
    space = plan.fixed_space("odin", {"temperature": 10.0})
    assert (space["space"], space["budget"]["num_samples"], space["fixed"]["temperature"]) == ({}, 1, 10.0)


def test_an_unknown_knob_of_an_entry_exits_2_and_writes_nothing(tmp_path):
    study = _write(tmp_path, "benchmarks: [digits]\nseeds: [0]\nentries: {odin: {fixed: {temprature: 2.0}}}\n")
    res = _cli(tmp_path, study, timeout=120)
    assert (res.returncode, sorted(p.name for p in tmp_path.iterdir())) == (2, ["study.yaml"]), res.stderr
    assert "entries.odin" in res.stderr and "did you mean 'temperature'" in res.stderr


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    cwd = tmp_path_factory.mktemp("dry")
    return cwd, _cli(cwd, _write(cwd, SMOKE), "--dry-run", timeout=120)


def test_dry_run_counts_trials_and_trainings(dry_run):
    _, res = dry_run
    assert "Total: 8 trials, 2 network trainings" in res.stdout, res.stdout + res.stderr


def test_dry_run_writes_nothing(dry_run):
    cwd, _ = dry_run
    assert sorted(p.name for p in cwd.iterdir()) == ["study.yaml"]


# ---------------------------------------------------------------- the smoke study, end to end
@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    cwd = tmp_path_factory.mktemp("study")
    res = _cli(cwd, _write(cwd, SMOKE), "--no-dashboard", "--no-figures", "--num-cpus", "2")
    return cwd, res


def _leaderboard(cwd):
    with open(cwd / "ray_results" / "smoke" / "leaderboard.csv") as f:
        return {row["entry"]: row for row in csv.DictReader(f)}




@pytest.mark.integration
def test_smoke_study_exits_0(smoke):
    _, res = smoke
    assert res.returncode == 0, res.stderr[-3000:]


@pytest.mark.integration
def test_every_row_has_two_distinct_seeds(smoke):
    cwd, _ = smoke
    assert {e: r["n"] for e, r in _leaderboard(cwd).items()} == {"msp": "2", "energy": "2", "odin": "2"}


@pytest.mark.integration
def test_compared_rows_have_a_confidence_interval(smoke):
    cwd, _ = smoke
    rows = _leaderboard(cwd)
    assert all(float(rows[e]["delta_near_auroc_ci_low"]) <= float(rows[e]["delta_near_auroc_ci_high"])
               for e in ("energy", "odin"))


@pytest.mark.integration
def test_the_markdown_leaderboard_names_its_command_and_convention(smoke):
    cwd, _ = smoke
    md = (cwd / "ray_results" / "smoke" / "leaderboard.md").read_text()
    assert "python -m orchestrator benchmark" in md and "FPR@95 (classic, ↓)" in md


@pytest.mark.integration
def test_the_study_run_groups_its_six_sweeps(smoke):
    cwd, _ = smoke
    client = MlflowClient(f"sqlite:///{cwd / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("oodsweep").experiment_id], max_results=1000)
    study = next(r for r in runs if r.data.tags.get("oodsweep.study") == "smoke" and "oodsweep.sweep" not in r.data.tags)
    nested = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == study.info.run_id]
    assert (study.info.status, len(nested)) == ("FINISHED", 6)


@pytest.mark.integration
def test_the_study_trains_one_classifier_per_seed(smoke):
    cwd, _ = smoke
    assert len(list((cwd / "cache").rglob("model.pt"))) == 2


@pytest.mark.integration
def test_running_the_study_again_keeps_every_finished_sweep(smoke):
    cwd, _ = smoke
    res = _cli(cwd, str(cwd / "study.yaml"), "--no-dashboard", "--no-figures", "--num-cpus", "2")
    assert res.returncode == 0 and res.stdout.count("finished earlier, kept") == 6, res.stdout + res.stderr
