"""DMR — Disentangling Marginal Representations (Choi & Na, CVPRW 2024) [Dasol-Choi/DMR], post-hoc.

The cross-entropy classifier stays frozen (ID accuracy unchanged by construction); a rejection head is trained
on its penultimate features h (training split) against synthetic OOD features and S = −(rejection logit).

**Substitute:** the authors synthesise OOD images with a class-conditional StyleGAN-XL, the marginal of a sample
of class c being its latent minus the class-centre latent. We do the same arithmetic in the frozen classifier's
penultimate feature space instead of StyleGAN-XL latents: m = h − μ_y (μ_c = class centroid of the training
features), ``variant``:

* ``single`` (default): the sample's own marginal m_i;
* ``multiple``: the mean of the marginals of k training samples of k distinct classes;
* ``without_dmr`` (ablation): the mean of the raw, uncentred features of k samples of k distinct classes;

each result multiplied by the amplification s (3) with probability p (0.5). ``anchor``: ``origin`` places the
marginal as is (the literal m = h − μ_y); ``mean`` adds the global feature mean back, the analogue of decoding a
latent offset around StyleGAN's average latent. Post-ReLU features are non-negative, so origin-anchored marginals
(with negative entries) can be told from ID by sign alone; compare both with the knob. The rejection head
(:func:`methods.outlier_synthesis.train_rejection_head`): feature → 2048 → 1, BCE (OOD = 1), each ID sample swapped
for its synthetic counterpart with probability ood_prob = 0.5, SGD lr 0.01, wd 4e-4, momentum 0.8 nesterov,
cosine, 10 epochs. Knobs: see ``DMR.knobs``.
"""
from __future__ import annotations

import numpy as np

from methods import register
from methods.base import Method, Outputs
from methods.outlier_synthesis import ANCHORS, HEAD_KNOBS, VARIANTS, DMRSynthesizer, RejectionScorer, head_kwargs
from orchestrator.knobs import Choice, Float, Int

SUBSTITUTE = "feature-space marginal representations instead of StyleGAN-XL latents"


class DMRScorer(RejectionScorer):
    def __init__(self, variant: str = "single", s: float = 3.0, p: float = 0.5, k: int = 5, anchor: str = "origin",
                 **head_kw):
        super().__init__(**head_kw)
        self.variant, self.s, self.p, self.k, self.anchor = variant, float(s), float(p), int(k), anchor
        if not 0.0 <= self.p <= 1.0:
            raise ValueError(f"dmr p must be in [0, 1], got {p}")

    def fit(self, train: Outputs, model=None, **extra) -> DMRScorer:
        if train is None or train.labels is None:
            raise ValueError("dmr needs labelled training outputs to fit")
        k = min(self.k, len(np.unique(train.labels)))
        self.synth_ = DMRSynthesizer(train.features, train.labels, self.variant, self.s, self.p, k, self.anchor)
        return self.train_head(train.features, self.synth_)


@register("dmr")
class DMR(Method):
    reads = "features"
    paper = "Choi & Na, Disentangling Marginal Representations for Out-of-Distribution Detection, CVPRW 2024"
    substitute = SUBSTITUTE
    knobs = (
        Choice("variant", "single", VARIANTS, help="single: own marginal; multiple: mean of k marginals; "
                                                   "without_dmr: mean of k raw features (ablation)"),
        Float("s", 3.0, gt=0, help="amplification of a synthetic feature"),
        Float("p", 0.5, ge=0, le=1, help="probability of amplifying by s"),
        Int("k", 5, ge=2, help="samples of distinct classes mixed (multiple, without_dmr; clamped to the class count)"),
        Choice("anchor", "origin", ANCHORS, help="origin: the marginal as is; mean: plus the global feature mean"),
        *HEAD_KNOBS,
    )

    def scorer(self, params):
        return DMRScorer(params["variant"], params["s"], params["p"], params["k"], params["anchor"],
                         **head_kwargs(params))
