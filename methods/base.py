"""The interface between the orchestrator and an OOD method.

A :class:`Method` declares its knobs (:mod:`orchestrator.knobs`: type, domain, default, whether it changes the
network), how to train (a :class:`~orchestrator.training.Trainer`, or ``None`` for the shared cross-entropy
classifier) and how to score (a :class:`Scorer`). Scorers are plain Python objects usable in a notebook: fit on
training outputs, then score. Every score is an ID-ness score: higher = more in-distribution.

Scorers are typed by what they read from the classifier (:mod:`orchestrator.models.protocol`):
:class:`LogitScorer` (logits), :class:`FeatureScorer` (penultimate features, and logits if it wants),
:class:`HeadScorer` (features and the classifier's final layer, :class:`Head`: feature shaping, boundary
distances), :class:`FeatureMapScorer` (the last feature map) — all four score cached :class:`Outputs` — and
:class:`InputGradientScorer` (gradients with respect to the input: it runs the model itself) and :class:`NetworkScorer`
(runs images through the model without gradients: intermediate blocks, Gram). The last two score image batches
(:attr:`Scorer.scores_images`). A post-hoc method says which in its class attribute ``reads`` (one of
``methods.registry.READS``), which ``list`` groups by.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from methods.registry import METHODS, catalog
from orchestrator.knobs import Knob, KnobError, Params, check_value
from orchestrator.recipe import RECIPE
from orchestrator.registry import closest


@dataclass(frozen=True)
class Head:
    """The classifier's final layer as arrays, so that head-based scorers (ReAct, DICE, fDBD...) need no network.

    ``logits(h) = fc_input(h) @ weight.T + bias``, where ``fc_input`` is the identity for a linear head and, when
    ``zscore_sigma`` is set, ASCOOD's standardisation σ·(h − mean(h)) / (std(h) + 1e-6) (per sample over the
    feature dimensions; std with Bessel's correction, as ``torch.std``). Extraction checks that these arrays
    reproduce the network's logits before it stores them (:mod:`orchestrator.forward`).
    """

    weight: np.ndarray  # (classes, feature_dim)
    bias: np.ndarray  # (classes,)
    zscore_sigma: float | None = None

    def fc_input(self, h: np.ndarray) -> np.ndarray:
        """What the final linear layer multiplies: h itself, or its per-sample standardisation (ASCOOD's head)."""
        h = np.asarray(h, dtype=np.float64)
        if self.zscore_sigma is None:
            return h
        centred = h - h.mean(axis=1, keepdims=True)
        std = centred.std(axis=1, ddof=1, keepdims=True) if h.shape[1] > 1 else np.zeros((len(h), 1))
        return self.zscore_sigma * centred / (std + 1e-6)

    def logits(self, h: np.ndarray, weight: np.ndarray | None = None) -> np.ndarray:
        """Logits of (shaped) features h, in float64; ``weight`` replaces the layer's (DICE's masked weight)."""
        w = np.asarray(self.weight if weight is None else weight, dtype=np.float64)
        return self.fc_input(h) @ w.T + np.asarray(self.bias, dtype=np.float64)


@dataclass
class Outputs:
    """What a trained classifier produced on one split: logits z, penultimate h, optional last feature map, and
    the final layer (:class:`Head`; None where extraction could not describe it as arrays)."""

    logits: np.ndarray
    features: np.ndarray
    labels: np.ndarray | None = None
    fmap: np.ndarray | None = None
    head: Head | None = None

    def __len__(self) -> int:
        return len(self.logits)

    def subset(self, index) -> Outputs:
        def pick(a):
            return None if a is None else a[index]

        return Outputs(self.logits[index], self.features[index], pick(self.labels), pick(self.fmap), self.head)


# ---------------------------------------------------------------------------------------------- scorers
class Scorer:
    """Post-hoc OOD scorer. Subclass one of the typed bases below, not this class."""

    #: True when :meth:`fit` uses training outputs (the evaluator then extracts them).
    needs_fit: ClassVar[bool] = False
    #: The split :meth:`fit` reads when :attr:`needs_fit`: the training split, or ``"id_val"`` for a scorer whose
    #: paper fits on held-out ID data (temperature scaling's NLL): never an OOD or test split.
    fit_split: ClassVar[str] = "id_train"
    #: True when :meth:`fit` also needs the training images (keyword ``images``: uint8 (N, C, H, W)),
    #: e.g. KIRBY, which erases and inpaints them.
    needs_train_images: ClassVar[bool] = False

    def fit(self, train: Outputs | None, model: Any = None, **extra) -> Scorer:
        return self

    @property
    def uses_input_gradients(self) -> bool:
        """True when this instance scores images through the model with input gradients (see
        :class:`InputGradientScorer`)."""
        return False

    @property
    def scores_images(self) -> bool:
        """True when this instance scores image batches through the model (:meth:`score_inputs`, which the evaluator
        then calls) instead of cached outputs (:meth:`score`): gradient scorers and :class:`NetworkScorer`."""
        return self.uses_input_gradients

    @property
    def reads_feature_map(self) -> bool:
        """True when this instance needs :attr:`Outputs.fmap` (see :class:`FeatureMapScorer`)."""
        return False

    @property
    def reads_network(self) -> bool:
        """True when :meth:`fit` or scoring uses the network itself, not only its outputs: scorers of image batches,
        scorers fitted on training images, and any subclass that reads the model otherwise (it then overrides this;
        the final layer's weights come with the outputs, :class:`Head`). A post-hoc evaluator loads the network (and
        PyTorch) only for such scorers."""
        return self.scores_images or self.needs_train_images

    def score(self, outputs: Outputs) -> np.ndarray:
        raise NotImplementedError(f"{type(self).__name__} does not score cached outputs")

    def score_inputs(self, model: Any, x: Any) -> np.ndarray:
        raise NotImplementedError(f"{type(self).__name__} scores from cached outputs, not inputs")

    # Work that every trial of a post-hoc sweep would otherwise repeat (KNN's neighbour table, say): named arrays,
    # which the model cache keeps beside the network's outputs. The sweep's preparation calls sweep_work once on
    # a fitted scorer with the shared classifier's OutputStore (or reads it from the cache); each trial's fitted
    # scorer receives the result through adopt(). Both are optional.
    def sweep_work(self, store: Any) -> dict[str, Any] | None:
        return None

    def adopt(self, work: dict[str, Any]) -> None:
        pass

    @property
    def shares_sweep_work(self) -> bool:
        return type(self).sweep_work is not Scorer.sweep_work and not self.scores_images


class LogitScorer(Scorer):
    """Reads :attr:`Outputs.logits` only (MSP, energy, entropy...)."""


class FeatureScorer(Scorer):
    """Reads :attr:`Outputs.features`, the penultimate features h (and may read the logits too: ViM)."""


class HeadScorer(FeatureScorer):
    """Reads the penultimate features and the classifier's final layer (:attr:`Outputs.head`, cached with the
    outputs): feature shaping scored through the head (ReAct, ASH, DICE), distances to decision boundaries (fDBD)."""

    @staticmethod
    def head_of(outputs: Outputs, method: str) -> Head:
        """``outputs.head``, or a ValueError saying why a head-based method cannot score this network."""
        if outputs is None or outputs.head is None:
            raise ValueError(f"{method} reads the classifier's final layer, but these outputs carry none: the "
                             f"network's logits are not a linear layer of its penultimate features (nor ASCOOD's "
                             f"z-scored one), so {method} cannot score it")
        return outputs.head


class FeatureMapScorer(Scorer):
    """Reads :attr:`Outputs.fmap`, the last feature map (N, C, H, W) — extracted only for such scorers (CSD)."""

    @property
    def reads_feature_map(self) -> bool:
        return True


class InputGradientScorer(Scorer):
    """Scores images through the model with input gradients (ODIN's perturbation): implements
    :meth:`score_inputs`, which the evaluator calls with the model and image batches.

    A subclass that also derives from an output-reading base may switch per instance (ODIN with ε = 0 reads cached
    logits): override :attr:`uses_input_gradients`.
    """

    @property
    def uses_input_gradients(self) -> bool:
        return True


class NetworkScorer(Scorer):
    """Scores images through the model without input gradients (Gram's intermediate block maps): implements
    :meth:`score_inputs` (under ``torch.no_grad``), which the evaluator calls with the model and image batches,
    like a gradient scorer's; reads the network (:attr:`reads_network`)."""

    @property
    def scores_images(self) -> bool:
        return True

    @property
    def reads_network(self) -> bool:
        return True


# ---------------------------------------------------------------------------------------------- methods
class Method:
    """One OOD detection method. Subclass, decorate with ``@methods.register("name")``, ship a YAML."""

    name: ClassVar[str] = ""
    #: Short citation shown by ``list`` and logged to MLflow.
    paper: ClassVar[str] = ""
    #: What a post-hoc method reads of the classifier by default, one of ``methods.registry.READS`` (``list``
    #: groups by it; a contract test checks it against the scorer's type). Methods that train leave it empty.
    reads: ClassVar[str] = ""
    #: Set when the implementation substitutes something the paper needs (logged as tag ``substitute``).
    substitute: ClassVar[str | None] = None
    #: Every knob this method's trainer and scorer read, besides the recipe's (``orchestrator.recipe.RECIPE``).
    #: Write it with literals and module constants: ``list`` reads it from source.
    knobs: ClassVar[tuple[Knob, ...]] = ()
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

    def scorer(self, params: Mapping[str, Any]) -> Scorer:
        """The scorer for ``params``: a post-hoc method builds its own; a method that declares a scorer knob
        (every trained method) scores with the post-hoc method that knob names, so it need not define this."""
        if self.scorer_knob() is not None:
            return self.delegated_scorer(params)
        raise NotImplementedError(f"method {self.name} declares neither a scorer nor a scorer knob")

    # ---- the declared contract
    @classmethod
    def own_knobs(cls) -> dict[str, Knob]:
        return {k.name: k for k in cls.knobs}

    def scorer_knob(self) -> Knob | None:
        """The knob naming a post-hoc method that scores this method's network (``ScorerChoice``), if any."""
        return next((k for k in self.knobs if k.kind == "scorer"), None)

    def scorer_choices(self) -> list[str]:
        """The post-hoc methods this method's scorer knob accepts."""
        # read from source: listing them imports no other method module
        return [row["name"] for row in catalog() if row["kind"] == "post-hoc" and row["name"] != self.name]

    def declared(self, scorers: Iterable[str] | None = None) -> dict[str, Knob]:
        """Every knob a configuration of this method may set: the recipe's, its own, and those of the post-hoc
        methods in ``scorers`` (default: its scorer knob's default) when it delegates scoring to one."""
        out = {k.name: k for k in RECIPE}
        out.update(self.own_knobs())
        knob = self.scorer_knob()
        if knob is not None:
            for name in [knob.default] if scorers is None else scorers:
                if name in METHODS:
                    for k, v in METHODS.load(name).own_knobs().items():
                        out.setdefault(k, v)  # own knobs win over the delegate's
        return out

    def network_knobs(self) -> frozenset[str]:
        """The knobs that change this method's trained network (the model cache keys on their values)."""
        return frozenset(k for k, v in self.declared().items() if v.network)

    def check_scorer(self, name: Any) -> str:
        """``name`` when it is a post-hoc method this method may delegate scoring to; KnobError listing them."""
        choices = self.scorer_choices()
        if name not in choices:
            raise KnobError(f"{self.name}: unknown scorer {name!r}{closest(str(name), choices)} "
                            f"(valid: {', '.join(choices)})")
        return name

    def resolve(self, config: Mapping[str, Any], recipe: Mapping[str, Any] | None = None) -> Params:
        """The :class:`~orchestrator.knobs.Params` of one trial: ``recipe`` (the benchmark's) overridden by
        ``config``, every value checked against its declaration, every declared knob present (defaults filled).
        An unknown name or a value outside its domain raises :class:`~orchestrator.knobs.KnobError`."""
        values = {**(recipe or {}), **config}
        knob = self.scorer_knob()
        scorers = None
        if knob is not None:
            scorers = [self.check_scorer(values.get(knob.name, knob.default))]
        declared = self.declared(scorers)
        for key in list(values):
            if key not in declared:
                raise KnobError(f"unknown knob {key!r} for method {self.name}{closest(key, list(declared))}")
            values[key] = check_value(declared[key], values[key])
        filled = {name: k.default for name, k in declared.items()}
        filled.update(values)
        return Params(filled, declared, owner=f"method {self.name!r}")

    def delegated_scorer(self, params: Mapping[str, Any]) -> Scorer:
        """The scorer of the post-hoc method that this method's scorer knob names."""
        knob = self.scorer_knob()
        if knob is None:
            raise TypeError(f"method {self.name} declares no scorer knob")
        return METHODS.load(self.check_scorer(params.get(knob.name, knob.default)))().scorer(params)

