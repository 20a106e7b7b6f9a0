"""The interface between the orchestrator and an OOD method.

A :class:`Method` says three things: which knobs change the trained network (so the orchestrator can
cache and share trained models by config hash), how to train it (a :class:`~orchestrator.training.Trainer`,
or ``None`` for the shared cross-entropy classifier), and how to score (a :class:`Scorer`).
Scorers are plain Python objects usable in a notebook: fit on training outputs, then score.
Every score is an ID-ness score: higher = more in-distribution.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np


@dataclass
class Outputs:
    """What a trained classifier produced on one split: logits z, penultimate h, optional last feature map."""

    logits: np.ndarray
    features: np.ndarray
    labels: np.ndarray | None = None
    fmap: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.logits)

    def subset(self, index) -> "Outputs":
        pick = lambda a: None if a is None else a[index]  # noqa: E731
        return Outputs(self.logits[index], self.features[index], pick(self.labels), pick(self.fmap))


class Scorer:
    """Post-hoc OOD scorer. ``needs`` names what it reads: logits, features, fmap, or input (gradients).

    Scorers that read only ``Outputs`` implement :meth:`score`; scorers that need gradients with respect
    to the input (ODIN, i-ODIN, Mahalanobis with ε > 0) set ``needs_input = True`` and implement
    :meth:`score_inputs`, which the evaluator calls with the model and image batches.
    """

    needs: ClassVar[frozenset[str]] = frozenset({"logits"})
    needs_input: ClassVar[bool] = False
    #: True when :meth:`fit` uses training outputs (the evaluator then extracts them).
    needs_fit: ClassVar[bool] = False

    #: True when :meth:`fit` also needs the training images (keyword ``images``: uint8 (N, C, H, W)),
    #: e.g. KIRBY, which erases and inpaints them.
    needs_train_images: ClassVar[bool] = False

    def fit(self, train: Outputs, model: Any = None, **extra) -> "Scorer":
        return self

    def score(self, outputs: Outputs) -> np.ndarray:
        raise NotImplementedError

    def score_inputs(self, model: Any, x: Any) -> np.ndarray:
        raise NotImplementedError(f"{type(self).__name__} scores from cached outputs, not inputs")

    # Work that every trial of a post-hoc sweep would otherwise repeat (KNN's neighbour table, say). The sweep's
    # preparation task calls sweep_work once on a fitted scorer with the shared classifier's OutputStore; each
    # trial's fitted scorer receives the result through adopt(). Both are optional.
    def sweep_work(self, store: Any) -> Any:
        return None

    def adopt(self, work: Any) -> None:
        pass


@dataclass
class Knobs:
    """A trial's hyperparameters, split into those that change the network and the post-hoc rest."""

    training: dict[str, Any] = field(default_factory=dict)
    posthoc: dict[str, Any] = field(default_factory=dict)


class Method:
    """One OOD detection method. Subclass, decorate with ``@methods.register("name")``, ship a YAML."""

    name: ClassVar[str] = ""
    #: Short citation shown by ``list`` and logged to MLflow.
    paper: ClassVar[str] = ""
    #: Set when the implementation substitutes something the paper needs (logged as tag ``substitute``).
    substitute: ClassVar[str | None] = None
    #: Knobs that change the trained network; every other knob is post-hoc and never triggers training.
    training_knobs: ClassVar[frozenset[str]] = frozenset()
    #: Head of the classifier: "linear", or "zscore" (ASCOOD's standardised-feature head, knob ``sigma``).
    head: ClassVar[str] = "linear"
    #: True: the trainer fine-tunes the cached cross-entropy classifier (UM, MODE, OAML) instead of
    #: training from scratch; the base network is trained once and shared like any cached model.
    finetunes: ClassVar[bool] = False

    def trains(self) -> bool:
        """True when the method trains its own network (reported epoch by epoch); False = post-hoc."""
        return self.trainer_class() is not None

    def trainer_class(self):
        """The :class:`~orchestrator.training.Trainer` subclass, or None for the shared CE classifier."""
        return None

    def scorer(self, params: dict[str, Any]) -> Scorer:
        raise NotImplementedError

    def split(self, params: dict[str, Any]) -> Knobs:
        knobs = Knobs()
        for key, value in params.items():
            (knobs.training if key in self.training_knobs else knobs.posthoc)[key] = value
        return knobs
