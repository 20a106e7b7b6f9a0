"""Post-hoc scorers: hand-computed values, orientation on a toy problem, special cases, knobs and YAMLs."""
from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from scipy.special import logsumexp, softmax
from sklearn.metrics import roc_auc_score
from torch import nn

import methods
from methods.base import FeatureMapScorer, FeatureScorer, InputGradientScorer, LogitScorer, Outputs
from methods.energy import EnergyScorer
from methods.entropy import EntropyScorer
from methods.iodin import IodinScorer
from methods.klmatching import FLOOR, KLMatchingScorer
from methods.knn import KnnScorer
from methods.mahalanobis import MahalanobisScorer
from methods.maxlogit import MaxLogitScorer
from methods.msp import MSPScorer
from methods.odin import OdinScorer
from methods.vim import VimScorer
from orchestrator import search_space
from orchestrator.models.backbones import LinearHead, build_classifier
from orchestrator.models.protocol import adapt

MINE = ("maxlogit", "entropy", "klmatching", "odin", "iodin", "mahalanobis", "vim", "knn")


def outs(logits=None, features=None, labels=None):
    n = len(logits if logits is not None else features)
    logits = np.zeros((n, 2)) if logits is None else np.asarray(logits, dtype=np.float64)
    features = np.zeros((n, 2)) if features is None else np.asarray(features, dtype=np.float64)
    return Outputs(logits, features, None if labels is None else np.asarray(labels))


# ------------------------------------------------------------------------------------------ hand-computed values
# softmax rows: [.25, .5, .25], [1/3, 1/3, 1/3], [e³, 1, 1]/(e³ + 2)
Z = np.array([np.log([1.0, 2.0, 1.0]), [1.0, 1.0, 1.0], [3.0, 0.0, 0.0]])


def test_msp_hand_values():
    np.testing.assert_allclose(MSPScorer().score(outs(Z)), [0.5, 1 / 3, 0.909443], atol=1e-6)


def test_maxlogit_hand_values():
    np.testing.assert_allclose(MaxLogitScorer().score(outs(Z)), [0.693147, 1.0, 3.0], atol=1e-6)


def test_energy_hand_values():
    # log 4, 1 + log 3, log(e³ + 2)
    np.testing.assert_allclose(EnergyScorer().score(outs(Z)), [1.386294, 2.098612, 3.094923], atol=1e-6)


def test_entropy_hand_values():
    # .25 log .25 · 2 + .5 log .5 = −1.039721;  −log 3;  third row
    np.testing.assert_allclose(EntropyScorer().score(outs(Z)), [-1.039721, -1.098612, -0.366594], atol=1e-6)


def test_entropy_of_saturated_softmax_is_finite_and_zero():
    assert EntropyScorer().score(outs([[1000.0, 0.0, -1000.0]]))[0] == pytest.approx(0.0, abs=1e-12)


def test_klmatching_hand_values():
    fit = outs(np.log([[0.5, 0.25, 0.25], [0.7, 0.2, 0.1], [0.1, 0.8, 0.1]]))
    scorer = KLMatchingScorer().fit(fit)
    # d_0 = mean of the two class-0 predictions = [.6, .225, .175]; d_1 = [.1, .8, .1]; class 2: no prediction
    np.testing.assert_allclose(scorer.templates_[0], [0.6, 0.225, 0.175])
    np.testing.assert_allclose(scorer.templates_[1], [0.1, 0.8, 0.1])
    assert scorer.empty_classes_ == [2]
    s = scorer.score(outs(np.log([[0.5, 0.25, 0.25], [0.1, 0.8, 0.1], [0.2, 0.2, 0.6]])))
    # KL([.5,.25,.25] ‖ [.6,.225,.175]) = .5 ln(5/6) + .25 ln(10/9) + .25 ln(10/7) = 0.0243481
    assert s[0] == pytest.approx(-0.0243481, abs=1e-6)
    assert s[1] == pytest.approx(0.0, abs=1e-12)
    # class 2 falls back to one-hot (floored): KL = Σ p log p − 0.4 log FLOOR, finite and far below the others
    expected = -((0.4 * np.log(0.2) + 0.6 * np.log(0.6)) - 0.4 * np.log(FLOOR))
    assert s[2] == pytest.approx(expected) and s[2] < -10


