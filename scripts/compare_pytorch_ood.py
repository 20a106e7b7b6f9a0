"""Compare oodsweep's post-hoc scorers value by value with pytorch-ood 0.4's detectors on the same arrays.

Needs pytorch-ood installed; the project does not depend on it, so use a separate virtual environment:

    python3 -m venv /tmp/pood-venv
    /tmp/pood-venv/bin/pip install torch==2.14.1 torchvision==0.29.1 numpy scipy scikit-learn threadpoolctl \
        pytorch-ood==0.4.0
    /tmp/pood-venv/bin/pip install --no-deps -e .        # oodsweep itself, without its sweep dependencies
    /tmp/pood-venv/bin/python scripts/compare_pytorch_ood.py [--seed 0]   # from the repository root

Exit status 1 when a line says MISMATCH or ERROR.

The data are synthetic but shaped like a classifier's outputs: per-class ReLU feature maps (N, D, 2, 2) with
about 15% of the channels of each sample switched off, h = their spatial mean (h >= 0, some exact zeros), a
linear head built from the class centres, logits z = h Wᵀ + b. Fit on 200 "training" samples (6 classes, 32-d
features), score 120 ID-like and 120 OOD-like test samples; temperature scaling fits on a separate 120-sample
validation split. Every detector runs in CPU threads of one.

pytorch-ood returns OUTLIER scores (higher = more OOD); oodsweep returns ID-ness scores, so each line compares
oodsweep's S with −(pytorch-ood's score), rescaled where the two differ by a documented constant factor, or gives
Spearman's rank correlation where only a monotone transform or a different fit links them. Knobs are set so that
both compute the same thing (percentiles as fractions for pytorch-ood, the same neighbour count, ...); where a
default or a deliberate design choice differs, a second line shows its effect and names the documentation that
explains it. Each line ends with a verdict: ``match``, ``documented difference: <which>`` or ``MISMATCH``.
"""
from __future__ import annotations

import argparse
import contextlib
import sys
import warnings
from collections.abc import Callable

import numpy as np
import torch
from scipy.special import expit, log_softmax, softmax
from scipy.stats import spearmanr
from threadpoolctl import threadpool_limits
from torch import nn

try:
    import pytorch_ood
    from pytorch_ood import detector as pood
except ImportError:  # pragma: no cover - the script's only precondition
    sys.exit("pytorch-ood is not installed: see this script's docstring (a separate venv with pytorch-ood==0.4.0)")

from methods.ash import AshScorer
from methods.base import Head, Outputs
from methods.dice import DiceScorer
from methods.energy import EnergyScorer
from methods.entropy import EntropyScorer
from methods.fdbd import FdbdScorer
from methods.gen import GenScorer
from methods.gradnorm import GradNormScorer
from methods.gram import GramScorer
from methods.klmatching import KLMatchingScorer
from methods.knn import KnnScorer
from methods.mahalanobis import MahalanobisScorer
from methods.maxlogit import MaxLogitScorer
from methods.msp import MSPScorer
from methods.nci import NciScorer
from methods.nnguide import NNGuideScorer
from methods.odin import OdinScorer
from methods.openmax import TRANSLATION, OpenMaxScorer
from methods.rankfeat import RankFeatScorer
from methods.react import ReactScorer
from methods.rmds import RmdsScorer
from methods.scale import ScaleScorer
from methods.she import SheScorer
from methods.tempscale import TempScaleScorer, nll
from methods.vim import VimScorer
from methods.vra import VraScorer

SEED = 0
CLASSES, DIM, SIDE = 6, 32, 2
N_TRAIN, N_VAL, N_ID, N_OOD = 200, 120, 120, 120
#: Tolerances on max |S − reference| / max |reference|: float64 on both sides, or pytorch-ood computing in float32.
TOL64, TOL32 = 1e-9, 2e-5

FAILURES: list[str] = []


