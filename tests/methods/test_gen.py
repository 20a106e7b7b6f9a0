"""GEN: −Σ_{j≤M} p_j^γ (1 − p_j)^γ against hand values, top-M clamping, saturated softmax, knob checks."""
import numpy as np
import pytest

from methods.base import Outputs
from methods.gen import Gen, GenScorer
from orchestrator.knobs import KnobError


def outs(logits):
    logits = np.asarray(logits, dtype=np.float64)
    return Outputs(logits, np.zeros((len(logits), 2)))


def naive(logits, gamma, m):
    """The formula written directly, for moderate logits."""
    out = []
    for row in np.asarray(logits, dtype=np.float64):
        p = np.exp(row - row.max())
        p = np.sort(p / p.sum())[::-1][:m]
        out.append(-np.sum(p ** gamma * (1 - p) ** gamma))
    return np.array(out)


# softmax rows: [.25, .5, .25] and [1/3, 1/3, 1/3]
Z = np.log([[1.0, 2.0, 1.0], [1.0, 1.0, 1.0]])


def test_gamma_one_all_classes_by_hand():
    # γ = 1: −Σ p(1 − p) = −(2·.25·.75 + .5·.5) = −.625;  −3·(1/3)(2/3) = −2/3
    np.testing.assert_allclose(GenScorer(gamma=1.0, top_m=3).score(outs(Z)), [-0.625, -2 / 3], atol=1e-12)


def test_top_one_keeps_the_largest_probability_only():
    # M = 1, γ = 1: −.5·.5 = −.25;  −(1/3)(2/3) = −2/9
    np.testing.assert_allclose(GenScorer(gamma=1.0, top_m=1).score(outs(Z)), [-0.25, -2 / 9], atol=1e-12)


def test_top_two_keeps_the_two_largest():
    # M = 2, γ = 1: −(.5·.5 + .25·.75) = −.4375
    np.testing.assert_allclose(GenScorer(gamma=1.0, top_m=2).score(outs(Z[:1])), [-0.4375], atol=1e-12)


def test_gamma_half_by_hand():
    # γ = .5: −(2·sqrt(.25·.75) + sqrt(.25)) = −(sqrt(3)/2 + .5)
    np.testing.assert_allclose(GenScorer(gamma=0.5, top_m=3).score(outs(Z[:1])), [-(np.sqrt(3) / 2 + 0.5)],
                               atol=1e-12)


def test_defaults_match_the_direct_formula_on_random_logits():
    z = np.random.default_rng(0).normal(scale=3.0, size=(20, 7))
    np.testing.assert_allclose(GenScorer().score(outs(z)), naive(z, 0.1, 7), rtol=1e-10)


def test_top_m_larger_than_the_classes_is_clamped():
    z = np.random.default_rng(1).normal(size=(5, 4))
    np.testing.assert_allclose(GenScorer(top_m=1000).score(outs(z)), GenScorer(top_m=4).score(outs(z)), rtol=1e-12)


def test_peaked_softmax_scores_above_flat():
    s = GenScorer().score(outs([[5.0, 0.0, 0.0], [0.0, 0.0, 0.0]]))
    assert s[0] > s[1]


def test_saturated_softmax_is_finite():
    # float64 softmax of these rows is exactly [1, 0, 0]
    s = GenScorer().score(outs([[1000.0, 0.0, 0.0], [2000.0, 0.0, 0.0]]))
    assert np.isfinite(s).all()


def test_saturated_softmax_keeps_its_exact_value():
    # log p = (0, −1000, −1000), log(1 − p_max) = log 2 − 1000: S = −(e^{.1(log 2 − 1000)} + 2 e^{−100})
    expected = -(np.exp(0.1 * (np.log(2) - 1000)) + 2 * np.exp(-100.0))
    np.testing.assert_allclose(GenScorer().score(outs([[1000.0, 0.0, 0.0]])), [expected], rtol=1e-9)


def test_saturated_softmax_still_ranks():
    # float32/naive evaluation ties both rows at 0; the more confident one must score higher
    s = GenScorer().score(outs([[1000.0, 0.0, 0.0], [2000.0, 0.0, 0.0]]))
    assert s[1] > s[0]


def test_one_class_scores_zero():
    np.testing.assert_array_equal(GenScorer().score(outs([[3.0], [-1.0]])), [0.0, 0.0])


def test_tied_maxima_by_hand():
    # two equal logits: p = (.5, .5), γ = 1: −2·.25 = −.5
    np.testing.assert_allclose(GenScorer(gamma=1.0).score(outs([[2.0, 2.0]])), [-0.5], atol=1e-12)


@pytest.mark.parametrize("gamma", [0, -0.1, float("nan"), float("inf"), True, "0.1"])
def test_bad_gamma_is_refused(gamma):
    with pytest.raises(ValueError, match="gamma"):
        GenScorer(gamma=gamma)


@pytest.mark.parametrize("top_m", [0, -3, 2.5, True, "10"])
def test_bad_top_m_is_refused(top_m):
    with pytest.raises(ValueError, match="top_m"):
        GenScorer(top_m=top_m)


def test_resolve_refuses_a_bad_knob():
    with pytest.raises(KnobError, match="top_m"):
        Gen().resolve({"top_m": 0})


def test_method_defaults_are_the_papers():
    params = Gen().resolve({})
    assert (params["gamma"], params["top_m"]) == (0.1, 100)
