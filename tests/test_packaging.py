"""The built wheel carries what an installed oodsweep needs, and nothing of the checkout's tooling.

Building the wheel runs setuptools in a subprocess (about a second), hence the ``slow`` marker; it still runs in
the default ``python -m pytest -q``. The build runs on a temporary copy of the checkout so that setuptools' ``build/``
and ``*.egg-info`` folders never land in the repository.
"""
from __future__ import annotations

import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: the version checks below are skipped (CI runs 3.11)
    tomllib = None

ROOT = Path(__file__).resolve().parent.parent
SUBPACKAGES = ["benchmark", "data", "models", "sweep", "tracking"]

pytestmark = pytest.mark.slow

# What the build sees: the packaging metadata, the packages, and (so that "not in the wheel" means something) the
# folders that must stay out of it.
_COPIED = ["pyproject.toml", "README.md", "orchestrator", "methods", "search_spaces", "tests", "scripts"]
_JUNK = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info", "build", "dist", ".pytest_cache")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """A wheel freshly built from a copy of the checkout."""
    src = tmp_path_factory.mktemp("src")
    for name in _COPIED:
        path = ROOT / name
        if path.is_dir():
            shutil.copytree(path, src / name, ignore=_JUNK)
        elif path.exists():
            shutil.copy2(path, src / name)
    out = tmp_path_factory.mktemp("dist")
    # --no-isolation: build with this environment's setuptools (the test extra), no download needed.
    proc = subprocess.run([sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(out), str(src)],
                          cwd=src, capture_output=True, text=True)
    assert proc.returncode == 0, f"wheel build failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    wheels = list(out.glob("oodsweep-*.whl"))
    assert len(wheels) == 1, f"expected one wheel in {out}, found {wheels}"
    return wheels[0]


@pytest.fixture(scope="module")
def wheel_names(wheel) -> set[str]:
    """The file names inside the wheel."""
    with zipfile.ZipFile(wheel) as zf:
        return set(zf.namelist())


@pytest.mark.parametrize("yaml", sorted(p.name for p in (ROOT / "search_spaces").glob("*.yaml")))
def test_every_search_space_is_in_the_wheel(wheel_names, yaml):
    assert f"search_spaces/{yaml}" in wheel_names


def test_search_spaces_package_is_in_the_wheel(wheel_names):
    assert "search_spaces/__init__.py" in wheel_names


def test_orchestrator_is_typed(wheel_names):
    assert "orchestrator/py.typed" in wheel_names


def test_methods_is_typed(wheel_names):
    assert "methods/py.typed" in wheel_names


@pytest.mark.parametrize("sub", SUBPACKAGES)
def test_every_orchestrator_subpackage_is_in_the_wheel(wheel_names, sub):
    assert f"orchestrator/{sub}/__init__.py" in wheel_names


def test_every_subpackage_is_listed_here():
    """A new orchestrator subpackage must be added to SUBPACKAGES (and so checked above)."""
    found = sorted(p.parent.name for p in (ROOT / "orchestrator").glob("*/__init__.py"))
    assert found == sorted(SUBPACKAGES)


def test_every_module_is_in_the_wheel(wheel_names):
    modules = {p.relative_to(ROOT).as_posix() for pkg in ("orchestrator", "methods", "search_spaces")
               for p in (ROOT / pkg).rglob("*.py") if "__pycache__" not in p.parts}
    assert sorted(modules - wheel_names) == []


def test_no_tests_in_the_wheel(wheel_names):
    assert sorted(n for n in wheel_names if n.split("/")[0] == "tests") == []


def test_no_scripts_in_the_wheel(wheel_names):
    assert sorted(n for n in wheel_names if n.split("/")[0] == "scripts") == []


def test_console_script_is_declared(wheel, wheel_names):
    (entry_points,) = [n for n in wheel_names if n.endswith(".dist-info/entry_points.txt")]
    with zipfile.ZipFile(wheel) as zf:
        text = zf.read(entry_points).decode()
    assert "oodsweep = orchestrator.cli:main" in text


# ---------------------------------------------------------------------------------------------- versions
# pyproject.toml asks for ranges (a GPU machine's CUDA build of torch must survive `pip install -e .`);
# constraints/cpu.txt pins the CPU reference versions inside them, for CI (.ci/run) and the README's quick start.
CONSTRAINTS = ROOT / "constraints" / "cpu.txt"
#: The oldest versions the suite has run on: the lower bounds of the ranges.
OLDEST_TESTED = {"torch": "2.14.1", "torchvision": "0.29.1"}


def _requirements(*extras: str) -> list[Requirement]:
    if tomllib is None:
        return []
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    lines = project["dependencies"] + [r for e in extras for r in project["optional-dependencies"][e]]
    return [Requirement(line) for line in lines]


def _pins() -> dict[str, str]:
    pins = {}
    for line in CONSTRAINTS.read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, version = re.fullmatch(r"([A-Za-z0-9_.\-]+)==([A-Za-z0-9_.+\-]+)", line).groups()
            pins[canonicalize_name(name)] = version
    return pins


@pytest.mark.parametrize("req", [str(r) for r in _requirements("test", "docs", "gpu", "dashboard")])
def test_no_dependency_is_pinned_exactly(req):
    assert "==" not in str(Requirement(req).specifier)


@pytest.mark.parametrize("name, oldest", sorted(OLDEST_TESTED.items()))
def test_torch_ranges_start_at_the_oldest_tested_version(name, oldest):
    (req,) = [r for r in _requirements() if r.name == name]
    assert str(req.specifier) == f">={oldest}"


@pytest.mark.parametrize("name", sorted(OLDEST_TESTED))
def test_the_constraints_pin_the_oldest_tested_torch(name):
    assert _pins()[name] == OLDEST_TESTED[name]


@pytest.mark.parametrize("req", [str(r) for r in _requirements("test", "docs")])
def test_every_dependency_is_pinned_in_the_constraints(req):
    assert canonicalize_name(Requirement(req).name) in _pins()


@pytest.mark.parametrize("req", [str(r) for r in _requirements("test", "docs")])
def test_every_pin_lies_in_its_range(req):
    r = Requirement(req)
    assert r.specifier.contains(_pins()[canonicalize_name(r.name)], prereleases=True)


@pytest.mark.parametrize("path", [".ci/run", "README.md"])
def test_installs_use_the_constraints(path):
    assert "-c constraints/cpu.txt" in (ROOT / path).read_text()
