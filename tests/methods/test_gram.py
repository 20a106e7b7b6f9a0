"""Gram (Sastry & Oore, ICML 2020): its features, ranges, deviations and score against hand computations; the
classifier's optional forward_blocks member on both built-in encoders; the routing of a network scorer."""
import pickle

import numpy as np
import pytest
import torch
from torch import nn

from methods import gram
from methods.base import InputGradientScorer, LogitScorer, NetworkScorer, Outputs, Scorer
from methods.gram import EPS, NORM_EPS, GramScorer, deviation, gram_features
from orchestrator.models.backbones import build_classifier
from orchestrator.models.protocol import OODClassifier, adapt
from orchestrator.training import to_float


@pytest.fixture(autouse=True)
def fresh_memo():
    gram.forget_memoised()
    yield
    gram.forget_memoised()


def _fmap(rows) -> torch.Tensor:
    """One sample's map (1, C, 1, HW) from the C rows of F."""
    a = torch.tensor(rows, dtype=torch.float32)
    return a.reshape(1, a.shape[0], 1, a.shape[1])


# ------------------------------------------------------------------------- Gram features, by hand
# F = [[1, 2], [3, -1]]: G_1 = F Fᵀ = [[5, 1], [1, 10]]; F² = [[1, 4], [9, 1]]: G_2 = [[17, 13], [13, 82]];
# F³ = [[1, 8], [27, -1]]: G_3 = [[65, 19], [19, 730]].
def test_order_one_is_the_row_sums_of_f_ft():
    np.testing.assert_allclose(gram_features(_fmap([[1, 2], [3, -1]]), 3)[0, 0].numpy(), [6.0, 11.0])


def test_order_two_is_the_square_root_of_the_row_sums():
    np.testing.assert_allclose(gram_features(_fmap([[1, 2], [3, -1]]), 3)[0, 1].numpy(), np.sqrt([30.0, 95.0]))


def test_order_three_is_the_cube_root_of_the_row_sums():
    np.testing.assert_allclose(gram_features(_fmap([[1, 2], [3, -1]]), 3)[0, 2].numpy(), np.cbrt([84.0, 749.0]))


def test_the_root_keeps_the_sign_of_a_negative_row_sum():
    # F = [[1, 0], [-2, 0]]: F³ = [[1, 0], [-8, 0]], G_3 = [[1, -8], [-8, 64]], row sums [-7, 56]
    np.testing.assert_allclose(gram_features(_fmap([[1, 0], [-2, 0]]), 3)[0, 2].numpy(), [-np.cbrt(7.0), np.cbrt(56.0)])


def test_large_activations_do_not_overflow_at_order_ten():
    # one value 1000: G_p = 1000^(2p), to the 1/p: 1000² for every p (1000^20 overflows float32)
    np.testing.assert_allclose(gram_features(_fmap([[1000.0]]), 10)[0, :, 0].numpy(), np.full(10, 1e6), rtol=1e-12)


def test_a_zero_map_gives_zero_features():
    assert (gram_features(torch.zeros(2, 3, 2, 2), 4).numpy() == 0).all()


def test_features_have_one_row_per_power_and_channel():
    assert tuple(gram_features(torch.rand(5, 3, 4, 4), 7).shape) == (5, 7, 3)


def test_each_sample_is_computed_on_its_own():
    maps = torch.rand(3, 2, 2, 2, generator=torch.Generator().manual_seed(0))
    np.testing.assert_allclose(gram_features(maps, 4)[1].numpy(), gram_features(maps[1:2], 4)[0].numpy())


# ------------------------------------------------------------------------- the deviation, by hand
def test_deviation_below_the_min_is_relative_to_the_min():
    assert deviation(np.array([0.5]), np.array([2.0]), np.array([4.0])) == pytest.approx(0.75)


def test_deviation_above_the_max_is_relative_to_the_max():
    assert deviation(np.array([5.0]), np.array([2.0]), np.array([4.0])) == pytest.approx(0.25)


def test_values_inside_the_range_do_not_deviate():
    assert deviation(np.array([2.0, 3.0, 4.0]), np.full(3, 2.0), np.full(3, 4.0)) == 0.0


def test_deviation_sums_over_the_values():
    # relu(1 − 0.5)/1 + relu(3 − 2)/2 + 0
    assert deviation(np.array([0.5, 3.0, 1.5]), np.ones(3), np.full(3, 2.0)) == pytest.approx(1.0)


