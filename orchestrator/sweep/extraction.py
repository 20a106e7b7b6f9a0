"""Sharded extraction: a large split's outputs computed by many Ray tasks at once, resumable shard by shard.

Before a post-hoc sweep scores anything, every split's logits and features must exist. A split larger than
``SHARD_IMAGES`` is cut into shards of that many images; each shard is a Ray task with a trial's resources (a GPU
when trials get one) that loads the cached network, extracts its images and writes them to the cache as soon as it
finishes. A sweep stopped mid-extraction keeps the finished shards, and the next run extracts only the missing
ones. The shards of a split are then merged into its cache entry (streamed, one shard in memory) by a Ray task.
Several nodes share the work only when they share the cache (``--cache-dir`` on a shared filesystem).
"""
from __future__ import annotations

import os
import time
from typing import Any

#: Images per shard ($OODSWEEP_SHARD_IMAGES): large enough that a task's start-up is amortised.
SHARD_IMAGES = int(os.environ.get("OODSWEEP_SHARD_IMAGES", "32768"))
#: A progress line at least this often while shards run.
PROGRESS_SECONDS = 30.0


def _merge(cache_dir: str | None, key: str, split: str, with_fmap: bool, shards: list[str]) -> None:
    from orchestrator.cache import ModelCache

    ModelCache(cache_dir).merge_shards(key, split, with_fmap, shards)


def largest_node_cpus() -> int:
    """CPUs of the cluster's largest live node: what a task may use when nothing else runs yet."""
    import ray

    return max([int(n["Resources"].get("CPU", 0)) for n in ray.nodes() if n.get("Alive")] or [1])


def needed(bench, shard_images: int = SHARD_IMAGES) -> bool:
    """Whether any split is large enough to shard (small benchmarks are extracted by one task, as before)."""
    return any(len(part) > shard_images for part in bench.splits().values())


def plan(bench, key: str, with_fmap: bool, cache, shard_images: int = SHARD_IMAGES) -> dict[str, list[tuple]]:
    """{split: [(start, stop), ...]} of the splits large enough to shard whose outputs are not cached yet."""
    out = {}
    for name, part in bench.splits().items():
        if len(part) > shard_images and not cache.has_outputs(key, name, with_fmap):
            out[name] = [(s, min(s + shard_images, len(part))) for s in range(0, len(part), shard_images)]
    return out


def extract_sharded(config: dict[str, Any], bench, settings, resources: dict[str, float], say,
                    shard_images: int = SHARD_IMAGES) -> dict[str, Any]:
    """Train or find the network of ``config`` (one task with every CPU of a node), then extract the missing
    shards of every large split on Ray tasks and merge them. Returns :func:`orchestrator.trial.prepare_network`'s
    result."""
    import dataclasses

    import ray

    from orchestrator.cache import ModelCache
    from orchestrator.trial import extract_shard, prepare_network

    cpus = max(resources["cpu"], largest_node_cpus())
    net = ray.get(ray.remote(prepare_network).options(num_cpus=cpus, num_gpus=resources["gpu"]).remote(
        dict(config), bench, dataclasses.replace(settings, threads=max(1, int(cpus)))))
    cache = ModelCache(settings.cache_dir)
    todo = plan(bench, net["key"], net["with_fmap"], cache, shard_images)
    if not net["fits"]:  # the scorer never reads the training split (trial.shared_outputs skips it too)
        todo.pop("id_train", None)
    if not todo:
        return net
    bench_ref = ray.put(bench)
    task = ray.remote(extract_shard).options(num_cpus=resources["cpu"], num_gpus=resources["gpu"])
    shard_settings = dataclasses.replace(settings, threads=max(1, int(resources["cpu"])))
    pending = {task.remote(dict(config), bench_ref, shard_settings, split, start, stop, net["with_fmap"]): split
               for split, shards in todo.items() for start, stop in shards}
    total = len(pending)
    say(f"Extracting {len(todo)} large split(s) in {total} shards of ≤{shard_images} images on Ray tasks "
        f"(finished shards are kept if the sweep stops)...")
    last = time.time()
    while pending:
        done, _ = ray.wait(list(pending), num_returns=1, timeout=5.0)
        for ref in done:
            ray.get(ref)  # a failed shard fails the sweep here, with its error
            pending.pop(ref)
        if time.time() - last >= PROGRESS_SECONDS:
            say(f"  extraction: {total - len(pending)}/{total} shards done")
            last = time.time()
    merge = ray.remote(_merge)
    ray.get([merge.remote(settings.cache_dir, net["key"], split, net["with_fmap"],
                          [cache.shard_name(split, start, stop) for start, stop in shards])
             for split, shards in todo.items()])
    return net
