"""Bad input: one clear line on stderr, exit code 2, and nothing written (no MLflow store, no Ray results)."""
import json
import subprocess
import sys

import pytest

from tests.conftest import ROOT


def _run(args, cwd):
    home = cwd.parent / f"{cwd.name}-home"  # Ray keeps its auth token under $HOME: not the folder we check
    home.mkdir(exist_ok=True)
    return subprocess.run([sys.executable, "-m", "orchestrator", *args], cwd=cwd, capture_output=True, text=True,
                          env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "HOME": str(home)}, timeout=120)


#: Search spaces a user really writes wrong: a misspelled knob, a value of the wrong type, an unknown scorer.
BAD_SPACES = {
    "bad.yaml": "space:\n  p_inv: {type: float, low: 0.5, high: 0.01}\n",
    "misspelled.yaml": "space:\n  alpah_max: {type: float, low: 0.1, high: 1000.0, log: true}\nfixed: {scorer: msp}\n",
    "wrongtype.yaml": "space: {}\nfixed: {temperature: hot}\n",
    "outside.yaml": "space:\n  temperature: {type: float, low: -1.0, high: 10.0}\n",
    "scorer.yaml": "space: {}\nfixed: {scorer: nosuch}\n",
}


#: (argv, what its one stderr line contains). Run in one Python process (its imports paid once), each case in a
#: fresh folder with stderr captured at the file descriptor, so a library's own writes would show too.
BAD_INPUT = [
    (["sweep", "no-such-method"], "unknown method 'no-such-method' (known: ascood, ash, csd,"),
    (["sweep", "ascood", "--benchmark", "no-such-bench"], "unknown benchmark 'no-such-bench' (known: cifar10, cifar100, digits, fashion-mnist, imagenet, imagenet200)"),
    (["sweep", "ascood", "--benchmark", "digit"], "unknown benchmark 'digit'; did you mean 'digits'?"),
    (["sweep", "ascood", "--search-space", "bad.yaml"], "bad.yaml: space.p_inv: low (0.5) is above high (0.01)"),
    (["sweep", "ascood", "--search-space", "misspelled.yaml"],
     "misspelled.yaml: space.alpah_max: unknown knob 'alpah_max' for method ascood; did you mean 'alpha_max'?"),
    (["sweep", "energy", "--search-space", "wrongtype.yaml"], "wrongtype.yaml: fixed.temperature = 'hot' is not float > 0"),
    (["sweep", "energy", "--search-space", "outside.yaml"], "outside.yaml: space.temperature: low = -1.0 is not float > 0"),
    (["sweep", "ascood", "--search-space", "scorer.yaml"], "scorer.yaml: ascood: unknown scorer 'nosuch' (valid: ash, csd, dice, dmr, energy,"),
    (["sweep", "energy", "--objective", "val/nosuch:max"],
     "--objective: objective 'val/nosuch' is not reported by any trial; did you mean 'val/auroc'?; reported: val/auroc,"),
    (["sweep", "energy", "--objective", "near/auroc:max"], "test-set metrics are reported, never optimised on"),
    (["sweep", "energy", "--epochs", "0"], "--epochs must be at least 1"),
    (["sweep", "ascood", "--report-seconds", "nan"], "--report-seconds must be 0 or more, got nan"),
    (["sweep", "ascood", "--num-samples", "0"], "--num-samples must be at least 1"),
    (["sweep", "ascood", "--report-seconds", "-1"], "--report-seconds must be 0 or more, got -1.0"),
    (["sweep", "ascood", "--tracking-uri", "http://127.0.0.1:9"], "is not reachable"),
    (["sweep", "energy", "--tracking-uri", "afolder"], "is a folder, and MLflow 3 keeps runs in a database"),
    (["sweep", "energy", "--tracking-uri", "sqlite:///broken.db"], "broken.db cannot be read (file is not a database)"),
    (["sweep", "energy", "--tracking-uri", "sqlite:////nonexistent-dir/x/mlflow.db"], "folder /nonexistent-dir/x does not exist"),
    (["report", "--tracking-uri", "sqlite:///broken.db"], "broken.db cannot be read (file is not a database)"),
    (["sweep", "energy", "--storage-path", "afile"], "afile is a file, not a folder"),
    (["sweep", "energy", "--name", "n" * 300], "--name may be at most 100 characters"),
    (["sweep", "energy", "--max-failures", "-1"], "--max-failures must be 0 or more"),
    (["sweep", "energy", "--address", "127.0.0.1:9"], "--address 127.0.0.1:9: nothing answers there"),
    (["sweep", "ascood", "--resume", "stopme", "--epochs", "1"],
     "--epochs: a resumed sweep keeps the options it started with; leave --epochs out"),
]
#: Needs the cluster, so Ray starts (a private instance) — and still nothing is written: a process of its own.
RAY_STARTS = (["sweep", "energy", "--no-dashboard", "--cpus-per-trial", "64"],
              "no node of this Ray cluster can run a trial: 64 CPUs per trial, but the largest node has")

_DRIVER = """
import json, os, sys, tempfile
from orchestrator.cli import main
cases, results = json.loads(open(sys.argv[1]).read()), []
for cwd, args in cases:
    os.chdir(cwd)
    with tempfile.TemporaryFile() as err:
        sys.stderr.flush()
        saved = os.dup(2)
        os.dup2(err.fileno(), 2)
        try:
            try:
                code = main(args)
            except SystemExit as stop:
                code = stop.code if isinstance(stop.code, int) else 1
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
        err.seek(0)
        results.append({"code": code, "stderr": err.read().decode(errors="replace")})
open(sys.argv[2], "w").write(json.dumps(results))
"""


