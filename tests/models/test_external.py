"""Bring your own model (`--model`): torchvision with a weights file, OpenOOD-format checkpoints,
`package.module:function`; every bad input is one line; end to end, knn and energy sweeps score a torchvision
ResNet-18 (random weights saved to a file) on an ImageNet-style folder benchmark of JPEGs made here, streamed."""
import os
import subprocess
import sys

import pytest
import torch
import torchvision
from mlflow.tracking import MlflowClient

from orchestrator.models import external
from tests.conftest import ROOT
from tests.folder_images import folder_benchmark
from tests.folder_images import folder_benchmark as _folder_benchmark


def _resnet18_file(path, num_classes=3):
    torch.manual_seed(0)
    torch.save(torchvision.models.resnet18(num_classes=num_classes).state_dict(), path)
    return str(path)


def test_a_torchvision_model_gives_the_modules_own_logits(tmp_path):
    weights = _resnet18_file(tmp_path / "r18.pt")
    model = external.build(external.parse("torchvision:resnet18", weights), 3, (0.5,) * 3, (0.25,) * 3)
    reference = torchvision.models.resnet18(num_classes=3)
    reference.load_state_dict(torch.load(weights, weights_only=True))
    x = torch.rand(2, 3, 32, 32)
    expected = reference.eval()((x - torch.tensor(external.IMAGENET_MEAN).view(1, 3, 1, 1))
                                / torch.tensor(external.IMAGENET_STD).view(1, 3, 1, 1))
    assert torch.allclose(model(x), expected, atol=1e-5)


def test_a_resnet_reads_layer4_as_its_feature_map(tmp_path):
    model = external.build(external.parse("torchvision:resnet18", _resnet18_file(tmp_path / "r.pt")), 3,
                           (0.5,) * 3, (0.25,) * 3)
    assert model.forward_all(torch.rand(1, 3, 64, 64))[2].shape == (1, 512, 2, 2)


def test_the_weights_hash_tells_files_apart(tmp_path):
    a = external.parse("torchvision:resnet18", _resnet18_file(tmp_path / "a.pt"))
    torch.manual_seed(1)
    torch.save(torchvision.models.resnet18(num_classes=3).state_dict(), tmp_path / "b.pt")
    assert a.sha256 != external.parse("torchvision:resnet18", str(tmp_path / "b.pt")).sha256


def test_an_openood_checkpoint_loads_with_its_parameter_names(tmp_path):
    # OpenOOD saves `net.state_dict()` of ResNet18_32x32, from DataParallel (prefix `module.`)
    net = external.OpenOODResNet18(10)
    for name in ("conv1.weight", "bn1.running_mean", "layer2.0.shortcut.0.weight", "layer4.1.bn2.weight",
                 "fc.bias"):
        assert name in net.state_dict()
    torch.save({f"module.{k}": v for k, v in net.state_dict().items()}, tmp_path / "best.ckpt")
    model = external.build(external.parse("openood:resnet18_32x32", str(tmp_path / "best.ckpt")), 10,
                           (0.49, 0.48, 0.45), (0.25, 0.24, 0.26))
    x = torch.rand(2, 3, 32, 32)
    xn = (x - torch.tensor((0.49, 0.48, 0.45)).view(1, 3, 1, 1)) / torch.tensor((0.25, 0.24, 0.26)).view(1, 3, 1, 1)
    assert torch.allclose(model(x), net.eval()(xn), atol=1e-5)


def test_a_module_function_model(tmp_path):
    model = external.build(external.parse("tests.models.toy_module:tiny_classifier"), 4, (0.5,) * 3, (0.5,) * 3)
    assert (model.num_classes, model.feature_dim) == (4, 8)


@pytest.mark.parametrize("spec, weights, layers, message", [
    ("torchvision:resnet18", None, None, "needs --weights FILE"),
    ("torchvision:resnet18", "missing.pt", None, "no such file"),
    ("openood:vit", "x", None, "OpenOOD networks known here"),
    ("resnet18", None, None, "expected torchvision:NAME"),
])
def test_a_bad_model_spec_is_one_line(tmp_path, spec, weights, layers, message):
    with pytest.raises(external.ModelError, match=message):
        external.parse(spec, weights and str(tmp_path / weights), layers)


def test_weights_for_another_class_count_are_refused(tmp_path):
    spec = external.parse("torchvision:resnet18", _resnet18_file(tmp_path / "r.pt", num_classes=7))
    with pytest.raises(external.ModelError, match="does not fit torchvision:resnet18"):
        external.build(spec, 3, (0.5,) * 3, (0.5,) * 3)


def test_an_unknown_layer_names_the_closest(tmp_path):
    spec = external.parse("torchvision:resnet18", _resnet18_file(tmp_path / "r.pt"), "fc,layer5")
    with pytest.raises(external.ModelError, match="no layer 'layer5'.*closest: layer4"):
        external.build(spec, 3, (0.5,) * 3, (0.5,) * 3)


