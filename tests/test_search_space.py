"""Search-space YAML parsing: every shipped file is valid; malformed ones fail with the offending entry."""
import optuna
import pytest
import yaml

import methods
from orchestrator import search_space
from orchestrator.search_space import SearchSpaceError, parse


def test_every_method_has_a_valid_search_space_and_vice_versa():
    assert set(search_space.available()) == set(methods.available())
    for name in search_space.available():
        space = search_space.load(name)
        assert space.mode in ("max", "min") and space.metric.startswith("val/")


def test_define_by_run_suggests_every_knob_within_bounds_and_returns_fixed():
    space = parse({"space": {"a": {"type": "float", "low": 0.1, "high": 10, "log": True},
                             "b": {"type": "int", "low": 1, "high": 5},
                             "c": {"type": "categorical", "choices": ["x", "y"]},
                             "d": {"type": "float", "low": 0, "high": 1, "step": 0.25}},
                   "fixed": {"epochs": 3}}, "m")
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(20):
        trial = study.ask()
        assert space.define_by_run()(trial) == {"epochs": 3}
        p = trial.params
        assert 0.1 <= p["a"] <= 10 and 1 <= p["b"] <= 5 and p["c"] in ("x", "y") and p["d"] in (0, 0.25, 0.5, 0.75, 1)
        study.tell(trial, 0.0)


@pytest.mark.parametrize("data, message", [
    ([1, 2], "mapping"),
    ({"mode": "up"}, "mode must be max or min"),
    ({"space": {"a": {"type": "float", "low": 1}}}, "space.a.high must be a number"),
    ({"space": {"a": {"type": "float", "low": 2, "high": 1}}}, "low (2) is above high (1)"),
    ({"space": {"a": {"type": "float", "low": 0, "high": 1, "log": True}}}, "log scale needs low > 0"),
    ({"space": {"a": {"type": "gauss"}}}, "type must be float, int or categorical"),
    ({"space": {"a": {"type": "categorical", "choices": []}}}, "choices must be a non-empty list"),
    ({"space": {"a": {"type": "int", "low": 1, "high": 2, "bogus": 1}}}, "unknown keys ['bogus']"),
    ({"space": {"a": {"type": "int", "low": 1, "high": 2}}, "fixed": {"a": 1}}, "both searched"),
    ({"budget": {"num_samples": 0}}, "budget.num_samples must be a positive integer"),
    ({"spaces": {}}, "unknown top-level keys ['spaces']"),
])
def test_malformed_spaces_name_the_problem(data, message):
    with pytest.raises(SearchSpaceError) as err:
        parse(data, "m", "bad.yaml")
    assert message in str(err.value) and str(err.value).startswith("bad.yaml: ")


def test_invalid_yaml_and_missing_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("space: {a: [unclosed\n")
    with pytest.raises(SearchSpaceError, match="not valid YAML"):
        search_space.load("m", bad)
    with pytest.raises(SearchSpaceError, match="no search-space file"):
        search_space.load("m", tmp_path / "missing.yaml")
    good = tmp_path / "good.yaml"
    good.write_text(yaml.safe_dump({"space": {"k": {"type": "int", "low": 1, "high": 9, "log": True}}}))
    assert search_space.load("m", good).knobs[0].log


def test_a_method_without_knobs_runs_one_trial_and_says_so(workdir):
    from orchestrator.sweep.prepare import SweepOptions, prepare

    prep = prepare(SweepOptions(method="msp", smoke_test=True, num_samples=8))
    assert prep.num_samples == 1
    assert "msp searches no knob: running 1 trial" in prep.notes[0]


def test_flip_augmentation_is_refused_where_flips_change_labels(workdir, tmp_path):
    from orchestrator.errors import UsageError
    from orchestrator.sweep.prepare import SweepOptions, prepare

    (tmp_path / "flip.yaml").write_text("space: {}\nfixed: {augment: flip}\n")
    with pytest.raises(UsageError, match="horizontal flips change digits's labels"):
        prepare(SweepOptions(method="energy", smoke_test=True, search_space=str(tmp_path / "flip.yaml")))
