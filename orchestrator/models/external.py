"""Bring your own model: ``--model SPEC [--weights FILE] [--model-layers HEAD[,FEATURE_MAP]]``.

SPEC is one of

- ``torchvision:NAME`` — ``torchvision.models.get_model(NAME, weights=None, num_classes=<benchmark's>)`` with the
  state dict in ``--weights`` (nothing is downloaded; ImageNet normalisation);
- ``timm:NAME`` — ``timm.create_model(NAME, pretrained=False, num_classes=<benchmark's>)`` (``pip install timm``),
  weights from ``--weights`` (ImageNet normalisation);
- ``openood:resnet18_32x32`` / ``openood:resnet18_224x224`` — OpenOOD v1.5's classifiers, loading its checkpoint
  files (``best.ckpt``: a state dict, possibly saved from ``DataParallel`` with ``module.`` prefixes). The 32×32
  network uses the benchmark's own normalisation (OpenOOD normalises CIFAR with its dataset statistics), the 224
  one ImageNet's;
- ``package.module:function`` — any function returning an ``nn.Module`` classifier, called as
  ``function(num_classes=<benchmark's>)`` (normalisation: the benchmark's); ``--weights`` optional.

The module is seen through :func:`orchestrator.models.protocol.adapt`: the head is ``--model-layers``' first name,
else the family's (``fc`` for ResNets, else the last ``nn.Linear``), the feature map its second name, else the
family's (``layer4`` for ResNets, none otherwise). Weights load with ``torch.load(weights_only=True)``; the file's
SHA-256 is part of the feature-cache key, so other weights never reuse cached features.
"""
from __future__ import annotations

import hashlib
import importlib
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from orchestrator.models.backbones import BasicBlock
from orchestrator.models.protocol import AdaptedClassifier, adapt

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
OPENOOD = {"resnet18_32x32": 32, "resnet18_224x224": 224}


class ModelError(ValueError):
    """A model spec, weights file or layer that cannot be used (the CLI turns it into one line, exit 2)."""


@dataclass(frozen=True)
class ModelSpec:
    family: str  # torchvision | timm | openood | function
    name: str
    weights: str | None = None
    head: str | None = None
    feature_map: str | None = None
    sha256: str = ""

    @property
    def text(self) -> str:
        return self.name if self.family == "function" else f"{self.family}:{self.name}"


def parse(spec: str, weights: str | None = None, layers: str | None = None) -> ModelSpec:
    """Check the spec's form and the weights file (and hash it); nothing is built yet."""
    family, sep, name = spec.partition(":")
    if not sep or not name:
        raise ModelError(f"--model {spec!r}: expected torchvision:NAME, timm:NAME, openood:resnet18_32x32|"
                         f"resnet18_224x224 or package.module:function")
    if family not in ("torchvision", "timm", "openood"):
        family, name = "function", spec
    if family == "openood" and name not in OPENOOD:
        raise ModelError(f"--model {spec!r}: OpenOOD networks known here: {', '.join(f'openood:{n}' for n in OPENOOD)}")
    if family in ("torchvision", "timm", "openood") and weights is None:
        raise ModelError(f"--model {spec} needs --weights FILE (a state dict; nothing is downloaded at run time)")
    digest = ""
    if weights is not None:
        path = Path(weights)
        if not path.is_file():
            raise ModelError(f"--weights {weights}: no such file")
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        digest = h.hexdigest()
        weights = str(path.resolve())
    head, _, fmap = (layers or "").partition(",")
    return ModelSpec(family, name, weights, head or None, fmap or None, digest)


class OpenOODResNet18(nn.Module):
    """OpenOOD v1.5's ``ResNet18_32x32`` layout (3×3 stem, no max-pool; parameter names as in its checkpoints:
    conv1, bn1, layer1-4 of basic blocks with ``shortcut`` projections, fc), written here to load those files."""

    def __init__(self, num_classes: int):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        widths, cin, stages = (64, 128, 256, 512), 64, []
        for i, width in enumerate(widths):
            stride = 1 if i == 0 else 2
            stages.append(nn.Sequential(BasicBlock(cin, width, stride), BasicBlock(width, width, 1)))
            cin = width
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(512, num_classes)

    def forward(self, x):
        x = torch.relu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(self.avgpool(x).flatten(1))


