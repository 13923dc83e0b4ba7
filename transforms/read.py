"""ReadPendingActivities: plan key ranges → Reshuffle → read each range as one Arrow table.

The anti-join against ``emission_results`` is part of each range's query, so only pending rows
leave the database; each range is read with one ``COPY … TO STDOUT`` and parsed by Arrow, and
since no range holds more than ``rows_per_range`` rows, memory does not grow with the table.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Literal

import apache_beam as beam
import psycopg2.extensions
import pyarrow as pa
from apache_beam.metrics import Metrics

from pipeline import db
from pipeline.methodology.batch import activity_schema
from pipeline.model import ActivityType
from pipeline.ranges import (
    KeyRange,
    plan_from_cuts,
    plan_int_ranges,
    plan_uuid_ranges,
    ranges_needed,
)
from pipeline.retry import DEFAULT_POLICY, RetryPolicy

Planner = Literal["rows", "bounds"]
PLANNERS: tuple[Planner, ...] = ("rows", "bounds")


class PlanRangesFn(beam.DoFn):
    """Emits the key ranges of one activity table.

    ``rows`` (default): cut points every N rows in key order, so ranges hold equal numbers of
    rows however the keys are spread, and there are more ranges as the table grows.
    ``bounds``: ``partitions`` equal slices of the key span (integers between the lowest and
    highest id; the 128-bit space for UUIDs): two index lookups, balanced only when keys are
    spread evenly.
    """

    def __init__(
        self,
        database_url: str,
        partitions: int,
        rows_per_range: int,
        planner: Planner = "rows",
        retry_policy: RetryPolicy = DEFAULT_POLICY,
    ) -> None:
        self._database_url = database_url
        self._partitions = partitions
        self._rows_per_range = rows_per_range
        self._planner = planner
        self._retry_policy = retry_policy

    def process(self, activity_type: ActivityType) -> Iterator[KeyRange]:
        # Planning is a few reads on a short-lived connection, all retried together.
        yield from db.with_connection(
            self._database_url,
            f"planning the key ranges of {activity_type}",
            lambda conn: self._plan(conn, activity_type),
            self._retry_policy,
        )

    def _plan(
        self, conn: psycopg2.extensions.connection, activity_type: ActivityType
    ) -> list[KeyRange]:
        if self._planner == "bounds":
            lo, hi, typ = db.key_bounds(conn, activity_type)
            if lo is None:
                return []
            if typ == "uuid":
                return list(plan_uuid_ranges(activity_type, self._partitions))
            return list(plan_int_ranges(activity_type, int(lo), int(hi), self._partitions))
        rows = db.count_rows(conn, activity_type)
        n = ranges_needed(rows, self._rows_per_range, self._partitions)
        if n == 0:
            return []
        cuts = db.key_cuts(conn, activity_type, -(-rows // n)) if n > 1 else []
        return list(plan_from_cuts(activity_type, [_key(c) for c in cuts]))


def _key(value: Any) -> int | str:
    return value if isinstance(value, int) else str(value)


class ReadRangeFn(beam.DoFn):
    """Reads the pending activities of one key range as an Arrow table."""

    def __init__(
        self,
        database_url: str,
        date_from: str | None = None,
        date_to: str | None = None,
        retry_policy: RetryPolicy = DEFAULT_POLICY,
    ) -> None:
        self._database_url = database_url
        self._date_from = date_from
        self._date_to = date_to
        self._retry_policy = retry_policy
        self._conn: db.ResilientConnection | None = None
        self._schemas: dict[ActivityType, pa.Schema] = {}

    def setup(self) -> None:
        self._conn = db.ResilientConnection(self._database_url, self._retry_policy)
        self._conn.open()
        self._rows_read = Metrics.counter("read", "activities_read")
        self._ranges_read = Metrics.counter("read", "ranges_read")

    def _schema(self, activity_type: ActivityType) -> pa.Schema:
        """The table's Arrow schema; its id type is looked up once per worker."""
        if activity_type not in self._schemas:
            assert self._conn is not None, "setup() opens the connection"
            id_type = self._conn.run(
                "reading the key type", lambda conn: db.detect_id_type_of(conn, activity_type)
            )
            arrow_id = pa.string() if id_type == "uuid" else pa.int64()
            self._schemas[activity_type] = activity_schema(activity_type, arrow_id)
        return self._schemas[activity_type]

    def process(self, key_range: KeyRange) -> Iterator[pa.Table]:
        assert self._conn is not None, "setup() opens the connection"
        schema = self._schema(key_range.activity_type)
        # A range is read whole (one COPY) before anything is emitted, so after a lost
        # connection it is simply read again: nothing is emitted twice.
        table = self._conn.run(
            f"reading pending {key_range.activity_type} activities",
            lambda conn: db.read_pending_table(
                conn,
                key_range.activity_type,
                key_range.start,
                key_range.end,
                schema,
                self._date_from,
                self._date_to,
            ),
        )
        self._ranges_read.inc()
        if table.num_rows:
            self._rows_read.inc(table.num_rows)
            yield table

    def teardown(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


class ReadPendingActivities(beam.PTransform):
    """Pending activities of one type (no row in ``emission_results`` yet), as Arrow tables."""

    def __init__(
        self,
        database_url: str,
        activity_type: ActivityType,
        partitions: int = 8,
        rows_per_range: int = 25_000,
        planner: Planner = "rows",
        date_from: str | None = None,
        date_to: str | None = None,
        retry_policy: RetryPolicy = DEFAULT_POLICY,
    ) -> None:
        super().__init__()
        self._database_url = database_url
        self._activity_type = activity_type
        self._plan = PlanRangesFn(database_url, partitions, rows_per_range, planner, retry_policy)
        self._read = ReadRangeFn(database_url, date_from, date_to, retry_policy)

    def expand(self, pbegin: Any) -> Any:
        return (
            pbegin
            | "Table" >> beam.Create([self._activity_type])
            | "PlanRanges" >> beam.ParDo(self._plan)
            | "Reshuffle" >> beam.Reshuffle()
            | "ReadRange" >> beam.ParDo(self._read)
        )
