"""A study file (``STUDY.yaml``) read, checked and expanded into the sweeps it stands for.

A study is entries × benchmarks × seeds. An entry is a method with its search space (the bundled YAML, or
``search_space: FILE``) and trial budget, or with a ``fixed`` configuration (one trial, nothing searched), and the
entry it is compared with (``baseline``). One sweep per (entry, benchmark, seed); ``--seed`` of that sweep sets
the network's initialisation, the data order and the sampler, so seeds are independent repeats of the whole
selection. Everything is validated through :func:`orchestrator.sweep.prepare.prepare` before anything runs.

.. code-block:: yaml

    name: smoke                      # default: the file's stem
    benchmarks: [digits]
    seeds: [0, 1]
    smoke_test: true                 # tiny data, 1 epoch (CI)
    fpr_convention: classic
    max_concurrent_sweeps: 4         # default: as many as the cluster's free resources allow
    entries:
      msp: {}                        # no knob: one trial
      energy: {num_samples: 4, baseline: msp}
      odin-fixed: {method: odin, fixed: {temperature: 1000.0, epsilon: 0.0014}, baseline: msp}
      oe: {baseline: msp, max_id_acc_drop: 2.0}   # an entry's, else the study's, else its search space's margin

``max_id_acc_drop`` (study or entry; points, or none): the ID-accuracy constraint of the sweeps whose method trains
(:mod:`orchestrator.sweep.constraint`); a trained method's sweep then also needs the cross-entropy classifier of
its benchmark and seed as its reference (counted in the dry run's trainings).

``max_concurrent_sweeps`` (or ``--max-concurrent-sweeps``): sweeps at once at most; by default as many as the
cluster's free resources allow (:mod:`orchestrator.benchmark.schedule`, docs/study_concurrency.md).
"""
from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from orchestrator.errors import UsageError

STUDY_KEYS = {"name", "benchmarks", "seeds", "smoke_test", "fpr_convention", "entries", "max_concurrent",
              "max_id_acc_drop", "max_concurrent_sweeps"}
ENTRY_KEYS = {"method", "search_space", "num_samples", "fixed", "baseline", "epochs", "max_concurrent",
              "max_id_acc_drop"}


@dataclass
class Entry:
    label: str
    method: str
    search_space: str | None = None
    num_samples: int | None = None
    fixed: dict[str, Any] | None = None
    baseline: str | None = None
    epochs: int | None = None
    max_concurrent: int | None = None
    #: The ID-accuracy margin (orchestrator.sweep.constraint) when the entry sets one (``margin_given``; None: off).
    max_id_acc_drop: float | None = None
    margin_given: bool = False


@dataclass
class StudySpec:
    name: str
    path: Path
    benchmarks: list[str]
    seeds: list[int]
    entries: list[Entry]
    smoke_test: bool = False
    convention: str = "classic"
    max_concurrent: int | None = None
    #: The ID-accuracy margin of every entry that sets none itself, when the study sets one (``margin_given``).
    max_id_acc_drop: float | None = None
    margin_given: bool = False
    #: Sweeps at once at most (None: as many as the cluster's free resources allow; orchestrator.benchmark.schedule).
    max_concurrent_sweeps: int | None = None


@dataclass
class PlannedSweep:
    entry: Entry
    benchmark: str
    seed: int
    name: str
    prep: Any = None  # orchestrator.sweep.prepare.Prepared
    trainings: int = 0  # networks this sweep would train on an empty cache (shared ones counted once per study)
    #: {model-cache key: what it is} of the networks it reads that other sweeps may read too (:func:`shared_networks`)
    networks: dict[str, str] = field(default_factory=dict)
    #: Its work and that of training one of ``networks``, in epoch-trials (only the order of sweeps depends on it).
    cost: float = 0.0
    network_cost: float = 0.0


@dataclass
class Plan:
    spec: StudySpec
    sweeps: list[PlannedSweep] = field(default_factory=list)

    @property
    def trials(self) -> int:
        return sum(s.prep.num_samples for s in self.sweeps)

    @property
    def trainings(self) -> int:
        return sum(s.trainings for s in self.sweeps)


