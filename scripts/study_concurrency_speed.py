"""What running a study's sweeps at once buys (issue 26, item 4), measured in one run.

1. **Smoke study on this machine.** The same study — 12 sweeps on digits (6 entries × 2 seeds: msp, energy, odin
   with a fixed configuration, knn, gen, and oe, which trains), smoke budgets — run twice by the real command
   (``python -m orchestrator benchmark``), each time in a fresh folder with an empty model cache: with
   ``--max-concurrent-sweeps 1`` (one sweep at a time) and with the default (as many as the free resources allow).
   Prints both wall times and their ratio (goal: <= 0.6 on 2 cores), with the CPU the run's processes used and the
   CPU the rest of the machine used meanwhile (another load on a shared machine shows there).
2. **Simulated cluster.** ``ray.cluster_utils.Cluster`` declares 4 nodes × 2 GPUs (2 CPUs each) on this machine;
   a study of synthetic sweeps runs on it through the real scheduler (:mod:`orchestrator.benchmark.schedule`) and
   real sweep driver processes (:mod:`orchestrator.benchmark.drivers`, each sweep a Ray job), whose trials are Ray tasks
   holding 1 GPU for known times: per seed, one classifier that 8 post-hoc sweeps read (trained by the first of
   them to start, the others wait), each post-hoc sweep one evaluator scoring its configurations, and 3 sweeps
   that train (trials of varying length, as ASHA stops some early). Prints the makespan against the ideal — the GPU-seconds of all the
   work over the 8 GPUs, or the longest chain of dependent work where that is longer (goal: <= 1.25 × the ideal).
   The scheduler orders the sweeps by their estimated work (trials × epochs), as it does a real study's, not by
   the known durations.

    python scripts/study_concurrency_speed.py [--only smoke|cluster] [--scale 1.0] [--keep]

``TIMELINE=1`` also prints the simulated sweeps' start and end times and how many trials hold a GPU every 5 s.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SMOKE = """\
name: s12
benchmarks: [digits]
seeds: [0, 1]
smoke_test: true
entries:
  msp: {}
  energy: {num_samples: 4, baseline: msp}
  odin: {fixed: {temperature: 1000.0, epsilon: 0.0}, baseline: msp}
  knn: {num_samples: 4, baseline: msp}
  gen: {num_samples: 4, baseline: msp}
  oe: {baseline: msp}
