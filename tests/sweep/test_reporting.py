"""Which epochs of a training trial report to Tune at once (the rest ride along), and ASHA's milestones."""
import pytest
from ray.tune.schedulers import ASHAScheduler

from orchestrator.sweep.scheduling import asha_milestones
from orchestrator.sweep.trainable import ReportPolicy


def test_report_is_due_at_milestones_the_last_epoch_and_after_the_interval():
    policy = ReportPolicy(seconds=5.0, epochs=(1, 3))
    assert policy.due(1, 10, 0.1) and policy.due(3, 10, 0.1)  # ASHA compares trials here
    assert not policy.due(2, 10, 4.9)
    assert policy.due(2, 10, 5.0)  # interval passed
    assert policy.due(10, 10, 0.0)  # last epoch, always
    assert all(ReportPolicy(seconds=0.0).due(e, 10, 0.0) for e in range(1, 11))  # 0: every epoch


@pytest.mark.parametrize("grace,rf,max_t", [(1, 2, 5), (1, 3, 5), (2, 2, 11), (1, 4, 101), (3, 3, 3)])
def test_asha_milestones_match_rays_rungs(grace, rf, max_t):
    # Ray keeps its rungs private; this pins our copy of the formula to the installed version's
    scheduler = ASHAScheduler(time_attr="epoch", metric="m", mode="max", max_t=max_t, grace_period=grace,
                              reduction_factor=rf)
    rungs = sorted(int(m) for m, _ in scheduler._brackets[0]._rungs)
    assert list(asha_milestones(grace, rf, max_t)) == rungs