def _case_folder(folder):
    folder.mkdir(parents=True)
    for name, text in BAD_SPACES.items():
        (folder / name).write_text(text)
    (folder / "afolder").mkdir()
    (folder / "afile").write_text("not a folder")
    (folder / "broken.db").write_bytes(b"this is not an SQLite database" * 100)
    return folder


@pytest.fixture(scope="module")
def bad_input_runs(tmp_path_factory):
    """{case index: (exit code, stderr, folder names before, after)} of every BAD_INPUT case."""
    root = tmp_path_factory.mktemp("bad-input")
    folders = [_case_folder(root / f"case{i}") for i in range(len(BAD_INPUT))]
    before = [set(p.name for p in f.iterdir()) for f in folders]
    (root / "cases.json").write_text(json.dumps([[str(f), args] for f, (args, _) in zip(folders, BAD_INPUT, strict=True)]))
    home = root / "home"  # Ray keeps its auth token under $HOME: not the folders we check
    home.mkdir()
    res = subprocess.run([sys.executable, "-c", _DRIVER, str(root / "cases.json"), str(root / "results.json")],
                         cwd=root, capture_output=True, text=True, timeout=600,
                         env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "HOME": str(home)})
    assert res.returncode == 0, res.stderr[-3000:]
    results = json.loads((root / "results.json").read_text())
    return {i: (r["code"], r["stderr"], before[i], set(p.name for p in folders[i].iterdir()))
            for i, r in enumerate(results)}


def _one_line(stderr):
    return stderr.strip().splitlines()


@pytest.mark.parametrize("case", range(len(BAD_INPUT)), ids=[" ".join(a)[:60] for a, _ in BAD_INPUT])
def test_bad_input_exits_2(bad_input_runs, case):
    code, err, _, _ = bad_input_runs[case]
    assert code == 2, err


@pytest.mark.parametrize("case", range(len(BAD_INPUT)), ids=[" ".join(a)[:60] for a, _ in BAD_INPUT])
def test_bad_input_says_what_to_fix_in_one_line(bad_input_runs, case):
    _, err, _, _ = bad_input_runs[case]
    lines = _one_line(err)
    assert len(lines) == 1 and lines[0].startswith("error: ") and BAD_INPUT[case][1] in lines[0], err


@pytest.mark.parametrize("case", range(len(BAD_INPUT)), ids=[" ".join(a)[:60] for a, _ in BAD_INPUT])
def test_bad_input_writes_nothing(bad_input_runs, case):
    _, _, before, after = bad_input_runs[case]
    assert after == before  # no mlflow.db, no ray_results


def test_bad_trial_resources_fail_cleanly_after_ray_starts(tmp_path):
    folder = _case_folder(tmp_path / "case")
    before = set(p.name for p in folder.iterdir())
    res = _run(RAY_STARTS[0], folder)
    lines = _one_line(res.stderr)
    assert res.returncode == 2, res.stderr
    assert len(lines) == 1 and lines[0].startswith("error: ") and RAY_STARTS[1] in lines[0], res.stderr
    assert set(p.name for p in folder.iterdir()) == before


def test_help_and_list(tmp_path):
    res = _run(["--help"], tmp_path)
    assert res.returncode == 0 and "sweep" in res.stdout
    res = _run(["list"], tmp_path)
    assert res.returncode == 0
    for name in ("ascood", "msp", "energy", "digits", "fashion-mnist", "resnet18"):
        assert name in res.stdout
    assert "temperature: float > 0 = 1.0" in res.stdout  # energy's declared knob, read from source


def _list_groups(capsys) -> dict[str, set[str]]:
    """``list``'s method groups: {group title: the method names under it}."""
    from orchestrator.cli import main

    main(["list"])
    groups: dict[str, set[str]] = {}
    title = None
    for line in capsys.readouterr().out.split("\nRecipe knobs")[0].splitlines():
        if line.startswith(" ") and not line.startswith("  "):
            title = line.strip()
            groups[title] = set()
        elif title and line.startswith("  ") and not line.startswith("      "):
            groups[title].add(line.split()[0])
    return groups


@pytest.mark.parametrize("name, title_starts", [("msp", "Post-hoc, reading the logits"),
                                                ("knn", "Post-hoc, reading the penultimate features"),
                                                ("vim", "Post-hoc, reading the features and the final layer"),
                                                ("csd", "Post-hoc, reading the last feature map"),
                                                ("odin", "Post-hoc, reading the network itself"),
                                                ("ascood", "Training their own network")])
def test_list_groups_methods_by_what_they_read(capsys, name, title_starts):
    assert [t for t, names in _list_groups(capsys).items() if name in names][0].startswith(title_starts)


def test_list_imports_neither_torch_nor_ray(tmp_path):
    code = ("import sys; from orchestrator.cli import main; main(['list']); "
            "print('HEAVY', sorted(m for m in ('torch', 'ray', 'numpy', 'mlflow') if m in sys.modules))")
    res = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True,
                         env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}, timeout=60)
    assert "HEAVY []" in res.stdout, res.stdout[-500:] + res.stderr
