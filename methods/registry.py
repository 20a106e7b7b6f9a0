"""The method registry and its catalog, read from the method modules' source (nothing here imports torch).

Kept apart from the package's ``__init__`` so that :mod:`methods.base` can look methods up (a scorer knob names
another method) without importing the package that imports it.
"""
from __future__ import annotations

import functools
from typing import Any

from orchestrator.registry import NotStatic, Registry, static_attribute

#: What a post-hoc method reads of the classifier (``Method.reads``), in the order ``list`` shows them: cached
#: logits; cached penultimate features (and logits); features and the final layer's weight and bias (cached with the
#: outputs, :class:`Head`); the cached last feature map; the network itself (input gradients, training images,
#: intermediate blocks).
READS = ("logits", "features", "head", "feature map", "network")


METHODS = Registry("method", "methods", skip=("base", "registry"))
#: Class decorator: ``@register("name")`` makes a Method subclass reachable as ``name``.
register = METHODS.register


@functools.lru_cache(maxsize=1)
def catalog() -> list[dict[str, Any]]:
    """name, module, paper, substitute, kind (post-hoc / trains / fine-tunes), what a post-hoc method reads (one of
    :data:`READS`; "" for a method that trains) and declared knobs of every method,
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
                     "reads": static_attribute(entry, "reads", "") or "",
                     "knobs": knobs, "error": error})
    return rows