"""


# ---------------------------------------------------------------- 1. the smoke study
class TreeCPU:
    """CPU seconds used by a process and all its descendants (read from /proc, sampled: what a process that lived
    less than a sample interval used is missed), and by the whole machine, while it runs."""

    def __init__(self, pid: int, every: float = 0.25):
        self._root, self._every = pid, every
        self._seen: dict[int, float] = {}
        self._stop = threading.Event()
        self._tick = os.sysconf("SC_CLK_TCK")
        self._machine0 = self._machine()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _machine(self) -> float:
        fields = open("/proc/stat").readline().split()[1:]
        busy = sum(int(x) for x in fields[:3]) + sum(int(x) for x in fields[5:8])  # user nice system irq softirq steal
        return busy / self._tick

    def _processes(self) -> dict[int, tuple[int, float]]:
        """{pid: (parent pid, CPU seconds it used)} of every process."""
        out = {}
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    fields = open(f"/proc/{entry}/stat").read().rsplit(")", 1)[1].split()
                except OSError:
                    continue
                out[int(entry)] = (int(fields[1]), (int(fields[11]) + int(fields[12])) / self._tick)
        return out

    def _loop(self) -> None:
        while not self._stop.is_set():
            procs = self._processes()
            children: dict[int, list[int]] = {}
            for pid, (ppid, _) in procs.items():
                children.setdefault(ppid, []).append(pid)
            todo = [self._root]
            while todo:
                pid = todo.pop()
                if pid in procs:
                    self._seen[pid] = max(self._seen.get(pid, 0.0), procs[pid][1])
                todo += children.get(pid, [])
            self._stop.wait(self._every)

    def stop(self) -> tuple[float, float]:
        """(CPU seconds of the tree, of the whole machine) since the start."""
        self._stop.set()
        self._thread.join()
        return sum(self._seen.values()), self._machine() - self._machine0


def run_study(work: Path, extra: list[str]) -> dict:
    """One run of the smoke study in ``work`` (fresh cache, store and results): wall seconds and CPU."""
    work.mkdir(parents=True)
    (work / "s12.yaml").write_text(SMOKE)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OODSWEEP_CACHE": str(work / "cache"),
           "RAY_USAGE_STATS_ENABLED": "0"}
    load = os.getloadavg()[0]
    started = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "orchestrator", "benchmark", "s12.yaml", "--no-dashboard",
                             "--num-cpus", "2", *extra], cwd=work, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    cpu = TreeCPU(proc.pid)
    out, err = proc.communicate()
    seconds = time.perf_counter() - started
    tree, machine = cpu.stop()
    if proc.returncode != 0:
        raise SystemExit(f"the study failed (exit {proc.returncode}):\n{err[-3000:]}\n{out[-3000:]}")
    return {"seconds": seconds, "cpu": tree, "others": max(0.0, machine - tree), "load": load}


def smoke(work: Path) -> float:
    print(f"1. Smoke study: 12 sweeps on digits (smoke budgets), empty cache each time, {os.cpu_count()} CPU(s)",
          flush=True)
    one = run_study(work / "one", ["--max-concurrent-sweeps", "1"])
    print(f"   one sweep at a time: {one['seconds']:6.1f} s  (its processes used {one['cpu']:.0f} CPU-s; the rest "
          f"of the machine {one['others']:.0f} CPU-s; load average before {one['load']:.1f})", flush=True)
    default = run_study(work / "default", [])
    print(f"   default concurrency: {default['seconds']:6.1f} s  (its processes used {default['cpu']:.0f} CPU-s; the "
          f"rest of the machine {default['others']:.0f} CPU-s; load average before {default['load']:.1f})",
          flush=True)
    ratio = default["seconds"] / one["seconds"]
    print(f"   ratio default / one at a time = {ratio:.2f}  (goal <= 0.6)", flush=True)
    return ratio


# ---------------------------------------------------------------- 2. the simulated cluster
NODES, GPUS_PER_NODE, CPUS_PER_NODE = 4, 2, 2
SECONDS_PER_EPOCH = 3.0


#: The estimate of a post-hoc configuration's work that a real study uses (orchestrator.benchmark.plan), in epochs.
POSTHOC_TRIAL_COST = 0.02


def synthetic_study(scale: float, seed: int = 0) -> list[dict]:
    """Per seed: a classifier (10 epochs) that 8 post-hoc sweeps read — each one evaluator holding 1 GPU while it
    scores 100 configurations (100 × 0.02 epochs, ± 40 %) — and 3 sweeps that train: 8 trials of 10 epochs, 4 at
    once, each stopped after 30-100 % of them (as ASHA stops trials). Every duration × ``scale``; the scheduler
    sees the estimates a real study gives it (trials × epochs), not the drawn durations."""
    rng = random.Random(seed)
    epoch = SECONDS_PER_EPOCH * scale
    sweeps = []
    for s in range(3):
        key = f"classifier-s{s}"
        for m in range(8):
            seconds = 100 * POSTHOC_TRIAL_COST * epoch * rng.uniform(0.6, 1.4)
            sweeps.append({"name": f"sim-posthoc{m}-s{s}", "needs": key, "network_seconds": 10 * epoch, "width": 1,
                           "trials": [seconds], "cost": 100 * POSTHOC_TRIAL_COST, "network_cost": 10.0})
        for m in range(3):
            trials = [10 * epoch * rng.uniform(0.3, 1.0) for _ in range(8)]
            sweeps.append({"name": f"sim-trained{m}-s{s}", "needs": None, "network_seconds": 0.0, "width": 4,
                           "trials": trials, "cost": 8 * 10.0, "network_cost": 0.0})
    return sweeps


def simulated_sweep(sweep: dict) -> tuple[int, dict]:
    """A synthetic sweep in its driver process, a Ray job on the study's cluster: trains its shared network first
    when that is not cached yet (under the model cache's lock, as a real one does), then runs its trials, at most
    ``width`` at once."""
    import ray
    from ray.job_config import JobConfig

    from orchestrator.cache import ModelCache

    started = time.time()
    ray.init(address=os.environ["RAY_ADDRESS"], log_to_driver=False, configure_logging=False,
             job_config=JobConfig(metadata={"job_name": sweep["name"]}))
    def trial(seconds: float) -> tuple[float, float]:  # holds its resources for ``seconds`` (nested: Ray ships it)
        began = time.time()
        time.sleep(seconds)
        return began, time.time()

    hold = ray.remote(trial).options(num_cpus=1, num_gpus=1)
    if sweep["needs"]:
        marker = Path(sweep["cache"]) / f"{sweep['needs']}.done"
        if not marker.exists():
            with ModelCache(sweep["cache"]).lock(sweep["needs"]):
                if not marker.exists():
                    ray.get(hold.remote(sweep["network_seconds"]))
                    marker.touch()
    pending: list = []
    spans = []
    for seconds in sweep["trials"]:
        if len(pending) >= sweep["width"]:
            done, pending = ray.wait(pending, num_returns=1)
            spans += ray.get(done)
        pending.append(hold.remote(seconds))
    spans += ray.get(pending)
    return 0, {"started": started, "ended": time.time(), "spans": spans}


def ideal(sweeps: list[dict]) -> tuple[float, float]:
    """(GPU-seconds of all the work over the GPUs, the longest chain of dependent work)."""
    networks = {s["needs"]: s["network_seconds"] for s in sweeps if s["needs"]}
    area = (sum(networks.values()) + sum(sum(s["trials"]) for s in sweeps)) / (NODES * GPUS_PER_NODE)

    def alone(s):  # a sweep's shortest possible duration: its longest trial, or its trials over its width
        return max(max(s["trials"]), sum(s["trials"]) / s["width"])

    chain = max(networks.get(s["needs"], 0.0) + alone(s) for s in sweeps)
    return area, chain


def cluster(work: Path, scale: float) -> float:
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # a throwaway cluster of this script's own
    import ray
    from ray.cluster_utils import Cluster

    from orchestrator.benchmark import drivers, schedule

    print(f"2. Simulated cluster: {NODES} nodes × {GPUS_PER_NODE} GPUs ({CPUS_PER_NODE} CPUs each) declared on this "
          f"machine", flush=True)
    sweeps = synthetic_study(scale)
    cache = work / "sim-cache"
    cache.mkdir(parents=True)
    for s in sweeps:
        s["cache"] = str(cache)
    context = drivers.server(preload=())  # nothing to preload: a synthetic driver imports Ray only
    sim = Cluster(initialize_head=True, head_node_args={"num_cpus": CPUS_PER_NODE, "num_gpus": GPUS_PER_NODE,
                                                        "object_store_memory": 80 * 2**20, "include_dashboard": False})
    for _ in range(NODES - 1):
        sim.add_node(num_cpus=CPUS_PER_NODE, num_gpus=GPUS_PER_NODE, object_store_memory=80 * 2**20)
    sim.wait_for_nodes()
    ray.init(address=sim.address, log_to_driver=False)
    try:
        by_name = {s["name"]: s for s in sweeps}
        works = [schedule.Work(s["name"], {"CPU": 1.0, "GPU": 1.0}, width=s["width"],
                               needs=frozenset([s["needs"]]) if s["needs"] else frozenset(), cost=s["cost"],
                               needs_cost={s["needs"]: s["network_cost"]} if s["needs"] else {},
                               needs_label={s["needs"]: s["needs"]} if s["needs"] else {}) for s in sweeps]
        scheduler = schedule.Scheduler(works, ray.cluster_resources(), lambda key: (cache / f"{key}.done").exists())
        address = ray.get_runtime_context().gcs_address
        ends: dict[str, dict] = {}

        def ended(work, outcome):
            if "ended" not in outcome:
                raise SystemExit(f"{work.name} failed: {outcome}")
            ends[work.name] = outcome

        launched: dict[str, float] = {}
        lanes = drivers.Lanes(context, address, "oodsweep-simulation")

        def launch(work):
            launched[work.name] = time.time()
            return lanes.start(simulated_sweep, (by_name[work.name],), work.name)

        started = time.time()
        try:
            schedule.run(scheduler, launch, lambda: (ray.available_resources(), ray.cluster_resources()), ended,
                         lambda line: None, wait=lanes.wait)
        finally:
            lanes.close()
        makespan = max(o["ended"] for o in ends.values()) - started
        if os.environ.get("TIMELINE"):
            spans = sorted((b - started, e - started) for o in ends.values() for b, e in o["spans"])
            for t in range(0, int(makespan) + 1, 5):
                busy = sum(1 for b, e in spans if b <= t < e)
                print(f"   t={t:4d}s trials holding a GPU: {busy}", flush=True)
            for name in sorted(launched, key=launched.get):
                o = ends[name]
                print(f"   {name:18s} launched {launched[name] - started:6.1f}  ran {o['started'] - started:6.1f}"
                      f" - {o['ended'] - started:6.1f}", flush=True)
    finally:
        ray.shutdown()
        sim.shutdown()
    area, chain = ideal(sweeps)
    bound = max(area, chain)
    networks = {s["needs"]: s["network_seconds"] for s in sweeps if s["needs"]}
    alone = sum(networks.values()) + sum(max(max(s["trials"]), sum(s["trials"]) / s["width"]) for s in sweeps)
    print(f"   {len(sweeps)} sweeps, {sum(len(s['trials']) for s in sweeps)} trials; ideal {bound:.1f} s (GPU-seconds / "
          f"{NODES * GPUS_PER_NODE} GPUs = {area:.1f} s, longest chain {chain:.1f} s); one sweep at a time would take "
          f"at least {alone:.0f} s", flush=True)
    ratio = makespan / bound
    print(f"   makespan {makespan:.1f} s = {ratio:.2f} × the ideal  (goal <= 1.25)", flush=True)
    return ratio


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", choices=["smoke", "cluster"], help="measure one part only")
    ap.add_argument("--scale", type=float, default=1.0, help="the simulated trials' durations × this")
    ap.add_argument("--keep", action="store_true", help="keep the work folder")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="oodsweep-concurrency-"))
    results = {}
    try:
        if args.only in (None, "smoke"):
            results["smoke_ratio"] = smoke(work)
        if args.only in (None, "cluster"):
            results["cluster_ratio"] = cluster(work, args.scale)
    finally:
        if args.keep:
            print(f"work folder: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    print(json.dumps({k: round(v, 3) for k, v in results.items()}))


if __name__ == "__main__":
    main()
