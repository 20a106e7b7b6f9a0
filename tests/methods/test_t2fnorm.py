"""T2FNorm: the training logits, the test-time network, and SGD in the stored parametrisation (W' = W/τ, head lr
lr/τ², weight decay wd·τ²) against the paper's (W on h/(τ‖h‖), one lr and wd for all)."""
import copy

import pytest
import torch
import torch.nn.functional as F

import methods
from methods.t2fnorm import T2FNormTrainer, train_logits
from orchestrator.training import to_float

TAU, LR, WD = 0.1, 0.05, 5e-4


def _trainer(bench, model, **config):
    trainer = T2FNormTrainer(methods.get("t2fnorm").resolve({"t2f_tau": TAU, "lr": LR, "weight_decay": WD,
                                                              "epochs": 1, **config}))
    trainer.setup(model, bench)
    return trainer


def _batch(bench, start=0, n=16):
    return to_float(bench.id_train.x[start:start + n], "cpu"), torch.as_tensor(bench.id_train.y[start:start + n])


def test_training_logits_are_the_head_on_the_unit_feature(bench, small_cnn):
    model = small_cnn().train()
    x, _ = _batch(bench)
    h, _ = model.embed_normalized(model.normalize(x))
    w, b = model.head.fc.weight, model.head.fc.bias
    expected = (h / h.norm(dim=1, keepdim=True)) @ w.T + b
    assert torch.allclose(train_logits(model, x), expected, atol=1e-5)


def test_setup_stores_the_head_divided_by_tau(bench, small_cnn):
    model = small_cnn()
    w0 = model.head.fc.weight.detach().clone()
    _trainer(bench, model)
    assert torch.allclose(model.head.fc.weight, w0 / TAU)


def test_the_head_group_has_lr_over_tau_squared_and_wd_times_tau_squared(bench, small_cnn):
    trainer = _trainer(bench, small_cnn())
    body, head = trainer.optimizer.param_groups
    assert (body["lr"], body["weight_decay"]) == (pytest.approx(LR), pytest.approx(WD))
    assert (head["lr"], head["weight_decay"]) == (pytest.approx(LR / TAU ** 2), pytest.approx(WD * TAU ** 2))


def test_sgd_follows_the_papers_parametrisation(bench, small_cnn):
    # The paper's network: head W on h/(τ‖h‖), every parameter with lr and wd (SGD, momentum 0.9, Nesterov, cosine).
    paper = small_cnn().train()
    ours = copy.deepcopy(paper)
    trainer = _trainer(bench, ours)
    opt = torch.optim.SGD(paper.parameters(), lr=LR, momentum=0.9, weight_decay=WD, nesterov=True)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=trainer.scheduler.T_max)
    for step in range(4):
        x, y = _batch(bench, 16 * step)
        h, _ = paper.embed_normalized(paper.normalize(x))
        loss = F.cross_entropy(paper.head(F.normalize(h, dim=1) / TAU), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        ours_loss = trainer.loss(ours, x, y, 1)
        assert float(ours_loss.detach()) == pytest.approx(float(loss.detach()), rel=1e-4)
        trainer.optimizer.zero_grad()
        ours_loss.backward()
        trainer.optimizer.step()
        trainer.scheduler.step()
    assert torch.allclose(ours.head.fc.weight, paper.head.fc.weight / TAU, rtol=1e-4, atol=1e-5)
    assert all(torch.allclose(a, b, rtol=1e-4, atol=1e-5) for (n, a), (_, b)
               in zip(ours.named_parameters(), paper.named_parameters(), strict=True) if n != "head.fc.weight")


def test_the_test_time_network_divides_the_raw_feature_by_tau(bench, small_cnn):
    paper = small_cnn().eval()
    ours = copy.deepcopy(paper)
    _trainer(bench, ours)
    x, _ = _batch(bench)
    h, _ = paper.embed_normalized(paper.normalize(x))
    assert torch.allclose(ours.eval()(x), paper.head(h / TAU), atol=1e-4)  # OpenOOD's forward_ood_inference


def test_declaration():
    method = methods.get("t2fnorm")
    assert (method.trains(), method.head, method.own_knobs()["t2f_tau"].default) == (True, "linear", 0.1)
    assert method.scorer_knob().default == "msp"
