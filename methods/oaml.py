"""OAML — Outlier-Aware Metric Learning (Gao et al., arXiv 2406.16525) [HengGao12/OAML, HengGao12/OAL].

SUBSTITUTE: the paper synthesises outlier *images* with Stable Diffusion (from k-NN boundary samples of class-text
embeddings, and by deep diffusion noise). We cannot ship Stable Diffusion, so outliers are made directly in the
student's feature space (tag ``substitute`` says so in MLflow):

- o_knn — k-NN boundary sampling (:func:`boundary_outliers`) on the student's L2-normalised penultimate features
  of a per-epoch pool (``pool_samples`` training images, re-extracted in eval mode at the start of every epoch):
  per class, the ``boundary_points`` (50) samples with the largest distance to their ``knn_k``-th (300, clamped to
  the class size) neighbour are boundary points; each gets ``candidates`` (1500) Gaussian perturbations of
  std ``boundary_sigma`` (0.07); the ``keep`` (2) candidates farthest (k-th neighbour distance) from the class
  data are kept. They are rescaled by the pool's mean ‖h‖ so they live where h lives.
- o_deep — forward-diffusion-noised ID features, o = √ᾱ_t·h + √(1−ᾱ_t)·ε (DDPM linear β schedule 1e-4…0.02,
  1000 steps; t uniform in [``t_min``, ``t_max``] per sample), applied to pool features standardised per
  dimension (the unit-variance data DDPM assumes) and mapped back to h's scale.

Both are drawn afresh for every batch (B outliers of each kind for B ID samples, paired index-wise) and are
treated as fixed data (no gradient flows into them), as generated images would be.

Loss for the student (initialised from the cached CE classifier; the teacher is frozen):

    L = CE + λ_KL·KL(p_T ‖ p_S) + λ_FD·KL(softmax(DT(t)) ‖ softmax(h)) + λ_MI1·CLUB(o_knn, h) + λ_MI2·CLUB(o_deep, h)

DT = BN → Linear(teacher dim → student dim) → ReLU → BN. CLUB(o, h) is the variational upper bound of mutual
information with q(h|o) = N(μ(o), diag e^{logvar(o)}) (two small MLPs, logvar through tanh as the CLUB code):
mean_i[Σ_d −(μ_id − h_id)²/(2e^{lv_id}) + Σ_d mean_j (h_jd − μ_id)²/(2e^{lv_id})].
As in the OAML/CLUB code the q-network is not trained by the bound: it has its own loss, the negative
log-likelihood −mean_i Σ_d[−(μ_id − h_id)²/e^{lv_id} − lv_id] on (o, h.detach()), and the bound uses μ, logvar
detached, so the bound moves only the student and the likelihood only q. Both are summed into the one scalar the
trainer back-propagates (one SGD optimiser for student, DT and q; same result as two optimisers with the same
schedule) — so ``train/loss`` includes q's NLL. DT and the CLUB networks are trainer-owned (``extra_state``).

Teacher (knob ``teacher``): ``larger`` = the cached CE classifier of the same benchmark with backbone resnet18
(trained on a cache miss); ``self`` = a frozen copy of the initial student (self-distillation).
Scoring: energy by default (knob ``scorer``: any post-hoc scorer by name).
"""
from __future__ import annotations

import copy

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from methods import register
from methods.base import Method
from orchestrator.knobs import Choice, Float, Int, ScorerChoice
from orchestrator.recipe import finetune_knobs
from orchestrator.training import FineTuner, to_float

TEACHERS = ("larger", "self")


