"""ReadPendingActivities: plan key ranges → Reshuffle → read each range with a server-side cursor.

The anti-join against ``emission_results`` is part of each range's query, so only pending rows
leave the database and memory does not grow with the table.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import apache_beam as beam
import psycopg2.extensions
from apache_beam.metrics import Metrics

from pipeline import db
from pipeline.model import ACTIVITY_CLASSES, Activity, ActivityType
from pipeline.ranges import KeyRange, plan_int_ranges, plan_uuid_ranges


class PlanRangesFn(beam.DoFn):
    """Emits the key ranges of one activity table."""

    def __init__(self, database_url: str, partitions: int) -> None:
        self._database_url = database_url
        self._partitions = partitions

    def process(self, activity_type: ActivityType) -> Iterator[KeyRange]:
        conn = db.connect(self._database_url)
        try:
            lo, hi, typ = db.key_bounds(conn, activity_type)
        finally:
            conn.close()
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
    ) -> None:
        self._database_url = database_url
        self._date_from = date_from
        self._date_to = date_to
        self._conn: psycopg2.extensions.connection | None = None

    def setup(self) -> None:
        self._conn = db.connect(self._database_url)
        self._rows_read = Metrics.counter("read", "activities_read")
        self._ranges_read = Metrics.counter("read", "ranges_read")

    def process(self, key_range: KeyRange) -> Iterator[Activity]:
        assert self._conn is not None, "setup() opens the connection"
        cls = ACTIVITY_CLASSES[key_range.activity_type]
        count = 0
        for row in db.read_pending(
            self._conn,
            key_range.activity_type,
            key_range.start,
            key_range.end,
            self._date_from,
            self._date_to,
        ):
            count += 1
            yield cls(*row)
        self._rows_read.inc(count)
        self._ranges_read.inc()

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
    ) -> None:
        super().__init__()
        self._database_url = database_url
        self._activity_type = activity_type
        self._partitions = partitions
        self._date_from = date_from
        self._date_to = date_to

    def expand(self, pbegin: Any) -> Any:
        return (
            pbegin
            | "Table" >> beam.Create([self._activity_type])
            | "PlanRanges" >> beam.ParDo(PlanRangesFn(self._database_url, self._partitions))
            | "Reshuffle" >> beam.Reshuffle()
            | "ReadRange"
            >> beam.ParDo(ReadRangeFn(self._database_url, self._date_from, self._date_to))
        )
