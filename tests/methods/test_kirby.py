"""KIRBY: Grad-CAM erasing above the threshold only, diffusion inpainting, a frozen classifier."""
import numpy as np
import pytest
import torch

import methods
from methods.base import FeatureScorer, Outputs
from methods.kirby import KirbyScorer, kirby_features
from methods.outlier_synthesis import diffusion_inpaint, grad_cam, kirby_images
from orchestrator.knobs import KnobError
from orchestrator.training import to_float
from orchestrator.trial import TrialSettings, run_trial


def test_grad_cam_is_normalised_and_leaves_the_model_alone(bench, small_cnn):
    model = small_cnn().train()
    cam = grad_cam(model, to_float(bench.id_train.x[:6], "cpu"))
    assert cam.shape == (6, 8, 8)
    assert cam.min() >= 0 and cam.max() <= 1
    assert model.training and all(p.grad is None for p in model.parameters())


@pytest.mark.parametrize("threshold", [0.3, 0.7])
def test_erases_only_pixels_above_threshold(bench, threshold, small_cnn):
    model = small_cnn()
    x = to_float(bench.id_train.x[:6], "cpu")
    cam = grad_cam(model, x)
    out, erase = kirby_images(model, x, threshold)
    assert torch.equal(erase, cam >= threshold)
    assert 0 < int(erase.sum()) < erase.numel()
    keep = ~erase[:, None]
    assert torch.equal(out[keep], x[keep])  # below-threshold pixels untouched
    assert not torch.equal(out[~keep], x[~keep])


def test_diffusion_inpainting_is_harmonic():
    ramp = torch.linspace(0, 1, 10).view(1, 1, 1, 10).expand(2, 1, 10, 10).clone()  # a linear ramp in x
    erase = torch.zeros(2, 10, 10, dtype=torch.bool)
    erase[:, 3:7, 3:7] = True
    out = diffusion_inpaint(ramp, erase, iters=200)
    assert torch.allclose(out, ramp, atol=1e-3)  # harmonic fill reproduces a linear function
    flat = torch.full((1, 1, 6, 6), 0.4)
    hole = torch.zeros(1, 6, 6, dtype=torch.bool)
    hole[0, 1:4, 1:4] = True
    assert torch.allclose(diffusion_inpaint(flat * (~hole[:, None]), hole, iters=0).masked_select(hole[:, None]),
                          torch.full((9,), 0.4))  # started from the mean of the un-erased pixels


def test_fit_leaves_weights_unchanged(bench, small_cnn):
    model = small_cnn().eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = bench.id_train.x[:64]
    with torch.no_grad():
        z, h, _ = model.forward_all(to_float(x, "cpu"))
    sc = KirbyScorer(0.3, hidden=32, epochs=2).fit(Outputs(z.numpy(), h.numpy(), bench.id_train.y[:64]), model,
                                                   images=x)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())
    assert sc.synth_features_.shape == h.shape
    assert not np.allclose(sc.synth_features_, h.numpy())
    assert np.allclose(kirby_features(model, x), sc.synth_features_)  # deterministic


def test_method_flags():
    k = methods.get("kirby")
    sc = k.scorer(k.resolve({}))
    assert sc.needs_fit and sc.needs_train_images and not k.trains() and isinstance(sc, FeatureScorer)
    assert k.substitute
    assert (sc.threshold, sc.inpaint_iters, sc.head_kw["hidden"]) == (0.3, None, 2048)  # None: 2·max(H, W)
    assert k.scorer(k.resolve({"inpaint_iters": 5, "threshold": 0.5})).inpaint_iters == 5
    assert not set(k.own_knobs()) & k.network_knobs()  # post-hoc: the classifier never retrains
    for bad in ({"threshold": 0.0}, {"threshold": 1.5}, {"inpaint_iters": -1}):
        with pytest.raises(KnobError, match=next(iter(bad))):
            k.resolve(bad)


def test_run_trial_end_to_end_accuracy_unchanged(bench, tmp_path):
    base = run_trial({"epochs": 2}, bench, TrialSettings("msp", cache_dir=str(tmp_path), threads=2))
    r = run_trial({"epochs": 2, "head_epochs": 2, "hidden": 256}, bench,
                  TrialSettings("kirby", cache_dir=str(tmp_path), threads=2))
    assert r["model_key"] == base["model_key"] and r["id/acc"] == base["id/acc"]
    assert np.isfinite(r["near/auroc"]) and np.isfinite(r["id/acc"])
