"""Classifiers that expose logits, the penultimate feature h and the last feature map.

Inputs are raw images in [0, 1]; per-channel normalisation is the model's first step, so an input
perturbation of ε in raw space equals ε/std in normalised space (ODIN's convention) and methods that
work in the normalised space (ASCOOD) call :meth:`Classifier.logits_from_normalized`.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from orchestrator.models import BACKBONES


class SmallCNN(nn.Module):
    """Three conv blocks for small grey images (8×8 digits, 28×28 Fashion-MNIST)."""

    def __init__(self, in_channels: int, image_size: int, widths=(32, 64, 128)):
        super().__init__()
        layers, size, prev = [], image_size, in_channels
        for i, width in enumerate(widths):
            layers += [nn.Conv2d(prev, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True)]
            # Pool down to at most ~8×8 before the last block, always at least once.
            if i < len(widths) - 1 and (size > 8 or i == len(widths) - 2):
                layers.append(nn.MaxPool2d(2))
                size //= 2
            prev = width
        self.body = nn.Sequential(*layers)
        self.out_dim = prev

    def forward(self, x):
        return self.body(x)

    def block_outputs(self, x) -> list[torch.Tensor]:
        """The output of every conv-bn-relu(-pool) block, in order (the last is :meth:`forward`'s)."""
        layers, outs = list(self.body), []
        for i, layer in enumerate(layers):
            x = layer(x)
            following = layers[i + 1] if i + 1 < len(layers) else None
            if isinstance(layer, nn.MaxPool2d) or (isinstance(layer, nn.ReLU)
                                                   and not isinstance(following, nn.MaxPool2d)):
                outs.append(x)
        return outs


class BasicBlock(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet18(nn.Module):
    """CIFAR-style ResNet-18 (3×3 stem, no max-pool), as in OpenOOD; last map 512×H/8×W/8."""

    def __init__(self, in_channels: int = 3, image_size: int = 32):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, 64, 3, 1, 1, bias=False), nn.BatchNorm2d(64),
                                  nn.ReLU(inplace=True))
        blocks, cin = [], 64
        for cout, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
            blocks += [BasicBlock(cin, cout, stride), BasicBlock(cout, cout, 1)]
            cin = cout
        self.layers = nn.Sequential(*blocks)
        self.out_dim = 512

    def forward(self, x):
        return self.layers(self.stem(x))

    def block_outputs(self, x) -> list[torch.Tensor]:
        """The stem's output and each stage's (two BasicBlocks; the last is :meth:`forward`'s): OpenOOD's
        ResNet18_32x32 ``feature_list``, its last entry un-pooled."""
        x = self.stem(x)
        outs, blocks = [x], list(self.layers)
        for i, block in enumerate(blocks):
            x = block(x)
            # a stage ends before a block that changes resolution or width (a non-identity shortcut), and at the end
            if i + 1 == len(blocks) or len(blocks[i + 1].shortcut) > 0:
                outs.append(x)
        return outs


class ZScoreHead(nn.Module):
    """ASCOOD's head: logits = fc(σ·(h − mean(h)) / (std(h) + 1e-6)), statistics per sample over dims."""

    def __init__(self, dim: int, num_classes: int, sigma: float):
        super().__init__()
        self.fc = nn.Linear(dim, num_classes)
        self.sigma = float(sigma)

    @property
    def zscore_sigma(self) -> float:
        """σ, which the cached :class:`methods.base.Head` carries so head-based scorers can apply this head."""
        return self.sigma

    def forward(self, h):
        h = h - h.mean(dim=1, keepdim=True)
        h = self.sigma * h / (h.std(dim=1, keepdim=True) + 1e-6)
        return self.fc(h)


class LinearHead(nn.Module):
    def __init__(self, dim: int, num_classes: int):
        super().__init__()
        self.fc = nn.Linear(dim, num_classes)

    def forward(self, h):
        return self.fc(h)


class Classifier(nn.Module):
    """normalise → encoder → global average pool (h) → head (logits): the built-in implementation of
    :class:`orchestrator.models.protocol.OODClassifier`."""

    def __init__(self, encoder: nn.Module, num_classes: int, mean, std, head: nn.Module):
        super().__init__()
        self.encoder = encoder
        self.head = head
        self.num_classes = num_classes
        self.feature_dim = encoder.out_dim
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def normalize(self, x):
        return (x - self.mean) / self.std

    def embed_normalized(self, xn):
        """(h, fmap) for a normalised input."""
        fmap = self.encoder(xn)
        return fmap.mean(dim=(2, 3)), fmap

    def logits_from_normalized(self, xn):
        return self.head(self.embed_normalized(xn)[0])

    def forward_all(self, x):
        """(logits, h, fmap) for a raw input in [0, 1]."""
        h, fmap = self.embed_normalized(self.normalize(x))
        return self.head(h), h, fmap

    def forward(self, x):
        return self.logits_from_normalized(self.normalize(x))

    def forward_blocks(self, x):
        """(logits, [output of every encoder block, in order]) for a raw input in [0, 1], in one pass: the optional
        member of the protocol (:class:`orchestrator.models.protocol.BlockFeatures`) that Gram reads."""
        blocks = getattr(self.encoder, "block_outputs", None)
        if blocks is None:
            raise ValueError(f"encoder {type(self.encoder).__name__} has no block_outputs(x), the list of its "
                             f"blocks' outputs that Classifier.forward_blocks returns")
        maps = blocks(self.normalize(x))
        return self.head(maps[-1].mean(dim=(2, 3))), maps


@BACKBONES.register("small_cnn", description="three conv blocks for small grey images (digits, Fashion-MNIST)")
def small_cnn(in_channels: int, image_size: int) -> nn.Module:
    return SmallCNN(in_channels, image_size)


@BACKBONES.register("resnet18", description="CIFAR-style ResNet-18 (3×3 stem, no max-pool), as OpenOOD trains it")
def resnet18(in_channels: int, image_size: int) -> nn.Module:
    return ResNet18(in_channels, image_size)


def build_classifier(backbone: str, in_channels: int, image_size: int, num_classes: int, mean, std,
                     head: str = "linear", sigma: float | None = None) -> Classifier:
    """A :class:`Classifier` around the registered encoder ``backbone``; ``head`` linear or zscore (ASCOOD's,
    which takes ``sigma``)."""
    encoder = BACKBONES.load(backbone)(in_channels, image_size)
    if head == "linear":
        head_module = LinearHead(encoder.out_dim, num_classes)
    elif head == "zscore":
        head_module = ZScoreHead(encoder.out_dim, num_classes, 0.5 if sigma is None else sigma)
    else:
        raise ValueError(f"unknown head {head!r}; choose linear or zscore")
    return Classifier(encoder, num_classes, mean, std, head_module).to(memory_format=torch.channels_last)
