"""A study one of whose sweeps spooled tracking records (a store was away, docs/store_outages.md) ends with exit 3
and one line naming the sync command, after writing its leaderboard: the sweep-level outage itself is exercised
end to end in tests/tracking/test_outage.py; here the study's running of sweeps is replaced by its outcome."""
import pytest
from mlflow.tracking import MlflowClient

from orchestrator.benchmark import run as study

STUDY = """\
name: spooly
benchmarks: [digits]
seeds: [0]
smoke_test: true
entries:
  msp: {}
"""


@pytest.fixture
def ended(tmp_path, monkeypatch, capsys):
    (tmp_path / "study.yaml").write_text(STUDY)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(study, "_run_sweeps", lambda *a, **k: ["spooly-msp-digits-s0"])
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    code = study.run("study.yaml", {"tracking_uri": uri, "storage_path": str(tmp_path / "results"),
                                    "cache_dir": str(tmp_path / "cache"), "dashboard": False})
    return code, capsys.readouterr(), uri


def test_a_study_whose_sweep_spooled_exits_3(ended):
    assert ended[0] == 3


def test_its_last_line_names_the_sync_command_and_the_sweep(ended):
    last = ended[1].err.strip().splitlines()[-2]
    assert "python -m orchestrator sync SWEEP" in last and "spooly-msp-digits-s0" in last


def test_it_still_writes_its_leaderboard(ended, tmp_path):
    assert (tmp_path / "results" / "spooly" / "leaderboard.md").is_file()


def test_its_study_run_is_finished(ended):
    client = MlflowClient(ended[2])
    (parent,) = client.search_runs([client.get_experiment_by_name("oodsweep").experiment_id])
    assert parent.info.status == "FINISHED"


@pytest.fixture
def store_gone(tmp_path, monkeypatch, capsys):
    """The study's MLflow store (SQLite) turns unreadable while its sweeps run (as a database host that went away);
    writes are retried for 1 s."""
    from orchestrator.tracking import writer

    (tmp_path / "study.yaml").write_text(STUDY)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(writer, "RETRY_SECONDS", 1.0)
    db = tmp_path / "mlflow.db"

    def sweeps_then_the_store_goes(*args, **kwargs):
        db.write_bytes(b"this is no SQLite database any more" * 100)
        return []

    monkeypatch.setattr(study, "_run_sweeps", sweeps_then_the_store_goes)
    code = study.run("study.yaml", {"tracking_uri": f"sqlite:///{db}", "storage_path": str(tmp_path / "results"),
                                    "cache_dir": str(tmp_path / "cache"), "dashboard": False})
    return code, capsys.readouterr(), tmp_path


def test_a_study_whose_store_is_gone_at_its_end_exits_3(store_gone):
    assert store_gone[0] == 3, store_gone[1].err[-2000:]


def test_it_says_the_leaderboard_cannot_be_read_and_what_to_run(store_gone):
    assert "so the leaderboard cannot be read from it: run the same command again" in store_gone[1].err


def test_its_own_records_go_to_the_studys_spool(store_gone):
    assert (store_gone[2] / "results" / "spooly" / "tracking_spool" / "records.jsonl").is_file()


def test_it_names_the_sync_command_of_that_spool(store_gone):
    assert f"python -m orchestrator sync {store_gone[2] / 'results' / 'spooly'}" in store_gone[1].err