# ---------------------------------------------------------------- CLUB
class CLUB(nn.Module):
    """Contrastive log-ratio upper bound of I(o; h) (Cheng et al., ICML 2020) with q(h|o) Gaussian."""

    def __init__(self, o_dim: int, h_dim: int, hidden: int = 256):
        super().__init__()
        self.mu = nn.Sequential(nn.Linear(o_dim, hidden), nn.ReLU(), nn.Linear(hidden, h_dim))
        self.logvar = nn.Sequential(nn.Linear(o_dim, hidden), nn.ReLU(), nn.Linear(hidden, h_dim), nn.Tanh())

    def forward(self, o):
        return self.mu(o), self.logvar(o)

    @staticmethod
    def bound_from(mu, logvar, h):
        """mean_i[Σ_d −(μ_i − h_i)²/(2e^{lv_i}) + Σ_d mean_j (h_j − μ_i)²/(2e^{lv_i})]."""
        inv = 0.5 * torch.exp(-logvar)
        positive = -((mu - h) ** 2 * inv).sum(1)
        # mean_j (h_j − μ_i)² = mean_j h_j² − 2 μ_i mean_j h_j + μ_i², per dimension (O(B·D) instead of O(B²·D))
        spread = (h ** 2).mean(0) - 2 * mu * h.mean(0) + mu ** 2
        negative = -(spread * inv).sum(1)
        return (positive - negative).mean()

    def bound(self, o, h, detach_q: bool = True):
        mu, logvar = self(o)
        if detach_q:
            mu, logvar = mu.detach(), logvar.detach()
        return self.bound_from(mu, logvar, h)

    def learning_loss(self, o, h):
        """Negative log-likelihood of h under q(·|o) (up to constants), as the CLUB code's ``learning_loss``."""
        mu, logvar = self(o)
        return -(-(mu - h) ** 2 / logvar.exp() - logvar).sum(1).mean()


# ---------------------------------------------------------------- outlier samplers
def _kth_distance(queries: torch.Tensor, data: torch.Tensor, k: int, exclude_self: bool = False,
                  chunk: int = 8192) -> torch.Tensor:
    """Euclidean distance of each query to its k-th nearest row of ``data`` (self excluded when queries is data)."""
    out = []
    for s in range(0, len(queries), chunk):
        d = torch.cdist(queries[s:s + chunk], data)
        if exclude_self:
            idx = torch.arange(s, s + len(d), device=d.device)
            d[torch.arange(len(d), device=d.device), idx] = float("inf")
        out.append(d.topk(k, dim=1, largest=False).values[:, k - 1])
    return torch.cat(out)


