"""Training loss and accuracy of every cached cross-entropy classifier of a benchmark (e.g. to check that a network
was trained to memorisation before Unleashing Mask fine-tunes it).

    python scripts/train_loss.py --cache-dir /tmp/evidence/cache [--benchmark digits]
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from orchestrator import data as benchmarks
from orchestrator.cache import ModelCache
from orchestrator.recipe import RECIPE_KNOBS
from orchestrator.training import to_float
from orchestrator.trial import CrossEntropyClassifier, build_model


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cache-dir", required=True)
    ap.add_argument("--benchmark", default="digits")
    args = ap.parse_args()
    bench = benchmarks.load(args.benchmark)
    cache = ModelCache(args.cache_dir)
    rows = []
    for meta in sorted(Path(args.cache_dir, "models").glob("*/meta.json")):
        spec = json.loads(meta.read_text())
        spec = spec.get("spec", spec)
        if spec.get("benchmark") != bench.name or spec.get("trainer") != CrossEntropyClassifier.name:
            continue
        params = CrossEntropyClassifier().resolve({k: v for k, v in spec.items() if k in RECIPE_KNOBS})
        model = build_model(CrossEntropyClassifier(), params, bench)
        if not cache.load_model(meta.parent.name, model):
            continue
        with torch.no_grad():
            z = model.eval()(to_float(bench.id_train.x, "cpu"))
            y = torch.as_tensor(bench.id_train.y)
            rows.append((params["epochs"], spec.get("seed"), torch.nn.functional.cross_entropy(z, y).item(),
                         (z.argmax(1) == y).float().mean().item()))
    for epochs, seed, loss, acc in sorted(rows):
        print(f"{bench.name} CE, {epochs} epochs, seed {seed}: training loss {loss:.4f}, training accuracy {acc:.4f}")


if __name__ == "__main__":
    main()
