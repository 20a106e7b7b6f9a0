"""OOD methods, one module each, registered by name.

A method module defines a subclass of :class:`methods.base.Method` decorated with
``@register("name")`` and ships ``search_spaces/<name>.yaml``. Nothing else needs editing:
:func:`available` imports every module of this package once, which runs the decorators.
"""
from __future__ import annotations

import importlib
import pkgutil

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
