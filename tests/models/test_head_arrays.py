"""The classifier's final layer travels with its extracted outputs (methods.base.Head): extraction describes it
as arrays only when those arrays reproduce the network's logits, and the model cache keeps it with every
outputs entry, so head-based scorers (ReAct, DICE, fDBD, ViM...) score without the network."""
import hashlib
import json

import numpy as np
import pytest
import torch
from torch import nn

from methods.base import Head, Outputs
from orchestrator.cache import MANIFEST, ModelCache
from orchestrator.data.base import Split
from orchestrator.forward import extract
from orchestrator.models.backbones import build_classifier
from orchestrator.models.protocol import adapt

RNG = np.random.default_rng(0)
IMAGES = Split(RNG.integers(0, 256, size=(12, 1, 8, 8), dtype=np.uint8), np.arange(12) % 3)


def _classifier(head: str, sigma=None):
    torch.manual_seed(0)
    return build_classifier("small_cnn", 1, 8, 3, (0.5,), (0.25,), head=head, sigma=sigma).eval()


def test_hand_values_of_a_linear_head():
    head = Head(np.array([[1.0, 2.0], [0.0, -1.0]]), np.array([0.5, 0.0]))
    np.testing.assert_allclose(head.logits(np.array([[1.0, 1.0]])), [[3.5, -1.0]])


def test_hand_values_of_a_zscore_head():
    # h = (1, 3): mean 2, centred (-1, 1), std with Bessel's correction sqrt(2); sigma 0.5 -> (-0.5, 0.5)/sqrt(2)
    head = Head(np.eye(2), np.zeros(2), zscore_sigma=0.5)
    expected = np.array([[-0.5, 0.5]]) / (np.sqrt(2.0) + 1e-6)
    np.testing.assert_allclose(head.logits(np.array([[1.0, 3.0]])), expected)


def test_a_replacement_weight_is_used_instead_of_the_layers():
    head = Head(np.eye(2), np.array([1.0, 1.0]))
    np.testing.assert_allclose(head.logits(np.array([[2.0, 3.0]]), weight=np.zeros((2, 2))), [[1.0, 1.0]])


@pytest.mark.parametrize("kind, sigma", [("linear", None), ("zscore", 0.7)])
def test_extracted_head_reproduces_the_networks_logits(kind, sigma):
    out = extract(_classifier(kind, sigma), IMAGES, "cpu")
    np.testing.assert_allclose(out.head.logits(out.features), out.logits, rtol=1e-4, atol=1e-5)


def test_a_zscore_head_is_extracted_with_its_sigma():
    assert extract(_classifier("zscore", 0.7), IMAGES, "cpu").head.zscore_sigma == pytest.approx(0.7)


class _MLPAfterFeatures(nn.Module):
    """A head named as 'fc' whose output is not the logits: a second layer follows (not describable as W, b)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(4, 5)
        self.out = nn.Linear(5, 3)

    def forward(self, x):
        return self.out(torch.relu(self.fc(self.pool(self.conv(x)).flatten(1))))


def test_a_head_that_is_not_linear_in_the_features_is_not_described():
    torch.manual_seed(0)
    model = adapt(_MLPAfterFeatures(), head="fc", mean=(0.5,), std=(0.25,)).eval()
    assert extract(model, IMAGES, "cpu").head is None


def _outputs(head):
    return Outputs(RNG.normal(size=(4, 3)).astype(np.float32), RNG.normal(size=(4, 2)).astype(np.float32),
                   np.arange(4), None, head)


@pytest.mark.parametrize("sigma", [None, 0.5])
def test_the_cache_keeps_the_head_with_the_outputs(tmp_path, sigma):
    cache = ModelCache(tmp_path)
    head = Head(RNG.normal(size=(3, 2)).astype(np.float32), RNG.normal(size=3).astype(np.float32), sigma)
    cache.save_outputs("k", "id_val", False, _outputs(head))
    loaded = cache.load_outputs("k", "id_val", False).head
    assert (np.array_equal(loaded.weight, head.weight), np.array_equal(loaded.bias, head.bias),
            loaded.zscore_sigma) == (True, True, sigma)


def test_the_cache_keeps_a_missing_head_missing(tmp_path):
    cache = ModelCache(tmp_path)
    cache.save_outputs("k", "id_val", False, _outputs(None))
    assert cache.load_outputs("k", "id_val", False).head is None


def test_outputs_cached_before_heads_were_are_extracted_again(tmp_path):
    cache = ModelCache(tmp_path)
    cache.save_outputs("k", "id_val", False, _outputs(None))
    manifest = tmp_path / "models" / "k" / "outputs" / "id_val" / MANIFEST
    meta = json.loads(manifest.read_text())
    del meta["head"]  # an entry as written before heads were cached, with a matching checksum
    manifest.write_text(json.dumps(meta))
    manifest.with_name(MANIFEST + ".sha256").write_text(hashlib.sha256(manifest.read_bytes()).hexdigest())
    assert (cache.has_outputs("k", "id_val", False), cache.load_outputs("k", "id_val", False)) == (False, None)


def test_merged_shards_keep_the_head(tmp_path):
    cache = ModelCache(tmp_path)
    head = Head(np.ones((3, 2), np.float32), np.zeros(3, np.float32))
    names = []
    for start in (0, 4):
        name = ModelCache.shard_name("id_val", start, start + 4)
        cache.save_outputs("k", name, False, _outputs(head))
        names.append(name)
    cache.merge_shards("k", "id_val", False, names)
    merged = cache.load_outputs("k", "id_val", False)
    assert (len(merged), np.array_equal(merged.head.weight, head.weight)) == (8, True)
