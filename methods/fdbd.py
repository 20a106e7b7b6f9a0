"""fDBD — fast decision-boundary-based detector (Liu & Qin, Fast Decision Boundary based Out-of-Distribution
Detector, ICML 2024).

With x the input of the final linear layer (z = W x + b; x = ``head.fc_input(h)``, the penultimate feature h or
ASCOOD's standardisation of it) and ŷ = argmax z, the distance from x to the decision boundary between ŷ and j is
    d_j(x) = |(w_ŷ − w_j)·x + b_ŷ − b_j| / ‖w_ŷ − w_j‖ = |z_ŷ − z_j| / ‖w_ŷ − w_j‖,
and the score is the average distance, regularised by the feature's deviation from the training mean:
    S = (1/(C − 1)) Σ_{j≠ŷ} d_j(x) / ‖x − μ_train‖₂,   μ_train = mean of x over the (whole) training split.
Knob ``normalizer``: ``train_mean`` divides by ‖x − μ_train‖ (the paper's score, default), ``norm`` by the
feature norm ‖x‖ (OpenOOD v1.5's alternative, its ``distance_as_normalizer: False``), ``none`` leaves the average
distance unregularised (the paper's ablation). OpenOOD's APS grid is {train_mean, norm}.

Checked against the authors' code (litianliu/fDBD-OOD ``run_cifar.py``) and OpenOOD v1.5
(``fdbd_postprocessor.py``): both sum the C − 1 distances instead of averaging them (a constant factor C − 1, same
ranking), compute |z_ŷ − z_j| from the logits, and divide by ‖h − mean of training h‖ in L2. Deliberate
differences:

- The knob is a choice of normaliser, not OpenOOD's boolean: ``distance_as_normalizer: False`` means "divide by
  ‖h‖" there, not "no normaliser", so a boolean named after the paper's regulariser would mislead.
- Distances use the logits recomputed from the head in float64 (``head.logits``), which the extraction checked
  against the network's own.
- Two classes with identical weight rows (‖w_ŷ − w_j‖ = 0) have no boundary in feature space: their logits differ
  by the constant b_ŷ − b_j whatever x is (OpenOOD divides by zero, giving inf or nan). Such a j is left out of the
  average, which runs over the remaining classes; with none left (one class, or all rows identical) the average
  distance is 0. The rows are compared exactly: nearly identical rows are a genuine, distant boundary.
- A feature exactly at the training mean (or 0, for ``norm``) would divide by 0; the normaliser is floored at
  ``FLOOR`` = 1e-12, so such a feature scores highest (most in-distribution) among equally distant ones.
"""
from __future__ import annotations

import numpy as np

from methods import register
from methods.base import Head, HeadScorer, Method, Outputs
from orchestrator.knobs import Choice

NORMALIZERS = ("train_mean", "norm", "none")
DEFAULT_NORMALIZER = "train_mean"
#: Floor of the normaliser ‖x − μ_train‖ (or ‖x‖): a feature at the mean scores finitely.
FLOOR = 1e-12


def check_normalizer(normalizer) -> str:
    if normalizer not in NORMALIZERS:
        raise ValueError(f"fdbd: normalizer must be one of {list(NORMALIZERS)}, got {normalizer!r}")
    return normalizer


def boundary_norms(weight: np.ndarray) -> np.ndarray:
    """(C, C) matrix of ‖w_i − w_j‖, computed from explicit differences (exact zeros for identical rows)."""
    w = np.asarray(weight, dtype=np.float64)
    return np.stack([np.linalg.norm(w - w[i], axis=1) for i in range(len(w))]) if len(w) else np.zeros((0, 0))


class FdbdScorer(HeadScorer):
    """``FdbdScorer(normalizer).fit(train).score(outputs)``; both outputs carry the final layer (:class:`Head`)."""

    needs_fit = True  # the training mean (cheap; fitted whatever the normaliser)

    def __init__(self, normalizer: str = DEFAULT_NORMALIZER):
        self.normalizer = check_normalizer(normalizer)
        self.train_mean_: np.ndarray | None = None
        self.weight_: np.ndarray | None = None  # the fitted head's weight, to reuse its boundary norms
        self.norms_: np.ndarray | None = None  # (C, C) ‖w_i − w_j‖

    def fit(self, train: Outputs, model=None) -> FdbdScorer:
        if train is None or len(train) == 0:
            raise ValueError("fdbd needs fit outputs (training features and the final layer)")
        head = self.head_of(train, "fdbd")
        self.train_mean_ = head.fc_input(train.features).mean(axis=0)
        self.weight_ = np.asarray(head.weight, dtype=np.float64)
        self.norms_ = boundary_norms(self.weight_)
        return self

    def _norms(self, head: Head) -> np.ndarray:
        weight = np.asarray(head.weight, dtype=np.float64)
        if self.weight_ is not None and weight.shape == self.weight_.shape and np.array_equal(weight, self.weight_):
            return self.norms_
        return boundary_norms(weight)

    def average_distance(self, outputs: Outputs) -> np.ndarray:
        """Mean distance to the decision boundaries between the predicted class and every other class."""
        head = self.head_of(outputs, "fdbd")
        z = head.logits(outputs.features)
        top = z.argmax(axis=1)
        rows = np.arange(len(z))
        norms = self._norms(head)[top]  # (N, C): ‖w_ŷ − w_j‖
        valid = norms > 0  # excludes j = ŷ and rows identical to w_ŷ
        gaps = np.abs(z[rows, top][:, None] - z)
        distances = np.where(valid, gaps / np.where(valid, norms, 1.0), 0.0)
        count = valid.sum(axis=1)
        return distances.sum(axis=1) / np.maximum(count, 1)

    def score(self, outputs: Outputs) -> np.ndarray:
        if self.train_mean_ is None:
            raise RuntimeError("FdbdScorer used before fit")
        distance = self.average_distance(outputs)
        if self.normalizer == "none":
            return distance
        x = self.head_of(outputs, "fdbd").fc_input(outputs.features)
        if x.shape[1] != self.train_mean_.shape[0]:
            raise ValueError(f"fdbd was fitted on {self.train_mean_.shape[0]}-d features, got {x.shape[1]}-d")
        centred = x - self.train_mean_ if self.normalizer == "train_mean" else x
        return distance / np.maximum(np.linalg.norm(centred, axis=1), FLOOR)


@register("fdbd")
class Fdbd(Method):
    reads = "head"
    paper = "Liu & Qin, Fast Decision Boundary based Out-of-Distribution Detector, ICML 2024"
    knobs = (Choice("normalizer", DEFAULT_NORMALIZER, NORMALIZERS,
                    help="divide the mean boundary distance by ‖x − training mean‖ (train_mean), ‖x‖ (norm) "
                         "or nothing (none)"),)

    def scorer(self, params):
        return FdbdScorer(params["normalizer"])
