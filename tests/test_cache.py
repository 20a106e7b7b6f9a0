"""The model cache: one training per config however many trials ask, atomic entries, real Ray sweep sharing."""
import multiprocessing as mp
import os

import numpy as np
import pytest
import torch

from orchestrator import data as benchmarks
from orchestrator.cache import ModelCache, config_key
from orchestrator.trial import TrialSettings, run_trial


def test_config_key_ignores_order_and_changes_with_values():
    assert config_key({"a": 1, "b": 2}) == config_key({"b": 2, "a": 1})
    assert config_key({"a": 1}) != config_key({"a": 2})


def test_post_hoc_knobs_never_retrain_and_training_knobs_do(tmp_path):
    bench = benchmarks.load("digits", smoke=True)
    settings = TrialSettings("energy", cache_dir=str(tmp_path), threads=1)
    cache = ModelCache(tmp_path)
    first = run_trial({"epochs": 1, "temperature": 1.0}, bench, settings)
    extracted = cache.extracted_count()
    assert extracted == len(bench.splits()) - 1  # energy needs no training-split outputs
    second = run_trial({"epochs": 1, "temperature": 5.0}, bench, settings)
    assert first["trained_model"] and not second["trained_model"]
    assert first["model_key"] == second["model_key"]
    assert cache.trained_count() == 1
    assert cache.extracted_count() == extracted  # the second trial read every split from the cache
    msp = run_trial({"epochs": 1}, bench, TrialSettings("msp", cache_dir=str(tmp_path), threads=1))
    assert msp["model_key"] == first["model_key"]  # post-hoc methods share one classifier
    third = run_trial({"epochs": 1, "lr": 0.01}, bench, settings)
    assert third["trained_model"] and cache.trained_count() == 2


def _hold_lock_then_write(root, key, ready):
    cache = ModelCache(root)
    with cache.lock(key):
        ready.set()
        import time

        time.sleep(1.0)
        torch.save({"w": torch.ones(1)}, os.path.join(root, "written-by-holder"))


def test_lock_serialises_processes(tmp_path):
    ctx = mp.get_context("spawn")
    ready = ctx.Event()
    p = ctx.Process(target=_hold_lock_then_write, args=(str(tmp_path), "k", ready))
    p.start()
    assert ready.wait(30)
    with ModelCache(tmp_path).lock("k"):  # blocks until the holder released it, after its write
        assert (tmp_path / "written-by-holder").exists()
    p.join()


def test_interrupted_write_leaves_no_entry(tmp_path, monkeypatch):
    cache = ModelCache(tmp_path)
    real_save = torch.save

    def dies_half_way(obj, f, *a, **k):
        f.write(b"partial bytes")
        raise RuntimeError("killed mid-write")

    monkeypatch.setattr(torch, "save", dies_half_way)
    with pytest.raises(RuntimeError):
        cache.save_model("k", torch.nn.Linear(2, 2), {}, 0.0)
    assert not cache.has_model("k") and not cache.load_model("k", torch.nn.Linear(2, 2))
    assert [p.name for p in (tmp_path / "models" / "k").iterdir()] == ["meta.json"]  # no temp file left behind
    monkeypatch.setattr(torch, "save", real_save)
    cache.save_model("k", torch.nn.Linear(2, 2), {}, 0.0)
    assert cache.load_model("k", torch.nn.Linear(2, 2))


def _truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def test_a_truncated_cached_network_is_moved_aside_and_retrained(tmp_path, capsys):
    bench = benchmarks.load("digits", smoke=True)
    settings = TrialSettings("energy", cache_dir=str(tmp_path), threads=1)
    first = run_trial({"epochs": 1}, bench, settings)
    _truncate(tmp_path / "models" / first["model_key"] / "model.pt")
    again = run_trial({"epochs": 1}, bench, settings)
    assert again["trained_model"]


def test_a_damaged_entry_is_reported_in_one_line(tmp_path, capsys):
    cache = ModelCache(tmp_path)
    cache.save_model("k", torch.nn.Linear(2, 2), {}, 0.0)
    _truncate(tmp_path / "models" / "k" / "model.pt")
    capsys.readouterr()
    assert not cache.load_model("k", torch.nn.Linear(2, 2))
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "cached network k is damaged" in lines[0]


