"""Images that stay on disk until a batch needs them: the ``x`` of a streamed split (custom benchmarks with
``stream: true``).

:class:`ImageFiles` behaves like the uint8 (N, C, H, W) array an in-memory split holds — ``len``, ``shape``,
``dtype``, indexing by an int, a slice or an index array returns decoded images — so extraction, scoring and
training read it unchanged, one batch at a time; :meth:`ImageFiles.subset` selects files without decoding them
(splits carved from a folder, ``--smoke-test`` subsets). Extraction reads streamed splits with ``DataLoader``
workers (:func:`orchestrator.forward.extract`). What identifies the data (the feature cache key) is the files'
paths, sizes and modification times, not their pixels, so opening a benchmark decodes nothing.
"""
from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence

import numpy as np


def convert_image(img: np.ndarray, channels: int) -> np.ndarray:
    """uint8 (C, H, W) → (channels, H, W)."""
    if img.shape[0] == channels:
        return img
    if channels == 3:
        return np.repeat(img[:1], 3, axis=0)
    w = np.array([299, 587, 114], dtype=np.uint32)[:, None, None]
    return ((img.astype(np.uint32) * w).sum(axis=0, keepdims=True) // 1000).astype(np.uint8)  # PIL's "L"


def resize_image(img: np.ndarray, size: tuple[int, int], mode: str) -> np.ndarray:
    from PIL import Image

    c, h, w = img.shape
    if (h, w) == size and mode != "imagenet":
        return img
    th, tw = size
    pil = Image.fromarray(img[0] if c == 1 else img.transpose(1, 2, 0))
    if mode == "imagenet":  # torchvision's evaluation transform: shorter side to size/0.875 (256 for 224), centre crop
        s = round(min(th, tw) / 0.875) / min(h, w)
        nh, nw = max(th, round(h * s)), max(tw, round(w * s))
        pil = pil.resize((nw, nh), Image.BILINEAR)
        top, left = (nh - th) // 2, (nw - tw) // 2
        pil = pil.crop((left, top, left + tw, top + th))
    elif mode == "crop":
        s = max(th / h, tw / w)
        nh, nw = max(th, round(h * s)), max(tw, round(w * s))
        pil = pil.resize((nw, nh), Image.BILINEAR)
        top, left = (nh - th) // 2, (nw - tw) // 2
        pil = pil.crop((left, top, left + tw, top + th))
    else:
        pil = pil.resize((tw, th), Image.BILINEAR)
    a = np.asarray(pil, dtype=np.uint8)
    return a[None] if a.ndim == 2 else a.transpose(2, 0, 1)


def decode(path: str, channels: int, size: tuple[int, int], mode: str) -> np.ndarray:
    """One image file → uint8 (channels, H, W) of ``size`` (resized as in-memory custom benchmarks are)."""
    from PIL import Image

    with Image.open(path) as im:
        im = im.convert("L" if im.mode in ("1", "L", "LA", "I", "I;16", "F") else "RGB")
        a = np.asarray(im, dtype=np.uint8)
    a = a[None] if a.ndim == 2 else a.transpose(2, 0, 1)
    return resize_image(convert_image(a, channels), size, mode)


class ImageFiles:
    """A split's images as files, decoded on indexing (see the module doc)."""

    dtype = np.dtype(np.uint8)
    ndim = 4

    def __init__(self, files: Sequence[str], channels: int, size: tuple[int, int], mode: str = "crop"):
        self.files = [str(f) for f in files]
        self.channels, self.size, self.mode = channels, tuple(size), mode

    def __len__(self) -> int:
        return len(self.files)

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return (len(self.files), self.channels, *self.size)

    def __getitem__(self, index):
        if isinstance(index, (int, np.integer)):
            return decode(self.files[index], self.channels, self.size, self.mode)
        picked = self.files[index] if isinstance(index, slice) else [self.files[i] for i in np.asarray(index)]
        out = np.empty((len(picked), self.channels, *self.size), dtype=np.uint8)
        for i, path in enumerate(picked):
            out[i] = decode(path, self.channels, self.size, self.mode)
        return out

    def subset(self, index) -> ImageFiles:
        """The selected files, still on disk."""
        picked = self.files[index] if isinstance(index, slice) else [self.files[i] for i in np.asarray(index)]
        return ImageFiles(picked, self.channels, self.size, self.mode)

    def digest(self) -> bytes:
        """What these images are, without decoding them: paths, sizes, modification times, and the format."""
        h = hashlib.sha256(f"{self.channels}x{self.size}/{self.mode}".encode())
        for path in self.files:
            st = os.stat(path)
            h.update(f"{path}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        return h.digest()


def select(x, index):
    """``x[index]`` for in-memory images; the selected files, undecoded, for :class:`ImageFiles`."""
    return x.subset(index) if isinstance(x, ImageFiles) else x[index]
