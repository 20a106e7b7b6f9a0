"""Every post-hoc method sweeps `--smoke-test` through real Ray, Optuna and MLflow: one smoke study (one Ray
instance, one classifier) whose sweeps each end FINISHED with the usual test matrix, plus a trained method
(ASCOOD) scored by a shaping method — the zoo's leaderboard in miniature."""
import csv

import pytest
from mlflow.tracking import MlflowClient

import methods
from tests.benchmark.test_study import _cli, _write

pytestmark = pytest.mark.integration

POST_HOC = [m["name"] for m in methods.catalog() if m["kind"] == "post-hoc"]
#: Slow on CPU and smoke-swept by their own tests already (tests/benchmark/test_study.py, tests/sweep/...).
ELSEWHERE = {"msp", "energy", "odin", "iodin", "mahalanobis", "kirby", "dmr", "knn", "vim", "csd"}
ZOO = [n for n in POST_HOC if n not in ELSEWHERE]


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    cwd = tmp_path_factory.mktemp("zoo")
    entries = "".join(f"  {name}: {{num_samples: 2}}\n" for name in ZOO)
    entries += "  ascood-ash: {method: ascood, fixed: {scorer: ash, ash_variant: p, percentile: 80.0}, baseline: ash}\n"
    study = _write(cwd, f"name: zoo\nbenchmarks: [digits]\nseeds: [0]\nsmoke_test: true\nentries:\n{entries}")
    return cwd, _cli(cwd, study, "--no-dashboard", "--no-figures", "--num-cpus", "2")


def test_the_zoo_smoke_study_exits_0(zoo):
    _, res = zoo
    assert res.returncode == 0, res.stderr[-3000:]


def test_every_sweep_of_the_zoo_finished(zoo):
    cwd, _ = zoo
    client = MlflowClient(f"sqlite:///{cwd / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("oodsweep").experiment_id], max_results=2000)
    parents = {r.data.tags["oodsweep.sweep"]: r.info.status for r in runs
               if r.data.tags.get("oodsweep.study") == "zoo" and "oodsweep.sweep" in r.data.tags}
    assert {name: parents.get(f"zoo-{name}-digits-s0") for name in [*ZOO, "ascood-ash"]} == \
        {name: "FINISHED" for name in [*ZOO, "ascood-ash"]}


def test_every_entry_of_the_zoo_has_a_test_matrix_row(zoo):
    cwd, _ = zoo
    with open(cwd / "ray_results" / "zoo" / "leaderboard.csv") as f:
        rows = {row["entry"]: row for row in csv.DictReader(f)}
    assert all(0.0 <= float(rows[name]["near_auroc_mean"]) <= 1.0 for name in [*ZOO, "ascood-ash"])
