"""MODE and OAML vs the baselines their papers compare to, over seeds, at a fixed small budget; writes Markdown.

Baselines (same seed, same cached CE classifier — the recipe's network with ``--epochs`` epochs):
* MODE (ALPA fine-tuning + CSD) vs CE + KNN (the MODE paper's baseline); CE + CSD (no fine-tuning) is shown too,
  to separate the scorer's share from ALPA's;
* OAML (feature-space outlier substitutes, see methods/oaml.py) vs CE + energy (OAML scores with energy).
Every network is trained through ``orchestrator.trial.run_trial`` (plain Python, no Ray) and cached in
``--cache-dir``, so a seed's CE classifier is trained once and shared. FPR@95 is the classic convention.

    python scripts/seed_methods_part2.py --benchmark fashion-mnist --seeds 0 1 2 --epochs 3 --finetune-epochs 1
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from orchestrator import data as benchmarks  # noqa: E402
from orchestrator.trial import TrialSettings, run_trial  # noqa: E402
from scripts import _tables  # noqa: E402

METRICS = (("near/auroc", "near AUROC"), ("far/auroc", "far AUROC"), ("near/fpr95", "near FPR95↓"),
           ("far/fpr95", "far FPR95↓"), ("id/acc", "ID acc"))
BASELINE_OF = {"MODE-F + CSD": "CE + KNN", "MODE-T + CSD": "CE + KNN", "CE + CSD": "CE + KNN",
               "OAML + energy": "CE + energy"}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--benchmark", default="fashion-mnist")
    ap.add_argument("--smoke", action="store_true", help="the benchmark's tiny copy")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--epochs", type=int, default=3, help="CE training epochs (recipe)")
    ap.add_argument("--finetune-epochs", type=int, default=1, help="MODE / OAML fine-tuning epochs")
    ap.add_argument("--finetune-lr", type=float, default=0.01)
    ap.add_argument("--mode-batch-size", type=int, default=32, help="ALPA batch B (2B views; cost ∝ B per epoch)")
    ap.add_argument("--mode-variants", nargs="+", default=["mode_f"], choices=["mode_f", "mode_t"])
    ap.add_argument("--knn-k", type=int, default=50, help="KNN baseline k")
    ap.add_argument("--csd-k", type=int, default=10)
    ap.add_argument("--teacher", default="self", choices=["self", "larger"],
                    help="OAML teacher (larger trains a resnet18 CE classifier per seed: slow on CPU)")
    ap.add_argument("--oaml-candidates", type=int, default=1500)
    ap.add_argument("--cache-dir", default=str(ROOT / ".cache" / "seed_methods_part2"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "seed_methods_part2.md"))
    args = ap.parse_args(argv)

    bench = benchmarks.load(args.benchmark, smoke=args.smoke)
    base = {"epochs": args.epochs}
    ft = {**base, "finetune_epochs": args.finetune_epochs, "finetune_lr": args.finetune_lr}
    runs = [("CE + KNN", "knn", {**base, "k": args.knn_k}),
            ("CE + CSD", "csd", {**base, "k": args.csd_k}),
            *[(f"{'MODE-F' if v == 'mode_f' else 'MODE-T'} + CSD", "mode",
               {**ft, "variant": v, "finetune_batch_size": args.mode_batch_size, "k": args.csd_k})
              for v in args.mode_variants],
            ("CE + energy", "energy", dict(base)),
            ("OAML + energy", "oaml", {**ft, "teacher": args.teacher, "candidates": args.oaml_candidates})]
    results: dict[str, list[dict]] = {}
    seconds: dict[str, list[float]] = {}
    started = time.time()
    for seed in args.seeds:
        for label, method, config in runs:
            t = time.time()
            r = run_trial(config, bench, TrialSettings(method, seed=seed, cache_dir=args.cache_dir,
                                                       threads=args.threads))
            seconds.setdefault(label, []).append(time.time() - t)
            results.setdefault(label, []).append(r)
            print(f"seed {seed} {label:16s} near {r['near/auroc']:.4f} far {r['far/auroc']:.4f} "
                  f"acc {r['id/acc']:.4f} val {r['val/auroc']:.4f} ({time.time() - t:.0f}s)", flush=True)
    write_table(args, bench, results, seconds, time.time() - started)
    return 0


def write_table(args, bench, results, seconds, total):
    cmd = _tables.command("seed_methods_part2.py")
    lines = [f"# MODE / OAML vs baselines on {bench.name}{' (smoke copy)' if args.smoke else ''}", "",
             f"Command: `{cmd}`", "",
             f"Seeds {args.seeds}; CE {args.epochs} epochs (recipe otherwise: {bench.recipe}); MODE/OAML fine-tune "
             f"{args.finetune_epochs} epoch(s) at lr {args.finetune_lr}; MODE batch {args.mode_batch_size} "
             f"(2B views), CSD k={args.csd_k} (2×2 grid + global + centre, max); KNN k={args.knn_k}; OAML teacher = "
             f"{args.teacher}, candidates {args.oaml_candidates}, other knobs default. Test metrics ×100, mean ± sample "
             f"std over seeds; FPR95 = classic convention (OOD accepted at 95% ID TPR). Wall time {total / 60:.1f} min.",
             "OAML is a substitute (feature-space outliers instead of Stable Diffusion images).", "",
             *_tables.comparison(results, METRICS, BASELINE_OF, seconds)]
    _tables.write(args.out, lines)


if __name__ == "__main__":
    raise SystemExit(main())
