"""Streamed folder benchmarks (`stream: true`): the images stay on disk until a batch is read, and every split reads
exactly as the in-memory benchmark of the same folders."""
import numpy as np
import pytest
import torch

from orchestrator.data.custom import load_custom
from orchestrator.data.lazy import ImageFiles
from orchestrator.forward import extract
from tests.folder_images import folder_benchmark


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    root = tmp_path_factory.mktemp("folders")
    path = folder_benchmark(root)
    memory = load_custom(path)
    streamed_yaml = root / "streamed.yaml"
    streamed_yaml.write_text(path.read_text().replace("stream: false", "stream: true"))
    return memory, load_custom(streamed_yaml)


def test_streamed_splits_hold_files_not_pixels(pair):
    _, streamed = pair
    assert all(isinstance(s.x, ImageFiles) for s in streamed.splits().values())


@pytest.mark.parametrize("name", ["id_train", "id_val", "id_test", "ood_val/stripes-val", "near/stripes", "far/dark"])
def test_a_streamed_split_decodes_to_the_in_memory_images(pair, name):
    memory, streamed = pair
    assert np.array_equal(streamed.splits()[name].x[:], memory.splits()[name].x)


def test_streamed_labels_are_the_in_memory_labels(pair):
    memory, streamed = pair
    assert np.array_equal(streamed.id_train.y, memory.id_train.y)


def test_a_streamed_shape_reads_like_an_array(pair):
    memory, streamed = pair
    assert streamed.image_shape == memory.image_shape


def test_the_fingerprint_is_stable_without_decoding(pair):
    _, streamed = pair
    assert streamed.fingerprint() == streamed.fingerprint()


def test_a_smoke_subset_stays_on_disk(pair):
    _, streamed = pair
    assert isinstance(streamed.shrink(10, 5).id_train.x, ImageFiles)


def test_extraction_by_dataloader_workers_equals_in_memory_extraction(pair):
    memory, streamed = pair
    torch.manual_seed(0)
    model = torch.nn.Conv2d(3, 4, 3)

    class Probe(torch.nn.Module):  # the protocol's forward_all on a tiny network
        def forward_all(self, x):
            fmap = model(x)
            h = fmap.mean(dim=(2, 3))
            return h[:, :3], h, fmap

    a = extract(Probe(), memory.near["stripes"], "cpu", batch_size=7)
    b = extract(Probe(), streamed.near["stripes"], "cpu", batch_size=7)
    assert np.allclose(a.features, b.features)
