"""Unleashing Mask with Adaptive Pruning — UMAP (Zhu et al., ICML 2023) [ZFancy/Unleashing-Mask].

Same loss and floor as UM (L = |β·CE_batch − UM| + UM, UM estimated or given, see :mod:`methods.um`), but what is
learned is a binary weight mask per conv/linear layer (edge-popup [utils/conv_type.py GetSubnet]): every weight
has a score s, the layer keeps the top ``keep_ratio`` fraction of |s| (exactly numel − int((1−keep)·numel)
weights, as the authors' sort-based GetSubnet), and the mask's gradient is passed straight through to the scores.
Scores start from kaiming-uniform noise as in the authors' code (``score_init: magnitude`` starts from |W|
instead, i.e. from the magnitude-pruned network). With ``freeze_weights`` (default True, the CIFAR-10 setting)
only the scores are optimised: no parameter of the classifier changes except through the mask (BatchNorm
running statistics are still re-estimated in train mode, as in the authors' training loop).

How it fits the orchestrator without touching the backbone: the classifier stays a plain ``Classifier``.
The trainer keeps the scores and a copy of the unmasked weights W; the loss runs the network with
``torch.func.functional_call`` on the masked weights W⊙M. At the end of **every** epoch the mask is baked into
the network (weight ← W⊙M), so per-epoch validation, the checkpoint and the model the orchestrator caches are
the masked network with an ordinary state dict; at the start of the next epoch W is restored. Scores and W
travel in ``extra_state`` so a resumed trial continues with the same mask.
"""
from __future__ import annotations

import math

import torch
from torch import nn
from torch.func import functional_call

from methods import register
from methods.base import Method
from methods.um import UM_KNOBS, UMTrainer, floor_loss, masked_layers
from orchestrator.knobs import Bool, Choice, Float, ScorerChoice

SCORE_INITS = ("kaiming", "magnitude")


class TopKMask(torch.autograd.Function):
    """Binary mask keeping the top ``keep`` fraction of ``scores``; straight-through gradient."""

    @staticmethod
    def forward(ctx, scores, keep):
        return topk_mask(scores, keep)

    @staticmethod
    def backward(ctx, g):
        return g, None


def topk_mask(scores: torch.Tensor, keep: float) -> torch.Tensor:
    flat = torch.zeros(scores.numel(), dtype=scores.dtype, device=scores.device)  # contiguous, any input layout
    j = int((1 - keep) * scores.numel())
    flat[scores.flatten().argsort()[j:]] = 1.0
    return flat.view(scores.shape)


def kept_count(numel: int, keep: float) -> int:
    return numel - int((1 - keep) * numel)


class UMAPTrainer(UMTrainer):
    def __init__(self, params, device="cpu", seed=0):
        super().__init__(params, device, seed)
        self.keep = float(params["keep_ratio"])
        if not 0.0 < self.keep <= 1.0:
            raise ValueError(f"umap keep_ratio must be in (0, 1], got {self.keep}")
        self.freeze = bool(params["freeze_weights"])
        self.score_init = params["score_init"]
        if self.score_init not in SCORE_INITS:
            raise ValueError(f"umap score_init must be one of {SCORE_INITS}, got {self.score_init!r}")
        self.names: list[str] = []
        self.scores: dict[str, nn.Parameter] = {}
        self.originals: dict[str, torch.Tensor] = {}

    # ---- set-up
    def prepare(self, model) -> None:
        super().prepare(model)
        g = torch.Generator().manual_seed(int(self.seed) + 1)
        for name, layer in masked_layers(model):
            w = layer.weight.detach()
            if self.score_init == "magnitude":
                s = w.abs().clone()
            else:  # kaiming_uniform_(a=√5), as the authors initialise the scores
                fan_in = w[0].numel()
                bound = math.sqrt(6.0 / ((1 + 5.0) * fan_in))
                s = (torch.rand(w.shape, generator=g) * 2 - 1) * bound
            self.names.append(name)
            self.scores[name] = nn.Parameter(s.to(w.device, w.dtype))
            self.originals[name] = w.clone()

    def param_groups(self, model):
        groups = [{"params": list(self.scores.values())}]
        if not self.freeze:
            groups.append({"params": list(model.parameters())})
        return groups

    # ---- masks
    def masks(self, hard: bool = False) -> dict[str, torch.Tensor]:
        if hard:
            return {n: topk_mask(self.scores[n].detach().abs(), self.keep) for n in self.names}
        return {n: TopKMask.apply(self.scores[n].abs(), self.keep) for n in self.names}

    def _layers(self, model):
        return dict(masked_layers(model))

    def masked_forward(self, model, x):
        layers = self._layers(model)
        masks = self.masks()
        weights = {}
        for n in self.names:
            w = layers[n].weight
            weights[f"{n}.weight"] = (w.detach() if self.freeze else w) * masks[n]
        return functional_call(model, weights, (x,))

    def loss(self, model, x, y, epoch):
        return floor_loss(torch.nn.functional.cross_entropy(self.masked_forward(model, x), y), self.um, self.beta)

    # ---- bake / restore around each epoch
    @torch.no_grad()
    def restore(self, model) -> None:
        layers = self._layers(model)
        for n in self.names:
            layers[n].weight.copy_(self.originals[n])

    @torch.no_grad()
    def bake(self, model) -> None:
        """weight ← W⊙M: the network becomes the plain masked Classifier (what validation and the cache see)."""
        layers = self._layers(model)
        masks = self.masks(hard=True)
        for n in self.names:
            self.originals[n] = layers[n].weight.detach().clone()
            layers[n].weight.mul_(masks[n])

    def train_epoch(self, model, x, y, epoch):
        self.restore(model)
        stats = super().train_epoch(model, x, y, epoch)
        self.bake(model)
        return stats

    def extra_state(self) -> dict:
        return {**super().extra_state(),
                "scores": {n: s.detach().cpu().clone() for n, s in self.scores.items()},
                "originals": {n: w.detach().cpu().clone() for n, w in self.originals.items()}}

    def load_extra_state(self, state: dict) -> None:
        super().load_extra_state(state)
        with torch.no_grad():
            for n, s in state.get("scores", {}).items():
                self.scores[n].copy_(s)
            for n, w in state.get("originals", {}).items():
                self.originals[n] = w.to(self.originals[n].device)


@register("umap")
class UnleashingMaskAdaptivePruning(Method):
    paper = ("Zhu et al., Unleashing Mask: Explore the Intrinsic Out-of-Distribution Detection Capability, ICML 2023 "
             "(UMAP)")
    finetunes = True
    knobs = (
        *UM_KNOBS,
        Float("keep_ratio", 0.8, gt=0, le=1, network=True, help="fraction of each conv/linear layer's weights kept"),
        Bool("freeze_weights", True, network=True, help="optimise only the mask scores (false: the weights too)"),
        Choice("score_init", "kaiming", SCORE_INITS, network=True,
               help="initial mask scores: kaiming-uniform noise, or |W| (the magnitude-pruned network)"),
        ScorerChoice("scorer", "energy", help="post-hoc method scoring the fine-tuned network"),
    )

    def trainer_class(self):
        return UMAPTrainer
