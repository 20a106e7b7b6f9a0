"""Benchmarks: ID train/val/test, an OOD validation group, near-OOD and far-OOD test sets.

- :mod:`orchestrator.data.base` — what a benchmark is (:class:`~orchestrator.data.base.Benchmark`,
  :class:`~orchestrator.data.base.Split`) and helpers every loader shares;
- :mod:`orchestrator.data.builtin` — ``digits`` and ``fashion-mnist`` (no download);
- :mod:`orchestrator.data.openood` — OpenOOD v1.5's ``cifar10`` and ``cifar100``;
- :mod:`orchestrator.data.custom` — a benchmark described by a user's YAML file.

Named benchmarks are registered with ``@BENCHMARKS.register(name, description=...)`` in their module and found
from source (:class:`orchestrator.registry.Registry`), so listing them imports no loader.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from orchestrator.registry import Registry

if TYPE_CHECKING:
    from orchestrator.data.base import Benchmark

BENCHMARKS = Registry("benchmark", "orchestrator.data", skip=("base", "custom"))


def is_custom(name: str) -> bool:
    """True when ``name`` names a custom benchmark YAML file rather than a registered benchmark."""
    return str(name).lower().endswith((".yaml", ".yml"))


def available() -> dict[str, str]:
    """Registered benchmark names → one-line descriptions (read from source: nothing is imported)."""
    return {name: entry.info.get("description", "") for name, entry in BENCHMARKS.entries().items()}


def load(name: str, data_root: str | None = None, smoke: bool = False) -> Benchmark:
    """A registered benchmark by name, or a custom benchmark YAML file (docs/how-to/custom-benchmark.md).

    Raises :class:`orchestrator.registry.UnknownEntry` for an unknown name and
    :class:`orchestrator.data.base.DataUnavailable` when the data cannot be found.
    """
    if is_custom(name):
        from orchestrator.data.custom import load_custom

        bench = load_custom(name, data_root)
    else:
        bench = BENCHMARKS.load(name)(data_root)
    return bench.shrink() if smoke else bench
