"""ASCOOD's defining mechanics on tiny inputs."""
import pytest
import torch

from methods.ascood import ASCOODTrainer, alpha_at, gradient_outliers, saliency, shuffle_outliers, uniform_kl
from orchestrator.models.backbones import build_classifier


def _model(seed=0, classes=3):
    torch.manual_seed(seed)
    m = build_classifier("small_cnn", 1, 8, classes, [0.3], [0.4], head="zscore", sigma=0.5)
    return m.eval()


def _batch(n=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, 8, 8, generator=g), torch.tensor([0, 1, 2, 0][:n])


def test_alpha_schedule_endpoints():
    assert alpha_at(0, 10, 30.0, 300.0) == pytest.approx(300.0)
    assert alpha_at(10, 10, 30.0, 300.0) == pytest.approx(30.0)  # last epoch uses alpha_min
    assert alpha_at(5, 10, 30.0, 300.0) == pytest.approx(165.0)


def test_gradient_mode_raises_true_class_logit_and_changes_top_fraction_only():
    model = _model()
    x, y = _batch()
    xn = model.normalize(x)
    grad = saliency(model, xn, y)
    p_inv = 0.1
    x_ood = gradient_outliers(xn, grad, alpha=1e-2, p_inv=p_inv)
    changed = (x_ood != xn).reshape(len(x), -1).sum(1)
    assert changed.tolist() == [int(64 * p_inv)] * len(x)  # exactly the top p_inv of C×H×W
    # the changed elements are the ones with the largest |G|
    for i in range(len(x)):
        top = set(grad[i].abs().flatten().topk(int(64 * p_inv)).indices.tolist())
        assert set(torch.nonzero((x_ood[i] != xn[i]).flatten()).flatten().tolist()) == top
    with torch.no_grad():
        before = model.logits_from_normalized(xn).gather(1, y[:, None])
        after = model.logits_from_normalized(x_ood).gather(1, y[:, None])
    assert (after > before).all()  # a small step along +G raises the true-class logit


def test_saliency_leaves_parameter_grads_and_mode_untouched():
    model = _model().train()
    x, y = _batch()
    saliency(model, model.normalize(x), y)
    assert model.training
    assert all(p.grad is None for p in model.parameters())


def test_shuffle_mode_permutes_only_selected_pixels():
    torch.manual_seed(0)
    x = torch.arange(2 * 3 * 4 * 4, dtype=torch.float32).reshape(2, 3, 4, 4)  # distinct values everywhere
    grad = torch.randn(2, 3, 4, 4)
    p_inv = 0.25
    out = shuffle_outliers(x, grad, p_inv, generator=torch.Generator().manual_seed(1))
    k = int(16 * p_inv)
    for i in range(2):
        top = grad[i].exp().sum(0).flatten().topk(k).indices
        rest = torch.ones(16, dtype=torch.bool)
        rest[top] = False
        flat_in, flat_out = x[i].reshape(3, 16), out[i].reshape(3, 16)
        assert torch.equal(flat_in[:, rest], flat_out[:, rest])  # unselected pixels untouched
        # selected pixels: the same channel vectors, in another order
        vin = sorted(map(tuple, flat_in[:, top].T.tolist()))
        vout = sorted(map(tuple, flat_out[:, top].T.tolist()))
        assert vin == vout
        assert not torch.equal(flat_in[:, top], flat_out[:, top])


def test_uniform_kl_is_zero_for_uniform_and_positive_otherwise():
    assert uniform_kl(torch.zeros(2, 5)).item() == pytest.approx(0.0, abs=1e-6)
    assert uniform_kl(torch.tensor([[5.0, 0, 0]])).item() > 0.1


def test_trainer_fc_lr_factor_and_validation():
    model = _model()
    tr = ASCOODTrainer({"epochs": 2, "lr": 0.1, "fc_lr_factor": 0.1})
    groups = tr.param_groups(model)
    assert groups[1]["lr"] == pytest.approx(0.01)
    assert {id(p) for p in groups[1]["params"]} == {id(p) for p in model.head.parameters()}
    with pytest.raises(ValueError, match="ood_type"):
        ASCOODTrainer({"epochs": 1, "ood_type": "nope"})
    with pytest.raises(ValueError, match="alpha_min"):
        ASCOODTrainer({"epochs": 1, "alpha_min": 5, "alpha_max": 1})


def test_zscore_head_is_scale_invariant():
    model = _model()
    h = torch.randn(3, model.feature_dim)
    assert torch.allclose(model.head(h), model.head(4.0 * h + 2.0), atol=1e-4)
