"""OAML: CLUB bound, outlier samplers (feature-space substitutes), gradient routing, end-to-end trial."""
import numpy as np
import pytest
import torch

from methods.oaml import (
    CLUB,
    OAMLTrainer,
    _kth_distance,
    alpha_bar,
    boundary_outliers,
    diffusion_outliers,
    distill_transform,
)


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _fit_club(o, h, steps=300, seed=0):
    torch.manual_seed(seed)
    club = CLUB(o.shape[1], h.shape[1], hidden=32)
    opt = torch.optim.Adam(club.parameters(), lr=1e-2)
    for _ in range(steps):
        loss = club.learning_loss(o, h)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return club


def test_club_bound_matches_the_written_formula():
    torch.manual_seed(0)
    mu, lv, h = torch.randn(6, 4), torch.randn(6, 4).tanh(), torch.randn(6, 4)
    inv = 1 / (2 * lv.exp())
    pos = (-(mu - h) ** 2 * inv).sum(1)
    neg = torch.stack([(((h - mu[i]) ** 2).mean(0) * inv[i]).sum() for i in range(6)])
    assert CLUB.bound_from(mu, lv, h).item() == pytest.approx((pos + neg).mean().item(), rel=1e-5)


def test_club_lower_for_independent_than_dependent_pairs():
    """q fitted on one sample of (o, h) pairs, the bound evaluated on fresh pairs of the same distribution."""
    g = torch.Generator().manual_seed(0)
    w = torch.randn(8, 8, generator=g)

    def pairs(n, dependent):
        o = torch.randn(n, 8, generator=g)
        h = o @ w + 0.1 * torch.randn(n, 8, generator=g)
        return (o, h) if dependent else (o, torch.randn(n, 8, generator=g) * (w.norm(dim=0) + 0.1))

    bounds = {}
    for dependent in (True, False):
        club = _fit_club(*pairs(256, dependent))
        with torch.no_grad():
            bounds[dependent] = club.bound(*pairs(256, dependent)).item()
    print("CLUB dependent", bounds[True], "independent", bounds[False])
    assert bounds[True] > bounds[False] + 5.0
    assert abs(bounds[False]) < 0.2 * bounds[True]


def test_bound_moves_only_the_student_and_likelihood_only_q():
    torch.manual_seed(0)
    club = CLUB(4, 4, 8)
    o, h = torch.randn(5, 4), torch.randn(5, 4, requires_grad=True)
    club.bound(o, h).backward()
    assert h.grad is not None and all(p.grad is None for p in club.parameters())
    h.grad = None
    club.learning_loss(o, h.detach()).backward()
    assert h.grad is None and all(p.grad is not None for p in club.parameters())


def test_boundary_sampler_moves_away_from_the_data():
    g = torch.Generator().manual_seed(0)
    feats = torch.nn.functional.normalize(torch.randn(200, 16, generator=g) + 3.0, dim=1)
    k = 10
    out, anchors = boundary_outliers(feats, k=k, boundary_points=20, candidates=200, sigma=0.07, keep=2, generator=g)
    assert out.shape == (40, 16) and anchors.shape == (20, 16)
    # anchors are the data points with the largest k-NN distance (self excluded)
    kth = _kth_distance(feats, feats, k, exclude_self=True)
    assert torch.allclose(torch.sort(_kth_distance(anchors, feats, k + 1)).values,
                          torch.sort(kth.topk(20).values).values, atol=1e-5)
    # outliers are farther from the data than the points they started from
    d_out = _kth_distance(out, feats, k).view(20, 2)
    d_anchor = kth.topk(20).values
    assert (d_out.min(1).values > d_anchor).all()
    assert d_out.mean() > d_anchor.mean() + 0.05


def test_boundary_sampler_clamps_k_to_the_class_size():
    feats = torch.nn.functional.normalize(torch.randn(5, 4), dim=1)
    out, anchors = boundary_outliers(feats, k=300, boundary_points=50, candidates=10, keep=2)
    assert out.shape == (10, 4) and anchors.shape == (5, 4)


