"""A store that goes away in the middle of a sweep: nothing is lost, and the sweep says so (docs/store_outages.md).

A real ``mlflow server`` on 127.0.0.1 is killed (by the PID of the process group this test started) once the
sweep's first trial is in its store; the sweep goes on, spools what the server did not take, and ends with exit
code 3 and one line. ``sync`` into the restarted server (same backend store) then leaves exactly one run per trial,
with the metrics of the same sweep run against a server that stayed up; a second ``sync`` writes nothing; the spool
also replays into another store. The Optuna storage going away: its SQLite folder is moved away (as an NFS mount
that drops) while trials are told to it.
"""
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import optuna
import pytest
from mlflow.tracking import MlflowClient

from tests.conftest import ROOT

pytestmark = pytest.mark.integration
TRIALS = 4
#: The sweep: post-hoc (energy) on the smoke-test digits, one Tune trial at a time (so the kill lands between
#: trials), a short retry time so that the outage is over quickly.
SWEEP = ["sweep", "energy", "--smoke-test", "--batch-size", "0", "--num-samples", str(TRIALS), "--max-concurrent",
         "1", "--no-dashboard", "--num-cpus", "2", "--no-figures", "--store-retry-seconds", "2"]
COMPARED = ("val/auroc", "near/auroc", "far/auroc", "near/fpr95", "id/acc")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(work):
    return {**os.environ, "PYTHONPATH": str(ROOT), "OODSWEEP_CACHE": str(work / "cache"), "HOME": str(work),
            "RAY_USAGE_STATS_ENABLED": "0", "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}


class Server:
    """``mlflow server`` on 127.0.0.1:port over a SQLite backend store, in a process group of its own."""

    def __init__(self, work, port):
        self.work, self.port, self.proc = work, port, None
        self.uri = f"http://127.0.0.1:{port}"

    def start(self):
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{self.work / 'backend.db'}",
             "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1"],
            cwd=self.work, env=_env(self.work), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True)
        deadline = time.time() + 120
        while time.time() < deadline and self.proc.poll() is None:
            try:
                urllib.request.urlopen(f"{self.uri}/health", timeout=1).read()
                return self
            except OSError:
                time.sleep(0.3)
        raise RuntimeError(f"mlflow server did not start (exit {self.proc.poll()})")

    def kill(self):
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)  # the server and its uvicorn worker
            self.proc.wait()


def _sync(work):
    """``python -m orchestrator sync outage`` (in this process: it has imported MLflow already): (exit code,
    stdout, stderr)."""
    import contextlib
    import io

    from orchestrator.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(["sync", "outage", "--storage-path", str(work / "ray_results")])
    return code, out.getvalue(), err.getvalue()


def _children(uri, experiment="oodsweep"):
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    return client, [r for r in runs if "oodsweep.trial_id" in r.data.tags]


def _first_trial_stored(work) -> bool:
    """Whether the server's backend store holds a finished trial run (read with sqlite3: milliseconds, so that the
    kill lands while the sweep's later trials and its summary are still to be written)."""
    import sqlite3

    try:
        with sqlite3.connect(f"file:{work / 'backend.db'}?mode=ro", uri=True, timeout=1) as db:
            return db.execute("SELECT count(*) FROM runs JOIN tags ON runs.run_uuid = tags.run_uuid WHERE "
                              "tags.key = 'oodsweep.trial_id' AND runs.status = 'FINISHED'").fetchone()[0] > 0
    except sqlite3.Error:
        return False


