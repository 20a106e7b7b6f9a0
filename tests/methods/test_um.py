"""UM: the loss floor flips the gradient, the floor is estimated as the authors do, end to end."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

import methods
from methods.um import UMTrainer, estimate_floor, floor_loss, masked_layers, mean_ce, random_mask_
from orchestrator import data as benchmarks
from orchestrator.knobs import KnobError
from orchestrator.models.backbones import build_classifier
from orchestrator.trial import TrialSettings, run_trial


def _model(seed=0):
    torch.manual_seed(seed)
    return build_classifier("small_cnn", 1, 8, 5, [0.3], [0.4])


def _batch(n=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, 8, 8, generator=g), torch.arange(n) % 5


def _params(**config):
    return methods.get("um").resolve(config)


def _grad(model, loss):
    model.zero_grad()
    loss.backward()
    return torch.cat([p.grad.flatten() for p in model.parameters()])


@pytest.mark.parametrize("offset, sign", [(-0.5, 1.0), (+0.5, -1.0)])
def test_gradient_flips_sign_below_the_floor(offset, sign):
    model = _model().eval()
    x, y = _batch()
    ce = F.cross_entropy(model(x), y)
    g_ce = _grad(model, ce)
    um = float(ce.detach()) + offset  # offset < 0: batch CE above the floor (descend); > 0: below (ascend)
    trainer = UMTrainer(_params(um=um))
    trainer.um = um
    g_um = _grad(model, trainer.loss(model, x, y, 1))
    assert torch.allclose(g_um, sign * g_ce, atol=1e-6)
    assert float(floor_loss(ce.detach(), um)) == pytest.approx(abs(float(ce.detach()) - um) + um)


def test_beta_scales_the_batch_ce():
    ce = torch.tensor(0.4)
    assert float(floor_loss(ce, 1.0, beta=2.0)) == pytest.approx(abs(0.8 - 1.0) + 1.0)


def test_random_mask_zeroes_exactly_the_ratio_per_layer():
    model = _model()
    with torch.no_grad():
        for _, layer in masked_layers(model):
            layer.weight.add_(1e-3 * torch.sign(layer.weight) + 1e-4)  # no zero weights to start with
    random_mask_(model, 0.035, torch.Generator().manual_seed(0))
    for _, layer in masked_layers(model):
        assert int((layer.weight == 0).sum()) == int(round(0.035 * layer.weight.numel()))


def test_floor_estimate_uses_a_masked_copy_in_eval_mode():
    bench = benchmarks.load("digits", smoke=True)
    model = _model().train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    est = estimate_floor(model, bench.id_train.x, bench.id_train.y, 0.035, seed=0)
    assert est == estimate_floor(model, bench.id_train.x, bench.id_train.y, 0.035, seed=0)  # seeded
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # model untouched
    assert model.training
    assert estimate_floor(model, bench.id_train.x, bench.id_train.y, 0.0) == pytest.approx(
        mean_ce(model, bench.id_train.x, bench.id_train.y, "cpu"))
    assert est != pytest.approx(estimate_floor(model, bench.id_train.x, bench.id_train.y, 0.5, seed=0))


def test_floor_relative_or_absolute():
    bench = benchmarks.load("digits", smoke=True)
    model = _model()
    rel = UMTrainer(_params(finetune_epochs=1, um_factor=2.0))
    rel.setup(model, bench)
    assert rel.um == pytest.approx(2.0 * rel.estimated)
    absolute = UMTrainer(_params(finetune_epochs=1, um=0.123, um_factor=2.0))
    absolute.setup(model, bench)
    assert absolute.um == 0.123 and absolute.estimated is None
    restored = UMTrainer(_params(finetune_epochs=1, um=9.0))
    restored.load_extra_state(rel.extra_state())
    assert restored.um == pytest.approx(rel.um)  # a resumed trial keeps its floor
    for bad in ({"um_factor": 0}, {"um": -0.1}, {"mask_ratio": 1.0}):
        with pytest.raises(KnobError, match=next(iter(bad))):
            _params(**bad)
    with pytest.raises(ValueError, match="um_factor"):  # the trainer checks too (a hand-built config)
        UMTrainer({**_params(), "um_factor": 0})


def test_method_knobs_and_scorer():
    um = methods.get("um")
    assert um.finetunes and um.trains()
    own = {"um_factor", "mask_ratio", "finetune_epochs", "finetune_lr", "um", "beta"}
    assert own <= um.network_knobs() and "temperature" not in um.network_knobs() and "scorer" not in um.network_knobs()
    assert um.own_knobs()["um"].optional and um.own_knobs()["um"].default is None  # None: estimate the floor
    params = um.resolve({"um_factor": 2, "temperature": 2.0, "scorer": "energy"})
    assert params["mask_ratio"] == 0.035 and params["beta"] == 1.0 and params["um"] is None
    scorer = um.scorer(params)
    assert type(scorer).__name__ == "EnergyScorer" and scorer.temperature == 2.0
    assert type(um.scorer(um.resolve({}))).__name__ == "EnergyScorer"
    assert type(um.scorer(um.resolve({"scorer": "msp"}))).__name__ == "MSPScorer"
    for training in ("ascood", "um"):
        with pytest.raises(KnobError, match="unknown scorer"):
            um.resolve({"scorer": training})


def test_run_trial_end_to_end(tmp_path):
    bench = benchmarks.load("digits", smoke=True)
    r = run_trial({"epochs": 1, "finetune_epochs": 1}, bench, TrialSettings("um", cache_dir=str(tmp_path), threads=2))
    assert np.isfinite(r["near/auroc"]) and np.isfinite(r["id/acc"])
    assert r["trained_model"]
