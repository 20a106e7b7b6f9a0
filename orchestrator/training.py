"""Epoch-by-epoch supervised training. Methods that train subclass :class:`Trainer` and change
:meth:`Trainer.loss` (and, where the paper does, :meth:`Trainer.param_groups`).

Every trainer reads the recipe knobs (:data:`orchestrator.recipe.RECIPE`: epochs, lr, batch_size, momentum,
weight_decay, nesterov; SGD with cosine annealing per step, as OpenOOD trains its CIFAR baselines). A fine-tuning
trainer
(UM, MODE, OAML...) subclasses :class:`FineTuner`: it starts from the cached cross-entropy classifier and reads
its own ``finetune_epochs`` / ``finetune_lr`` knobs, so the recipe keeps describing the base network.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F


def to_float(x_uint8: np.ndarray | torch.Tensor, device) -> torch.Tensor:
    """uint8 images → float tensor in [0, 1] on ``device``, channels-last (the models' layout: on a 2-core CPU
    it makes the small CNN's forward ~3x and its training step ~1.4x faster; see scripts/system_speed.py)."""
    t = torch.as_tensor(x_uint8)
    return t.to(device, non_blocking=True).float().div_(255.0).contiguous(memory_format=torch.channels_last)


def pick_device() -> torch.device:
    """CUDA when this process was given a GPU (by Ray or by the user), CPU otherwise."""
    if not torch.cuda.is_available():
        return torch.device("cpu")
    try:
        import ray

        if ray.is_initialized() and not ray.get_gpu_ids():
            return torch.device("cpu")
    except Exception:  # noqa: BLE001 - outside Ray: any visible GPU is ours
        pass
    return torch.device("cuda")


def augment(x: torch.Tensor, kind: str, generator: torch.Generator, pad: int = 4) -> torch.Tensor:
    """The recipe's training augmentation of a float batch (N, C, H, W), drawn from ``generator`` (CPU):
    ``flip`` mirrors each image with probability 1/2; ``crop_flip`` first takes a random H×W crop of the image
    zero-padded by ``pad`` pixels (torchvision's RandomCrop(size, padding=4) + RandomHorizontalFlip, as OpenOOD
    trains CIFAR). ``none`` returns ``x``."""
    if kind == "none":
        return x
    if kind not in ("flip", "crop_flip"):
        raise ValueError(f"unknown augmentation {kind!r}; choose none, flip or crop_flip")
    n, _, h, w = x.shape
    if kind == "crop_flip":
        padded = F.pad(x, (pad, pad, pad, pad))
        offsets = torch.randint(0, 2 * pad + 1, (n, 2), generator=generator).tolist()
        x = torch.stack([padded[i, :, r:r + h, c:c + w] for i, (r, c) in enumerate(offsets)])
    mirror = (torch.rand(n, generator=generator) < 0.5).to(x.device).view(n, 1, 1, 1)
    return torch.where(mirror, x.flip(3), x).contiguous(memory_format=torch.channels_last)


class EpochStreams:
    """A trainer's own random streams, re-seeded at every epoch from (seed, epoch, tag): a NumPy generator
    (``numpy``) and a CPU torch generator (``torch``). A trial resumed from a checkpoint (taken at the end of an
    epoch) then draws what it would have drawn (mixing weights, permutations, virtual outliers); ``tag`` keeps two
    streams of one trainer apart. Call ``at(epoch)`` before each draw."""

    def __init__(self, seed: int, tag: int):
        self.seed, self.tag, self.epoch = int(seed), int(tag), None
        self.numpy: np.random.Generator | None = None
        self.torch: torch.Generator | None = None

    def at(self, epoch: int) -> EpochStreams:
        if epoch != self.epoch:
            self.epoch = epoch
            self.numpy = np.random.default_rng([self.seed, epoch, self.tag])
            self.torch = torch.Generator().manual_seed(int(self.numpy.integers(2 ** 62)))
        return self


class Trainer:
    """Cross-entropy training with SGD + cosine schedule; subclasses override :meth:`loss`.

    After :meth:`setup`, ``self.bench`` is the benchmark (ID training data, auxiliary outliers) and
    ``self.models`` a :class:`ModelProvider` for other cached networks (a teacher, the CE baseline).
    """

    epochs_knob: str = "epochs"
    lr_knob: str = "lr"
    #: Default of ``epochs_knob`` / ``lr_knob`` when they are not the recipe's own keys.
    default_epochs: int = 10
    default_lr: float = 0.01

    def __init__(self, params: dict[str, Any], device: torch.device | str = "cpu", seed: int = 0):
        self.params = params
        self.device = torch.device(device)
        self.epochs = int(params.get(self.epochs_knob, self.default_epochs))
        self.lr = float(params.get(self.lr_knob, self.default_lr))
        self.batch_size = int(params.get("batch_size", 128))
        self.augment = params.get("augment", "none")
        self.seed = seed
        self.optimizer = None
        self.scheduler = None
        self.bench = None
        self.models = None

    # ---- what subclasses change
    def param_groups(self, model) -> list[dict]:
        return [{"params": list(model.parameters())}]

    def loss(self, model, x: torch.Tensor, y: torch.Tensor, epoch: int) -> torch.Tensor:
        return F.cross_entropy(model(x), y)

    # ---- the loop
    def prepare(self, model) -> None:
        """Hook run once before the optimiser is built (estimate a loss floor, build a projector...)."""

    def setup(self, model, bench, models: ModelProvider | None = None) -> None:
        self.bench, self.models = bench, models
        self.prepare(model)
        p = self.params
        n_train = len(bench.id_train)
        self.optimizer = torch.optim.SGD(self.param_groups(model), lr=self.lr,
                                         momentum=float(p.get("momentum", 0.9)),
                                         weight_decay=float(p.get("weight_decay", 5e-4)),
                                         nesterov=bool(p.get("nesterov", True)))
        steps = max(1, self.epochs * math.ceil(n_train / self.batch_size))
        self.scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(self.optimizer, T_max=steps)

    def train_epoch(self, model, x: np.ndarray, y: np.ndarray, epoch: int) -> dict[str, float]:
        """One pass over (x uint8, y) in a seeded random order; returns the mean loss."""
        model.train()
        order = np.random.default_rng([self.seed, epoch]).permutation(len(x))
        flips = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
        total, count = 0.0, 0
        for start in range(0, len(order), self.batch_size):
            idx = np.sort(order[start:start + self.batch_size])
            if len(idx) < 2:  # BatchNorm needs two samples
                continue
            xb = augment(to_float(x[idx], self.device), self.augment, flips)
            yb = torch.as_tensor(y[idx]).to(self.device)
            loss = self.loss(model, xb, yb, epoch)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"non-finite training loss ({loss.item()}) at epoch {epoch}")
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            self.scheduler.step()
            total += float(loss.detach()) * len(idx)
            count += len(idx)
        return {"train/loss": total / max(count, 1)}

    def extra_state(self) -> dict:
        """Tensors a subclass must keep across a checkpoint (e.g. a trainable projector's weights)."""
        return {}

    def load_extra_state(self, state: dict) -> None:
        pass

    def state_dict(self) -> dict:
        return {"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                "extra": self.extra_state()}

    def load_state_dict(self, state: dict) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.load_extra_state(state.get("extra", {}))


class FineTuner(Trainer):
    """A trainer that fine-tunes the cached cross-entropy classifier (the method sets ``finetunes = True``):
    its own epochs and lr knobs, so the recipe's keep describing the base network."""

    epochs_knob = "finetune_epochs"
    lr_knob = "finetune_lr"
    default_epochs = 10
    default_lr = 0.01


class ModelProvider:
    """Gives a trainer other trained networks of the same benchmark, from the cache (trained on a miss)."""

    def __init__(self, get):
        self._get = get

    def classifier(self, **overrides):
        """The cross-entropy classifier of this benchmark's recipe, with ``overrides`` (e.g. backbone="resnet18")."""
        return self._get(overrides)
