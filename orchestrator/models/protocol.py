"""The classifier protocol every scorer and trainer relies on, and an adapter for any ``torch.nn.Module``.

A network is used through a few members only (:class:`OODClassifier`); the built-in
:class:`~orchestrator.models.backbones.Classifier` implements them, and :func:`adapt` gives them to any classifier
module — a torchvision ResNet, a timm model, one's own — by naming its head (the final linear layer, whose input
is the penultimate feature h) and, optionally, the layer whose output is the last feature map. Inputs are raw images
in [0, 1]; per-channel normalisation is the model's first step, so an input perturbation of ε in raw space is ε/std
in normalised space (ODIN's convention) and methods that work in normalised space (ASCOOD) use
``logits_from_normalized``.

One member is optional (:class:`BlockFeatures`, outside :class:`OODClassifier` so that a network without it still
implements the protocol): ``forward_blocks(x)``, the logits and the output of every block of the backbone, in
order, from one pass — what Gram reads. The built-in classifier implements it; an :func:`adapt`-ed module does not,
and :func:`forward_blocks` then raises a ValueError naming the member.
"""
from __future__ import annotations

import difflib
from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import torch
from torch import nn


@runtime_checkable
class OODClassifier(Protocol):
    """What scorers and trainers may use of a network (``isinstance`` checks that the members exist)."""

    #: Number of logits (classes).
    num_classes: int
    #: Width of the penultimate feature h (KNN's, Mahalanobis', ViM's space).
    feature_dim: int
    #: The final layer; ``head.fc`` is its ``nn.Linear``, whose weight and bias extraction caches with the outputs
    #: (:class:`methods.base.Head`: ViM, ReAct, DICE, fDBD... read them), and ASCOOD gives its own learning rate. A
    #: head that standardises h first (ASCOOD's) says so with ``head.zscore_sigma``.
    head: nn.Module

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """Raw images in [0, 1] → the network's normalised input."""

    def embed_normalized(self, xn: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(h, last feature map or None) of a normalised input: MODE's local features, KIRBY's Grad-CAM."""

    def logits_from_normalized(self, xn: torch.Tensor) -> torch.Tensor:
        """Logits of a normalised input (ASCOOD's saliency and outliers live in normalised space)."""

    def forward_all(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """(logits, h, last feature map or None) of raw images in one pass: what extraction caches per split."""

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of raw images (gradient scorers differentiate through this)."""


@runtime_checkable
class BlockFeatures(Protocol):
    """The optional member of the classifier protocol: intermediate feature maps (Gram's layers)."""

    def forward_blocks(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """(logits, [output of every backbone block, (N, C_l, H_l, W_l), in order]) of raw images in [0, 1] in one
        pass (the network normalises first); the last map is :meth:`OODClassifier.forward_all`'s feature map."""


def forward_blocks(model, x: torch.Tensor, method: str = "this method") -> tuple[torch.Tensor, list[torch.Tensor]]:
    """``model.forward_blocks(x)``, or a ValueError saying that ``method`` needs that optional member."""
    if not isinstance(model, BlockFeatures):
        raise ValueError(f"{method} reads the feature map of every block of the network, through the optional "
                         f"classifier member forward_blocks(x) -> (logits, [block maps]), which "
                         f"{type(model).__name__} lacks (the built-in classifier has it; an adapt()-ed module "
                         f"does not): implement it on the network to use {method}")
    return model.forward_blocks(x)


class LinearHead(nn.Module):
    """Exposes a classifier's final ``nn.Linear`` as ``head.fc`` (the protocol's shape for every head)."""

    def __init__(self, fc: nn.Linear):
        super().__init__()
        self.fc = fc

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.fc(h)


class AdaptedClassifier(nn.Module):
    """Any classifier module seen through :class:`OODClassifier` (build it with :func:`adapt`).

    The penultimate feature h is the input of the named head, flattened; the feature map is the output of the named
    layer; both are captured with forward hooks during one ordinary forward pass of the wrapped module.
    """

    def __init__(self, module: nn.Module, head: str, feature_map: str | None, mean: Sequence[float],
                 std: Sequence[float]):
        super().__init__()
        layers = dict(module.named_modules())
        for role, name in (("head", head), ("feature_map", feature_map)):
            if name is not None and name not in layers:
                known = [n for n in layers if n]
                near = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
                raise ValueError(f"{type(module).__name__} has no layer {name!r} ({role}); "
                                 f"closest: {', '.join(near) or '-'}; layers: {', '.join(known[:40])}")
        fc = layers[head]
        if not isinstance(fc, nn.Linear):
            raise ValueError(f"head {head!r} of {type(module).__name__} is a {type(fc).__name__}, not an nn.Linear; "
                             f"name the final linear layer (scorers read its weight and input)")
        self.module = module
        self.head = LinearHead(fc)  # the same parameters, seen as head.fc
        self.num_classes = fc.out_features
        self.feature_dim = fc.in_features
        self._fc = fc
        self._fmap_layer = layers[feature_map] if feature_map is not None else None
        self.register_buffer("mean", torch.tensor(list(mean), dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(list(std), dtype=torch.float32).view(1, -1, 1, 1))

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std

    def _run(self, xn: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        seen: dict[str, torch.Tensor] = {}
        hooks = [self._fc.register_forward_pre_hook(lambda m, args: seen.__setitem__("h", args[0]))]
        if self._fmap_layer is not None:
            hooks.append(self._fmap_layer.register_forward_hook(lambda m, args, out: seen.__setitem__("fmap", out)))
        try:
            logits = self.module(xn)
        finally:
            for hook in hooks:
                hook.remove()
        return logits, seen["h"].flatten(1), seen.get("fmap")

    def embed_normalized(self, xn: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        _, h, fmap = self._run(xn)
        return h, fmap

    def logits_from_normalized(self, xn: torch.Tensor) -> torch.Tensor:
        return self.module(xn)

    def forward_all(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        return self._run(self.normalize(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.module(self.normalize(x))


def adapt(module: nn.Module, head: str = "fc", feature_map: str | None = None,
          mean: Sequence[float] = (0.485, 0.456, 0.406), std: Sequence[float] = (0.229, 0.224, 0.225)
          ) -> AdaptedClassifier:
    """``module`` seen through :class:`OODClassifier`. Defaults fit torchvision's ResNets (``head="fc"``; pass
    ``feature_map="layer4"`` for scorers that read the last feature map) with ImageNet's normalisation; name the
    layers of other families (timm ViT: ``head="head"``). An unknown layer or a head that is not linear raises
    ValueError naming it."""
    return AdaptedClassifier(module, head, feature_map, mean, std)
