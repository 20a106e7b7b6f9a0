"""Relative Mahalanobis distance score, RMDS (Ren, Fort, Liu, Roy, Padhy & Lakshminarayanan, A Simple Fix to
Mahalanobis Distance for Improving Near-OOD Detection, arXiv:2106.09022, 2021).

Fit on the training features h_i with labels y_i:
    class means μ_k and one shared covariance Σ = 1/N Σ_i (h_i − μ_{y_i})(h_i − μ_{y_i})ᵀ (Lee et al.'s tied
    Gaussians, as :mod:`methods.mahalanobis`);
    a background Gaussian over all training features regardless of label: μ_0 = mean h_i,
    Σ_0 = 1/N Σ_i (h_i − μ_0)(h_i − μ_0)ᵀ.
    MD_k(h) = (h − μ_k)ᵀ Σ⁻¹ (h − μ_k),  MD_0(h) = (h − μ_0)ᵀ Σ_0⁻¹ (h − μ_0),  RMD_k(h) = MD_k(h) − MD_0(h).
Score: S = −min_k RMD_k(h) = MD_0(h) − min_k MD_k(h) (the paper's confidence score; higher = more ID).

No knobs: neither the paper nor OpenOOD v1.5 (``configs/postprocessors/rmds.yml``: no arguments, no sweep) has one.

Deliberate choices and differences:
- Inverses are Moore–Penrose pseudo-inverses with scipy.linalg.pinvh's cut-off (eigenvalues at most
  D·ε·λ_max are dropped), which is what OpenOOD's ``sklearn.covariance.EmpiricalCovariance.precision_`` computes.
  So a constant feature, a dead ReLU unit, or fewer samples than dimensions does not fail: directions without
  training variance add nothing to either distance. With all features constant (e.g. all zero) both distances
  are 0 and every score is 0. No ridge is added (the paper and OpenOOD add none).
- pytorch-ood 0.4's RMD divides neither covariance by N (both distances, and so its score, are N times smaller
  than the paper's: the same ranking) and inverts Σ + 1e-6·I; this follows the paper and OpenOOD (1/N,
  pseudo-inverse). ``scripts/compare_pytorch_ood.py``: S = −N·RMD to 1e-7.
- Computed in float64 (OpenOOD: float32). A class with a single training sample contributes its sample as its
  mean and nothing to Σ. Only the classes present among the fit labels have a Gaussian. With a single class
  μ_1 = μ_0 and Σ = Σ_0, so every score is 0 (the method has nothing to say then).
"""
from __future__ import annotations

import numpy as np

from methods import register
from methods.base import FeatureScorer, Method, Outputs
from methods.gaussians import class_means


def whitener(cov: np.ndarray) -> np.ndarray:
    """L (D×r) with L Lᵀ = pinvh(cov): ‖(h − μ) L‖² = (h − μ)ᵀ cov⁺ (h − μ). Eigenvalues at most D·ε·λ_max are
    dropped, scipy.linalg.pinvh's default cut-off (sklearn's EmpiricalCovariance, OpenOOD's precision)."""
    dim = cov.shape[0]
    if dim == 0:
        return np.zeros((0, 0))
    eigvals, eigvecs = np.linalg.eigh((cov + cov.T) / 2)
    largest = float(np.abs(eigvals).max())
    keep = eigvals > dim * np.finfo(np.float64).eps * largest
    if largest == 0.0:
        keep[:] = False
    return eigvecs[:, keep] / np.sqrt(eigvals[keep])


def _sq_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(len(a), len(b)) squared Euclidean distances, clipped at 0 against rounding."""
    d = (a * a).sum(axis=1)[:, None] - 2.0 * a @ b.T + (b * b).sum(axis=1)[None, :]
    return np.maximum(d, 0.0)


class RmdsScorer(FeatureScorer):
    """``RmdsScorer().fit(train)`` (train: features and labels), then ``score(outputs)`` = −min_k RMD_k(h)."""

    needs_fit = True

    def __init__(self):
        self.classes_: np.ndarray | None = None
        self.class_whitener_: np.ndarray | None = None  # L with L Lᵀ = Σ⁺ (shared class covariance)
        self.white_means_: np.ndarray | None = None  # μ_k L, (classes, r)
        self.background_whitener_: np.ndarray | None = None  # L_0 with L_0 L_0ᵀ = Σ_0⁺
        self.white_background_mean_: np.ndarray | None = None  # μ_0 L_0, (1, r_0)

    def fit(self, train: Outputs, model=None) -> RmdsScorer:
        if train is None or len(train) == 0:
            raise ValueError("rmds needs fit outputs (training features and labels)")
        if train.labels is None:
            raise ValueError("rmds needs the class labels of its fit outputs (Outputs.labels is None)")
        h = np.asarray(train.features, dtype=np.float64)
        if h.ndim != 2:
            raise ValueError(f"rmds: fit features must be (samples, dims), got shape {h.shape}")
        labels = np.asarray(train.labels)
        if labels.shape != (len(h),):
            raise ValueError(f"rmds: {len(h)} fit features but labels of shape {labels.shape}")
        self.classes_, index, means = class_means(h, labels)
        centred = h - means[index]
        self.class_whitener_ = whitener(centred.T @ centred / len(h))
        self.white_means_ = means @ self.class_whitener_
        mean0 = h.mean(axis=0, keepdims=True)
        centred0 = h - mean0
        self.background_whitener_ = whitener(centred0.T @ centred0 / len(h))
        self.white_background_mean_ = mean0 @ self.background_whitener_
        return self

    def _features(self, outputs: Outputs) -> np.ndarray:
        if self.class_whitener_ is None:
            raise RuntimeError("RmdsScorer used before fit")
        h = np.asarray(outputs.features, dtype=np.float64)
        if h.ndim != 2 or h.shape[1] != self.class_whitener_.shape[0]:
            raise ValueError(f"rmds was fitted on {self.class_whitener_.shape[0]}-d features, got shape {h.shape}")
        return h

    def class_distances(self, outputs: Outputs) -> np.ndarray:
        """(N, classes) MD_k(h), columns in ``classes_`` order."""
        h = self._features(outputs)
        return _sq_distances(h @ self.class_whitener_, self.white_means_)

    def background_distances(self, outputs: Outputs) -> np.ndarray:
        """(N,) MD_0(h), the distance under the background Gaussian."""
        h = self._features(outputs)
        return _sq_distances(h @ self.background_whitener_, self.white_background_mean_)[:, 0]

    def score(self, outputs: Outputs) -> np.ndarray:
        return self.background_distances(outputs) - self.class_distances(outputs).min(axis=1)


@register("rmds")
class Rmds(Method):
    reads = "features"
    paper = ("Ren et al., A Simple Fix to Mahalanobis Distance for Improving Near-OOD Detection, "
             "arXiv:2106.09022, 2021")

    def scorer(self, params):
        return RmdsScorer()