# ---------------------------------------------------------------------------------------------- data
def make_data(rng: np.random.Generator) -> dict:
    centres = np.abs(rng.normal(0.0, 1.0, (CLASSES, DIM))) * rng.binomial(1, 0.5, (CLASSES, DIM)) * 2.0

    def maps(n: int, ood: bool):
        y = rng.integers(0, CLASSES, n)
        loc = rng.gamma(1.5, 0.6, (n, DIM)) if ood else centres[y]
        fmap = np.maximum(loc[:, :, None, None] + rng.normal(0.0, 0.8, (n, DIM, SIDE, SIDE)), 0.0)
        fmap *= rng.binomial(1, 0.85, (n, DIM))[:, :, None, None]  # switched-off channels: exact zeros in h
        return fmap, fmap.mean(axis=(2, 3)), y

    weight = centres - centres.mean(axis=0)
    weight = weight / np.linalg.norm(weight, axis=1, keepdims=True) + rng.normal(0.0, 0.05, (CLASSES, DIM))
    bias = rng.normal(0.0, 0.3, CLASSES)
    fm_tr, h_tr, _ = maps(N_TRAIN, False)
    scale = 3.0 / (h_tr @ weight.T).std()  # logits with a standard deviation of about 3
    weight *= scale
    head = Head(weight, bias)

    def outputs(fmap, h, y):
        return Outputs(head.logits(h), h, y, fmap, head)

    fm_tr, h_tr, y_tr = maps(N_TRAIN, False)
    fm_va, h_va, y_va = maps(N_VAL, False)
    fm_id, h_id, y_id = maps(N_ID, False)
    fm_ood, h_ood, _ = maps(N_OOD, True)
    test = outputs(np.concatenate([fm_id, fm_ood]), np.concatenate([h_id, h_ood]),
                   np.concatenate([y_id, np.full(N_OOD, -1)]))
    return {"train": outputs(fm_tr, h_tr, y_tr), "val": outputs(fm_va, h_va, y_va), "test": test,
            "weight": weight, "bias": bias}


# ---------------------------------------------------------------------------------------------- helpers
def t(a, dtype=torch.float64) -> torch.Tensor:
    return torch.as_tensor(np.asarray(a), dtype=dtype)


def t4(h, dtype=torch.float64) -> torch.Tensor:
    """Features (N, D) as the (N, D, 1, 1) feature maps pytorch-ood's shaping detectors take."""
    return t(h, dtype)[:, :, None, None]


def lt(y) -> torch.Tensor:
    return torch.as_tensor(np.asarray(y), dtype=torch.long)


def npy(x) -> np.ndarray:
    return x.detach().cpu().numpy().astype(np.float64) if isinstance(x, torch.Tensor) else np.asarray(x, np.float64)


def linear(weight, bias, dtype=torch.float64) -> nn.Linear:
    fc = nn.Linear(weight.shape[1], weight.shape[0]).to(dtype)
    with torch.no_grad():
        fc.weight.copy_(t(weight, dtype))
        fc.bias.copy_(t(bias, dtype))
    return fc


def flat(fc: nn.Linear) -> Callable[[torch.Tensor], torch.Tensor]:
    """pytorch-ood's ``head`` for (N, D, 1, 1) maps: the linear layer on the flattened map."""
    return lambda x: fc(x.flatten(1))


@contextlib.contextmanager
def float64_default():
    """pytorch-ood allocates some state with the default dtype (Mahalanobis' means and covariance): float64 here."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        yield
    finally:
        torch.set_default_dtype(old)


def rel(ours, ref) -> float:
    """max |ours − ref| / max |ref|."""
    ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
    return float(np.max(np.abs(ours - ref)) / max(float(np.max(np.abs(ref))), 1e-300))


def rho(a, b) -> float:
    return float(spearmanr(a, b).statistic)


def report(name: str, compared: str, measure: str, verdict: str) -> None:
    if verdict.startswith(("MISMATCH", "ERROR")):
        FAILURES.append(name)
    print(f"{name:<11} | {compared:<78} | {measure:<24} | {verdict}", flush=True)


def close(name: str, compared: str, ours, ref, tol: float, documented: str | None = None) -> None:
    """One line: max relative |S − ref|; match within ``tol`` (``documented`` names a known constant factor)."""
    d = rel(ours, ref)
    ok = np.all(np.isfinite(ours)) and d <= tol
    verdict = ("match" if documented is None else f"match ({documented})") if ok else "MISMATCH"
    report(name, compared, f"max rel |diff| {d:.1e}", verdict)


def ranks(name: str, compared: str, ours, ref, documented: str) -> None:
    """One line for a comparison linked only by a different fit or design (the verdict is decided by the caller's
    own checks, passed in ``documented``): Spearman's ρ."""
    verdict = documented if documented.startswith("MISMATCH") else f"documented difference: {documented}"
    report(name, compared, f"Spearman {rho(ours, ref):.6f}", verdict)


# ---------------------------------------------------------------------------------------------- logit scores
def check_msp(d: dict) -> None:
    test = d["test"]
    close("msp", "S vs -MaxSoftmax (t=1)", MSPScorer().score(test),
          -npy(pood.MaxSoftmax(None).predict_logits(t(test.logits))), TOL64)


def check_maxlogit(d: dict) -> None:
    test = d["test"]
    close("maxlogit", "S vs -MaxLogit", MaxLogitScorer().score(test),
          -npy(pood.MaxLogit(None).predict_logits(t(test.logits))), TOL64)