def test_a_zero_min_is_floored_at_epsilon():
    assert deviation(np.array([-1.0]), np.array([0.0]), np.array([1.0])) == pytest.approx(1.0 / EPS)


def test_a_zero_max_is_floored_at_epsilon():
    assert deviation(np.array([0.5]), np.array([-1.0]), np.array([0.0])) == pytest.approx(0.5 / EPS)


# ------------------------------------------------------------------------- fit and score on a hand-made network
class Pixel(nn.Module):
    """One-pixel grey images v: two blocks, maps v and 2v (one channel each), logits (10v − 5, 0, −20): class 0 when
    v > 0.5, else class 1; class 2 is never predicted. Gram features: v² and 4v² for every power."""

    def __init__(self):
        super().__init__()
        self.dummy = nn.Parameter(torch.zeros(1))
        self.calls = 0

    def forward_blocks(self, x):
        self.calls += 1
        v = x.reshape(len(x))
        logits = torch.stack([10 * v - 5, torch.zeros_like(v), torch.full_like(v, -20.0)], dim=1)
        return logits, [x, 2 * x]


def _pixels(values) -> np.ndarray:
    return np.asarray(values, dtype=np.uint8).reshape(-1, 1, 1, 1)


def _x(values) -> torch.Tensor:
    return to_float(_pixels(values), "cpu")


def _conf(values) -> np.ndarray:
    v = np.asarray(values, dtype=np.float64) / 255.0
    z = np.stack([10 * v - 5, np.zeros_like(v), np.full_like(v, -20.0)], axis=1)
    p = np.exp(z - z.max(axis=1, keepdims=True))
    return (p / p.sum(axis=1, keepdims=True)).max(axis=1)


# 255, 204 → v = 1.0, 0.8 (class 0: v² in [0.64, 1]); 51, 102 → v = 0.2, 0.4 (class 1: v² in [0.04, 0.16])
TRAIN = [255, 204, 51, 102]


@pytest.fixture
def fitted():
    return GramScorer(powers=3, holdout=0.0).fit(None, Pixel(), images=_pixels(TRAIN))


def test_min_is_per_predicted_class(fitted):
    np.testing.assert_allclose(fitted.mins_[0][:2, 0, 0], [0.64, 0.04], rtol=1e-6)


def test_max_is_per_predicted_class(fitted):
    np.testing.assert_allclose(fitted.maxs_[0][:2, 0, 0], [1.0, 0.16], rtol=1e-6)


def test_ranges_are_per_layer(fitted):
    np.testing.assert_allclose(fitted.maxs_[1][:2, 0, 0], [4.0, 0.64], rtol=1e-6)


def test_ranges_are_per_power(fitted):
    np.testing.assert_allclose(fitted.mins_[0][0, :3, 0], [0.64] * 3, rtol=1e-6)


def test_a_class_never_predicted_gets_the_range_of_all_fit_images(fitted):
    np.testing.assert_allclose([fitted.mins_[0][2, 0, 0], fitted.maxs_[0][2, 0, 0]], [0.04, 1.0], rtol=1e-6)


def test_the_class_never_predicted_is_reported(fitted):
    assert fitted.empty_classes_ == [2]


def test_a_class_with_one_image_has_an_empty_range():
    one = GramScorer(powers=1, holdout=0.0).fit(None, Pixel(), images=_pixels([255, 51, 102]))
    assert one.mins_[0][0, 0, 0] == one.maxs_[0][0, 0, 0]


def test_a_fit_image_scores_zero(fitted):
    assert fitted.score_inputs(Pixel(), _x([204]))[0] == 0.0


def test_score_sums_the_deviations_of_every_layer_and_power_over_the_confidence(fitted):
    # v = 0.1 (class 1): v² = 0.01 below 0.04 → 0.75 per layer and power; 2 layers × 3 powers; normaliser 1
    expected = -(2 * 3 * (0.04 - 0.01) / 0.04) / _conf([25.5])[0]
    x = torch.full((1, 1, 1, 1), 0.1)
    assert fitted.score_inputs(Pixel(), x)[0] == pytest.approx(expected, rel=1e-5)


def test_without_confidence_the_score_is_minus_the_total_deviation():
    scorer = GramScorer(powers=3, divide_by_confidence=False, holdout=0.0).fit(None, Pixel(), images=_pixels(TRAIN))
    assert scorer.score_inputs(Pixel(), torch.full((1, 1, 1, 1), 0.1))[0] == pytest.approx(-4.5, rel=1e-5)


