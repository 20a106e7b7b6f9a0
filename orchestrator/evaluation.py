"""Evaluation: score a network's outputs on the benchmark splits, build the val metrics and the test matrix.

Outputs (logits, h, optional feature map) are extracted once per (model, split) (:mod:`orchestrator.forward`)
and kept by an :class:`OutputStore`, which the cache persists to disk so that every post-hoc trial on the same
model reads them instead of re-running the network. Scorers that run images through the network (gradient scorers
such as ODIN, network scorers such as Gram: ``Scorer.scores_images``) get the images instead.
Everything here works on NumPy arrays: PyTorch is imported only to extract outputs or to run an image scorer.
"""
from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import numpy as np

from methods.base import Method, Outputs, Scorer
from orchestrator.cache import ModelCache
from orchestrator.data.base import Benchmark
from orchestrator.knobs import Params
from orchestrator.metrics import OODMatrix, ood_matrix, ood_metrics


class OutputStore:
    """Outputs per split name, extracted on first use.

    ``persist(name, with_fmap, compute)`` — e.g. :meth:`orchestrator.cache.ModelCache.outputs` — may return
    a stored copy instead of calling ``compute``; without it outputs live in memory only. ``model`` may be None
    when every output asked for is stored (a post-hoc evaluator that never loads the network).
    """

    def __init__(self, model, bench: Benchmark, device, persist: Callable | None = None):
        self.model, self.bench, self.device = model, bench, device
        self._splits = bench.splits()
        self._mem: dict[tuple[str, bool], Outputs] = {}
        self._persist = persist
        self.extracted = 0  # how many splits this store ran the network on (tests and benchmarks count it)

    def _compute(self, name: str, with_fmap: bool) -> Outputs:
        if self.model is None:
            raise RuntimeError(f"the outputs of {name} are neither prepared nor in the model cache, and this store "
                               f"holds no network to extract them with")
        from orchestrator.forward import extract

        self.extracted += 1
        return extract(self.model, self._splits[name], self.device, with_fmap)

    def get(self, name: str, with_fmap: bool = False) -> Outputs:
        key = (name, with_fmap)
        if not with_fmap and (name, True) in self._mem:  # the same logits and features, with the map beside them
            return self._mem[(name, True)]
        if key not in self._mem:
            compute = lambda: self._compute(name, with_fmap)  # noqa: E731
            self._mem[key] = self._persist(name, with_fmap, compute) if self._persist else compute()
        return self._mem[key]


def splits_read(bench: Benchmark, scorer: Scorer) -> list[str]:
    """The splits whose outputs ``scorer`` reads: every one, the training split only when it is fitted on it."""
    return [name for name in bench.splits() if name != "id_train" or fits_on_train(scorer)]


def fits_on_train(scorer: Scorer) -> bool:
    """Whether fitting ``scorer`` reads the training split (whose extraction is otherwise skipped)."""
    return scorer.needs_fit and scorer.fit_split == "id_train"


def score_split(scorer: Scorer, store: OutputStore, name: str, batch_size: int = 256) -> np.ndarray:
    """ID-ness scores of one split, from cached outputs or, for scorers that score images (gradient and network
    scorers: ``scores_images``), from the images."""
    if scorer.scores_images:
        from orchestrator.training import to_float

        split = store.bench.splits()[name]
        store.model.eval()
        parts = [scorer.score_inputs(store.model, to_float(split.x[s:s + batch_size], store.device))
                 for s in range(0, len(split), batch_size)]
        scores = np.concatenate(parts)
    else:
        scores = scorer.score(store.get(name, with_fmap=scorer.reads_feature_map))
    scores = np.asarray(scores, dtype=np.float64)
    if not np.isfinite(scores).all():
        raise FloatingPointError(f"{type(scorer).__name__} produced non-finite scores on {name}")
    return scores


def fit_scorer(scorer: Scorer, store: OutputStore, max_train: int | None = None) -> Scorer:
    """Fit on training outputs (a seeded subsample of at most ``max_train`` when given)."""
    if not scorer.needs_fit:
        return scorer.fit(None, store.model)
    if scorer.fit_split not in ("id_train", "id_val"):
        raise ValueError(f"{type(scorer).__name__}.fit_split must be id_train or id_val, not {scorer.fit_split!r}")
    train = store.get(scorer.fit_split, with_fmap=scorer.reads_feature_map)
    index = np.arange(len(train))
    if max_train is not None and len(train) > max_train:
        index = np.sort(np.random.default_rng(0).choice(len(train), max_train, replace=False))
        train = train.subset(index)
    if scorer.needs_train_images:
        return scorer.fit(train, store.model, images=store.bench.splits()[scorer.fit_split].x[index])
    return scorer.fit(train, store.model)


