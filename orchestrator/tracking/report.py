"""``python -m orchestrator report``: a leaderboard across methods and benchmarks, read from the MLflow store.

One row per (method, benchmark): the best configuration (chosen by each sweep's own validation metric — the
parent run's ``best_trial_id``, else the best finished child run) and its *test* metrics: near/far AUROC,
FPR@95, AUPR-In/Out and ID accuracy. Where several sweeps (e.g. ``--seed 0`` and ``--seed 1``) or seed repeats
(child runs tagged ``oodsweep.seed_repeat=true``, see :mod:`orchestrator.seeds`) of the same (method, benchmark)
exist, every value is the mean ± std (sample std, ddof=1) over those seeds. Sweeps that ran with a different
FPR@95 convention, or as smoke tests, are separate rows (they are not comparable).

Nothing is recomputed: every number is a metric already in the store.
"""
from __future__ import annotations

import argparse
import math
import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd

from orchestrator.tracking.tags import (
    FEASIBLE_METRIC,
    PARENT_TAG,
    SEED_REPEAT_TAG,
    SOURCE_TRIAL_TAG,
    STUDY_TAG,
    SWEEP_TAG,
    TRIAL_TAG,
)

# numpy, pandas and the metrics module are imported where used: `python -m orchestrator --help` stays instant.

#: Leaderboard value columns -> the MLflow metric each is read from.
METRICS = {
    "near_auroc": "near/auroc", "far_auroc": "far/auroc",
    "near_fpr95": "near/fpr95", "far_fpr95": "far/fpr95",
    "near_aupr_in": "near/aupr_in", "near_aupr_out": "near/aupr_out",
    "far_aupr_in": "far/aupr_in", "far_aupr_out": "far/aupr_out",
    "id_acc": "id/acc",
}
#: Lower is better for these (sorting and the header say so).
LOWER_IS_BETTER = {"near_fpr95", "far_fpr95"}
DEFAULT_SORT = "near_auroc"


def _title(col: str, convention: str | None = None) -> str:
    from orchestrator.metrics import COLUMN_TITLES

    if col == "id_acc":
        return "ID Acc"
    group, metric = col.split("_", 1)
    title = f"{group.capitalize()} {COLUMN_TITLES[metric]}"
    return title + (f" ({convention})" if metric == "fpr95" and convention else "")


def _std(values: list[float]) -> float:
    import numpy as np

    return float(np.std(values, ddof=1)) if len(values) > 1 else 0.0


def _search_all(client, experiment_ids, filter_string: str = "") -> list:
    runs, token = [], None
    while True:
        page = client.search_runs(experiment_ids, filter_string=filter_string, max_results=1000, page_token=token)
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def _objective(params: dict[str, str]) -> tuple[str, str]:
    first = (params.get("objectives") or "val/auroc:max").split(",")[0]
    metric, _, mode = first.rpartition(":")
    return (metric, mode) if mode in ("max", "min") else (first, "max")


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _best_child(parent, children: list, metric: str, mode: str):
    """The child the sweep itself chose (tag ``best_trial_id``), else the best finished one by its val metric."""
    trials = [c for c in children if c.data.tags.get(SEED_REPEAT_TAG) != "true" and TRIAL_TAG in c.data.tags]
    best_id = parent.data.tags.get("best_trial_id")
    for c in trials:
        if best_id and c.data.tags.get(TRIAL_TAG) == best_id and "near/auroc" in c.data.metrics:
            return c
    done = [c for c in trials if c.info.status == "FINISHED" and metric in c.data.metrics
            and "near/auroc" in c.data.metrics]
    if not done:
        return None
    sign = 1 if mode == "max" else -1
    return max(done, key=lambda c: sign * c.data.metrics[metric])