def test_knn_hand_values():
    bank = outs(features=[[2.0, 0.0], [0.0, 3.0], [-1.0, 0.0]])  # normalised: e1, e2, −e1
    query = outs(features=[[1.0, 1.0], [5.0, 0.0]])
    got = {k: KnnScorer(k).fit(bank).score(query) for k in (1, 2, 3, 10)}
    # (1,1)/√2 is √(2−√2) from e1 and e2 and √(2+√2) from −e1; (1, 0) is 0, √2, 2 away
    np.testing.assert_allclose(got[1], [-0.765367, 0.0], atol=1e-3)
    np.testing.assert_allclose(got[2], [-0.765367, -1.414214], atol=1e-5)
    np.testing.assert_allclose(got[3], [-1.847759, -2.0], atol=1e-5)
    np.testing.assert_allclose(got[10], got[3])  # k clamped to the bank size


def test_knn_pickles_without_its_faiss_index():
    scorer = KnnScorer(2).fit(outs(features=np.random.default_rng(0).normal(size=(20, 4))))
    query = outs(features=np.random.default_rng(1).normal(size=(5, 4)))
    before = scorer.score(query)
    np.testing.assert_allclose(pickle.loads(pickle.dumps(scorer)).score(query), before)


MAHA_FIT = outs(features=[[-1.0, 0.0], [1.0, 0.0], [4.0, -1.0], [4.0, 1.0]], labels=[0, 0, 1, 1])


def test_mahalanobis_hand_values():
    # μ0 = (0,0), μ1 = (4,0); residuals ±e1, ±e2 → Σ = I/2, P = 2I
    scorer = MahalanobisScorer(epsilon=0.0, ridge=0.0).fit(MAHA_FIT)
    np.testing.assert_allclose(scorer.means_, [[0, 0], [4, 0]])
    np.testing.assert_allclose(scorer.precision_, 2 * np.eye(2), atol=1e-12)
    # (1,1): d0 = 2·2 = 4, d1 = 2·10 = 20 → −4;  (3,0): d0 = 18, d1 = 2 → −2
    np.testing.assert_allclose(scorer.score(outs(features=[[1.0, 1.0], [3.0, 0.0]])), [-4.0, -2.0], atol=1e-12)
    # the default ridge 1e-6 barely moves it
    np.testing.assert_allclose(MahalanobisScorer().fit(MAHA_FIT).score(outs(features=[[1.0, 1.0]])), [-4.0],
                               rtol=1e-5)


def test_mahalanobis_matches_closed_form_on_random_data():
    rng = np.random.default_rng(3)
    h, y = rng.normal(size=(60, 5)) + np.repeat(np.eye(5)[:3] * 4, 20, axis=0), np.repeat(np.arange(3), 20)
    q = rng.normal(size=(7, 5)) * 3
    scorer = MahalanobisScorer(ridge=1e-3).fit(outs(features=h, labels=y))
    mus = np.stack([h[y == c].mean(0) for c in range(3)])
    cov = sum((h[y == c] - mus[c]).T @ (h[y == c] - mus[c]) for c in range(3)) / len(h) + 1e-3 * np.eye(5)
    prec = np.linalg.inv(cov)
    expected = np.max([-np.einsum("nd,de,ne->n", q - m, prec, q - m) for m in mus], axis=0)
    np.testing.assert_allclose(scorer.score(outs(features=q)), expected, rtol=1e-9)


def test_mahalanobis_requires_labels_and_scoring_path():
    with pytest.raises(ValueError, match="labels"):
        MahalanobisScorer().fit(outs(features=[[0.0, 1.0]]))
    assert MahalanobisScorer(epsilon=0.0).uses_input_gradients is False
    eps = MahalanobisScorer(epsilon=0.002).fit(MAHA_FIT)
    assert eps.uses_input_gradients is True
    with pytest.raises(ValueError, match="score_inputs"):
        eps.score(outs(features=[[0.0, 0.0]]))


