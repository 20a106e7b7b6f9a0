"""Ray Tune's OptunaSearch, telling Optuna each finished trial's ID-accuracy constraint (see
:mod:`orchestrator.sweep.constraint`).

Ray's OptunaSearch tells Optuna a trial's objective from the trial's last result and nothing else; the constraint
value (drop − margin, ≤ 0 feasible) must be on the Optuna trial before it is told, for the sampler to see it in
its ``after_trial`` and on every later ``ask``. A module of its own because it imports Ray Tune: a batched sweep
never does. Module-level, so that Tune can pickle the searcher for ``--resume``.
"""
from __future__ import annotations

from ray.tune.search.optuna import OptunaSearch

from orchestrator.sweep.constraint import Constraint


class ConstrainedOptunaSearch(OptunaSearch):
    """OptunaSearch that sets ``Trial.set_constraint("id_acc_drop", drop − margin)`` on a trial that completed with
    a result, just before Ray tells it (``constraint`` None: plain OptunaSearch)."""

    def __init__(self, *args, constraint: Constraint | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.constraint = constraint

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False):
        # _ot_trials / _completed_trials: OptunaSearch's own bookkeeping (ray pinned, see pyproject.toml).
        if (self.constraint is not None and result and not error and trial_id in self._ot_trials
                and trial_id not in self._completed_trials):
            self.constraint.tell(self._ot_trials[trial_id], result)
        super().on_trial_complete(trial_id, result, error)
