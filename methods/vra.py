"""VRA — variational rectified activation (Xu, Lian, Liu & Tao, VRA: Variational Rectified Activation for
Out-of-distribution Detection, NeurIPS 2023).

Fit: a, b = the low and high percentiles of every ID-training activation (all entries of the training features h,
flattened; ``np.percentile``'s linear interpolation, :mod:`methods.shaping`).
Shape, unit by unit: h' = 0 where h < a; h where a ≤ h ≤ b; b where h > b — the paper's VRA, its piecewise
approximation of the variationally optimal activation (suppress abnormally low and high activations).
Score: S(x) = score(W h' + b_fc) through the head, score = energy (the paper's) by default, or msp / maxlogit.

low_percentile = high_percentile is allowed (a = b: units below it are zeroed, the rest set to it); low > high is a
ValueError.

Deliberate differences:
- The paper's VRA, not its VRA+ (which also adds γ to the units in [a, b]: the authors' ``--lamb``) nor VRA++ (a
  feature-norm term added to the score): neither is in OpenOOD v1.5.
- OpenOOD v1.5's vra_postprocessor clips h to [a, b] (``clip(min=a, max=b)``: units below a become a, not 0) and
  takes the percentiles over the ID *validation* split. This follows the paper and the authors' code
  (``torch.where(x < featmin, 0, x)``): units below a become 0; and the ID training split, as the authors (their
  thresholds come from training features) and METHODS.md: the validation split is what a sweep selects its
  hyperparameters on.
- The authors' CIFAR code takes per-unit quantiles (``torch.quantile(feat, q, dim=0)``: a_d, b_d for each unit d);
  this takes one pair over all activations, as OpenOOD v1.5 and METHODS.md (and as ReAct's threshold).
- Defaults are OpenOOD's (low 10, high 90); the paper searches ηα in {50, 60, 65, 70} and ηβ in {80 … 99} with
  per-unit quantiles: the YAML's ranges hold both.
"""
from __future__ import annotations

import numpy as np

from methods import register
from methods.base import Method
from methods.shaping import SCORE_KNOB, TrainingPercentileScorer, check_percentile
from orchestrator.knobs import Float

DEFAULT_LOW = 10.0
DEFAULT_HIGH = 90.0


class VraScorer(TrainingPercentileScorer):
    """``VraScorer(low_percentile, high_percentile, score).fit(train).score(outputs)``: zero units below the low
    percentile of the training activations, clip those above the high one, score through ``outputs.head``."""

    method = "vra"

    def __init__(self, low_percentile: float = DEFAULT_LOW, high_percentile: float = DEFAULT_HIGH,
                 score: str = "energy"):
        super().__init__(score)
        self.low_percentile = check_percentile(low_percentile, "low_percentile", self.method)
        self.high_percentile = check_percentile(high_percentile, "high_percentile", self.method)
        if self.low_percentile > self.high_percentile:
            raise ValueError(f"vra: low_percentile ({self.low_percentile:g}) must not exceed high_percentile "
                             f"({self.high_percentile:g})")

    def percentiles(self) -> tuple[float, ...]:
        return (self.low_percentile, self.high_percentile)

    def shape(self, h: np.ndarray) -> np.ndarray:
        low, high = self.thresholds()
        return np.where(h < low, 0.0, np.minimum(h, high))


@register("vra")
class Vra(Method):
    reads = "head"
    paper = "Xu et al., VRA: Variational Rectified Activation for Out-of-distribution Detection, NeurIPS 2023"
    knobs = (Float("low_percentile", DEFAULT_LOW, ge=0, le=100,
                   help="a: units below this percentile of all ID-training activations are zeroed"),
             Float("high_percentile", DEFAULT_HIGH, ge=0, le=100,
                   help="b: units above this percentile of all ID-training activations are clipped to it"),
             SCORE_KNOB)

    def scorer(self, params):
        return VraScorer(params["low_percentile"], params["high_percentile"], params["score"])
