"""One trial: get the trained network (train it, or reuse the cached one), score, evaluate.

:func:`run_trial` is plain Python — a notebook or a script can call it in a loop; the Ray Tune trainable around
it is :mod:`orchestrator.sweep.trainable`. A method that trains its own network validates after every epoch and
hands each epoch's metrics to ``report``; post-hoc methods reuse the shared cross-entropy classifier, which the
first trial that needs it trains under a lock while the others wait.
A trial's knobs are resolved against the method's declaration first (:meth:`methods.base.Method.resolve`), so
the trainer and scorer see every declared knob and nothing else, and the cache key holds exactly the declared
network knobs.
"""
from __future__ import annotations

import functools
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

import methods
from methods.base import Method
from orchestrator.cache import ModelCache, config_key
from orchestrator.data.base import Benchmark, Split
from orchestrator.data.lazy import select
from orchestrator.evaluation import (
    OutputStore,
    accuracy,
    evaluate,
    fit_scorer,
    fits_on_train,
    fitted_scorer,
    prepared_for,
    scores_on_test_sets,
    splits_read,
    store_for,
    validate,
)
from orchestrator.forward import extract
from orchestrator.knobs import Params
from orchestrator.models import external
from orchestrator.models.backbones import build_classifier
from orchestrator.recipe import RECIPE_KNOBS
from orchestrator.settings import TrialSettings, seed_everything, trial_params
from orchestrator.training import ModelProvider, Trainer, pick_device

#: Prepared outputs up to this size travel to a sweep's trials through Ray's object store; larger ones are opened
#: from the cache by path (memory-mapped) in each trial's process.
SHIP_BYTES = 512 * 2**20
#: Per-epoch validation fits the scorer on at most this many training samples (the final one uses all).
EPOCH_FIT_SAMPLES = 2000


class CrossEntropyClassifier(Method):
    """The shared classifier every post-hoc method and every fine-tuning method starts from (not a sweepable
    method: it has no scorer). Its knobs are the recipe's."""

    name = "cross_entropy"


def training_spec(method: Method, params: Params, bench: Benchmark, settings: TrialSettings) -> dict:
    """Everything that determines the trained network — the declared network knobs' values and nothing else, so a
    post-hoc knob never retrains. A post-hoc method's network is the shared classifier (recipe knobs only)."""
    if method.trains():
        training = params.network_values()
    else:
        training = {k: v for k, v in params.network_values().items() if k in RECIPE_KNOBS}
    spec = {"trainer": method.name if method.trains() else CrossEntropyClassifier.name, "head": method.head,
            "benchmark": bench.name, "data": settings.data_fingerprint or bench.fingerprint(),
            "seed": settings.seed, **training}
    if method.finetunes:
        spec["base"] = config_key(training_spec(CrossEntropyClassifier(), base_params(params), bench, settings))
    return spec


def base_params(params: Params) -> Params:
    """The shared classifier's params: the recipe knobs of ``params``."""
    return CrossEntropyClassifier().resolve({k: v for k, v in params.items() if k in RECIPE_KNOBS})


def obtain_model(method: Method, params: Params, bench: Benchmark, settings: TrialSettings, device,
                 cache: ModelCache, report: Callable | None = None, checkpoint=None):
    """The trained network for (method, params): from the cache, or trained once under a per-key lock.

    Returns (model on ``device``, cache key, whether this call trained it).
    """
    user = settings.model is not None  # the user's network (--model); its weights' hash keys what derives from it
    if user and not method.trains():  # post-hoc: nothing to train
        return external_model(settings.model, bench, settings), external_key(settings.model, bench, settings), False
    spec = training_spec(method, params, bench, settings)
    if user:  # a fine-tuning method starts from the user's network instead of the shared classifier
        spec = {**spec, "base": external_key(settings.model, bench, settings)}
    key = config_key(spec)
    # A cached network's weights hold its input statistics: they are computed only for one about to be trained.
    cached = not user and cache.has_model(key)
    if user:
        model = external_model(settings.model, bench, settings)
    else:
        model = build_model(method, params, bench, with_stats=not cached)
    if cache.load_model(key, model):
        return model.to(device), key, False
    with cache.lock(key):  # concurrent trials wanting the same network wait here instead of training it too
        if cache.load_model(key, model):
            return model.to(device), key, False
        if cached:  # its weights were unusable (moved aside): train a fresh network, with the statistics
            model = build_model(method, params, bench)
        started = time.time()
        if method.finetunes and not user:
            base, _, _ = obtain_model(CrossEntropyClassifier(), base_params(params), bench, settings, device, cache)
            model.load_state_dict(base.state_dict(), strict=False)
        model.to(device)
        def classifier(overrides: Mapping[str, Any]):
            ce = CrossEntropyClassifier().resolve({**base_params(params), **overrides})
            return obtain_model(CrossEntropyClassifier(), ce, bench, settings, device, cache)[0]

        provider = ModelProvider(classifier)
        train_network(method, model, params, bench, settings, device, provider,
                      report if method.trains() else None, checkpoint)
        cache.save_model(key, model, spec, time.time() - started)
        return model, key, True