def test_a_damaged_entry_is_kept_for_inspection(tmp_path):
    cache = ModelCache(tmp_path)
    cache.save_model("k", torch.nn.Linear(2, 2), {}, 0.0)
    _truncate(tmp_path / "models" / "k" / "model.pt")
    cache.load_model("k", torch.nn.Linear(2, 2))
    assert [p.name.split("-")[0] for p in (tmp_path / "corrupt").iterdir()] == ["k"]


def test_damaged_outputs_are_extracted_again(tmp_path):
    from methods.base import Outputs

    cache = ModelCache(tmp_path)
    out = Outputs(np.ones((3, 2), np.float32), np.ones((3, 4), np.float32))
    cache.save_outputs("k", "id_test", False, out)
    _truncate(next((tmp_path / "models" / "k" / "outputs").rglob("features.npy")))
    assert cache.outputs("k", "id_test", False, lambda: out).logits.shape == (3, 2)
    assert cache.extracted_count() == 2


def test_data_without_its_checksum_counts_as_not_there(tmp_path):
    cache = ModelCache(tmp_path)
    cache.save_model("k", torch.nn.Linear(2, 2), {}, 0.0)
    (tmp_path / "models" / "k" / "model.pt.sha256").unlink()  # the writer died between data and checksum
    assert not cache.has_model("k")


# ---- sweep work (KNN's neighbour tables): kept with the network, under the scorer's own names
WORK = {"bank|ivf/16/4|queries": np.arange(12, dtype=np.float32).reshape(3, 4), "b|q2": np.ones((2, 4), np.float32)}


def test_sweep_work_comes_back_under_its_names(tmp_path):
    cache = ModelCache(tmp_path)
    cache.save_work("k", "knn-x", WORK)
    back = cache.load_work("k", "knn-x")
    assert {n: a.tolist() for n, a in back.items()} == {n: a.tolist() for n, a in WORK.items()}


def test_sweep_work_is_computed_once(tmp_path):
    cache = ModelCache(tmp_path)
    calls = []
    for _ in range(2):
        cache.work("k", "knn-x", lambda: calls.append(1) or WORK)
    assert len(calls) == 1


def test_sweep_work_larger_than_behind_bytes_is_cached_when_returned(tmp_path):
    cache = ModelCache(tmp_path)
    cache.work("k", "knn-x", lambda: WORK, behind_bytes=8)
    assert cache.load_work("k", "knn-x") is not None


def test_sweep_work_written_behind_is_cached_once_written(tmp_path):
    from orchestrator.cache import wait_for_writes

    cache = ModelCache(tmp_path)
    cache.work("k", "knn-x", lambda: WORK, behind_bytes=10**6)
    wait_for_writes()
    assert {n: a.tolist() for n, a in cache.load_work("k", "knn-x").items()} == {n: a.tolist() for n, a in WORK.items()}


def test_sweep_work_being_written_behind_is_waited_for_not_computed_again(tmp_path):
    from orchestrator.cache import wait_for_writes

    cache = ModelCache(tmp_path)
    calls = []
    for _ in range(2):  # the second call finds the lock held by the writer, waits, and reads what it wrote
        cache.work("k", "knn-x", lambda: calls.append(1) or WORK, behind_bytes=10**6)
    wait_for_writes()
    assert len(calls) == 1


def test_waiting_for_a_slow_cache_write_says_what_it_waits_for(tmp_path, monkeypatch, capsys):
    import time

    from orchestrator import cache as cache_module

    save = ModelCache.save_work
    monkeypatch.setattr(ModelCache, "save_work", lambda *a: time.sleep(0.3) or save(*a))
    monkeypatch.setattr(cache_module, "WRITE_WAIT_QUIET_SECONDS", 0.01)
    ModelCache(tmp_path).work("k", "knn-x", lambda: WORK, behind_bytes=10**6)
    cache_module.wait_for_writes()
    assert "waiting for the model cache: writing sweep work knn-x of network k" in capsys.readouterr().err


