"""OpenMax (Bendale & Boult, Towards Open Set Deep Networks, CVPR 2016).

Fit (training logits z and labels; Algorithm 1 of the paper):
    MAV_c = mean of the logit vectors of the training samples of class c that the network classifies correctly;
    d_i = dist(z_i, MAV_c) for those samples; a Weibull is fitted to the ``tail_size`` largest d_i of each class
    ("FitHigh": the tail, translated to x ↦ x + T − t_min, t_min its smallest distance, T = :data:`TRANSLATION`;
    shape k and scale λ by maximum likelihood, location 0):
        W_c(d) = 1 − exp(−((d + T − t_min,c) / λ_c)^k_c)     (0 where d + T − t_min,c ≤ 0).
Score (Algorithm 2): s = the classes sorted by logit, descending (ties: lower index first); for the top
α = min(``alpha_rank``, C) of them (rank r = 1..α)
    ω_s(r) = 1 − ((α + 1 − r)/α) · W_s(r)(dist(z, MAV_s(r))),   ω_c = 1 for every other class;
    v̂_c = z_c·ω_c,   v̂_0 = Σ_c z_c(1 − ω_c)   (the unknown class's logit),
    p = softmax([v̂_0, v̂_1 .. v̂_C]),   S = 1 − p_0 = expit(logsumexp(v̂_1..C) − v̂_0).

Distances (knob ``distance``, the paper's and the authors' code's default ``eucos``):
    eucos(z, μ) = ‖z − μ‖/200 + (1 − cos(z, μ));  euclidean: ‖z − μ‖;  cosine: 1 − cos(z, μ).
The 1/200 (``euclid_weight``) is the authors' constant (OSDN ``openmax_utils.py`` and
``preprocessing/compute_distances.py``, for ImageNet fc8 logits).
A zero vector has no direction: its cosine similarity counts as 0 (cosine distance 1).

libMR and this module: the paper fits with libMR's ``MR.fit_high(tail, len(tail))``. libMR's FitHigh sorts the data
descending, keeps the top ``fitting_size``, takes their smallest as ``small_score``, translates every kept value to x
+ translate_amount − small_score and fits a two-parameter Weibull by maximum likelihood (``weibull_fit``, a root
search on the profile-likelihood equation, as MATLAB's wblfit); ``w_score(x)`` = ``CDF(x)`` = the Weibull CDF of x +
translate_amount − small_score (sign +1, fit type complement_reject: the CDF itself, not its complement; 0 below the
translated origin). Here the same translation (T = 10000: libMR's C++ default, MetaRecognition.h, and the
``libmr.pyx`` wrapper bundled with OSDN, the authors' code; later libMR wrapper releases default to 1; pytorch-ood's
SciPy port LibNotMR uses 10000), the same likelihood, solved with SciPy (:func:`scipy.optimize.brentq` on the
profile-likelihood equation for the shape, written scale-free in log1p-accurate log ratios) instead of libMR, and
:func:`weibull_cdf` = ``scipy.stats.weibull_min.cdf(d + T − t_min, k, scale=λ)``. ``scipy.stats.weibull_min.fit(…,
floc=0)`` maximises the same likelihood but loses the shape when the tail's spread is tiny next to T (a spread of 1e-8
gives k ≈ 340 instead of ≈ 4e12), hence the direct solve.

Deliberate differences and choices:
- Rank weights: the paper's Algorithm 2 prints ω = 1 − ((α − i)/α)·e^{−(‖x − τ_i‖/λ_i)^κ_i}; the authors' code
  (OSDN ``compute_openmax.py``), OpenOOD v1.5 and pytorch-ood 0.4 all use (α + 1 − i)/α with libMR's w_score, the
  Weibull CDF, which is what every reported OpenMax number comes from. The code's weights are the default;
  ``OpenMaxScorer(rank_weights="paper")`` gives the printed (α − i)/α (still with the CDF: the printed
  exponential is 1 − CDF, which would revise close samples most, against the text). With the printed weights the
  α-th class is never revised and α = 1 revises nothing.
- Distance: the paper's eucos (default); OpenOOD v1.5 fits and queries with plain ``euclidean`` (its eucos weight
  0.5 is then unused), pytorch-ood with euclidean (``euclid_weight=1``): ``distance: euclidean``.
- Correct samples only: as the paper and OpenOOD; pytorch-ood fits on every training sample of the class.
- α: the paper uses 10 (ImageNet), OpenOOD's postprocessor 3 (hard-coded ``weibull_alpha``), pytorch-ood 10;
  default here min(C, 10), clamped to C. Tail size 20 (paper, OpenOOD; pytorch-ood 25).
- S = 1 − p(unknown): OpenOOD returns −p(unknown) (same ranking). It is computed as expit(lse(v̂_1..C) − v̂_0),
  which cannot overflow (OpenOOD exponentiates unshifted logits). ``OpenMaxScorer(score="log_odds")`` returns
  lse(v̂_1..C) − v̂_0 itself (= log((1 − p_0)/p_0), the same ranking in exact arithmetic), which does not round
  to 1.0 for confident samples, as 1 − p_0 does once p_0 < 1e-16.
- Negative logits are recalibrated as the paper's z_c·ω_c says: a negative z_c moves towards 0 (up) and adds a
  negative amount to v̂_0, as in every reference implementation.
- One "channel": the paper averages OpenMax probabilities over 10 crops of each image; here each image is one
  logit vector.

Degenerate tails (where libMR's fit fails and leaves an invalid model whose w_score is −9999):
- a class with fewer correct samples than ``tail_size`` fits on the distances it has;
- all tail distances equal, e.g. a single correct sample (distance 0 to its own MAV): the maximum-likelihood
  Weibull degenerates (k → ∞) to a step at that distance t: W(d) = 0 for d ≤ t, 1 for d > t;
- a class that no training sample is correctly classified as has no MAV: W ≡ 1 (whatever ranks it among its top α
  is treated as far from it), as KL matching's one-hot fallback treats a class never predicted.
"""
from __future__ import annotations

