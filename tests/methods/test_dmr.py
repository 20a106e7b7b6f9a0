"""DMR: feature-space marginals, the ablation, the rejection head, a frozen classifier."""
import numpy as np
import pytest
import torch

import methods
from methods.base import FeatureScorer, Outputs
from methods.dmr import DMRScorer
from methods.outlier_synthesis import DMRSynthesizer, train_rejection_head
from orchestrator import data as benchmarks
from orchestrator.knobs import KnobError
from orchestrator.metrics import ood_metrics
from orchestrator.trial import TrialSettings, run_trial


def _features(n_per=60, classes=4, dim=16, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 3, (classes, dim)) + 5.0
    y = np.repeat(np.arange(classes), n_per)
    return centres[y] + rng.normal(0, 0.5, (len(y), dim)), y


def test_marginals_have_zero_class_mean_the_ablation_does_not():
    h, y = _features()
    rng = np.random.default_rng(0)
    single = DMRSynthesizer(h, y, "single", s=3.0, p=0.5)
    m = single.raw(np.arange(len(h)), rng)
    for c in range(4):
        assert np.allclose(m[y == c].mean(0), 0.0, atol=1e-10)
    assert np.allclose(m, h - np.stack([h[y == c].mean(0) for c in range(4)])[y])
    idx = np.arange(2000) % len(h)
    multi = DMRSynthesizer(h, y, "multiple", k=3).raw(idx, rng)
    ablation = DMRSynthesizer(h, y, "without_dmr", k=3).raw(idx, rng)
    assert np.abs(multi.mean(0)).max() < 0.3  # centred in expectation
    assert np.abs(ablation.mean(0)).max() > 2.0  # raw features: mean near the data mean, far from 0
    assert np.allclose(ablation.mean(0), h.mean(0), atol=0.5)


def test_amplification_by_s_with_probability_p():
    h, y = _features()
    idx = np.arange(len(h))
    base = DMRSynthesizer(h, y, "single", s=3.0, p=0.0)(idx, np.random.default_rng(0))
    always = DMRSynthesizer(h, y, "single", s=3.0, p=1.0)(idx, np.random.default_rng(0))
    assert np.allclose(always, 3.0 * base, rtol=1e-5)
    half = DMRSynthesizer(h, y, "single", s=3.0, p=0.5)(idx, np.random.default_rng(0))
    ratio = np.linalg.norm(half, axis=1) / np.linalg.norm(base, axis=1)
    assert set(np.round(ratio, 4)) == {1.0, 3.0}
    assert 0.3 < (np.round(ratio) == 3).mean() < 0.7
    with pytest.raises(ValueError, match="variant"):
        DMRSynthesizer(h, y, "nope")
    with pytest.raises(ValueError, match="k must be"):
        DMRSynthesizer(h, y, "multiple", k=9)


def test_rejection_head_separates_id_from_synthetic():
    h, y = _features()
    synth = DMRSynthesizer(h, y, "single")
    head = train_rejection_head(h, synth, hidden=64, epochs=5, seed=0)
    with torch.no_grad():
        s_id = -head(torch.tensor(h, dtype=torch.float32)).numpy()
        s_ood = -head(torch.tensor(synth(np.arange(len(h)), np.random.default_rng(1)))).numpy()
    assert ood_metrics(s_id, s_ood, "classic")["auroc"] > 0.95


def test_scorer_fits_on_training_outputs_only():
    h, y = _features()
    sc = DMRScorer("single", hidden=64, epochs=3).fit(Outputs(np.zeros((len(h), 4)), h, y))
    assert sc.score(Outputs(np.zeros((3, 4)), h[:3])).shape == (3,)
    with pytest.raises(RuntimeError, match="fit"):
        DMRScorer().score(Outputs(np.zeros((3, 4)), h[:3]))


def test_method_is_posthoc_and_labels_its_substitute():
    dmr = methods.get("dmr")
    scorer = dmr.scorer(dmr.resolve({}))
    assert not dmr.trains() and scorer.needs_fit and isinstance(scorer, FeatureScorer)
    assert not set(dmr.own_knobs()) & dmr.network_knobs()  # post-hoc: only the head is trained, per trial
    assert (scorer.variant, scorer.s, scorer.p, scorer.k, scorer.anchor) == ("single", 3.0, 0.5, 5, "origin")
    assert scorer.head_kw == {"hidden": 2048, "epochs": 10, "lr": 0.01, "weight_decay": 4e-4, "ood_prob": 0.5,
                              "seed": 0}
    scorer = dmr.scorer(dmr.resolve({"variant": "multiple", "k": 3, "hidden": 64, "head_epochs": 2}))
    assert (scorer.variant, scorer.k, scorer.head_kw["hidden"], scorer.head_kw["epochs"]) == ("multiple", 3, 64, 2)
    for bad in ({"variant": "nope"}, {"p": 1.5}, {"k": 1}, {"anchor": "centre"}, {"ood_prob": 1.0}):
        with pytest.raises(KnobError, match=next(iter(bad))):
            dmr.resolve(bad)
    assert dmr.substitute == "feature-space marginal representations instead of StyleGAN-XL latents"


def test_classifier_weights_and_accuracy_unchanged(tmp_path):
    bench = benchmarks.load("digits", smoke=True)
    base = run_trial({"epochs": 2}, bench, TrialSettings("msp", cache_dir=str(tmp_path), threads=2))
    path = tmp_path / "models" / base["model_key"] / "model.pt"
    before = torch.load(path, weights_only=True)
    cfg = {"epochs": 2, "head_epochs": 2, "hidden": 256}
    r = run_trial(cfg, bench, TrialSettings("dmr", cache_dir=str(tmp_path), threads=2))
    assert r["model_key"] == base["model_key"] and not r["trained_model"]  # the shared CE classifier
    assert r["id/acc"] == base["id/acc"]
    after = torch.load(path, weights_only=True)
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert np.isfinite(r["near/auroc"])
