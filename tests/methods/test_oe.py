"""Outlier Exposure: the uniform-CE penalty, every outlier source, the aux error, end to end."""
import dataclasses
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import methods
from methods.oe import OETrainer, oe_penalty
from methods.outlier_synthesis import ClassSampler, OutlierSource
from orchestrator.data.base import Split
from orchestrator.knobs import KnobError
from orchestrator.training import to_float
from orchestrator.trial import TrialSettings, run_trial


def _params(**config):
    return methods.get("oe").resolve(config)


def test_penalty_is_cross_entropy_to_uniform():
    z = torch.randn(6, 5)
    expected = -(F.log_softmax(z, 1).mean(1)).mean()
    assert float(oe_penalty(z)) == pytest.approx(float(expected), rel=1e-5)
    assert float(oe_penalty(torch.zeros(3, 5))) == pytest.approx(math.log(5))  # its minimum
    assert float(oe_penalty(torch.tensor([[4.0, 0, 0, 0, 0]]))) > math.log(5)


def test_loss_is_ce_plus_lambda_penalty(bench, small_cnn):
    model = small_cnn().eval()
    tr = OETrainer(_params(epochs=1, outliers="gaussian", oe_lambda=0.5))
    tr.setup(model, bench)
    x, y = to_float(bench.id_train.x[:8], "cpu"), torch.as_tensor(bench.id_train.y[:8])
    torch.manual_seed(3)
    loss = tr.loss(model, x, y, 1)
    torch.manual_seed(3)
    x_out = tr.source.batch(model, x, y, 1, 1)
    z = model.logits_from_normalized(torch.cat([model.normalize(x), x_out]))
    assert float(loss.detach()) == pytest.approx(float((F.cross_entropy(z[:8], y) + 0.5 * oe_penalty(z[8:])).detach()), rel=1e-5)


def test_aux_source_needs_an_aux_set(bench, small_cnn):
    assert not bench.aux
    with pytest.raises(ValueError, match="auxiliary outlier set"):
        OETrainer(_params(epochs=1, outliers="aux")).setup(small_cnn(), bench)
    pool = np.full((10, 1, 8, 8), 200, np.uint8)
    with_aux = dataclasses.replace(bench, aux={"flat": Split(pool)})
    src = OutlierSource(_params(outliers="aux"))
    src.prepare(with_aux)
    model = small_cnn()
    x = to_float(bench.id_train.x[:4], "cpu")
    out = src.batch(model, x, torch.zeros(4, dtype=torch.long), 1, 1)
    assert torch.allclose(out, model.normalize(torch.full((4, 1, 8, 8), 200 / 255.0)))
    with pytest.raises(KnobError, match="outliers"):
        _params(outliers="imagenet")
    with pytest.raises(ValueError, match="outliers must be one of"):  # the source checks too (a hand-built config)
        OutlierSource({**_params(), "outliers": "imagenet"})


@pytest.mark.parametrize("params", [{"outliers": "gaussian"}, {"outliers": "kirby"},
                                    {"outliers": "ascood", "ood_type": "gradient", "alpha_max": 1.0},
                                    {"outliers": "ascood", "ood_type": "shuffle"},
                                    {"outliers": "dmr", "dmr_variant": "multiple", "dmr_k": 3},
                                    {"outliers": "dmr", "dmr_variant": "without_dmr", "dmr_k": 3}])
def test_every_source_gives_one_outlier_per_sample(bench, params, small_cnn):
    model = small_cnn().train()
    src = OutlierSource(_params(**params))
    src.prepare(bench)
    x, y = to_float(bench.id_train.x[:6], "cpu"), torch.as_tensor(bench.id_train.y[:6])
    out = src.batch(model, x, y, 1, 3)
    assert out.shape == x.shape and torch.isfinite(out).all() and not out.requires_grad
    assert not torch.allclose(out, model.normalize(x))
    assert model.training and all(p.grad is None for p in model.parameters())


def test_pixel_dmr_single_is_mean_image_plus_marginal(bench):
    x_all = bench.id_train.x.astype(np.float32) / 255.0
    y_all = bench.id_train.y
    for p, scale in ((0.0, 1.0), (1.0, 3.0)):
        src = OutlierSource(_params(outliers="dmr", dmr_p=p, dmr_s=3.0))
        src.prepare(bench)
        x, y = torch.from_numpy(x_all[:5]), torch.as_tensor(y_all[:5])
        mu_y = torch.from_numpy(np.stack([x_all[y_all == c].mean(0) for c in y_all[:5]]))
        expected = (torch.from_numpy(x_all.mean(0)) + scale * (x - mu_y)).clamp(0, 1)
        assert torch.allclose(src.dmr_pixels(x, y), expected, atol=1e-5)


def test_class_sampler_draws_distinct_classes(bench):
    s = ClassSampler(bench.id_train.y)
    picks = s.draw(50, 4, np.random.default_rng(0))
    labels = bench.id_train.y[picks]
    assert all(len(set(row)) == 4 for row in labels)


def test_ascood_source_uses_ascoods_knobs_and_alpha_schedule(bench, small_cnn):
    oe, ascood = methods.get("oe"), methods.get("ascood")
    for name in ("ood_type", "p_inv", "alpha_max", "alpha_min", "alpha_min_frac"):
        mine, theirs = oe.own_knobs()[name], ascood.own_knobs()[name]  # same domain and default as ASCOOD
        assert dataclasses.replace(mine, help="") == dataclasses.replace(theirs, help=""), name
    src = OutlierSource(_params(outliers="ascood"))
    assert (src.ascood.alpha_max, src.ascood.alpha_min) == (300.0, pytest.approx(30.0))  # alpha_min_frac · alpha_max
    assert OutlierSource(_params(outliers="ascood", alpha_min=5.0)).ascood.alpha_min == 5.0
    with pytest.raises(ValueError, match="alpha_min"):
        OutlierSource(_params(outliers="ascood", alpha_min=400.0))
    model = small_cnn().eval()
    src = OutlierSource(_params(outliers="ascood", ood_type="gaussian", alpha_max=2.0, alpha_min=1.0))
    src.prepare(bench)
    x, y = to_float(bench.id_train.x[:4], "cpu"), torch.as_tensor(bench.id_train.y[:4])
    torch.manual_seed(0)
    out = src.batch(model, x, y, 2, 2)  # the last epoch: α = α_min
    torch.manual_seed(0)
    assert torch.allclose(out, 1.0 * torch.randn_like(x))


def test_method_knobs_and_scorer():
    oe = methods.get("oe")
    assert oe.trains() and not oe.finetunes
    source_knobs = {"outliers", "dmr_variant", "dmr_s", "dmr_p", "dmr_k", "kirby_threshold", "gaussian_std",
                    "ood_type", "p_inv", "alpha_max", "alpha_min", "alpha_min_frac"}
    assert {"oe_lambda"} | source_knobs <= oe.network_knobs()
    assert "scorer" not in oe.network_knobs() and "aux_set" not in oe.own_knobs()
    assert type(oe.scorer(oe.resolve({}))).__name__ == "MSPScorer"
    assert type(oe.scorer(oe.resolve({"scorer": "energy", "temperature": 2.0}))).__name__ == "EnergyScorer"
    with pytest.raises(KnobError, match="unknown scorer"):
        oe.resolve({"scorer": "ascood"})


def test_run_trial_end_to_end(bench, tmp_path):
    r = run_trial({"epochs": 1, "outliers": "dmr"}, bench, TrialSettings("oe", cache_dir=str(tmp_path), threads=2))
    assert np.isfinite(r["near/auroc"]) and np.isfinite(r["id/acc"])
