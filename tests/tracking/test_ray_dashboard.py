"""The Ray dashboard during a study, for real (Ray, Optuna and MLflow in a subprocess; token authentication off, as
tests may): each sweep is a Ray job whose metadata holds its name, method, MLflow run id and UI link; its trial actors
carry the method in their class name and the trial in their repr, and so do their tasks (read through Ray's state
API); headless Chromium shows the jobs and actors pages with those names. The study is then stopped by SIGTERM:
exit 143, both sweeps KILLED.

The browser tests need Chromium (Debian: `apt-get install -y chromium`) and are skipped without it.
`OODSWEEP_UPDATE_SCREENSHOT=1` also writes docs/img/ray_dashboard.png (the jobs page above the actors page).
"""
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import pytest
from mlflow.tracking import MlflowClient

from tests.conftest import ROOT

pytestmark = pytest.mark.integration

CHROMIUM = next((p for p in (os.environ.get("CHROMIUM"), *map(shutil.which, ("chromium", "chromium-browser",
                                                                              "google-chrome", "google-chrome-stable")))
                 if p), None)
needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="headless Chromium not installed (apt-get install -y "
                                                             "chromium, or set CHROMIUM=/path/to/chrome)")

# Two sweeps long enough to be looked at (150 epochs: stopped long before their end), each running its 2 trials at
# once (an actor per trial, named by it), on 4 logical CPUs; no ID-accuracy constraint (its reference classifier
# would only compete for the CPU).
STUDY = """\
name: dash
benchmarks: [digits]
seeds: [0]
smoke_test: true
max_id_acc_drop: none
entries:
  oe: {epochs: 150}
  ascood: {epochs: 150}
"""
LONG = ("[oe digits s0]", "[ascood digits s0]")

#: Run in a fresh interpreter: Ray reads its settings (authentication among them) when it is imported.
STATE = """
import json, sys
from ray.util.state import list_actors, list_jobs, list_tasks
url = sys.argv[1]
print(json.dumps({"jobs": [j.metadata or {} for j in list_jobs(address=url, detail=True)],
                  "actors": [(a.class_name, a.repr_name) for a in list_actors(address=url, detail=True)],
                  "tasks": [t.name for t in list_tasks(address=url, detail=True, limit=1000)]}))
"""


def _chromium(tmp, url, *mode):
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--hide-scrollbars",
           f"--user-data-dir={tmp / 'chromium-profile'}", "--virtual-time-budget=15000", "--window-size=1400,900",
           *mode, url]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=tmp).stdout


def _pages(tmp, base, shots: tuple[str, ...]):
    """{page: (its rendered DOM, its screenshot or None)} of the jobs and actors pages (screenshots of ``shots``)."""
    out = {}
    for page in ("jobs", "actors"):
        shot = tmp / f"ray_{page}.png" if page in shots else None
        dom = _chromium(tmp, f"{base}/#/{page}", "--dump-dom")
        if shot is not None:
            _chromium(tmp, f"{base}/#/{page}", f"--screenshot={shot}")
        out[page] = (dom, shot)
    return out


@pytest.fixture(scope="module")
def watched(tmp_path_factory):
    """The study while both sweeps run a trial: (folder, Ray's state, the pages); then stopped by SIGTERM: + (exit
    code, stdout, stderr)."""
    cwd = tmp_path_factory.mktemp("dash")
    (cwd / "s.yaml").write_text(STUDY)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OODSWEEP_CACHE": str(cwd / "cache"),
           "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled"}
    proc = subprocess.Popen([sys.executable, "-m", "orchestrator", "benchmark", "s.yaml", "--no-figures",
                             "--num-cpus", "4"], cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    lines, running, url, deadline = [], set(), None, time.time() + 240
    pages, update = {}, False
    try:
        while time.time() < deadline and len(running) < 2:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            found = re.match(r"Ray dashboard: (http://\S+)", line)
            url = found.group(1) if found else url
            if line.startswith(LONG) and line.rstrip().endswith("started"):
                running.add(line.split("] ")[0])
        assert url is not None and len(running) == 2, "".join(lines)[-3000:]
        time.sleep(2.0)  # the dashboard's task events arrive about a second late
        state = json.loads(subprocess.run([sys.executable, "-c", STATE, url], env=env, capture_output=True,
                                          text=True, timeout=120, check=True).stdout)
        update = os.environ.get("OODSWEEP_UPDATE_SCREENSHOT") == "1"
        pages = _pages(cwd, url, ("jobs", "actors") if update else ("jobs",)) if CHROMIUM else {}
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=240)
    if pages and update:
        _stack([pages["jobs"][1], pages["actors"][1]], ROOT / "docs" / "img" / "ray_dashboard.png")
    return cwd, state, pages, proc.returncode, "".join(lines) + out, err