def test_powers_counts_the_orders_summed():
    scorer = GramScorer(powers=2, divide_by_confidence=False, holdout=0.0).fit(None, Pixel(), images=_pixels(TRAIN))
    assert scorer.score_inputs(Pixel(), torch.full((1, 1, 1, 1), 0.1))[0] == pytest.approx(-3.0, rel=1e-5)


def test_above_the_max_deviates_relative_to_the_max():
    # v = 0.45 (class 1): v² = 0.2025 above 0.16 → (0.2025 − 0.16)/0.16 per layer and power
    scorer = GramScorer(powers=1, divide_by_confidence=False, holdout=0.0).fit(None, Pixel(), images=_pixels(TRAIN))
    x = torch.full((1, 1, 1, 1), 0.45)
    assert scorer.score_inputs(Pixel(), x)[0] == pytest.approx(-2 * (0.2025 - 0.16) / 0.16, rel=1e-5)


def test_held_out_images_set_the_per_layer_normaliser():
    # the documented split: the first int(holdout·n) of a seed-0 permutation are held out of the ranges
    images = [255, 230, 204, 180, 153, 128, 51, 70, 90, 102]
    held = np.random.default_rng(0).permutation(10)[:5]
    ranged = [v for i, v in enumerate(images) if i not in held]
    v2 = (np.asarray(images, dtype=np.float64) / 255.0) ** 2
    r2 = (np.asarray(ranged, dtype=np.float64) / 255.0) ** 2
    dev = []
    for i in held:  # one power, no confidence: the deviation of v² from its predicted class's range
        cls = (np.asarray(ranged) / 255.0 > 0.5) == (images[i] / 255.0 > 0.5)
        lo, hi = r2[cls].min(), r2[cls].max()
        dev.append(max(lo - v2[i], 0) / lo + max(v2[i] - hi, 0) / hi)
    scorer = GramScorer(powers=1, divide_by_confidence=False, holdout=0.5).fit(None, Pixel(), images=_pixels(images))
    np.testing.assert_allclose(scorer.normalisers(), [np.mean(dev) + NORM_EPS] * 2, rtol=1e-5)


def test_no_held_out_image_leaves_the_deviations_unnormalised(fitted):
    np.testing.assert_array_equal(fitted.normalisers(), [1.0, 1.0])


def test_scores_are_one_per_image_and_finite(fitted):
    scores = fitted.score_inputs(Pixel(), _x([0, 30, 128, 255, 77]))
    assert scores.shape == (5,) and np.isfinite(scores).all()


# ------------------------------------------------------------------------- memo
def test_a_second_configuration_on_the_same_network_runs_no_network():
    net = Pixel()
    GramScorer(powers=3).fit(None, net, images=_pixels(TRAIN * 5)).score_inputs(net, _x([30, 90]))
    calls = net.calls
    GramScorer(powers=2).fit(None, net, images=_pixels(TRAIN * 5)).score_inputs(net, _x([30, 90]))
    assert net.calls == calls


def test_memoised_scores_equal_fresh_ones():
    net = Pixel()
    GramScorer(powers=3).fit(None, net, images=_pixels(TRAIN * 5)).score_inputs(net, _x([30, 90]))
    memoised = GramScorer(powers=2).fit(None, net, images=_pixels(TRAIN * 5)).score_inputs(net, _x([30, 90]))
    gram.forget_memoised()
    fresh = GramScorer(powers=2).fit(None, net, images=_pixels(TRAIN * 5)).score_inputs(net, _x([30, 90]))
    np.testing.assert_array_equal(memoised, fresh)


def test_changed_weights_are_fitted_again():
    torch.manual_seed(0)
    model = build_classifier("small_cnn", 1, 8, 3, [0.5], [0.25]).eval()
    images = np.random.default_rng(0).integers(0, 256, (20, 1, 8, 8), dtype=np.uint8)
    before = GramScorer(powers=2).fit(None, model, images=images).mins_[0].copy()
    with torch.no_grad():
        model.encoder.body[0].weight.mul_(2.0)
    assert not np.allclose(GramScorer(powers=2).fit(None, model, images=images).mins_[0], before)


