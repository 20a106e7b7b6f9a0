"""The MLflow UI, for real: a real tiny sweep (energy --smoke-test) plus its figures, `mlflow ui` on a free local port,
headless Chromium on the run pages, and MLflow's REST API.

Needs Chromium (Debian: `apt-get install -y chromium`; chromium-driver is not needed by this test); skips otherwise.
`OODSWEEP_UPDATE_SCREENSHOT=1` also writes the screenshot to docs/img/mlflow_ui.png (the README's picture).
"""
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import pytest
from mlflow.tracking import MlflowClient

from tests.conftest import ROOT

pytestmark = pytest.mark.integration

CHROMIUM = next((p for p in (os.environ.get("CHROMIUM"), *map(shutil.which, ("chromium", "chromium-browser",
                                                                              "google-chrome", "google-chrome-stable")))
                 if p), None)
if CHROMIUM is None:
    pytest.skip("headless Chromium not installed (apt-get install -y chromium, or set CHROMIUM=/path/to/chrome)",
                allow_module_level=True)


@pytest.fixture(scope="module", autouse=True)
def _cwd(mlflow_cwd):
    yield


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    """A real energy smoke sweep with per-trial heatmaps and the sweep's figures."""
    import ray

    from orchestrator.metrics import OODMatrix
    from orchestrator.sweep.prepare import SweepOptions, prepare
    from orchestrator.sweep.runner import run as run_sweep
    from orchestrator.tracking import figures

    tmp = tmp_path_factory.mktemp("ui")
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    try:
        prep = prepare(SweepOptions(method="energy", name="ui-smoke", smoke_test=True, dashboard=False,
                                                tracking_uri=uri, storage_path=str(tmp / "ray"),
                                                cache_dir=str(tmp / "cache"), quiet=True, num_cpus=2))
        result = run_sweep(prep)
    finally:
        ray.shutdown()
    assert result.best_matrix is not None
    client = MlflowClient(uri)
    children = client.search_runs([client.get_run(result.parent_run_id).info.experiment_id],
                                  f"tags.mlflow.parentRunId = '{result.parent_run_id}'")
    for child in children:  # the tracking callback logs these once it is wired; log them here if it is not yet
        if "ood_matrix_heatmap.png" not in {a.path for a in client.list_artifacts(child.info.run_id)}:
            path = client.download_artifacts(child.info.run_id, "ood_matrix.json", str(tmp))
            figures.log_trial_figures(client, child.info.run_id, OODMatrix.from_json(json.load(open(path))))
    return uri, result, children, tmp


@pytest.fixture(scope="module")
def ui(swept):
    uri, _, _, tmp = swept
    port = _free_port()
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}  # no job runner / huey workers: fast start
    log = open(tmp / "mlflow_ui.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri, "--host", "127.0.0.1",
                             "--port", str(port), "--workers", "1"], stdout=log, stderr=subprocess.STDOUT, env=env,
                            start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 180
        while True:
            try:
                if urllib.request.urlopen(base + "/health", timeout=5).read().strip() == b"OK":
                    break
            except OSError:
                pass
            if proc.poll() is not None or time.time() > deadline:
                log.flush()
                pytest.fail(f"mlflow ui did not come up: {(tmp / 'mlflow_ui.log').read_text()[-2000:]}")
            time.sleep(0.5)
        yield base
    finally:
        try:
            os.killpg(proc.pid, signal.SIGTERM)  # the server and its uvicorn worker: the group this test started
            proc.wait(timeout=20)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        log.close()


def _api(base, path, body=None):
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(base + path, data=data, headers={"Content-Type": "application/json"})
    return urllib.request.urlopen(req, timeout=30).read()


def _chromium(tmp, url, *mode, budget_ms=20000):
    """Headless Chromium; the MLflow UI is a React app, so give it a virtual-time budget to fetch and render."""
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--hide-scrollbars",
           f"--user-data-dir={tmp / 'chromium-profile'}", f"--virtual-time-budget={budget_ms}",
           "--window-size=1400,900", *mode, url]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=tmp)
    assert res.returncode == 0, res.stderr[-2000:]
    return res.stdout


def _dom_with(tmp, url, needles):
    """The rendered DOM, once it holds every needle (a second, longer try for a slow first load)."""
    for budget in (20000, 60000):
        dom = _chromium(tmp, url, "--dump-dom", budget_ms=budget)
        if all(n in dom for n in needles):
            return dom
    missing = [n for n in needles if n not in dom]
    pytest.fail(f"{url} never showed {missing}; DOM tail: {dom[-1500:]}")


def test_rest_api_serves_runs_and_heatmaps(ui, swept):
    uri, result, children, _ = swept
    exp = MlflowClient(uri).get_run(result.parent_run_id).info.experiment_id
    runs = json.loads(_api(ui, "/api/2.0/mlflow/runs/search", {"experiment_ids": [exp], "max_results": 100}))["runs"]
    ids = {r["info"]["run_id"] for r in runs}
    assert result.parent_run_id in ids and {c.info.run_id for c in children} <= ids and len(children) == 2
    for child in children:
        png = _api(ui, f"/get-artifact?path=ood_matrix_heatmap.png&run_uuid={child.info.run_id}")
        assert png.startswith(b"\x89PNG")
    roc = _api(ui, f"/get-artifact?path=figures/best_roc_curves.png&run_uuid={result.parent_run_id}")
    assert roc.startswith(b"\x89PNG")


def test_browser_shows_parent_children_and_heatmap(ui, swept):
    uri, result, children, tmp = swept
    exp = MlflowClient(uri).get_run(result.parent_run_id).info.experiment_id
    # the parent run's page names the sweep and lists its child runs
    _dom_with(tmp, f"{ui}/#/experiments/{exp}/runs/{result.parent_run_id}",
              ["ui-smoke", *(c.info.run_name for c in children)])
    # a child's artifact view renders the heatmap image
    child = children[0]
    url = f"{ui}/#/experiments/{exp}/runs/{child.info.run_id}/artifacts/ood_matrix_heatmap.png"
    dom = _dom_with(tmp, url, [child.info.run_name, 'alt="ood_matrix_heatmap.png"'])
    assert "<img" in dom
    shot = tmp / "mlflow_ui.png"
    _chromium(tmp, url, f"--screenshot={shot}")
    data = shot.read_bytes()
    assert data.startswith(b"\x89PNG") and len(data) > 20_000  # a rendered page, not a blank one
    if os.environ.get("OODSWEEP_UPDATE_SCREENSHOT") == "1":
        (ROOT / "docs" / "img").mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shot, ROOT / "docs" / "img" / "mlflow_ui.png")