def sweep_records(tracking_uri: str, sweeps: list[str] | None = None, experiment: str = "oodsweep") -> list[dict]:
    """One record per sweep (parent run) with a best trial: its identity, best config and per-seed samples."""
    from orchestrator.tracking.runs import client_for, resolve_tracking_uri

    client = client_for(resolve_tracking_uri(tracking_uri))
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return []
    runs = _search_all(client, [exp.experiment_id])
    children: dict[str, list] = {}
    for r in runs:
        if PARENT_TAG in r.data.tags:
            children.setdefault(r.data.tags[PARENT_TAG], []).append(r)
    wanted = set(sweeps or [])
    out = []
    for parent in runs:
        tags, params = parent.data.tags, parent.data.params
        # A sweep's parent run has no parent, unless it is one of a study's sweeps (nested under the study's run).
        nested = PARENT_TAG in tags and STUDY_TAG not in tags
        if nested or SWEEP_TAG not in tags or (wanted and tags[SWEEP_TAG] not in wanted):
            continue
        metric, mode = _objective(params)
        kids = children.get(parent.info.run_id, [])
        best = _best_child(parent, kids, metric, mode)
        if best is None:
            continue
        seed = params.get("seed", "0")
        samples = {seed: best.data.metrics}  # seed -> metrics; the sweep's own best trial first
        best_trial = best.data.tags.get(TRIAL_TAG)
        for c in kids:
            t = c.data.tags
            if (t.get(SEED_REPEAT_TAG) == "true" and c.info.status == "FINISHED"
                    and t.get(SOURCE_TRIAL_TAG, best_trial) == best_trial and "near/auroc" in c.data.metrics):
                samples.setdefault(c.data.params.get("seed", f"repeat-{c.info.run_id}"), c.data.metrics)
        fixed = {k[len("fixed."):] for k in params if k.startswith("fixed.")}
        config = {k: v for k, v in sorted(best.data.params.items()) if k not in fixed}  # the searched knobs
        out.append({
            "sweep": tags[SWEEP_TAG], "parent_run_id": parent.info.run_id, "best_run_id": best.info.run_id,
            "method": params.get("method") or tags.get("method", "?"),
            "benchmark": params.get("benchmark") or tags.get("benchmark", "?"),
            "smoke_test": params.get("smoke_test") == "True",
            "convention": params.get("fpr95_convention", "classic"),
            "val_metric": metric, "val_mode": mode, "val": best.data.metrics.get(metric, float("nan")),
            "config": config, "samples": samples, "start_time": parent.info.start_time,
        })
    return out


def leaderboard(tracking_uri: str, sweeps: list[str] | None = None, experiment: str = "oodsweep") -> pd.DataFrame:
    """The leaderboard as a DataFrame: one row per (method, benchmark[, smoke][, FPR@95 convention]).

    Columns: method, benchmark, convention, smoke_test, seeds (distinct seeds averaged), merged (results that
    repeated an already counted seed, i.e. the same trained network), sweeps (how many), then each
    of :data:`METRICS` (mean) with ``<col>_std``, then val_metric, val (the best sweep's validation value),
    best_config (that sweep's best trial's searched knobs, ``k=v, ...``), best_sweep, best_run_id, parent_run_ids.
    """
    return _aggregate(sweep_records(tracking_uri, sweeps, experiment))


