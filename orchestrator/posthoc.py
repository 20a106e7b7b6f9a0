"""Many post-hoc configurations of one method scored on one network's prepared outputs (a batched sweep's
evaluator, :mod:`orchestrator.sweep.batched`).

Loading the network and opening its outputs once instead of per trial is most of what a post-hoc trial cost
besides scoring. A scorer that reads outputs only (KNN, energy, MSP...) never needs the network itself: the
evaluator then does not load it, nor import PyTorch (~1.3 s of a fresh process on 2 cores, taken from the
preparation running beside it); gradient scorers, ViM (the last layer's weights) and KIRBY (the training
images through the network) get it.
"""
from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import numpy as np

import methods
from methods.base import Scorer
from orchestrator.cache import ModelCache
from orchestrator.data.base import Benchmark
from orchestrator.evaluation import (
    OutputStore,
    evaluate,
    fitted_scorer,
    prepared_for,
    scores_on_test_sets,
    splits_read,
    store_for,
)
from orchestrator.knobs import Params
from orchestrator.settings import TrialSettings, seed_everything, trial_params


class PosthocEvaluator:
    """Evaluates many post-hoc configurations of one method on one network.

    ``shared`` is :func:`orchestrator.trial.shared_outputs`' result (the network's cache key, outputs, sweep
    work); ``store``: the OutputStore that prepared it, when this process did (it holds the network).
    """

    def __init__(self, bench: Benchmark, settings: TrialSettings, shared: dict[str, Any],
                 store: OutputStore | None = None):
        self.bench, self.settings = bench, settings
        self.cache = ModelCache(settings.cache_dir)
        self.shared = prepared_for(shared, shared["key"], self.cache)
        self.method = methods.get(settings.method)
        self._store = store

    def _at_hand(self, scorer: Scorer) -> bool:
        """Whether every output ``scorer`` reads is prepared or in the model cache (no network needed for them)."""
        fmap, known, key = scorer.reads_feature_map, self.shared["outputs"], self.shared["key"]
        return all((name, fmap) in known or self.cache.has_outputs(key, name, fmap)
                   for name in splits_read(self.bench, scorer))

    def _opened(self, config: Mapping[str, Any]) -> tuple[Params, OutputStore]:
        """This process seeded for ``config``, its resolved knobs, and the store its scorer reads."""
        seed_everything(self.settings)
        params = trial_params(self.method, config, self.bench)
        return params, self._open(params, self.method.scorer(params))

    def _open(self, params: Params, scorer: Scorer) -> OutputStore:
        """The store ``scorer`` reads: outputs only, or with the network when the scorer needs it (loaded once)."""
        needs_network = scorer.reads_network or not self._at_hand(scorer)
        if self._store is None or (needs_network and self._store.model is None):
            model = device = None
            if needs_network:
                model, device = self._network(params)
            self._store = store_for(model, self.bench, device, self.cache, self.shared["key"], self.shared)
        return self._store

    def _network(self, params: Params):
        """(the prepared network, loaded from the cache, in eval mode; its device)."""
        from orchestrator.training import pick_device
        from orchestrator.trial import obtain_model

        device = pick_device()
        model, key, _ = obtain_model(self.method, params, self.bench, self.settings, device, self.cache)
        if key != self.shared["key"]:
            raise RuntimeError(f"configuration needs network {key}, but this evaluator holds {self.shared['key']}: "
                               f"a searched knob changes the network")
        return model.eval(), device

    def __call__(self, config: Mapping[str, Any]) -> dict[str, Any]:
        started = time.time()
        params, store = self._opened(config)
        result = evaluate(self.method, params, store, self.settings.convention, self.shared)
        result.update({"model_key": self.shared["key"], "trained_model": False,
                       "trial_seconds": time.time() - started})
        return result

    def scores(self, config: Mapping[str, Any]) -> tuple[np.ndarray, dict[str, tuple[str, np.ndarray]]]:
        """:func:`orchestrator.evaluation.scores_on_test_sets` of ``config`` (the sweep's figures of its best
        configuration)."""
        params, store = self._opened(config)
        return scores_on_test_sets(fitted_scorer(self.method, params, store, self.shared), store)
