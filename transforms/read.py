"""ReadPendingActivities: plan key ranges → Reshuffle → read each range with a server-side cursor.

The anti-join against ``emission_results`` is part of each range's query, so only pending rows
leave the database and memory does not grow with the table.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import apache_beam as beam
import psycopg2.extensions
from apache_beam.metrics import Metrics

from pipeline import db
from pipeline.model import ACTIVITY_CLASSES, Activity, ActivityType
from pipeline.ranges import KeyRange, plan_int_ranges, plan_uuid_ranges
from pipeline.retry import DEFAULT_POLICY, RetryPolicy


class PlanRangesFn(beam.DoFn):
    """Emits the key ranges of one activity table."""

    def __init__(
        self, database_url: str, partitions: int, retry_policy: RetryPolicy = DEFAULT_POLICY
    ) -> None:
        self._database_url = database_url
        self._partitions = partitions
        self._retry_policy = retry_policy

    def process(self, activity_type: ActivityType) -> Iterator[KeyRange]:
        lo, hi, typ = db.with_connection(
            self._database_url,
            f"reading the key bounds of {activity_type}",
            lambda conn: db.key_bounds(conn, activity_type),
            self._retry_policy,
        )
        if lo is None:
            return
        if typ == "uuid":
            yield from plan_uuid_ranges(activity_type, self._partitions)
        else:
            yield from plan_int_ranges(activity_type, int(lo), int(hi), self._partitions)


class ReadRangeFn(beam.DoFn):
    """Reads the pending activities of one key range as typed records."""

    def __init__(
        self,
        database_url: str,
        date_from: str | None = None,
        date_to: str | None = None,
        retry_policy: RetryPolicy = DEFAULT_POLICY,
        page_size: int = 10_000,
    ) -> None:
        self._database_url = database_url
        self._date_from = date_from
        self._date_to = date_to
        self._retry_policy = retry_policy
        self._page_size = page_size
        self._conn: db.ResilientConnection | None = None

    def setup(self) -> None:
        self._conn = db.ResilientConnection(self._database_url, self._retry_policy)
        self._conn.open()
        self._rows_read = Metrics.counter("read", "activities_read")
        self._ranges_read = Metrics.counter("read", "ranges_read")

    def process(self, key_range: KeyRange) -> Iterator[Activity]:
        assert self._conn is not None, "setup() opens the connection"
        cls = ACTIVITY_CLASSES[key_range.activity_type]
        count = 0
        after = None
        while True:
            # A page is one short transaction: after a lost connection it is read again and
            # the range resumes after the last key already emitted, so nothing is read twice.
            page = self._conn.run(
                f"reading pending {key_range.activity_type} activities",
                self._page_reader(key_range, after),
            )
            for row in page:
                yield cls(*row)
            count += len(page)
            if len(page) < self._page_size:
                break
            after = page[-1][0]
        self._rows_read.inc(count)
        self._ranges_read.inc()

    def _page_reader(
        self, key_range: KeyRange, after: Any
    ) -> Callable[[psycopg2.extensions.connection], list[tuple[Any, ...]]]:
        def read(conn: psycopg2.extensions.connection) -> list[tuple[Any, ...]]:
            return db.read_pending_page(
                conn,
                key_range.activity_type,
                key_range.start,
                key_range.end,
                after,
                self._page_size,
                self._date_from,
                self._date_to,
            )

        return read

    def teardown(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


class ReadPendingActivities(beam.PTransform):
    """Pending activities of one type: those with no row in ``emission_results`` yet."""

    def __init__(
        self,
        database_url: str,
        activity_type: ActivityType,
        partitions: int,
        date_from: str | None = None,
        date_to: str | None = None,
        retry_policy: RetryPolicy = DEFAULT_POLICY,
    ) -> None:
        super().__init__()
        self._database_url = database_url
        self._activity_type = activity_type
        self._partitions = partitions
        self._date_from = date_from
        self._date_to = date_to
        self._retry_policy = retry_policy

    def expand(self, pbegin: Any) -> Any:
        return (
            pbegin
            | "Table" >> beam.Create([self._activity_type])
            | "PlanRanges"
            >> beam.ParDo(PlanRangesFn(self._database_url, self._partitions, self._retry_policy))
            | "Reshuffle" >> beam.Reshuffle()
            | "ReadRange"
            >> beam.ParDo(
                ReadRangeFn(self._database_url, self._date_from, self._date_to, self._retry_policy)
            )
        )