def _vim_by_hand(h_fit, z_fit, h, z, W, b, D):
    u = -np.linalg.pinv(W) @ b
    _, _, vt = np.linalg.svd(h_fit - u, full_matrices=True)  # right singular vectors = principal directions
    null = vt[D:].T
    r = lambda f: np.linalg.norm((f - u) @ null, axis=1)  # noqa: E731
    alpha = z_fit.max(1).mean() / r(h_fit).mean()
    return logsumexp(z, axis=1) - alpha * r(h)


def test_vim_matches_independent_computation():
    rng = np.random.default_rng(1)
    W, b = rng.normal(size=(3, 6)), rng.normal(size=3)
    h_fit = rng.normal(size=(40, 6)) * np.array([3, 2, 1.5, 1, 0.5, 0.2]) + 1
    h = rng.normal(size=(9, 6)) * 2
    z_fit, z = h_fit @ W.T + b, h @ W.T + b
    scorer = VimScorer(2, weight=W, bias=b).fit(outs(z_fit, h_fit))
    np.testing.assert_allclose(scorer.u_, -np.linalg.pinv(W) @ b)
    np.testing.assert_allclose(scorer.score(outs(z, h)), _vim_by_hand(h_fit, z_fit, h, z, W, b, 2), rtol=1e-8)


def test_vim_reads_the_model_head_and_defaults_dim_to_half():
    rng = np.random.default_rng(2)
    head = LinearHead(6, 3).double()
    model = nn.Module()
    model.head = head
    W, b = head.fc.weight.detach().numpy(), head.fc.bias.detach().numpy()
    h_fit, h = rng.normal(size=(30, 6)), rng.normal(size=(5, 6))
    fit, test = outs(h_fit @ W.T + b, h_fit), outs(h @ W.T + b, h)
    from_model = VimScorer().fit(fit, model)
    assert from_model.dim_ == 3
    np.testing.assert_allclose(from_model.score(test), VimScorer(3, weight=W, bias=b).fit(fit).score(test))
    with pytest.raises(ValueError, match="linear layer"):
        VimScorer(2).fit(fit)


@pytest.mark.parametrize("dim", [6, 10])
def test_vim_with_full_dimension_is_energy(dim):
    rng = np.random.default_rng(4)
    W, b = rng.normal(size=(3, 6)), rng.normal(size=3)
    h_fit, h = rng.normal(size=(30, 6)), rng.normal(size=(8, 6)) * 5
    scorer = VimScorer(dim, weight=W, bias=b).fit(outs(h_fit @ W.T + b, h_fit))
    test = outs(h @ W.T + b, h)
    np.testing.assert_allclose(scorer.score(test), EnergyScorer(1.0).score(test))


# ------------------------------------------------------------------------------------------- gradient scorers
SHAPE = (2, 2, 2)  # C, H, W: 8 input elements
MEAN, STD = [0.5, 0.2], [0.5, 2.0]


def _std_vec():
    return np.repeat(STD, 4)


def _linear_toy(A, W, b):
    """A linear toy seen through the classifier protocol: raw x → normalise → h = A·vec(xn) → head.fc."""
    proj, fc = nn.Linear(A.shape[1], A.shape[0], bias=False), nn.Linear(W.shape[1], W.shape[0])
    with torch.no_grad():
        proj.weight.copy_(torch.as_tensor(A))
        fc.weight.copy_(torch.as_tensor(W))
        fc.bias.copy_(torch.as_tensor(b))
    return adapt(nn.Sequential(nn.Flatten(), proj, fc), head="2", mean=MEAN, std=STD).double().eval()


def _toy_net(seed=0, dim=8, classes=3):
    rng = np.random.default_rng(seed)
    A, W, b = rng.normal(size=(dim, 8)), rng.normal(size=(classes, dim)), rng.normal(size=classes)
    return _linear_toy(A, W, b), A, W, b


def _numpy_ce_grad(x, A, W, b, T):
    """∇ₓ CE(z/T, argmax z) for z = W A ((x − m)/s) + b, by hand."""
    xv = x.reshape(len(x), -1)
    xn = (xv - np.repeat(MEAN, 4)) / _std_vec()
    z = xn @ A.T @ W.T + b
    p = softmax(z / T, axis=1)
    p[np.arange(len(z)), z.argmax(1)] -= 1
    return ((p @ W @ A) / T / _std_vec()).reshape(x.shape)


def _tempered_msp(model, x, T):
    with torch.no_grad():
        return softmax(model(x).numpy() / T, axis=1).max(1)


def test_odin_epsilon_zero_is_temperature_scaled_msp():
    model, *_ = _toy_net()
    x = torch.rand(6, *SHAPE, dtype=torch.float64)
    for T in (1.0, 10.0, 1000.0):
        scorer = OdinScorer(temperature=T, epsilon=0.0)
        assert scorer.uses_input_gradients is False
        np.testing.assert_allclose(scorer.score_inputs(model, x), _tempered_msp(model, x, T), rtol=1e-12)
        with torch.no_grad():
            logits = model(x).numpy()
        np.testing.assert_allclose(scorer.score(Outputs(logits, logits)), _tempered_msp(model, x, T), rtol=1e-12)
    assert OdinScorer(temperature=1.0, epsilon=0.0).score_inputs(model, x) == pytest.approx(
        MSPScorer().score(Outputs(logits, logits)))


def test_odin_matches_hand_gradient_step():
    model, A, W, b = _toy_net()
    x = torch.rand(6, *SHAPE, dtype=torch.float64)
    T, eps = 10.0, 0.003
    g = _numpy_ce_grad(x.numpy(), A, W, b, T)
    x_tilde = x.numpy() - eps * np.where(g >= 0, 1.0, -1.0)
    scorer = OdinScorer(temperature=T, epsilon=eps)
    assert scorer.uses_input_gradients is True
    np.testing.assert_allclose(scorer.perturb(model, x).numpy(), x_tilde, rtol=1e-12)
    np.testing.assert_allclose(scorer.score_inputs(model, x), _tempered_msp(model, torch.as_tensor(x_tilde), T),
                               rtol=1e-10)
    # the step raises the max tempered softmax (it lowers the CE of the predicted class)
    assert (scorer.score_inputs(model, x) > _tempered_msp(model, x, T)).all()
    with pytest.raises(ValueError, match="score_inputs"):
        scorer.score(Outputs(np.zeros((1, 3)), np.zeros((1, 8))))


