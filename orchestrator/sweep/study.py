"""The sweep's Optuna study, kept in an RDB storage so that it outlives the driver.

Without a storage the study would live only inside Tune's pickled searcher: ``optuna-dashboard`` could not open it
and figures would have to rebuild it. Default place: beside the MLflow store — ``optuna.db`` in the folder of a
SQLite tracking store (not inside ``mlflow.db`` itself: both libraries keep their schema version in an
``alembic_version`` table, which one file cannot hold twice), else ``optuna.db`` in the results folder;
``--optuna-storage URL`` names any Optuna RDB URL (PostgreSQL/MySQL for a cluster). The study is named after the
sweep, so ``--resume`` continues it and ``optuna-dashboard URL`` lists every sweep.
"""
from __future__ import annotations

from pathlib import Path

from orchestrator.errors import UsageError

STORAGE_FILE = "optuna.db"


def storage_url(optuna_storage: str | None, tracking_uri: str, storage_path: str) -> str | None:
    """The Optuna storage URL of a sweep; None when there is no local place for it (remote results, server
    tracking, no ``--optuna-storage``): the study then lives in Tune's searcher state only."""
    if optuna_storage:
        return optuna_storage
    if tracking_uri.startswith("sqlite:///"):
        return f"sqlite:///{Path(tracking_uri[len('sqlite:///'):]).resolve().parent / STORAGE_FILE}"
    if "://" not in storage_path:
        return f"sqlite:///{Path(storage_path) / STORAGE_FILE}"
    return None


def _storage(url: str):
    import optuna

    # A long SQLite busy timeout: the dashboard or a figure may read while the driver writes. A database server:
    # test a pooled connection before using it (after the server restarted, the first write would fail on a dead
    # one; Optuna does this for MySQL only). Optuna's heartbeat and RetryFailedTrialCallback are for trials run by
    # study.optimize; a sweep writes ended trials only (orchestrator.tracking.stores.StoredStudy retries them).
    kwargs = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {"pool_pre_ping": True}
    return optuna.storages.RDBStorage(url, engine_kwargs=kwargs)


def check(url: str | None, name: str, resume: bool) -> None:
    """Before anything is written: the storage is reachable and, for a new sweep, holds no study of that name."""
    if url is None:
        return
    if url.startswith("sqlite:///"):
        path = Path(url[len("sqlite:///"):])
        if path.is_dir():
            raise UsageError(f"--optuna-storage {url}: {path} is a folder, expected a SQLite file")
        if not path.exists():
            existing = next((p for p in path.parents if p.exists()), None)
            if existing is not None and not existing.is_dir():
                raise UsageError(f"--optuna-storage {url}: {existing} is a file, not a folder")
            return  # a new file: no study in it yet
    import optuna

    try:
        names = optuna.study.get_all_study_names(storage=_storage(url))
    except Exception as exc:  # noqa: BLE001 - a damaged file, a server that refuses us: one line
        raise UsageError(f"Optuna storage {url} cannot be opened ({type(exc).__name__}: "
                         f"{str(exc).splitlines()[0][:200] if str(exc) else ''}); pass --optuna-storage") from None
    if not resume and name in names:
        raise UsageError(f"Optuna storage {url} already holds a study named {name!r}; pick another --name or "
                         f"--resume {name}")


def open_study(url: str | None, name: str, objectives: list[tuple[str, str]], seed: int):
    """The sweep's study (created, or loaded when it exists: a resumed sweep), seeded TPE."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    directions = ["maximize" if mode == "max" else "minimize" for _, mode in objectives]
    return optuna.create_study(storage=_storage(url) if url else None, study_name=name,
                               sampler=optuna.samplers.TPESampler(seed=seed), directions=directions,
                               load_if_exists=True)


class TuneStudyMirror:
    """The stored study of a sweep run by Ray Tune, written from the trials that ended.

    Tune's searcher (``OptunaSearch``) keeps its study in memory, as a batched sweep does: with an RDB storage every
    suggestion and result would be a database round trip, and a storage that stops answering would stop the search.
    The sweep's tracking callback tells this mirror each ended trial (:meth:`ended` builds it: params and
    distributions from the search space, values from the trial's last result — what ``OptunaSearch`` tells its own
    study —, user attribute ``trial_id``), and ``stored`` (a :class:`orchestrator.tracking.stores.StoredStudy`)
    writes it on the tracking queue, or spools it while the storage is away. ``constraint``: the sweep's ID-accuracy
    constraint (:mod:`orchestrator.sweep.constraint`), whose value a completed trial carries, as in the searcher's
    study."""

    def __init__(self, stored, define, objectives: list[tuple[str, str]], constraint=None):
        self.stored, self.define, self.objectives = stored, define, objectives
        self.constraint = constraint

    def __getstate__(self) -> dict:  # pickled with Tune's callbacks: a restored driver's are replaced anyway
        return {}

    def __setstate__(self, state: dict) -> None:
        self.stored = self.define = self.constraint = None
        self.objectives = []

    def ended(self, trial_id: str, config: dict, result: dict, failed: bool):
        """The FrozenTrial of a Tune trial that ended with ``result`` (``failed``: it raised)."""
        import math

        import optuna

        fixed = optuna.trial.FixedTrial(config)
        self.define(fixed)
        values = [result.get(metric) for metric, _ in self.objectives]
        complete = all(isinstance(v, (int, float)) and math.isfinite(v) for v in values)
        state = (optuna.trial.TrialState.COMPLETE if complete else
                 optuna.trial.TrialState.FAIL if failed else optuna.trial.TrialState.PRUNED)
        frozen = optuna.trial.create_trial(state=state, values=[float(v) for v in values] if complete else None,
                                           params=fixed.params, distributions=fixed.distributions,
                                           user_attrs={"trial_id": trial_id})
        if self.constraint is not None and complete:
            self.constraint.tell(frozen, result)
        return frozen


def load(url: str, name: str):
    """The stored study of a finished sweep (figures, reports)."""
    import optuna

    return optuna.load_study(study_name=name, storage=_storage(url))
