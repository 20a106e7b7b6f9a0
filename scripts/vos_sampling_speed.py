"""VOS's virtual-outlier selection per batch: the authors' draw (per class, a MultivariateNormal's rsample of
``samples`` points and their log-density, keep the ``select`` least likely) against methods/vos.py's (the same
distribution: ``samples`` χ²_d radii per class, the largest kept, a direction drawn for each kept one only).

    python scripts/vos_sampling_speed.py [--classes 10] [--dim 128] [--samples 10000] [--select 1] [--repeat 5]

Prints the seconds per batch of each and their ratio, measured in this run (one PyTorch thread, as a 1-CPU trial).
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from torch.distributions import MultivariateNormal

from methods.vos import least_likely_radii, shared_gaussian, unit_directions, virtual_outliers


def papers(queues: list[torch.Tensor], samples: int, select: int) -> torch.Tensor:
    """The authors' loop: one MultivariateNormal per class, rsample, log_prob, top-k of −log p."""
    means, chol = shared_gaussian(queues)
    cov = chol @ chol.T
    out = []
    for mean in means:
        gauss = MultivariateNormal(mean, covariance_matrix=cov)
        points = gauss.rsample((samples,))
        out.append(points[torch.topk(-gauss.log_prob(points), select).indices])
    return torch.cat(out)


def ours(queues: list[torch.Tensor], samples: int, select: int, rng: np.random.Generator) -> torch.Tensor:
    means, chol = shared_gaussian(queues)
    k, d = means.shape
    radii2 = torch.as_tensor(least_likely_radii(rng, d, samples, select, k), dtype=means.dtype)
    directions = torch.as_tensor(unit_directions(rng, (k, select), d), dtype=means.dtype)
    return virtual_outliers(means, chol, radii2, directions)


def timed(fn, repeat: int) -> float:
    fn()  # warm-up
    start = time.perf_counter()
    for _ in range(repeat):
        fn()
    return (time.perf_counter() - start) / repeat


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--samples", type=int, default=10000)
    p.add_argument("--select", type=int, default=1)
    p.add_argument("--queue", type=int, default=1000)
    p.add_argument("--repeat", type=int, default=5)
    args = p.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    queues = [torch.randn(args.queue, args.dim) + c for c in range(args.classes)]
    rng = np.random.default_rng(0)
    slow = timed(lambda: papers(queues, args.samples, args.select), args.repeat)
    fast = timed(lambda: ours(queues, args.samples, args.select, rng), args.repeat)
    print(f"{args.classes} classes, {args.dim}-d, {args.samples} draws, keep {args.select}: authors' draw {slow:.3f} s "
          f"per batch, methods/vos.py {fast:.4f} s per batch: {slow / fast:.0f}x")


if __name__ == "__main__":
    main()