def _aggregate(records: list[dict]) -> pd.DataFrame:
    import numpy as np
    import pandas as pd

    groups: dict[tuple, list[dict]] = {}
    for rec in records:
        groups.setdefault((rec["method"], rec["benchmark"], rec["smoke_test"], rec["convention"]), []).append(rec)
    rows = []
    for (method, bench, smoke, convention), recs in groups.items():
        def rank(r):
            value = r["val"] if _is_number(r["val"]) else -math.inf
            return (1 if r["val_mode"] == "max" else -1) * value, r["start_time"]

        ranked = sorted(recs, key=rank, reverse=True)
        top = ranked[0]
        # n = distinct seeds: a seed fixes the trained network, so two sweeps (or a sweep and a seed repeat) with the
        # same seed measure the same network twice. Keep one sample per seed — the best sweep's — and count the rest.
        by_seed: dict[str, dict] = {}
        merged = 0
        for rec in ranked:
            for seed, metrics in rec["samples"].items():
                if str(seed) in by_seed:
                    merged += 1
                else:
                    by_seed[str(seed)] = metrics
        samples = list(by_seed.values())
        row: dict[str, Any] = {"method": method, "benchmark": bench, "convention": convention, "smoke_test": smoke,
                               "seeds": len(samples), "merged": merged, "sweeps": len(recs)}
        for col, name in METRICS.items():
            values = [float(m[name]) for m in samples if _is_number(m.get(name))]
            row[col] = float(np.mean(values)) if values else float("nan")
            row[f"{col}_std"] = _std(values) if values else float("nan")
        # The ID-accuracy constraint's verdicts on the counted configurations (trained methods; docs/
        # constrained_selection.md): "feasible/judged", empty where none was judged.
        judged = [float(m[FEASIBLE_METRIC]) for m in samples if _is_number(m.get(FEASIBLE_METRIC))]
        row["feasible"] = f"{sum(v > 0 for v in judged)}/{len(judged)}" if judged else ""
        row.update({"val_metric": top["val_metric"], "val": top["val"],
                    "best_config": ", ".join(f"{k}={_short(v)}" for k, v in top["config"].items()),
                    "best_sweep": top["sweep"], "best_run_id": top["best_run_id"],
                    "parent_run_ids": ",".join(r["parent_run_id"] for r in recs)})
        rows.append(row)
    columns = ["method", "benchmark", "convention", "smoke_test", "seeds", "merged", "sweeps",
               *[c for col in METRICS for c in (col, f"{col}_std")],
               "feasible", "val_metric", "val", "best_config", "best_sweep", "best_run_id", "parent_run_ids"]
    df = pd.DataFrame(rows, columns=columns)
    return sort(df, DEFAULT_SORT) if len(df) else df


def _short(v: str) -> str:
    try:
        f = float(v)
    except ValueError:
        return v
    return v if f.is_integer() and "." not in v else f"{f:.4g}"


def sort(df: pd.DataFrame, column: str) -> pd.DataFrame:
    """Best first: descending, except FPR@95 (ascending). Accepts a column name or its title (``near-auroc``)."""
    col = column.replace("-", "_").replace("/", "_").lower()
    if col not in df.columns:
        choices = ", ".join(["method", "benchmark", *METRICS])
        raise ValueError(f"unknown sort column {column!r}; choose one of {choices}")
    ascending = col in LOWER_IS_BETTER or col in ("method", "benchmark", "convention")
    return df.sort_values([col, "method", "benchmark"], ascending=[ascending, True, True],
                          na_position="last", kind="stable").reset_index(drop=True)


def _cell(mean: float, std: float, seeds: int) -> str:
    if not _is_number(mean):
        return "-"
    return f"{100 * mean:.2f} ± {100 * std:.2f}" if seeds > 1 else f"{100 * mean:.2f}"


def _display(df: pd.DataFrame) -> tuple[list[str], list[list[str]], str]:
    conventions = sorted(set(df["convention"])) if len(df) else ["classic"]
    one = conventions[0] if len(conventions) == 1 else None
    header = ["Method", "Benchmark", *(_title(c, one) for c in METRICS), "Seeds", "Best config (val)"]
    constrained = len(df) > 0 and any(df["feasible"])
    if constrained:
        header.insert(-1, "Feasible")
    if one is None:
        header.insert(2, "FPR@95 conv.")
    rows = []
    for _, r in df.iterrows():
        bench = r["benchmark"] + (" (smoke)" if r["smoke_test"] else "")
        val = f"{r['val_metric']}={r['val']:.4f}" if _is_number(r["val"]) else r["val_metric"]
        cells = [r["method"], bench, *(_cell(r[c], r[f"{c}_std"], r["seeds"]) for c in METRICS),
                 str(r["seeds"]), f"{r['best_config']} ({val})"]
        if constrained:
            cells.insert(-1, r["feasible"] or "-")
        if one is None:
            cells.insert(2, r["convention"])
        rows.append(cells)
    merged = int(df["merged"].sum()) if len(df) else 0
    repeats = (f" {merged} result(s) measured a seed already counted (the same trained network) and were merged: "
               "Seeds counts distinct seeds." if merged else "")
    note = ("Test metrics in % (mean ± std over distinct seeds where seeds > 1); FPR@95 convention: "
            + (f"{one}" if one else "per row") + " (classic = OOD accepted at 95% ID acceptance; "
            "openood = ID rejected at 95% OOD rejection). Best config chosen on validation only." + repeats
            + (" Feasible: seeds whose chosen configuration kept its ID validation accuracy within the margin of the "
               "cross-entropy classifier / seeds judged (docs/constrained_selection.md)." if constrained else ""))
    return header, rows, note


