"""``python -m orchestrator``: sweep, list, ui.

Heavy libraries (torch, Ray, MLflow) are imported inside the commands that need them, so ``--help``
answers at once. Bad input prints one line on stderr and exits with code 2, before anything is written.
"""
from __future__ import annotations

import argparse
import contextlib
import math
import sys

#: The range of every numeric flag of every command (a flag means the same wherever it appears), checked before a
#: command runs: flag -> (lowest, highest or None). tests/test_numeric_flags.py fails for a numeric flag missing
#: here. Checks that depend on other values stay where those are known (orchestrator.sweep.prepare).
NUMERIC_FLAGS: dict[str, tuple[float, float | None]] = {
    "--num-samples": (1, None), "--max-concurrent": (1, None), "--epochs": (1, None),
    "--seed": (0, 2**32 - 1),  # NumPy's and Optuna's samplers take seeds below 2**32
    "--cpus-per-trial": (0, None), "--gpus-per-trial": (0, None), "--num-cpus": (1, None), "--num-gpus": (0, None),
    "--grace-period": (1, None), "--reduction-factor": (2, None), "--report-seconds": (0, None),
    "--max-failures": (0, None), "--seeds": (0, None), "--batch-size": (0, None), "--port": (1, 65535),
    "--store-retry-seconds": (0, None), "--max-concurrent-sweeps": (1, None),
}
STORE_RETRY_HELP = ("how long a tracking server or Optuna database may stay silent before the sweep's records go to "
                    "its spool (python -m orchestrator sync replays them; default 300)")


