"""When a batched sweep starts another evaluator: only when the configurations left would keep the present ones
busy longer than an evaluator takes to start (hand-timed with a fake clock)."""
from orchestrator.sweep.batched import Pace


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _paced(seconds_per_config: float, batch: int = 4) -> tuple[Pace, Clock]:
    """A pace that saw one batch of ``batch`` configurations come back after ``batch * seconds_per_config``."""
    clock = Clock()
    pace = Pace(start_seconds=2.0, clock=clock)
    configs = list(range(batch))
    pace.sent(configs)
    clock.now += batch * seconds_per_config
    pace.done(configs)
    return pace, clock


def test_millisecond_configurations_never_pay_for_another_evaluator():
    pace, _ = _paced(0.01)
    assert not pace.worth_another(remaining=12, evaluators=1)  # 12 x 10 ms = 0.12 s < 2 s


def test_slow_configurations_pay_for_another_evaluator():
    pace, _ = _paced(1.0)
    assert pace.worth_another(remaining=12, evaluators=1)  # 12 s > 2 s


def test_the_work_left_is_shared_by_the_evaluators_there():
    pace, _ = _paced(0.5)
    assert not pace.worth_another(remaining=12, evaluators=4)  # 12 x 0.5 s / 4 = 1.5 s < 2 s


def test_nothing_left_needs_no_evaluator():
    pace, _ = _paced(10.0)
    assert not pace.worth_another(remaining=0, evaluators=1)


def _first_batch_out_for(seconds: float) -> Pace:
    clock = Clock()
    pace = Pace(start_seconds=2.0, clock=clock)
    pace.sent([0, 1, 2, 3])
    clock.now += seconds
    return pace


def test_a_first_batch_out_for_less_than_a_start_starts_nothing():
    assert not _first_batch_out_for(1.0).worth_another(remaining=12, evaluators=1)


def test_a_first_batch_out_for_longer_than_a_start_starts_another():
    assert _first_batch_out_for(2.5).worth_another(remaining=12, evaluators=1)


def test_nothing_sent_yet_starts_nothing():
    assert not Pace(start_seconds=2.0, clock=Clock()).worth_another(remaining=12, evaluators=1)
