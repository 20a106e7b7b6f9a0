"""A study runs its sweeps at once (orchestrator.benchmark.schedule, .drivers): the policy on hand-made sweeps and
clusters, and a real study through Ray, Optuna and MLflow stopped by Ctrl-C while two sweeps run, then continued —
every sweep KILLED, exit 130, the continue command printed, stderr quiet; running it again finishes each, and the
classifier that several sweeps read is trained once while the others say what they wait for."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest
from mlflow.tracking import MlflowClient

from orchestrator.benchmark import plan, schedule
from orchestrator.benchmark.schedule import CLAIM_SECONDS, IDLE_POLLS, Scheduler, Work
from tests.conftest import ROOT


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _work(name, width=1, needs=(), cost=0.0, needs_cost=0.0):
    return Work(name, {"CPU": 1.0, "GPU": 0.0}, width=width, needs=frozenset(needs), cost=cost,
                needs_cost={k: needs_cost for k in needs})


def _names(works):
    return [w.name for w in works]


def test_sweeps_start_beside_what_the_running_ones_may_claim():
    s = Scheduler([_work("a"), _work("b"), _work("c")], {"CPU": 2.0}, lambda key: False, clock=Clock())
    assert _names(s.admit({"CPU": 2.0})) == ["a", "b"]


def test_a_sweep_claiming_the_whole_cluster_leaves_no_room():
    s = Scheduler([_work("a", width=2), _work("b")], {"CPU": 2.0}, lambda key: False, clock=Clock())
    assert _names(s.admit({"CPU": 2.0})) == ["a"]


def test_resources_left_idle_take_another_sweep():
    clock = Clock()
    s = Scheduler([_work("a", width=2), _work("b")], {"CPU": 2.0}, lambda key: False, clock=clock)
    s.admit({"CPU": 2.0})
    clock.now = CLAIM_SECONDS + 1  # a's tail: one of its two CPUs idle
    started = [w for _ in range(IDLE_POLLS) for w in s.admit({"CPU": 1.0})]
    assert _names(started) == ["b"]


def test_what_a_sweep_just_started_may_claim_is_not_given_away():
    clock = Clock()
    s = Scheduler([_work("a", width=2), _work("b")], {"CPU": 2.0}, lambda key: False, clock=clock)
    s.admit({"CPU": 2.0})
    clock.now = 1.0  # a's driver has not claimed its CPUs yet: they look idle
    assert [_names(s.admit({"CPU": 2.0})) for _ in range(IDLE_POLLS)] == [[]] * IDLE_POLLS


def test_at_most_cap_sweeps_run():
    s = Scheduler([_work("a"), _work("b")], {"CPU": 2.0}, lambda key: False, cap=1, clock=Clock())
    assert _names(s.admit({"CPU": 2.0})) == ["a"]


def test_a_sweep_waits_for_the_network_another_sweep_is_training():
    s = Scheduler([_work("a", needs=["k"]), _work("b", needs=["k"])], {"CPU": 2.0}, lambda key: False,
                  clock=Clock())
    s.admit({"CPU": 2.0})
    assert [(w.name, key, who) for w, key, who in s.waiting()] == [("b", "k", "a")]


def test_the_waiting_sweep_starts_once_the_network_is_cached():
    cached = set()
    s = Scheduler([_work("a", needs=["k"]), _work("b", needs=["k"])], {"CPU": 2.0}, cached.__contains__,
                  clock=Clock())
    s.admit({"CPU": 2.0})
    cached.add("k")
    assert _names(s.admit({"CPU": 1.0})) == ["b"]


def test_a_sweep_that_ended_without_the_network_hands_its_training_to_a_waiting_one():
    s = Scheduler([_work("a", needs=["k"]), _work("b", needs=["k"])], {"CPU": 1.0}, lambda key: False,
                  clock=Clock())
    s.admit({"CPU": 1.0})
    s.finished("a")  # failed before the network was cached
    s.admit({"CPU": 1.0})
    assert s.producer == {"k": "b"}


def test_the_sweep_heading_the_longest_chain_of_work_starts_first():
    # p trains network k (5) that r (8) then reads: p heads a chain of 0.1 + 5 + 8, longer than t's 10
    works = [_work("t", cost=10.0), _work("p", needs=["k"], cost=0.1, needs_cost=5.0),
             _work("r", needs=["k"], cost=8.0, needs_cost=5.0)]
    s = Scheduler(works, {"CPU": 1.0}, lambda key: False, clock=Clock())
    assert _names(s.admit({"CPU": 1.0})) == ["p"]


class Handle:
    def __init__(self, log):
        self.log, self.signals, self.done = log, [], False

    def poll(self):
        return {"status": "KILLED"} if self.done else None

    def signal(self, signum):
        self.signals.append(signum)
        self.done = True


class Signals:
    received = None


def test_a_stop_signal_reaches_every_running_sweep_once_and_nothing_more_starts():
    signals, handles, ended = Signals(), {}, []

    def launch(work):
        handles[work.name] = Handle(work.name)
        if len(handles) == 2:
            signals.received = "SIGTERM"
        return handles[work.name]

    s = Scheduler([_work("a"), _work("b"), _work("c")], {"CPU": 2.0}, lambda key: False)
    schedule.run(s, launch, lambda: ({"CPU": 2.0}, {"CPU": 2.0}), lambda w, o: ended.append(w.name),
                 lambda line: None, signals, poll_seconds=0.01)
    assert ({n: h.signals for n, h in handles.items()}, sorted(ended)) == \
        ({"a": [signal.SIGTERM], "b": [signal.SIGTERM]}, ["a", "b"])


def test_the_dry_run_says_how_many_sweeps_run_at_once(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("OODSWEEP_CACHE", str(tmp_path / "cache"))
    (tmp_path / "s.yaml").write_text("\n".join(line for line in STUDY.splitlines() if "epochs" not in line))
    spec = plan.load(str(tmp_path / "s.yaml"))
    text = plan.describe(plan.expand(spec, {"storage_path": str(tmp_path / "r")}), spec.max_concurrent_sweeps)
    assert "Sweeps at once: at most 3" in text and "the classifier of digits, seed 0" in text


# ---------------------------------------------------------------- a real study, stopped and continued
# oe and ascood (long enough to be stopped) start at once (without the ID-accuracy constraint, whose reference
# classifier would only compete for the CPU); msp and energy read the same classifier: the first to start trains it,
# the other waits.
STUDY = """\
name: conc
benchmarks: [digits]
seeds: [0]
smoke_test: true
max_concurrent_sweeps: 3
max_id_acc_drop: none
entries:
  oe: {epochs: 6, max_concurrent: 1}
  ascood: {epochs: 6, max_concurrent: 1}
  msp: {}
  energy: {num_samples: 2, baseline: msp}
