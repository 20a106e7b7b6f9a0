"""Speed of the whole system, measured in one run and printed as ratios (issue: paper-scale benchmarks & speed).

    python scripts/system_speed.py [--only overhead,parallel,eval,knn,cli] [--trial-seconds 30] [--report-seconds 5 0]

1. overhead  — N trials through Ray Tune + Optuna + MLflow vs the same trials in a plain Python loop
               (goal: overhead < 10 % of trial time for trials of >= 30 s).
2. parallel  — 2 concurrent single-thread trials on 2 cores vs the same 2 one after the other (goal >= 1.7x).
3. eval      — images/s of the evaluation path (OutputStore extraction) vs a bare torch.no_grad() forward loop
               over the same data (goal >= 0.9).
4. knn       — KNN scoring (its exact CPU search, methods.neighbours, as a sweep runs it: a 1,024-wide neighbour table
               a k sweep reads) vs NumPy brute-force references at 50k bank x 10k queries (goal >= 5x).
5. cli       — `python -m orchestrator --help` and `list` wall time (goal < 1 s; neither imports torch or ray).
On a CUDA machine it also times one CIFAR-10-shaped ResNet-18 epoch and the evaluation pass on the GPU.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent


def _sweep_opts(work: Path, **kw):
    from orchestrator.sweep.prepare import SweepOptions

    # figures off: the end-of-sweep plots are a fixed cost, not part of running trials
    return SweepOptions(**{**dict(tracking_uri=f"sqlite:///{work / 'mlflow.db'}", storage_path=str(work / "r"),
                                  cache_dir=str(work / "cache"), dashboard=False, quiet=True, figures=False), **kw})


def _epochs_for(seconds: float) -> int:
    """Epochs of an ascood trial on digits that take about ``seconds`` on this machine (one thread): a trial costs
    a fixed part (fits, final evaluation) plus a per-epoch part; both are measured (1 vs 5 epochs)."""
    import torch

    from orchestrator import data as benchmarks
    from orchestrator.trial import TrialSettings, run_trial

    torch.set_num_threads(1)
    bench = benchmarks.load("digits")
    took = {}
    with tempfile.TemporaryDirectory() as cache:
        run_trial({"epochs": 1}, bench, TrialSettings("ascood", cache_dir=f"{cache}/warm-up", threads=1),
                  report=lambda metrics, save: None)  # first-call costs are not per-epoch costs
        for epochs in (1, 5):
            t0 = time.perf_counter()
            run_trial({"epochs": epochs}, bench, TrialSettings("ascood", cache_dir=cache, threads=1),
                      report=lambda metrics, save: None)
            took[epochs] = time.perf_counter() - t0
    per_epoch = (took[5] - took[1]) / 4
    return max(1, round((seconds - (took[1] - per_epoch)) / per_epoch))


_LOOP = """
import json, sys, tempfile, time
t0 = time.perf_counter()
from orchestrator import data as benchmarks
from orchestrator.trial import TrialSettings, run_trial

def same_work_as_tune(metrics, save_checkpoint):  # per-epoch validation (run_trial does it) + a checkpoint
    with tempfile.TemporaryDirectory() as folder:
        save_checkpoint(folder)

bench = benchmarks.load("digits")
with tempfile.TemporaryDirectory() as cache:
    for cfg in json.loads(sys.argv[1]):
        run_trial(cfg, bench, TrialSettings("ascood", cache_dir=cache, threads=1), report=same_work_as_tune)