def check_energy(d: dict) -> None:
    test = d["test"]
    for temp in (1.0, 2.5):
        close("energy", f"S vs -EnergyBased (T={temp})", EnergyScorer(temp).score(test),
              -npy(pood.EnergyBased(None, t=temp).predict_logits(t(test.logits))), TOL64)


def confident(test: Outputs) -> Outputs:
    """The test outputs of a more confident network (logits x 6): many probabilities below 1e-7."""
    return Outputs(6.0 * test.logits, test.features, head=test.head)


def check_entropy(d: dict) -> None:
    for label, out in (("", d["test"]), ("logits x6: ", confident(d["test"]))):
        ours, ref = EntropyScorer().score(out), -npy(pood.Entropy(None).predict_logits(t(out.logits)))
        clipped = (softmax(out.logits, axis=1) < 1e-7).any(axis=1)
        d_rest = rel(ours[~clipped], ref[~clipped])
        report("entropy", f"{label}S vs -Entropy; {clipped.sum()} rows with a p < 1e-7 (pood clips), others "
               f"{d_rest:.1e}", f"max abs |diff| {np.max(np.abs(ours - ref)):.1e}",
               "match" if rel(ours, ref) <= TOL64 else "documented difference: pytorch-ood clips p at 1e-7 (its "
               "entropy.py score()); oodsweep exact" if d_rest <= TOL64 else "MISMATCH")


def check_gen(d: dict) -> None:
    # pytorch-ood averages over the top M (ours sums: factor C here, M >= C) and clamps p to [1e-7, 1 - 1e-7]
    for label, out in (("", d["test"]), ("logits x6: ", confident(d["test"]))):
        ours = GenScorer(0.1, 100).score(out)
        ref = -CLASSES * npy(pood.GEN(None, gamma=0.1, M=None).predict_logits(t(out.logits)))
        p = softmax(out.logits, axis=1)
        exact = ((p >= 1e-7) & (p <= 1 - 1e-7)).all(axis=1)
        d_exact = rel(ours[exact], ref[exact])
        d_all = rel(ours, ref)
        verdict = ("match (pood averages over M: factor C)" if d_all <= TOL64 else
                   "documented difference: pytorch-ood clamps p to [1e-7, 1-1e-7] (its gen.py score()); oodsweep "
                   "exact in log space (gen.py docstring)" if d_exact <= TOL64 else "MISMATCH")
        report("gen", f"{label}gamma=.1, M=all: S vs -C*GEN; {(~exact).sum()} rows with a clamped p, others "
               f"{d_exact:.1e}", f"max rel |diff| {d_all:.1e}", verdict)


def check_odin(d: dict) -> None:
    # ODIN at eps = 0 is tempered MSP: pytorch-ood's ODIN through a linear "network" whose input is h
    test = d["test"]
    fc = linear(d["weight"], d["bias"])
    for temp in (1000.0, 1.0):
        ref = -npy(pood.ODIN(fc, eps=0.0, temperature=temp).predict(t(test.features)))
        close("odin", f"eps=0, T={temp:g}: S vs -ODIN(linear model on h)", OdinScorer(temp, 0.0).score(test), ref, TOL64)
    # eps > 0 through the same linear model: raw-space step, sign(0) = +1 (pytorch-ood: torch.sign, sign(0) = 0)
    ours = OdinScorer(1000.0, 0.0014).score_inputs(fc, t(test.features))
    ref = -npy(pood.ODIN(fc, eps=0.0014, temperature=1000.0).predict(t(test.features)))
    close("odin", "eps=0.0014, T=1000: score_inputs(linear model, h) vs -ODIN.predict(h)", ours, ref, TOL64)


def check_klmatching(d: dict) -> None:
    # oodsweep takes the KL to the predicted class's template, pytorch-ood the minimum over the templates
    train, test = d["train"], d["test"]
    ours_s = KLMatchingScorer().fit(train)
    ours = ours_s.score(test)
    ref = -npy(pood.KLMatching(None).fit_logits(t(train.logits), lt(train.labels)).predict_logits(t(test.logits)))
    logp = log_softmax(test.logits, axis=1)
    kl_all = (np.exp(logp)[:, None, :] * (logp[:, None, :] - np.log(ours_s.templates_)[None])).sum(axis=2)
    same = kl_all.argmin(axis=1) == test.logits.argmax(axis=1)
    d_same = rel(ours[same], ref[same])
    below = bool(np.all(ours[~same] <= ref[~same] + 1e-12))
    verdict = ("documented difference: KL to d_argmax (klmatching.py docstring) vs min_k KL (pood, OpenOOD)"
               if d_same <= TOL64 and below else "MISMATCH")
    report("klmatching", f"S vs -KLMatching: {same.sum()}/{len(same)} rows where argmin_k KL = argmax p: "
           f"{d_same:.1e}", f"max rel |diff| {rel(ours, ref):.1e}", verdict)