"""
LONG = ("[oe digits s0]", "[ascood digits s0]")


def _env(cwd):
    return {**os.environ, "PYTHONPATH": str(ROOT), "OODSWEEP_CACHE": str(cwd / "cache"),
            "RAY_USAGE_STATS_ENABLED": "0"}


def _statuses(cwd):
    client = MlflowClient(f"sqlite:///{cwd / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("oodsweep").experiment_id], max_results=1000)
    sweeps = {r.data.tags["oodsweep.sweep"]: r.info.status for r in runs
              if "oodsweep.sweep" in r.data.tags and "oodsweep.study" in r.data.tags}
    trials = sorted(r.info.status for r in runs if "oodsweep.trial_id" in r.data.tags)
    return sweeps, trials


@pytest.fixture(scope="module")
def stopped(tmp_path_factory):
    """The study, stopped by Ctrl-C (SIGINT) once the oe and ascood sweeps both run a trial."""
    cwd = tmp_path_factory.mktemp("conc")
    (cwd / "s.yaml").write_text(STUDY)
    proc = subprocess.Popen([sys.executable, "-m", "orchestrator", "benchmark", "s.yaml", "--no-dashboard",
                             "--no-figures", "--num-cpus", "2"], cwd=cwd, env=_env(cwd), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    lines, running, deadline = [], set(), time.time() + 240
    while time.time() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        if line.startswith(LONG) and line.rstrip().endswith("started"):
            running.add(line.split("] ")[0])
        if len(running) == 2:
            time.sleep(1.0)
            proc.send_signal(signal.SIGINT)
            break
    out, err = proc.communicate(timeout=240)
    return cwd, proc.returncode, "".join(lines) + out, err


@pytest.fixture(scope="module")
def continued(stopped):
    cwd, *_ = stopped
    res = subprocess.run([sys.executable, "-m", "orchestrator", "benchmark", "s.yaml", "--no-dashboard",
                          "--no-figures", "--num-cpus", "2"], cwd=cwd, env=_env(cwd), capture_output=True,
                         text=True, timeout=400)
    return cwd, res


@pytest.mark.integration
def test_ctrl_c_stops_the_study_with_exit_130(stopped):
    _, code, _, err = stopped
    assert code == 130, err[-3000:]


@pytest.mark.integration
def test_ctrl_c_marks_both_running_sweeps_killed(stopped):
    cwd, *_ = stopped  # the fixture waited for both to run a trial
    assert [_statuses(cwd)[0][f"conc-{m}-digits-s0"] for m in ("oe", "ascood")] == ["KILLED", "KILLED"]


@pytest.mark.integration
def test_ctrl_c_leaves_no_sweep_running(stopped):
    cwd, *_ = stopped  # msp and energy may have finished, or been stopped, or not started
    assert "RUNNING" not in _statuses(cwd)[0].values()


@pytest.mark.integration
def test_ctrl_c_leaves_no_trial_running(stopped):
    cwd, *_ = stopped
    assert "RUNNING" not in _statuses(cwd)[1]


@pytest.mark.integration
def test_ctrl_c_prints_the_command_that_continues_the_study(stopped):
    _, _, out, _ = stopped
    assert "run the same command to continue it:\n  python -m orchestrator benchmark s.yaml" in out


@pytest.mark.integration
def test_ctrl_c_keeps_stderr_quiet(stopped):
    _, _, _, err = stopped
    assert err.strip() == ""


@pytest.mark.integration
def test_the_progress_shows_every_running_sweep(stopped):
    _, _, out, _ = stopped
    assert set(LONG) <= {line.split("] ")[0] + "]" for line in out.splitlines()}


@pytest.mark.integration
def test_running_the_study_again_finishes_every_sweep(continued):
    cwd, res = continued
    assert res.returncode == 0, res.stderr[-3000:]
    assert set(_statuses(cwd)[0].values()) == {"FINISHED"} and len(_statuses(cwd)[0]) == 4


@pytest.mark.integration
def test_a_classifier_read_by_two_sweeps_is_trained_once(continued):
    cwd, _ = continued  # msp's and energy's (1 epoch)
    specs = [json.loads(line)["spec"] for line in (cwd / "cache" / "trained.log").read_text().splitlines()]
    assert [s["epochs"] for s in specs if s["trainer"] == "cross_entropy"].count(1) == 1


@pytest.mark.integration
def test_a_sweep_waiting_for_a_network_says_for_which_and_who_trains_it(stopped, continued):
    out = stopped[2] + continued[1].stdout  # msp or energy waits for the other, in one run or the other
    assert "waiting for the classifier of digits, seed 0 (network " in out, out[-3000:]
