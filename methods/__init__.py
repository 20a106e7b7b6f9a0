"""OOD methods, one module each, registered by name.

A method module defines a subclass of :class:`methods.base.Method` decorated with ``@register("name")``, declares
its knobs, and ships ``search_spaces/<name>.yaml``. Nothing else needs editing: :data:`METHODS` finds it from
source (:class:`orchestrator.registry.Registry`) and imports it on first use.
"""
from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any

from orchestrator.registry import NotStatic, Registry, static_attribute

if TYPE_CHECKING:
    from methods.base import Method

METHODS = Registry("method", "methods", skip=("base",))
#: Class decorator: ``@register("name")`` makes a Method subclass reachable as ``name``.
register = METHODS.register


def available() -> list[str]:
    """Names of every registered method, sorted (nothing is imported)."""
    return METHODS.names()


def get(name: str) -> Method:
    """An instance of the method registered as ``name``; :class:`orchestrator.registry.UnknownEntry` otherwise."""
    return METHODS.load(name)()


@functools.lru_cache(maxsize=1)
def catalog() -> list[dict[str, Any]]:
    """name, module, paper, substitute, kind (post-hoc / trains / fine-tunes) and declared knobs of every method,
    read from the modules' source without importing them — so ``python -m orchestrator list`` starts without
    torch. A test checks that this matches the imported classes."""
    rows = []
    for name, entry in METHODS.entries().items():
        defs = {s.name for s in entry.node.body if hasattr(s, "name")}
        finetunes = bool(static_attribute(entry, "finetunes", False))
        kind = "fine-tunes" if finetunes else "trains" if "trainer_class" in defs else "post-hoc"
        try:
            knobs, error = tuple(static_attribute(entry, "knobs", ()) or ()), ""
        except NotStatic as exc:  # one unreadable declaration must not hide the other methods
            knobs, error = (), str(exc)
        rows.append({"name": name, "module": entry.module.rsplit(".", 1)[-1],
                     "paper": static_attribute(entry, "paper", "") or "",
                     "substitute": static_attribute(entry, "substitute", None) or "", "kind": kind,
                     "knobs": knobs, "error": error})
    return rows
