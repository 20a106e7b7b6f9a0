"""One trial: get the trained network (train it, or reuse the cached one), score, report.

:func:`run_trial` is plain Python — a notebook or a benchmark can call it in a loop — and
:func:`tune_trainable` is the Ray Tune function trainable around it. A method that trains its own network
validates after every epoch and reports to Tune at ASHA's milestones, its last epoch and otherwise at most every
few seconds, the epochs in between riding along (see :class:`ReportPolicy`), with a checkpoint at most every
``CHECKPOINT_SECONDS`` (so a restarted trial resumes from a recent epoch); post-hoc methods reuse the shared cross-entropy classifier, which the
first trial that needs it trains under a lock while the others wait, and report once.
"""
from __future__ import annotations

import functools
import json
import os
import tempfile
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable

import numpy as np
import torch

import methods
from methods.base import Method, Scorer
from orchestrator.backbones import build_classifier
from orchestrator.benchmarks import Benchmark
from orchestrator.cache import ModelCache, config_key
from orchestrator.evaluation import OutputStore, fit_scorer, test_matrix, validate
from orchestrator.training import RECIPE_KNOBS, ModelProvider, Trainer, pick_device

#: Per-epoch validation fits the scorer on at most this many training samples (the final one uses all).
EPOCH_FIT_SAMPLES = 2000
#: A training trial checkpoints at most this often (and after its last epoch); a restarted trial loses at most this
#: much work. Override with $OODSWEEP_CHECKPOINT_SECONDS.
CHECKPOINT_SECONDS = float(os.environ.get("OODSWEEP_CHECKPOINT_SECONDS", "10"))
#: Default of ``--report-seconds``.
REPORT_SECONDS = 5.0
#: Result key carrying, as JSON, the per-epoch metrics of the epochs a report stands for before its own.
HISTORY_KEY = "epoch_history_json"


@dataclass(frozen=True)
class ReportPolicy:
    """Which epochs of a training trial go to Tune as they end; the others ride along in the next report.

    Every Tune report is a round trip to the driver (the trial waits until the driver has consumed it: ~0.17 s on
    two busy cores), which dominated sub-second epochs. A report is due at a scheduler milestone (``epochs``, so
    ASHA compares every trial at exactly the epoch it asks for), at the last epoch, and once ``seconds`` have
    passed since the previous report; ``seconds=0`` reports every epoch. Epochs longer than ``seconds`` all report.
    """

    seconds: float = REPORT_SECONDS
    epochs: tuple[int, ...] = ()

    def due(self, epoch: int, last_epoch: int, since_last_report: float) -> bool:
        return epoch >= last_epoch or epoch in self.epochs or since_last_report >= self.seconds


@dataclass
class TrialSettings:
    """What every trial of a sweep shares (passed once through Ray's object store with the benchmark)."""

    method: str
    seed: int = 0
    cache_dir: str | None = None
    convention: str = "classic"
    threads: int = 1
    data_fingerprint: str = ""


def training_spec(method: Method, params: dict[str, Any], bench: Benchmark, settings: TrialSettings) -> dict:
    """Everything that determines the trained network — and nothing else, so post-hoc knobs never retrain."""
    training = {k: v for k, v in params.items() if k in RECIPE_KNOBS or k in method.training_knobs}
    spec = {"trainer": method.name if method.trains() else "cross_entropy", "head": method.head,
            "benchmark": bench.name, "data": settings.data_fingerprint or bench.fingerprint(),
            "seed": settings.seed, **training}
    if method.finetunes:
        spec["base"] = config_key(training_spec(_CrossEntropy(), params, bench, settings))
    return spec


class _CrossEntropy(Method):
    """The shared classifier every post-hoc method and every fine-tuning method starts from."""

    name = "cross_entropy"