@dataclass
class Network:
    """A configuration resolved against its method's knobs, and its network (cached, or trained by this call)."""

    method: Method
    params: Params
    device: Any
    cache: ModelCache
    model: Any
    key: str
    trained: bool


def network_for(config: Mapping[str, Any], bench: Benchmark, settings: TrialSettings,
                report: Callable | None = None, checkpoint=None) -> Network:
    """Seed this process, resolve ``config`` and obtain its network (:func:`obtain_model`): the first step of a
    trial, a sweep's preparation, an extraction shard and the figures' rescoring."""
    seed_everything(settings)
    method = methods.get(settings.method)
    params = trial_params(method, config, bench)
    device = pick_device()
    cache = ModelCache(settings.cache_dir)
    model, key, trained = obtain_model(method, params, bench, settings, device, cache, report, checkpoint)
    return Network(method, params, device, cache, model, key, trained)


def external_model(model: dict[str, Any], bench: Benchmark, settings: TrialSettings):
    """The ``--model`` network, built, loaded and adapted (on the device the trial uses)."""
    spec = external.ModelSpec(**model)
    return external.build(spec, bench.num_classes, *bench.mean_std()).to(pick_device())


def external_key(model: dict[str, Any], bench: Benchmark, settings: TrialSettings) -> str:
    """Cache key of a user's network's outputs: the spec, the weights' SHA-256, the layers read, the data."""
    return config_key({"model": model, "benchmark": bench.name,
                       "data": settings.data_fingerprint or bench.fingerprint()})


def build_model(method: Method, params: Params, bench: Benchmark, with_stats: bool = True):
    """The untrained network of (method, params). ``with_stats=False``: input statistics left at mean 0, std 1 —
    for weights about to be loaded, which carry their own (computing them is a pass over the training images)."""
    c, h, _ = bench.image_shape
    mean, std = bench.mean_std() if with_stats else ([0.0] * c, [1.0] * c)
    sigma = params["sigma"] if method.head == "zscore" else None  # the z-scored head's knob (ASCOOD declares it)
    return build_classifier(params["backbone"], c, h, bench.num_classes, mean, std, head=method.head, sigma=sigma)


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
        report(metrics, functools.partial(_save_checkpoint, model=model, trainer=trainer, epoch=epoch))


def shared_outputs(config: dict[str, Any], bench: Benchmark, settings: TrialSettings) -> dict[str, Any]:
    """:func:`prepare_shared`'s result without its OutputStore (what a Ray task returns)."""
    return prepare_shared(config, bench, settings)[1]


def prepare_shared(config: dict[str, Any], bench: Benchmark,
                   settings: TrialSettings) -> tuple[OutputStore, dict[str, Any]]:
    """Train (or load) the network of ``config`` and extract every split's outputs, once, for a whole sweep.

    A sweep runs this once before its post-hoc trials (in the driver, an evaluator actor or a Ray task) and hands
    them the result through the object store, so those trials never run the network (gradient scorers excepted),
    with the scorer's sweep work (KNN's neighbour tables: computed once per network and cached). Only the splits
    the method reads are extracted: the training split only for scorers fitted on it. Outputs, or sweep work,
    larger than ``SHIP_BYTES`` in all are not shipped: trials open them from the cache by path or name,
    memory-mapped (the cache must then be visible to every node: a shared ``--cache-dir``). Returns (the
    OutputStore holding the network and its outputs, the result: cache key, outputs, sweep work and its name,
    whether this call trained the network).
    """
    net = network_for(config, bench, settings)
    method, params, cache, key = net.method, net.params, net.cache, net.key
    scorer = method.scorer(params)
    with_fmap = scorer.reads_feature_map
    store = OutputStore(net.model.eval(), bench, net.device, persist=functools.partial(cache.outputs, key))
    outputs = {(name, with_fmap): store.get(name, with_fmap) for name in splits_read(bench, scorer)}
    # Fit here only for scorers that share sweep work (fitting DMR's head or KIRBY's Grad-CAM would be wasted); the
    # work is cached with the network, named by the method and the knob values it was computed with.
    work = work_name = None
    if scorer.shares_sweep_work:
        work_name = f"{method.name}-{config_key(dict(params))}"
        # Work small enough to ship is shipped from here and written to the cache behind (off the critical path).
        work = cache.work(key, work_name, lambda: fit_scorer(scorer, store).sweep_work(store), behind_bytes=SHIP_BYTES)
    if sum(a.nbytes for o in outputs.values() for a in (o.logits, o.features, o.fmap) if a is not None) > SHIP_BYTES:
        outputs = {}  # trials read the cache's memory-mapped files instead (PosthocEvaluator, run_trial)
    if work is not None and sum(a.nbytes for a in work.values()) > SHIP_BYTES:
        work = None  # likewise: trials read it from the cache by its name (evaluation.prepared_for)
    return store, {"key": key, "outputs": outputs, "work": work, "work_name": work_name, "trained": net.trained}


