"""OOD methods, one module each, registered by name.

A method module defines a subclass of :class:`methods.base.Method` decorated with ``@register("name")``, declares
its knobs, and ships ``search_spaces/<name>.yaml``. Nothing else needs editing: :data:`METHODS`
(:mod:`methods.registry`) finds it from source and imports it on first use.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from methods.registry import METHODS, catalog, register

if TYPE_CHECKING:
    from methods.base import Method

__all__ = ["METHODS", "available", "catalog", "get", "register"]


def available() -> list[str]:
    """Names of every registered method, sorted (nothing is imported)."""
    return METHODS.names()


def get(name: str) -> Method:
    """An instance of the method registered as ``name``; :class:`orchestrator.registry.UnknownEntry` otherwise."""
    return METHODS.load(name)()
