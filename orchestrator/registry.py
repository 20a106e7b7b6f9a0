"""One lazy registry mechanism for methods, benchmarks and backbones.

An entry is declared where it is implemented, with a decorator: ``@register("knn")`` on a method class,
``@BENCHMARKS.register("digits", description=...)`` on a benchmark loader, ``@BACKBONES.register("resnet18")`` on
an encoder builder. A :class:`Registry` finds its entries by reading the source of its package's modules (the
decorators' constant arguments), so ``names()`` and ``info()`` answer without importing those modules — and so
without torch: ``python -m orchestrator list`` stays instant. ``load(name)`` imports the one module that defines
``name`` and returns the decorated object. Adding an entry means adding a module (or a decorated object in an
existing one); no table elsewhere is edited.
"""
from __future__ import annotations

import ast
import difflib
import importlib
import importlib.util
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


class UnknownEntry(KeyError):
    """A name no module of the registry declares; the message lists the known names and the closest one."""

    def __str__(self) -> str:  # KeyError quotes its argument; this is a sentence
        return str(self.args[0])


@dataclass(frozen=True)
class Entry:
    """A registered name as read from source: where it is defined and the decorator's constant keywords."""

    name: str
    module: str
    qualname: str
    info: dict[str, Any] = field(default_factory=dict)
    node: ast.AST | None = field(default=None, compare=False, repr=False)
    path: Path | None = field(default=None, compare=False, repr=False)


def closest(name: str, known: list[str]) -> str:
    """'; did you mean X?' for the closest known name, or '' when none is close."""
    match = difflib.get_close_matches(str(name), known, n=1, cutoff=0.6)
    return f"; did you mean {match[0]!r}?" if match else ""


class Registry:
    """Name → object table of one kind, filled by decorators and discovered from source without importing.

    ``package`` is the dotted name of the package whose modules declare the entries (modules whose names start
    with ``_`` are skipped, as are those in ``skip``).
    """

    def __init__(self, kind: str, package: str, skip: tuple[str, ...] = ()):
        self.kind = kind
        self.package = package
        self.skip = frozenset(skip)
        self._objects: dict[str, Any] = {}
        self._entries: dict[str, Entry] | None = None

    # ---- declaring
    def register(self, name: str, **info: Any) -> Callable[[Any], Any]:
        """Decorator: make the decorated class or function reachable as ``name``. Keyword values are metadata
        that ``info(name)`` returns without importing (keep them literal constants)."""

        def wrap(obj):
            known = self._objects.get(name)
            if known is not None and known is not obj and _qualified(known) != _qualified(obj):
                raise ValueError(f"{self.kind} {name!r} is registered twice ({_qualified(known)} and "
                                 f"{_qualified(obj)})")
            self._objects[name] = obj
            if isinstance(obj, type):
                obj.name = name
            return obj

        return wrap

    # ---- discovering
    def folder(self) -> Path:
        spec = importlib.util.find_spec(self.package)
        if spec is None or not spec.submodule_search_locations:
            raise ModuleNotFoundError(f"{self.kind} registry: package {self.package!r} not found")
        return Path(list(spec.submodule_search_locations)[0])

    def entries(self) -> dict[str, Entry]:
        """Every declared entry, read from source (no module is imported)."""
        if self._entries is None:
            found: dict[str, Entry] = {}
            for path in sorted(self.folder().glob("*.py")):
                if path.stem.startswith("_") or path.stem in self.skip:
                    continue
                for entry in _declared(path, f"{self.package}.{path.stem}"):
                    if entry.name in found:
                        raise ValueError(f"{self.kind} {entry.name!r} is declared twice ({found[entry.name].module} "
                                         f"and {entry.module})")
                    found[entry.name] = entry
            self._entries = dict(sorted(found.items()))
        return self._entries

    def names(self) -> list[str]:
        return list(self.entries())

    def entry(self, name: str) -> Entry:
        try:
            return self.entries()[name]
        except KeyError:
            known = self.names()
            raise UnknownEntry(f"unknown {self.kind} {name!r}{closest(name, known)} (known: {', '.join(known)})") \
                from None

    def info(self, name: str) -> dict[str, Any]:
        return dict(self.entry(name).info)

    def __contains__(self, name: object) -> bool:
        return name in self.entries()

    # ---- using
    def load(self, name: str) -> Any:
        """The registered object: imports the module that declares ``name`` (once)."""
        if name not in self._objects:
            importlib.import_module(self.entry(name).module)
        try:
            return self._objects[name]
        except KeyError:
            raise RuntimeError(f"{self.entry(name).module} declares {self.kind} {name!r} in its source but did not "
                               f"register it when imported") from None


def _qualified(obj: Any) -> str:
    return f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', repr(obj))}"