# ---------------------------------------------------------------------------------------------- feature scores
def check_mahalanobis(d: dict) -> None:
    # pood's covariance is the unnormalised sum (+1e-6 I) and its score half the distance
    train, test = d["train"], d["test"]
    n = len(train)
    with float64_default():
        ref = npy(pood.Mahalanobis(None).fit_features(t(train.features), lt(train.labels))
                  .predict_features(t(test.features)))
    ours = MahalanobisScorer(0.0, ridge=1e-6 / n).fit(train).score(test)
    close("mahalanobis", "eps=0, ridge=1e-6/N: S vs -2N*Mahalanobis", ours, -2 * n * ref, 1e-8,
          "½ dropped (mahalanobis.py docstring); pood's cov is not divided by N")


def check_rmds(d: dict) -> None:
    train, test = d["train"], d["test"]
    with float64_default():
        ref = npy(pood.RMD(None).fit_features(t(train.features), lt(train.labels)).predict_features(t(test.features)))
    close("rmds", "S vs -N*RMD (pood: both covariances undivided by N, +1e-6 I; ours pinvh)",
          RmdsScorer().fit(train).score(test), -len(train) * ref, 1e-6, "factor N on both distances")


def check_vim(d: dict) -> None:
    train, test = d["train"], d["test"]
    ref_d = pood.ViM(None, d=DIM // 2, w=t(d["weight"]), b=t(d["bias"]))
    ref_d.fit_features(t(train.features), lt(train.labels))
    vim = VimScorer(DIM // 2).fit(train)
    close("vim", f"D={DIM // 2}: S vs -ViM (alpha {vim.alpha_:.6g} vs {ref_d.alpha:.6g}; pood float32)",
          vim.score(test), -npy(ref_d.predict_features(t(test.features))), TOL32)


def check_knn(d: dict) -> None:
    train, test = d["train"], d["test"]
    ref = -npy(pood.KNN(None, k=50).fit_features(t(train.features), lt(train.labels))
               .predict_features(t(test.features)))
    close("knn", "k=50: S vs -KNN (normalised, distance to the 50th; our bank is float32)",
          KnnScorer(50, use_gpu=False).fit(train).score(test), ref, TOL32)


def check_she(d: dict) -> None:
    train, test = d["train"], d["test"]
    she = SheScorer().fit(train)
    ref_d = pood.SHE(None, linear(d["weight"], d["bias"]))
    try:
        ref_d.fit_features(t(train.features), lt(train.labels))
    except ValueError as exc:
        if not she.fallback_classes_:
            raise
        report("she", f"class(es) {she.fallback_classes_} without a correct training sample: ours falls back to the "
               f"class mean; pood raises", f"ValueError: {exc}",
               "documented difference: fallback (she.py; its note that pytorch-ood gives NaN is outdated)")
        return
    close("she", "inner product: S vs -SHE", she.score(test), -npy(ref_d.predict_features(t(test.features))), TOL64)


def check_nnguide(d: dict) -> None:
    # the same bank (all of the training set) and k; pood computes in float32
    train, test = d["train"], d["test"]
    ref_d = pood.NNGuide(None, linear(d["weight"], d["bias"], torch.float32), k=10)
    ref_d.fit_features(t(train.features, torch.float32), lt(train.labels))
    ref = -npy(ref_d.predict_features(t(test.features, torch.float32)))
    close("nnguide", "k=10, bank_fraction=1: S vs -NNGuide (whole training set as bank; pood float32)",
          NNGuideScorer(10, 1.0).fit(train).score(test), ref, TOL32)
    ranks("nnguide", "defaults: ours (k=100, bank_fraction=0.01 -> 2 of 200) vs pood (k=10, full bank)",
          NNGuideScorer().fit(train).score(test), ref,
          "bank subsampling α=0.01 (nnguide.py docstring; OpenOOD's default)")


def check_nci(d: dict) -> None:
    train, test = d["train"], d["test"]
    fc32 = linear(d["weight"], d["bias"], torch.float32)
    for alpha in (1e-4, 0.0):
        ref = -npy(pood.NCI(None, fc32, alpha=alpha).fit_features(t(train.features))
                   .predict_features(t(test.features)))
        close("nci", f"alpha={alpha:g}: S vs -NCI (pood float32)", NciScorer(alpha).fit(train).score(test), ref, TOL32)


def check_fdbd(d: dict) -> None:
    # train-mean normaliser, average over the C - 1 boundaries in both
    train, test = d["train"], d["test"]
    ref = -npy(pood.fDBD(None, linear(d["weight"], d["bias"], torch.float32)).fit_features(t(train.features))
               .predict_features(t(test.features)))
    close("fdbd", "normalizer=train_mean: S vs -fDBD (pood float32)", FdbdScorer("train_mean").fit(train).score(test),
          ref, TOL32)


def check_gradnorm(d: dict) -> None:
    # pood differentiates -mean_c log softmax (the paper's 1/C) with respect to the layer's weight only
    test = d["test"]
    ref_d = pood.GradNorm(linear(d["weight"], d["bias"]), param_filter=lambda name: name == "weight")
    close("gradnorm", "T=1: S vs -GradNorm(linear model, param_filter=weight)", GradNormScorer(1.0).score(test),
          -npy(ref_d.predict(t(test.features))), TOL64)


# ---------------------------------------------------------------------------------------------- shaping
def check_react(d: dict) -> None:
    train, test = d["train"], d["test"]
    fc = linear(d["weight"], d["bias"])
    for pct in (90.0, 65.0):
        ours_s = ReactScorer(pct).fit(train)
        ref_d = pood.ReAct(None, flat(fc), percentile=pct / 100).fit_feature_maps(t4(train.features), lt(train.labels))
        close("react", f"p={pct:g} of all training activations: S vs -ReAct (c {ours_s.threshold:.6g} vs "
              f"{ref_d.threshold:.6g})", ours_s.score(test), -npy(ref_d.predict_feature_maps(t4(test.features))),
              TOL64)


def check_ash(d: dict) -> None:
    test = d["test"]
    fc = linear(d["weight"], d["bias"])
    for variant in ("p", "b", "s"):
        for pct in (65.0, 90.0):
            ref = -npy(pood.ASH(None, flat(fc), variant=f"ash-{variant}", percentile=pct / 100)
                       .predict_feature_maps(t4(test.features)))
            close("ash", f"ash-{variant}, p={pct:g}: S vs -ASH", AshScorer(pct, variant).score(test), ref, TOL64)


def check_scale(d: dict) -> None:
    test = d["test"]
    fc = linear(d["weight"], d["bias"])
    for pct in (85.0, 65.0):
        ref = -npy(pood.SCALE(None, flat(fc), percentile=pct / 100).predict_feature_maps(t4(test.features)))
        close("scale", f"p={pct:g}: S vs -SCALE", ScaleScorer(pct).score(test), ref, TOL64)


def check_dice(d: dict) -> None:
    train, test = d["train"], d["test"]
    for pct in (90.0, 50.0):
        ours_s = DiceScorer(pct).fit(train)
        ref_d = pood.DICE(None, t(d["weight"]), t(d["bias"]), p=pct / 100)
        ref_d.fit_features(t(train.features), lt(train.labels))
        same_mask = bool(np.array_equal(ours_s.mask_, npy(ref_d.masked_w) != 0))
        close("dice", f"sparsity={pct:g}: S vs -DICE (same mask: {same_mask}; pood fits in float32)",
              ours_s.score(test), -npy(ref_d.predict_features(t(test.features))), TOL32)


def check_vra(d: dict) -> None:
    train, test = d["train"], d["test"]
    h_te = test.features
    fc = linear(d["weight"], d["bias"])
    # like for like: pood's clip with oodsweep's global (all-activation) thresholds a, b
    for low, high in ((10.0, 90.0), (40.0, 90.0)):
        ours_s = VraScorer(low, high).fit(train)
        a, b = ours_s.thresholds()
        ref_d = pood.VRA(None, flat(fc), lower_percentile=low / 100, upper_percentile=high / 100)
        ref_d.fit_feature_maps(t4(train.features), lt(train.labels))
        ref_d._lower_threshold = torch.full((DIM, 1, 1), a, dtype=torch.float64)  # global, not per unit
        ref_d._upper_threshold = torch.full((DIM, 1, 1), b, dtype=torch.float64)
        ref = -npy(ref_d.predict_feature_maps(t4(h_te)))
        ours = ours_s.score(test)
        below = int((h_te < a).sum())
        # the only difference left should be h < a: oodsweep zeroes it, pood clips it to a. Scoring test features
        # already raised to a makes the two formulas coincide:
        raised = Outputs(test.logits, np.maximum(h_te, a), head=test.head)
        d_raised = rel(ours_s.score(raised), ref)
        diff = rel(ours, ref)
        if diff <= TOL64:
            verdict = "match"
        elif d_raised <= TOL64:
            verdict = "documented difference: h < a -> 0 (paper, vra.py docstring) vs clip to a (pood, OpenOOD)"
        else:
            verdict = "MISMATCH"
        report("vra", f"({low:g},{high:g}) global a={a:.3g} b={b:.3g}: S vs -VRA(same a,b); {below} units < a; "
               f"with h:=max(h,a) {d_raised:.1e}", f"max rel |diff| {diff:.1e}", verdict)
    ref_d = pood.VRA(None, flat(fc), lower_percentile=0.10, upper_percentile=0.90)
    ref_d.fit_feature_maps(t4(train.features), lt(train.labels))
    ranks("vra", "(10,90) as each library fits it: ours global a,b vs pood per-unit quantiles + clip",
          VraScorer(10, 90).fit(train).score(test), -npy(ref_d.predict_feature_maps(t4(h_te))),
          "per-unit quantiles and clip below (vra.py docstring)")


def check_rankfeat(d: dict) -> None:
    # block 4 only; pytorch-ood's head pools the rank-1-removed map
    fc = linear(d["weight"], d["bias"])
    ref = -npy(pood.RankFeat(None, lambda x: fc(x.mean(dim=(2, 3)))).predict_feature_maps(t(d["test"].fmap)))
    close("rankfeat", f"fmap (N,{DIM},{SIDE},{SIDE}): S vs -RankFeat (oodsweep's pooled h' is float32)",
          RankFeatScorer(1.0).fit(d["train"]).score(d["test"]), ref, TOL32)


# ---------------------------------------------------------------------------------------------- fitted logit scores
def weibull_loglik(tail: np.ndarray, shape: float, scale: float, translation: float = TRANSLATION) -> float:
    y = np.sort(tail) + translation - np.min(tail)
    return float(np.sum(np.log(shape / scale) + (shape - 1) * np.log(y / scale) - (y / scale) ** shape))


def check_openmax(d: dict) -> None:
    train, test = d["train"], d["test"]
    z_tr = train.logits
    pred = z_tr.argmax(axis=1)
    n = len(test)
    # pytorch-ood's numpy OpenMax.predict measures distances only to the classes that are some row's argmax in the
    # batch (distances[:, clazz] for clazz in np.unique(argmax)) and leaves 0 for the others, so a row's score
    # depends on the other rows. For the like-for-like lines one one-hot anchor row per class is appended to the
    # batch (every class is then some row's argmax) and dropped from the result.
    batch_z = t(np.concatenate([test.logits, 50.0 * np.eye(CLASSES)]))

    def pood_scores(detector) -> np.ndarray:
        return npy(detector.predict_logits(batch_z))[:n]

    # like for like: labels = predictions (pood fits on every sample of a class, oodsweep on the correct ones),
    # euclidean distance (pood's euclid_weight=1), tail 25, alpha 10 (both clamp it to C)
    as_pred = Outputs(z_tr, train.features, pred, head=train.head)
    ours_s = OpenMaxScorer(tail_size=25, alpha_rank=10, distance="euclidean").fit(as_pred)
    ref_d = pood.OpenMax(None, tailsize=25, alpha=10, euclid_weight=1.0).fit_logits(t(z_tr), lt(pred))
    ours, ref = ours_s.score(test), 1.0 - pood_scores(ref_d)
    om = ref_d._openmax
    # the Weibull fits: oodsweep solves the likelihood equation (a tail without spread, e.g. one sample, is a step:
    # shape inf), pood calls scipy's exponweib.fit(f0=1, floc=0)
    better, worst_rel, steps = True, 0.0, []
    for c in om.distributions:
        if np.isinf(ours_s.shape_[c]):
            steps.append(int(c))
            continue
        tail = np.sort(np.linalg.norm(z_tr[pred == c] - ours_s.mavs_[c], axis=1))[-25:]
        ll_ours = weibull_loglik(tail, ours_s.shape_[c], ours_s.scale_[c])
        ll_ref = weibull_loglik(tail, om.distributions[c].c, om.distributions[c].scale)
        better &= ll_ours >= ll_ref - 1e-8 * max(1.0, abs(ll_ref))
        worst_rel = max(worst_rel, abs(ours_s.shape_[c] - om.distributions[c].c) / ours_s.shape_[c])
    # the same class models in both: oodsweep's fitted Weibulls put into pood's (a step as shape 1e12)
    for c in om.distributions:
        shape = ours_s.shape_[c] if np.isfinite(ours_s.shape_[c]) else 1e12
        om.distributions[c].c, om.distributions[c].scale = shape, ours_s.scale_[c]
        om.distributions[c].min_val = TRANSLATION - ours_s.shift_[c]
    d_same = rel(ours, 1.0 - pood_scores(ref_d))
    diff = rel(ours, ref)
    if diff <= 1e-6:
        verdict = "match"
    elif d_same <= 1e-9 and better:
        verdict = "documented difference: Weibull MLE solved exactly" + (", step for a spread-less tail" if steps
                                                                          else "") + " vs scipy fit (openmax.py)"
    else:
        verdict = "MISMATCH"
    report("openmax", f"euclid, tail 25, labels=pred: S vs 1-OpenMax; shape rel diff {worst_rel:.1e}, step classes "
           f"{steps or 'none'}, ours MLE >=: {better}; same Weibulls {d_same:.1e}", f"max rel |diff| {diff:.1e}",
           verdict)
    ref_d = pood.OpenMax(None).fit_logits(t(z_tr), lt(train.labels))
    ours_s = OpenMaxScorer().fit(train)
    ranks("openmax", "defaults: ours (eucos/200, correct only, tail 20) vs pood (euclid, all samples, tail 25)",
          ours_s.score(test), -pood_scores(ref_d), "distance, correct-only MAVs, tail (openmax.py docstring)")
    zt = t(test.logits)
    batch = npy(ref_d.predict_logits(zt))
    single = np.array([float(ref_d.predict_logits(zt[i:i + 1])[0]) for i in range(n)])
    ours_single = np.array([ours_s.score(test.subset(slice(i, i + 1)))[0] for i in range(n)])
    report("openmax", f"batch vs one row at a time: pood {np.max(np.abs(batch - single)):.2f} (rows changed "
           f"{int((np.abs(batch - single) > 1e-12).sum())}), ours {np.max(np.abs(ours_s.score(test) - ours_single)):.0e}",
           "row independence", "pytorch-ood issue (not oodsweep): openmax/numpy.py predict()")


def check_tempscale(d: dict) -> None:
    val, test = d["val"], d["test"]
    ours_s = TempScaleScorer().fit(val)
    ref_d = pood.TemperatureScaling(None).fit_logits(t(val.logits), lt(val.labels))
    t_ref = float(ref_d.t.item())
    nll_ours, nll_ref = ours_s.nll_, nll(val.logits, val.labels, t_ref)
    ranks("tempscale", f"fitted on val: T* {ours_s.temperature_:.6f} vs pood LBFGS {t_ref:.6f} (NLL {nll_ours:.6f} "
          f"vs {nll_ref:.6f})", ours_s.score(test), -npy(ref_d.predict_logits(t(test.logits))),
          ("bounded Brent vs 50-step LBFGS" + (", T* at the lower bound (separable val)"
                                                if np.isclose(ours_s.temperature_, ours_s.bounds[0]) else "")
           + "; log-odds of p_max (tempscale.py)") if nll_ours <= nll_ref + 1e-12
          else "MISMATCH: our T* has the larger NLL")
    ref_d.t = torch.nn.Parameter(torch.tensor(ours_s.temperature_, dtype=torch.float64))  # pood's T is float32
    ref = -npy(ref_d.predict_logits(t(test.logits)))
    close("tempscale", "same T*: confidence() (p_max) vs -TemperatureScaling", ours_s.confidence(test), ref, TOL64)
    # score() is the log-odds of p_max: expit(score) must be p_max (the inverse, log(p/(1-p)), is ill-conditioned)
    diff = rel(expit(ours_s.score(test)), ref)
    report("tempscale", f"same T*: expit(score()) vs -TemperatureScaling: {diff:.1e}; Spearman(score, p_max)",
           f"Spearman {rho(ours_s.score(test), ref):.6f}",
           "documented difference: log-odds of p_max, same ranking (tempscale.py)" if diff <= TOL64 else "MISMATCH")


# ---------------------------------------------------------------------------------------------- gram
class TinyNet(nn.Module):
    """Two conv blocks and a linear head, with the protocol's ``forward_blocks`` (what oodsweep's Gram reads)."""

    def __init__(self, classes: int):
        super().__init__()
        self.block1 = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))
        self.block2 = nn.Sequential(nn.Conv2d(6, 8, 3, padding=1), nn.ReLU())
        self.fc = nn.Linear(8, classes)

    def head_from_map(self, m: torch.Tensor) -> torch.Tensor:
        return self.fc(m.mean(dim=(2, 3)))

    def forward_blocks(self, x: torch.Tensor):
        m1 = self.block1(x)
        m2 = self.block2(m1)
        return self.head_from_map(m2), [m1, m2]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_blocks(x)[0]