def obtain_model(method: Method, params: dict[str, Any], bench: Benchmark, settings: TrialSettings, device,
                 cache: ModelCache, report: Callable | None = None, checkpoint=None):
    """The trained network for (method, params): from the cache, or trained once under a per-key lock.

    Returns (model on ``device``, cache key, whether this call trained it).
    """
    spec = training_spec(method, params, bench, settings)
    key = config_key(spec)
    model = build_model(method, params, bench)
    if cache.load_model(key, model):
        return model.to(device), key, False
    with cache.lock(key):  # concurrent trials wanting the same network wait here instead of training it too
        if cache.load_model(key, model):
            return model.to(device), key, False
        started = time.time()
        if method.finetunes:
            base, _, _ = obtain_model(_CrossEntropy(), params, bench, settings, device, cache)
            model.load_state_dict(base.state_dict(), strict=False)
        model.to(device)
        provider = ModelProvider(lambda over: obtain_model(_CrossEntropy(), {**params, **over}, bench, settings,
                                                           device, cache)[0])
        train_network(method, model, params, bench, settings, device, provider,
                      report if method.trains() else None, checkpoint)
        cache.save_model(key, model, spec, time.time() - started)
        return model, key, True


def build_model(method: Method, params: dict[str, Any], bench: Benchmark):
    c, h, _ = bench.image_shape
    mean, std = bench.mean_std()
    return build_classifier(params["backbone"], c, h, bench.num_classes, mean, std, head=method.head,
                            sigma=params.get("sigma", 0.5))


def _save_checkpoint(folder: str, model, trainer: Trainer, epoch: int) -> None:
    torch.save({"model": model.state_dict(), "trainer": trainer.state_dict(), "epoch": epoch},
               os.path.join(folder, "state.pt"))


def _load_checkpoint(checkpoint, model, trainer: Trainer) -> int:
    with checkpoint.as_directory() as folder:
        state = torch.load(os.path.join(folder, "state.pt"), map_location="cpu", weights_only=True)
    model.load_state_dict(state["model"])
    trainer.load_state_dict(state["trainer"])
    return int(state["epoch"])


def train_network(method: Method, model, params, bench: Benchmark, settings: TrialSettings, device,
                  provider: ModelProvider | None = None, report: Callable | None = None, checkpoint=None) -> None:
    """Train epoch by epoch; with ``report``, validate and checkpoint after each epoch."""
    trainer = (method.trainer_class() or Trainer)(params, device, settings.seed)
    trainer.setup(model, bench, provider)
    start = _load_checkpoint(checkpoint, model, trainer) + 1 if checkpoint is not None else 1
    for epoch in range(start, trainer.epochs + 1):
        stats = trainer.train_epoch(model, bench.id_train.x, bench.id_train.y, epoch)
        if report is None:
            continue
        store = OutputStore(model, bench, device)
        scorer = fit_scorer(method.scorer(params), store, EPOCH_FIT_SAMPLES)
        metrics = {**stats, **validate(scorer, store, settings.convention), "epoch": epoch, "epochs": trainer.epochs}
        report(metrics, lambda folder: _save_checkpoint(folder, model, trainer, epoch))


def shared_outputs(config: dict[str, Any], bench: Benchmark, settings: TrialSettings) -> dict[str, Any]:
    """Train (or load) the network of ``config`` and extract every split's outputs, once, for a whole sweep.

    The sweep runs this as one Ray task before its post-hoc trials and hands them the result through the
    object store, so those trials never run the network (gradient scorers excepted).
    """
    _seed(settings)
    method = methods.get(settings.method)
    params = {**bench.recipe, **config}
    device = pick_device()
    cache = ModelCache(settings.cache_dir)
    model, key, _ = obtain_model(method, params, bench, settings, device, cache)
    scorer = method.scorer(params)
    with_fmap = "fmap" in scorer.needs
    store = OutputStore(model.eval(), bench, device, persist=functools.partial(cache.outputs, key))
    outputs = {(name, with_fmap): store.get(name, with_fmap) for name in bench.splits()}
    # Fit here only for scorers that share sweep work (fitting DMR's head or KIRBY's Grad-CAM would be wasted).
    shares_work = type(scorer).sweep_work is not Scorer.sweep_work and not scorer.needs_input
    work = fit_scorer(scorer, store).sweep_work(store) if shares_work else None
    return {"key": key, "outputs": outputs, "work": work}