def prepare_network(config: dict[str, Any], bench: Benchmark, settings: TrialSettings) -> dict[str, Any]:
    """Train (or find) the network of ``config``: its cache key, whether this call trained it, whether its scorer
    reads the last feature map (what extraction must keep) and is fitted on the training split (whether that is
    extracted) — the first step of a sharded extraction."""
    net = network_for(config, bench, settings)
    scorer = net.method.scorer(net.params)
    return {"key": net.key, "trained": net.trained, "with_fmap": scorer.reads_feature_map,
            "fits": fits_on_train(scorer)}


def extract_shard(config: dict[str, Any], bench: Benchmark, settings: TrialSettings, split: str, start: int,
                  stop: int, with_fmap: bool) -> str:
    """Extract images ``start:stop`` of ``split`` with the (cached) network of ``config`` into the cache as a
    shard entry, unless it is there already (an interrupted extraction resumes with the missing shards)."""
    net = network_for(config, bench, settings)
    cache, key = net.cache, net.key
    name = ModelCache.shard_name(split, start, stop)
    if cache.load_outputs(key, name, with_fmap) is None:
        part = bench.splits()[split]
        piece = Split(select(part.x, slice(start, stop)), None if part.y is None else part.y[start:stop])
        cache.save_outputs(key, name, with_fmap, extract(net.model.eval(), piece, net.device, with_fmap))
    return name


def reference_accuracy(config: dict[str, Any], bench: Benchmark, settings: TrialSettings) -> dict[str, Any]:
    """The ID accuracy a configuration of a method that trains is held to (:mod:`orchestrator.sweep.constraint`):
    that of the cross-entropy classifier of ``config``'s recipe and this sweep's seed — the network post-hoc methods
    score, and fine-tuning methods start from: the same cache entry, reused, trained here on a miss — or, with
    ``--model``, of the user's network. Returns {key, trained, val_acc, test_acc} (accuracies as fractions)."""
    seed_everything(settings)
    params = trial_params(methods.get(settings.method), config, bench)
    device = pick_device()
    cache = ModelCache(settings.cache_dir)
    model, key, trained = obtain_model(CrossEntropyClassifier(), base_params(params), bench, settings, device, cache)
    store = store_for(model.eval(), bench, device, cache, key)
    return {"key": key, "trained": trained, "val_acc": accuracy(store, "id_val"),
            "test_acc": accuracy(store, "id_test")}


def run_trial(config: dict[str, Any], bench: Benchmark, settings: TrialSettings,
              report: Callable | None = None, checkpoint=None, shared: dict | None = None) -> dict[str, Any]:
    """Train or reuse the network, then validate and evaluate; returns the final result.

    ``report(metrics, save_checkpoint)`` receives per-epoch results of methods that train; ``checkpoint``
    is a Tune checkpoint to resume from; ``shared`` is :func:`shared_outputs`' result. All optional.
    """
    started = time.time()
    net = network_for(config, bench, settings, report, checkpoint)
    mine, store = _opened(net, bench, shared)
    result = evaluate(net.method, net.params, store, settings.convention, mine)
    result.update({"model_key": net.key, "trained_model": net.trained, "trial_seconds": time.time() - started})
    return result


def _opened(net: Network, bench: Benchmark, shared: dict | None) -> tuple[dict | None, OutputStore]:
    """(the sweep's prepared ``shared`` outputs when they fit ``net``, else None; the OutputStore of ``net``
    reading them first)."""
    mine = prepared_for(shared, net.key, net.cache)
    return mine, store_for(net.model.eval(), bench, net.device, net.cache, net.key, mine)


def best_scores(config: dict[str, Any], bench: Benchmark, settings: TrialSettings,
                shared: dict | None = None) -> tuple[np.ndarray, dict[str, tuple[str, np.ndarray]]]:
    """:func:`scores_on_test_sets` of ``config``, recomputed in this process (the driver, after a Tune sweep).

    The network comes from the model cache (trained here only when this machine cannot see the cache the trials
    wrote to); outputs come from the cache too, so this is a scorer fit plus a scorer call. ``shared``: a post-hoc
    sweep's prepared outputs and sweep work (e.g. KNN's neighbour tables), used instead of recomputing.
    """
    net = network_for(config, bench, settings)
    mine, store = _opened(net, bench, shared)
    return scores_on_test_sets(fitted_scorer(net.method, net.params, store, mine), store)
