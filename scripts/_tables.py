"""Markdown comparison tables for the seed-method evidence scripts: mean ± std over seeds, per-seed deltas."""
from __future__ import annotations

import shlex
import sys
from pathlib import Path

import numpy as np


def mean_std(values, scale: float = 100.0) -> str:
    """"mean ± sample std" of ``values`` × ``scale`` (std 0 for one seed)."""
    v = np.asarray(values, dtype=float) * scale
    return f"{v.mean():.2f} ± {v.std(ddof=1) if len(v) > 1 else 0.0:.2f}"


def command(script: str) -> str:
    """The command line that produced this table, quoted as a user would retype it."""
    return f"python scripts/{script} " + " ".join(shlex.quote(a) for a in sys.argv[1:])


def comparison(results: dict[str, list[dict]], metrics, baseline_of: dict[str, str],
               seconds: dict[str, list[float]] | None = None) -> list[str]:
    """Table rows: one per method, its metrics over seeds and its near-AUROC gain over its baseline, per seed."""
    extra = " s/trial |" if seconds is not None else ""
    lines = ["| method | " + " | ".join(name for _, name in metrics) + " | Δ near AUROC vs baseline (per seed) |"
             + extra, "|---" * (len(metrics) + 2 + (seconds is not None)) + "|"]
    for name, rs in results.items():
        cells = [mean_std([r[k] for r in rs]) for k, _ in metrics]
        delta = ""
        if name in baseline_of:
            d = [100 * (r["near/auroc"] - b["near/auroc"]) for r, b in zip(rs, results[baseline_of[name]], strict=False)]
            delta = f"{np.mean(d):+.2f} ({', '.join(f'{x:+.2f}' for x in d)}) vs {baseline_of[name]}"
        tail = f" {np.mean(seconds[name]):.0f} |" if seconds is not None else ""
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {delta} |" + tail)
    return lines


def write(path: str, lines: list[str]) -> None:
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
