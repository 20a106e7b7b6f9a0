"""The Ray Tune function trainable around :func:`orchestrator.trial.run_trial`.

A method that trains its own network validates after every epoch and reports to Tune at ASHA's milestones, its
last epoch and otherwise at most every few seconds, the epochs in between riding along (see
:class:`ReportPolicy`), with a checkpoint at most every ``CHECKPOINT_SECONDS`` (so a restarted trial resumes from a
recent epoch); post-hoc trials report once.
"""
from __future__ import annotations

import contextlib
import json
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from orchestrator.data.base import Benchmark
from orchestrator.tracking.runs import HISTORY_KEY
from orchestrator.trial import TrialSettings, run_trial

#: A training trial checkpoints at most this often (and after its last epoch); a restarted trial loses at most this
#: much work. Override with $OODSWEEP_CHECKPOINT_SECONDS.
CHECKPOINT_SECONDS = float(os.environ.get("OODSWEEP_CHECKPOINT_SECONDS", "10"))
#: Default of ``--report-seconds``.
REPORT_SECONDS = 5.0


@dataclass(frozen=True)
class ReportPolicy:
    """Which epochs of a training trial go to Tune as they end; the others ride along in the next report.

    Every Tune report is a round trip to the driver (the trial waits until the driver has consumed it: ~0.17 s on
    two busy cores), which dominated sub-second epochs. A report is due at a scheduler milestone (``epochs``, so
    ASHA compares every trial at exactly the epoch it asks for), at the last epoch, and once ``seconds`` have
    passed since the previous report; ``seconds=0`` reports every epoch. Epochs longer than ``seconds`` all report.
    """

    seconds: float = REPORT_SECONDS
    epochs: tuple[int, ...] = ()

    def due(self, epoch: int, last_epoch: int, since_last_report: float) -> bool:
        return epoch >= last_epoch or epoch in self.epochs or since_last_report >= self.seconds


def tune_trainable(config: dict[str, Any], bench: Benchmark, settings: dict[str, Any], shared=None,
                   reporting: ReportPolicy | None = None) -> None:
    """Ray Tune function trainable (wrap with ``tune.with_parameters(tune_trainable, bench=..., settings=...)``).

    ``shared`` may be an ObjectRef to :func:`shared_outputs`' result (fetched from the object store here);
    ``reporting`` says which epochs report at once (default: :class:`ReportPolicy`'s).
    """
    import ray
    from ray import tune

    if isinstance(shared, ray.ObjectRef):
        shared = ray.get(shared)

    policy = reporting or ReportPolicy()
    last_report = last_checkpoint = time.monotonic()
    held: list[dict[str, Any]] = []  # metrics of epochs not reported yet

    def report(metrics, save_checkpoint):
        nonlocal last_report, last_checkpoint
        epoch, last_epoch = metrics["epoch"], metrics["epochs"]
        if not policy.due(epoch, last_epoch, time.monotonic() - last_report):
            held.append(metrics)
            return
        result = {**metrics, HISTORY_KEY: json.dumps(held)} if held else metrics
        held.clear()
        # A checkpoint goes with a report at most every CHECKPOINT_SECONDS and at the last epoch: persisting one
        # costs Tune an experiment-state sync.
        if time.monotonic() - last_checkpoint >= CHECKPOINT_SECONDS or epoch >= last_epoch:
            with tempfile.TemporaryDirectory() as folder:
                save_checkpoint(folder)
                tune.report(result, checkpoint=tune.Checkpoint.from_directory(folder))
            last_checkpoint = time.monotonic()
        else:
            tune.report(result)
        last_report = time.monotonic()

    attempts = AttemptLog(Path(tune.get_context().get_trial_dir()))
    attempts.refuse_a_repeated_failure()
    try:
        final = run_trial(config, bench, TrialSettings(**settings), report, tune.get_checkpoint(), shared)
    except Exception as exc:
        attempts.record(exc)
        raise
    tune.report(final)


def trial_class_name(method: str) -> str:
    """The class name the Ray dashboard shows for a sweep's trial actors: ``ascood`` → ``AscoodTrial``."""
    return "".join(part.title() for part in method.replace("-", "_").split("_")) + "Trial"


def named_trainable(trainable, method: str, sweep: str, per_trial: bool) -> type:
    """``trainable`` (:func:`tune_trainable` with its parameters and resources) as the Tune trainable class whose
    actors the Ray dashboard lists under the method's name (:func:`trial_class_name`) with a repr naming the trial
    and the sweep — Tune would list every trial of every sweep as ``ImplicitFunc``, its tasks as
    ``ImplicitFunc.train``. Ray reads an actor's repr once, when the actor starts (and names its tasks
    ``<repr>.<method>`` after it): ``per_trial`` says that each trial gets an actor of its own (Tune's
    ``reuse_actors=False``; free when all trials run at once), so the repr can name the trial; an actor reused for
    several trials is named by its sweep only. The class's ``actor_per_trial`` says which (what the Tuner's
    ``reuse_actors`` must be)."""
    from ray.tune.trainable import wrap_function

    base = wrap_function(trainable)  # what Tune does to a function trainable (it keeps a class as it is)

    def __repr__(self) -> str:
        return f"{method} trial {self.trial_id} · {sweep}" if per_trial else f"{method} trials · {sweep}"

    name = trial_class_name(method)
    return type(name, (base,), {"__repr__": __repr__, "__qualname__": name, "__module__": __name__,
                                "actor_per_trial": per_trial})


class RepeatedFailure(RuntimeError):
    """The trial failed the same way on its last attempts: running it again would fail again."""


class AttemptLog:
    """The errors of a trial's attempts, kept in its trial folder, so that a retry after the same error twice
    fails at once instead of training again (``--max-failures`` is for lost workers and nodes, which a retry
    cures; a bug or a diverging configuration it does not)."""

    def __init__(self, folder: Path):
        self.path = folder / "oodsweep_attempts.json"

    def _errors(self) -> list[str]:
        try:
            return json.loads(self.path.read_text())
        except (OSError, ValueError):
            return []

    def record(self, exc: BaseException) -> None:
        first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ""
        errors = [*self._errors(), f"{type(exc).__name__}: {first}"]
        with contextlib.suppress(OSError):
            self.path.write_text(json.dumps(errors))

    def refuse_a_repeated_failure(self) -> None:
        errors = self._errors()
        if len(errors) >= 2 and errors[-1] == errors[-2]:
            raise RepeatedFailure(f"not retried: the last {len(errors)} attempts failed the same way ({errors[-1]})")

