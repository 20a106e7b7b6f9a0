"""Seed repeats (``sweep --seeds N``): re-run the best configuration (or every trial's) with other seeds.

Each repeat is :func:`orchestrator.trial.run_trial` with ``TrialSettings.seed`` = 1..N (a seed equal to the
sweep's own ``--seed`` is not re-run: the sweep's best trial already is that sample). The seed sets network
initialisation and data order, so a repeat trains its own network — once: the model cache keys on the seed,
so a second ``--seeds`` pass, or a post-hoc method sharing that seed's classifier, costs only scoring.
Repeats run as Ray tasks when Ray is up (the sweep's resources per task), in-process otherwise, and are logged
on the driver as child runs of the sweep's parent run, tagged ``oodsweep.seed_repeat=true`` and
``oodsweep.source_trial_id=<trial>``, with param ``seed``. The parent gets ``seeds/<metric>_mean`` / ``_std``
(sample std, ddof=1) over the best configuration's seeds (sweep seed + repeats), ``seeds/n`` and ``seeds.json``.
"""
from __future__ import annotations

import json
import sys
import time
from typing import Any

import numpy as np

from orchestrator.metrics import OODMatrix
from orchestrator.tracking import runs
from orchestrator.trial import TrialSettings, run_trial

#: Metrics summarised on the parent as ``seeds/<metric>_mean`` and ``seeds/<metric>_std``.
SEED_METRICS = ("near/auroc", "far/auroc", "near/fpr95", "far/fpr95", "id/acc")


def _one(config: dict[str, Any], bench, settings: dict[str, Any]) -> dict[str, Any]:
    return run_trial(config, bench, TrialSettings(**settings))


def _best_trial_id(result, parent) -> str:
    return str(parent.data.tags.get("best_trial_id") or result.best_metrics.get("trial_id") or "best")


def _trial_configs(prep, result, client, every_trial: bool) -> list[tuple[str, dict[str, Any]]]:
    best_id = _best_trial_id(result, client.get_run(result.parent_run_id))
    configs = [(best_id, dict(result.best_config))]
    if every_trial:
        parent = client.get_run(result.parent_run_id)
        children = client.search_runs([parent.info.experiment_id],
                                      filter_string=f"tags.mlflow.parentRunId = '{result.parent_run_id}'",
                                      max_results=5000)
        for r in sorted(children, key=lambda r: r.info.start_time):
            tid = r.data.tags.get(runs.TRIAL_TAG)
            repeat = r.data.tags.get(runs.SEED_REPEAT_TAG) == "true"
            if tid and tid != best_id and not repeat and r.info.status == "FINISHED":
                configs.append((tid, runs.typed_config(prep.space, prep.fixed, r.data.params)))
    return configs


def _summary(samples: dict[int, dict[str, float]]) -> dict[str, float]:
    out = {"seeds/n": float(len(samples))}
    for name in SEED_METRICS:
        values = [m[name] for m in samples.values() if name in m]
        if values:
            out[f"seeds/{name}_mean"] = float(np.mean(values))
            out[f"seeds/{name}_std"] = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
    return out