def check_gram(d: dict) -> None:
    from torch.utils.data import DataLoader, TensorDataset

    from orchestrator.training import to_float

    seed = d["seed"]
    rng = np.random.default_rng(seed + 1)
    torch.manual_seed(seed)
    classes, powers = 3, 5
    net = TinyNet(classes).eval()
    images = rng.integers(0, 256, (N_TRAIN + 80, 3, 8, 8), dtype=np.uint8)
    tr, te = images[:N_TRAIN], images[N_TRAIN:]
    x_tr, x_te = to_float(tr, "cpu").contiguous(), to_float(te, "cpu").contiguous()
    with torch.no_grad():  # centre the logits so that every class is predicted on the training images
        net.fc.bias -= net(x_tr).mean(dim=0)
        pred = net(x_tr).argmax(dim=1)
    # like for like: no held-out normaliser (pood validation_fraction 0, ours holdout 0), no division by the
    # confidence, pood's bounds per label with labels = the predictions oodsweep's bounds are per
    ours = GramScorer(powers, divide_by_confidence=False, holdout=0.0).fit(None, net, images=tr)
    ref_d = pood.Gram(net.head_from_map, [net.block1, net.block2], classes, num_poles_list=list(range(1, powers + 1)))
    ref_d.validation_fraction = 0.0
    ref_d.fit(DataLoader(TensorDataset(x_tr, pred), batch_size=64))
    ref = -npy(ref_d.predict(x_te))
    score = ours.score_inputs(net, to_float(te, "cpu"))
    # the references divide by |bound + 1e-6|, oodsweep by max(|bound|, 1e-6): the same scorer with the references'
    # denominator, put in place of methods.gram.deviation for this one call, isolates that choice
    import methods.gram as gram_module

    def reference_deviation(values, low, high, eps=gram_module.EPS):
        return (np.maximum(low - values, 0.0) / np.abs(low + eps)
                + np.maximum(values - high, 0.0) / np.abs(high + eps)).sum(axis=-1)

    own, gram_module.deviation = gram_module.deviation, reference_deviation
    gram_module.forget_memoised()
    try:
        as_reference = GramScorer(powers, divide_by_confidence=False, holdout=0.0).fit(None, net, images=tr)
        d_eps = rel(as_reference.score_inputs(net, to_float(te, "cpu")), ref)
    finally:
        gram_module.deviation = own
        gram_module.forget_memoised()
    d = rel(score, ref)
    verdict = ("match" if d <= 1e-4 else "documented difference: max(|min|, 1e-6) vs |min + 1e-6| (gram.py docstring)"
               if d_eps <= 1e-4 else "MISMATCH")
    report("gram", f"P={powers}, no holdout/confidence, labels=pred: S vs -Gram (tiny CNN); with pood's eps "
           f"{d_eps:.1e}", f"max rel |diff| {d:.1e}", verdict)