def _sweep_parser(sub) -> None:
    p = sub.add_parser("sweep", help="run an Optuna search over a method's search space on Ray Tune",
                       description="Run an Optuna (seeded TPE) search over search_spaces/<METHOD>.yaml; every trial "
                                   "is a Ray Tune trainable, every result an MLflow child run.")
    p.add_argument("method", help="method name (see `list`)")
    p.add_argument("--benchmark", default="digits",
                   help="benchmark name (default: digits, needs no download), or a custom benchmark YAML "
                        "(docs/how-to/custom-benchmark.md)")
    p.add_argument("--num-samples", type=int, help="number of trials (default: the YAML's budget)")
    p.add_argument("--max-concurrent", type=int, help="trials at once (default: the YAML's budget)")
    p.add_argument("--epochs", type=int, help="override the training epochs")
    p.add_argument("--seed", type=int, default=0, help="seed of the sampler and of training (default 0)")
    p.add_argument("--name", help="sweep name (default: <method>-<benchmark>-<time>)")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default: sqlite:///mlflow.db here)")
    p.add_argument("--storage-path", help="Ray Tune results folder or URI (default: ./ray_results)")
    p.add_argument("--address", help="existing Ray cluster address, e.g. auto (default: start a local one)")
    p.add_argument("--smoke-test", action="store_true", help="tiny data and budget (2 trials, 1 epoch), for CI")
    p.add_argument("--search-space", help="a search-space YAML instead of search_spaces/<method>.yaml")
    p.add_argument("--data-root", help="folder holding datasets (checked before system paths and downloads)")
    p.add_argument("--cache-dir", help="model/feature cache (default: $OODSWEEP_CACHE or ~/.cache/oodsweep)")
    p.add_argument("--cpus-per-trial", type=float, help="CPUs per trial (default: the YAML's resources, else 1)")
    p.add_argument("--gpus-per-trial", type=float,
                   help="GPUs per trial, fractions allowed (default: the YAML's resources, else 0); trials use CUDA "
                        "when Ray gives them a GPU")
    p.add_argument("--num-cpus", type=int, help="CPUs of the local Ray instance (default: all)")
    p.add_argument("--num-gpus", type=int, help="GPUs of the local Ray instance (default: detected)")
    p.add_argument("--scheduler", default="none", choices=["none", "asha"],
                   help="early stopping on the per-epoch validation metric (default none)")
    p.add_argument("--grace-period", type=int, default=1, help="ASHA: epochs before a trial may be stopped")
    p.add_argument("--reduction-factor", type=int, default=2, help="ASHA: keep 1/N of trials per rung")
    p.add_argument("--report-seconds", type=float, default=5.0,
                   help="a training trial reports to Tune at most this often, besides ASHA's milestones and its "
                        "last epoch; every epoch still reaches MLflow (default 5; 0: report every epoch)")
    p.add_argument("--objective", action="append", metavar="METRIC[:max|min]",
                   help="optimise this metric (repeat for multi-objective, e.g. --objective val/auroc:max "
                        "--objective val/acc:max); default: the YAML's metric")
    p.add_argument("--resume", metavar="SWEEP",
                   help="continue an interrupted sweep (its name, with the same --storage-path, or its results "
                        "folder): finished trials are kept, unfinished ones continue from their checkpoints")
    p.add_argument("--no-dashboard", action="store_true", help="do not start the Ray dashboard")
    p.add_argument("--dashboard-host", default="127.0.0.1",
                   help="dashboard bind address (default 127.0.0.1; the Jobs API runs code for whoever reaches it)")
    p.add_argument("--fpr-convention", default="classic", choices=["classic", "openood"],
                   help="FPR@95 convention (default classic: OOD accepted at 95%% ID acceptance)")
    p.add_argument("--experiment", default="oodsweep", help="MLflow experiment name (default oodsweep)")
    p.add_argument("--max-failures", type=int, default=2,
                   help="retries of a failed trial (e.g. a lost node) from its last checkpoint (default 2)")
    p.add_argument("--seeds", type=int, default=0, metavar="N",
                   help="re-run the best configuration with N more seeds; mean ± std logged to the parent run")
    p.add_argument("--seeds-every-trial", action="store_true", help="with --seeds: re-run every trial's configuration")
    p.add_argument("--no-figures", action="store_true", help="skip the sweep's figures (heatmap, ROC, Optuna plots)")
    p.add_argument("--quiet", action="store_true", help="print only the final summary")
    p.add_argument("--model", metavar="SPEC",
                   help="score your own network instead of training one (post-hoc methods): torchvision:NAME, "
                        "timm:NAME, openood:resnet18_32x32|resnet18_224x224, or package.module:function")
    p.add_argument("--weights", metavar="FILE", help="--model's state dict (loaded with weights_only=True)")
    p.add_argument("--model-layers", metavar="HEAD[,FEATURE_MAP]",
                   help="--model's final linear layer and last feature-map layer (default: fc,layer4 for ResNets, "
                        "else the last nn.Linear)")
    p.add_argument("--batch-size", type=int, metavar="N",
                   help="a search whose knobs are all post-hoc scores N configurations per Ray actor call, each still "
                        "one Optuna trial and one MLflow run (default 4; 0: one Ray Tune trial per configuration)")
    p.add_argument("--optuna-storage", metavar="URL",
                   help="Optuna RDB storage of the sweep's study (default: optuna.db beside a SQLite MLflow store, "
                        "else in --storage-path); open it with optuna-dashboard URL")
    p.add_argument("--store-retry-seconds", type=float, metavar="S", help=STORE_RETRY_HELP)
    p.add_argument("--max-id-acc-drop", metavar="POINTS|none",
                   help="methods that train: a configuration is chosen only if its ID validation accuracy is at most "
                        "POINTS below the cross-entropy classifier's of the same recipe and seed (default: the YAML's "
                        "max_id_acc_drop, else 1.0; none: off; docs/constrained_selection.md)")


