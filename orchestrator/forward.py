"""Running a network over a benchmark split: its logits, penultimate features and (optionally) last feature map.

The one place outputs are computed (extraction); everything downstream reads them as NumPy arrays
(:mod:`orchestrator.evaluation`), which is why scoring needs no PyTorch.
"""
from __future__ import annotations

import os

import numpy as np
import torch

from methods.base import Head, Outputs
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
    z, h = np.concatenate(logits), np.concatenate(feats)
    return Outputs(z, h, split.y, np.concatenate(fmaps) if with_fmap else None, head_arrays(model, z, h))


#: How far W·h + b may be from the network's own logits (relative to their scale) for the arrays to stand for its
#: head: float32 rounding is ~1e-6; a head with any other layer after the features is far off.
HEAD_TOLERANCE = 1e-3


def head_arrays(model, logits: np.ndarray, features: np.ndarray, rows: int = 256) -> Head | None:
    """The final layer ``model.head.fc`` (and ASCOOD's ``head.zscore_sigma``) as a :class:`Head`, once its arrays
    reproduce the logits of the first ``rows`` samples; None otherwise (a head that is not linear in h, e.g. an MLP
    named as the head's input): head-based scorers then say they cannot score this network."""
    fc = getattr(getattr(model, "head", None), "fc", None)
    if not isinstance(fc, torch.nn.Linear):
        return None
    weight = fc.weight.detach().float().cpu().numpy()
    if weight.shape != (logits.shape[1], features.shape[1]):
        return None
    bias = fc.bias.detach().float().cpu().numpy() if fc.bias is not None else np.zeros(len(weight), np.float32)
    sigma = getattr(model.head, "zscore_sigma", None)
    head = Head(weight, bias, None if sigma is None else float(sigma))
    z = np.asarray(logits[:rows], dtype=np.float64)
    if len(z) and np.abs(head.logits(features[:rows]) - z).max() > HEAD_TOLERANCE * (1.0 + np.abs(z).max()):
        return None
    return head


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