def test_a_fitted_scorer_pickles():
    scorer = GramScorer(powers=3, holdout=0.0).fit(None, Pixel(), images=_pixels(TRAIN))
    again = pickle.loads(pickle.dumps(scorer))
    np.testing.assert_array_equal(again.score_inputs(Pixel(), _x([30, 200])), scorer.score_inputs(Pixel(), _x([30, 200])))


# ------------------------------------------------------------------------- the protocol member on both encoders
def _built(backbone, channels, size):
    torch.manual_seed(0)
    model = build_classifier(backbone, channels, size, 5, [0.5] * channels, [0.25] * channels).eval()
    x = torch.rand(3, channels, size, size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        logits, maps = model.forward_blocks(x)
    return model, x, logits, maps


@pytest.mark.parametrize("size, shapes", [(8, [(32, 8, 8), (64, 4, 4), (128, 4, 4)]),
                                          (28, [(32, 14, 14), (64, 7, 7), (128, 7, 7)])])
def test_small_cnn_gives_each_blocks_map_in_order(size, shapes):
    _, _, _, maps = _built("small_cnn", 1, size)
    assert [tuple(m.shape[1:]) for m in maps] == shapes


def test_small_cnn_maps_are_the_outputs_of_its_blocks():
    model, x, _, maps = _built("small_cnn", 1, 28)
    body = model.encoder.body  # conv-bn-relu-pool, conv-bn-relu-pool, conv-bn-relu
    with torch.no_grad():
        expected = [body[:4](model.normalize(x)), body[:8](model.normalize(x)), body(model.normalize(x))]
    assert all(torch.allclose(m, e) for m, e in zip(maps, expected, strict=True))


def test_resnet18_gives_the_stem_and_each_stage_in_order():
    _, _, _, maps = _built("resnet18", 3, 16)
    assert [tuple(m.shape[1:]) for m in maps] == [(64, 16, 16), (64, 16, 16), (128, 8, 8), (256, 4, 4), (512, 2, 2)]


def test_resnet18_maps_are_the_outputs_of_its_stem_and_stages():
    model, x, _, maps = _built("resnet18", 3, 16)
    enc = model.encoder
    with torch.no_grad():
        stem = enc.stem(model.normalize(x))
        expected = [stem] + [enc.layers[:k](stem) for k in (2, 4, 6, 8)]
    assert all(torch.allclose(m, e, atol=1e-6) for m, e in zip(maps, expected, strict=True))


@pytest.mark.parametrize("backbone, channels, size", [("small_cnn", 1, 8), ("resnet18", 3, 16)])
def test_forward_blocks_logits_and_last_map_are_forward_alls(backbone, channels, size):
    model, x, logits, maps = _built(backbone, channels, size)
    with torch.no_grad():
        ref_logits, _, fmap = model.forward_all(x)
    assert torch.allclose(logits, ref_logits, atol=1e-5) and torch.allclose(maps[-1], fmap, atol=1e-6)


@pytest.mark.parametrize("backbone, channels, size", [("small_cnn", 1, 8), ("resnet18", 3, 16)])
def test_the_built_in_classifier_still_implements_the_protocol(backbone, channels, size):
    assert isinstance(_built(backbone, channels, size)[0], OODClassifier)


def test_an_adapted_module_still_implements_the_protocol_without_the_member():
    toy = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))
    assert isinstance(adapt(toy, head="4"), OODClassifier)


# ------------------------------------------------------------------------- errors
def test_a_network_without_forward_blocks_is_refused_by_name():
    toy = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))
    images = np.zeros((4, 3, 8, 8), dtype=np.uint8)
    with pytest.raises(ValueError, match="forward_blocks"):
        GramScorer().fit(None, adapt(toy, head="4").eval(), images=images)


def test_an_encoder_without_block_outputs_is_refused_by_name():
    model = build_classifier("small_cnn", 1, 8, 3, [0.5], [0.25]).eval()
    model.encoder = nn.Sequential(*model.encoder.body)  # loses block_outputs
    model.encoder.out_dim = 128
    with pytest.raises(ValueError, match="block_outputs"):
        GramScorer().fit(None, model, images=np.zeros((4, 1, 8, 8), dtype=np.uint8))


def test_fit_needs_the_training_images():
    with pytest.raises(ValueError, match="images"):
        GramScorer().fit(Outputs(np.zeros((2, 3)), np.zeros((2, 4))), Pixel())


def test_fit_needs_the_network():
    with pytest.raises(ValueError, match="network"):
        GramScorer().fit(None, None, images=_pixels(TRAIN))