from numbers import Integral, Real

import numpy as np
from scipy.optimize import brentq
from scipy.special import expit, logsumexp

from methods import register
from methods.base import LogitScorer, Method, Outputs
from orchestrator.knobs import Choice, Int

#: libMR's translate_amount: the tail is shifted to [T, T + spread] before the (location 0) Weibull fit.
TRANSLATION = 10000.0
#: The authors' weight of the Euclidean part of eucos (OSDN: ‖z − μ‖/200 + cosine distance).
EUCOS_EUCLID_WEIGHT = 1.0 / 200.0
DEFAULT_TAIL = 20
DEFAULT_ALPHA = 10
DISTANCES = ("eucos", "euclidean", "cosine")
RANK_WEIGHTS = ("authors", "paper")
SCORES = ("probability", "log_odds")
#: Logit-vector elements gathered at once when measuring distances to the MAVs of each sample's top classes.
CHUNK_ELEMENTS = 1 << 22


def _check_int(name: str, value, low: int, optional: bool = False) -> int | None:
    if value is None and optional:
        return None
    integral = isinstance(value, Integral) or (isinstance(value, float) and value.is_integer())
    if isinstance(value, bool) or not integral:
        raise ValueError(f"openmax: {name} must be an integer >= {low}{' or None' if optional else ''}, got {value!r}")
    if int(value) < low:
        raise ValueError(f"openmax: {name} must be >= {low}, got {value}")
    return int(value)


