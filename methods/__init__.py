"""OOD methods, one module each, registered by name.

A method module defines a subclass of :class:`methods.base.Method` decorated with
``@register("name")`` and ships ``search_spaces/<name>.yaml``. Nothing else needs editing:
:func:`available` imports every module of this package once, which runs the decorators.
"""
from __future__ import annotations

import ast
import importlib
import pkgutil
from pathlib import Path

_REGISTRY: dict[str, type] = {}
_DISCOVERED = False


def register(name: str):
    """Class decorator: make a :class:`Method` subclass reachable as ``name``."""

    def wrap(cls):
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise ValueError(f"method {name!r} is registered twice ({_REGISTRY[name].__module__} and {cls.__module__})")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return wrap


def _discover() -> None:
    global _DISCOVERED
    if _DISCOVERED:
        return
    for info in pkgutil.iter_modules(__path__):
        if not info.name.startswith("_") and info.name not in ("base", "common"):
            importlib.import_module(f"{__name__}.{info.name}")
    _DISCOVERED = True


def available() -> list[str]:
    """Names of every registered method, sorted."""
    _discover()
    return sorted(_REGISTRY)


def get(name: str):
    """An instance of the method registered as ``name``; KeyError with the known names otherwise."""
    _discover()
    try:
        return _REGISTRY[name]()
    except KeyError:
        raise KeyError(f"unknown method {name!r}; known methods: {', '.join(sorted(_REGISTRY))}") from None


def catalog() -> list[dict[str, str]]:
    """name, module, paper, substitute and kind (post-hoc / trains / fine-tunes) of every method, read from the
    modules' source without importing them — so ``python -m orchestrator list`` starts without torch."""
    rows = []
    for path in sorted(Path(__path__[0]).glob("*.py")):
        if path.stem.startswith("_") or path.stem in ("base", "common"):
            continue
        tree = ast.parse(path.read_text(), str(path))
        module_consts = {t.id: stmt.value.value for stmt in tree.body if isinstance(stmt, ast.Assign)
                         and isinstance(stmt.value, ast.Constant) for t in stmt.targets if isinstance(t, ast.Name)}
        for node in ast.walk(tree):
            if not isinstance(node, ast.ClassDef):
                continue
            names = [d.args[0].value for d in node.decorator_list if isinstance(d, ast.Call)
                     and getattr(d.func, "id", getattr(d.func, "attr", None)) == "register"
                     and d.args and isinstance(d.args[0], ast.Constant)]
            if not names:
                continue
            attrs = {t.id: stmt.value for stmt in node.body if isinstance(stmt, ast.Assign)
                     for t in stmt.targets if isinstance(t, ast.Name)}
            def const(key, attrs=attrs):
                node_ = attrs.get(key)
                if isinstance(node_, ast.Constant):
                    return node_.value
                return module_consts.get(node_.id) if isinstance(node_, ast.Name) else None

            defs = {stmt.name for stmt in node.body if isinstance(stmt, ast.FunctionDef)}
            kind = "fine-tunes" if const("finetunes") else "trains" if "trainer_class" in defs else "post-hoc"
            rows.append({"name": names[0], "module": path.stem, "paper": const("paper") or "",
                         "substitute": const("substitute") or "", "kind": kind})
    return sorted(rows, key=lambda r: r["name"])