print(time.perf_counter() - t0)
"""


def overhead(n: int, seconds: float, report_seconds: list[float]) -> None:
    """Sweep wall time (Ray already up) vs a fresh Python process running the same configurations in a loop.

    Both sides start cold (the sweep's trial worker and the loop's process import torch and build the model) and
    both get one BLAS/OpenMP thread (Ray gives a 1-CPU worker OMP_NUM_THREADS=1; the loop is started with it).
    The sweep's overhead is split into a one-off part (MLflow parent run, Tune start, the worker's start-up)
    and the part paid inside trials (reports, the driver's callbacks competing for the cores).
    """
    import json

    import ray

    from orchestrator.search_space import load
    from orchestrator.sweep.prepare import prepare
    from orchestrator.sweep.runner import run as run_sweep

    epochs = _epochs_for(seconds)
    swept: dict[float, tuple[float, float]] = {}
    for every in report_seconds:  # the same sweep (same seed, same configurations) per reporting interval
        work = Path(tempfile.mkdtemp())
        prep = prepare(_sweep_opts(work, method="ascood", num_samples=n, max_concurrent=1, epochs=epochs,
                                         cpus_per_trial=1, report_seconds=every))
        ray.init(address="local", num_cpus=1, include_dashboard=False, log_to_driver=False)
        t0 = time.perf_counter()
        res = run_sweep(prep)
        wall = time.perf_counter() - t0
        ray.shutdown()
        in_trials = sum(json.loads(f.read_text().splitlines()[-1])["time_total_s"]
                        for f in (work / "r").glob("*/*/result.json"))
        swept[every] = (wall, in_trials)
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=prep.tracking_uri)
    runs = client.search_runs([client.get_experiment_by_name("oodsweep").experiment_id],
                              filter_string=f"tags.mlflow.parentRunId = '{res.parent_run_id}'")
    kinds = {k.name: k.type for k in load("ascood").knobs}
    configs = [{k: float(v) if kinds.get(k) == "float" else int(v) if k == "epochs" else v
                for k, v in r.data.params.items()} for r in runs]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", _LOOP, json.dumps(configs)], env=env, capture_output=True, text=True,
                         check=True, cwd=ROOT)
    t_loop = float(out.stdout.strip().splitlines()[-1])
    for every, (wall, in_trials) in swept.items():
        how = "every epoch" if every == 0 else f"--report-seconds {every:g}"
        print(f"[overhead] {n} ascood trials of ~{t_loop / n:.1f} s ({epochs} epochs), reporting {how}: sweep "
              f"{wall:.1f} s (Ray already up) vs plain loop {t_loop:.1f} s -> overhead {(wall - t_loop) / t_loop:+.1%} "
              f"of trial time (goal < 10% for trials >= 30 s); of it, one-off {wall - in_trials:.1f} s per sweep "
              f"(MLflow parent run, Tune start, trial worker start-up) and {(in_trials - t_loop) / t_loop:+.1%} "
              f"inside trials", flush=True)


def parallel() -> None:
    import ray

    from orchestrator.sweep.prepare import prepare
    from orchestrator.sweep.runner import run as run_sweep

    work = Path(tempfile.mkdtemp())
    epochs = _epochs_for(15)
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    times = {}
    for conc in (1, 2):
        prep = prepare(_sweep_opts(work / str(conc), method="ascood", num_samples=4, max_concurrent=conc,
                                         epochs=epochs, cpus_per_trial=1, seed=1))
        t0 = time.perf_counter()
        run_sweep(prep)
        times[conc] = time.perf_counter() - t0
    ray.shutdown()
    print(f"[parallel] 4 ascood trials ({epochs} epochs, 1 thread each): sequential {times[1]:.1f} s, "
          f"2 at once {times[2]:.1f} s -> throughput x{times[1] / times[2]:.2f} (goal >= 1.7)", flush=True)


def evaluation(device: str = "cpu") -> None:
    import dataclasses

    import torch

    from orchestrator import data as benchmarks
    from orchestrator.evaluation import OutputStore
    from orchestrator.models.backbones import build_classifier

    bench = benchmarks.load("fashion-mnist")
    x = bench.id_train.x[:20000]
    model = build_classifier("small_cnn", 1, 28, 6, [0.28], [0.35]).to(device).eval()
    split_bench = dataclasses.replace(bench, id_train=benchmarks.Split(x, bench.id_train.y[:20000]))

    from orchestrator.forward import EVAL_BATCH
    from orchestrator.training import to_float

    batch = EVAL_BATCH.get(device, 256)

    def bare(size, layout):  # what a user would write: the same model, a plain no_grad loop
        with torch.no_grad():
            for s in range(0, len(x), size):
                model(layout(torch.from_numpy(x[s:s + size]).to(device).float().div_(255)))

    same = lambda: bare(batch, lambda t: to_float(t, device))  # noqa: E731 - our batch size and layout
    naive = lambda: bare(512, lambda t: t)  # noqa: E731 - batch 512, default (NCHW) input
    ours = lambda: OutputStore(model, split_bench, device).get("id_train")  # noqa: E731

    same(), naive(), ours()  # warm-up
    t_same, t_naive, t_ours = (min(_timed(f) for _ in range(3)) for f in (same, naive, ours))
    print(f"[eval] {len(x)} Fashion-MNIST images on {device}: evaluation path (logits + features + copy to numpy) "
          f"{len(x) / t_ours:,.0f} img/s; bare no_grad forward loop at the same batch ({batch}) and layout "
          f"{len(x) / t_same:,.0f} img/s -> ratio {t_same / t_ours:.2f} (goal >= 0.9); a naive loop (batch 512, "
          f"NCHW input) {len(x) / t_naive:,.0f} img/s", flush=True)


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def knn(bank: int = 50_000, queries: int = 10_000, dim: int = 128, k: int = 50) -> None:
    from methods.base import Outputs
    from methods.knn import KnnScorer, l2_normalise

    rng = np.random.default_rng(0)
    train = rng.standard_normal((bank, dim)).astype(np.float32)
    test = rng.standard_normal((queries, dim)).astype(np.float32)
    out_train = Outputs(np.zeros((bank, 1), np.float32), train)
    out_test = Outputs(np.zeros((queries, 1), np.float32), test)

    import methods.knn as knn_module

    def scorer_knn():
        knn_module._MEMO.clear()  # time the search itself, not the sweep-level neighbour-table memo
        return KnnScorer(k).fit(out_train).score(out_test)

    def numpy_knn():
        b, q = l2_normalise(train), l2_normalise(test)
        scores = np.empty(queries)
        for s in range(0, queries, 1000):  # chunked: a full 10k x 50k distance matrix is 2 GB
            d = (q[s:s + 1000] ** 2).sum(1, keepdims=True) - 2 * q[s:s + 1000] @ b.T + (b ** 2).sum(1)
            scores[s:s + 1000] = -np.sqrt(np.maximum(np.partition(d, k - 1, axis=1)[:, k - 1], 0))
        return scores

    def numpy_per_query(n=500):  # the textbook brute force: one distance vector per query
        b, q = l2_normalise(train), l2_normalise(test[:n])
        return np.array([-np.sqrt(np.partition(((b - v) ** 2).sum(1), k - 1)[k - 1]) for v in q])

    a, b = scorer_knn(), numpy_knn()
    assert np.allclose(a, b, atol=1e-3), "KNN's search and the NumPy reference disagree"
    assert np.allclose(a[:500], numpy_per_query(), atol=1e-3)
    t_f = min(_timed(scorer_knn) for _ in range(2))
    t_n = min(_timed(numpy_knn) for _ in range(2))
    t_q = _timed(numpy_per_query) * queries / 500
    print(f"[knn] {bank:,} bank x {queries:,} queries x {dim}-d, k={k}: KnnScorer {t_f:.2f} s (its table holds the "
          f"1,024 nearest, for every k of a sweep); NumPy per-query brute "
          f"force {t_q:.1f} s (timed on 500 queries, scaled) -> x{t_q / t_f:.1f} (goal >= 5); NumPy chunked-GEMM "
          f"brute force for this k alone {t_n:.2f} s -> x{t_n / t_f:.1f}", flush=True)


def cli() -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for args in (["--help"], ["list"]):
        best = min(_timed(lambda args=args: subprocess.run([sys.executable, "-m", "orchestrator", *args], env=env,
                                                 capture_output=True, check=True)) for _ in range(3))
        code = (f"import sys, runpy; sys.argv=['orchestrator', *{args!r}];\n"
                "try: runpy.run_module('orchestrator', run_name='__main__')\n"
                "except SystemExit: pass\n"
                "print('torch' in sys.modules, 'ray' in sys.modules, file=sys.stderr)")
        imported = subprocess.run([sys.executable, "-c", code],
                                  env=env, capture_output=True, text=True).stderr.split()[-2:]
        print(f"[cli] python -m orchestrator {' '.join(args)}: {best:.2f} s (goal < 1 s); "
              f"imports torch: {imported[0]}, ray: {imported[1]}", flush=True)


def gpu() -> None:
    import torch

    if not torch.cuda.is_available():
        print("[gpu] no CUDA device: skipped")
        return
    from orchestrator.models.backbones import build_classifier
    from orchestrator.training import Trainer

    model = build_classifier("resnet18", 3, 32, 10, [0.49, 0.48, 0.45], [0.25, 0.24, 0.26]).cuda()
    x = np.random.default_rng(0).integers(0, 256, (50_000, 3, 32, 32), dtype=np.uint8)
    y = np.random.default_rng(1).integers(0, 10, 50_000)
    trainer = Trainer({"epochs": 1, "lr": 0.1, "batch_size": 128}, "cuda")
    bench = type("B", (), {"id_train": type("S", (), {"__len__": lambda s: 50_000})()})()
    trainer.setup(model, bench)
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    trainer.train_epoch(model, x, y, 1)
    torch.cuda.synchronize()
    t_epoch = time.perf_counter() - t0
    from orchestrator.data.base import Split
    from orchestrator.forward import extract

    t0 = time.perf_counter()
    extract(model, Split(x[:10_000], y[:10_000]), "cuda")
    torch.cuda.synchronize()
    t_eval = time.perf_counter() - t0
    print(f"[gpu] {torch.cuda.get_device_name()}: one CIFAR-10-shaped ResNet-18 epoch (50k images, batch 128, fp32) "
          f"{t_epoch:.1f} s; evaluation of 10k images {t_eval:.2f} s ({10_000 / t_eval:,.0f} img/s)", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--only", default="cli,knn,eval,parallel,overhead,gpu")
    ap.add_argument("--trials", type=int, default=3)
    ap.add_argument("--trial-seconds", type=float, default=30.0)
    ap.add_argument("--report-seconds", type=float, nargs="+", default=[5.0, 0.0],
                    help="overhead: one sweep per reporting interval (default: the default 5 s, and every epoch)")
    args = ap.parse_args()
    todo = args.only.split(",")
    if "cli" in todo:
        cli()
    if "knn" in todo:
        knn()
    if "eval" in todo:
        evaluation()
    if "parallel" in todo:
        parallel()
    if "overhead" in todo:
        overhead(args.trials, args.trial_seconds, args.report_seconds)
    if "gpu" in todo:
        gpu()


if __name__ == "__main__":
    main()
