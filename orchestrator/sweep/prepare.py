"""Validate a sweep before anything runs: method, benchmark, search space against the method's declared knobs,
objectives, resources, data, tracking store. Everything here raises :class:`~orchestrator.errors.UsageError` with
one line, before Ray starts or an MLflow run exists, so bad input writes nothing.
"""
from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import methods
from orchestrator import data, search_space
from orchestrator.data.base import Benchmark, DataUnavailable
from orchestrator.errors import UsageError
from orchestrator.knobs import KnobError
from orchestrator.metrics import CONVENTIONS
from orchestrator.registry import UnknownEntry
from orchestrator.settings import TrialSettings
from orchestrator.sweep import state, study
from orchestrator.sweep.batched import BATCH_SIZE
from orchestrator.tracking import runs

SMOKE_BUDGET = {"num_samples": 2, "max_concurrent": 2, "epochs": 1}
#: Longest sweep name: it names a results folder, MLflow runs and Tune's trial folders below it.
MAX_NAME = 100
#: Seconds to wait for a cluster address to answer before saying nothing listens there.
ADDRESS_TIMEOUT = 5.0


@dataclass
class SweepOptions:
    method: str
    benchmark: str = "digits"
    num_samples: int | None = None
    max_concurrent: int | None = None
    epochs: int | None = None
    seed: int = 0
    name: str | None = None
    tracking_uri: str | None = None
    storage_path: str | None = None
    address: str | None = None
    smoke_test: bool = False
    search_space: str | None = None
    data_root: str | None = None
    cache_dir: str | None = None
    cpus_per_trial: float | None = None  # None: the YAML's resources, else 1
    gpus_per_trial: float | None = None  # None: the YAML's resources, else 0
    num_cpus: int | None = None
    num_gpus: int | None = None
    dashboard: bool = True
    dashboard_host: str = "127.0.0.1"
    convention: str = "classic"
    experiment: str = "oodsweep"
    max_failures: int = 2
    scheduler: str = "none"  # none | asha
    grace_period: int = 1
    reduction_factor: int = 2
    report_seconds: float = 5.0  # a training trial reports to Tune at most this often (0: every epoch)
    objectives: list[str] | None = None  # ["val/auroc:max", "val/acc:max"] overrides the YAML's metric/mode
    seeds: int = 0  # re-run the best configuration with this many more seeds
    seeds_every_trial: bool = False
    figures: bool = True
    quiet: bool = False
    #: Configurations per actor call of a post-hoc sweep (None: batched.BATCH_SIZE; 0: one Tune trial each).
    batch_size: int | None = None
    #: A user's network (orchestrator.models.external): spec, weights file, "HEAD[,FEATURE_MAP]".
    model: str | None = None
    weights: str | None = None
    model_layers: str | None = None
    #: The MLflow run of the study this sweep belongs to (python -m orchestrator benchmark), and its name.
    study_run_id: str | None = None
    study: str | None = None
    #: Optuna RDB URL of the sweep's study (None: beside the MLflow store, see orchestrator.sweep.study).
    optuna_storage: str | None = None



@dataclass
class Prepared:
    """A validated sweep, ready to run."""

    opts: SweepOptions
    space: search_space.SearchSpace
    bench: Benchmark
    name: str
    tracking_uri: str
    storage_path: str
    num_samples: int
    max_concurrent: int
    fixed: dict[str, Any]
    resources: dict[str, float]
    resume: dict[str, Any] | None = None  # the saved state of the sweep being resumed
    #: Lines the sweep prints before it starts (what prepare decided for the user).
    notes: list[str] = field(default_factory=list)
    #: Configurations per actor call when every searched knob is post-hoc (orchestrator.sweep.batched), else 0:
    #: one Ray Tune trial per configuration.
    batch_size: int = 0
    #: Optuna storage URL of the sweep's study (None: kept in Tune's searcher state only).
    study_storage: str | None = None
    #: The user's network (``--model``), checked on the benchmark: ModelSpec fields; None: trained here.
    model: dict[str, Any] | None = None

    @property
    def experiment_path(self) -> str:
        return f"{self.storage_path.rstrip('/')}/{self.name}"

    def trial_settings(self, threads: int | None = None) -> TrialSettings:
        """What every trial of this sweep shares (one place builds it: trials, seed repeats and figures)."""
        return TrialSettings(method=self.opts.method, seed=self.opts.seed, cache_dir=self.opts.cache_dir,
                             convention=self.opts.convention,
                             threads=threads if threads is not None else max(1, int(self.resources["cpu"])),
                             data_fingerprint=self.bench.fingerprint(), model=self.model)