def render(df: pd.DataFrame, fmt: str = "table") -> str:
    """The leaderboard as ``table`` (aligned text), ``markdown`` or ``csv`` (raw fractions, std columns)."""
    if fmt == "csv":
        return df.to_csv(index=False, float_format="%.6f")
    if fmt not in ("table", "markdown"):
        raise ValueError(f"unknown format {fmt!r}; choose table, markdown or csv")
    if df.empty:
        return "No finished sweep in the store (run `python -m orchestrator sweep METHOD` first).\n"
    header, rows, note = _display(df)
    if fmt == "markdown":
        esc = lambda s: str(s).replace("|", "\\|")  # noqa: E731
        rule = "|" + "|".join("---" if i < 2 else "---:" for i in range(len(header) - 1)) + "|---|"
        lines = ["| " + " | ".join(header) + " |", rule]
        lines += ["| " + " | ".join(esc(c) for c in row) + " |" for row in rows]
        return "\n".join(lines) + f"\n\n{note}\n"
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(header)]
    fmt_row = lambda cells: "  ".join(c.ljust(w) if i < 2 or i == len(cells) - 1 else c.rjust(w)  # noqa: E731
                                      for i, (c, w) in enumerate(zip(cells, widths, strict=False))).rstrip()
    lines = [fmt_row(header), "-" * len(fmt_row(header))] + [fmt_row(row) for row in rows]
    return "\n".join(lines) + f"\n{note}\n"


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("report", help="leaderboard across methods and benchmarks from the MLflow store",
                              description="One row per (method, benchmark): the best configuration (by each "
                                          "sweep's validation metric) and its test OOD metrics, mean ± std over "
                                          "seeds where several sweeps or seed repeats exist.")
    p.add_argument("sweeps", nargs="*", metavar="SWEEP", help="sweep names to include (default: every sweep)")
    p.add_argument("--tracking-uri", help="the store (default: sqlite:///mlflow.db here)")
    p.add_argument("--experiment", default="oodsweep", help="MLflow experiment name (default oodsweep)")
    p.add_argument("--sort", default=DEFAULT_SORT, metavar="COLUMN",
                   help=f"sort by this column, best first (default {DEFAULT_SORT}; e.g. far_auroc, near_fpr95, "
                        f"id_acc, method)")
    p.add_argument("--format", default="table", choices=["table", "markdown", "csv"], help="output format")
    p.add_argument("--output", metavar="FILE", help="write to FILE instead of stdout")
    return p


def run(args) -> int:
    import os

    from orchestrator.errors import UsageError
    from orchestrator.tracking.runs import check_store, resolve_tracking_uri

    uri = resolve_tracking_uri(args.tracking_uri)
    if uri.startswith("sqlite:///") and not os.path.exists(uri[len("sqlite:///"):]):
        raise UsageError(f"no MLflow store at {uri[len('sqlite:///'):]}; run a sweep first or pass --tracking-uri")
    try:
        check_store(uri)
    except ConnectionError as exc:
        raise UsageError(str(exc)) from None
    records = sweep_records(uri, args.sweeps or None, args.experiment)
    missing = sorted(set(args.sweeps or ()) - {r["sweep"] for r in records})
    if missing:
        print(f"warning: no finished sweep named {', '.join(missing)} in experiment {args.experiment!r}",
              file=sys.stderr)
    df = _aggregate(records)
    if len(df):
        try:
            df = sort(df, args.sort)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
    text = render(df, args.format)
    if args.output:
        with open(args.output, "w") as f:
            f.write(text)
        print(f"wrote {args.output} ({len(df)} rows)")
    else:
        sys.stdout.write(text)
    return 0