def boundary_outliers(feats: torch.Tensor, k: int = 300, boundary_points: int = 50, candidates: int = 1500,
                      sigma: float = 0.07, keep: int = 2, generator: torch.Generator | None = None):
    """k-NN boundary sampling (Dream-OOD / NPOS style) on one class's features (rows; normalise them first).

    Returns (outliers (boundary·keep, D), boundary anchors (boundary, D)). k is clamped to the class size − 1.
    """
    n = len(feats)
    if n < 2:
        raise ValueError("boundary sampling needs at least two features per class")
    k = max(1, min(int(k), n - 1))
    kth = _kth_distance(feats, feats, k, exclude_self=True)
    b = min(int(boundary_points), n)
    anchors = feats[kth.topk(b).indices]
    keep = max(1, min(int(keep), int(candidates)))
    kept = []
    per_chunk = max(1, 20000 // max(1, int(candidates)))
    for s in range(0, b, per_chunk):
        a = anchors[s:s + per_chunk]
        noise = torch.randn(len(a), int(candidates), feats.shape[1], generator=generator, device=feats.device)
        cand = (a[:, None, :] + sigma * noise).reshape(-1, feats.shape[1])
        dist = _kth_distance(cand, feats, min(k, n)).view(len(a), int(candidates))
        top = dist.topk(keep, dim=1).indices
        kept.append(cand.view(len(a), int(candidates), -1).gather(1, top[:, :, None].expand(-1, -1, feats.shape[1])))
    return torch.cat(kept).reshape(-1, feats.shape[1]), anchors


def alpha_bar(steps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02) -> torch.Tensor:
    """ᾱ_t of DDPM's linear β schedule, t = 1..steps (index t − 1)."""
    return torch.cumprod(1.0 - torch.linspace(beta_start, beta_end, steps, dtype=torch.float64), 0).float()


def diffusion_outliers(h: torch.Tensor, t: torch.Tensor, abar: torch.Tensor, generator=None) -> torch.Tensor:
    """√ᾱ_t·h + √(1−ᾱ_t)·ε for rows h (already standardised) at steps t (1-based)."""
    a = abar.to(h.device)[t - 1][:, None]
    eps = torch.randn(h.shape, generator=generator, device=h.device)
    return a.sqrt() * h + (1 - a).sqrt() * eps


# ---------------------------------------------------------------- trainer
def distill_transform(t_dim: int, s_dim: int) -> nn.Sequential:
    return nn.Sequential(nn.BatchNorm1d(t_dim), nn.Linear(t_dim, s_dim), nn.ReLU(), nn.BatchNorm1d(s_dim))


class OAMLTrainer(FineTuner):
    def __init__(self, params, device="cpu", seed=0):
        super().__init__(params, device, seed)
        p = params
        self.teacher_kind = p["teacher"]
        if self.teacher_kind not in TEACHERS:
            raise ValueError(f"oaml: teacher must be one of {TEACHERS}, got {self.teacher_kind!r}")
        self.lambda_kl, self.lambda_fd = float(p["lambda_kl"]), float(p["lambda_fd"])
        self.lambda_mi1, self.lambda_mi2 = float(p["lambda_mi1"]), float(p["lambda_mi2"])
        self.kd_temperature = float(p["kd_temperature"])
        self.knn_k, self.boundary_points = int(p["knn_k"]), int(p["boundary_points"])
        self.candidates, self.keep = int(p["candidates"]), int(p["keep"])
        self.boundary_sigma = float(p["boundary_sigma"])
        self.t_min, self.t_max = int(p["t_min"]), int(p["t_max"])
        self.pool_samples = int(p["pool_samples"])
        self.club_hidden = int(p["club_hidden"])
        if not 1 <= self.t_min <= self.t_max <= 1000:
            raise ValueError(f"oaml: need 1 <= t_min <= t_max <= 1000, got {self.t_min}..{self.t_max}")
        if self.kd_temperature <= 0 or self.boundary_sigma < 0:
            raise ValueError("oaml: kd_temperature must be > 0 and boundary_sigma >= 0")
        self.teacher = self.dt = self.club_knn = self.club_deep = None
        self.abar = alpha_bar()
        self._pool_epoch = None
        self._knn_pool = self._deep_pool = self._deep_mean = self._deep_std = None

    # -- setup
    def prepare(self, model):
        torch.manual_seed(self.seed)
        if self.teacher_kind == "self":
            teacher = copy.deepcopy(model)
        else:
            if self.models is None:
                raise RuntimeError("oaml teacher=larger needs the trainer's model provider (run through run_trial)")
            teacher = self.models.classifier(backbone="resnet18")
        self.teacher = teacher.to(self.device).eval().requires_grad_(False)
        s_dim = model.feature_dim
        self.dt = distill_transform(self.teacher.feature_dim, s_dim).to(self.device)
        self.club_knn = CLUB(s_dim, s_dim, self.club_hidden).to(self.device)
        self.club_deep = CLUB(s_dim, s_dim, self.club_hidden).to(self.device)

    def extras(self) -> list[nn.Module]:
        return [self.dt, self.club_knn, self.club_deep]

    def param_groups(self, model):
        params = list(model.parameters())
        for m in self.extras():
            params += list(m.parameters())
        return [{"params": params}]

    # -- outliers
    @torch.no_grad()
    def refresh_pools(self, model, epoch: int) -> None:
        """Student features of a seeded training subsample (eval mode) → o_knn pool and o_deep source."""
        x, y = self.bench.id_train.x, self.bench.id_train.y
        rng = np.random.default_rng([self.seed, epoch, 7])
        idx = np.sort(rng.choice(len(x), min(self.pool_samples, len(x)), replace=False))
        was_training = model.training
        model.eval()
        feats = torch.cat([model.forward_all(to_float(x[idx[s:s + 512]], self.device))[1]
                           for s in range(0, len(idx), 512)])
        model.train(was_training)
        labels = torch.as_tensor(y[idx], device=self.device)
        mean_norm = feats.norm(dim=1).mean()
        normed = F.normalize(feats, dim=1)
        gen = torch.Generator(device=self.device).manual_seed(int(rng.integers(2**31)))
        pool = []
        for c in labels.unique():
            members = normed[labels == c]
            if len(members) >= 2:
                pool.append(boundary_outliers(members, self.knn_k, self.boundary_points, self.candidates,
                                              self.boundary_sigma, self.keep, gen)[0])
        self._knn_pool = torch.cat(pool) * mean_norm
        self._deep_mean, self._deep_std = feats.mean(0), feats.std(0) + 1e-6
        self._deep_pool = (feats - self._deep_mean) / self._deep_std
        self._pool_epoch = epoch

    def sample_outliers(self, n: int):
        dev = self.device
        o_knn = self._knn_pool[torch.randint(len(self._knn_pool), (n,), device=dev)]
        src = self._deep_pool[torch.randint(len(self._deep_pool), (n,), device=dev)]
        t = torch.randint(self.t_min, self.t_max + 1, (n,), device=dev)
        o_deep = diffusion_outliers(src, t, self.abar) * self._deep_std + self._deep_mean
        return o_knn, o_deep

    # -- loss
    def loss(self, model, x, y, epoch):
        if self._pool_epoch != epoch:
            self.refresh_pools(model, epoch)
        z_s, h_s, _ = model.forward_all(x)
        with torch.no_grad():
            z_t, t_feat, _ = self.teacher.forward_all(x)
        temp = self.kd_temperature
        kl = F.kl_div(F.log_softmax(z_s / temp, 1), F.log_softmax(z_t / temp, 1), log_target=True,
                      reduction="batchmean") * temp * temp
        fd = F.kl_div(F.log_softmax(h_s, 1), F.log_softmax(self.dt(t_feat), 1), log_target=True,
                      reduction="batchmean")
        o_knn, o_deep = self.sample_outliers(len(x))
        mi1 = self.club_knn.bound(o_knn, h_s)
        mi2 = self.club_deep.bound(o_deep, h_s)
        h_d = h_s.detach()
        q_loss = self.club_knn.learning_loss(o_knn, h_d) + self.club_deep.learning_loss(o_deep, h_d)
        student = (F.cross_entropy(z_s, y) + self.lambda_kl * kl + self.lambda_fd * fd
                   + self.lambda_mi1 * mi1 + self.lambda_mi2 * mi2)
        return student + q_loss

    def extra_state(self):
        if self.dt is None:
            return {}
        return {"dt": self.dt.state_dict(), "club_knn": self.club_knn.state_dict(),
                "club_deep": self.club_deep.state_dict()}

    def load_extra_state(self, state):
        for name in ("dt", "club_knn", "club_deep"):
            if name in state and getattr(self, name) is not None:
                getattr(self, name).load_state_dict(state[name])


@register("oaml")
class OAML(Method):
    paper = "Gao et al., Outlier-Aware Metric Learning for OOD detection (OAL/OAML), arXiv 2406.16525"
    substitute = ("feature-space outliers instead of Stable Diffusion images: k-NN boundary samples of normalised "
                  "student features (o_knn) and DDPM-forward-noised ID features (o_deep); teacher = CE resnet18 "
                  "or frozen initial student")
    finetunes = True
    knobs = (
        Choice("teacher", "larger", TEACHERS, network=True,
               help="larger: the cached CE resnet18 of the benchmark; self: a frozen copy of the initial student"),
        Float("lambda_kl", 4.0, ge=0, network=True, help="weight of the logit distillation KL(p_T ‖ p_S)"),
        Float("lambda_fd", 8.0, ge=0, network=True, help="weight of the feature distillation KL"),
        Float("lambda_mi1", 0.1, ge=0, network=True, help="weight of CLUB(o_knn, h), k-NN boundary outliers"),
        Float("lambda_mi2", 0.2, ge=0, network=True, help="weight of CLUB(o_deep, h), diffusion-noised outliers"),
        Float("kd_temperature", 1.0, gt=0, network=True, help="temperature of the logit distillation"),
        Int("knn_k", 300, ge=1, network=True, help="k of the k-NN boundary distance (clamped to the class size)"),
        Int("boundary_points", 50, ge=1, network=True, help="boundary points per class"),
        Int("candidates", 1500, ge=1, network=True, help="Gaussian candidates drawn around each boundary point"),
        Int("keep", 2, ge=1, network=True, help="candidates kept per boundary point (the farthest from the class)"),
        Float("boundary_sigma", 0.07, ge=0, network=True, help="std of the candidates' Gaussian perturbation"),
        Int("t_min", 200, ge=1, le=1000, network=True, help="smallest diffusion step of o_deep (≤ t_max)"),
        Int("t_max", 600, ge=1, le=1000, network=True, help="largest diffusion step of o_deep (of 1000)"),
        Int("pool_samples", 2000, ge=2, network=True, help="training images whose features seed each epoch's outliers"),
        Int("club_hidden", 256, ge=1, network=True, help="hidden width of the CLUB q-networks"),
        *finetune_knobs(10, 0.01),
        ScorerChoice("scorer", "energy", help="post-hoc method scoring the fine-tuned network"),
    )

    def trainer_class(self):
        return OAMLTrainer