# ---------------------------------------------------------------------------------------------- main
#: One check per method, in the order of the brief (each prints one or more lines).
CHECKS = [check_msp, check_maxlogit, check_energy, check_entropy, check_klmatching, check_odin, check_mahalanobis,
          check_vim, check_knn, check_react, check_ash, check_scale, check_dice, check_vra, check_gen, check_gradnorm,
          check_fdbd, check_she, check_rmds, check_nnguide, check_nci, check_rankfeat, check_openmax, check_gram,
          check_tempscale]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=SEED, help="seed of the synthetic arrays (default %(default)s)")
    seed = parser.parse_args().seed
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    data = make_data(np.random.default_rng(seed))
    data["seed"] = seed
    train = data["train"]
    acc = float((train.logits.argmax(axis=1) == train.labels).mean())
    print(f"pytorch-ood {getattr(pytorch_ood, '__version__', '?')}, torch {torch.__version__}; seed {seed}; "
          f"{CLASSES} classes, {DIM}-d h ({(train.features == 0).mean():.0%} zeros), {N_TRAIN} train ({acc:.0%} "
          f"correct), {N_VAL} val, {N_ID}+{N_OOD} test")
    print(f"{'method':<11} | {'what was compared':<78} | {'measure':<24} | verdict")
    with threadpool_limits(1):
        for check in CHECKS:
            try:
                check(data)
            except Exception as exc:  # noqa: BLE001 - one failing library call should not hide the other lines
                report(check.__name__.removeprefix("check_"), "raised", type(exc).__name__, f"ERROR: {exc}")
    print(f"\n{len(FAILURES)} MISMATCH/ERROR line(s){': ' + ', '.join(FAILURES) if FAILURES else ''}")
    return 1 if FAILURES else 0

if __name__ == "__main__":
    sys.exit(main())