def _stack(shots, target, heights=(720, 900)):
    """The screenshots one above the other (each cut to the height that holds its table)."""
    from PIL import Image

    images = [Image.open(s).crop((0, 0, Image.open(s).width, h)) for s, h in zip(shots, heights, strict=True)]
    canvas = Image.new("RGB", (max(i.width for i in images), sum(i.height for i in images)), "white")
    top = 0
    for image in images:
        canvas.paste(image, (0, top))
        top += image.height
    target.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(target)


def _job(state, sweep):
    return next(j for j in state["jobs"] if j.get("oodsweep.sweep") == sweep)


def _parent_run(cwd, sweep):
    client = MlflowClient(f"sqlite:///{cwd / 'mlflow.db'}")
    exp = client.get_experiment_by_name("oodsweep").experiment_id
    return client.search_runs([exp], f"tags.`oodsweep.sweep` = '{sweep}'")[0]


def test_each_sweep_is_a_job_named_after_it(watched):
    _, state, *_ = watched
    names = {j.get("job_name") for j in state["jobs"]}
    assert {"dash-oe-digits-s0 (oe)", "dash-ascood-digits-s0 (ascood)", "study dash"} <= names


def test_a_sweeps_job_names_its_method(watched):
    _, state, *_ = watched
    assert _job(state, "dash-oe-digits-s0")["oodsweep.method"] == "oe"


def test_a_sweeps_job_holds_its_mlflow_run_id(watched):
    cwd, state, *_ = watched
    assert _job(state, "dash-oe-digits-s0")["mlflow.run_id"] == _parent_run(cwd, "dash-oe-digits-s0").info.run_id


def test_a_sweeps_job_links_its_run_in_the_mlflow_ui(watched):
    cwd, state, *_ = watched
    run = _parent_run(cwd, "dash-oe-digits-s0").info
    link = f"http://127.0.0.1:5000/#/experiments/{run.experiment_id}/runs/{run.run_id}"
    assert _job(state, "dash-oe-digits-s0")["mlflow.ui"] == link


def test_trial_actors_are_named_after_their_method(watched):
    _, state, *_ = watched
    assert {"OeTrial", "AscoodTrial"} <= {cls for cls, _ in state["actors"]}


def test_a_trial_actor_names_its_trial_and_sweep(watched):
    _, state, *_ = watched
    assert any(re.fullmatch(r"oe trial [0-9a-f]{8} · dash-oe-digits-s0", name or "") for _, name in state["actors"])


def test_a_trials_tasks_name_its_method_and_trial(watched):
    _, state, *_ = watched
    assert any(re.fullmatch(r"ascood trial [0-9a-f]{8} · dash-ascood-digits-s0\.train", name or "")
               for name in state["tasks"])


@needs_chromium
def test_the_jobs_page_shows_each_sweep(watched):
    _, _, pages, *_ = watched
    assert "dash-oe-digits-s0 (oe)" in pages["jobs"][0] and "dash-ascood-digits-s0 (ascood)" in pages["jobs"][0]


@needs_chromium
def test_the_actors_page_shows_methods_and_trials(watched):
    _, _, pages, *_ = watched
    assert "AscoodTrial" in pages["actors"][0] and "ascood trial " in pages["actors"][0]


@needs_chromium
def test_the_screenshot_is_a_rendered_page(watched):
    _, _, pages, *_ = watched
    data = pages["jobs"][1].read_bytes()
    assert data.startswith(b"\x89PNG") and len(data) > 20_000


def test_sigterm_stops_the_study_with_exit_143(watched):
    *_, code, _, err = watched
    assert code == 143, err[-3000:]


def test_sigterm_marks_both_sweeps_killed(watched):
    cwd, *_ = watched
    assert [_parent_run(cwd, f"dash-{m}-digits-s0").info.status for m in ("oe", "ascood")] == ["KILLED", "KILLED"]


def test_sigterm_keeps_stderr_quiet(watched):
    *_, err = watched
    assert err.strip() == ""
