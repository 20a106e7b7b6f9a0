"""What a trial is given: the sweep's settings, its configuration resolved over the recipe, its seeds.

No PyTorch here: an evaluator that only scores extracted outputs (:mod:`orchestrator.posthoc`) imports this
and never loads PyTorch (~1.3 s of a fresh process on 2 cores).
"""
from __future__ import annotations

import sys
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from methods.base import Method
from orchestrator.data.base import Benchmark
from orchestrator.knobs import Params


@dataclass
class TrialSettings:
    """What every trial of a sweep shares (passed once through Ray's object store with the benchmark)."""

    method: str
    seed: int = 0
    cache_dir: str | None = None
    convention: str = "classic"
    threads: int = 1
    data_fingerprint: str = ""
    #: A user's network (``--model``): the fields of :class:`orchestrator.models.external.ModelSpec`; None: the
    #: network is trained here.
    model: dict[str, Any] | None = None

    def as_dict(self) -> dict[str, Any]:
        """Plain values (what travels to Ray workers and back into ``TrialSettings(**d)``)."""
        return asdict(self)


def trial_params(method: Method, config: Mapping[str, Any], bench: Benchmark) -> Params:
    """``config`` over the benchmark's recipe, checked against the method's declared knobs."""
    return method.resolve(config, bench.recipe)


def seed_everything(settings: TrialSettings) -> None:
    """Seeds of this process for one trial: NumPy's global generator, and PyTorch's (with its thread count) when
    the process has imported it — a trial that trains or runs the network has, and so has every scorer whose
    module uses PyTorch; an evaluator scoring outputs with NumPy alone has no PyTorch state to seed."""
    np.random.seed(settings.seed)
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(max(1, int(settings.threads)))
        torch.manual_seed(settings.seed)