def test_forward_diffusion_levels():
    abar = alpha_bar()
    assert abar.shape == (1000,) and (abar[1:] < abar[:-1]).all()
    assert abar[0] == pytest.approx(1 - 1e-4) and abar[-1] < 1e-4
    g = torch.Generator().manual_seed(0)
    h = torch.randn(2000, 4, generator=g)
    near = diffusion_outliers(h, torch.full((2000,), 1), abar, g)
    far = diffusion_outliers(h, torch.full((2000,), 1000), abar, g)
    assert (near - h).abs().mean() < 0.05
    assert abs(np.corrcoef(far[:, 0].numpy(), h[:, 0].numpy())[0, 1]) < 0.1


def test_distill_transform_shape_and_trainer_validation():
    import methods

    m = methods.get("oaml")
    dt = distill_transform(512, 128)
    assert dt(torch.randn(4, 512)).shape == (4, 128)
    with pytest.raises(ValueError):
        m.resolve({"teacher": "bigger"})
    with pytest.raises(ValueError):
        OAMLTrainer({**m.resolve({}), "teacher": "bigger"})
    with pytest.raises(ValueError):
        m.resolve({"t_max": 1001})
    with pytest.raises(ValueError):
        OAMLTrainer(m.resolve({"t_min": 700, "t_max": 600}))


def test_method_is_labelled_as_a_substitute_and_scores_energy():
    import methods
    from methods.energy import EnergyScorer

    m = methods.get("oaml")
    assert m.finetunes and m.substitute and "Stable Diffusion" in m.substitute
    assert isinstance(m.scorer(m.resolve({})), EnergyScorer)
    assert type(m.scorer(m.resolve({"scorer": "msp"}))).__name__ == "MSPScorer"
    network = m.network_knobs()
    assert {"teacher", "lambda_kl", "lambda_mi2", "t_min", "t_max", "club_hidden", "finetune_epochs",
            "finetune_lr"} <= network
    assert "scorer" not in network and "temperature" not in network  # energy's T is post-hoc
    assert m.declared()["temperature"].default == 1.0


def test_end_to_end_trial_self_teacher(tmp_path):
    from orchestrator import data as benchmarks
    from orchestrator.trial import TrialSettings, run_trial

    bench = benchmarks.load("digits", smoke=True)
    config = {"epochs": 1, "finetune_epochs": 1, "teacher": "self", "candidates": 50, "pool_samples": 200}
    result = run_trial(config, bench, TrialSettings("oaml", cache_dir=str(tmp_path / "cache"), threads=1))
    assert result["final"] and result["trained_model"]
    assert np.isfinite(result["val/auroc"]) and 0 <= result["val/acc"] <= 1


def test_trainer_extras_are_trained_and_checkpointed():
    import methods
    from orchestrator import data as benchmarks
    from orchestrator.models.backbones import build_classifier

    bench = benchmarks.load("digits", smoke=True)
    torch.manual_seed(0)
    model = build_classifier("small_cnn", 1, 8, bench.num_classes, [0.3], [0.4])
    m = methods.get("oaml")
    trainer = OAMLTrainer(m.resolve({"teacher": "self", "finetune_epochs": 1, "candidates": 20, "pool_samples": 100,
                                     "batch_size": 32}))
    trainer.setup(model, bench)
    assert all(not p.requires_grad for p in trainer.teacher.parameters())
    in_optimizer = {id(p) for g in trainer.optimizer.param_groups for p in g["params"]}
    assert all(id(p) in in_optimizer for m in trainer.extras() for p in m.parameters())
    before = [p.clone() for p in trainer.club_knn.parameters()]
    stats = trainer.train_epoch(model, bench.id_train.x, bench.id_train.y, 1)
    assert np.isfinite(stats["train/loss"])
    assert any(not torch.equal(a, b) for a, b in zip(before, trainer.club_knn.parameters(), strict=False))
    assert trainer._knn_pool is not None and len(trainer._knn_pool) > 0
    other = OAMLTrainer(m.resolve({"teacher": "self", "finetune_epochs": 1}), seed=3)
    other.setup(model, bench)
    other.load_state_dict(trainer.state_dict())
    for a, b in zip(trainer.dt.state_dict().values(), other.dt.state_dict().values(), strict=False):
        assert torch.equal(a, b)