def _module(spec: ModelSpec, num_classes: int) -> nn.Module:
    if spec.family == "torchvision":
        import torchvision

        try:
            return torchvision.models.get_model(spec.name, weights=None, num_classes=num_classes)
        except ValueError as exc:
            raise ModelError(f"--model {spec.text}: {exc}") from None
    if spec.family == "timm":
        try:
            import timm
        except ImportError:
            raise ModelError(f"--model {spec.text} needs timm: pip install timm") from None
        try:
            return timm.create_model(spec.name, pretrained=False, num_classes=num_classes)
        except RuntimeError as exc:
            raise ModelError(f"--model {spec.text}: {exc}") from None
    if spec.family == "openood":
        if spec.name == "resnet18_224x224":  # OpenOOD's 224 network is torchvision's ResNet-18 layout
            import torchvision

            return torchvision.models.resnet18(weights=None, num_classes=num_classes)
        return OpenOODResNet18(num_classes)
    module_name, _, function = spec.name.partition(":")
    try:
        fn = getattr(importlib.import_module(module_name), function)
    except (ImportError, AttributeError) as exc:
        raise ModelError(f"--model {spec.name}: cannot import it ({type(exc).__name__}: {exc})") from None
    module = fn(num_classes=num_classes)
    if not isinstance(module, nn.Module):
        raise ModelError(f"--model {spec.name} returned a {type(module).__name__}, not a torch.nn.Module")
    return module


def _load_weights(module: nn.Module, spec: ModelSpec) -> None:
    try:
        state = torch.load(spec.weights, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - not a state dict torch can read safely: say which file
        raise ModelError(f"--weights {spec.weights}: not a state dict torch.load(weights_only=True) can read "
                         f"({type(exc).__name__}: {str(exc).splitlines()[0][:160] if str(exc) else ''})") from None
    for key in ("state_dict", "model", "net"):  # common checkpoint wrappers
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict):
        raise ModelError(f"--weights {spec.weights}: expected a state dict, found a {type(state).__name__}")
    if state and all(k.startswith("module.") for k in state):  # saved from DataParallel (OpenOOD does)
        state = {k[len("module."):]: v for k, v in state.items()}
    try:
        module.load_state_dict(state)
    except RuntimeError as exc:
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        raise ModelError(f"--weights {spec.weights} does not fit {spec.text}: {' '.join(lines[1:3])[:300]}") from None


def _default_layers(module: nn.Module) -> tuple[str, str | None]:
    names = dict(module.named_modules())
    if isinstance(names.get("fc"), nn.Linear):
        return "fc", "layer4" if "layer4" in names else None
    linear = [n for n, m in names.items() if isinstance(m, nn.Linear)]
    if not linear:
        raise ModelError(f"{type(module).__name__} has no nn.Linear layer to use as the head; name it with "
                         f"--model-layers HEAD[,FEATURE_MAP]")
    return linear[-1], None


def build(spec: ModelSpec, num_classes: int, bench_mean, bench_std) -> AdaptedClassifier:
    """The classifier of ``spec`` for a benchmark with ``num_classes`` classes, weights loaded, adapted."""
    module = _module(spec, num_classes)
    if spec.weights is not None:
        _load_weights(module, spec)
    head, fmap = _default_layers(module)
    imagenet = spec.family in ("torchvision", "timm") or spec.name == "resnet18_224x224"
    mean, std = (IMAGENET_MEAN, IMAGENET_STD) if imagenet else (tuple(bench_mean), tuple(bench_std))
    try:
        model = adapt(module, head=spec.head or head, feature_map=spec.feature_map or fmap, mean=mean, std=std)
    except ValueError as exc:
        raise ModelError(f"--model {spec.text}: {exc}") from None
    if model.num_classes != num_classes:
        raise ModelError(f"--model {spec.text} has {model.num_classes} outputs, the benchmark {num_classes} classes")
    return model.eval()


def check_on(model: AdaptedClassifier, spec: ModelSpec, images: torch.Tensor) -> None:
    """One forward pass on two of the benchmark's images (raw, in [0, 1]): a model that cannot take their size or
    channels fails here, before any trial, with what it said."""
    channels = model.mean.shape[1]
    if images.shape[1] != channels:
        raise ModelError(f"--model {spec.text} takes {channels}-channel images; the benchmark's have "
                         f"{images.shape[1]} (a custom benchmark's `channels: {channels}` converts them)")
    expected = OPENOOD.get(spec.name) if spec.family == "openood" else None
    if expected is not None and images.shape[-1] != expected:
        raise ModelError(f"--model {spec.text} takes {expected}×{expected} images; the benchmark's are "
                         f"{images.shape[-2]}×{images.shape[-1]}")
    try:
        with torch.no_grad():
            logits, h, _ = model.forward_all(images)
    except Exception as exc:  # noqa: BLE001 - whatever the module raised on this input
        raise ModelError(f"--model {spec.text} cannot run on the benchmark's {tuple(images.shape[1:])} images "
                         f"({type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''})") from None
    if logits.shape[1] != model.num_classes or h.shape[1] != model.feature_dim:
        raise ModelError(f"--model {spec.text}: the head's input is not the penultimate feature (got logits "
                         f"{tuple(logits.shape)}, h {tuple(h.shape)}); name it with --model-layers")
