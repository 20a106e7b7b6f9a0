"""MODE: ALPA similarity and loss, chunked memory bound on a CIFAR ResNet-18, end-to-end fine-tuning trial."""
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from methods.mode import (
    ALPAProjectors,
    MODETrainer,
    alpa_chunk_bytes,
    alpa_chunk_size,
    alpa_loss,
    alpa_similarity,
    augment,
    supcon_from_logits,
)

ROOT = Path(__file__).resolve().parents[2]
GIB = 2**30


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny tensors: one intra-op thread is much faster than two on a shared, loaded CPU."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _proj(c=16, d=8, seed=0):
    torch.manual_seed(seed)
    return ALPAProjectors(c, d)


def test_similarity_symmetric_bounded_and_two_for_identical_constant_maps():
    proj = _proj()
    fmap = torch.randn(6, 16, 3, 3)
    s = alpa_similarity(*proj(fmap))
    assert torch.allclose(s, s.T)
    assert (s <= 2 + 1e-5).all() and (s >= -2 - 1e-5).all()
    # identical inputs (a spatially constant map, so that self-alignment reproduces every location): s = 2
    const = torch.randn(3, 16, 1, 1).expand(3, 16, 3, 3)
    pair = torch.cat([const[:1], const[:1]])
    s_pair = alpa_similarity(*proj(pair))
    assert torch.allclose(s_pair, torch.full((2, 2), 2.0), atol=1e-5)
    assert torch.allclose(alpa_similarity(*proj(const)).diag(), torch.full((3,), 2.0), atol=1e-5)
    # identical inputs give identical rows/columns: s(a, x) = s(a', x) when a' = a
    twin = torch.cat([fmap[:1], fmap[:1], fmap[1:3]])
    s_twin = alpa_similarity(*proj(twin))
    assert torch.allclose(s_twin[0], s_twin[1], atol=1e-6)


def _reference_similarity(q, k, v):
    """s(a, b) written out pair by pair: softmax alignment, cosine per location, both directions."""
    n, _, d = q.shape
    s = torch.zeros(n, n)
    for a in range(n):
        for b in range(n):
            ab = torch.softmax(q[a] @ k[b].T / d ** 0.5, dim=1) @ v[b]  # b aligned to a's locations
            ba = torch.softmax(q[b] @ k[a].T / d ** 0.5, dim=1) @ v[a]
            s[a, b] = (torch.cosine_similarity(v[a], ab, dim=1).mean()
                       + torch.cosine_similarity(v[b], ba, dim=1).mean())
    return s


def test_similarity_matches_the_pairwise_definition():
    proj = _proj()
    with torch.no_grad():
        q, k, v = proj(torch.randn(5, 16, 2, 3))
        assert torch.allclose(alpa_similarity(q, k, v), _reference_similarity(q, k, v), atol=1e-5)


def test_chunked_equals_full_in_value_and_gradient():
    proj = _proj()
    fmap = torch.randn(10, 16, 3, 3)
    labels = torch.tensor([0, 1] * 5)
    grads = []
    for budget in (1e6, 0.07):  # one chunk vs one anchor per chunk (gradient checkpointed)
        proj.zero_grad()
        loss = alpa_loss(proj, fmap, labels, 10.0, budget)
        loss.backward()
        grads.append((loss.detach(), [p.grad.clone() for p in proj.parameters()]))
    assert alpa_chunk_size(10, 9, 8, 0.07) == 2
    assert torch.allclose(grads[0][0], grads[1][0], atol=1e-6)
    for a, b in zip(grads[0][1], grads[1][1], strict=False):
        assert torch.allclose(a, b, atol=1e-5)


def test_alpa_loss_decreases_on_separable_toy_batch():
    torch.manual_seed(0)
    labels = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    centres = torch.randn(2, 16, 1, 1)
    fmap = centres[labels] + 1.5 * torch.randn(8, 16, 3, 3)
    proj = _proj(seed=1)
    opt = torch.optim.Adam(proj.parameters(), lr=1e-2)
    losses = []
    for _ in range(40):
        loss = alpa_loss(proj, fmap, labels, 10.0)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    optimum = np.log(3)  # SupCon's floor with 3 positives per anchor: all mass on the positives
    assert losses[-1] < losses[0] - 0.05
    assert losses[-1] - optimum < 0.25 * (losses[0] - optimum)
    s = alpa_similarity(*proj(fmap)).detach()
    same = labels[:, None] == labels[None, :]
    off = ~torch.eye(8, dtype=torch.bool)
    assert s[same & off].mean() > s[~same].mean()


