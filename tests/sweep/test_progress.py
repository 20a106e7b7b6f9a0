"""The progress lines: counts from Tune's trial list (right after a resume), a heartbeat while trials run."""
from types import SimpleNamespace

from orchestrator.sweep.tune_progress import ProgressPrinter


def _trial(tid, status, **last):
    return SimpleNamespace(trial_id=tid, status=status, last_result=last, local_path="/x")


def test_counts_include_trials_a_resumed_sweep_finished_before(capsys):
    printer = ProgressPrinter("val/auroc", "max", total=4)
    done = _trial("a", "TERMINATED", final=True, **{"val/auroc": 0.9})
    new = _trial("b", "RUNNING")
    printer.on_trial_start(0, [done, new], new)
    assert "1/4 done, 1 running, 0 failed | best val/auroc = 0.9000 (a)" in capsys.readouterr().out


def test_a_completing_trial_counts_as_done_before_tune_updates_it(capsys):
    printer = ProgressPrinter("val/auroc", "max", total=2)
    trial = _trial("a", "RUNNING", final=True, **{"val/auroc": 0.5})
    printer.on_trial_complete(0, [trial], trial)
    assert "1/2 done, 0 running" in capsys.readouterr().out


def test_heartbeat_names_the_epoch_of_running_trials(capsys):
    printer = ProgressPrinter("val/auroc", "max", total=1, heartbeat_seconds=0.0)
    printer.on_step(0, [_trial("a", "RUNNING", epoch=3, epochs=10)])
    assert "running: a epoch 3/10" in capsys.readouterr().out


def test_no_heartbeat_before_its_time(capsys):
    printer = ProgressPrinter("val/auroc", "max", total=1, heartbeat_seconds=3600.0)
    printer.on_step(0, [_trial("a", "RUNNING")])
    assert capsys.readouterr().out == ""
