"""The training recipe's knobs, shared by every method (declared once, here; torch-free).

Every method's network depends on them — a post-hoc method's through the shared cross-entropy classifier — so
they are ``network=True`` knobs of every method, and a benchmark's recipe (``Benchmark.recipe``) sets their
values for that benchmark. SGD with cosine annealing per step, as OpenOOD trains its CIFAR baselines
(:class:`orchestrator.training.Trainer` reads them). Fine-tuning methods add :func:`finetune_knobs`, so the recipe
keeps describing the base network they start from.
"""
from __future__ import annotations

from orchestrator.knobs import Bool, Choice, Float, Int, Knob
from orchestrator.models import BACKBONES

#: Training-time augmentations a benchmark's recipe may declare (orchestrator.training.augment applies them).
AUGMENTATIONS = ("none", "flip", "crop_flip")

RECIPE: tuple[Knob, ...] = (
    Choice("backbone", "small_cnn", BACKBONES.names(), network=True, help="registered encoder (list: Backbones)"),
    Int("epochs", 10, ge=1, network=True, help="training epochs of the network"),
    Float("lr", 0.01, gt=0, network=True, help="SGD learning rate (cosine-annealed per step)"),
    Int("batch_size", 128, ge=2, network=True, help="training batch size"),
    Float("momentum", 0.9, ge=0, lt=1, network=True, help="SGD momentum"),
    Float("weight_decay", 5e-4, ge=0, network=True, help="SGD weight decay"),
    Bool("nesterov", True, network=True, help="Nesterov momentum"),
    Choice("augment", "none", AUGMENTATIONS, network=True,
           help="training augmentation: crop_flip = random crop with 4-pixel zero padding + horizontal flip "
                "(OpenOOD's CIFAR recipe), flip = horizontal flip only"),
)

RECIPE_KNOBS = frozenset(k.name for k in RECIPE)


def finetune_knobs(epochs: int = 10, lr: float = 0.01) -> tuple[Knob, ...]:
    """``finetune_epochs`` and ``finetune_lr``: the fine-tuning schedule of a method that starts from the cached
    cross-entropy classifier (:class:`orchestrator.training.FineTuner` reads them)."""
    return (Int("finetune_epochs", epochs, ge=1, network=True, help="fine-tuning epochs"),
            Float("finetune_lr", lr, gt=0, network=True, help="fine-tuning learning rate"))
