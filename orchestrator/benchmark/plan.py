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
    entries:
      msp: {}                        # no knob: one trial
      energy: {num_samples: 4, baseline: msp}
      odin-fixed: {method: odin, fixed: {temperature: 1000.0, epsilon: 0.0014}, baseline: msp}
"""
from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from orchestrator.errors import UsageError

STUDY_KEYS = {"name", "benchmarks", "seeds", "smoke_test", "fpr_convention", "entries", "max_concurrent"}
ENTRY_KEYS = {"method", "search_space", "num_samples", "fixed", "baseline", "epochs", "max_concurrent"}


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


@dataclass
class PlannedSweep:
    entry: Entry
    benchmark: str
    seed: int
    name: str
    prep: Any = None  # orchestrator.sweep.prepare.Prepared
    trainings: int = 0  # networks this sweep would train on an empty cache (shared ones counted once per study)


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
                             settings.get("max_concurrent")))
    labels = {e.label for e in entries}
    for e in entries:
        if e.baseline is not None and e.baseline not in labels:
            _fail(p, f"entries.{e.label}.baseline {e.baseline!r} is not an entry (entries: {sorted(labels)})")
        if e.baseline == e.label:
            _fail(p, f"entries.{e.label} cannot be its own baseline")
    name = str(raw.get("name") or p.stem)
    if not name.replace("-", "").replace("_", "").replace(".", "").isalnum():
        _fail(p, f"name may hold letters, digits, '-', '_' and '.' only, got {name!r}")
    return StudySpec(name, p.resolve(), benchmarks, seeds, entries, bool(raw.get("smoke_test", False)),
                     str(raw.get("fpr_convention", "classic")), raw.get("max_concurrent"))


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
                    except UsageError as exc:
                        raise UsageError(f"{spec.path}: entries.{entry.label} on {bench}, seed {seed}: {exc}") \
                            from None
                    sweep = PlannedSweep(entry, bench, seed, name, prep)
                    method = methods.get(entry.method)
                    recipe = tuple(sorted((k, str(v)) for k, v in prep.fixed.items() if k in prep.bench.recipe))
                    base = (bench, seed, recipe)
                    if method.trains():
                        sweep.trainings = prep.num_samples
                        if method.finetunes and base not in trained:
                            trained.add(base)
                            sweep.trainings += 1
                    elif base not in trained:
                        trained.add(base)
                        sweep.trainings = 1
                    plan.sweeps.append(sweep)
    return plan


def describe(plan: Plan) -> str:
    """The dry run's text: every sweep, and the totals."""
    lines = [f"Study {plan.spec.name}: {len(plan.spec.entries)} entries × {len(plan.spec.benchmarks)} benchmark(s) × "
             f"{len(plan.spec.seeds)} seed(s) = {len(plan.sweeps)} sweeps"]
    for s in plan.sweeps:
        base = f", compared with {s.entry.baseline}" if s.entry.baseline else ""
        space = "fixed configuration" if s.entry.fixed is not None else f"{len(s.prep.space.knobs)} searched knob(s)"
        lines.append(f"  {s.name}: {s.entry.method} ({space}), {s.prep.num_samples} trial(s), "
                     f"{s.trainings} training(s){base}")
    lines.append(f"Total: {plan.trials} trials, {plan.trainings} network trainings on an empty cache "
                 f"(post-hoc entries share one classifier per benchmark and seed)")
    return "\n".join(lines)