def rerun_best_with_seeds(prep, result, n_seeds: int, every_trial: bool = False, client=None,
                          figures: bool = True) -> dict[str, Any] | None:
    """Re-run the best config (``every_trial``: every finished trial's) with seeds 1..N; log child runs and the
    parent's ``seeds/*`` summary. Returns ``{"seeds", "samples", "summary", "runs"}``; None when the sweep has
    no best trial. ``prep``/``result``: :func:`orchestrator.sweep.prepare`'s and :func:`~orchestrator.sweep.run`'s.
    """
    from mlflow.entities import Metric, Param

    if result.best_matrix is None or n_seeds < 1:
        return None
    opts, bench = prep.opts, prep.bench
    client = client or runs.client_for(result.tracking_uri)
    parent = client.get_run(result.parent_run_id)
    tags = {k: parent.data.tags[k] for k in ("method", "benchmark", "paper", "substitute") if k in parent.data.tags}
    seeds = [s for s in range(1, n_seeds + 1) if s != opts.seed]
    jobs = [(tid, cfg, s) for tid, cfg in _trial_configs(prep, result, client, every_trial) for s in seeds]
    base = prep.trial_settings()
    best_id = _best_trial_id(result, parent)
    samples: dict[int, dict[str, float]] = {opts.seed: result.best_matrix.flat()}
    run_ids: list[str] = []
    say = (lambda msg: None) if opts.quiet else (lambda msg: print(msg, flush=True))
    say(f"Seed repeats: {len(jobs)} runs ({'every trial' if every_trial else 'best config'} × seeds {seeds})")

    def log(tid, cfg, seed, res, error=None):
        run = client.create_run(parent.info.experiment_id, run_name=f"seed{seed}-{tid}",
                                tags={"mlflow.parentRunId": result.parent_run_id, runs.SEED_REPEAT_TAG: "true",
                                      runs.SOURCE_TRIAL_TAG: tid, **tags})
        run_id = run.info.run_id
        run_ids.append(run_id)
        client.log_batch(run_id, params=[Param(k, v) for k, v in runs.as_params({**cfg, "seed": seed}).items()])
        if error is not None:
            client.set_tag(run_id, "error", error[:5000])
            client.set_terminated(run_id, "FAILED")
            print(f"warning: seed {seed} of trial {tid} failed: {error.splitlines()[-1][:300]}", file=sys.stderr)
            return
        now = int(time.time() * 1000)
        client.log_batch(run_id, metrics=[Metric(k, v, now, 0) for k, v in runs.numeric_metrics(res).items()])
        matrix = OODMatrix.from_json(json.loads(res["matrix_json"]))
        runs.log_matrix_artifacts(client, run_id, matrix)
        if figures:
            try:
                from orchestrator.tracking.figures import log_trial_figures

                log_trial_figures(client, run_id, matrix)
            except Exception as exc:  # noqa: BLE001 - a figure never fails the sweep
                print(f"warning: figure for seed run {run_id} failed: {exc}", file=sys.stderr)
        client.set_terminated(run_id, "FINISHED")
        if tid == best_id:
            samples[seed] = matrix.flat()
        say(f"  seed {seed} of {tid}: near/auroc = {matrix.flat().get('near/auroc', float('nan')):.4f}")

    import ray

    if ray.is_initialized():
        bench_ref = ray.put(bench)
        task = ray.remote(_one).options(num_cpus=prep.resources["cpu"], num_gpus=prep.resources["gpu"],
                                        max_retries=opts.max_failures)
        pending = {task.remote(cfg, bench_ref, _with_seed(base, s).as_dict()): (tid, cfg, s)
                   for tid, cfg, s in jobs}
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            tid, cfg, s = pending.pop(done[0])
            try:
                log(tid, cfg, s, ray.get(done[0]))
            except ray.exceptions.RayTaskError as exc:
                log(tid, cfg, s, None, error=str(exc))
    else:
        for tid, cfg, s in jobs:
            try:
                res = _one(cfg, bench, _with_seed(base, s).as_dict())
            except Exception as exc:  # noqa: BLE001 - one bad seed is logged, the others go on
                log(tid, cfg, s, None, error=f"{type(exc).__name__}: {exc}")
                continue
            log(tid, cfg, s, res)

    summary = _summary(samples)
    now = int(time.time() * 1000)
    client.log_batch(result.parent_run_id, metrics=[Metric(k, v, now, 0) for k, v in summary.items()])
    table = {"source_trial_id": best_id, "config": {k: v for k, v in result.best_config.items()},
             "metrics": list(SEED_METRICS), "samples": {str(s): {k: m.get(k) for k in SEED_METRICS}
                                                        for s, m in sorted(samples.items())},
             "summary": summary, "std": "sample std (ddof=1)"}
    client.log_dict(result.parent_run_id, table, "seeds.json")
    return {"seeds": sorted(samples), "samples": samples, "summary": summary, "runs": run_ids}


def _with_seed(settings, seed: int):
    from dataclasses import replace

    return replace(settings, seed=seed)
