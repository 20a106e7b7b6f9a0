"""Trained models and their extracted outputs, cached by the hash of the training config.

Layout under the cache root (``--cache-dir``, ``$OODSWEEP_CACHE`` or ``~/.cache/oodsweep``)::

    models/<key>/model.pt        state dict (loaded with weights_only=True)
    models/<key>/model.pt.sha256 its checksum, written after it: an entry without one is not complete
    models/<key>/meta.json       the training config that produced it
    models/<key>/outputs/<split>[+fmap]/  logits.npy, features.npy (labels.npy, fmap.npy, head_weight.npy,
                                 head_bias.npy), manifest.json (which also holds the head's z-score σ) — each with
                                 its .sha256; loaded memory-mapped
    models/<key>/work/<name>/    a post-hoc scorer's sweep work on these outputs (KNN's neighbour tables): a0.npy,
                                 a1.npy... and manifest.json naming each array; checksummed and memory-mapped alike
    locks/<key>.lock             flock: one trainer per key, however many trials want it
    corrupt/<key>-<time>/        entries that failed their checksum or could not be read, moved aside
    trained.log, extracted.log, work.log   one line per model trained / split extracted / sweep work computed (how
                                 tests and benchmarks count)
    shards.log                   one line per shard of a sharded extraction

Every file is written to a temporary name in the same folder and renamed into place, and its checksum after it,
so a trial that dies mid-write leaves no entry that could be read as complete. An entry whose data does not match
its checksum (a truncated copy, a disk error, a hand edit) or cannot be loaded is moved aside with one line on
stderr and rebuilt — retrained or re-extracted — instead of failing every trial that reads it. On a multi-node
cluster point the cache at shared storage (NFS) to share models across nodes; a node-local cache still works,
per node.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from methods.base import Head, Outputs

#: The file that completes an outputs entry (written after its arrays).
MANIFEST = "manifest.json"
#: The manifest field of an outputs entry describing the network's head (null: not describable as arrays).
HEAD = "head"


def _head_manifest(head: Head | None) -> dict[str, Any]:
    return {HEAD: None if head is None else {"zscore_sigma": head.zscore_sigma}}


def default_root() -> Path:
    return Path(os.environ.get("OODSWEEP_CACHE", Path.home() / ".cache" / "oodsweep"))


def config_key(spec: dict[str, Any]) -> str:
    """Stable hash of a training config (key order and int/float spelling of equal values don't matter)."""
    canon = json.dumps(spec, sort_keys=True, default=str)
    return hashlib.sha256(canon.encode()).hexdigest()[:20]


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _checksum_path(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def _write_checksummed(path: Path, write) -> None:
    """Data first (atomically), then its checksum (atomically): the checksum's presence marks a complete entry."""
    _atomic_write(path, write)
    digest = _sha256(path)
    _atomic_write(_checksum_path(path), lambda f: f.write(digest.encode()))


def _intact(path: Path) -> bool | None:
    """None: no complete entry (no data, or data whose checksum is not written yet: still being written, or its
    writer died); True: the data matches its checksum; False: it does not (damaged)."""
    if not _written(path):
        return None
    return _checksum_path(path).read_text().strip() == _sha256(path)


def _written(path: Path) -> bool:
    """Whether ``path`` and its checksum are both written (a complete entry), without hashing the data."""
    return path.is_file() and _checksum_path(path).is_file()


#: Files verified against their checksum in this process, by (path, size, mtime): a post-hoc sweep's workers open
#: the same outputs many times; hashing gigabytes of features each time would dominate.
_VERIFIED: set[tuple[str, int, int]] = set()


def _verified(path: Path) -> bool | None:
    """:func:`_intact`, remembered per process while the file's size and mtime stay the same."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    stamp = (str(path), st.st_size, st.st_mtime_ns)
    if stamp in _VERIFIED:
        return True
    state = _intact(path)
    if state:
        _VERIFIED.add(stamp)
    return state


#: Threads writing sweep work behind its computation (:meth:`ModelCache.work`); not daemons: the interpreter waits
#: for them at exit, so a finished sweep leaves its work cached.
_WRITING: list[threading.Thread] = []


#: Seconds :func:`wait_for_writes` waits silently before it says what it waits for.
WRITE_WAIT_QUIET_SECONDS = 5.0


def _write_behind(write, what: str) -> None:
    _WRITING[:] = [t for t in _WRITING if t.is_alive()]
    thread = threading.Thread(target=write, name=what, daemon=False)
    _WRITING.append(thread)
    thread.start()


def wait_for_writes() -> None:
    """Return once the sweep work this process writes behind (:meth:`ModelCache.work`) is written; after
    :data:`WRITE_WAIT_QUIET_SECONDS`, say on stderr what is still being written (a slow or stalled filesystem)."""
    while _WRITING:
        thread = _WRITING.pop()
        thread.join(WRITE_WAIT_QUIET_SECONDS)
        if thread.is_alive():
            print(f"waiting for the model cache: {thread.name}", file=sys.stderr, flush=True)
            thread.join()


def _atomic_write(path: Path, write) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _save_arrays(folder: Path, arrays: dict[str, np.ndarray], names: dict[str, str] | None = None,
                 extra: dict[str, Any] | None = None) -> None:
    """One checksummed ``.npy`` per array (file stem = key), then the manifest listing them (and ``names``: stem →
    the caller's name for it; ``extra``: more manifest fields)."""
    for stem, array in arrays.items():
        _write_checksummed(folder / f"{stem}.npy", lambda f, a=array: np.save(f, np.asarray(a)))
    _write_manifest(folder, list(arrays), names, extra)


def _write_manifest(folder: Path, stems: list[str], names: dict[str, str] | None = None,
                    extra: dict[str, Any] | None = None) -> None:
    """The manifest of an entry whose arrays are written: an entry is complete only once it is there."""
    manifest = {"arrays": stems, **({"names": names} if names is not None else {}), **(extra or {})}
    _write_checksummed(folder / MANIFEST, lambda f: f.write(json.dumps(manifest).encode()))


def _load_arrays(folder: Path, what: str) -> tuple[dict[str, np.ndarray], dict] | None:
    """(arrays by file stem, memory-mapped; the manifest) of a complete entry, or None when absent; a damaged
    entry is deleted with one line on stderr, so that it is computed again. Each file's checksum is verified once
    per process and (size, mtime)."""
    manifest = folder / MANIFEST
    intact = _verified(manifest)
    why = "its data does not match its checksum"
    if intact:
        try:
            meta = json.loads(manifest.read_text())
            stems = meta["arrays"]
            if all(_verified(folder / f"{n}.npy") for n in stems):
                return {n: np.load(folder / f"{n}.npy", mmap_mode="r", allow_pickle=False) for n in stems}, meta
            intact = False
        except Exception as exc:  # noqa: BLE001 - unreadable for any reason: compute it again
            intact, why = False, f"{type(exc).__name__}: {str(exc).splitlines()[0][:120]}"
    if intact is not None:
        shutil.rmtree(folder, ignore_errors=True)
        print(f"warning: cached {what} {folder} are damaged ({why}); computing them again",
              file=sys.stderr, flush=True)
    return None


class ModelCache:
    def __init__(self, root: str | Path | None = None):
        self.root = Path(root) if root else default_root()

    def _dir(self, key: str) -> Path:
        return self.root / "models" / key

    def quarantine(self, key: str, what: str, why: str) -> Path:
        """Move the entry of ``key`` aside (``corrupt/``) so that it is rebuilt, and say so in one line."""
        target = self.root / "corrupt" / f"{key}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
        target.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            shutil.move(str(self._dir(key)), str(target))
        print(f"warning: cached {what} {key} is damaged ({why}); moved to {target}, rebuilding it",
              file=sys.stderr, flush=True)
        return target

    @contextlib.contextmanager
    def lock(self, key: str):
        """Exclusive per-key lock across processes on this machine (and on NFS with working flock). The holder
        writes who it is into the lock file; a process that finds the lock held says on stdout what it waits for
        and who holds it (nothing waits without saying so: a study's sweeps may want the same network at once)."""
        path = self.root / "locks" / f"{key}.lock"
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a+") as f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                f.seek(0)
                holder = f.read().strip() or "another process"
                print(f"waiting for the model cache: {key} is being built by {holder}", flush=True)
                fcntl.flock(f, fcntl.LOCK_EX)
            try:
                f.truncate(0)
                f.write(f"pid {os.getpid()} since {time.strftime('%H:%M:%S')}")
                f.flush()
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    # ---- models
    def has_model(self, key: str) -> bool:
        """Whether a complete entry is there (weights and their checksum written), without hashing the weights:
        :meth:`load_model` verifies them (a damaged entry is moved aside there and trained again)."""
        return _written(self._dir(key) / "model.pt")

    def load_model(self, key: str, model) -> bool:
        """Load the cached weights into ``model``; False when there is no complete, intact entry (a damaged one is
        moved aside first, so the caller trains it again)."""
        import torch

        path = self._dir(key) / "model.pt"
        intact = _intact(path)
        if intact is None:
            return False
        if not intact:
            self.quarantine(key, "network", "its data does not match its checksum")
            return False
        try:
            model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        except Exception as exc:  # noqa: BLE001 - whatever makes it unreadable, the cure is to rebuild it
            self.quarantine(key, "network", f"{type(exc).__name__}: {str(exc).splitlines()[0][:120]}")
            return False
        return True

    def save_model(self, key: str, model, spec: dict[str, Any], seconds: float) -> None:
        import torch

        state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
        meta = {"spec": spec, "train_seconds": seconds, "created": time.time()}
        _atomic_write(self._dir(key) / "meta.json", lambda f: f.write(json.dumps(meta, indent=1, default=str).encode()))
        _write_checksummed(self._dir(key) / "model.pt", lambda f: torch.save(state, f))
        with open(self.root / "trained.log", "a") as log:
            log.write(json.dumps({"key": key, "spec": spec, "seconds": seconds}, default=str) + "\n")

    def trained_count(self) -> int:
        return self._lines("trained.log")

    def extracted_count(self) -> int:
        return self._lines("extracted.log")

    def shard_count(self) -> int:
        """Shards extracted so far (sharded extraction; a resumed one adds only the missing ones)."""
        return self._lines("shards.log")

    def _lines(self, name: str) -> int:
        log = self.root / name
        return sum(1 for _ in open(log)) if log.is_file() else 0

    # ---- outputs
    def _outputs_dir(self, key: str, split: str, with_fmap: bool) -> Path:
        return self._dir(key) / "outputs" / (split.replace("/", "__") + ("+fmap" if with_fmap else ""))

    def outputs(self, key: str, split: str, with_fmap: bool, compute) -> Outputs:
        """Stored outputs of (model ``key``, ``split``), or ``compute()`` them once under a lock and store them."""
        out = self.load_outputs(key, split, with_fmap)
        if out is None:
            with self.lock(f"{key}.outputs"):
                out = self.load_outputs(key, split, with_fmap)
                if out is None:
                    out = compute()
                    self.save_outputs(key, split, with_fmap, out)
        return out

    def load_outputs(self, key: str, split: str, with_fmap: bool) -> Outputs | None:
        """Stored outputs, memory-mapped (read from disk as they are used, shared by every process on the machine
        through the page cache), or None when absent; a damaged entry is deleted (with one line) so it is
        re-extracted. Each file's checksum is verified once per process and (size, mtime)."""
        found = _load_arrays(self._outputs_dir(key, split, with_fmap), "outputs")
        if found is None:
            return None
        arrays, meta = found
        if HEAD not in meta:  # written before heads were cached with the outputs: extracted again
            return None
        head = None if meta[HEAD] is None else Head(arrays["head_weight"], arrays["head_bias"],
                                                     meta[HEAD]["zscore_sigma"])
        return Outputs(arrays["logits"], arrays["features"], arrays.get("labels"), arrays.get("fmap"), head)

    @staticmethod
    def shard_name(split: str, start: int, stop: int) -> str:
        """The entry name of images ``start:stop`` of ``split`` (a shard of a sharded extraction)."""
        return f"{split}@{start}-{stop}"

    def merge_shards(self, key: str, split: str, with_fmap: bool, shards: list[str]) -> None:
        """Concatenate shard entries (in order) into the split's entry, array by array through memory-mapped files
        (memory: one shard), then delete the shards."""
        parts = [self.load_outputs(key, name, with_fmap) for name in shards]
        if any(p is None for p in parts):
            raise RuntimeError(f"shards of {split} missing from the cache while merging ({key})")
        folder = self._outputs_dir(key, split, with_fmap)
        names = [n for n in ("logits", "features", "labels", "fmap") if getattr(parts[0], n) is not None]
        head = parts[0].head  # the same network's: every shard carries it
        if head is not None:
            for name, array in (("head_weight", head.weight), ("head_bias", head.bias)):
                _write_checksummed(folder / f"{name}.npy", lambda f, a=array: np.save(f, np.asarray(a)))
        for name in names:
            first = getattr(parts[0], name)
            rows = sum(len(getattr(p, name)) for p in parts)

            def write(f, name=name, first=first, rows=rows):
                np.lib.format.write_array_header_1_0(f, {"descr": np.lib.format.dtype_to_descr(first.dtype),
                                                         "fortran_order": False, "shape": (rows, *first.shape[1:])})
                for p in parts:
                    f.write(np.ascontiguousarray(getattr(p, name)).tobytes())

            _write_checksummed(folder / f"{name}.npy", write)
        _write_manifest(folder, names + (["head_weight", "head_bias"] if head is not None else []), None,
                        _head_manifest(head))
        for name in shards:
            shutil.rmtree(self._outputs_dir(key, name, with_fmap), ignore_errors=True)
        with open(self.root / "extracted.log", "a") as log:
            log.write(json.dumps({"key": key, "split": split, "fmap": with_fmap, "shards": len(shards)}) + "\n")

    def has_outputs(self, key: str, split: str, with_fmap: bool) -> bool:
        """Whether a complete entry is there (its manifest and the manifest's checksum are written), without
        hashing its arrays: they are verified when the entry is loaded (a damaged one is extracted again then). An
        entry written before heads were cached with the outputs is not complete."""
        manifest = self._outputs_dir(key, split, with_fmap) / MANIFEST
        if not _written(manifest):
            return False
        with contextlib.suppress(OSError, ValueError):
            return HEAD in json.loads(manifest.read_text())
        return False

    def save_outputs(self, key: str, split: str, with_fmap: bool, out: Outputs) -> None:
        """One ``.npy`` per array (each checksummed), then the manifest naming them."""
        arrays = {"logits": out.logits, "features": out.features}
        if out.labels is not None:
            arrays["labels"] = out.labels
        if out.fmap is not None:
            arrays["fmap"] = out.fmap
        if out.head is not None:
            arrays.update(head_weight=out.head.weight, head_bias=out.head.bias)
        _save_arrays(self._outputs_dir(key, split, with_fmap), arrays, None, _head_manifest(out.head))
        with open(self.root / ("shards.log" if "@" in split else "extracted.log"), "a") as log:
            log.write(json.dumps({"key": key, "split": split, "fmap": with_fmap}) + "\n")

    # ---- sweep work
    def _work_dir(self, key: str, name: str) -> Path:
        return self._dir(key) / "work" / name

    def work(self, key: str, name: str, compute, behind_bytes: int = 0) -> dict[str, np.ndarray]:
        """Stored sweep work ``name`` of model ``key`` — named arrays a scorer derives from the network's outputs
        once for every trial of a sweep (KNN's neighbour tables) — or ``compute()`` it once under a lock and store
        it, so that a later sweep on the same network does not compute it again.

        Computed work of at most ``behind_bytes`` is returned at once and written behind, on a thread that holds
        the lock until it is written (another process waits for it instead of computing it again; this one waits
        for it at exit, or in :func:`wait_for_writes`): the caller ships such work to its trials itself, while
        writing KNN's 105 MB of Fashion-MNIST tables took 0.35 s of a first knn sweep's critical path."""
        out = self.load_work(key, name)
        if out is not None:
            return out
        with contextlib.ExitStack() as held:
            held.enter_context(self.lock(f"{key}.work"))
            out = self.load_work(key, name)
            if out is None:
                out = compute()
                if behind_bytes and sum(a.nbytes for a in out.values()) <= behind_bytes:
                    lock = held.pop_all()  # released by the writer
                    _write_behind(lambda: self._save_work_then_release(key, name, out, lock),
                                  f"writing sweep work {name} of network {key} to {self._work_dir(key, name)}")
                else:
                    self.save_work(key, name, out)
        return out

    def _save_work_then_release(self, key: str, name: str, work: dict[str, np.ndarray], lock) -> None:
        with lock:
            try:
                self.save_work(key, name, work)
            except Exception as exc:  # noqa: BLE001 - the work was used; only its reuse by a later sweep is lost
                print(f"warning: sweep work {name} of network {key} could not be cached ({type(exc).__name__}: "
                      f"{exc}); a later sweep computes it again", file=sys.stderr, flush=True)

    def load_work(self, key: str, name: str) -> dict[str, np.ndarray] | None:
        found = _load_arrays(self._work_dir(key, name), "sweep work")
        if found is None:
            return None
        arrays, meta = found
        return {meta["names"][stem]: array for stem, array in arrays.items()}

    def save_work(self, key: str, name: str, work: dict[str, np.ndarray]) -> None:
        stems = {f"a{i}": k for i, k in enumerate(work)}  # the caller's names need not be file names
        _save_arrays(self._work_dir(key, name), {stem: work[k] for stem, k in stems.items()}, stems)
        with open(self.root / "work.log", "a") as log:
            log.write(json.dumps({"key": key, "work": name, "arrays": len(work)}) + "\n")

    def work_count(self) -> int:
        """Sweep work entries computed so far."""
        return self._lines("work.log")
