"""GradNorm in closed form against a hand computation and against torch autograd on a tiny linear layer."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from methods.base import Head, Outputs
from methods.gradnorm import GradNorm, GradNormScorer
from orchestrator.knobs import KnobError

W = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
B = np.array([0.0, 0.0, -1.0])


def outs(features, head):
    h = np.asarray(features, dtype=np.float64)
    return Outputs(head.logits(h), h, None, None, head)


def autograd_scores(u, weight, bias, temperature):
    """‖∂ KL(uniform ‖ softmax(fc(u)/T)) / ∂W‖₁ per sample, by back-propagation through a torch Linear."""
    fc = torch.nn.Linear(weight.shape[1], weight.shape[0]).double()
    with torch.no_grad():
        fc.weight.copy_(torch.from_numpy(weight))
        fc.bias.copy_(torch.from_numpy(bias))
    scores = []
    for row in torch.from_numpy(np.asarray(u, dtype=np.float64)):
        fc.zero_grad()
        logp = F.log_softmax(fc(row[None]) / temperature, dim=1)
        c = logp.shape[1]
        kl = (1.0 / c * (np.log(1.0 / c) - logp)).sum()  # KL(u ‖ p) with u = 1/C
        kl.backward()
        scores.append(fc.weight.grad.abs().sum().item())
    return np.array(scores)


def test_hand_values():
    # h = (1, 0): z = (1, 0, 0), p = (e, 1, 1)/(e + 2); p − 1/3 = (2(e − 1), 1 − e, 1 − e)/(3(e + 2)),
    #   Σ|p − 1/3| = 4(e − 1)/(3(e + 2)); Σh = 1
    # h = (0, 0): Σh = 0 → S = 0
    e = np.e
    expected = [4 * (e - 1) / (3 * (e + 2)), 0.0]
    np.testing.assert_allclose(GradNormScorer().score(outs([[1.0, 0.0], [0.0, 0.0]], Head(W, B))), expected,
                               atol=1e-12)


def test_temperature_hand_value():
    # T = 2, h = (2, 2): z = (2, 2, 3), z/T = (1, 1, 1.5), p = (1, 1, √e)/(2 + √e);
    # p − 1/3 = (1 − √e, 1 − √e, 2(√e − 1))/(3(2 + √e)), Σ|p − 1/3| = 4(√e − 1)/(3(2 + √e)); Σh = 4;
    # S = Σ|p − 1/3|·4/2
    r = np.sqrt(np.e)
    expected = 4 * (r - 1) / (3 * (2 + r)) * 4 / 2
    np.testing.assert_allclose(GradNormScorer(2.0).score(outs([[2.0, 2.0]], Head(W, B))), [expected], atol=1e-12)


@pytest.mark.parametrize("temperature", [0.5, 1.0, 3.0])
def test_matches_autograd(temperature):
    rng = np.random.default_rng(0)
    w, b = rng.normal(size=(4, 5)), rng.normal(size=4)
    h = np.maximum(rng.normal(size=(6, 5)), 0.0)
    got = GradNormScorer(temperature).score(outs(h, Head(w, b)))
    np.testing.assert_allclose(got, autograd_scores(h, w, b, temperature), rtol=1e-10)


def test_matches_autograd_through_the_standardised_head():
    # ASCOOD's head multiplies the per-sample standardisation of h (negative entries): the gradient is taken at
    # the fc's input, which the test standardises itself
    rng = np.random.default_rng(1)
    w, b, sigma = rng.normal(size=(3, 4)), rng.normal(size=3), 2.0
    h = np.abs(rng.normal(size=(5, 4)))
    centred = h - h.mean(axis=1, keepdims=True)
    u = sigma * centred / (centred.std(axis=1, ddof=1, keepdims=True) + 1e-6)
    got = GradNormScorer().score(outs(h, Head(w, b, sigma)))
    np.testing.assert_allclose(got, autograd_scores(u, w, b, 1.0), rtol=1e-10)


def test_official_code_scores_are_c_times_these():
    # the authors and OpenOOD back-propagate Σ_c −log p_c (no 1/C): C times the KL's gradient
    rng = np.random.default_rng(2)
    w, b = rng.normal(size=(4, 3)), rng.normal(size=4)
    h = np.abs(rng.normal(size=(3, 3)))
    fc = torch.nn.Linear(3, 4).double()
    with torch.no_grad():
        fc.weight.copy_(torch.from_numpy(w))
        fc.bias.copy_(torch.from_numpy(b))
    official = []
    for row in torch.from_numpy(h):
        fc.zero_grad()
        (-F.log_softmax(fc(row[None]), dim=1)).sum().backward()
        official.append(fc.weight.grad.abs().sum().item())
    np.testing.assert_allclose(4 * GradNormScorer().score(outs(h, Head(w, b))), official, rtol=1e-10)


def test_uniform_softmax_scores_zero():
    # equal logits: p = 1/C, no gradient at all
    head = Head(np.zeros((3, 2)), np.zeros(3))
    np.testing.assert_array_equal(GradNormScorer().score(outs([[1.0, 2.0]], head)), [0.0])


def test_one_class_scores_zero():
    head = Head(np.array([[1.0, 1.0]]), np.array([0.5]))
    np.testing.assert_array_equal(GradNormScorer().score(outs([[1.0, 2.0]], head)), [0.0])


def test_confident_input_scores_above_flat():
    s = GradNormScorer().score(outs([[5.0, 0.0], [0.5, 0.5]], Head(W, B)))
    assert s[0] > s[1]


def test_scoring_without_a_head_is_refused():
    with pytest.raises(ValueError, match="final layer"):
        GradNormScorer().score(Outputs(np.zeros((1, 3)), np.zeros((1, 2))))


@pytest.mark.parametrize("temperature", [0, -1.0, float("nan"), float("inf"), True, "1"])
def test_bad_temperature_is_refused(temperature):
    with pytest.raises(ValueError, match="temperature"):
        GradNormScorer(temperature)


def test_resolve_refuses_a_bad_temperature():
    with pytest.raises(KnobError, match="temperature"):
        GradNorm().resolve({"temperature": 0.0})