def _cmd_sweep(args) -> int:
    from orchestrator.errors import UsageError
    from orchestrator.sweep import constraint
    from orchestrator.sweep.prepare import SweepOptions, prepare, prepare_resume
    from orchestrator.sweep.runner import print_summary, run

    if args.max_id_acc_drop is not None:
        if args.resume:
            raise UsageError("--max-id-acc-drop: a resumed sweep keeps the ID-accuracy margin it started with")
        constraint.check_margin(args.max_id_acc_drop, "--max-id-acc-drop")
    if args.resume:
        check_resume_options(args)
        prep = prepare_resume(args.resume, args.storage_path, quiet=args.quiet or None, address=args.address,
                              cache_dir=args.cache_dir, num_cpus=args.num_cpus, num_gpus=args.num_gpus,
                              dashboard=False if args.no_dashboard else None,
                              dashboard_host=args.dashboard_host if args.dashboard_host != "127.0.0.1" else None)
        if prep.opts.method != args.method:
            raise UsageError(f"sweep {prep.name} ran method {prep.opts.method!r}, not {args.method!r}")
    else:
        prep = prepare(SweepOptions(
            method=args.method, benchmark=args.benchmark, num_samples=args.num_samples,
            max_concurrent=args.max_concurrent, epochs=args.epochs, seed=args.seed, name=args.name,
            tracking_uri=args.tracking_uri, storage_path=args.storage_path, address=args.address,
            smoke_test=args.smoke_test, search_space=args.search_space, data_root=args.data_root,
            cache_dir=args.cache_dir, cpus_per_trial=args.cpus_per_trial, gpus_per_trial=args.gpus_per_trial,
            num_cpus=args.num_cpus, num_gpus=args.num_gpus, dashboard=not args.no_dashboard,
            dashboard_host=args.dashboard_host, convention=args.fpr_convention, experiment=args.experiment,
            max_failures=args.max_failures, scheduler=args.scheduler, grace_period=args.grace_period,
            reduction_factor=args.reduction_factor, report_seconds=args.report_seconds, objectives=args.objective,
            seeds=args.seeds, seeds_every_trial=args.seeds_every_trial, figures=not args.no_figures,
            quiet=args.quiet, batch_size=args.batch_size, optuna_storage=args.optuna_storage, model=args.model,
            weights=args.weights, model_layers=args.model_layers))
    if args.max_id_acc_drop is not None:
        constraint.set_margin(prep, args.max_id_acc_drop, "--max-id-acc-drop")
    if not args.resume:
        constraint.check(prep)
    result = run(prep)
    print_summary(result, prep.space.metric)
    if result.spooled:  # docs/store_outages.md
        print(f"error: {result.spool_line()}", file=sys.stderr)
    if result.interrupted:
        from orchestrator.sweep.interrupt import EXIT_CODES

        return EXIT_CODES[result.interrupted]
    if result.spooled:
        return 3
    return 0 if result.best_matrix is not None else 1


#: ``list``'s words for each of ``methods.registry.READS``.
READ_LABELS = {"logits": "the logits", "features": "the penultimate features (and logits)",
               "head": "the features and the final layer (weight and bias, cached with the outputs)",
               "feature map": "the last feature map (cached)",
               "network": "the network itself (input gradients, training images or intermediate blocks)"}


def _cmd_list(args) -> int:
    """Everything registered, read from source: no torch, no Ray."""
    import methods
    from methods.registry import READS
    from orchestrator import data, search_space
    from orchestrator.models import BACKBONES
    from orchestrator.recipe import RECIPE

    print("Methods (python -m orchestrator sweep <method>), by what they read of the classifier, with their declared "
          "knobs:")
    catalog = methods.catalog()
    posthoc = [m for m in catalog if m["kind"] == "post-hoc"]
    groups = [(f"Post-hoc, reading {READ_LABELS[reads]}:", [m for m in posthoc if m["reads"] == reads])
              for reads in READS]
    groups.append(("Post-hoc, reading what they do not declare (set the class attribute reads):",
                   [m for m in posthoc if m["reads"] not in READS]))
    groups.append(("Training their own network (trains: from scratch; fine-tunes: the cross-entropy classifier):",
                   [m for m in catalog if m["kind"] != "post-hoc"]))
    for title, rows in groups:
        if rows:
            print(f"\n {title}")
        for m in rows:
            sub = f" [substitute: {m['substitute']}]" if m["substitute"] else ""
            print(f"  {m['name']:<12} {m['kind']:<10} {m['paper']}{sub}")
            for knob in m["knobs"]:
                print(f"      {knob.describe()}")
            if m["error"]:
                print(f"      INVALID declaration: {m['error']}")
    print("\nRecipe knobs (every method; a benchmark sets their values; all retrain):")
    for knob in RECIPE:
        print(f"      {knob.describe()}")
    print("\nBenchmarks (--benchmark, or a custom benchmark YAML):")
    for name, desc in data.available().items():
        print(f"  {name:<14} {desc}")
    print("\nBackbones (recipe knob backbone):")
    for name, entry in BACKBONES.entries().items():
        print(f"  {name:<14} {entry.info.get('description', '')}")
    print("\nSearch spaces (search_spaces/<method>.yaml):")
    for name in search_space.available():
        try:
            s = search_space.load(name)
            knobs = "; ".join(k.describe() for k in s.knobs) or "no searched knob"
            print(f"  {name:<12} {s.mode} {s.metric}, {s.num_samples} trials: {knobs}")
        except search_space.SearchSpaceError as exc:
            print(f"  {name:<12} INVALID: {exc}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m orchestrator",
                                     description="oodsweep: sweep OOD detectors with Ray Tune, Optuna and MLflow.")
    sub = parser.add_subparsers(dest="command", required=True)
    _sweep_parser(sub)
    sub.add_parser("list", help="methods, benchmarks and search spaces")
    ui = sub.add_parser("ui", help="start the MLflow UI on a sweep's store (bound to 127.0.0.1)")
    ui.add_argument("--tracking-uri", help="the store (default: sqlite:///mlflow.db here)")
    ui.add_argument("--host", default="127.0.0.1",
                    help="bind address (default 127.0.0.1; anything else exposes every run to the network)")
    ui.add_argument("--port", type=int, default=5000)
    ui.add_argument("--server", action="store_true",
                    help="run `mlflow server` (REST API for sweeps on other machines) instead of `mlflow ui`")
    _benchmark_parser(sub)
    from orchestrator.tracking import report, sync

    report.add_parser(sub)
    sync.add_parser(sub)
    return parser