def prepare(opts: SweepOptions, resuming: bool = False, loaded: dict | None = None) -> Prepared:
    """Validate everything and load the data; raises UsageError with one clear line. ``loaded``: benchmarks already
    loaded, by (name, data root, smoke), shared and added to (a study loads each benchmark once for all its sweeps:
    fashion-mnist takes ~0.5 s to load and holds ~60 MB)."""
    try:
        method = methods.get(opts.method)
    except UnknownEntry as exc:
        raise UsageError(str(exc)) from None
    if data.is_custom(opts.benchmark):
        opts.benchmark = str(Path(opts.benchmark).resolve())  # so --resume works from another folder
    else:
        try:
            data.BENCHMARKS.entry(opts.benchmark)
        except UnknownEntry as exc:
            raise UsageError(f"{exc}, or a custom benchmark YAML file") from None
    if opts.convention not in CONVENTIONS:
        raise UsageError(f"unknown FPR@95 convention {opts.convention!r}; choose one of {', '.join(CONVENTIONS)}")
    if opts.max_failures < 0:
        raise UsageError(f"--max-failures must be 0 or more (retries of a trial whose worker died), got "
                         f"{opts.max_failures}")
    for flag, value in (("--num-samples", opts.num_samples), ("--max-concurrent", opts.max_concurrent),
                        ("--epochs", opts.epochs), ("--grace-period", opts.grace_period)):
        if value is not None and value < 1:
            raise UsageError(f"{flag} must be at least 1, got {value}")
    if not math.isfinite(opts.report_seconds) or opts.report_seconds < 0:
        raise UsageError(f"--report-seconds must be 0 or more, got {opts.report_seconds}")
    if opts.reduction_factor < 2:
        raise UsageError(f"--reduction-factor must be at least 2, got {opts.reduction_factor}")
    if opts.scheduler not in ("none", "asha"):
        raise UsageError(f"--scheduler must be asha or none, got {opts.scheduler!r}")
    try:
        space = search_space.load(method.name, opts.search_space)
        if opts.objectives:
            pairs = [o.rsplit(":", 1) if ":" in o else [o, "max"] for o in opts.objectives]
            space.objectives = search_space.parse_objectives([p[0] for p in pairs], [p[1] for p in pairs],
                                                             "--objective")
            space.metric, space.mode = space.objectives[0]
        search_space.check_objectives(space.objectives, "--objective" if opts.objectives else space.path)
        search_space.check_against(space, method)
    except search_space.SearchSpaceError as exc:
        raise UsageError(str(exc)) from None
    if space.multi_objective and opts.scheduler != "none":
        raise UsageError("a multi-objective sweep needs --scheduler none (Tune's schedulers take one metric)")
    resources = {"cpu": opts.cpus_per_trial if opts.cpus_per_trial is not None else space.resources.get("cpu", 1),
                 "gpu": opts.gpus_per_trial if opts.gpus_per_trial is not None else space.resources.get("gpu", 0)}
    if resources["cpu"] < 0 or resources["gpu"] < 0 or resources["cpu"] + resources["gpu"] == 0:
        raise UsageError(f"a trial needs some CPU or GPU, got {resources}")
    try:
        which = (opts.benchmark, opts.data_root, opts.smoke_test)
        bench = loaded.get(which) if loaded is not None else None
        if bench is None:
            bench = data.load(opts.benchmark, opts.data_root, smoke=opts.smoke_test)
            if loaded is not None:
                loaded[which] = bench
    except DataUnavailable as exc:
        raise UsageError(str(exc)) from None
    fixed = dict(space.fixed)
    searched = {k.name for k in space.knobs}
    smoke = {**SMOKE_BUDGET, **space.smoke} if opts.smoke_test else {}
    for key, value in smoke.items():  # the YAML's smoke block may also fix cheap values (e.g. teacher: self)
        if key not in SMOKE_BUDGET and key not in searched:
            fixed[key] = value
    epochs = opts.epochs or smoke.get("epochs")
    if epochs is not None:
        if "epochs" in searched:
            raise UsageError(f"{space.path} searches 'epochs'; drop --epochs or fix it in the YAML")
        fixed["epochs"] = epochs
    try:  # the smoke block's fixed values, --epochs and the benchmark's recipe, against the declaration too
        params = method.resolve(fixed, bench.recipe)
    except KnobError as exc:
        raise UsageError(f"{exc} (from {space.path}'s fixed/smoke values, --epochs or the benchmark's recipe)") \
            from None
    flips = {params["augment"]} | set(next((k.choices for k in space.knobs if k.name == "augment"), None) or ())
    if flips & {"flip", "crop_flip"} and not bench.hflip_invariant:
        raise UsageError(f"augment flips images, but horizontal flips change {bench.name}'s labels (the benchmark "
                         f"declares hflip_invariant false); use augment: none")
    label = Path(opts.benchmark).stem if data.is_custom(opts.benchmark) else opts.benchmark
    name = opts.name or f"{method.name}-{label}-{time.strftime('%Y%m%d-%H%M%S')}"
    if not name.replace("-", "").replace("_", "").replace(".", "").isalnum():
        raise UsageError(f"--name may hold letters, digits, '-', '_' and '.' only, got {name!r}")
    if len(name) > MAX_NAME:
        raise UsageError(f"--name may be at most {MAX_NAME} characters (it names folders and runs), got {len(name)}")
    uri = runs.resolve_tracking_uri(opts.tracking_uri)
    try:
        runs.check_store(uri)
    except ConnectionError as exc:
        raise UsageError(str(exc)) from None
    storage = opts.storage_path or "ray_results"
    if "://" not in storage:
        storage = str(Path(storage).resolve())
        _check_storage(Path(storage))
    if opts.address:
        _check_address(opts.address)
    if opts.batch_size is not None and opts.batch_size < 0:
        raise UsageError(f"--batch-size must be 0 (one Tune trial per configuration) or more, got {opts.batch_size}")
    study_url = study.storage_url(opts.optuna_storage, uri, storage)
    study.check(study_url, name, resume=resuming)
    num_samples = opts.num_samples or smoke.get("num_samples") or space.num_samples
    notes = []
    if not space.knobs and num_samples > 1:
        notes.append(f"{method.name} searches no knob: running 1 trial ({num_samples} would be identical; "
                     f"--seeds N repeats it with other seeds)")
        num_samples = 1
    if not bench.trainable and not opts.model:
        raise UsageError(f"{bench.name} is for scoring a given network: pass --model (e.g. "
                         f"openood:resnet18_224x224 --weights best.ckpt, or torchvision:resnet50 --weights FILE)")
    model = _check_model(opts, method, bench) if opts.model else None
    posthoc = not method.trains() and not any(k.name in method.network_knobs() for k in space.knobs)
    batch_size = (BATCH_SIZE if opts.batch_size is None else opts.batch_size) if posthoc else 0
    return Prepared(opts, space, bench, name, uri, storage, num_samples,
                    opts.max_concurrent or smoke.get("max_concurrent") or space.max_concurrent, fixed, resources,
                    notes=notes, batch_size=batch_size, study_storage=study_url, model=model)


