"""MODE (Multi-scale OOD DEtection, IEEE TIP 2023) [JimZAI/MODE-OOD]: ALPA fine-tuning + CSD scoring.

Training (ALPA, attention-based local propagation) fine-tunes the cached cross-entropy classifier.
Query/key/value projectors, each Linear(C→C) → ReLU → Linear(C→d), no biases (d = ``inner_dim``, 80), act on
every spatial location of the last feature map (L = H·W locations). For an ordered pair (a, b):

    A_ab      = softmax_over_b's_locations(q_a k_bᵀ / √d)          (L×L)
    t(a, b)   = mean_l cos(v_a[l], (A_ab v_b)[l])                   (b's values aligned to a's locations)
    s(a, b)   = t(a, b) + t(b, a)                                   (symmetric by construction, ≤ 2)

Over the 2B augmented views of a batch (random crop with zero padding H/8 + horizontal flip where sensible:
``hflip: auto`` flips only on benchmarks that declare flips label-preserving, ``Benchmark.hflip_invariant`` —
not digits), a supervised-contrastive loss with logits
``inverse_temperature``·s(a, b) (self-pairs excluded from the denominator, positives = same label, mean over
positives then over anchors, as SupCon) is minimised.

- ``variant: mode_f`` (MODE-F): ALPA alone.
- ``variant: mode_t`` (MODE-T): SupCon(τ = ``supcon_temperature``, 0.1) on the L2-normalised global features h
  of the same views + ``lam``·ALPA.

s(a, a) is 2 exactly when self-attention reproduces every location's value direction (e.g. a spatially
constant map); for a generic map A_aa v_a is a convex mix of locations, so s(a, a) ≤ 2.

Memory: the pairwise tensors are (2B)²·L² (attention; the aligned values, (2B)²·L·d, are never materialised:
cosines come from L×L Gram matrices, see :func:`_t_rows`). They are computed in chunks of anchors sized so that one
chunk's intermediates stay below ``alpa_chunk_mb`` (256 MiB); with more
than one chunk each chunk is gradient-checkpointed (recomputed in backward), so peak memory is one chunk plus
the (2B)² similarity matrix. :func:`alpa_chunk_size` / :func:`alpa_chunk_bytes` give the analytic numbers.

``finetune_batch_size`` (default: the recipe's batch_size) sets B for fine-tuning only, so a smaller ALPA batch
does not retrain the base CE network. The projectors are training-only: they live in the trainer (saved in
checkpoints via ``extra_state``), never in
the cached Classifier. The fc head gets no gradient (neither loss reads logits), as in the paper: ID accuracy is
that of the original head on the fine-tuned features. Scoring: CSD (``methods.csd``) by default, knob ``scorer``
picks any post-hoc scorer.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from methods import register
from methods.base import Method
from methods.csd import CSD_KNOBS
from orchestrator.knobs import Choice, Float, Int, ScorerChoice
from orchestrator.recipe import finetune_knobs
from orchestrator.training import FineTuner

VARIANTS = ("mode_f", "mode_t")
#: ``hflip``: auto = the benchmark's ``hflip_invariant``; true / false force it.
HFLIP = ("auto", True, False)
#: L×L float tensors kept alive per (anchor, other) pair in forward + backward (attention logits/softmax, Gram
#: matrices, products and their gradients, generously counted) and L·d ones (none: aligned values are never
#: materialised, see :func:`_t_rows`); used to size chunks.
_ATT_COPIES, _VAL_COPIES = 10, 0


def projector(c: int, d: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(c, c, bias=False), nn.ReLU(inplace=True), nn.Linear(c, d, bias=False))


class ALPAProjectors(nn.Module):
    """q, k, v projectors applied to every location of an (N, C, H, W) map → three (N, L, d) tensors."""

    def __init__(self, channels: int, inner_dim: int = 80):
        super().__init__()
        self.inner_dim = int(inner_dim)
        self.q, self.k, self.v = (projector(channels, inner_dim) for _ in range(3))

    def forward(self, fmap: torch.Tensor):
        tokens = fmap.flatten(2).transpose(1, 2)  # (N, L, C)
        return self.q(tokens), self.k(tokens), self.v(tokens)


def alpa_chunk_bytes(chunk: int, n: int, locations: int, inner_dim: int, bytes_per: int = 4) -> int:
    """Analytic size of one chunk's pairwise intermediates (chunk anchors × n others)."""
    return chunk * n * (_ATT_COPIES * locations * locations + _VAL_COPIES * locations * inner_dim) * bytes_per