def _check_choice(name: str, value, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise ValueError(f"openmax: {name} must be one of {list(choices)}, got {value!r}")
    return value


def mav_distances(z: np.ndarray, mavs: np.ndarray, distance: str = "eucos",
                  euclid_weight: float = EUCOS_EUCLID_WEIGHT) -> np.ndarray:
    """Distances between logit vectors and MAVs paired along the leading axes: z (..., C), mavs (..., C) → (...)."""
    z, mavs = np.asarray(z, dtype=np.float64), np.asarray(mavs, dtype=np.float64)
    euclid = np.linalg.norm(z - mavs, axis=-1) if distance != "cosine" else 0.0
    if distance == "euclidean":
        return euclid
    norms = np.linalg.norm(z, axis=-1) * np.linalg.norm(mavs, axis=-1)
    dots = (z * mavs).sum(axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        cosine = 1.0 - np.where(norms > 0, dots / np.where(norms > 0, norms, 1.0), 0.0)
    cosine = np.clip(cosine, 0.0, 2.0)
    return cosine if distance == "cosine" else euclid_weight * euclid + cosine


def weibull_cdf(d: np.ndarray, shape: np.ndarray, scale: np.ndarray, shift: np.ndarray) -> np.ndarray:
    """1 − exp(−((d + shift)/scale)^shape), 0 where d + shift ≤ 0 (elementwise, broadcast)."""
    y = np.asarray(d, dtype=np.float64) + shift
    with np.errstate(divide="ignore", over="ignore", invalid="ignore"):
        power = np.where(y > 0, np.exp(shape * np.log(np.where(y > 0, y, 1.0) / scale)), 0.0)
    return -np.expm1(-power)


def fit_weibull_tail(tail, translation: float = TRANSLATION) -> tuple[float, float, float]:
    """(shape k, scale λ, shift T − t_min) of libMR's FitHigh on ``tail`` (the largest distances of a class); shape
    is inf when the tail has no spread (one value, or all equal): the step W(d) = [d > t]."""
    t = np.sort(np.asarray(tail, dtype=np.float64))
    if t.ndim != 1 or len(t) == 0:
        raise ValueError("openmax: a Weibull tail needs at least one distance")
    small, big = t[0], t[-1]
    shift = translation - small
    top = big + shift  # the largest translated value, y_max
    # w_i = log(y_i / y_max) ≤ 0, accurate even when the spread is tiny next to the translation
    w = np.log1p((t - big) / top)
    spread = -w.min()
    if not spread > 0:
        return float("inf"), float(top), float(shift)
    x = w / spread  # in [−1, 0]; the shape is k = κ / spread

    def profile(kappa: float) -> float:  # d/dk of the profile log-likelihood, up to a positive factor
        e = np.exp(kappa * x)
        return float((e * x).sum() / e.sum() - 1.0 / kappa - x.mean())

    low, high = 1e-6, 1.0
    while profile(high) < 0:
        high *= 2.0
        if high > 1e18:
            return float("inf"), float(top), float(shift)
    kappa = brentq(profile, low, high, xtol=1e-14 * high, rtol=1e-14, maxiter=500)
    shape = kappa / spread
    log_mean = logsumexp(kappa * x) - np.log(len(x))  # log mean (y/y_max)^k
    scale = top * np.exp(log_mean / shape)
    return float(shape), float(scale), float(shift)


class OpenMaxScorer(LogitScorer):
    """``OpenMaxScorer(tail_size, alpha_rank).fit(train_outputs_with_labels).score(outputs)``."""

    needs_fit = True

    def __init__(self, tail_size: int = DEFAULT_TAIL, alpha_rank: int | None = None, distance: str = "eucos",
                 euclid_weight: float = EUCOS_EUCLID_WEIGHT, rank_weights: str = "authors",
                 score: str = "probability"):
        self.tail_size = _check_int("tail_size", tail_size, 1)
        self.alpha_rank = _check_int("alpha_rank", alpha_rank, 1, optional=True)
        self.distance = _check_choice("distance", distance, DISTANCES)
        if isinstance(euclid_weight, bool) or not isinstance(euclid_weight, Real) or not (
                np.isfinite(euclid_weight) and euclid_weight >= 0):
            raise ValueError(f"openmax: euclid_weight must be a finite number >= 0, got {euclid_weight!r}")
        self.euclid_weight = float(euclid_weight)
        self.rank_weights = _check_choice("rank_weights", rank_weights, RANK_WEIGHTS)
        self.score_kind = _check_choice("score", score, SCORES)
        self.mavs_: np.ndarray | None = None  # (C, C); NaN rows: classes without a correct training sample
        self.shape_: np.ndarray | None = None  # (C,) Weibull shape k; inf: step at the tail's distance
        self.scale_: np.ndarray | None = None  # (C,) λ
        self.shift_: np.ndarray | None = None  # (C,) T − t_min
        self.threshold_: np.ndarray | None = None  # (C,) the tail's largest distance (the step of a degenerate tail)
        self.counts_: np.ndarray | None = None  # (C,) correct training samples per class
        self.empty_classes_: list[int] = []

    # ------------------------------------------------------------------------------------------ fit
    def fit(self, train: Outputs, model=None) -> OpenMaxScorer:
        if train is None or len(train) == 0:
            raise ValueError("openmax needs fit outputs (training logits and labels) for its class models")
        if train.labels is None:
            raise ValueError("openmax needs the training labels: its MAVs average correctly classified samples")
        z = np.asarray(train.logits, dtype=np.float64)
        labels = np.asarray(train.labels).astype(np.int64)
        if z.ndim != 2 or labels.shape != (len(z),):
            raise ValueError(f"openmax: logits must be (N, C) with N labels, got {z.shape} and {labels.shape}")
        n_classes = z.shape[1]
        correct = z.argmax(axis=1) == labels
        self.mavs_ = np.full((n_classes, n_classes), np.nan)
        self.shape_, self.scale_ = np.full(n_classes, np.nan), np.full(n_classes, np.nan)
        self.shift_, self.threshold_ = np.full(n_classes, np.nan), np.full(n_classes, np.nan)
        self.counts_ = np.zeros(n_classes, dtype=np.int64)
        self.empty_classes_ = []
        for c in range(n_classes):
            zc = z[correct & (labels == c)]
            self.counts_[c] = len(zc)
            if len(zc) == 0:
                self.empty_classes_.append(c)
                continue
            self.mavs_[c] = zc.mean(axis=0)
            d = mav_distances(zc, self.mavs_[c][None, :], self.distance, self.euclid_weight)
            tail = np.sort(d)[-self.tail_size:]
            self.shape_[c], self.scale_[c], self.shift_[c] = fit_weibull_tail(tail)
            self.threshold_[c] = tail[-1]
        return self

    # ------------------------------------------------------------------------------------------ score
    def cdf(self, classes: np.ndarray, d: np.ndarray) -> np.ndarray:
        """W_c(d) of the fitted class models, elementwise over ``classes`` and ``d`` (same shapes)."""
        shape, scale, shift = self.shape_[classes], self.scale_[classes], self.shift_[classes]
        step = np.isinf(shape)
        finite = np.where(step, 1.0, shape)
        w = weibull_cdf(d, finite, np.where(step, 1.0, scale), np.where(step, 0.0, shift))
        w = np.where(step, (d > self.threshold_[classes]).astype(np.float64), w)
        return np.where(np.isnan(shape), 1.0, w)  # no correct training sample: no MAV, always outside

    def alpha(self, n_classes: int) -> int:
        """α actually used: ``alpha_rank`` (None: 10) clamped to the number of classes."""
        return min(DEFAULT_ALPHA if self.alpha_rank is None else self.alpha_rank, n_classes)

    def rank_weight_vector(self, alpha: int) -> np.ndarray:
        """The weight of ranks 1..α: (α + 1 − r)/α (authors' code), or (α − r)/α (the paper's printed form)."""
        r = np.arange(1, alpha + 1, dtype=np.float64)
        return (alpha + 1 - r) / alpha if self.rank_weights == "authors" else (alpha - r) / alpha

    def recalibrated(self, logits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(v̂_0 (N,), v̂ (N, C)): the unknown logit and the revised class logits."""
        if self.mavs_ is None:
            raise RuntimeError("OpenMaxScorer used before fit")
        z = np.asarray(logits, dtype=np.float64)
        if z.ndim != 2 or z.shape[1] != len(self.mavs_):
            raise ValueError(f"openmax was fitted on {len(self.mavs_)} classes, got logits of shape {z.shape}")
        n, n_classes = z.shape
        alpha = self.alpha(n_classes)
        ranks = np.argsort(-z, axis=1, kind="stable")[:, :alpha]  # (N, α), descending logits
        d = np.empty((n, alpha))
        rows = max(1, CHUNK_ELEMENTS // max(1, alpha * n_classes))
        for start in range(0, n, rows):
            part = slice(start, start + rows)
            mavs = self.mavs_[ranks[part]]  # (rows, α, C)
            d[part] = mav_distances(z[part][:, None, :], np.nan_to_num(mavs), self.distance, self.euclid_weight)
        omega = np.ones_like(z)
        np.put_along_axis(omega, ranks, 1.0 - self.rank_weight_vector(alpha) * self.cdf(ranks, d), axis=1)
        revised = z * omega
        return (z * (1.0 - omega)).sum(axis=1), revised

    def score(self, outputs: Outputs) -> np.ndarray:
        unknown, revised = self.recalibrated(outputs.logits)
        log_odds = logsumexp(revised, axis=1) - unknown  # log((1 − p_0) / p_0)
        return log_odds if self.score_kind == "log_odds" else expit(log_odds)


@register("openmax")
class OpenMax(Method):
    reads = "logits"
    paper = "Bendale & Boult, Towards Open Set Deep Networks, CVPR 2016"
    knobs = (Int("tail_size", DEFAULT_TAIL, ge=1, help="largest distances per class the Weibull is fitted to"),
             Int("alpha_rank", None, ge=1, optional=True,
                 help="top classes whose logits are recalibrated (null: 10), clamped to the class count"),
             Choice("distance", "eucos", DISTANCES,
                    help="distance to the class MAV: eucos = euclidean/200 + cosine (paper), euclidean (OpenOOD)"))

    def scorer(self, params):
        return OpenMaxScorer(params["tail_size"], params["alpha_rank"], params["distance"])
