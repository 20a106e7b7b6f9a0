"""UMAP: a learned top-k mask with frozen weights, baked into a plain Classifier."""
import io

import numpy as np
import pytest
import torch

import methods
from methods.um import masked_layers
from methods.umap import TopKMask, UMAPTrainer, kept_count, topk_mask
from orchestrator import data as benchmarks
from orchestrator.knobs import KnobError
from orchestrator.models.backbones import build_classifier
from orchestrator.trial import TrialSettings, run_trial


def _model(seed=0):
    torch.manual_seed(seed)
    return build_classifier("small_cnn", 1, 8, 5, [0.3], [0.4])


def _params(**config):
    return methods.get("umap").resolve(config)


def test_topk_mask_keeps_exact_fraction_and_passes_gradient_straight_through():
    s = torch.randn(7, 13, requires_grad=True)
    m = TopKMask.apply(s.abs(), 0.8)
    assert int(m.sum()) == kept_count(s.numel(), 0.8) == 91 - int(0.2 * 91)
    kept = s.detach().abs().flatten()[m.flatten() == 1]
    dropped = s.detach().abs().flatten()[m.flatten() == 0]
    assert kept.min() >= dropped.max()
    (m * torch.arange(91.0).view(7, 13)).sum().backward()
    assert torch.allclose(s.grad, torch.arange(91.0).view(7, 13) * torch.sign(s.detach()))


def test_frozen_weights_only_the_mask_changes():
    bench = benchmarks.load("digits", smoke=True)
    model = _model()
    before = {k: v.clone() for k, v in model.named_parameters()}
    tr = UMAPTrainer(_params(finetune_epochs=2, finetune_lr=0.5, keep_ratio=0.8, um=0.05), seed=0)
    tr.setup(model, bench)
    init = {n: s.detach().clone() for n, s in tr.scores.items()}
    for epoch in (1, 2):
        tr.train_epoch(model, bench.id_train.x[:128], bench.id_train.y[:128], epoch)
    masks = tr.masks(hard=True)
    weight_names = {f"{n}.weight" for n, _ in masked_layers(model)}
    for name, p in model.named_parameters():
        if name in weight_names:
            layer = name[: -len(".weight")]
            assert int(masks[layer].sum()) == kept_count(p.numel(), 0.8)  # exactly the keep ratio
            assert torch.equal(p.detach(), before[name] * masks[layer])  # the frozen weight, masked
            assert torch.equal(tr.originals[layer], before[name])
        else:
            assert torch.equal(p.detach(), before[name]), name  # biases, BN affine: untouched
    assert any(not torch.equal(init[n], s.detach()) for n, s in tr.scores.items())  # the scores learned
    # ... and the learned mask is not just the initial one
    assert any(not torch.equal(masks[n], topk_mask(init[n].abs(), 0.8)) for n in masks)
    # a plain Classifier state dict: loads strictly into a fresh network
    _model(1).load_state_dict(model.state_dict(), strict=True)


def test_unfrozen_weights_train_too_and_state_survives_a_checkpoint():
    bench = benchmarks.load("digits", smoke=True)
    model = _model()
    before = {k: v.clone() for k, v in model.named_parameters()}
    tr = UMAPTrainer(_params(finetune_epochs=2, freeze_weights=False, um=0.05), seed=0)
    tr.setup(model, bench)
    tr.train_epoch(model, bench.id_train.x[:128], bench.id_train.y[:128], 1)
    assert not torch.equal(model.head.fc.bias.detach(), before["head.fc.bias"])
    buf = io.BytesIO()  # through torch.save / weights_only load, as the orchestrator's checkpoints
    torch.save({"model": model.state_dict(), "trainer": tr.state_dict()}, buf)
    buf.seek(0)
    ckpt = torch.load(buf, weights_only=True)
    state, saved = ckpt["model"], ckpt["trainer"]
    # resume: a fresh trainer on the base model, then the checkpoint's model and trainer state
    model2 = _model()
    tr2 = UMAPTrainer(_params(finetune_epochs=2, freeze_weights=False, um=0.05), seed=0)
    tr2.setup(model2, bench)
    model2.load_state_dict(state)
    tr2.load_state_dict(saved)
    for n in tr.names:
        assert torch.equal(tr.scores[n], tr2.scores[n]) and torch.equal(tr.originals[n], tr2.originals[n])
    tr.train_epoch(model, bench.id_train.x[:128], bench.id_train.y[:128], 2)
    tr2.train_epoch(model2, bench.id_train.x[:128], bench.id_train.y[:128], 2)
    for (k, a), b in zip(model.state_dict().items(), model2.state_dict().values(), strict=False):
        assert torch.allclose(a.float(), b.float(), atol=1e-5), k


def test_method_knobs():
    umap = methods.get("umap")
    assert umap.finetunes
    assert {"keep_ratio", "freeze_weights", "score_init", "um_factor", "um", "mask_ratio", "beta",
            "finetune_epochs", "finetune_lr"} <= umap.network_knobs()
    assert set(methods.get("um").own_knobs()) - {"scorer"} <= set(umap.own_knobs())  # UM's knobs, reused
    assert type(umap.scorer(umap.resolve({}))).__name__ == "EnergyScorer"
    with pytest.raises(KnobError, match="keep_ratio"):
        _params(keep_ratio=0)
    with pytest.raises(KnobError, match="score_init"):
        _params(score_init="zeros")
    with pytest.raises(ValueError, match="keep_ratio"):  # the trainer checks too (a hand-built config)
        UMAPTrainer({**_params(), "keep_ratio": 0})


def test_run_trial_end_to_end(tmp_path):
    bench = benchmarks.load("digits", smoke=True)
    r = run_trial({"epochs": 1, "finetune_epochs": 1}, bench, TrialSettings("umap", cache_dir=str(tmp_path), threads=2))
    assert np.isfinite(r["near/auroc"]) and np.isfinite(r["id/acc"])
