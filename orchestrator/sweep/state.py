"""A sweep's saved state: ``oodsweep_sweep.json`` (its options and MLflow parent run) next to Tune's experiment
state — what ``--resume`` reads to continue a sweep after its driver died."""
from __future__ import annotations

import json
import os
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from orchestrator.errors import UsageError

STATE_FILE = "oodsweep_sweep.json"


#: Files of a results folder that ``--resume`` unpickles (Tune's state): they run code when loaded.
PICKLED = ("tuner.pkl", "searcher-state-*.pkl", "trainable.pkl")


def check_trusted(folder: Path) -> None:
    """Refuse to resume from a folder whose pickles someone else could have written: Tune's state is pickled and
    runs code when loaded. The folder and its pickles must belong to this user and be writable by no one else."""
    uid = os.getuid()
    for path in [folder, *(p for pattern in PICKLED for p in folder.glob(pattern))]:
        st = path.stat()
        if st.st_uid != uid:
            raise UsageError(f"refusing to resume from {folder}: {path.name} belongs to another user (uid "
                             f"{st.st_uid}); Tune's state is pickled and runs code when loaded")
        if st.st_mode & 0o022:
            raise UsageError(f"refusing to resume from {folder}: {path.name} is writable by others; Tune's state is "
                             f"pickled and runs code when loaded (chmod go-w it if you trust its content)")


def read(folder: Path) -> dict[str, Any]:
    """The saved state of the sweep whose results folder is ``folder``; UsageError when there is none."""
    state_file = folder / STATE_FILE
    if not state_file.is_file():
        raise UsageError(f"no sweep to resume at {folder} (expected {STATE_FILE} there); pass the sweep's name "
                         f"with the same --storage-path, or its results folder")
    return json.loads(state_file.read_text())


def write(prep, parent_run_id: str) -> None:
    """Save what ``--resume`` needs (options, parent run) next to Tune's experiment state, atomically."""
    state = {"options": asdict(prep.opts), "parent_run_id": parent_run_id, "tracking_uri": prep.tracking_uri,
             "name": prep.name, "created": time.time()}
    state["options"]["name"] = prep.name
    data = json.dumps(state, indent=1).encode()
    if "://" in prep.storage_path:
        import pyarrow.fs

        fs, path = pyarrow.fs.FileSystem.from_uri(prep.experiment_path)
        fs.create_dir(path, recursive=True)
        with fs.open_output_stream(f"{path}/{STATE_FILE}") as f:
            f.write(data)
    else:
        folder = Path(prep.experiment_path)
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / f".{STATE_FILE}.tmp"
        tmp.write_bytes(data)
        os.replace(tmp, folder / STATE_FILE)