@pytest.fixture(scope="module")
def outage(tmp_path_factory):
    """The sweep whose server is killed after its first trial, the two syncs, and the same sweep against the
    restarted server (which stays up): their outputs and the server."""
    work = tmp_path_factory.mktemp("outage")
    server = Server(work, _free_port()).start()
    out = {"work": work, "server": server}
    try:
        proc = subprocess.Popen([sys.executable, "-m", "orchestrator", *SWEEP, "--name", "outage", "--tracking-uri",
                                 server.uri], cwd=work, env=_env(work), stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        lines = []
        for line in proc.stdout:
            lines.append(line)
            if f"1/{TRIALS} done" in line and server.proc.poll() is None:
                deadline = time.time() + 30
                while not _first_trial_stored(work) and time.time() < deadline:
                    time.sleep(0.01)
                server.kill()
        out["stdout"], out["stderr"], out["code"] = "".join(lines), proc.stderr.read(), proc.wait(timeout=300)
        out["killed"] = server.proc.poll() is not None
        server.start()  # the same backend store, the same port
        # The same sweep against this server, which stays up (its own experiment), while the spool is synced.
        reference = subprocess.Popen([sys.executable, "-m", "orchestrator", *SWEEP, "--name", "reference",
                                      "--experiment", "reference", "--tracking-uri", server.uri], cwd=work,
                                     env=_env(work), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        out["sync"] = _sync(work)
        out["after_sync"] = _snapshot(server.uri)
        out["sync_again"] = _sync(work)
        out["after_again"] = _snapshot(server.uri)
        # ... and into another store (moving a sweep to the team's server), twice
        from orchestrator.tracking.sync import replay

        spool = work / "ray_results" / "outage" / "tracking_spool"
        out["team"] = f"sqlite:///{work / 'team.db'}"
        out["moved"] = [replay(spool, tracking_uri=out["team"]) for _ in range(2)]
        stdout, stderr = reference.communicate(timeout=300)
        out["reference"] = (reference.returncode, stderr, stdout)
        yield out
    finally:
        server.kill()


def _snapshot(uri):
    """Every run of the sweep's experiment: (name, status, params, tags, metrics, values of its val/auroc)."""
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("oodsweep")
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    return sorted((r.info.run_name, r.info.status, tuple(sorted(r.data.params.items())),
                   tuple(sorted(r.data.tags.items())), tuple(sorted(r.data.metrics.items())),
                   len(client.get_metric_history(r.info.run_id, "val/auroc"))) for r in runs)


def test_the_server_was_killed_while_the_sweep_ran(outage):
    assert outage["killed"] and f"{TRIALS}/{TRIALS} done" in outage["stdout"], outage["stdout"][-2000:]


def test_the_sweep_ends_with_exit_code_3(outage):
    assert outage["code"] == 3, outage["stdout"][-2000:] + outage["stderr"][-2000:]


def test_the_sweep_ends_with_one_line_naming_the_spool_and_the_sync_command(outage):
    lines = outage["stderr"].strip().splitlines()
    assert len(lines) == 1, outage["stderr"]
    spool = outage["work"] / "ray_results" / "outage" / "tracking_spool"
    assert str(spool) in lines[0] and "python -m orchestrator sync outage" in lines[0], lines[0]


def test_the_spool_holds_the_records_as_json_lines(outage):
    import json

    records = (outage["work"] / "ray_results" / "outage" / "tracking_spool" / "records.jsonl").read_text()
    ops = {json.loads(line)["op"] for line in records.splitlines()}
    assert {"create_run", "log_batch", "artifact", "terminate"} <= ops


def test_the_progress_lines_say_what_the_sweep_waits_for(outage):
    assert f"waiting for MLflow at {outage['server'].uri}" in outage["stdout"], outage["stdout"][-2000:]


def test_mlflow_prints_no_view_run_lines(outage):
    assert "View run" not in outage["stdout"] + outage["stderr"] + outage["reference"][1] + outage["reference"][2]


def test_the_view_run_links_go_to_the_log_file(outage):  # the sweep whose server stayed up ended every run there
    assert "View run trial-" in (outage["work"] / "ray_results" / "reference" / "oodsweep.log").read_text()


def test_sync_succeeds(outage):
    assert outage["sync"][0] == 0, outage["sync"]


def test_after_sync_there_is_exactly_one_finished_run_per_trial(outage):
    _, children = _children(outage["server"].uri)
    ids = [r.data.tags["oodsweep.trial_id"] for r in children]
    assert len(ids) == TRIALS and len(set(ids)) == TRIALS and {r.info.status for r in children} == {"FINISHED"}


def test_after_sync_the_sweep_run_is_finished(outage):
    client = MlflowClient(outage["server"].uri)
    parents = client.search_runs([client.get_experiment_by_name("oodsweep").experiment_id],
                                 filter_string="tags.`oodsweep.sweep` = 'outage'")
    assert [p.info.status for p in parents] == ["FINISHED"]


def test_after_sync_every_run_has_the_metrics_of_a_sweep_whose_server_stayed_up(outage):
    assert outage["reference"][0] == 0, outage["reference"][1][-2000:]
    _, synced = _children(outage["server"].uri)
    _, reference = _children(outage["server"].uri, "reference")

    def by_config(runs):
        return {r.data.params["temperature"]: {k: r.data.metrics[k] for k in COMPARED} for r in runs}

    assert by_config(synced) == by_config(reference)


def test_after_sync_every_run_has_its_matrix_artifacts(outage):
    client, children = _children(outage["server"].uri)
    assert all({"ood_matrix.csv", "ood_matrix.json"} <= {a.path for a in client.list_artifacts(r.info.run_id)}
               for r in children)


def test_a_second_sync_writes_nothing(outage):
    assert (outage["sync_again"][1].split(": ", 1)[1].startswith("0 of "),
            outage["after_again"] == outage["after_sync"]) == (True, True), outage["sync_again"]


def test_a_spool_replays_into_another_store_under_the_sweeps_run(outage):
    client = MlflowClient(outage["team"])
    runs = client.search_runs([client.get_experiment_by_name("oodsweep").experiment_id])
    parent = next(r for r in runs if r.data.tags.get("oodsweep.sweep") == "outage")
    assert (parent.info.status, {r.data.tags.get("mlflow.parentRunId") for r in runs if r is not parent}) == (
        "FINISHED", {parent.info.run_id})


def test_a_second_replay_into_another_store_writes_nothing(outage):
    assert outage["moved"][1].written == 0


def test_the_stored_optuna_study_has_every_trial(outage):
    study = optuna.load_study(study_name="outage",
                              storage=f"sqlite:///{outage['work'] / 'ray_results' / 'optuna.db'}")
    assert len(study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))) == TRIALS


