"""The classifier protocol: the built-in backbones implement it; adapt() gives it to any nn.Module."""
import numpy as np
import pytest
import torch
import torchvision

from methods.vim import VimScorer
from orchestrator.data.base import Split
from orchestrator.forward import extract
from orchestrator.models.backbones import build_classifier
from orchestrator.models.protocol import OODClassifier, adapt

MEAN, STD = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)


@pytest.mark.parametrize("backbone, channels, size", [("small_cnn", 1, 8), ("resnet18", 3, 32)])
def test_built_in_backbones_implement_the_protocol(backbone, channels, size):
    model = build_classifier(backbone, channels, size, 5, [0.5] * channels, [0.25] * channels)
    assert isinstance(model, OODClassifier)


@pytest.fixture(scope="module")
def resnet():
    torch.manual_seed(0)
    return torchvision.models.resnet18(weights=None, num_classes=10).eval()


@pytest.fixture(scope="module")
def adapted(resnet):
    return adapt(resnet, head="fc", feature_map="layer4", mean=MEAN, std=STD).eval()


@pytest.fixture(scope="module")
def x():
    return torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def test_an_adapted_module_implements_the_protocol(adapted):
    assert isinstance(adapted, OODClassifier)


def test_adapted_logits_are_the_modules_on_the_normalised_input(adapted, resnet, x):
    with torch.no_grad():
        expected = resnet((x - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1))
        assert torch.allclose(adapted.forward_all(x)[0], expected, atol=1e-5)


def test_penultimate_feature_is_the_pooled_last_map(adapted, x):
    with torch.no_grad():
        _, h, fmap = adapted.forward_all(x)
    assert torch.allclose(h, fmap.mean(dim=(2, 3)), atol=1e-5)


def test_shapes(adapted, x):
    with torch.no_grad():
        logits, h, fmap = adapted.forward_all(x)
    assert (tuple(logits.shape), tuple(h.shape), tuple(fmap.shape)) == ((2, 10), (2, 512), (2, 512, 1, 1))


def test_normalised_path_matches_the_raw_one(adapted, x):
    with torch.no_grad():
        assert torch.allclose(adapted.logits_from_normalized(adapted.normalize(x)), adapted(x), atol=1e-6)


def test_the_head_is_the_modules_linear_layer(adapted, resnet):
    assert adapted.head.fc is resnet.fc


def test_an_unknown_layer_is_named(resnet):
    with pytest.raises(ValueError, match="no layer 'layer9' \\(feature_map\\); closest: layer4"):
        adapt(resnet, feature_map="layer9")


def test_a_head_that_is_not_linear_is_refused(resnet):
    with pytest.raises(ValueError, match="head 'layer4' .* not an nn.Linear"):
        adapt(resnet, head="layer4")


def test_extraction_and_a_scorer_run_on_an_adapted_module(adapted):
    images = np.random.default_rng(0).integers(0, 256, size=(6, 3, 32, 32), dtype=np.uint8)
    outputs = extract(adapted, Split(images, np.zeros(6, dtype=np.int64)), "cpu", with_fmap=True)
    scores = VimScorer(dim=4).fit(outputs, adapted).score(outputs)  # reads head.fc's weight and bias
    assert scores.shape == (6,) and np.isfinite(scores).all()


def test_a_feature_map_scorer_without_a_feature_map_layer_says_how_to_fix_it(resnet):
    images = np.zeros((2, 3, 32, 32), dtype=np.uint8)
    with pytest.raises(ValueError, match="feature_map=<layer name>"):
        extract(adapt(resnet), Split(images), "cpu", with_fmap=True)