def definition(s: PlannedSweep) -> str:
    """A digest of what a planned sweep's results depend on — method, benchmark (and its data), seed, searched knobs
    and their ranges, fixed values, trials, epochs, objectives, ID-accuracy margin — so that a study run again can
    tell a finished sweep that its file no longer describes (a search space edited since) from one it does."""
    import dataclasses
    import hashlib
    import json

    prep = s.prep
    what = {"method": s.entry.method, "benchmark": s.benchmark, "data": prep.bench.fingerprint(), "seed": s.seed,
            "knobs": [dataclasses.asdict(k) for k in prep.space.knobs], "fixed": prep.fixed,
            "num_samples": prep.num_samples, "epochs": prep.opts.epochs, "objectives": prep.space.objectives,
            "max_id_acc_drop": prep.space.max_id_acc_drop, "smoke_test": prep.opts.smoke_test}
    return hashlib.sha256(json.dumps(what, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _fail(path: Path, msg: str):
    raise UsageError(f"{path}: {msg}")


def load(path: str) -> StudySpec:
    """Read and check the study file (keys, types, baselines); one line per error, exit 2."""
    p = Path(path)
    if not p.is_file():
        raise UsageError(f"study file {path} not found")
    try:
        raw = yaml.safe_load(p.read_text())
    except yaml.YAMLError as exc:
        raise UsageError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(raw, dict):
        _fail(p, "expected a mapping with benchmarks, seeds and entries")
    unknown = set(raw) - STUDY_KEYS
    if unknown:
        _fail(p, f"unknown keys {sorted(unknown)} (allowed: {sorted(STUDY_KEYS)})")
    for key in ("benchmarks", "seeds", "entries"):
        if not raw.get(key):
            _fail(p, f"'{key}' is missing or empty")
    benchmarks = raw["benchmarks"]
    if not isinstance(benchmarks, list) or not all(isinstance(b, str) for b in benchmarks):
        _fail(p, f"benchmarks must be a list of names or custom YAML files, got {benchmarks!r}")
    seeds = raw["seeds"]
    if not isinstance(seeds, list) or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds):
        _fail(p, f"seeds must be a list of integers, got {seeds!r}")
    if len(set(seeds)) != len(seeds):
        _fail(p, f"seeds repeat a value ({seeds}): n counts distinct seeds")
    if not isinstance(raw["entries"], dict):
        _fail(p, "entries must map a label to its settings (e.g. energy: {num_samples: 8, baseline: msp})")
    entries = []
    for label, settings in raw["entries"].items():
        settings = settings or {}
        if not isinstance(settings, dict):
            _fail(p, f"entries.{label} must be a mapping, got {settings!r}")
        bad = set(settings) - ENTRY_KEYS
        if bad:
            _fail(p, f"entries.{label}: unknown keys {sorted(bad)} (allowed: {sorted(ENTRY_KEYS)})")
        if settings.get("fixed") is not None and not isinstance(settings["fixed"], dict):
            _fail(p, f"entries.{label}.fixed must map knobs to values, got {settings['fixed']!r}")
        if settings.get("fixed") is not None and settings.get("search_space"):
            _fail(p, f"entries.{label}: give fixed or search_space, not both")
        for key in ("num_samples", "epochs", "max_concurrent"):
            value = settings.get(key)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
                _fail(p, f"entries.{label}.{key} must be a positive integer, got {value!r}")
        if not str(label).replace("-", "").replace("_", "").replace(".", "").isalnum():
            _fail(p, f"entry label {label!r} may hold letters, digits, '-', '_' and '.' only")
        space = settings.get("search_space")
        if space is not None:
            space = str((p.parent / space).resolve())
        entries.append(Entry(str(label), str(settings.get("method", label)), space, settings.get("num_samples"),
                             settings.get("fixed"), settings.get("baseline"), settings.get("epochs"),
                             settings.get("max_concurrent"), *_margin(p, settings, f"entries.{label}.")))
    labels = {e.label for e in entries}
    for e in entries:
        if e.baseline is not None and e.baseline not in labels:
            _fail(p, f"entries.{e.label}.baseline {e.baseline!r} is not an entry (entries: {sorted(labels)})")
        if e.baseline == e.label:
            _fail(p, f"entries.{e.label} cannot be its own baseline")
    name = str(raw.get("name") or p.stem)
    if not name.replace("-", "").replace("_", "").replace(".", "").isalnum():
        _fail(p, f"name may hold letters, digits, '-', '_' and '.' only, got {name!r}")
    at_once = raw.get("max_concurrent_sweeps")
    if at_once is not None and (not isinstance(at_once, int) or isinstance(at_once, bool) or at_once < 1):
        _fail(p, f"max_concurrent_sweeps must be a positive integer, got {at_once!r}")
    return StudySpec(name, p.resolve(), benchmarks, seeds, entries, bool(raw.get("smoke_test", False)),
                     str(raw.get("fpr_convention", "classic")), raw.get("max_concurrent"), *_margin(p, raw, ""),
                     max_concurrent_sweeps=at_once)


def _margin(path: Path, settings: dict, where: str) -> tuple[float | None, bool]:
    """(the ``max_id_acc_drop`` of a study or entry mapping, whether it sets one); one line when it is malformed."""
    if "max_id_acc_drop" not in settings:
        return None, False
    from orchestrator.search_space import SearchSpaceError, parse_max_id_acc_drop

    try:
        return parse_max_id_acc_drop(settings["max_id_acc_drop"], f"{path}: {where}max_id_acc_drop"), True
    except SearchSpaceError as exc:
        raise UsageError(str(exc)) from None


def fixed_space(method: str, fixed: dict[str, Any]) -> dict[str, Any]:
    """The search-space YAML of a fixed configuration: the method's own objective, nothing searched, one trial."""
    from orchestrator import search_space

    base = search_space.load(method)
    return {"description": f"{method} with a fixed configuration (study entry)",
            "metric": base.metric, "mode": base.mode, "budget": {"num_samples": 1, "max_concurrent": 1},
            "space": {}, "fixed": {**base.fixed, **fixed}}


def space_file(folder: Path, entry: Entry) -> str | None:
    """The search-space file of ``entry`` (a fixed configuration is written into ``folder``)."""
    if entry.fixed is None:
        return entry.search_space
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{entry.label}.yaml"
    path.write_text(yaml.safe_dump(fixed_space(entry.method, entry.fixed), sort_keys=False))
    return str(path)


def expand(spec: StudySpec, common: dict[str, Any], spaces: Path | None = None,
           started: frozenset[str] = frozenset()) -> Plan:
    """Every sweep of the study, each validated by :func:`prepare` (fixed configurations are written to
    ``spaces``, or a temporary folder for a dry run or a check). ``started``: sweeps an earlier run of this study
    began (their stored Optuna studies are continued, not refused as duplicates)."""
    import methods
    from orchestrator.sweep import constraint
    from orchestrator.sweep.prepare import SweepOptions, prepare

    plan = Plan(spec)
    trained: set[tuple] = set()
    loaded: dict = {}  # each benchmark loaded once, shared by its sweeps (and their evaluator pool)
    with tempfile.TemporaryDirectory() as scratch:
        folder = spaces or Path(scratch)
        for entry in spec.entries:
            try:
                path = space_file(folder, entry)
            except Exception as exc:  # noqa: BLE001 - an unknown method, a malformed bundled YAML: one line
                raise UsageError(f"{spec.path}: entries.{entry.label}: {exc}") from None
            for bench in spec.benchmarks:
                for seed in spec.seeds:
                    label = Path(bench).stem if bench.endswith((".yaml", ".yml")) else bench
                    name = f"{spec.name}-{entry.label}-{label}-s{seed}"
                    opts = SweepOptions(method=entry.method, benchmark=bench, num_samples=entry.num_samples,
                                        max_concurrent=entry.max_concurrent or spec.max_concurrent,
                                        epochs=entry.epochs, seed=seed, name=name, smoke_test=spec.smoke_test,
                                        search_space=path, convention=spec.convention, **common)
                    try:
                        prep = prepare(opts, resuming=name in started, loaded=loaded)
                        for given in (entry, spec):  # the entry's margin, else the study's, else the space's
                            if given.margin_given:
                                prep.space.max_id_acc_drop = given.max_id_acc_drop
                                break
                        constraint.check(prep)
                    except UsageError as exc:
                        raise UsageError(f"{spec.path}: entries.{entry.label} on {bench}, seed {seed}: {exc}") \
                            from None
                    sweep = PlannedSweep(entry, bench, seed, name, prep)
                    method = methods.get(entry.method)
                    recipe = tuple(sorted((k, str(v)) for k, v in prep.fixed.items() if k in prep.bench.recipe))
                    base = (bench, seed, recipe)
                    if method.trains():
                        sweep.trainings = prep.num_samples
                        # the base classifier: a fine-tuning method's start, a constrained method's reference
                        needs_base = method.finetunes or prep.space.max_id_acc_drop is not None
                        if needs_base and base not in trained:
                            trained.add(base)
                            sweep.trainings += 1
                    elif base not in trained:
                        trained.add(base)
                        sweep.trainings = 1
                    sweep.networks = shared_networks(prep)
                    sweep.cost, sweep.network_cost = work_estimate(prep)
                    plan.sweeps.append(sweep)
    return plan


#: A post-hoc configuration's work, in epochs of training one network (for the order of sweeps only): scoring a
#: configuration takes milliseconds to seconds where an epoch takes seconds to minutes.
POSTHOC_TRIAL_COST = 0.02


def shared_networks(prep) -> dict[str, str]:
    """{model-cache key: what it is} of the networks sweep ``prep`` cannot start without and that other sweeps of a
    study may read too: the cross-entropy classifier that a post-hoc method scores or that a fine-tuning method
    starts from — unless a searched knob changes it (each trial then trains its own) or it is the user's
    (``--model``: nothing to train). Computed as the trials compute it (:func:`orchestrator.trial.training_spec`),
    so a study can tell whether it is cached. Not the reference classifier of a constrained method
    (:mod:`orchestrator.sweep.constraint`): its trials train meanwhile, and two sweeps measuring the same reference
    at once train it once anyway (the model cache's lock; the second says that it waits)."""
    import methods
    from orchestrator.cache import config_key
    from orchestrator.recipe import RECIPE_KNOBS
    from orchestrator.trial import CrossEntropyClassifier, base_params, training_spec

    method = methods.get(prep.opts.method)
    if prep.model is not None or any(k.name in RECIPE_KNOBS for k in prep.space.knobs):
        return {}
    params = method.resolve(prep.fixed, prep.bench.recipe)
    settings = prep.trial_settings()
    what = f"the classifier of {prep.bench.name}, seed {prep.opts.seed}"
    if not method.trains():
        if any(k.name in method.network_knobs() for k in prep.space.knobs):
            return {}
        return {config_key(training_spec(method, params, prep.bench, settings)): what}
    if method.finetunes:
        base = training_spec(CrossEntropyClassifier(), base_params(params), prep.bench, settings)
        return {config_key(base): what}
    return {}


def work_estimate(prep) -> tuple[float, float]:
    """(the sweep's work, that of training its shared network) in epoch-trials: trials that train count their
    epochs, post-hoc ones :data:`POSTHOC_TRIAL_COST`."""
    import methods

    method = methods.get(prep.opts.method)
    epochs = float(prep.fixed.get("epochs", prep.bench.recipe.get("epochs", 10)))
    trains = method.trains() or any(k.name in method.network_knobs() for k in prep.space.knobs)
    return prep.num_samples * (epochs if trains else POSTHOC_TRIAL_COST), epochs


def describe(plan: Plan, at_most: int | None = None) -> str:
    """The dry run's text: every sweep, the totals, and how many run at once (``at_most``: the study's
    ``max_concurrent_sweeps`` or ``--max-concurrent-sweeps``)."""
    import methods

    lines = [f"Study {plan.spec.name}: {len(plan.spec.entries)} entries × {len(plan.spec.benchmarks)} benchmark(s) × "
             f"{len(plan.spec.seeds)} seed(s) = {len(plan.sweeps)} sweeps"]
    for s in plan.sweeps:
        base = f", compared with {s.entry.baseline}" if s.entry.baseline else ""
        space = "fixed configuration" if s.entry.fixed is not None else f"{len(s.prep.space.knobs)} searched knob(s)"
        margin = s.prep.space.max_id_acc_drop
        limit = "" if not methods.get(s.entry.method).trains() else (
            ", no ID-accuracy constraint" if margin is None else f", ID accuracy at most {margin:g} pt below CE")
        lines.append(f"  {s.name}: {s.entry.method} ({space}), {s.prep.num_samples} trial(s), "
                     f"{s.trainings} training(s){limit}{base}")
    lines.append(f"Total: {plan.trials} trials, {plan.trainings} network trainings on an empty cache "
                 f"(post-hoc entries share one classifier per benchmark and seed)")
    lines.append(concurrency(plan, at_most))
    return "\n".join(lines)


def concurrency(plan: Plan, at_most: int | None) -> str:
    """How the sweeps share the cluster (:mod:`orchestrator.benchmark.schedule`), with the networks they share."""
    from orchestrator.cache import ModelCache

    cache = ModelCache(plan.sweeps[0].prep.opts.cache_dir if plan.sweeps else None)
    readers: dict[str, list[str]] = {}
    what: dict[str, str] = {}
    for s in plan.sweeps:
        for key, label in s.networks.items():
            readers.setdefault(key, []).append(s.name)
            what[key] = label
    shared = [k for k, names in readers.items() if len(names) > 1 and not cache.has_model(k)]
    at_once = f"at most {at_most}" if at_most else "as many as the cluster's free resources allow"
    text = (f"Sweeps at once: {at_once} (--max-concurrent-sweeps), the longest chains of work first; "
            f"{len(shared)} network(s) not cached yet are read by several sweeps: the first to start trains it, "
            f"the others wait for it while other sweeps run")
    return text + "".join(f"\n  {what[k]} (network {k}): {len(readers[k])} sweeps" for k in shared)
