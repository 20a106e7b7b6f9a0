"""RegMixup: the mixed batch and the loss against hand-computed values, the trainer's draws, the declaration."""
import math

import numpy as np
import pytest
import torch

import methods
from methods.regmixup import STREAM, RegMixupTrainer, mix, regmixup_loss
from orchestrator.training import EpochStreams, to_float


def _ce(row, label):
    return math.log(sum(math.exp(v) for v in row)) - row[label]


def test_mix_blends_each_image_with_its_permuted_partner():
    x = torch.tensor([[1.0], [2.0], [4.0]])
    assert torch.allclose(mix(x, 0.25, torch.tensor([2, 0, 1])), torch.tensor([[3.25], [1.25], [2.5]]))


def test_loss_weighs_both_targets_of_the_mixed_rows_over_the_whole_batch():
    # rows 0-1: the clean batch (targets y), rows 2-3: the mixed one (y, and y_perm with weight 1 − λ)
    z = [[2.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.5, 0.5, 0.0], [0.0, 0.0, 3.0]]
    y, y_perm, lam = [0, 1], [1, 2], 0.3
    clean = _ce(z[0], 0) + _ce(z[1], 1)
    expected = (clean + lam * (_ce(z[2], 0) + _ce(z[3], 1)) + (1 - lam) * (_ce(z[2], 1) + _ce(z[3], 2))) / 4
    got = regmixup_loss(torch.tensor(z), torch.tensor(y), torch.tensor(y_perm), lam)
    assert float(got) == pytest.approx(expected, rel=1e-6)


def test_lambda_one_is_plain_cross_entropy_on_both_halves():
    z, y = torch.randn(6, 4), torch.tensor([0, 1, 3])
    expected = torch.nn.functional.cross_entropy(z, torch.cat([y, y]))
    assert float(regmixup_loss(z, y, torch.tensor([2, 2, 2]), 1.0)) == pytest.approx(float(expected), rel=1e-6)


def test_the_trainer_mixes_with_the_draws_of_its_epoch_stream(bench, small_cnn):
    model = small_cnn().train()
    trainer = RegMixupTrainer(methods.get("regmixup").resolve({"mix_alpha": 20.0}), seed=3)
    x, y = to_float(bench.id_train.x[:8], "cpu"), torch.as_tensor(bench.id_train.y[:8])
    got = trainer.loss(model, x, y, 2)
    stream = EpochStreams(3, STREAM).at(2)  # the same (seed, epoch) stream, drawn in the same order
    lam = float(stream.numpy.beta(20.0, 20.0))
    perm = torch.randperm(8, generator=stream.torch)
    expected = regmixup_loss(model(torch.cat([x, mix(x, lam, perm)])), y, y[perm], lam)
    assert float(got.detach()) == pytest.approx(float(expected.detach()), rel=1e-5)


def test_epoch_streams_repeat_per_epoch_and_differ_between_epochs():
    draws = [EpochStreams(0, STREAM).at(e).numpy.beta(20.0, 20.0) for e in (1, 1, 2)]
    assert draws[0] == draws[1] and draws[0] != draws[2] and np.isfinite(draws).all()


def test_declaration():
    method = methods.get("regmixup")
    assert (method.trains(), method.own_knobs()["mix_alpha"].default, method.scorer_knob().default) == \
        (True, 20.0, "entropy")
