"""Bad input: one clear line on stderr, exit code 2, and nothing written (no MLflow store, no Ray results)."""
import subprocess
import sys

import pytest

from tests.conftest import ROOT


def _run(args, cwd):
    return subprocess.run([sys.executable, "-m", "orchestrator", *args], cwd=cwd, capture_output=True, text=True,
                          env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "HOME": str(cwd)}, timeout=120)


@pytest.mark.parametrize("args, message", [
    (["sweep", "no-such-method"], "unknown method 'no-such-method'; known methods: "),
    (["sweep", "ascood", "--benchmark", "no-such-bench"], "unknown benchmark 'no-such-bench'; known benchmarks: cifar10, cifar100, digits, fashion-mnist"),
    (["sweep", "ascood", "--search-space", "bad.yaml"], "bad.yaml: space.p_inv: low (0.5) is above high (0.01)"),
    (["sweep", "ascood", "--num-samples", "0"], "--num-samples must be at least 1"),
    (["sweep", "ascood", "--report-seconds", "-1"], "--report-seconds must be 0 or more, got -1.0"),
    (["sweep", "ascood", "--tracking-uri", "http://127.0.0.1:9"], "is not reachable"),
])
def test_bad_input_fails_cleanly(tmp_path, args, message):
    (tmp_path / "bad.yaml").write_text("space:\n  p_inv: {type: float, low: 0.5, high: 0.01}\n")
    before = set(p.name for p in tmp_path.iterdir())
    res = _run(args, tmp_path)
    assert res.returncode == 2, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], res.stderr
    assert set(p.name for p in tmp_path.iterdir()) == before  # no mlflow.db, no ray_results


def test_help_and_list(tmp_path):
    res = _run(["--help"], tmp_path)
    assert res.returncode == 0 and "sweep" in res.stdout
    res = _run(["list"], tmp_path)
    assert res.returncode == 0
    for name in ("ascood", "msp", "energy", "digits", "fashion-mnist"):
        assert name in res.stdout