def _check_model(opts: SweepOptions, method, bench: Benchmark) -> dict[str, Any]:
    """``--model``: a post-hoc method, a readable weights file, layers that exist, outputs that fit the benchmark's
    classes and images — checked by building it and running it on two images, before Ray starts."""
    import dataclasses

    import torch

    from orchestrator.models import external

    if method.trains() and not method.finetunes:
        raise UsageError(f"--model works with post-hoc and fine-tuning methods (UM, UMAP, MODE, OAML); "
                         f"{method.name} trains its own network from scratch")
    try:
        spec = external.parse(opts.model, opts.weights, opts.model_layers)
        model = external.build(spec, bench.num_classes, *bench.mean_std())
        images = torch.as_tensor(bench.id_val.x[:2]).float() / 255.0
        external.check_on(model, spec, images)
    except external.ModelError as exc:
        raise UsageError(str(exc)) from None
    return dataclasses.asdict(spec)


def prepare_resume(target: str, storage_path: str | None = None, **overrides) -> Prepared:
    """Re-validate an interrupted sweep from its saved state (a sweep name, or its results folder)."""
    folder = Path(target) if Path(target).is_dir() else Path(storage_path or "ray_results").resolve() / target
    saved = state.read(folder)
    state.check_trusted(folder)
    opts = SweepOptions(**{**saved["options"], **{k: v for k, v in overrides.items() if v is not None}})
    opts.name, opts.storage_path = folder.name, str(folder.parent)
    prep = prepare(opts, resuming=True)
    prep.resume = saved
    return prep


def _check_storage(folder: Path) -> None:
    """The local results folder must be (or become) a writable folder."""
    existing = next((p for p in (folder, *folder.parents) if p.exists()), None)
    if existing is not None and not existing.is_dir():
        raise UsageError(f"--storage-path {folder}: {existing} is a file, not a folder")
    if existing is not None and not os.access(existing, os.W_OK | os.X_OK):
        raise UsageError(f"--storage-path {folder}: {existing} is not writable by this user")


def _check_address(address: str) -> None:
    """A cluster address must answer within ADDRESS_TIMEOUT seconds (``ray.init`` itself retries for minutes)."""
    import socket

    if address == "auto":
        current = Path(os.environ.get("RAY_TMPDIR", "/tmp/ray")) / "ray_current_cluster"
        if not current.is_file():
            raise UsageError("--address auto: no Ray cluster was started on this machine (ray start --head); "
                             "drop --address to start a private one")
        address = current.read_text().strip()
    target = address.split("://", 1)[-1].rsplit("/", 1)[0]
    host, _, port = target.rpartition(":")
    if not port.isdigit():
        raise UsageError(f"--address {address!r}: expected HOST:PORT (e.g. 127.0.0.1:6379), ray://HOST:PORT or auto")
    try:
        socket.create_connection((host or "127.0.0.1", int(port)), timeout=ADDRESS_TIMEOUT).close()
    except OSError as exc:
        raise UsageError(f"--address {address}: nothing answers there within {ADDRESS_TIMEOUT:.0f} s ({exc}); "
                         f"start the cluster (ray start --head) or drop --address") from None