def alpa_chunk_size(n: int, locations: int, inner_dim: int, budget_mb: float = 256.0, bytes_per: int = 4) -> int:
    """Most anchors per chunk whose intermediates fit ``budget_mb`` (at least 1, at most n)."""
    per_anchor = alpa_chunk_bytes(1, n, locations, inner_dim, bytes_per)
    return max(1, min(n, int(budget_mb * 2**20 // per_anchor)))


def _t_rows(q_a: torch.Tensor, k: torch.Tensor, v: torch.Tensor, v_a: torch.Tensor) -> torch.Tensor:
    """t(a, b) for a chunk of anchors a against every b: (c, N).

    Computed through L×L Gram matrices instead of materialising the aligned values (c, N, L, d):
    with A = A_ab, G[l, m] = v̂_a[l]·v_b[m] and K_b[m, m'] = v_b[m]·v_b[m'],
    cos(v_a[l], (A v_b)[l]) = (A ⊙ G)[l, :].sum() / sqrt((A K_b ⊙ A)[l, :].sum()).
    """
    c, locations, d = q_a.shape
    n = k.shape[0]
    # (c, L, N, M) layout: both L×L products are single (c·L)×d @ d×(N·M) matmuls, no permuted copies
    att = (q_a.reshape(c * locations, d) @ k.reshape(n * locations, d).T).div_(math.sqrt(d))
    att = att.view(c, locations, n, locations).softmax(dim=-1)
    gram_ab = (F.normalize(v_a, dim=-1).reshape(c * locations, d) @ v.reshape(n * locations, d).T)
    gram_ab = gram_ab.view(c, locations, n, locations)
    gram_b = v @ v.transpose(1, 2)  # (N, M, M)
    numerator = (att * gram_ab).sum(-1)  # v̂_a[l] · aligned[l], (c, L, N)
    norm_sq = (torch.einsum("clnm,nmk->clnk", att, gram_b) * att).sum(-1)  # ‖aligned[l]‖²
    return (numerator / norm_sq.clamp_min(1e-24).sqrt()).mean(1)


def alpa_similarity(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, budget_mb: float = 256.0) -> torch.Tensor:
    """(N, N) ALPA similarity s(a, b) = t(a, b) + t(b, a) of N maps given as (N, L, d) q, k, v."""
    n, locations, d = q.shape
    chunk = alpa_chunk_size(n, locations, d, budget_mb)
    if chunk >= n:
        t = _t_rows(q, k, v, v)
    else:
        rows = []
        for s in range(0, n, chunk):
            part = (q[s:s + chunk], k, v, v[s:s + chunk])
            rows.append(checkpoint(_t_rows, *part, use_reentrant=False) if torch.is_grad_enabled() else _t_rows(*part))
        t = torch.cat(rows)
    return t + t.T


def supcon_from_logits(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Supervised contrastive loss (Khosla et al.) from an (N, N) logit matrix; self-pairs excluded."""
    n = logits.shape[0]
    eye = torch.eye(n, dtype=torch.bool, device=logits.device)
    logits = logits.masked_fill(eye, float("-inf"))
    log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)
    pos = (labels[:, None] == labels[None, :]) & ~eye
    count = pos.sum(1)
    keep = count > 0  # anchors without a positive contribute nothing (as SupCon's reference code, NaN-free)
    mean_pos = log_prob.masked_fill(~pos, 0.0).sum(1)[keep] / count[keep]
    return -mean_pos.mean() if keep.any() else logits.new_zeros(())


def alpa_loss(proj: ALPAProjectors, fmap: torch.Tensor, labels: torch.Tensor, inverse_temperature: float = 10.0,
              budget_mb: float = 256.0) -> torch.Tensor:
    q, k, v = proj(fmap)
    return supcon_from_logits(inverse_temperature * alpa_similarity(q, k, v, budget_mb), labels)


def supcon_features(h: torch.Tensor, labels: torch.Tensor, temperature: float = 0.1) -> torch.Tensor:
    z = F.normalize(h, dim=1)
    return supcon_from_logits(z @ z.T / temperature, labels)


def augment(x: torch.Tensor, hflip: bool, pad: int | None = None, generator=None) -> torch.Tensor:
    """Random crop (zero padding ``pad``, default ⌈H/8⌉) and, with ``hflip``, a random horizontal flip."""
    n, c, h, w = x.shape
    pad = max(1, -(-h // 8)) if pad is None else int(pad)
    padded = F.pad(x, (pad, pad, pad, pad))
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=generator, device=x.device)
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=generator, device=x.device)
    rows = (dy[:, None] + torch.arange(h, device=x.device))[:, None, :, None].expand(n, c, h, w + 2 * pad)
    out = padded.gather(2, rows)
    cols = (dx[:, None] + torch.arange(w, device=x.device))[:, None, None, :].expand(n, c, h, w)
    out = out.gather(3, cols)
    if hflip:
        flip = torch.rand(n, generator=generator, device=x.device) < 0.5
        out = torch.where(flip[:, None, None, None], out.flip(3), out)
    return out


class MODETrainer(FineTuner):
    def __init__(self, params, device="cpu", seed=0):
        super().__init__(params, device, seed)
        self.variant = params["variant"]
        if self.variant not in VARIANTS:
            raise ValueError(f"mode: variant must be one of {VARIANTS}, got {self.variant!r}")
        self.inverse_temperature = float(params["inverse_temperature"])
        self.inner_dim = int(params["inner_dim"])
        self.lam = float(params["lam"])
        self.supcon_temperature = float(params["supcon_temperature"])
        self.hflip_knob = params["hflip"]
        if self.hflip_knob not in HFLIP:
            raise ValueError(f"mode: hflip must be auto, true or false, got {self.hflip_knob!r}")
        self.budget_mb = float(params["alpa_chunk_mb"])
        # ALPA's cost grows with (2B)²: the fine-tuning batch may be smaller than the base network's recipe batch
        if params["finetune_batch_size"] is not None:
            self.batch_size = int(params["finetune_batch_size"])
        if self.inner_dim < 1 or self.inverse_temperature <= 0 or self.supcon_temperature <= 0:
            raise ValueError("mode: inner_dim, inverse_temperature and supcon_temperature must be positive")
        self.proj: ALPAProjectors | None = None
        self.hflip = False

    def prepare(self, model):
        torch.manual_seed(self.seed)
        self.proj = ALPAProjectors(model.feature_dim, self.inner_dim).to(self.device)
        if self.hflip_knob == "auto":  # the benchmark declares whether a flip keeps the label
            self.hflip = bool(getattr(self.bench, "hflip_invariant", False))
        else:
            self.hflip = bool(self.hflip_knob)

    def param_groups(self, model):
        return [{"params": list(model.parameters()) + list(self.proj.parameters())}]

    def loss(self, model, x, y, epoch):
        views = torch.cat([augment(x, self.hflip), augment(x, self.hflip)])
        labels = torch.cat([y, y])
        h, fmap = model.embed_normalized(model.normalize(views))
        loss = alpa_loss(self.proj, fmap, labels, self.inverse_temperature, self.budget_mb)
        if self.variant == "mode_t":
            loss = supcon_features(h, labels, self.supcon_temperature) + self.lam * loss
        return loss

    def extra_state(self):
        return {"projectors": self.proj.state_dict()} if self.proj is not None else {}

    def load_extra_state(self, state):
        if "projectors" in state and self.proj is not None:
            self.proj.load_state_dict(state["projectors"])


@register("mode")
class MODE(Method):
    paper = "MODE: Multi-scale OOD DEtection (ALPA fine-tuning + cross-scale decision), IEEE TIP 2023"
    finetunes = True
    knobs = (
        Choice("variant", "mode_f", VARIANTS, network=True, help="mode_f: ALPA alone; mode_t: SupCon on h + lam·ALPA"),
        Float("inverse_temperature", 10.0, gt=0, network=True, help="ALPA's SupCon logit scale on s(a, b)"),
        Int("inner_dim", 80, ge=1, network=True, help="width d of the query/key/value projectors"),
        Float("lam", 1.0, ge=0, network=True, help="weight of ALPA in MODE-T (variant mode_t)"),
        Float("supcon_temperature", 0.1, gt=0, network=True, help="τ of MODE-T's SupCon on global features"),
        Choice("hflip", "auto", HFLIP, network=True,
               help="random horizontal flips (auto: where the benchmark declares them label-preserving)"),
        Int("finetune_batch_size", None, ge=2, optional=True, network=True,
            help="fine-tuning batch size B (null: the recipe's batch_size)"),
        *finetune_knobs(10, 0.01),
        Float("alpa_chunk_mb", 256.0, gt=0,
              help="memory budget (MiB) of one chunk of ALPA's pairwise tensors (same result, less memory)"),
        *CSD_KNOBS,
        ScorerChoice("scorer", "csd", help="post-hoc method scoring the fine-tuned network (default: CSD)"),
    )

    def trainer_class(self):
        return MODETrainer