def test_supcon_matches_a_hand_computed_case():
    logits = torch.tensor([[0.0, 2.0, 0.0], [2.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
    labels = torch.tensor([0, 0, 1])
    # anchor 0: positive 1 among {1, 2}; anchor 1: positive 0 among {0, 2}; anchor 2 has no positive
    want = -0.5 * ((2 - np.log(np.exp(2) + 1)) + (2 - np.log(np.exp(2) + np.exp(1))))
    assert supcon_from_logits(logits, labels).item() == pytest.approx(want, rel=1e-5)


def test_augment_crops_and_flips():
    x = torch.rand(5, 3, 8, 8)
    out = augment(x, hflip=True, pad=0)
    for i in range(5):  # with no padding a crop is the identity; only flips remain
        assert torch.equal(out[i], x[i]) or torch.equal(out[i], x[i].flip(2))
    shifted = augment(x, hflip=False, pad=2)
    assert shifted.shape == x.shape


_MEMORY_SCRIPT = textwrap.dedent("""
    import json, resource, sys
    import torch
    sys.path.insert(0, sys.argv[1])
    from methods.mode import ALPAProjectors, alpa_chunk_bytes, alpa_chunk_size, alpa_loss, augment
    from orchestrator.models.backbones import build_classifier
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = build_classifier("resnet18", 3, 32, 10, [0.5] * 3, [0.25] * 3).train()
    proj = ALPAProjectors(512, 80)
    x, y = torch.rand(64, 3, 32, 32), torch.randint(0, 10, (64,))
    views, labels = torch.cat([augment(x, True), augment(x, True)]), torch.cat([y, y])
    def rss():
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * resource.getpagesize()
    peak = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    with torch.no_grad():                         # the real map of 128 views (the network's own cost is not ALPA's)
        _, fmap = model.embed_normalized(model.normalize(views))
    fmap = fmap.clone().requires_grad_(True)
    fmap_shape = list(fmap.shape)
    before = rss()
    loss = alpa_loss(proj, fmap, labels, 10.0)   # the ALPA loss computation: projectors, pairwise, SupCon
    loss.backward()                               # and its backward (into the projectors and the map)
    alpa_peak = peak() - before
    n, L = fmap.shape[0], fmap.shape[2] * fmap.shape[3]
    chunk = alpa_chunk_size(n, L, 80)
    print(json.dumps({"fmap": fmap_shape, "alpa_step_bytes": alpa_peak, "chunk": chunk,
                      "chunk_bytes": alpa_chunk_bytes(chunk, n, L, 80), "loss": float(loss)}))
""")


def test_alpa_batch64_cifar_resnet18_fits_in_4gib():
    """Batch 64 (128 views) on CIFAR ResNet-18 (map 512×4×4).

    Measured, in a fresh process: peak RSS (ru_maxrss) minus the RSS just before the ALPA loss computation, which
    covers the projectors, the pairwise attention (chunked), SupCon and their backward down to the feature map
    (the ResNet-18 forward that makes the map runs before, under no_grad).
    Analytic: the largest chunk of pairwise intermediates × 4 bytes.
    """
    out = subprocess.run([sys.executable, "-c", _MEMORY_SCRIPT, str(ROOT)], capture_output=True, text=True,
                         timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stderr[-2000:]
    rec = json.loads(out.stdout.strip().splitlines()[-1])
    print("ALPA memory:", rec)
    assert rec["fmap"] == [128, 512, 4, 4]
    assert rec["chunk_bytes"] < 4 * GIB
    assert 0 < rec["alpa_step_bytes"] < 4 * GIB
    assert np.isfinite(rec["loss"])
    # the chunking bound holds for any batch: a 1024-view batch on a 7×7 map still uses ≤ 256 MiB per chunk
    assert alpa_chunk_bytes(alpa_chunk_size(1024, 49, 80), 1024, 49, 80) <= 256 * 2**20


def test_end_to_end_trial_on_digits(tmp_path):
    from orchestrator import data as benchmarks
    from orchestrator.trial import TrialSettings, run_trial

    bench = benchmarks.load("digits", smoke=True)
    config = {"epochs": 1, "finetune_epochs": 1, "variant": "mode_t", "k": 5, "batch_size": 32}
    result = run_trial(config, bench, TrialSettings("mode", cache_dir=str(tmp_path / "cache"), threads=1))
    assert result["final"] and result["trained_model"]
    assert np.isfinite(result["val/auroc"]) and 0 <= result["val/auroc"] <= 1
    assert "near/auroc" in json.dumps(sorted(result)) or any(k.startswith("near") for k in result)
    # the projectors are trainer state, not part of the cached classifier
    cached = list((tmp_path / "cache").rglob("*.pt"))
    assert cached
    for path in cached:
        state = torch.load(path, map_location="cpu", weights_only=False)
        keys = json.dumps(list(state.keys()) if isinstance(state, dict) else [])
        assert "proj" not in keys


def test_trainer_extra_state_round_trip():
    import methods
    from orchestrator import data as benchmarks
    from orchestrator.models.backbones import build_classifier

    m = methods.get("mode")
    bench = benchmarks.load("digits", smoke=True)
    model = build_classifier("small_cnn", 1, 8, bench.num_classes, [0.3], [0.4])
    a = MODETrainer(m.resolve({"finetune_epochs": 1}), seed=0)
    a.setup(model, bench)
    assert not a.hflip  # digits: flipping is not label-preserving
    assert any(p is q for q in a.proj.parameters() for p in a.optimizer.param_groups[0]["params"])
    b = MODETrainer(m.resolve({"finetune_epochs": 1}), seed=5)
    b.setup(model, bench)
    b.load_state_dict(a.state_dict())
    for p, q in zip(a.proj.parameters(), b.proj.parameters(), strict=False):
        assert torch.equal(p, q)
    with pytest.raises(ValueError):
        m.resolve({"variant": "mode_x"})
    with pytest.raises(ValueError):
        MODETrainer({**m.resolve({}), "variant": "mode_x"})


def test_hflip_auto_follows_the_benchmarks_declaration():
    import dataclasses

    import methods
    from orchestrator import data as benchmarks
    from orchestrator.models.backbones import build_classifier

    m = methods.get("mode")
    digits = benchmarks.load("digits", smoke=True)
    assert digits.hflip_invariant is False
    flippable = dataclasses.replace(digits, name="digits", hflip_invariant=True)  # same name: only the flag counts
    model = build_classifier("small_cnn", 1, 8, digits.num_classes, [0.3], [0.4])

    def hflip(config, bench):
        trainer = MODETrainer(m.resolve(config))
        trainer.setup(model, bench)
        return trainer.hflip

    assert hflip({}, digits) is False and hflip({}, flippable) is True  # hflip: auto (the default)
    assert hflip({"hflip": True}, digits) is True and hflip({"hflip": False}, flippable) is False
    with pytest.raises(ValueError):
        m.resolve({"hflip": "sometimes"})


def test_declared_knobs_network_split_and_csd_scoring():
    import methods
    from methods.csd import CSDScorer

    m = methods.get("mode")
    network = m.network_knobs()
    assert {"variant", "inverse_temperature", "inner_dim", "lam", "supcon_temperature", "hflip",
            "finetune_batch_size", "finetune_epochs", "finetune_lr", "epochs", "lr"} <= network
    assert not {"k", "grid", "centre", "aggregator", "scorer", "alpa_chunk_mb"} & network
    assert {"k", "grid", "centre", "aggregator", "scorer"} <= set(m.own_knobs())
    assert isinstance(m.scorer(m.resolve({})), CSDScorer)
    assert type(m.scorer(m.resolve({"scorer": "energy"}))).__name__ == "EnergyScorer"
    with pytest.raises(ValueError):
        m.resolve({"scorer": "mode"})
