"""A study's leaderboard: per entry × benchmark, test metrics over seeds and the paired difference to a baseline.

Each sweep of a study chose its configuration on validation only (ID-val + OOD-val); the numbers here are that
configuration's *test* metrics, one sample per seed. n counts distinct seeds. The comparison with the baseline is
paired by seed (both sweeps of a seed share the seed's network initialisation and data order): the mean per-seed
difference, with a 95% percentile bootstrap interval over seeds (10,000 resamples, seeded). With few seeds the
interval is coarse — at n = 2 a resample can only take three values — and the table says n so that a reader can
judge. FPR@95 uses the study's convention, named in the header.

Where a sweep applied the ID-accuracy constraint (:mod:`orchestrator.sweep.constraint`), its chosen configuration's
child run carries its verdict: the row says for how many seeds the chosen configuration was feasible and the largest
validation ID-accuracy drop against the cross-entropy classifier, and marks (✗) a row where some seed's was not — that
sweep found no feasible configuration and reported its least infeasible one.
"""
from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field

import numpy as np

from orchestrator.tracking.tags import DROP_METRIC, FEASIBLE_METRIC

#: The columns: (key in a row, MLflow metric of the sweep's best trial, title).
MEASURES = (("near_auroc", "near/auroc", "Near AUROC"), ("far_auroc", "far/auroc", "Far AUROC"),
            ("near_fpr95", "near/fpr95", "Near FPR@95"), ("far_fpr95", "far/fpr95", "Far FPR@95"),
            ("id_acc", "id/acc", "ID Acc"))
#: Compared with the baseline, per seed.
COMPARED = (("near_auroc", "near/auroc", "Δ Near AUROC"), ("far_auroc", "far/auroc", "Δ Far AUROC"))
BOOTSTRAP_RESAMPLES = 10_000
LEVEL = 0.95


def paired_bootstrap(diffs, resamples: int = BOOTSTRAP_RESAMPLES, level: float = LEVEL,
                     seed: int = 0) -> tuple[float, float, float]:
    """(mean, low, high): the mean of the per-seed differences and its percentile bootstrap interval."""
    d = np.asarray(diffs, dtype=float)
    if d.size == 0:
        return float("nan"), float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    means = d[rng.integers(0, d.size, size=(resamples, d.size))].mean(axis=1)
    tail = (1 - level) / 2
    return float(d.mean()), float(np.quantile(means, tail)), float(np.quantile(means, 1 - tail))


@dataclass
class Row:
    entry: str
    method: str
    benchmark: str
    baseline: str | None
    samples: dict[int, dict[str, float]]  # seed -> test metrics of the sweep's chosen configuration
    stats: dict[str, tuple[float, float]] = field(default_factory=dict)  # key -> (mean, std)
    diffs: dict[str, tuple[float, float, float, int]] = field(default_factory=dict)  # key -> (mean, lo, hi, n)

    @property
    def n(self) -> int:
        return len(self.samples)

    @property
    def feasibility(self) -> tuple[int, int]:
        """(seeds whose chosen configuration met the ID-accuracy constraint, seeds judged by it)."""
        judged = [m[FEASIBLE_METRIC] for m in self.samples.values() if FEASIBLE_METRIC in m]
        return sum(v > 0 for v in judged), len(judged)

    @property
    def infeasible(self) -> bool:
        ok, judged = self.feasibility
        return ok < judged

    @property
    def max_drop(self) -> float | None:
        """The largest validation ID-accuracy drop (points) of the chosen configurations against the reference."""
        drops = [m[DROP_METRIC] for m in self.samples.values() if DROP_METRIC in m]
        return max(drops) if drops else None


def build(rows: list[Row]) -> list[Row]:
    """Fill each row's mean ± std (sample std, ddof=1) and its paired difference to its baseline's row."""
    by_key = {(r.entry, r.benchmark): r for r in rows}
    for r in rows:
        for key, metric, _ in MEASURES:
            values = [m[metric] for m in r.samples.values() if metric in m]
            if values:
                r.stats[key] = (float(np.mean(values)), float(np.std(values, ddof=1)) if len(values) > 1 else 0.0)
        base = by_key.get((r.baseline, r.benchmark)) if r.baseline else None
        if base is None:
            continue
        for key, metric, _ in COMPARED:
            seeds = sorted(s for s in r.samples if s in base.samples
                           and metric in r.samples[s] and metric in base.samples[s])
            diffs = [r.samples[s][metric] - base.samples[s][metric] for s in seeds]
            if diffs:
                r.diffs[key] = (*paired_bootstrap(diffs), len(seeds))
    return rows


def _pct(mean: float, std: float) -> str:
    return f"{100 * mean:.2f} ± {100 * std:.2f}"


