"""VOS: the weighted energy and the uncertainty loss by hand, the shared Gaussian, the virtual outliers, the
least-likely selection against the paper's brute-force draw, the queues, the trainer's loss, checkpoints."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import stats
from torch import nn

import methods
from methods.vos import (
    STREAM,
    ClassQueues,
    VOSTrainer,
    least_likely_radii,
    shared_gaussian,
    uncertainty_loss,
    unit_directions,
    virtual_outliers,
    weighted_energy,
)
from orchestrator.training import EpochStreams, to_float


def _params(**config):
    return methods.get("vos").resolve({"epochs": 4, **config})


def test_weighted_energy_by_hand():
    # log(1·e^0 + 0.5·e^{ln 2}) = log 2; a negative weight counts as 0 (relu)
    z = torch.tensor([[0.0, math.log(2.0), 5.0]])
    assert float(weighted_energy(z, torch.tensor([1.0, 0.5, -3.0]))) == pytest.approx(math.log(2.0), rel=1e-6)


def test_uncertainty_loss_labels_id_one_and_virtual_zero():
    logistic = nn.Linear(1, 2)
    with torch.no_grad():
        logistic.weight.copy_(torch.tensor([[0.0], [1.0]]))
        logistic.bias.zero_()
    # logits (0, e): ID with energy 2 → −log σ(2); virtual with energy −1 → −log(1 − σ(−1))
    got = uncertainty_loss(torch.tensor([2.0]), torch.tensor([-1.0]), logistic).detach()
    sigma = lambda v: 1 / (1 + math.exp(-v))  # noqa: E731
    assert float(got) == pytest.approx((-math.log(sigma(2.0)) - math.log(1 - sigma(-1.0))) / 2, rel=1e-6)


def test_shared_gaussian_by_hand():
    queues = [torch.tensor([[0.0, 0.0], [2.0, 0.0]]), torch.tensor([[0.0, 1.0], [0.0, 3.0]])]
    means, chol = shared_gaussian(queues)
    # centred rows (−1, 0), (1, 0), (0, −1), (0, 1): covariance diag(1/2, 1/2) + 1e-4 I
    assert torch.allclose(means, torch.tensor([[1.0, 0.0], [0.0, 2.0]]))
    assert torch.allclose(chol @ chol.T, torch.eye(2) * (0.5 + 1e-4), atol=1e-6)


def test_virtual_outliers_are_mean_plus_radius_times_l_times_direction():
    means, chol = torch.tensor([[1.0, 0.0], [0.0, 2.0]]), torch.tensor([[2.0, 0.0], [1.0, 1.0]])
    radii2, directions = torch.tensor([[4.0], [9.0]]), torch.tensor([[[1.0, 0.0]], [[0.0, 1.0]]])
    # class 0: (1, 0) + 2·L(1, 0) = (5, 2); class 1: (0, 2) + 3·L(0, 1) = (0, 5)
    assert torch.allclose(virtual_outliers(means, chol, radii2, directions), torch.tensor([[5.0, 2.0], [0.0, 5.0]]))


def test_the_least_likely_draws_are_those_of_largest_radius():
    gauss = torch.distributions.MultivariateNormal(torch.zeros(3), covariance_matrix=torch.tensor(
        [[2.0, 0.5, 0.0], [0.5, 1.0, 0.2], [0.0, 0.2, 0.5]]))
    eps = torch.randn(50, 3, generator=torch.Generator().manual_seed(0))
    points = eps @ torch.linalg.cholesky(gauss.covariance_matrix).T
    assert int(gauss.log_prob(points).argmin()) == int(eps.norm(dim=1).argmax())


def test_selected_radii_match_the_papers_brute_force_selection():
    # the paper: draw 40 points, keep the 2 least likely; here: the 2 largest of 40 χ²_3 radii² — same distribution
    rng = np.random.default_rng(0)
    brute = np.sort((rng.standard_normal((3000, 40, 3)) ** 2).sum(-1), axis=1)[:, -2:]
    ours = least_likely_radii(np.random.default_rng(1), 3, 40, 2, 3000)
    for k in (0, 1):  # ours is in decreasing order
        assert stats.ks_2samp(brute[:, 1 - k], ours[:, k]).pvalue > 1e-3


def test_unit_directions_have_norm_one():
    d = unit_directions(np.random.default_rng(0), (4, 2), 5)
    assert d.shape == (4, 2, 5) and np.allclose(np.linalg.norm(d, axis=-1), 1.0)


def test_queues_fill_without_overflow_then_push_out_the_oldest():
    q = ClassQueues(np.array([2, 1]), 1, "cpu")
    q.push(torch.tensor([[1.0], [2.0], [3.0]]), torch.tensor([0, 0, 0]))  # class 0 takes 2, drops the third
    assert (q.filled, q.full) == ([2, 0], False)
    q.push(torch.tensor([[4.0], [5.0]]), torch.tensor([1, 1]))
    assert q.full and [t.flatten().tolist() for t in q.queues()] == [[1.0, 2.0], [4.0]]
    q.push(torch.tensor([[6.0], [7.0]]), torch.tensor([0, 1]))  # full: first in, first out
    assert [t.flatten().tolist() for t in q.queues()] == [[2.0, 6.0], [7.0]]


def test_queues_are_capped_at_the_class_counts(bench, small_cnn):
    trainer = VOSTrainer(_params(vos_queue=1000))
    trainer.setup(small_cnn(), bench)
    assert trainer.queues.capacity == np.bincount(bench.id_train.y).tolist()


def test_the_loss_starts_after_vos_start_of_the_epochs():
    trainer = VOSTrainer(_params(vos_start=0.5))  # 4 epochs: 2 without the loss
    assert [trainer.active(e) for e in (1, 2, 3, 4)] == [False, False, True, True]


def test_the_loss_is_cross_entropy_until_the_queues_are_full_then_adds_the_uncertainty_term(bench, small_cnn):
    model = small_cnn().train()
    trainer = VOSTrainer(_params(vos_queue=4, vos_start=0.0, vos_weight=0.5, vos_samples=100, vos_select=2), seed=2)
    trainer.setup(model, bench)
    x, y = to_float(bench.id_train.x[:64], "cpu"), torch.as_tensor(bench.id_train.y[:64])
    first = trainer.loss(model, x, y, 1)  # fills every queue (4 per class) from this batch
    assert float(first.detach()) == pytest.approx(float(F.cross_entropy(model(x), y).detach()), rel=1e-5)
    got = trainer.loss(model, x, y, 1)  # queues full: this batch is queued, then the outliers are drawn
    h, _ = model.embed_normalized(model.normalize(x))
    logits = model.head(h)
    means, chol = shared_gaussian(trainer.queues.queues())
    rng = EpochStreams(2, STREAM).at(1).numpy  # the trainer's (seed, epoch) stream: its first draws of epoch 1
    radii2 = torch.as_tensor(least_likely_radii(rng, h.shape[1], 100, 2, 5), dtype=torch.float32)
    directions = torch.as_tensor(unit_directions(rng, (5, 2), h.shape[1]), dtype=torch.float32)
    v = virtual_outliers(means, chol, radii2, directions)
    w = trainer.energy_weight.weight
    expected = F.cross_entropy(logits, y) + 0.5 * uncertainty_loss(
        weighted_energy(logits, w), weighted_energy(model.head(v), w), trainer.logistic)
    assert float(got.detach()) == pytest.approx(float(expected.detach()), rel=1e-4)


def test_checkpointed_state_restores_queues_and_extra_layers(bench, small_cnn):
    a, b = VOSTrainer(_params(vos_queue=4)), VOSTrainer(_params(vos_queue=4))
    a.setup(small_cnn(), bench)
    b.setup(small_cnn(), bench)
    a.queues.push(torch.ones(3, a.queues.data.shape[-1]), torch.tensor([0, 1, 1]))
    with torch.no_grad():
        a.logistic.weight.fill_(0.25)
    b.load_extra_state(a.extra_state())
    assert (b.queues.filled, float(b.logistic.weight.detach().sum())) == ([1, 2, 0, 0, 0], 0.5)
    assert torch.equal(b.queues.data, a.queues.data) and torch.equal(b.energy_weight.weight, a.energy_weight.weight)


def test_vos_select_above_vos_samples_is_refused():
    with pytest.raises(ValueError, match="vos_select"):
        VOSTrainer(_params(vos_select=5, vos_samples=4))


def test_declaration():
    knobs = methods.get("vos").own_knobs()
    assert [knobs[k].default for k in ("vos_queue", "vos_samples", "vos_select", "vos_weight", "vos_start")] == \
        [1000, 10000, 1, 0.1, 0.4]
    assert methods.get("vos").scorer_knob().default == "energy"