def test_damaged_sweep_work_is_computed_again(tmp_path):
    cache = ModelCache(tmp_path)
    cache.save_work("k", "knn-x", WORK)
    _truncate(tmp_path / "models" / "k" / "work" / "knn-x" / "a0.npy")
    cache.work("k", "knn-x", lambda: WORK)
    assert cache.work_count() == 2


@pytest.fixture(scope="module")
def knn_prepared_twice(tmp_path_factory):
    from orchestrator.trial import shared_outputs

    root = tmp_path_factory.mktemp("knn-work")
    bench = benchmarks.load("digits", smoke=True)
    settings = TrialSettings("knn", cache_dir=str(root), threads=1)
    return root, shared_outputs({"epochs": 1}, bench, settings), shared_outputs({"epochs": 1}, bench, settings)


def test_a_second_knn_preparation_computes_no_neighbour_table(knn_prepared_twice):
    root, _, _ = knn_prepared_twice
    assert ModelCache(root).work_count() == 1


def test_a_second_knn_preparation_reads_the_same_neighbour_tables(knn_prepared_twice):
    _, first, second = knn_prepared_twice
    assert {n: a.tolist() for n, a in second["work"].items()} == {n: a.tolist() for n, a in first["work"].items()}


@pytest.fixture(scope="module")
def knn_work_by_name(knn_prepared_twice, tmp_path_factory):
    """The same preparation with every array over the shipping limit: the work stays in the cache, named."""
    from orchestrator import trial
    from orchestrator.posthoc import PosthocEvaluator

    root, shipped, _ = knn_prepared_twice
    bench = benchmarks.load("digits", smoke=True)
    settings = TrialSettings("knn", cache_dir=str(root), threads=1)
    limit, trial.SHIP_BYTES = trial.SHIP_BYTES, 0
    try:
        by_name = trial.shared_outputs({"epochs": 1}, bench, settings)
    finally:
        trial.SHIP_BYTES = limit
    config = {"epochs": 1, "k": 5}
    return (by_name, PosthocEvaluator(bench, settings, shipped)(config),
            PosthocEvaluator(bench, settings, by_name)(config))


def test_sweep_work_over_the_shipping_limit_is_not_shipped(knn_work_by_name):
    by_name, _, _ = knn_work_by_name
    assert by_name["work"] is None


def test_sweep_work_over_the_shipping_limit_is_named_for_the_evaluators(knn_work_by_name):
    by_name, _, _ = knn_work_by_name
    assert by_name["work_name"].startswith("knn-")


def test_an_evaluator_reading_the_work_by_name_scores_like_one_it_was_shipped_to(knn_work_by_name):
    _, shipped, read = knn_work_by_name
    assert read["matrix_json"] == shipped["matrix_json"]


@pytest.fixture(scope="module")
def retrained_after_damage(tmp_path_factory):
    """A tiny classifier trained into the cache, its weights damaged, then obtained again (trained again)."""
    from orchestrator.trial import network_for

    root = tmp_path_factory.mktemp("damaged-net")
    bench = benchmarks.load("digits", smoke=True)
    settings = TrialSettings("msp", cache_dir=str(root), threads=1)
    first = network_for({"epochs": 1}, bench, settings)
    _truncate(root / "models" / first.key / "model.pt")
    again = network_for({"epochs": 1}, bench, settings)
    return bench, again, network_for({"epochs": 1}, bench, settings)


def test_a_damaged_cached_network_is_trained_again(retrained_after_damage):
    _, again, _ = retrained_after_damage
    assert again.trained


def test_a_network_trained_again_normalises_with_the_training_images_statistics(retrained_after_damage):
    bench, again, _ = retrained_after_damage
    assert again.model.mean.flatten().tolist() == pytest.approx(bench.mean_std()[0])


def test_a_network_loaded_from_the_cache_carries_the_statistics_it_was_trained_with(retrained_after_damage):
    bench, _, loaded = retrained_after_damage
    assert loaded.model.std.flatten().tolist() == pytest.approx(bench.mean_std()[1])
