"""The follow mode's source: ticks every poll interval → the windows of changes to read →
the pending activities of each window, as the batch reads them (``ReadRangeFn``).

Only element-wise steps follow the ticks (no grouping, no windowing), so every poll's rows go
through the calculation and the writes as soon as they are read, on the in-process runner as
on Flink. See ``pipeline.store.marks`` for how the windows are chosen.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any, NamedTuple, TypeAlias

import apache_beam as beam
import psycopg2.extensions
from apache_beam.io.watermark_estimators import ManualWatermarkEstimator
from apache_beam.metrics import Metrics
from apache_beam.transforms.periodicsequence import (
    ImpulseSeqGenDoFn,
    ImpulseSeqGenRestrictionProvider,
)
from apache_beam.utils.timestamp import Timestamp

from pipeline import tuning
from pipeline.model import ActivityType
from pipeline.retry import DEFAULT_POLICY, RetryPolicy
from pipeline.store import bulk, connections, marks, tables
from pipeline.store.sources import Source, Sources
from transforms.read import ActivityTable, ReadRangeFn

Connection: TypeAlias = psycopg2.extensions.connection


class ChangeWindow(NamedTuple):
    """Rows of one activity type whose ``follow_by`` value is in ``(after, upto]``."""

    activity_type: ActivityType
    after: str | None
    upto: str


_RESTRICTION = beam.DoFn.RestrictionParam(ImpulseSeqGenRestrictionProvider())
_WATERMARK = beam.DoFn.WatermarkEstimatorParam(ManualWatermarkEstimator.default_provider())


class _Ticks(ImpulseSeqGenDoFn):
    """Beam's ``PeriodicImpulse`` generator, with two changes for polling.

    - It waits for the next tick inside the call: the in-process runner calls a generator
      that has nothing to emit yet again at once, and would spin a core between ticks.
    - It emits **one tick per call**. Beam's emits every tick that is due, and checks the clock
      again after each: while a poll takes longer than the interval (a first start reading a
      large table), the next tick is always due and the call never returns. On Flink a
      bundle's outputs are passed on when it ends, so no result was written until the polls
      caught up (20–30 s at 1,000,000 activities). The ticks that fell due while a poll ran
      are claimed together with it: one poll reads everything up to now.
    """

    @beam.DoFn.unbounded_per_element()
    def process(
        self,
        element: Any,
        restriction_tracker: Any = _RESTRICTION,
        watermark_estimator: Any = _WATERMARK,
    ) -> Iterator[float]:
        start, _, interval = element
        start = float(start)
        index = restriction_tracker.current_restriction().start
        due = start + interval * index
        wait = due - time.time()
        if wait > 0:
            time.sleep(min(wait, interval))
        now = time.time()
        tick: float | None = None
        stopped = False
        while due <= now:
            if not restriction_tracker.try_claim(index):
                stopped = True  # past the stop time: this restriction is done
                break
            tick = due
            index += 1
            due = start + interval * index
        if tick is not None:
            watermark_estimator.set_watermark(Timestamp(tick))
            yield tick
        if not stopped:
            watermark_estimator.set_watermark(Timestamp(due))
            restriction_tracker.defer_remainder(Timestamp(due))


class Ticks(beam.PTransform):
    """One element every ``interval`` seconds from now until ``stop_at`` (a Unix time)."""

    def __init__(self, interval: float, stop_at: float) -> None:
        super().__init__()
        self._interval = interval
        self._stop_at = stop_at

    def expand(self, pbegin: Any) -> Any:
        first = time.time()
        return (
            pbegin
            | "Start"
            >> beam.Create([(first, max(self._stop_at, first + self._interval), self._interval)])
            | "Tick" >> beam.ParDo(_Ticks())
        )


@beam.typehints.with_input_types(float)
@beam.typehints.with_output_types(ChangeWindow)
class PollChangesFn(beam.DoFn):
    """On every tick: the windows of each source's changes to read (``marks.poll_windows``)."""

    def __init__(
        self,
        database_url: str,
        sources: Sources,
        rows_per_window: int,
        max_windows: int,
        retry_policy: RetryPolicy = DEFAULT_POLICY,
        schema: str = tables.DEFAULT_SCHEMA,
        run_id: str | None = None,
    ) -> None:
        self._database_url = database_url
        self._run_id = run_id
        self._sources = dict(sources)
        self._rows_per_window = rows_per_window
        self._max_windows = max_windows
        self._retry_policy = retry_policy
        self._db_schema = schema
        self._conn: connections.ResilientConnection | None = None

    def setup(self) -> None:
        tuning.tune_process()
        self._conn = connections.ResilientConnection(self._database_url, self._retry_policy)
        self._conn.open()
        self._polls = Metrics.counter("follow", "polls")
        self._windows = Metrics.counter("follow", "windows")

    def process(self, _tick: float) -> Iterator[ChangeWindow]:
        assert self._conn is not None, "setup() opens the connection"
        self._polls.inc()
        for activity_type, source in self._sources.items():
            windows = self._conn.run(f"polling {activity_type} changes", self._poller(source))
            self._windows.inc(len(windows))
            for after, upto in windows:
                yield ChangeWindow(activity_type, after, upto)

    def _poller(self, source: Source) -> Callable[[Connection], list[marks.Window]]:
        def poll(conn: Connection) -> list[marks.Window]:
            return marks.poll_windows(
                conn,
                source,
                self._rows_per_window,
                self._max_windows,
                self._db_schema,
                self._run_id,
            )

        return poll

    def teardown(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


@beam.typehints.with_input_types(ChangeWindow)
@beam.typehints.with_output_types(ActivityTable)
class ReadWindowFn(ReadRangeFn):
    """The pending activities of one window of changes, read as a key range is."""

    def process(self, window: ChangeWindow) -> Iterator[ActivityTable]:  # type: ignore[override]
        assert self._conn is not None, "setup() opens the connection"
        activity_type = window.activity_type
        schema = self._schema(activity_type)
        table = self._conn.run(
            f"reading changed {activity_type} activities",
            lambda conn: bulk.read_pending_table(
                conn,
                self._sources[activity_type],
                None,
                None,
                schema,
                schema=self._db_schema,
                window=(window.after, window.upto),
            ),
        )
        self._ranges_read.inc()
        table = self._unchanged(activity_type, table)
        if table.num_rows:
            self._rows_read.inc(table.num_rows)
            yield ActivityTable(activity_type, table)


class ReadChanges(beam.PTransform):
    """Ticks → windows of changes → pending activities (``ActivityTable``), until ``stop_at``;
    the windows of ``run_id``'s polls only while it is ``running`` (``marks.poll_windows``)."""

    def __init__(
        self,
        database_url: str,
        sources: Sources,
        poll_interval: float,
        stop_at: float,
        rows_per_window: int,
        max_windows: int,
        retry_policy: RetryPolicy = DEFAULT_POLICY,
        schema: str = tables.DEFAULT_SCHEMA,
        activity_types: Sequence[ActivityType] | None = None,
        run_id: str | None = None,
    ) -> None:
        super().__init__()
        followed = {
            t: s for t, s in sources.items() if activity_types is None or t in activity_types
        }
        self._ticks = Ticks(poll_interval, stop_at)
        self._poll = PollChangesFn(
            database_url, followed, rows_per_window, max_windows, retry_policy, schema, run_id
        )
        self._read = ReadWindowFn(
            database_url, retry_policy=retry_policy, sources=sources, schema=schema
        )

    def expand(self, pbegin: Any) -> Any:
        return (
            pbegin
            | "Ticks" >> self._ticks
            | "Poll" >> beam.ParDo(self._poll)
            | "ReadWindow" >> beam.ParDo(self._read)
        )