# ------------------------------------------------------------------------------------- the Optuna storage
def _trial(i: int):
    return optuna.trial.create_trial(params={"x": i / 10}, distributions={"x": optuna.distributions.FloatDistribution(
        0, 1)}, values=[float(i)], user_attrs={"trial_id": f"{i:05d}"})


@pytest.fixture(scope="module")
def optuna_outage(tmp_path_factory):
    """Three trials told to a stored study (SQLite) whose folder is moved away after the first, then back, then
    two replays of the spool."""
    from orchestrator.tracking.spool import Spool
    from orchestrator.tracking.stores import StoredStudy
    from orchestrator.tracking.sync import replay
    from orchestrator.tracking.writer import WriteQueue

    work = tmp_path_factory.mktemp("optuna_outage")
    (work / "db").mkdir()
    url = f"sqlite:///{work / 'db' / 'optuna.db'}"
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(storage=optuna.storages.RDBStorage(url), study_name="s", directions=["maximize"])
    writes = WriteQueue(retry_seconds=0.5)
    stored = StoredStudy(study, url, writes, Spool(work / "spool"))
    writes.submit(lambda: stored.add_trial(_trial(0)))
    os.rename(work / "db", work / "db-away")  # the storage goes away
    for i in (1, 2):
        writes.submit(lambda i=i: stored.add_trial(_trial(i)))
    writes.close()
    os.rename(work / "db-away", work / "db")  # ... and comes back
    first, second = replay(work / "spool"), replay(work / "spool")
    return {"url": url, "writes": writes, "spool": stored.spool, "first": first, "second": second}


def test_trials_told_while_the_optuna_storage_is_away_are_spooled(optuna_outage):
    assert optuna_outage["spool"].count == 2 and optuna_outage["writes"].away_labels == [
        f"the Optuna storage {optuna_outage['url']}"]


def test_sync_completes_the_stored_study(optuna_outage):
    study = optuna.load_study(study_name="s", storage=optuna_outage["url"])
    assert sorted((t.user_attrs["trial_id"], t.value) for t in study.trials) == [
        ("00000", 0.0), ("00001", 1.0), ("00002", 2.0)]


def test_a_second_optuna_sync_adds_nothing(optuna_outage):
    assert (optuna_outage["first"].trials_added, optuna_outage["second"].trials_added) == (2, 0)


