"""SHE — simplified Hopfield energy (Zhang, Fu, Chen, Du, Li, Wang, Liu, Han & Zhang, Out-of-Distribution Detection
based on In-Distribution Data Patterns Memorization with Modern Hopfield Energy, ICLR 2023).

Fit (training features h, logits and labels): the stored pattern of class k is the mean penultimate feature of the
training samples of class k that the classifier predicts correctly,
    m_k = mean{h_i : y_i = k and argmax z_i = k}.
Score, with ŷ = argmax z the predicted class:
    S = ⟨h, m_ŷ⟩                              (``metric: inner_product``, the paper's, default)
      = ⟨h, m_ŷ⟩ / (‖h‖·‖m_ŷ‖)                 (``cosine``; 0 when either vector is 0)
      = −‖h − m_ŷ‖                             (``euclidean``)
The alternative metrics are those OpenOOD v1.5 offers (``she_postprocessor.py``, ``distance``; its config fixes
``inner_product`` and sweeps nothing). pytorch-ood 0.4 (``detector/she.py``) implements the inner product only
(negated: it returns an outlier score). Both, and the authors' code (zjs975584714/SHE_ood_detection,
``generate_stored_pattern.py``), build the patterns from the correctly classified training samples, as here.

Deliberate differences (edge cases the references leave undefined):

- A class with no correctly classified training sample gets the mean feature of all its training samples
  (OpenOOD takes the mean of an empty set, nan, and then scores nan for every input predicted as that class;
  pytorch-ood 0.4 refuses to fit, "No correct predictions for class k"; the authors' code fails). Recorded in
  ``fallback_classes_``.
- A class with no training sample at all gets the zero pattern (listed in ``empty_classes_``): S = 0 for the
  inner product and cosine, −‖h‖ for the Euclidean metric, i.e. inputs predicted as a class the training data
  never showed score at the bottom of the non-negative range of post-ReLU features.
"""
from __future__ import annotations

import numpy as np

from methods import register
from methods.base import FeatureScorer, Method, Outputs
from orchestrator.knobs import Choice

METRICS = ("inner_product", "cosine", "euclidean")
DEFAULT_METRIC = "inner_product"
#: Below this product of norms the cosine is taken as 0 (a zero feature or pattern).
COSINE_EPS = 1e-12


def check_metric(metric) -> str:
    if metric not in METRICS:
        raise ValueError(f"she: metric must be one of {list(METRICS)}, got {metric!r}")
    return metric


class SheScorer(FeatureScorer):
    """``SheScorer(metric).fit(train).score(outputs)``; fitting needs the training labels."""

    needs_fit = True

    def __init__(self, metric: str = DEFAULT_METRIC):
        self.metric = check_metric(metric)
        self.patterns_: np.ndarray | None = None  # (C, D) m_k
        self.fallback_classes_: list[int] = []
        self.empty_classes_: list[int] = []

    def fit(self, train: Outputs, model=None) -> SheScorer:
        if train is None or len(train) == 0:
            raise ValueError("she needs fit outputs (training features, logits and labels)")
        if train.labels is None:
            raise ValueError("she needs the class labels of its fit outputs (Outputs.labels is None)")
        h = np.asarray(train.features, dtype=np.float64)
        z = np.asarray(train.logits, dtype=np.float64)
        labels = np.asarray(train.labels)
        num_classes = z.shape[1]
        if labels.shape != (len(h),) or not np.all(np.mod(labels, 1) == 0) or labels.min() < 0 \
                or labels.max() >= num_classes:
            raise ValueError(f"she: labels must be {len(h)} class indices in [0, {num_classes})")
        labels = labels.astype(np.int64)
        correct = z.argmax(axis=1) == labels
        patterns = np.zeros((num_classes, h.shape[1]))
        self.fallback_classes_, self.empty_classes_ = [], []
        for k in range(num_classes):
            members = labels == k
            chosen = members & correct
            if chosen.any():
                patterns[k] = h[chosen].mean(axis=0)
            elif members.any():
                patterns[k] = h[members].mean(axis=0)
                self.fallback_classes_.append(k)
            else:
                self.empty_classes_.append(k)
        self.patterns_ = patterns
        return self

    def score(self, outputs: Outputs) -> np.ndarray:
        if self.patterns_ is None:
            raise RuntimeError("SheScorer used before fit")
        z = np.asarray(outputs.logits)
        h = np.asarray(outputs.features, dtype=np.float64)
        if z.shape[1] != len(self.patterns_) or h.shape[1] != self.patterns_.shape[1]:
            raise ValueError(f"she was fitted on {len(self.patterns_)} classes and {self.patterns_.shape[1]}-d "
                             f"features, got {z.shape[1]} and {h.shape[1]}")
        m = self.patterns_[z.argmax(axis=1)]
        if self.metric == "euclidean":
            return -np.linalg.norm(h - m, axis=1)
        dot = (h * m).sum(axis=1)
        if self.metric == "inner_product":
            return dot
        scale = np.linalg.norm(h, axis=1) * np.linalg.norm(m, axis=1)
        return np.where(scale > COSINE_EPS, dot / np.maximum(scale, COSINE_EPS), 0.0)


@register("she")
class She(Method):
    reads = "features"
    paper = ("Zhang et al., Out-of-Distribution Detection based on In-Distribution Data Patterns Memorization with "
             "Modern Hopfield Energy, ICLR 2023")
    knobs = (Choice("metric", DEFAULT_METRIC, METRICS,
                    help="similarity of h to the predicted class's stored pattern"),)

    def scorer(self, params):
        return SheScorer(params["metric"])