def _diff(d: tuple[float, float, float, int] | None) -> str:
    if d is None:
        return "–"
    mean, lo, hi, _ = d
    return f"{100 * mean:+.2f} [{100 * lo:+.2f}, {100 * hi:+.2f}]"


def headers(convention: str) -> list[str]:
    titles = [t + (f" ({convention}, ↓)" if "FPR" in t else "") for _, _, t in MEASURES]
    return ["Entry", "Method", "Benchmark", "n", *titles, "Feasible", "Max ID-acc drop (val, pts)", "Baseline",
            *[f"{t} vs baseline (95% CI)" for _, _, t in COMPARED]]


def _feasible(r: Row) -> str:
    ok, judged = r.feasibility
    return "–" if not judged else f"{ok}/{judged}" + (" ✗" if ok < judged else "")


def cells(r: Row) -> list[str]:
    drop = r.max_drop
    return [r.entry + (" ✗" if r.infeasible else ""), r.method, r.benchmark, str(r.n),
            *[_pct(*r.stats[k]) if k in r.stats else "–" for k, _, _ in MEASURES], _feasible(r),
            "–" if drop is None else f"{drop:+.2f}", r.baseline or "–",
            *[_diff(r.diffs.get(k)) for k, _, _ in COMPARED]]


def markdown(rows: list[Row], convention: str, title: str, command: str) -> str:
    head = headers(convention)
    lines = [f"# {title}", "", f"Produced by `{command}`.", "",
             "Test metrics (%) of each sweep's configuration chosen on validation (ID-val + OOD-val), mean ± sample "
             "std over n distinct seeds. The Δ columns are the mean per-seed difference to the baseline entry (same "
             f"seed, same benchmark) with a {int(LEVEL * 100)}% percentile bootstrap interval over seeds "
             f"({BOOTSTRAP_RESAMPLES:,} resamples); at small n that interval is coarse. FPR@95: {convention} "
             "convention. Feasible: seeds whose chosen configuration kept its ID validation accuracy within the "
             "sweep's max_id_acc_drop of the cross-entropy classifier of the same recipe and seed (– : not "
             "constrained); ✗ marks a row where a sweep found no feasible configuration and reports its least "
             "infeasible one; the drop column is the largest such loss, in points (negative: a gain).", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(cells(r)) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def csv_text(rows: list[Row], convention: str) -> str:
    """One line per row and seed-free summary columns as plain numbers (fractions, not %)."""
    out = io.StringIO()
    w = csv.writer(out)
    cols = ["entry", "method", "benchmark", "n", "seeds", "fpr95_convention"]
    for key, _, _ in MEASURES:
        cols += [f"{key}_mean", f"{key}_std"]
    cols += ["feasible_seeds", "constrained_seeds", "max_id_acc_drop_points", "baseline"]
    for key, _, _ in COMPARED:
        cols += [f"delta_{key}_mean", f"delta_{key}_ci_low", f"delta_{key}_ci_high", f"delta_{key}_n"]
    w.writerow(cols)
    for r in rows:
        line = [r.entry, r.method, r.benchmark, r.n, " ".join(str(s) for s in sorted(r.samples)), convention]
        for key, _, _ in MEASURES:
            line += list(r.stats.get(key, ("", "")))
        drop = r.max_drop
        line += [*r.feasibility, "" if drop is None else drop, r.baseline or ""]
        for key, _, _ in COMPARED:
            line += list(r.diffs.get(key, ("", "", "", "")))
        w.writerow(line)
    return out.getvalue()


def figure(rows: list[Row], title: str):
    """Near and far AUROC per entry (mean ± std over seeds), one panel per benchmark."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    benches = sorted({r.benchmark for r in rows})
    fig, axes = plt.subplots(1, len(benches), figsize=(max(5.0, 1.1 * len(rows) / len(benches) + 2.5) * len(benches),
                                                       4.0), squeeze=False)
    for ax, bench in zip(axes[0], benches, strict=True):
        mine = [r for r in rows if r.benchmark == bench]
        x = np.arange(len(mine))
        for offset, (key, label) in ((-0.2, ("near_auroc", "near")), (0.2, ("far_auroc", "far"))):
            mean = [100 * r.stats.get(key, (np.nan, 0))[0] for r in mine]
            std = [100 * r.stats.get(key, (np.nan, 0))[1] for r in mine]
            ax.bar(x + offset, mean, 0.4, yerr=std, capsize=3, label=f"{label} AUROC")
        ax.set_xticks(x, [f"{r.entry}{' (infeasible)' if r.infeasible else ''}\n(n={r.n})" for r in mine],
                      fontsize=8)
        ax.set_ylabel("test AUROC (%)")
        ax.set_ylim(0, 100)
        ax.set_title(bench, fontsize=10)
        ax.legend(fontsize=8, loc="lower right")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig
