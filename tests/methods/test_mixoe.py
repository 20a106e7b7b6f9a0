"""MixOE: soft targets, the soft cross-entropy, cutmix's box and λ, mixup, the trainer's loss, the declaration."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import methods
from methods.mixoe import STREAM, MixOETrainer, cutmix, cutmix_box, soft_cross_entropy, soft_targets
from orchestrator.training import EpochStreams, to_float


class _Draws:
    """A NumPy-generator stand-in returning set integers (the box centre)."""

    def __init__(self, *values):
        self.values = list(values)

    def integers(self, high):
        return self.values.pop(0)


def test_soft_target_is_lambda_onehot_plus_the_rest_uniform():
    assert torch.allclose(soft_targets(torch.tensor([1]), 0.6, 4), torch.tensor([[0.1, 0.7, 0.1, 0.1]]))


def test_soft_cross_entropy_by_hand():
    z, t = torch.tensor([[0.0, math.log(3.0)]]), torch.tensor([[0.25, 0.75]])  # softmax = (1/4, 3/4)
    assert float(soft_cross_entropy(z, t)) == pytest.approx(-(0.25 * math.log(0.25) + 0.75 * math.log(0.75)))


def test_cutmix_box_has_sides_sqrt_one_minus_lambda_clipped_at_the_border():
    # 8×8, λ = 0.75: sides int(8·0.5) = 4, centre (1, 6) → rows [max(1−2, 0), 1+2) = [0, 3), cols [4, 8)
    assert cutmix_box(8, 8, 0.75, _Draws(1, 6)) == (0, 3, 4, 8)


def test_cutmix_pastes_the_box_and_lambda_becomes_the_id_fraction_left():
    x, o = torch.zeros(2, 1, 4, 4), torch.ones(2, 1, 4, 4)
    mixed, lam = cutmix(x, o, (1, 3, 0, 2))
    assert (float(mixed.sum()), lam) == (2 * 4.0, 1 - 4 / 16)


def test_the_trainer_adds_beta_times_the_soft_loss_of_the_mixed_batch(bench, small_cnn):
    model = small_cnn().train()
    params = methods.get("mixoe").resolve({"mix_op": "mixup", "mix_alpha": 1.0, "mix_beta": 5.0,
                                            "outliers": "gaussian"})
    trainer = MixOETrainer(params, seed=1)
    trainer.setup(model, bench)
    x, y = to_float(bench.id_train.x[:8], "cpu"), torch.as_tensor(bench.id_train.y[:8])
    torch.manual_seed(7)
    got = trainer.loss(model, x, y, 1)
    torch.manual_seed(7)
    xn = model.normalize(x)
    id_loss = F.cross_entropy(model.logits_from_normalized(xn), y)
    outliers = trainer.source.batch(model, x, y, 1, trainer.epochs)
    lam = float(EpochStreams(1, STREAM).at(1).numpy.beta(1.0, 1.0))
    mixed = lam * xn + (1 - lam) * outliers
    expected = id_loss + 5.0 * soft_cross_entropy(model.logits_from_normalized(mixed), soft_targets(y, lam, 5))
    assert float(got.detach()) == pytest.approx(float(expected.detach()), rel=1e-5)


def test_cutmix_lambda_comes_from_the_box(bench, small_cnn):
    params = methods.get("mixoe").resolve({"mix_op": "cutmix", "mix_alpha": 2.0})
    trainer = MixOETrainer(params, seed=0)
    xn, outliers = torch.zeros(2, 1, 8, 8), torch.ones(2, 1, 8, 8)
    mixed, lam = trainer.mixed(xn, outliers, 1)
    assert lam == pytest.approx(1 - float(mixed[0].sum()) / 64) and np.isfinite(lam)


def test_declaration():
    method = methods.get("mixoe")
    knobs = method.own_knobs()
    assert (method.trains(), method.finetunes, knobs["finetune_epochs"].default, knobs["finetune_lr"].default) == \
        (True, True, 10, 0.001)
    assert (knobs["mix_op"].default, knobs["mix_alpha"].default, knobs["mix_beta"].default) == ("cutmix", 2.0, 5.0)
    assert {"outliers", "mix_beta", "finetune_lr"} <= method.network_knobs() and method.substitute


def test_ashas_horizon_is_the_fine_tuning_epochs():
    # ASHA stops a trial at max_t: for a fine-tuning method that is one past its own last epoch, not the recipe's
    from types import SimpleNamespace

    from orchestrator.sweep.scheduling import max_t

    prep = SimpleNamespace(opts=SimpleNamespace(method="mixoe"), fixed={"finetune_epochs": 7},
                           bench=SimpleNamespace(recipe={"epochs": 3}))
    assert max_t(prep) == 8