def numeric_actions(parser: argparse.ArgumentParser) -> dict[str, list[argparse.Action]]:
    """{command: its flags that take an int or a float} (argparse offers no public way to list its actions)."""
    subs = next(a for a in parser._actions if isinstance(a.choices, dict))
    return {name: [a for a in sub._actions if a.option_strings and a.type in (int, float)]
            for name, sub in subs.choices.items()}


def check_numbers(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """UsageError for the first numeric flag of ``args`` outside its range (:data:`NUMERIC_FLAGS`)."""
    from orchestrator.errors import UsageError

    for action in numeric_actions(parser).get(args.command, []):
        value, flag = getattr(args, action.dest, None), max(action.option_strings, key=len)
        if value is None or flag not in NUMERIC_FLAGS:
            continue
        low, high = NUMERIC_FLAGS[flag]
        if math.isfinite(value) and value >= low and (high is None or value <= high):
            continue
        if high is not None:
            raise UsageError(f"{flag} must be between {low:g} and {high:g}, got {value}")
        raise UsageError(f"{flag} must be {'0 or more' if low == 0 else f'at least {low:g}'}, got {value}")


def _benchmark_parser(sub) -> None:
    p = sub.add_parser("benchmark", help="run a study (entries × benchmarks × seeds) and write its leaderboard",
                       description="Run every sweep of STUDY.yaml in one Ray job and write a leaderboard with paired "
                                   "bootstrap intervals against each entry's baseline. Running it again continues "
                                   "the study. Format: docs/tutorials/study.md.")
    p.add_argument("study", metavar="STUDY.yaml")
    p.add_argument("--dry-run", action="store_true", help="print the sweeps, trials and trainings; run nothing")
    p.add_argument("--out", help="leaderboard folder (default: <storage-path>/<study>)")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default: sqlite:///mlflow.db here)")
    p.add_argument("--storage-path", help="results folder (default: ./ray_results)")
    p.add_argument("--address", help="existing Ray cluster address, e.g. auto (default: start a local one)")
    p.add_argument("--data-root", help="folder holding datasets")
    p.add_argument("--cache-dir", help="model/feature cache (default: $OODSWEEP_CACHE or ~/.cache/oodsweep)")
    p.add_argument("--cpus-per-trial", type=float, help="CPUs per trial (default: each YAML's, else 1)")
    p.add_argument("--gpus-per-trial", type=float, help="GPUs per trial (default: each YAML's, else 0)")
    p.add_argument("--num-cpus", type=int, help="CPUs of the local Ray instance (default: all)")
    p.add_argument("--num-gpus", type=int, help="GPUs of the local Ray instance (default: detected)")
    p.add_argument("--experiment", default="oodsweep", help="MLflow experiment name (default oodsweep)")
    p.add_argument("--no-dashboard", action="store_true", help="do not start the Ray dashboard")
    p.add_argument("--no-figures", action="store_true", help="skip each sweep's figures (the leaderboard's stays)")
    p.add_argument("--max-concurrent-sweeps", type=int, metavar="N",
                   help="sweeps at once at most (default: the study's max_concurrent_sweeps, else as many as the "
                        "cluster's free resources allow; docs/study_concurrency.md)")
    p.add_argument("--store-retry-seconds", type=float, metavar="S", help=STORE_RETRY_HELP)
    p.add_argument("--rerun", action="append", metavar="ENTRY",
                   help="delete this entry's sweeps (MLflow runs, Optuna studies, results folders) and run them "
                        "again, e.g. after editing its search space (repeatable); without it a study refuses an entry "
                        "that changed since its sweeps ran")


#: What ``sweep --resume`` takes from its command line: where the sweep is, and this run's machine (Ray instance,
#: dashboard, cache, output). Every other option defines the sweep, which continues with the values it started with.
RESUME_OPTIONS = frozenset({"method", "resume", "storage_path", "quiet", "address", "cache_dir", "num_cpus",
                            "num_gpus", "no_dashboard", "dashboard_host", "store_retry_seconds"})


def check_resume_options(args) -> None:
    """UsageError (one line) for an option given with ``--resume`` that a resume would ignore (``--epochs 1`` must not
    look as if it shortened the resumed trials)."""
    from orchestrator.errors import UsageError

    defaults = vars(build_parser().parse_args(["sweep", args.method]))
    for dest, value in vars(args).items():
        if dest not in RESUME_OPTIONS and dest in defaults and value != defaults[dest]:
            flag = "--" + dest.replace("_", "-")
            allowed = ", ".join("--" + d.replace("_", "-") for d in sorted(RESUME_OPTIONS - {"method", "resume"}))
            raise UsageError(f"{flag}: a resumed sweep keeps the options it started with; leave {flag} out (a resume "
                             f"takes only {allowed})")


def _cmd_benchmark(args) -> int:
    from orchestrator.benchmark.run import run

    common = dict(tracking_uri=args.tracking_uri, storage_path=args.storage_path, address=args.address,
                  data_root=args.data_root, cache_dir=args.cache_dir, cpus_per_trial=args.cpus_per_trial,
                  gpus_per_trial=args.gpus_per_trial, num_cpus=args.num_cpus, num_gpus=args.num_gpus,
                  experiment=args.experiment, dashboard=not args.no_dashboard, figures=not args.no_figures)
    return run(args.study, common, dry_run=args.dry_run, out=args.out, argv=sys.argv[1:] if argv_is_cli() else None,
               max_concurrent_sweeps=args.max_concurrent_sweeps, rerun=args.rerun)


def argv_is_cli() -> bool:
    """True when this process was started as ``python -m orchestrator`` (so sys.argv is the command)."""
    return bool(sys.argv) and sys.argv[0].endswith(("__main__.py", "oodsweep"))


def _cmd_ui(args) -> int:
    import os

    from orchestrator.errors import UsageError
    from orchestrator.tracking.runs import resolve_tracking_uri

    uri = resolve_tracking_uri(args.tracking_uri)
    if uri.startswith("sqlite:///") and not os.path.exists(uri[len("sqlite:///"):]):
        raise UsageError(f"no MLflow store at {uri[len('sqlite:///'):]}; run a sweep first or pass --tracking-uri")
    cmd = [sys.executable, "-m", "mlflow", "server" if args.server else "ui", "--backend-store-uri", uri,
           "--host", args.host, "--port", str(args.port)]
    kind = "server" if args.server else "UI"
    print(f"MLflow {kind} on http://{args.host}:{args.port}  (store {uri}); Ctrl-C stops it",
          flush=True)
    return _serve(cmd)


def _serve(cmd: list[str]) -> int:
    """Run the server in its own process group and stop that group on Ctrl-C *and* SIGTERM (a bare SIGTERM to
    this process would otherwise leave the server running). Exit 130/143 when stopped by a signal."""
    import os
    import signal
    import subprocess

    proc = subprocess.Popen(cmd, start_new_session=True)
    received: list[int] = []

    def stop(signum, frame):
        received.append(signum)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        try:
            code = proc.wait()
        except KeyboardInterrupt:
            stop(signal.SIGINT, None)
            code = proc.wait()
        if received:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=10)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)  # whatever of the server is still there
            return 128 + received[0]
        return code
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from orchestrator.errors import UsageError

    try:
        from orchestrator.tracking import report, sync
        from orchestrator.tracking.writer import set_retry_seconds

        check_numbers(parser, args)
        if getattr(args, "store_retry_seconds", None) is not None:
            set_retry_seconds(args.store_retry_seconds)
        return {"sweep": _cmd_sweep, "list": _cmd_list, "ui": _cmd_ui, "report": report.run,
                "benchmark": _cmd_benchmark, "sync": sync.run}[args.command](args)
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
