"""The follow mode's ticks (``transforms.follow._Ticks``): one tick per call, however far the
polls have fallen behind the clock, so that a runner which passes a bundle's outputs on when it
ends (Flink) writes each poll's results as soon as the poll is done."""

from __future__ import annotations

import time
from typing import Any

from apache_beam.io.restriction_trackers import OffsetRestrictionTracker
from apache_beam.io.watermark_estimators import ManualWatermarkEstimator
from apache_beam.runners.sdf_utils import RestrictionTrackerView, ThreadsafeRestrictionTracker
from apache_beam.transforms.periodicsequence import (
    ImpulseSeqGenDoFn,
    ImpulseSeqGenRestrictionProvider,
)
from apache_beam.utils.timestamp import Timestamp

from transforms.follow import _Ticks


def call(
    fn: Any, element: tuple[float, float, float]
) -> tuple[list[float], ThreadsafeRestrictionTracker, ManualWatermarkEstimator]:
    """One ``process`` call of ``fn`` on a fresh restriction, as a runner makes it."""
    restriction = ImpulseSeqGenRestrictionProvider().initial_restriction(element)
    tracker = ThreadsafeRestrictionTracker(OffsetRestrictionTracker(restriction))
    estimator = ManualWatermarkEstimator(None)
    out = list(fn.process(element, RestrictionTrackerView(tracker), estimator))
    return out, tracker, estimator


def test_the_ticks_that_fell_due_while_a_poll_ran_make_one_tick_and_the_rest_waits() -> None:
    start = time.time() - 10.5  # ticks 0..5 (10.5, 8.5, …, 0.5 s ago) are due, tick 6 is not
    element = (start, start + 100.0, 2.0)

    # Beam's generator emits all six in one call (and would go on while each poll is slow).
    assert len(call(ImpulseSeqGenDoFn(), element)[0]) == 6

    out, tracker, estimator = call(_Ticks(), element)
    assert out == [start + 10.0]  # one tick: the newest due
    deferred = tracker.deferred_status()
    assert deferred is not None
    residual, delay = deferred
    assert (residual.start, residual.stop) == (6, 50)  # ticks 0..5 claimed, none lost
    assert 0.0 < delay.micros / 1e6 <= 1.5  # tick 6 is due 1.5 s after the call
    assert estimator.current_watermark() == Timestamp(start + 12.0)


def test_a_tick_not_yet_due_is_waited_for_inside_the_call() -> None:
    start = time.time() + 0.3
    out, tracker, _ = call(_Ticks(), (start, start + 100.0, 2.0))
    assert out == [start]
    assert time.time() >= start
    deferred = tracker.deferred_status()
    assert deferred is not None and (deferred[0].start, deferred[0].stop) == (1, 50)


def test_past_the_stop_time_the_last_due_tick_is_emitted_and_nothing_is_deferred() -> None:
    start = time.time() - 10.5
    element = (start, start + 5.0, 2.0)  # ticks 0, 1, 2 (at 0, 2, 4 s) then the stop
    out, tracker, _ = call(_Ticks(), element)
    assert out == [start + 4.0]
    assert tracker.deferred_status() is None
    tracker.check_done()  # raises if a tick of the restriction was left unclaimed