def accuracy(store: OutputStore, name: str) -> float:
    out = store.get(name)
    return float((out.logits.argmax(1) == out.labels).mean())


def validate(scorer: Scorer, store: OutputStore, convention: str = "classic") -> dict[str, float]:
    """Metrics on ID-val vs the OOD validation sets: what hyperparameters are chosen on."""
    s_id = score_split(scorer, store, "id_val")
    per_set = [ood_metrics(s_id, score_split(scorer, store, f"ood_val/{n}"), convention) for n in store.bench.ood_val]
    out = {f"val/{c}": float(np.mean([m[c] for m in per_set])) for c in ("auroc", "aupr_in", "aupr_out", "fpr95")}
    out["val/acc"] = accuracy(store, "id_val")
    return out


def test_matrix(scorer: Scorer, store: OutputStore, convention: str = "classic") -> OODMatrix:
    """The OOD metric matrix on the test sets (reported, never optimised on)."""
    s_id = score_split(scorer, store, "id_test")
    near = {n: score_split(scorer, store, f"near/{n}") for n in store.bench.near}
    far = {n: score_split(scorer, store, f"far/{n}") for n in store.bench.far}
    return ood_matrix(s_id, near, far, accuracy(store, "id_test"), convention)


# ------------------------------------------------------------------------------ one configuration on one network
def prepared_for(shared: dict | None, key: str, cache: ModelCache) -> dict | None:
    """A sweep's prepared ``shared`` outputs (:func:`orchestrator.trial.prepare_shared`) when they are those of
    network ``key`` (else None), with their sweep work — read from the cache, memory-mapped, when it was too large
    to ship."""
    if not shared or shared.get("key") != key:
        return None
    if shared.get("work") is None and shared.get("work_name"):
        work = cache.load_work(key, shared["work_name"])
        if work is None:
            raise RuntimeError(f"sweep work {shared['work_name']} of network {key} is not in the model cache at "
                               f"{cache.root}: every node must see the sweep's --cache-dir (a shared filesystem)")
        shared = {**shared, "work": work}
    return shared


def store_for(model, bench: Benchmark, device, cache: ModelCache, key: str, shared: dict | None = None) -> OutputStore:
    """An OutputStore of ``model`` (cache key ``key``; None: outputs are read, never extracted) whose outputs come
    from ``shared`` — a sweep's prepared outputs of this network — where it holds them, else from the cache
    (extracted once)."""
    known = shared["outputs"] if shared else {}

    def persist(name: str, with_fmap: bool, compute):
        return known.get((name, with_fmap)) or cache.outputs(key, name, with_fmap, compute)

    return OutputStore(model, bench, device, persist=persist)


def fitted_scorer(method: Method, params: Params, store: OutputStore, shared: dict | None = None) -> Scorer:
    """The scorer of ``params`` fitted on ``store``, adopting the sweep work in ``shared`` (e.g. KNN's tables)."""
    scorer = fit_scorer(method.scorer(params), store)
    if shared and shared.get("work") is not None:
        scorer.adopt(shared["work"])
    return scorer


def evaluate(method: Method, params: Params, store: OutputStore, convention: str = "classic",
             shared: dict | None = None) -> dict[str, Any]:
    """Fit the scorer of ``params`` on ``store``'s network, validate, and evaluate the test matrix."""
    scorer = fitted_scorer(method, params, store, shared)
    result = validate(scorer, store, convention)
    matrix = test_matrix(scorer, store, convention)
    result.update(matrix.flat())
    result.update({"matrix_json": json.dumps(matrix.to_json()), "epoch": int(params["epochs"]), "final": True})
    return result


def scores_on_test_sets(scorer: Scorer, store: OutputStore) -> tuple[np.ndarray, dict[str, tuple[str, np.ndarray]]]:
    """ID-test scores and {OOD test set: (group, scores)} of a fitted scorer: what the best configuration's
    histograms and ROC curves draw."""
    bench = store.bench
    s_id = score_split(scorer, store, "id_test")
    ood = {name: (group, score_split(scorer, store, f"{group}/{name}"))
           for group, sets in (("near", bench.near), ("far", bench.far)) for name in sets}
    return s_id, ood
