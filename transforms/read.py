"""ReadPendingActivities: planned key ranges → Reshuffle → read each range as one Arrow table.

The ranges are planned before the pipeline is built (``ranges.plan_ranges``), for every activity
type at once, so the reads of all types share the workers in one stage. The anti-join against
``emission_results`` is part of each range's query, so only pending rows leave the database;
each range is read with one ``COPY … TO STDOUT`` and parsed by Arrow, and since no range holds
more than ``rows_per_range`` rows, memory does not grow with the table.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, NamedTuple

import apache_beam as beam
import pyarrow as pa
import pyarrow.compute as pc
from apache_beam.metrics import Metrics

from pipeline import fingerprint, tuning
from pipeline.methodology.batch import activity_schema
from pipeline.model import ActivityType, activity_fields
from pipeline.ranges import KeyRange
from pipeline.retry import DEFAULT_POLICY, RetryPolicy
from pipeline.store import bulk, claims, connections, queries, tables, writes
from pipeline.store.sources import Sources, default_sources
from transforms.timing import Busy


class ActivityTable(NamedTuple):
    """What flows from the read to the calculation: one range's pending activities of a type
    (the activity columns and ``activity_version``)."""

    activity_type: ActivityType
    table: pa.Table
    #: The run's factor book (``calculate.pack_book``) when the read carries it to the
    #: calculation (``ReadPendingActivities(factors=…)``), so that it needs no side input.
    factors: bytes | None = None


@beam.typehints.with_input_types(KeyRange)
@beam.typehints.with_output_types(ActivityTable)
class ReadRangeFn(beam.DoFn):
    """Reads the pending activities of one key range as an Arrow table (``recheck``: every
    activity with a result as well, kept when its input fingerprint is not its result's)."""

    def __init__(
        self,
        database_url: str,
        date_from: str | None = None,
        date_to: str | None = None,
        retry_policy: RetryPolicy = DEFAULT_POLICY,
        sources: Sources | None = None,
        schema: str = tables.DEFAULT_SCHEMA,
        run_id: str | None = None,
        recheck: bool = False,
    ) -> None:
        self._database_url = database_url
        self._run_id = run_id
        self._recheck = recheck
        self._sources = dict(sources or default_sources(schema))
        self._db_schema = schema
        self._date_from = date_from
        self._date_to = date_to
        self._retry_policy = retry_policy
        self._conn: connections.ResilientConnection | None = None
        self._schemas: dict[ActivityType, pa.Schema] = {}
        self._key_types: dict[ActivityType, str] = {}

    def setup(self) -> None:
        tuning.tune_process()
        self._conn = connections.ResilientConnection(self._database_url, self._retry_policy)
        self._conn.open()
        self._rows_read = Metrics.counter("read", "activities_read")
        self._versions_refreshed = Metrics.counter("read", "versions_refreshed")
        self._ranges_skipped = Metrics.counter("read", "ranges_skipped")
        self._ranges_read = Metrics.counter("read", "ranges_read")
        self._busy = Busy("read")

    def _schema(self, activity_type: ActivityType) -> pa.Schema:
        """The source's Arrow schema: its key type is the source's (from the catalogue check),
        else the stored results' (looked up once per worker)."""
        if activity_type not in self._schemas:
            key_type = self._sources[activity_type].key_type
            if key_type is None:
                assert self._conn is not None, "setup() opens the connection"
                key_type = self._conn.run(
                    "reading the key type",
                    lambda conn: tables.results_id_type(conn, self._db_schema),
                )
            arrow_id = pa.int64() if key_type in (None, "bigint") else pa.string()
            self._schemas[activity_type] = activity_schema(activity_type, arrow_id)
            self._key_types[activity_type] = key_type or "bigint"
        return self._schemas[activity_type]

    def _unchanged(self, activity_type: ActivityType, table: pa.Table) -> pa.Table:
        """The rows to compute: ``table`` without those whose version changed but whose content
        did not (their input fingerprint is their result's). Those get their new version
        recorded on their result, and are not read again."""
        stored = table.column(queries.STORED_COLUMN)
        if not pc.any(stored).as_py():
            return table.drop([queries.STORED_FINGERPRINT_COLUMN])
        fields = activity_fields(activity_type)
        now = fingerprint.input_fingerprints(table, fields)
        before = table.column(queries.STORED_FINGERPRINT_COLUMN)
        # A result stored before fingerprints were (NULL) is taken to match: it predates
        # change tracking, and nothing can say what it was computed from.
        same = pc.and_(stored, pc.fill_null(pc.equal(now, before), True))
        if pc.any(same).as_py():
            kept = table.filter(same)
            ids = kept.column("id").to_pylist()
            versions = kept.column(queries.VERSION_COLUMN).to_pylist()
            compared = kept.column(queries.STORED_FINGERPRINT_COLUMN).to_pylist()
            assert self._conn is not None, "setup() opens the connection"
            key_type = self._key_types[activity_type]
            self._conn.run(
                "recording the versions of unchanged activities",
                lambda conn: writes.refresh_versions(
                    conn, activity_type, ids, versions, key_type, self._db_schema, compared
                ),
            )
            self._versions_refreshed.inc(len(ids))
        return table.filter(pc.invert(same)).drop([queries.STORED_FINGERPRINT_COLUMN])

    def _claim(self, key_range: KeyRange, run_id: str) -> bool:
        """Whether this run may read the range: it holds its claim (``claims.claim``). A range
        another run is computing now is its own to write: left to it, and counted by its id."""
        assert self._conn is not None, "setup() opens the connection"
        found = self._conn.run(
            "claiming a key range",
            lambda conn: claims.claim(
                conn,
                self._db_schema,
                key_range.activity_type,
                key_range.start,
                key_range.end,
                run_id,
            ),
        )
        # A run declared stopped (frozen, cut off) meanwhile reads no more (``found.stopped``).
        if not found.held and not found.stopped:
            self._ranges_skipped.inc()
            Metrics.counter("read", f"{claims.LEFT_TO}{found.holder or 'unknown'}").inc()
        return found.held

    def process(self, key_range: KeyRange) -> Iterator[ActivityTable]:
        with self._busy():
            table = self._read(key_range)
        if table is not None and table.num_rows:
            self._rows_read.inc(table.num_rows)
            yield ActivityTable(key_range.activity_type, table)

    def _read(self, key_range: KeyRange) -> pa.Table | None:
        """The range's pending activities, or None when another run holds it."""
        assert self._conn is not None, "setup() opens the connection"
        schema = self._schema(key_range.activity_type)
        if self._run_id is not None and not self._claim(key_range, self._run_id):
            return None
        # A range is read whole (one COPY) before anything is emitted, so after a lost
        # connection it is simply read again: nothing is emitted twice.
        table = self._conn.run(
            f"reading pending {key_range.activity_type} activities",
            lambda conn: bulk.read_pending_table(
                conn,
                self._sources[key_range.activity_type],
                key_range.start,
                key_range.end,
                schema,
                self._date_from,
                self._date_to,
                self._db_schema,
                recheck=self._recheck,
            ),
        )
        self._ranges_read.inc()
        return self._unchanged(key_range.activity_type, table)

    def teardown(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


@beam.typehints.with_input_types(KeyRange, bytes)
@beam.typehints.with_output_types(ActivityTable)
class ReadRangeWithFactorsFn(ReadRangeFn):
    """``ReadRangeFn`` that hands the factor book (its side input) on with each table."""

    def process(self, key_range: KeyRange, factors: bytes) -> Iterator[ActivityTable]:  # type: ignore[override]
        for read in super().process(key_range):
            yield read._replace(factors=factors)


class ReadPendingActivities(beam.PTransform):
    """Pending activities (no row in ``emission_results`` yet) of planned key ranges, as
    ``ActivityTable`` elements: plan (done by the driver) → ``Reshuffle`` → read. The
    ``Reshuffle`` spreads the ranges over the workers, so they share them."""

    def __init__(
        self,
        database_url: str,
        ranges: Sequence[KeyRange],
        date_from: str | None = None,
        date_to: str | None = None,
        retry_policy: RetryPolicy = DEFAULT_POLICY,
        sources: Sources | None = None,
        schema: str = tables.DEFAULT_SCHEMA,
        run_id: str | None = None,
        recheck: bool = False,
        factors: Any = None,
    ) -> None:
        super().__init__()
        self._ranges = list(ranges)
        self._factors = factors
        read = ReadRangeFn if factors is None else ReadRangeWithFactorsFn
        self._read = read(
            database_url, date_from, date_to, retry_policy, sources, schema, run_id, recheck
        )

    def expand(self, pbegin: Any) -> Any:
        return (
            pbegin
            | "Ranges" >> beam.Create(self._ranges, reshuffle=False)
            | "Reshuffle" >> beam.Reshuffle()
            | "ReadRange" >> beam.ParDo(self._read, *self._side())
        )

    def _side(self) -> list[Any]:
        """The factor book as the read's side input, when given: the read, which begins a
        stage after the ``Reshuffle`` anyway, hands it to the calculation with each table.
        Beam's Java fuser (Flink) never fuses a ParDo with side inputs into an existing stage,
        so a calculation taking it itself would be a stage of its own, the tables encoded and
        sent to it; this way read → calculate → write are one operator chain."""
        return [] if self._factors is None else [beam.pvalue.AsSingleton(self._factors)]
