"""Unleashing Mask — UM (Zhu et al., Unleashing Mask: Explore the Intrinsic Out-of-Distribution Detection
Capability, ICML 2023) [ZFancy/Unleashing-Mask].

Fine-tunes the cached cross-entropy classifier (``finetunes = True``: the orchestrator loads it first) under a
training-loss floor: L = |β·CE_batch − UM| + UM, with CE_batch the batch-mean cross-entropy. While the batch loss
is above UM this is plain CE descent; below it the gradient flips sign and the model un-learns (forgets the
atypical samples it memorised).

The floor UM: either given absolutely (knob ``um``) or estimated in :meth:`UMTrainer.prepare` as the authors'
estimate_loss.py does — the mean training CE of a copy of the model in which a random ``mask_ratio`` (0.035)
fraction of the weights of every conv/linear layer is zeroed, eval mode — and multiplied by ``um_factor``
(default 1; the search space explores ×0.25–×4 log-uniformly). The floor is kept in the checkpoint so a resumed
trial uses the same value.

Fine-tuning knobs ``finetune_epochs`` / ``finetune_lr`` (SGD + cosine from the recipe's momentum / wd); the
authors use 100 epochs at lr 0.1, wd 1e-4, batch 256 on CIFAR. Scoring: energy by default, or any post-hoc
scorer via knob ``scorer``.
"""
from __future__ import annotations

import copy

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from methods import register
from methods.base import Method
from orchestrator.knobs import Float, ScorerChoice
from orchestrator.recipe import finetune_knobs
from orchestrator.training import FineTuner, to_float

MASKED_LAYERS = (nn.Conv2d, nn.Linear)


def masked_layers(model) -> list[tuple[str, nn.Module]]:
    """(name, module) of every conv / linear layer, in module order."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, MASKED_LAYERS)]


def random_mask_(model, ratio: float, generator: torch.Generator) -> None:
    """Zero exactly round(ratio·numel) randomly chosen weights of each conv/linear layer, in place."""
    with torch.no_grad():
        for _, layer in masked_layers(model):
            w = layer.weight
            n = int(round(ratio * w.numel()))
            if n:  # a flat mask, multiplied in: works whatever the weight's memory layout (channels-last)
                keep = torch.ones(w.numel(), dtype=w.dtype)
                keep[torch.randperm(w.numel(), generator=generator)[:n]] = 0.0
                w.mul_(keep.view(w.shape).to(w.device))


@torch.no_grad()
def mean_ce(model, x: np.ndarray, y: np.ndarray, device, batch_size: int = 512) -> float:
    model.eval()
    total = 0.0
    for s in range(0, len(x), batch_size):
        logits = model(to_float(x[s:s + batch_size], device))
        total += float(F.cross_entropy(logits, torch.as_tensor(y[s:s + batch_size]).to(device), reduction="sum"))
    return total / len(x)


def estimate_floor(model, x: np.ndarray, y: np.ndarray, mask_ratio: float = 0.035, seed: int = 0,
                   device="cpu") -> float:
    """Mean training CE of a randomly masked copy of ``model`` (eval mode); ``model`` itself is untouched."""
    if not 0.0 <= mask_ratio < 1.0:
        raise ValueError(f"um mask_ratio must be in [0, 1), got {mask_ratio}")
    masked = copy.deepcopy(model)
    random_mask_(masked, mask_ratio, torch.Generator().manual_seed(int(seed)))
    return mean_ce(masked, x, y, device)


def floor_loss(ce: torch.Tensor, um: float, beta: float = 1.0) -> torch.Tensor:
    """|β·CE − UM| + UM (batch-mean CE)."""
    return (beta * ce - um).abs() + um


class UMTrainer(FineTuner):
    def __init__(self, params, device="cpu", seed=0):
        super().__init__(params, device, seed)
        self.beta = float(params["beta"])
        self.mask_ratio = float(params["mask_ratio"])
        self.um_factor = float(params["um_factor"])
        self.um_given = params["um"]
        if self.um_given is not None and float(self.um_given) < 0:
            raise ValueError(f"um must be >= 0, got {self.um_given}")
        if self.um_factor <= 0:
            raise ValueError(f"um_factor must be > 0, got {self.um_factor}")
        self.estimated: float | None = None
        self.um: float | None = None

    def prepare(self, model) -> None:
        if self.um_given is not None:
            self.um = float(self.um_given)
            return
        self.estimated = estimate_floor(model, self.bench.id_train.x, self.bench.id_train.y, self.mask_ratio,
                                        self.seed, self.device)
        self.um = self.estimated * self.um_factor

    def loss(self, model, x, y, epoch):
        return floor_loss(F.cross_entropy(model(x), y), self.um, self.beta)

    def extra_state(self) -> dict:
        return {"um": torch.tensor(float(self.um), dtype=torch.float64)}

    def load_extra_state(self, state: dict) -> None:
        if "um" in state:
            self.um = float(state["um"])


#: The knobs :class:`UMTrainer` reads (UMAP lists them too): all change the fine-tuned network.
UM_KNOBS = (
    *finetune_knobs(10, 0.01),
    Float("um", None, ge=0, optional=True, network=True,
          help="absolute training-loss floor UM (null: um_factor × the estimated floor)"),
    Float("um_factor", 1.0, gt=0, network=True, help="UM = um_factor × the estimated floor (when um is null)"),
    Float("mask_ratio", 0.035, ge=0, lt=1, network=True,
          help="fraction of each conv/linear layer's weights zeroed at random to estimate the floor"),
    Float("beta", 1.0, gt=0, network=True, help="β in the loss |β·CE − UM| + UM"),
)


@register("um")
class UnleashingMask(Method):
    paper = "Zhu et al., Unleashing Mask: Explore the Intrinsic Out-of-Distribution Detection Capability, ICML 2023"
    finetunes = True
    knobs = (*UM_KNOBS, ScorerChoice("scorer", "energy", help="post-hoc method scoring the fine-tuned network"))

    def trainer_class(self):
        return UMTrainer
