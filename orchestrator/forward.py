"""Running a network over a benchmark split: its logits, penultimate features and (optionally) last feature map.

The one place outputs are computed (extraction); everything downstream reads them as NumPy arrays
(:mod:`orchestrator.evaluation`), which is why scoring needs no PyTorch.
"""
from __future__ import annotations

import os

import numpy as np
import torch

from methods.base import Outputs
from orchestrator.data.base import Split
from orchestrator.data.lazy import ImageFiles
from orchestrator.training import to_float

#: Images per forward pass when extracting: small batches stay in the CPU caches (measured fastest on 2 cores);
#: a GPU wants large ones.
EVAL_BATCH = {"cpu": 128, "cuda": 1024}
#: DataLoader worker processes decoding a streamed split's images while the network runs.
STREAM_WORKERS = max(1, min(4, (os.cpu_count() or 2) - 1))


@torch.no_grad()
def extract(model, split: Split, device, with_fmap: bool = False, batch_size: int | None = None) -> Outputs:
    """Logits, penultimate features (and the last feature map) of every image of ``split``."""
    model.eval()
    batch_size = batch_size or EVAL_BATCH.get(torch.device(device).type, 256)
    logits, feats, fmaps = [], [], []
    for batch in _batches(split, batch_size):
        z, h, fmap = model.forward_all(to_float(batch, device))
        logits.append(z.float().cpu().numpy())
        feats.append(h.float().cpu().numpy())
        if with_fmap:
            if fmap is None:
                raise ValueError("this scorer reads the last feature map, but the model gives none: adapt it with "
                                 "feature_map=<layer name> (orchestrator.models.protocol.adapt)")
            fmaps.append(fmap.float().contiguous().cpu().numpy())
    return Outputs(np.concatenate(logits), np.concatenate(feats), split.y,
                   np.concatenate(fmaps) if with_fmap else None)


class _Slices(torch.utils.data.Dataset):
    """Batch i of a split's images (what a DataLoader worker decodes)."""

    def __init__(self, x, batch_size: int):
        self.x, self.batch_size = x, batch_size

    def __len__(self) -> int:
        return -(-len(self.x) // self.batch_size)

    def __getitem__(self, i: int):
        return self.x[i * self.batch_size:(i + 1) * self.batch_size]


def _batches(split: Split, batch_size: int):
    """The split's images batch by batch: slices of the array, or, for images on disk, decoded by DataLoader
    workers ahead of the network."""
    if not isinstance(split.x, ImageFiles):
        for start in range(0, len(split), batch_size):
            yield split.x[start:start + batch_size]
        return
    loader = torch.utils.data.DataLoader(_Slices(split.x, batch_size), batch_size=None, shuffle=False,
                                         num_workers=STREAM_WORKERS, prefetch_factor=2, persistent_workers=False)
    yield from loader
