"""Process-wide memos for work a scorer repeats across the configurations of one sweep.

An evaluator process scores many configurations of one method on the same network and the same cached splits. What
does not depend on the configuration's knobs — ODIN's input gradient for a temperature, KNN's neighbour tables,
RankFeat's rank-1-removed features, Gram's per-image deviations — is computed once and kept here, keyed by digests of
what determines it (the network's weights, the batch's bytes, the fit), in an LRU bounded by bytes, so a long sweep
on large images evicts instead of growing. ``functools.lru_cache`` does not serve: it bounds entries, not bytes, and
cannot key on arrays.
"""
from __future__ import annotations

import hashlib
import weakref
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np


def in_memory_bytes(value: Any) -> int:
    """Bytes ``value`` (an array, or a tuple / list / dict of them) holds in this process' memory; a memory-mapped
    array (the cache's files) holds none."""
    if isinstance(value, np.ndarray):
        return 0 if isinstance(value, np.memmap) or isinstance(value.base, np.memmap) else value.nbytes
    if isinstance(value, Mapping):
        return sum(in_memory_bytes(v) for v in value.values())
    if isinstance(value, (tuple, list)):
        return sum(in_memory_bytes(v) for v in value)
    nbytes = getattr(value, "nbytes", None)  # a torch tensor
    return int(nbytes) if isinstance(nbytes, int) else 0


class Memo:
    """An LRU of values by string key, bounded by the bytes its values hold (and, optionally, by entries).

    The most recent entry is always kept, even alone over the bound: evicting what was just computed would only
    compute it again.
    """

    def __init__(self, max_bytes: int | None = None, max_entries: int | None = None):
        self.max_bytes = max_bytes
        self.max_entries = max_entries
        self._entries: OrderedDict[str, Any] = OrderedDict()

    def get(self, key: str) -> Any | None:
        value = self._entries.get(key)
        if value is not None:
            self._entries.move_to_end(key)
        return value

    def put(self, key: str, value: Any) -> Any:
        """Keep ``value`` under ``key`` (evicting the least recently used beyond the bounds); returns ``value``."""
        self._entries[key] = value
        self._entries.move_to_end(key)
        if self.max_entries is not None:
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)
        if self.max_bytes is not None:
            while len(self._entries) > 1 and self.nbytes() > self.max_bytes:
                self._entries.popitem(last=False)
        return value

    def nbytes(self) -> int:
        return sum(in_memory_bytes(v) for v in self._entries.values())

    def items(self):
        return self._entries.items()

    def clear(self) -> None:
        self._entries.clear()

    def __contains__(self, key: str) -> bool:
        return key in self._entries

    def __len__(self) -> int:
        return len(self._entries)


def digest_bytes(chunks: Iterable[bytes]) -> str:
    """A 128-bit BLAKE2b digest (hex) of the concatenated ``chunks``."""
    h = hashlib.blake2b(digest_size=16)
    for chunk in chunks:
        h.update(chunk)
    return h.hexdigest()


def array_digest(a) -> str:
    """A digest of an array's shape, dtype and values (a torch tensor is read through NumPy on the CPU)."""
    if not isinstance(a, np.ndarray):
        a = a.detach().cpu().contiguous().numpy()
    a = np.ascontiguousarray(a)
    return digest_bytes([f"{a.shape}{a.dtype.str}".encode(), a.reshape(-1).view(np.uint8).data])


def network_digest(model) -> str:
    """A digest of every parameter and buffer of a torch ``model`` (names, shapes, dtypes, values)."""
    import torch

    def chunks():
        for name, t in model.state_dict().items():
            t = t.detach().cpu().contiguous()
            yield f"{name}{tuple(t.shape)}{t.dtype}".encode()
            yield t.reshape(-1).view(torch.uint8).numpy().tobytes()
    return digest_bytes(chunks())


class NetworkDigests:
    """``digest(model)``: :func:`network_digest`, computed again only when the model object or one of its tensors
    changed since the last call — a network trained between two evaluations (a training trial's per-epoch scores)
    gets a new digest. Changes are seen through each tensor's in-place version counter (``Tensor._version``, the
    counter autograd checks; optimiser steps and ``load_state_dict`` bump it), so an unchanged network is not
    hashed again for every batch. Not pickled: a copy in another process digests its own model."""

    def __init__(self):
        self._last: tuple[weakref.ref, tuple[int, ...], str] | None = None

    def digest(self, model) -> str:
        versions = tuple(t._version for t in model.state_dict(keep_vars=True).values())
        last = self._last
        if last is None or last[0]() is not model or last[1] != versions:
            last = self._last = (weakref.ref(model), versions, network_digest(model))
        return last[2]

    def __getstate__(self):
        return {}

    def __setstate__(self, state):
        self._last = None


class ArrayDigests:
    """``digest(a)``: :func:`array_digest`, computed once per array object while it lives (outputs are never
    modified in place), so a sweep's trials do not hash the same cached split again and again."""

    def __init__(self):
        self._by_id: dict[int, tuple[weakref.ref, str]] = {}

    def digest(self, a: np.ndarray) -> str:
        key = id(a)
        entry = self._by_id.get(key)
        if entry is not None and entry[0]() is a:
            return entry[1]
        value = array_digest(a)
        try:
            ref = weakref.ref(a, lambda _: self._by_id.pop(key, None))
        except TypeError:  # not weak-referenceable: nothing to remember it by
            return value
        self._by_id[key] = (ref, value)
        return value

    def clear(self) -> None:
        self._by_id.clear()
