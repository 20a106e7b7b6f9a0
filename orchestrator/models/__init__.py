"""Networks: the classifier protocol every scorer relies on, and the registered backbones.

Backbones are registered with ``@BACKBONES.register(name)`` on a builder ``(in_channels, image_size) -> encoder``
(:mod:`orchestrator.models.backbones`) and found from source, so listing them imports no torch.
"""
from __future__ import annotations

from orchestrator.registry import Registry

BACKBONES = Registry("backbone", "orchestrator.models", skip=("protocol", "external"))