def test_images_and_outputs_must_match_in_number():
    with pytest.raises(ValueError, match="3 images for 2"):
        GramScorer().fit(Outputs(np.zeros((2, 3)), np.zeros((2, 4))), Pixel(), images=_pixels([1, 2, 3]))


def test_scoring_before_fit_is_an_error():
    with pytest.raises(RuntimeError, match="before fit"):
        GramScorer().score_inputs(Pixel(), _x([1]))


def test_cached_outputs_are_not_enough():
    with pytest.raises(NotImplementedError):
        GramScorer().score(Outputs(np.zeros((2, 3)), np.zeros((2, 4))))


@pytest.mark.parametrize("powers", [0, -1, 1.5, True, "3"])
def test_bad_powers_are_refused_by_name(powers):
    with pytest.raises(ValueError, match="powers"):
        GramScorer(powers=powers)


@pytest.mark.parametrize("holdout", [-0.1, 1.0])
def test_bad_holdout_is_refused_by_name(holdout):
    with pytest.raises(ValueError, match="holdout"):
        GramScorer(holdout=holdout)


def test_a_non_boolean_confidence_switch_is_refused_by_name():
    with pytest.raises(ValueError, match="divide_by_confidence"):
        GramScorer(divide_by_confidence="yes")


# ------------------------------------------------------------------------- method, routing, end to end
def test_defaults_are_the_papers():
    from methods import get

    method = get("gram")
    scorer = method.scorer(method.resolve({}))
    assert (scorer.powers, scorer.divide_by_confidence) == (10, True)


def test_gram_scores_images_without_input_gradients():
    scorer = GramScorer()
    assert (scorer.scores_images, scorer.uses_input_gradients) == (True, False)


def test_gram_reads_the_network_and_shares_no_sweep_work():
    scorer = GramScorer()
    assert (scorer.reads_network, scorer.shares_sweep_work, scorer.needs_train_images) == (True, False, True)


def test_gradient_scorers_still_score_images():
    assert InputGradientScorer().scores_images and InputGradientScorer().reads_network


def test_output_scorers_score_cached_outputs():
    assert not LogitScorer().scores_images and not LogitScorer().reads_network and not Scorer().scores_images


def test_the_evaluator_routes_a_network_scorer_to_score_inputs(bench):
    from orchestrator.evaluation import OutputStore, score_split

    class Counting(NetworkScorer):
        def score_inputs(self, model, x):
            return np.full(len(x), float(x.shape[0]))

    store = OutputStore(build_classifier("small_cnn", 1, 8, bench.num_classes, *bench.mean_std()), bench, "cpu")
    assert (score_split(Counting(), store, "id_test", batch_size=100) == [100.0] * 100 + [20.0] * 20).all()


def test_end_to_end_on_a_random_classifier_and_random_images():
    torch.manual_seed(0)
    model = build_classifier("small_cnn", 1, 8, 4, [0.5], [0.25]).eval()
    rng = np.random.default_rng(0)
    scorer = GramScorer(powers=4).fit(None, model, images=rng.integers(0, 256, (50, 1, 8, 8), dtype=np.uint8))
    scores = scorer.score_inputs(model, to_float(rng.integers(0, 256, (7, 1, 8, 8), dtype=np.uint8), "cpu"))
    assert scores.shape == (7,) and np.isfinite(scores).all()


def test_end_to_end_through_the_evaluator(bench, small_cnn):
    from orchestrator.evaluation import OutputStore, fit_scorer, score_split

    store = OutputStore(small_cnn().eval(), bench, "cpu")
    scores = score_split(fit_scorer(GramScorer(powers=2), store), store, "far/noise")
    assert scores.shape == (len(bench.far["noise"]),) and np.isfinite(scores).all()


def test_end_to_end_on_resnet18():
    torch.manual_seed(0)
    model = build_classifier("resnet18", 3, 8, 3, [0.5] * 3, [0.25] * 3).eval()
    rng = np.random.default_rng(0)
    scorer = GramScorer(powers=2).fit(None, model, images=rng.integers(0, 256, (20, 3, 8, 8), dtype=np.uint8))
    scores = scorer.score_inputs(model, to_float(rng.integers(0, 256, (5, 3, 8, 8), dtype=np.uint8), "cpu"))
    assert scores.shape == (5,) and np.isfinite(scores).all()
