"""Every numeric flag of every command is range-checked: one line on stderr, exit code 2, nothing written. The
flags are listed from the parser itself, so that a new numeric flag without a range fails here."""
import math

import pytest

from orchestrator.cli import NUMERIC_FLAGS, build_parser, main, numeric_actions


def _flags() -> list[tuple[str, str]]:
    """(command, flag) of every numeric flag of the parser."""
    return [(command, max(a.option_strings, key=len)) for command, actions in numeric_actions(build_parser()).items()
            for a in actions]


def _positionals(command: str) -> list[str]:
    """A placeholder for each positional argument of ``command`` (the range check comes before they are read)."""
    sub = next(a for a in build_parser()._actions if isinstance(a.choices, dict)).choices[command]
    return ["x" for a in sub._actions if not a.option_strings]


def _out_of_range(flag: str, kind) -> list[str]:
    low, high = NUMERIC_FLAGS[flag]
    bad = [low - 1 if kind is int else low - 0.5]
    if high is not None:
        bad.append(high + 1)
    if kind is float:
        bad += [math.nan, math.inf]
    return [str(int(v)) if kind is int else str(v) for v in bad]


def test_every_numeric_flag_has_a_range():
    missing = sorted({flag for _, flag in _flags()} - set(NUMERIC_FLAGS))
    assert missing == [], f"add these flags to NUMERIC_FLAGS in orchestrator/cli.py: {missing}"


def test_every_range_belongs_to_a_flag():
    assert sorted(set(NUMERIC_FLAGS) - {flag for _, flag in _flags()}) == []


def test_the_seed_count_must_not_be_negative(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["sweep", "energy", "--seeds", "-2"]) == 2
    assert capsys.readouterr().err == "error: --seeds must be 0 or more, got -2\n"


CASES = [(command, flag, value) for command, flag in _flags() if flag in NUMERIC_FLAGS  # (else the test above fails)
         for value in _out_of_range(flag, next(a.type for a in numeric_actions(build_parser())[command]
                                               if flag in a.option_strings))]


@pytest.mark.parametrize("command, flag, value", CASES)
def test_an_out_of_range_value_fails_cleanly(tmp_path, monkeypatch, capsys, command, flag, value):
    monkeypatch.chdir(tmp_path)
    code = main([command, *_positionals(command), flag, value])
    err = capsys.readouterr().err.splitlines()
    assert (code, len(err), err[0].startswith(f"error: {flag} must be ")) == (2, 1, True), err
    assert list(tmp_path.iterdir()) == []  # nothing written
