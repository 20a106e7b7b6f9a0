"""ViM — Virtual-logit Matching (Wang, Li, Feng & Zhang, ViM: Out-Of-Distribution with Virtual-logit Matching,
CVPR 2022).

Fit (training features h, logits z, and the final linear layer W, b, cached with the outputs — :class:`Head`):
    u = −W⁺b (the origin of the logit space in feature coordinates);
    P = top-D principal directions of (h − u), eigenvectors of the uncentred covariance (h − u)ᵀ(h − u)/N;
    r(x) = ‖(I − PPᵀ)(h − u)‖ (residual norm);  α = mean_train max_c z_c / mean_train r.
Score: S = logsumexp(z) − α·r (energy minus the scaled residual, the virtual logit's effect).
If D ≥ feature dim the residual is identically 0 and S reduces to the energy logsumexp(z).
h is what the final linear layer multiplies (``Head.fc_input``): the penultimate feature itself, or its
standardisation for ASCOOD's z-scored head, the space in which u = −W⁺b is the logits' origin.
"""
from __future__ import annotations

from numbers import Integral

import numpy as np
from scipy.special import logsumexp

from methods import register
from methods.base import Head, HeadScorer, Method, Outputs
from orchestrator.knobs import Int


def check_dim(dim) -> int | None:
    if dim is None:
        return None
    if isinstance(dim, bool) or not (isinstance(dim, Integral) or (isinstance(dim, float) and dim.is_integer())):
        raise ValueError(f"vim: dim must be a positive integer or None (feature_dim // 2), got {dim!r}")
    if int(dim) < 1:
        raise ValueError(f"vim: dim must be >= 1, got {dim}")
    return int(dim)


class VimScorer(HeadScorer):
    """``VimScorer(dim)`` takes W, b from the fit outputs' :class:`Head` (else from ``model.head.fc``);
    ``VimScorer(dim, weight=W, bias=b)`` uses those, on h as it is."""

    needs_fit = True  # reads the features and the logits

    def __init__(self, dim: int | None = None, weight=None, bias=None):
        self.dim = check_dim(dim)
        if (weight is None) != (bias is None):
            raise ValueError("vim: give both weight and bias of the final linear layer, or neither")
        self.weight = None if weight is None else np.asarray(weight, dtype=np.float64)
        self.bias = None if bias is None else np.asarray(bias, dtype=np.float64)
        self.u_: np.ndarray | None = None
        self.residual_basis_: np.ndarray | None = None  # columns span the complement of the top-D subspace
        self.alpha_: float | None = None
        self.dim_: int | None = None  # D actually used
        self.head_: Head | None = None

    def _head(self, train: Outputs, model) -> Head:
        if self.weight is not None:
            return Head(self.weight, self.bias)
        if train.head is None and getattr(getattr(model, "head", None), "fc", None) is not None:
            fc = model.head.fc  # outputs extracted without their head (a notebook's own Outputs)
            bias = fc.bias.detach().double().cpu().numpy() if fc.bias is not None else np.zeros(fc.out_features)
            return Head(fc.weight.detach().double().cpu().numpy(), bias, getattr(model.head, "zscore_sigma", None))
        return self.head_of(train, "vim")

    def fit(self, train: Outputs, model=None) -> VimScorer:
        if train is None or len(train) == 0:
            raise ValueError("vim needs fit outputs (training features and logits)")
        self.head_ = self._head(train, model)
        weight, bias = np.asarray(self.head_.weight, np.float64), np.asarray(self.head_.bias, np.float64)
        h = self.head_.fc_input(train.features)
        feature_dim = h.shape[1]
        if weight.shape[1] != feature_dim:
            raise ValueError(f"vim: final layer expects {weight.shape[1]}-d features, fit features are {feature_dim}-d")
        self.u_ = -np.linalg.pinv(weight) @ bias
        self.dim_ = self.dim if self.dim is not None else max(1, feature_dim // 2)
        centred = h - self.u_
        if self.dim_ >= feature_dim:
            self.residual_basis_ = np.zeros((feature_dim, 0))
            self.alpha_ = 0.0
            return self
        eigvals, eigvecs = np.linalg.eigh(centred.T @ centred / len(h))
        order = np.argsort(eigvals)[::-1]
        self.residual_basis_ = np.ascontiguousarray(eigvecs[:, order[self.dim_:]])
        mean_r = float(np.linalg.norm(centred @ self.residual_basis_, axis=1).mean())
        mean_max = float(np.asarray(train.logits, dtype=np.float64).max(axis=1).mean())
        scale = float(np.linalg.norm(centred, axis=1).mean())
        # Training features lying (numerically) inside the top-D subspace leave no residual scale to match.
        self.alpha_ = mean_max / mean_r if mean_r > 1e-12 * max(scale, 1e-300) else 0.0
        return self

    def residual(self, features: np.ndarray) -> np.ndarray:
        if self.u_ is None:
            raise RuntimeError("VimScorer used before fit")
        return np.linalg.norm((self.head_.fc_input(features) - self.u_) @ self.residual_basis_, axis=1)

    def score(self, outputs: Outputs) -> np.ndarray:
        energy = logsumexp(np.asarray(outputs.logits, dtype=np.float64), axis=1)
        return energy - self.alpha_ * self.residual(outputs.features)


@register("vim")
class Vim(Method):
    reads = "head"
    paper = "Wang et al., ViM: Out-Of-Distribution with Virtual-logit Matching, CVPR 2022"
    knobs = (Int("dim", None, ge=1, optional=True,
                 help="principal subspace dimension D (null: half the feature width)"),)

    def scorer(self, params):
        return VimScorer(params["dim"])
