"""ReAct — rectified activations (Sun, Guo & Li, ReAct: Out-of-distribution Detection With Rectified Activations,
NeurIPS 2021).

Fit: c = the p-th percentile of every ID-training activation (all entries of the training features h, flattened;
``np.percentile``'s linear interpolation, :mod:`methods.shaping`).
Score: S(x) = score(W·min(h, c) + b), score = energy (logsumexp, the paper's) by default, or msp / maxlogit;
the head is the network's own (:class:`~methods.base.Head`: with ASCOOD's z-scored head the clipped h is
standardised before the layer, as in the network).

p = 100 clips at the largest training activation: features no larger than it score as plain energy. p = 0 clips
every unit at the smallest one.

Deliberate differences:
- OpenOOD v1.5 (react_postprocessor.py) takes the percentile over the ID *validation* split; this follows the paper
  (and METHODS.md): the ID training data. The validation split is what a sweep selects its hyperparameters on
  (val/auroc), which should not also fit the threshold.
- pytorch-ood 0.4's ReAct (``ReAct(threshold=None, percentile=0.9)``) estimates c the same way, with
  ``np.percentile`` over all training activations, but takes the percentile as a fraction; here it is in percent,
  as in the paper and OpenOOD (``scripts/compare_pytorch_ood.py``: equal to 3e-16).
"""
from __future__ import annotations

import numpy as np

from methods import register
from methods.base import Method
from methods.shaping import SCORE_KNOB, TrainingPercentileScorer, check_percentile
from orchestrator.knobs import Float

DEFAULT_PERCENTILE = 90.0


class ReactScorer(TrainingPercentileScorer):
    """``ReactScorer(percentile, score).fit(train).score(outputs)``: clip h at the percentile of the training
    activations, score the clipped logits through ``outputs.head``."""

    method = "react"

    def __init__(self, percentile: float = DEFAULT_PERCENTILE, score: str = "energy"):
        super().__init__(score)
        self.percentile = check_percentile(percentile, "percentile", self.method)

    def percentiles(self) -> tuple[float, ...]:
        return (self.percentile,)

    @property
    def threshold(self) -> float:
        """c, the clipping threshold."""
        return self.thresholds()[0]

    def shape(self, h: np.ndarray) -> np.ndarray:
        return np.minimum(h, self.threshold)


@register("react")
class React(Method):
    reads = "head"
    paper = "Sun, Guo & Li, ReAct: Out-of-distribution Detection With Rectified Activations, NeurIPS 2021"
    knobs = (Float("percentile", DEFAULT_PERCENTILE, ge=0, le=100,
                   help="clip h at this percentile of all ID-training activations"),
             SCORE_KNOB)

    def scorer(self, params):
        return ReactScorer(params["percentile"], params["score"])
