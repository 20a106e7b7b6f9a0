"""LogitNorm: the loss against hand-computed values, the trainer's loss, the declaration."""
import math

import pytest
import torch

import methods
from methods.logitnorm import LogitNormTrainer, logitnorm_loss
from orchestrator.training import to_float


def test_loss_is_cross_entropy_of_the_normalised_logits():
    # z = (3, 4): ‖z‖ = 5, τ = 0.5 → z/(τ‖z‖) = (1.2, 1.6); CE for class 1 = log(e^1.2 + e^1.6) − 1.6
    loss = logitnorm_loss(torch.tensor([[3.0, 4.0]]), torch.tensor([1]), tau=0.5)
    assert float(loss) == pytest.approx(math.log(math.exp(1.2) + math.exp(1.6)) - 1.6, rel=1e-6)


def test_scaling_the_logits_does_not_change_the_loss():
    z, y = torch.tensor([[3.0, 4.0], [-1.0, 2.0]]), torch.tensor([1, 0])
    assert float(logitnorm_loss(10 * z, y, 0.04)) == pytest.approx(float(logitnorm_loss(z, y, 0.04)), rel=1e-5)


def test_the_trainer_applies_it_to_the_networks_logits(bench, small_cnn):
    model = small_cnn().train()
    trainer = LogitNormTrainer(methods.get("logitnorm").resolve({"logitnorm_tau": 0.1}))
    x, y = to_float(bench.id_train.x[:8], "cpu"), torch.as_tensor(bench.id_train.y[:8])
    torch.manual_seed(0)
    got = trainer.loss(model, x, y, 1)
    torch.manual_seed(0)
    assert float(got.detach()) == pytest.approx(float(logitnorm_loss(model(x), y, 0.1).detach()), rel=1e-6)


def test_declaration():
    method = methods.get("logitnorm")
    assert (method.trains(), method.finetunes, "logitnorm_tau" in method.network_knobs()) == (True, False, True)
    assert (method.own_knobs()["logitnorm_tau"].default, method.scorer_knob().default) == (0.04, "msp")
