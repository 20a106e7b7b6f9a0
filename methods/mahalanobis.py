"""Mahalanobis distance score (Lee, Lee, Lee & Shin, A Simple Unified Framework for Detecting OOD Samples and
Adversarial Attacks, NeurIPS 2018), on the penultimate feature h only (no feature ensemble, no logistic regression).

Fit on training features: class means μ_c and one shared (tied) covariance Σ = 1/N Σ_i (h_i − μ_{y_i})(h_i − μ_{y_i})ᵀ
(the authors' ``EmpiricalCovariance`` on class-centred features), plus ``ridge``·I; precision P = Σ⁻¹.
S = max_c −(h − μ_c)ᵀ P (h − μ_c) (METHODS.md drops the authors' factor ½; rankings are the same).

Optional input preprocessing (ε > 0): x̃ = x − ε·sign(∇ₓ d_ĉ(h(x))), ĉ the closest class, i.e. a step that lowers
the closest-class distance; S is then computed on h(x̃). As for ODIN, ε is a raw-space step (= ε/std_c in
normalised space, the authors' convention) and sign(0) = +1. With ε = 0 the scorer reads cached features only
(``needs_input`` is False).
"""
from __future__ import annotations

import numpy as np
import torch

from methods import register
from methods.base import FeatureScorer, InputGradientScorer, Method, Outputs
from methods.gaussians import class_means
from methods.memo import array_digest
from methods.odin import memoised_direction, real_knob, step_sign
from orchestrator.knobs import Float

DEFAULT_EPSILON = 0.0
DEFAULT_RIDGE = 1e-6


class MahalanobisScorer(InputGradientScorer, FeatureScorer):
    """Class-conditional Gaussians with a shared covariance on the penultimate features; with ε > 0 the input is
    first perturbed against the gradient of the closest class's distance (``uses_input_gradients``)."""

    needs_fit = True

    def __init__(self, epsilon: float = DEFAULT_EPSILON, ridge: float = DEFAULT_RIDGE):
        self.epsilon = real_knob("mahalanobis", "epsilon", epsilon)
        self.ridge = real_knob("mahalanobis", "ridge", ridge)
        self.classes_: np.ndarray | None = None
        self.means_: np.ndarray | None = None
        self.precision_: np.ndarray | None = None
        self.fit_digest_: str | None = None

    def fit(self, train: Outputs, model=None) -> MahalanobisScorer:
        if train is None or len(train) == 0:
            raise ValueError("mahalanobis needs fit outputs (training features and labels)")
        if train.labels is None:
            raise ValueError("mahalanobis needs the class labels of its fit outputs (Outputs.labels is None)")
        h = np.asarray(train.features, dtype=np.float64)
        self.classes_, index, means = class_means(h, np.asarray(train.labels))
        centred = h - means[index]
        cov = centred.T @ centred / len(h) + self.ridge * np.eye(h.shape[1])
        self.means_ = means
        self.precision_ = np.linalg.pinv(cov, hermitian=True)
        self.fit_digest_ = None
        return self

    @property
    def uses_input_gradients(self) -> bool:
        return self.epsilon > 0

    def _check_fitted(self):
        if self.means_ is None:
            raise RuntimeError("MahalanobisScorer used before fit")

    def distances(self, features: np.ndarray) -> np.ndarray:
        """(N, classes) squared Mahalanobis distances (h − μ_c)ᵀ P (h − μ_c), columns in ``classes_`` order."""
        self._check_fitted()
        h = np.asarray(features, dtype=np.float64)
        hp = h @ self.precision_
        mu_p = self.means_ @ self.precision_
        d = (hp * h).sum(axis=1, keepdims=True) - 2.0 * hp @ self.means_.T + (mu_p * self.means_).sum(axis=1)[None]
        return np.maximum(d, 0.0)

    def score_features(self, features: np.ndarray) -> np.ndarray:
        return -self.distances(features).min(axis=1)

    def score(self, outputs: Outputs) -> np.ndarray:
        if self.epsilon > 0:
            raise ValueError(f"mahalanobis with epsilon={self.epsilon} perturbs the input: call "
                             "score_inputs(model, x); cached features are enough only for epsilon = 0")
        return self.score_features(outputs.features)

    def perturb(self, model, x: torch.Tensor) -> torch.Tensor:
        """x̃ = x − ε·sign(∇ₓ d_ĉ(h(x))) for a batch of raw images (ĉ = closest class of each sample)."""
        self._check_fitted()
        x = x.detach()
        if self.epsilon == 0:
            return x.clone()
        return (x - self.epsilon * memoised_direction(self._direction_key(), model, x,
                                                      lambda: self._direction(model, x))).detach()

    def _direction_key(self) -> str:
        """What the direction depends on besides the network and the batch: the fit (means, precision)."""
        if getattr(self, "fit_digest_", None) is None:
            self.fit_digest_ = f"mahalanobis|{array_digest(self.means_)}|{array_digest(self.precision_)}"
        return self.fit_digest_

    def _direction(self, model, x: torch.Tensor) -> torch.Tensor:
        """sign(∇ₓ d_ĉ(h(x))), sign(0) = +1."""
        means = torch.as_tensor(self.means_, device=x.device)
        precision = torch.as_tensor(self.precision_, device=x.device)
        with torch.enable_grad():
            xg = x.clone().requires_grad_(True)
            h = model.forward_all(xg)[1].double()
            with torch.no_grad():
                hp = h @ precision
                d = (hp * h).sum(1, keepdim=True) - 2 * hp @ means.T + ((means @ precision) * means).sum(1)[None]
                closest = d.argmin(dim=1)
            diff = h - means[closest]
            loss = ((diff @ precision) * diff).sum()
            (grad,) = torch.autograd.grad(loss, xg)
        return step_sign(grad)

    def score_inputs(self, model, x: torch.Tensor) -> np.ndarray:
        x_tilde = self.perturb(model, x)
        with torch.no_grad():
            h = model.forward_all(x_tilde)[1]
        return self.score_features(h.double().cpu().numpy())


@register("mahalanobis")
class Mahalanobis(Method):
    reads = "features"
    paper = ("Lee et al., A Simple Unified Framework for Detecting Out-of-Distribution Samples and Adversarial "
             "Attacks, NeurIPS 2018")
    knobs = (Float("epsilon", DEFAULT_EPSILON, ge=0, help="input perturbation size ε (0: score cached features)"),
             Float("ridge", DEFAULT_RIDGE, ge=0, help="added to the covariance's diagonal before inversion"))

    def scorer(self, params):
        return MahalanobisScorer(params["epsilon"], params["ridge"])
