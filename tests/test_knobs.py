"""Knob declarations: domains in words, value and range checks, the strict Params, Method.resolve."""
import math

import pytest

import methods
from orchestrator.knobs import Bool, Choice, Float, Int, KnobError, Params, UndeclaredKnob, check_searched, check_value


def test_domain_in_words():
    assert Float("t", 1.0, gt=0).domain() == "float > 0"
    assert Int("k", 5, ge=1, le=10).domain() == "int in [1, 10]"
    assert Float("p", 0.1, gt=0, le=1).domain() == "float in (0, 1]"
    assert Choice("c", "a", ("a", "b")).domain() == "one of ['a', 'b']"
    assert Float("u", None, ge=0, optional=True).domain() == "float >= 0 or null"


def test_int_knob_takes_an_integral_float():
    assert check_value(Int("k", 5, ge=1), 3.0) == 3


def test_int_knob_refuses_a_fraction():
    with pytest.raises(KnobError, match="'k' = 2.5 is not int >= 1"):
        check_value(Int("k", 5, ge=1), 2.5)


def test_float_knob_refuses_a_string():
    with pytest.raises(KnobError, match="'t' = 'hot' is not float > 0"):
        check_value(Float("t", 1.0, gt=0), "hot")


def test_float_knob_refuses_nan():
    with pytest.raises(KnobError):
        check_value(Float("t", 1.0), math.nan)


def test_bool_knob_refuses_an_int():
    with pytest.raises(KnobError):
        check_value(Bool("b", True), 1)


def test_open_bound_excludes_the_bound():
    with pytest.raises(KnobError):
        check_value(Float("t", 1.0, gt=0), 0.0)


def test_optional_knob_takes_none():
    assert check_value(Float("u", None, ge=0, optional=True), None) is None


def test_a_default_outside_its_domain_is_a_declaration_error():
    with pytest.raises(KnobError):
        Int("k", 0, ge=1)


def test_search_range_must_lie_inside_the_domain():
    with pytest.raises(KnobError, match="low = -1.0 is not float > 0"):
        check_searched(Float("t", 1.0, gt=0), "float", -1.0, 10.0)


def test_an_int_knob_is_searched_as_int():
    with pytest.raises(KnobError, match="search it with type: int"):
        check_searched(Int("k", 5, ge=1), "float", 1.0, 10.0)


def test_categorical_choices_are_checked_one_by_one():
    with pytest.raises(KnobError, match="choice = 'c'"):
        check_searched(Choice("m", "a", ("a", "b")), "categorical", choices=["a", "c"])


def test_params_refuse_an_undeclared_read():
    params = Params({"k": 1}, {"k": Int("k", 1)}, "method 'x'")
    with pytest.raises(UndeclaredKnob, match="method 'x' reads knob 'temperature', which it does not declare"):
        params["temperature"]


def test_params_refuse_an_undeclared_read_with_a_fallback():
    params = Params({"k": 1}, {"k": Int("k", 1)}, "method 'x'")
    with pytest.raises(UndeclaredKnob):
        params.get("temperature", 1.0)


def test_network_values_hold_only_network_knobs():
    declared = {"k": Int("k", 1), "lr": Float("lr", 0.1, network=True)}
    assert Params({"k": 3, "lr": 0.5}, declared, "m").network_values() == {"lr": 0.5}


def test_resolve_fills_every_declared_default():
    params = methods.get("energy").resolve({}, {"epochs": 3})
    assert (params["temperature"], params["epochs"], params["momentum"]) == (1.0, 3, 0.9)


def test_resolve_names_the_closest_knob():
    with pytest.raises(KnobError, match="unknown knob 'temprature' for method energy; did you mean 'temperature'"):
        methods.get("energy").resolve({"temprature": 2.0})


def test_delegated_scorer_knobs_are_declared_for_the_chosen_scorer():
    params = methods.get("ascood").resolve({"scorer": "energy", "temperature": 2.0})
    assert params["temperature"] == 2.0


def test_a_knob_of_another_scorer_is_unknown():
    with pytest.raises(KnobError, match="unknown knob 'temperature' for method ascood"):
        methods.get("ascood").resolve({"scorer": "msp", "temperature": 2.0})


def test_post_hoc_knobs_are_not_network_knobs():
    assert "temperature" not in methods.get("energy").network_knobs()


def test_recipe_knobs_are_network_knobs_of_every_method():
    assert {"epochs", "lr", "backbone"} <= methods.get("energy").network_knobs()
