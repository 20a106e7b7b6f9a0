"""KL matching (Hendrycks et al., Scaling Out-of-Distribution Detection for Real-World Settings, ICML 2022).

Fit: the template d_k of class k is the mean softmax of the fit samples *predicted* as k (no labels needed).
Score: S = −KL(p(x) ‖ d_ŷ) with p = softmax(z(x)) and ŷ = argmax p (METHODS.md; OpenOOD's KLM takes the minimum
KL over all templates instead, which usually but not always picks d_ŷ).

A class that no fit sample is predicted as has no template; it falls back to the one-hot vector e_k (floored at
``FLOOR`` inside the logarithm so the KL stays finite), which makes inputs predicted as that class look
suspicious, as they should: the model never predicted that class on the training data.
"""
from __future__ import annotations

import numpy as np
from scipy.special import log_softmax

from methods import register
from methods.base import LogitScorer, Method, Outputs

#: Floor for template probabilities inside log(d): keeps KL finite for zero entries (one-hot fallbacks).
FLOOR = 1e-12


class KLMatchingScorer(LogitScorer):
    needs_fit = True

    def __init__(self):
        self.templates_: np.ndarray | None = None
        self.empty_classes_: list[int] = []

    def fit(self, train: Outputs, model=None) -> KLMatchingScorer:
        if train is None or len(train) == 0:
            raise ValueError("klmatching needs fit outputs (logits of the training split) to build its templates")
        p = np.exp(log_softmax(np.asarray(train.logits, dtype=np.float64), axis=1))
        num_classes = p.shape[1]
        pred = p.argmax(axis=1)
        templates = np.eye(num_classes)
        self.empty_classes_ = []
        for k in range(num_classes):
            chosen = pred == k
            if chosen.any():
                templates[k] = p[chosen].mean(axis=0)
            else:
                self.empty_classes_.append(k)
        self.templates_ = templates
        return self

    def score(self, outputs: Outputs) -> np.ndarray:
        if self.templates_ is None:
            raise RuntimeError("KLMatchingScorer.score called before fit")
        logp = log_softmax(np.asarray(outputs.logits, dtype=np.float64), axis=1)
        if logp.shape[1] != self.templates_.shape[1]:
            raise ValueError(f"klmatching was fitted on {self.templates_.shape[1]} classes, got logits with "
                             f"{logp.shape[1]}")
        p = np.exp(logp)
        logq = np.log(np.maximum(self.templates_[p.argmax(axis=1)], FLOOR))
        return -(p * (logp - logq)).sum(axis=1)


@register("klmatching")
class KLMatching(Method):
    reads = "logits"
    paper = "Hendrycks et al., Scaling Out-of-Distribution Detection for Real-World Settings, ICML 2022"

    def scorer(self, params):
        return KLMatchingScorer()
