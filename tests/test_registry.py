"""The one registry mechanism: entries read from source without importing, loaded on demand."""
import sys
import textwrap

import pytest

from orchestrator.registry import NotStatic, Registry, UnknownEntry, static_attribute


@pytest.fixture
def plugin_pkg(tmp_path, monkeypatch):
    pkg = tmp_path / "plugpkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("from orchestrator.registry import Registry\nTHINGS = Registry('thing', 'plugpkg')\n")
    (pkg / "alpha.py").write_text(textwrap.dedent('''
        from orchestrator.knobs import Float
        from plugpkg import THINGS

        SCALE = 2.0

        @THINGS.register("alpha", description="the first")
        class Alpha:
            knobs = (Float("t", SCALE * 0.5, gt=0),)
            computed = sorted([3, 1])
    '''))
    (pkg / "_private.py").write_text("raise RuntimeError('never imported')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield pkg
    for name in [m for m in sys.modules if m.startswith("plugpkg")]:
        del sys.modules[name]


def test_names_come_from_source_without_importing(plugin_pkg):
    import plugpkg

    assert plugpkg.THINGS.names() == ["alpha"]
    assert "plugpkg.alpha" not in sys.modules


def test_info_reads_decorator_keywords(plugin_pkg):
    import plugpkg

    assert plugpkg.THINGS.info("alpha") == {"description": "the first"}


def test_load_imports_the_declaring_module(plugin_pkg):
    import plugpkg

    assert plugpkg.THINGS.load("alpha").__name__ == "Alpha"


def test_unknown_name_lists_known_and_closest(plugin_pkg):
    import plugpkg

    with pytest.raises(UnknownEntry, match=r"unknown thing 'alpah'; did you mean 'alpha'\? \(known: alpha\)"):
        plugpkg.THINGS.load("alpah")


def test_static_attribute_evaluates_declarations(plugin_pkg):
    import plugpkg

    (knob,) = static_attribute(plugpkg.THINGS.entry("alpha"), "knobs")
    assert (knob.name, knob.default, knob.gt) == ("t", 1.0, 0)


def test_static_attribute_refuses_computed_values(plugin_pkg):
    import plugpkg

    with pytest.raises(NotStatic, match="sorted"):
        static_attribute(plugpkg.THINGS.entry("alpha"), "computed")


def test_the_project_registries_agree_with_imports():
    import methods
    from orchestrator.data import BENCHMARKS
    from orchestrator.models import BACKBONES

    assert BACKBONES.names() == ["resnet18", "small_cnn"]
    assert {"digits", "fashion-mnist", "cifar10", "cifar100"} <= set(BENCHMARKS.names())
    assert methods.get("knn").name == "knn"


def test_registry_kind_appears_in_errors():
    with pytest.raises(UnknownEntry, match="unknown benchmark"):
        Registry("benchmark", "orchestrator.data", skip=("base", "custom")).entry("nope")