def _declared(path: Path, module: str) -> list[Entry]:
    """Entries of one module: top-level classes/functions decorated with ``register(...)``/``X.register(...)``
    whose first argument is a string constant."""
    tree = ast.parse(path.read_text(), str(path))
    out = []
    for node in tree.body:
        if not isinstance(node, (ast.ClassDef, ast.FunctionDef)):
            continue
        for deco in node.decorator_list:
            if not isinstance(deco, ast.Call) or not deco.args or not isinstance(deco.args[0], ast.Constant):
                continue
            func = deco.func
            if (isinstance(func, ast.Name) and func.id == "register") or (
                    isinstance(func, ast.Attribute) and func.attr == "register"):
                info = {kw.arg: kw.value.value for kw in deco.keywords
                        if kw.arg and isinstance(kw.value, ast.Constant)}
                out.append(Entry(str(deco.args[0].value), module, node.name, info, node, path))
    return out


# ---------------------------------------------------------------------------------------------- static values
#: Modules whose names a declaration may call or use: imported for real (they import neither torch nor numpy).
STATIC_MODULES = ("orchestrator.knobs", "orchestrator.recipe")


class NotStatic(ValueError):
    """A declaration that cannot be read from source (it computes something at import time)."""


def static_attribute(entry: Entry, attribute: str, default: Any = None) -> Any:
    """The value of ``attribute`` in the body of ``entry``'s class, computed from source without importing its
    module: literals, containers, ``+``/``-``/``*``, module constants, names imported from another module of the
    same package (read from source too), and calls of the torch-free declaration helpers in
    :data:`STATIC_MODULES` (``Float(...)``, ``finetune_knobs(...)``). Anything else raises :class:`NotStatic`."""
    if not isinstance(entry.node, ast.ClassDef) or entry.path is None:
        return default
    for stmt in entry.node.body:
        targets = stmt.targets if isinstance(stmt, ast.Assign) else [stmt.target] if isinstance(stmt, ast.AnnAssign) \
            and stmt.value is not None else []
        if any(isinstance(t, ast.Name) and t.id == attribute for t in targets):
            return _Evaluator(entry.path, entry.module).eval(stmt.value)
    return default


class _Evaluator:
    def __init__(self, path: Path, module: str):
        self.path, self.module = path, module
        tree = ast.parse(path.read_text(), str(path))
        self.assigned: dict[str, ast.AST] = {}
        self.imported: dict[str, tuple[str, str]] = {}
        for stmt in tree.body:
            if isinstance(stmt, ast.Assign):
                for t in stmt.targets:
                    if isinstance(t, ast.Name):
                        self.assigned[t.id] = stmt.value
            elif isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name) and stmt.value is not None:
                self.assigned[stmt.target.id] = stmt.value
            elif isinstance(stmt, ast.ImportFrom) and stmt.module and not stmt.level:
                for alias in stmt.names:
                    self.imported[alias.asname or alias.name] = (stmt.module, alias.name)

    def fail(self, node: ast.AST, why: str) -> NotStatic:
        return NotStatic(f"{self.path}:{getattr(node, 'lineno', '?')}: cannot read a declaration from source ({why}); "
                         f"use literals, module constants and the helpers of {', '.join(STATIC_MODULES)}")

    def name(self, node: ast.Name) -> Any:
        if node.id in ("True", "False", "None"):
            return {"True": True, "False": False, "None": None}[node.id]
        if node.id in self.assigned:
            return self.eval(self.assigned[node.id])
        if node.id in self.imported:
            module, attr = self.imported[node.id]
            if module in STATIC_MODULES:
                return getattr(importlib.import_module(module), attr)
            spec = importlib.util.find_spec(module)
            if spec is not None and spec.origin and spec.origin.endswith(".py") and \
                    module.split(".")[0] == self.module.split(".")[0]:
                return _Evaluator(Path(spec.origin), module).name(ast.Name(id=attr))
        raise self.fail(node, f"name {node.id!r} is neither a module constant nor a declaration helper")

    def eval(self, node: ast.AST) -> Any:
        if isinstance(node, ast.Constant):
            return node.value
        if isinstance(node, ast.Name):
            return self.name(node)
        if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
            items = []
            for elt in node.elts:
                if isinstance(elt, ast.Starred):
                    items.extend(self.eval(elt.value))
                else:
                    items.append(self.eval(elt))
            return tuple(items) if isinstance(node, ast.Tuple) else items if isinstance(node, ast.List) else set(items)
        if isinstance(node, ast.Dict):
            return {self.eval(k): self.eval(v) for k, v in zip(node.keys, node.values, strict=False)}
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
            return -self.eval(node.operand)
        if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Add, ast.Sub, ast.Mult, ast.Div)):
            left, right = self.eval(node.left), self.eval(node.right)
            ops = {ast.Add: lambda a, b: a + b, ast.Sub: lambda a, b: a - b, ast.Mult: lambda a, b: a * b,
                   ast.Div: lambda a, b: a / b}
            return ops[type(node.op)](left, right)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
            func = self.name(node.func)
            if getattr(func, "__module__", None) not in STATIC_MODULES:
                raise self.fail(node, f"{node.func.id}() is not a declaration helper")
            args = []
            for a in node.args:
                args.extend(self.eval(a.value)) if isinstance(a, ast.Starred) else args.append(self.eval(a))
            kwargs = {kw.arg: self.eval(kw.value) for kw in node.keywords if kw.arg}
            return func(*args, **kwargs)
        raise self.fail(node, f"{type(node).__name__} expression")