def test_iodin_changes_exactly_one_element_chosen_on_the_normalised_gradient():
    model, A, W, b = _toy_net(seed=5)
    x = torch.rand(16, *SHAPE, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    T, eps = 1000.0, 0.002
    x_tilde = IodinScorer(temperature=T, epsilon=eps).perturb(model, x).numpy()
    diff = (x_tilde - x.numpy()).reshape(16, -1)
    assert ((diff != 0).sum(axis=1) == 1).all()
    g = _numpy_ce_grad(x.numpy(), A, W, b, T).reshape(16, -1)
    chosen = np.abs(g * _std_vec()).argmax(axis=1)  # |∇ wrt normalised input| = |∇ₓ|·std
    assert (np.abs(diff).argmax(axis=1) == chosen).all()
    assert (chosen != np.abs(g).argmax(axis=1)).any(), "toy too easy: raw and normalised choices coincide"
    np.testing.assert_allclose(diff[np.arange(16), chosen], -eps * np.sign(g[np.arange(16), chosen]), rtol=1e-12)
    scores = IodinScorer(temperature=T, epsilon=eps).score_inputs(model, x)
    assert (scores > _tempered_msp(model, x, T)).all()


def test_mahalanobis_input_preprocessing_lowers_the_closest_distance():
    model, *_ = _toy_net(seed=1)
    rng = np.random.default_rng(1)
    x_fit = torch.as_tensor(rng.random((30, *SHAPE)))
    with torch.no_grad():
        _, h_fit, _ = model.forward_all(x_fit)
    y_fit = h_fit.numpy()[:, 0] > np.median(h_fit.numpy()[:, 0])
    fit = Outputs(np.zeros((30, 3)), h_fit.numpy(), y_fit.astype(int))
    x = torch.as_tensor(rng.random((5, *SHAPE)))
    plain = MahalanobisScorer(epsilon=0.0).fit(fit)
    with torch.no_grad():
        h = model.forward_all(x)[1].numpy()
    np.testing.assert_allclose(plain.score_inputs(model, x), plain.score(Outputs(np.zeros((5, 3)), h)), rtol=1e-12)
    stepped = MahalanobisScorer(epsilon=1e-3).fit(fit)
    assert (stepped.score_inputs(model, x) > plain.score_inputs(model, x)).all()
    assert np.allclose(np.abs(stepped.perturb(model, x).numpy() - x.numpy()), 1e-3)


def test_gradient_scorers_on_a_real_classifier():
    torch.manual_seed(0)
    model = build_classifier("small_cnn", in_channels=1, image_size=8, num_classes=3, mean=[0.3], std=[0.4]).eval()
    x = torch.rand(5, 1, 8, 8)
    with torch.no_grad():
        logits, h, _ = model.forward_all(x)
    np.testing.assert_allclose(OdinScorer(100.0, 0.0).score_inputs(model, x),
                               softmax(logits.double().numpy() / 100, axis=1).max(1), rtol=1e-6)
    for scorer in (OdinScorer(100.0, 0.004), IodinScorer(100.0, 0.004)):
        s = scorer.score_inputs(model, x)
        assert s.shape == (5,) and np.isfinite(s).all()
    changed = (IodinScorer(100.0, 0.004).perturb(model, x) != x).flatten(1).sum(1)
    assert (changed == 1).all()
    maha = MahalanobisScorer(epsilon=0.004).fit(Outputs(logits.numpy(), h.numpy(), np.array([0, 1, 2, 0, 1])))
    assert np.isfinite(maha.score_inputs(model, x)).all()
    assert all(p.grad is None for p in model.parameters()), "input gradients must not touch parameter grads"


# ------------------------------------------------------------------------------------------------ orientation
def _blob_problem(seed=0):
    """3 ID Gaussian blobs at 5·e_c in an 8-d space, an OOD blob at 6·e_5; logits = nearest-mean classifier."""
    rng = np.random.default_rng(seed)
    means = 5.0 * np.eye(8)[:3]
    W, b = means, -0.5 * (means ** 2).sum(1)

    def draw(centres, n):
        return np.concatenate([c + 0.7 * rng.normal(size=(n, 8)) for c in centres])

    h_train, y_train = draw(means, 100), np.repeat(np.arange(3), 100)
    h_id, h_ood = draw(means, 50), draw([6.0 * np.eye(8)[5]], 150)
    return W, b, (h_train, y_train), h_id, h_ood


def _auroc(s_id, s_ood):
    return roc_auc_score(np.r_[np.ones(len(s_id)), np.zeros(len(s_ood))], np.r_[s_id, s_ood])


OUTPUT_SCORERS = {
    "msp": lambda W, b: MSPScorer(),
    "maxlogit": lambda W, b: MaxLogitScorer(),
    "energy": lambda W, b: EnergyScorer(),
    "entropy": lambda W, b: EntropyScorer(),
    "klmatching": lambda W, b: KLMatchingScorer(),
    "odin_eps0": lambda W, b: OdinScorer(1000.0, 0.0),
    "mahalanobis": lambda W, b: MahalanobisScorer(),
    "vim": lambda W, b: VimScorer(3, weight=W, bias=b),
    "knn": lambda W, b: KnnScorer(10),
}


@pytest.mark.parametrize("name", sorted(OUTPUT_SCORERS))
def test_outputs_scorers_rank_id_above_ood(name):
    W, b, (h_train, y_train), h_id, h_ood = _blob_problem()
    logit = lambda h: h @ W.T + b  # noqa: E731
    scorer = OUTPUT_SCORERS[name](W, b).fit(Outputs(logit(h_train), h_train, y_train))
    auroc = _auroc(scorer.score(Outputs(logit(h_id), h_id)), scorer.score(Outputs(logit(h_ood), h_ood)))
    assert auroc > 0.95, f"{name}: AUROC {auroc:.3f}"


@pytest.mark.parametrize("scorer", [OdinScorer(1000.0, 0.0014), OdinScorer(10.0, 0.01), IodinScorer(1000.0, 0.0014),
                                    MahalanobisScorer(epsilon=0.01)], ids=["odin", "odin_T10", "iodin", "maha_eps"])
def test_gradient_scorers_rank_id_above_ood(scorer):
    W, b, (h_train, y_train), h_id, h_ood = _blob_problem()
    model = _linear_toy(np.eye(8), W, b)  # h = normalised input, so x = m + s·h
    to_x = lambda h: torch.as_tensor(h.reshape(-1, *SHAPE) * np.array(STD)[:, None, None] +  # noqa: E731
                                     np.array(MEAN)[:, None, None])
    if scorer.needs_fit:
        scorer.fit(Outputs(h_train @ W.T + b, h_train, y_train), model)
    auroc = _auroc(scorer.score_inputs(model, to_x(h_id)), scorer.score_inputs(model, to_x(h_ood)))
    assert auroc > 0.95, f"{type(scorer).__name__}: AUROC {auroc:.3f}"


# ----------------------------------------------------------------------------------------- methods and YAMLs
def test_methods_are_registered_with_papers():
    for name in MINE:
        assert name in methods.available()
        method = methods.get(name)
        assert method.paper and not method.trains()


def _default_scorer(name, **config):
    method = methods.get(name)
    return method.scorer(method.resolve(config))


def test_odin_defaults():
    odin = _default_scorer("odin")
    assert (odin.temperature, odin.epsilon, odin.uses_input_gradients) == (1000.0, 0.0014, True)


def test_iodin_defaults_beside_recipe_knobs():
    iodin = _default_scorer("iodin", lr=0.1, epochs=3)  # recipe knobs are everyone's; the scorer ignores them
    assert isinstance(iodin, IodinScorer) and (iodin.temperature, iodin.epsilon) == (1000.0, 0.0014)


def test_mahalanobis_defaults():
    maha = _default_scorer("mahalanobis")
    assert (maha.epsilon, maha.ridge, maha.uses_input_gradients, maha.needs_fit) == (0.0, 1e-6, False, True)


def test_vim_default_dim_is_derived():
    assert _default_scorer("vim").dim is None


def test_knn_default_k():
    assert _default_scorer("knn").k == 50


@pytest.mark.parametrize("name, base", [("knn", FeatureScorer), ("mahalanobis", FeatureScorer),
                                        ("vim", FeatureScorer), ("msp", LogitScorer), ("odin", LogitScorer),
                                        ("odin", InputGradientScorer), ("csd", FeatureMapScorer)])
def test_scorers_are_typed_by_what_they_read(name, base):
    assert isinstance(_default_scorer(name), base)


@pytest.mark.parametrize("name, params", [
    ("odin", {"temperature": 0}), ("odin", {"epsilon": -0.1}), ("iodin", {"temperature": float("nan")}),
    ("iodin", {"epsilon": "0.1"}), ("mahalanobis", {"epsilon": -1e-3}), ("mahalanobis", {"ridge": -1.0}),
    ("vim", {"dim": 0}), ("vim", {"dim": 2.5}), ("knn", {"k": 0}), ("knn", {"k": 3.5}), ("knn", {"k": True}),
])
def test_bad_knobs_raise_clear_errors(name, params):
    with pytest.raises(ValueError, match=next(iter(params))):
        methods.get(name).resolve(params)


@pytest.mark.parametrize("name, params", [
    ("odin", {"temperature": 0}), ("mahalanobis", {"ridge": -1.0}), ("vim", {"dim": 0}), ("knn", {"k": 0}),
])
def test_scorers_check_their_own_values_outside_a_sweep(name, params):
    method = methods.get(name)
    with pytest.raises(ValueError, match=next(iter(params))):
        method.scorer({**method.resolve({}), **params})


@pytest.mark.parametrize("name", MINE)
def test_search_space_knobs_reach_the_scorer(name):
    space = search_space.load(name)
    assert (space.metric, space.mode, space.fixed) == ("val/auroc", "max", {})
    assert space.num_samples == (8 if space.knobs else 1)
    for knob in space.knobs:
        for value in (knob.choices or [knob.low, knob.high]):
            assert getattr(_default_scorer(name, **{knob.name: value}), knob.name) == value
