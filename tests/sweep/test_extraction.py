"""Sharded extraction through real Ray tasks: the merged outputs equal one-pass extraction, and a resumed
extraction computes only the shards that are missing."""
import numpy as np
import pytest
import ray

from orchestrator import data as benchmarks
from orchestrator.cache import ModelCache
from orchestrator.evaluation import OutputStore
from orchestrator.sweep import extraction
from orchestrator.training import pick_device
from orchestrator.trial import TrialSettings, external_model, extract_shard, prepare_network
from tests.folder_images import folder_benchmark

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    import torch
    import torchvision

    root = tmp_path_factory.mktemp("shards")
    bench = benchmarks.load(str(folder_benchmark(root, stream=True)))
    torch.manual_seed(0)
    torch.save(torchvision.models.resnet18(num_classes=3).state_dict(), root / "r18.pt")
    from orchestrator.models import external

    spec = external.parse("torchvision:resnet18", str(root / "r18.pt"))
    settings = TrialSettings("knn", cache_dir=str(root / "cache"), model=spec.__dict__)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, address="local")
    yield bench, settings
    ray.shutdown()


def test_a_split_is_cut_into_shards(setup):
    bench, settings = setup
    net = prepare_network({}, bench, settings)
    todo = extraction.plan(bench, net["key"], net["with_fmap"], ModelCache(settings.cache_dir), shard_images=25)
    assert todo["id_train"][:2] == [(0, 25), (25, 50)]


def test_merged_shards_equal_one_pass_extraction(setup):
    bench, settings = setup
    net = extraction.extract_sharded({}, bench, settings, {"cpu": 1, "gpu": 0}, print, shard_images=25)
    merged = ModelCache(settings.cache_dir).load_outputs(net["key"], "id_train", net["with_fmap"])
    direct = OutputStore(external_model(settings.model, bench, settings).eval(), bench, pick_device()).get("id_train")
    assert np.allclose(merged.features, direct.features, atol=1e-5)


def test_a_resumed_extraction_computes_only_missing_shards(setup, tmp_path):
    import dataclasses

    bench, settings = setup
    settings = dataclasses.replace(settings, cache_dir=str(tmp_path))
    net = prepare_network({}, bench, settings)
    planned = sum(len(v) for v in extraction.plan(bench, net["key"], net["with_fmap"], ModelCache(tmp_path), 8).values())
    extract_shard({}, bench, settings, "near/stripes", 0, 8, net["with_fmap"])  # finished before the sweep stopped
    extraction.extract_sharded({}, bench, settings, {"cpu": 1, "gpu": 0}, print, shard_images=8)
    assert ModelCache(tmp_path).shard_count() == planned  # that shard once, the others once each