def test_an_openood_32_network_refuses_other_image_sizes(tmp_path):
    torch.save(external.OpenOODResNet18(3).state_dict(), tmp_path / "best.ckpt")
    spec = external.parse("openood:resnet18_32x32", str(tmp_path / "best.ckpt"))
    model = external.build(spec, 3, (0.5,) * 3, (0.5,) * 3)
    with pytest.raises(external.ModelError, match="takes 32×32 images"):
        external.check_on(model, spec, torch.rand(2, 3, 64, 64))


def test_a_model_that_cannot_take_the_images_is_refused(tmp_path):
    spec = external.parse("tests.models.toy_module:tiny_classifier")
    model = external.build(spec, 3, (0.5,) * 3, (0.5,) * 3)
    with pytest.raises(external.ModelError, match="takes 3-channel images; the benchmark's have 1"):
        external.check_on(model, spec, torch.rand(2, 1, 8, 8))  # grey images, a 3-channel network


# ---------------------------------------------------------------- end to end through Ray, Optuna and MLflow
def _sweep(cwd, method, *args):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OODSWEEP_CACHE": str(cwd / "cache"), "RAY_USAGE_STATS_ENABLED": "0"}
    return subprocess.run([sys.executable, "-m", "orchestrator", "sweep", method, "--benchmark",
                           str(cwd / "bench.yaml"), "--model", "torchvision:resnet18", "--weights",
                           str(cwd / "r18.pt"), "--num-samples", "2", "--no-dashboard", "--no-figures",
                           "--num-cpus", "2", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def own_model_sweeps(tmp_path_factory):
    cwd = tmp_path_factory.mktemp("own-model")
    _folder_benchmark(cwd, stream=True)  # the images stay on disk, decoded batch by batch
    _resnet18_file(cwd / "r18.pt")
    return cwd, {m: _sweep(cwd, m, "--name", f"own-{m}") for m in ("knn", "energy")}


@pytest.mark.integration
@pytest.mark.parametrize("method", ["knn", "energy"])
def test_a_sweep_scores_a_torchvision_resnet_from_a_file(own_model_sweeps, method):
    _, results = own_model_sweeps
    assert results[method].returncode == 0, results[method].stderr[-3000:]


@pytest.mark.integration
@pytest.mark.parametrize("method", ["knn", "energy"])
def test_own_model_trials_log_the_usual_matrix(own_model_sweeps, method):
    cwd, _ = own_model_sweeps
    client = MlflowClient(f"sqlite:///{cwd / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("oodsweep").experiment_id],
                              filter_string=f"tags.method = '{method}'")
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(children) == 2 and all({"near/auroc", "far/auroc", "stripes/fpr95"} <= set(r.data.metrics)
                                      for r in children)


@pytest.mark.integration
def test_own_model_sweeps_train_nothing(own_model_sweeps):
    cwd, _ = own_model_sweeps
    assert list((cwd / "cache").rglob("model.pt")) == []


def test_a_model_for_another_class_count_exits_2_before_anything_is_written(tmp_path):
    _folder_benchmark(tmp_path)
    _resnet18_file(tmp_path / "r18.pt", num_classes=10)
    res = _sweep(tmp_path, "energy")
    assert res.returncode == 2 and "does not fit torchvision:resnet18" in res.stderr
    assert not (tmp_path / "mlflow.db").exists()


def test_own_model_with_a_training_method_exits_2(tmp_path):
    _folder_benchmark(tmp_path)
    _resnet18_file(tmp_path / "r18.pt")
    res = _sweep(tmp_path, "ascood")
    assert res.returncode == 2 and "trains its own network from scratch" in res.stderr


def test_a_timm_model_where_timm_is_installed(tmp_path):
    timm = pytest.importorskip("timm", reason="timm is an optional dependency (pip install timm)")
    torch.save(timm.create_model("resnet18", pretrained=False, num_classes=3).state_dict(), tmp_path / "t.pt")
    model = external.build(external.parse("timm:resnet18", str(tmp_path / "t.pt")), 3, (0.5,) * 3, (0.5,) * 3)
    assert model.forward_all(torch.rand(1, 3, 64, 64))[0].shape == (1, 3)


def test_a_fine_tuning_method_starts_from_the_given_network(tmp_path):
    from orchestrator import data as benchmarks
    from orchestrator.cache import ModelCache
    from orchestrator.trial import TrialSettings, run_trial

    bench = benchmarks.load(str(folder_benchmark(tmp_path)))
    spec = external.parse("torchvision:resnet18", _resnet18_file(tmp_path / "r18.pt"))
    settings = TrialSettings("um", cache_dir=str(tmp_path / "cache"), model=spec.__dict__)
    result = run_trial({"finetune_epochs": 1, "batch_size": 32}, bench, settings)
    assert result["trained_model"] and ModelCache(tmp_path / "cache").trained_count() == 1