def _seed(settings: TrialSettings) -> None:
    torch.set_num_threads(max(1, int(settings.threads)))
    torch.manual_seed(settings.seed)
    np.random.seed(settings.seed)


def run_trial(config: dict[str, Any], bench: Benchmark, settings: TrialSettings,
              report: Callable | None = None, checkpoint=None, shared: dict | None = None) -> dict[str, Any]:
    """Train or reuse the network, then validate and evaluate; returns the final result.

    ``report(metrics, save_checkpoint)`` receives per-epoch results of methods that train; ``checkpoint``
    is a Tune checkpoint to resume from; ``shared`` is :func:`shared_outputs`' result. All optional.
    """
    _seed(settings)
    method = methods.get(settings.method)
    params = {**bench.recipe, **config}
    device = pick_device()
    cache = ModelCache(settings.cache_dir)
    started = time.time()
    model, key, trained_here = obtain_model(method, params, bench, settings, device, cache, report, checkpoint)
    model.eval()
    persist = functools.partial(cache.outputs, key)
    if shared and shared.get("key") == key:
        known = shared["outputs"]
        persist = lambda name, fmap, compute: known.get((name, fmap)) or cache.outputs(key, name, fmap, compute)  # noqa: E731
    store = OutputStore(model, bench, device, persist=persist)
    scorer = fit_scorer(method.scorer(params), store)
    if shared and shared.get("key") == key and shared.get("work") is not None:
        scorer.adopt(shared["work"])
    result = validate(scorer, store, settings.convention)
    matrix = test_matrix(scorer, store, settings.convention)
    result.update(matrix.flat())
    result.update({"matrix_json": json.dumps(matrix.to_json()), "model_key": key, "trained_model": trained_here,
                   "epoch": int(params["epochs"]), "final": True, "trial_seconds": time.time() - started})
    return result


def tune_trainable(config: dict[str, Any], bench: Benchmark, settings: dict[str, Any], shared=None,
                   reporting: ReportPolicy | None = None) -> None:
    """Ray Tune function trainable (wrap with ``tune.with_parameters(tune_trainable, bench=..., settings=...)``).

    ``shared`` may be an ObjectRef to :func:`shared_outputs`' result (fetched from the object store here);
    ``reporting`` says which epochs report at once (default: :class:`ReportPolicy`'s).
    """
    import ray
    from ray import tune

    if isinstance(shared, ray.ObjectRef):
        shared = ray.get(shared)

    policy = reporting or ReportPolicy()
    last_report = last_checkpoint = time.monotonic()
    held: list[dict[str, Any]] = []  # metrics of epochs not reported yet

    def report(metrics, save_checkpoint):
        nonlocal last_report, last_checkpoint
        epoch, last_epoch = metrics["epoch"], metrics["epochs"]
        if not policy.due(epoch, last_epoch, time.monotonic() - last_report):
            held.append(metrics)
            return
        result = {**metrics, HISTORY_KEY: json.dumps(held)} if held else metrics
        held.clear()
        # A checkpoint goes with a report at most every CHECKPOINT_SECONDS and at the last epoch: persisting one
        # costs Tune an experiment-state sync.
        if time.monotonic() - last_checkpoint >= CHECKPOINT_SECONDS or epoch >= last_epoch:
            with tempfile.TemporaryDirectory() as folder:
                save_checkpoint(folder)
                tune.report(result, checkpoint=tune.Checkpoint.from_directory(folder))
            last_checkpoint = time.monotonic()
        else:
            tune.report(result)
        last_report = time.monotonic()

    final = run_trial(config, bench, TrialSettings(**settings), report, tune.get_checkpoint(), shared)
    tune.report(final)


def settings_dict(settings: TrialSettings) -> dict[str, Any]:
    return asdict(settings)
