"""DICE — directed sparsification of the final layer (Sun & Li, DICE: Leveraging Sparsification for
Out-of-Distribution Detection, ECCV 2022).

Fit: ū = the mean ID-training input of the final layer (``Head.fc_input(h)``: h itself, or ASCOOD's standardised
h); contributions V = W ⊙ ū (V_cd = W_cd·ū_d); t = the p-th percentile of all C·D entries of V
(``np.percentile``'s linear interpolation, :mod:`methods.shaping`); W̃ = W where V > t, else 0.
Score: S(x) = score(W̃·fc_input(h) + b), score = energy (the paper's) by default, or msp / maxlogit.

Entries whose V equals t are dropped (strict >, as the authors' code, OpenOOD v1.5 and pytorch-ood 0.4), so ties at
the threshold all go. p = 100 drops every weight (every sample scores score(b)).

Deliberate differences:
- At p = 0 every weight is kept (W̃ = W: plain energy), the "top 100 %" the paper's sparsity means; the reference
  code's strict inequality would drop the entries equal to the minimum of V.
- The mask is fitted on the training split, as the paper, the authors' code and OpenOOD v1.5 (its ``train``
  loader).
"""
from __future__ import annotations

import numpy as np

from methods import register
from methods.base import Method, Outputs
from methods.shaping import SCORE_KNOB, ShapingScorer, check_percentile
from orchestrator.knobs import Float

DEFAULT_SPARSITY = 90.0


class DiceScorer(ShapingScorer):
    """``DiceScorer(sparsity, score).fit(train).score(outputs)``: mask the final layer's weights whose mean
    training contribution is below the sparsity percentile, score through ``outputs.head`` with the masked
    weight."""

    method = "dice"
    needs_fit = True

    def __init__(self, sparsity: float = DEFAULT_SPARSITY, score: str = "energy"):
        super().__init__(score)
        self.sparsity = check_percentile(sparsity, "sparsity", self.method)
        self.mean_input_: np.ndarray | None = None  # ū (D,)
        self.threshold_: float | None = None  # t
        self.mask_: np.ndarray | None = None  # V > t (C, D)
        self.masked_weight_: np.ndarray | None = None  # W̃ (C, D)

    def fit(self, train: Outputs | None, model=None) -> DiceScorer:
        if train is None or len(train) == 0:
            raise ValueError("dice needs fit outputs: the training features, whose mean contribution to each logit "
                             "selects the weights it keeps")
        head = self.head_of(train, self.method)
        weight = np.asarray(head.weight, dtype=np.float64)
        if head.zscore_sigma is None:  # fc_input is h: average it without a float64 copy
            self.mean_input_ = np.mean(train.features, axis=0, dtype=np.float64)
        else:
            self.mean_input_ = head.fc_input(train.features).mean(axis=0)
        if weight.shape[1] != self.mean_input_.shape[0]:
            raise ValueError(f"dice: the final layer expects {weight.shape[1]}-d features, the fit features are "
                             f"{self.mean_input_.shape[0]}-d")
        contribution = weight * self.mean_input_[None, :]
        self.threshold_ = float(np.percentile(contribution, self.sparsity))
        self.mask_ = contribution > self.threshold_ if self.sparsity > 0 else np.ones(weight.shape, dtype=bool)
        self.masked_weight_ = np.where(self.mask_, weight, 0.0)
        return self

    def shaped_logits(self, outputs: Outputs) -> np.ndarray:
        if self.masked_weight_ is None:
            raise RuntimeError("DiceScorer used before fit")
        head = self.head_of(outputs, self.method)
        if np.shape(head.weight) != self.masked_weight_.shape:
            raise ValueError(f"dice was fitted on a {self.masked_weight_.shape} final layer, these outputs carry a "
                             f"{np.shape(head.weight)} one")
        return head.logits(outputs.features, weight=self.masked_weight_)


@register("dice")
class Dice(Method):
    reads = "head"
    paper = "Sun & Li, DICE: Leveraging Sparsification for Out-of-Distribution Detection, ECCV 2022"
    knobs = (Float("sparsity", DEFAULT_SPARSITY, ge=0, le=100,
                   help="drop the final layer's weights whose mean ID-training contribution is below this percentile"),
             SCORE_KNOB)

    def scorer(self, params):
        return DiceScorer(params["sparsity"], params["score"])
