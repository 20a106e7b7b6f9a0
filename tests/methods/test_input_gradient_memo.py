"""ODIN, i-ODIN and Mahalanobis memoise their ε-independent step direction: the next ε of a sweep on the same
network, batch and temperature (or fit) runs no backward pass, and still steps exactly as the formula says."""
import numpy as np
import pytest
import torch

from methods import odin
from methods.iodin import IodinScorer
from methods.mahalanobis import MahalanobisScorer
from methods.odin import OdinScorer, ce_input_gradient
from orchestrator.models.backbones import build_classifier


@pytest.fixture(autouse=True)
def _fresh_memo():
    odin.forget_memoised()
    yield
    odin.forget_memoised()


def _model(seed=0):
    torch.manual_seed(seed)
    return build_classifier("small_cnn", in_channels=1, image_size=8, num_classes=3, mean=[0.3], std=[0.4]).eval()


X = torch.rand(6, 1, 8, 8, generator=torch.Generator().manual_seed(3))


def _hand_sign(model, x, temperature):
    grad = ce_input_gradient(model, x, temperature)
    return torch.where(grad >= 0, 1.0, -1.0)


def test_a_second_epsilon_reuses_the_direction():
    model = _model()
    OdinScorer(10.0, 0.001).perturb(model, X)
    OdinScorer(10.0, 0.004).perturb(model, X)
    assert len(odin.DIRECTIONS) == 1


def test_the_memoised_step_is_the_hand_step():
    model = _model()
    OdinScorer(10.0, 0.001).perturb(model, X)
    expected = X - 0.004 * _hand_sign(model, X, 10.0)
    torch.testing.assert_close(OdinScorer(10.0, 0.004).perturb(model, X), expected, rtol=0, atol=1e-7)


def test_another_temperature_is_another_direction():
    model = _model()
    OdinScorer(10.0, 0.001).perturb(model, X)
    OdinScorer(1000.0, 0.001).perturb(model, X)
    assert len(odin.DIRECTIONS) == 2


def test_another_network_is_another_direction():
    OdinScorer(10.0, 0.001).perturb(_model(0), X)
    OdinScorer(10.0, 0.001).perturb(_model(1), X)
    assert len(odin.DIRECTIONS) == 2


def test_a_changed_weight_is_another_direction():
    model = _model()
    OdinScorer(10.0, 0.001).perturb(model, X)
    with torch.no_grad():
        next(model.parameters())[0].add_(1e-3)
    OdinScorer(10.0, 0.001).perturb(model, X)
    assert len(odin.DIRECTIONS) == 2


def test_iodin_from_the_memo_still_steps_one_element():
    model = _model()
    IodinScorer(100.0, 0.004).perturb(model, X)
    changed = (IodinScorer(100.0, 0.002).perturb(model, X) != X).flatten(1).sum(1)
    assert (changed == 1).all()


def test_iodin_and_odin_do_not_share_an_entry():
    model = _model()
    OdinScorer(100.0, 0.004).perturb(model, X)
    IodinScorer(100.0, 0.004).perturb(model, X)
    assert len(odin.DIRECTIONS) == 2


def _maha(seed):
    model = _model()
    rng = np.random.default_rng(seed)
    with torch.no_grad():
        logits, h, _ = model.forward_all(torch.as_tensor(rng.random((9, 1, 8, 8)), dtype=torch.float32))
    from methods.base import Outputs

    return model, Outputs(logits.numpy(), h.numpy(), np.arange(9) % 3)


def test_mahalanobis_second_epsilon_steps_by_the_same_direction():
    model, fit = _maha(0)
    first = MahalanobisScorer(epsilon=0.001).fit(fit).perturb(model, X) - X
    second = MahalanobisScorer(epsilon=0.003).fit(fit).perturb(model, X) - X
    torch.testing.assert_close(second, 3 * first, rtol=0, atol=1e-6)


def test_mahalanobis_another_fit_is_another_direction():
    model, fit_a = _maha(0)
    _, fit_b = _maha(1)
    MahalanobisScorer(epsilon=0.001).fit(fit_a).perturb(model, X)
    MahalanobisScorer(epsilon=0.001).fit(fit_b).perturb(model, X)
    assert len(odin.DIRECTIONS) == 2
