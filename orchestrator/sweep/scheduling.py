"""How a sweep's trials are scheduled and compared: ASHA early stopping (timed in epochs), the report policy that
pins reports to ASHA's milestones, and the Pareto front of a multi-objective sweep."""
from __future__ import annotations

import math
from typing import Any

from orchestrator.sweep.trainable import ReportPolicy


def scheduler(prep):
    """Tune's ASHA scheduler when ``--scheduler asha``, else None."""
    if prep.opts.scheduler != "asha":
        return None
    from ray.tune.schedulers import ASHAScheduler

    # Time is the epoch (a report may stand for several, see trainable.ReportPolicy); max_t is one past the last
    # epoch so that no report, the final evaluation included, hits ASHA's "reached max_t: stop" rule.
    return ASHAScheduler(time_attr="epoch", max_t=max_t(prep), grace_period=prep.opts.grace_period,
                         reduction_factor=prep.opts.reduction_factor)


def max_t(prep) -> int:
    """ASHA's max_t: one past the last epoch the trials report (see :func:`scheduler`) — a fine-tuning method's own
    epochs (its trainer's ``epochs_knob``, e.g. ``finetune_epochs``), else the recipe's."""
    import methods

    method = methods.get(prep.opts.method)
    trainer = method.trainer_class()
    knob = trainer.epochs_knob if trainer is not None else "epochs"
    return int(method.resolve(prep.fixed, prep.bench.recipe)[knob]) + 1


def report_policy(prep) -> ReportPolicy:
    """Report at every epoch ASHA decides at (its rungs: grace·rf^k below max_t), else at most every N seconds."""
    milestones: tuple[int, ...] = ()
    if prep.opts.scheduler == "asha":
        milestones = asha_milestones(prep.opts.grace_period, prep.opts.reduction_factor, max_t(prep))
    return ReportPolicy(seconds=prep.opts.report_seconds, epochs=milestones)


def asha_milestones(grace_period: int, reduction_factor: int, max_t: int) -> tuple[int, ...]:
    """The epochs at which ASHA (one bracket, Ray's default) compares trials: grace·rf^k, k < log_rf(max_t/grace)+1."""
    rungs = int(math.log(max_t / grace_period) / math.log(reduction_factor) + 1)
    return tuple(int(grace_period * reduction_factor ** k) for k in range(rungs))


def pareto_front(rows: list[dict[str, Any]], objectives: list[tuple[str, str]]) -> list[dict[str, Any]]:
    """The rows no other row dominates (at least as good in every objective, better in one)."""
    def key(r):
        return [r[m] if d == "max" else -r[m] for m, d in objectives]

    front = []
    for r in rows:
        kr = key(r)
        dominated = any(all(a >= b for a, b in zip(key(o), kr, strict=False)) and key(o) != kr for o in rows)
        if not dominated:
            front.append(r)
    return front
