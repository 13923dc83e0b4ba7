"""WriteResults and WriteErrors: buffered, idempotent bulk writes.

Each DoFn buffers per bundle and flushes once ``batch_size`` rows are waiting and in
``finish_bundle``: one transaction per flush, one ``COPY`` straight into the table, or, when a
row of it is already stored, the one supersede path (``bulk.supersede_results_table``), which
keeps the value of the activity's input as it is now and moves what it replaces to history. A
runner that retries a bundle therefore never doubles a row, and a crash loses only what was
not committed, which the next run finds still pending.

A flush commits only while its run is still ``running`` (``pipeline.store.claims``): a run
declared stopped (frozen, cut off) has its flushes refused by the database at their commit;
they are dropped and said once, and the run that took its key ranges over computes those
rows.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeAlias

import apache_beam as beam
import psycopg2
import psycopg2.extensions
import pyarrow as pa
import pyarrow.compute as pc
from apache_beam.metrics import Metrics

from pipeline import tuning
from pipeline.model import ErrorRecord
from pipeline.options import DEFAULT_WRITE_BATCH_SIZE
from pipeline.retry import DEFAULT_POLICY, RetryPolicy
from pipeline.store import bulk, claims, connections, tables, writes
from pipeline.store.sources import Sources
from transforms.timing import Busy

Connection: TypeAlias = psycopg2.extensions.connection
_LOG = logging.getLogger(__name__)


class _BufferedWriteFn(beam.DoFn):
    """Buffers elements per bundle and writes them in bulk."""

    def __init__(
        self,
        database_url: str,
        run_id: str,
        batch_size: int,
        name: str,
        write: Callable[[Connection, list[Any], str, str], int],
        size: Callable[[Any], int],
        retry_policy: RetryPolicy = DEFAULT_POLICY,
        schema: str = tables.DEFAULT_SCHEMA,
    ) -> None:
        self._database_url = database_url
        self._schema = schema
        self._run_id = run_id
        self._batch_size = batch_size
        self._name = name
        self._write = write
        self._size = size
        self._retry_policy = retry_policy
        self._conn: connections.ResilientConnection | None = None
        self._buffer: list[Any] = []
        self._buffered = 0

    def setup(self) -> None:
        tuning.tune_process()
        self._conn = connections.ResilientConnection(self._database_url, self._retry_policy)
        self._conn.open()
        self._written = Metrics.counter("write", f"{self._name}_written")
        self._flushes = Metrics.counter("write", f"{self._name}_flushes")
        self._busy = Busy("write")
        self._dropped = False

    def start_bundle(self) -> None:
        self._buffer = []
        self._buffered = 0

    def process(self, element: Any) -> Iterator[Any]:
        size = self._size(element)
        if self._buffer and self._buffered + size > self._batch_size:
            self._flush()  # a flush holds at most one batch (or one larger element)
        self._buffer.append(element)
        self._buffered += size
        if self._buffered >= self._batch_size:
            self._flush()
        return iter(())  # a sink: nothing to emit

    def finish_bundle(self) -> None:
        self._flush()

    def _flush(self) -> None:
        if not self._buffer:
            return
        with self._busy():
            self._write_buffer()

    def _write_buffer(self) -> None:
        assert self._conn is not None, "setup() opens the connection"
        rows, run_id, write, schema = self._buffer, self._run_id, self._write, self._schema
        # One idempotent transaction: after a lost connection it is simply written again.
        try:
            written = self._conn.run(
                f"writing {self._name}", lambda conn: write(conn, rows, run_id, schema)
            )
        except psycopg2.Error as e:
            if e.pgcode != claims.STOPPED:
                raise
            # The run was declared stopped (frozen, cut off): its claims are another run's
            # now, and what it computed stays pending for that run.
            self._drop(str(e))
            written = 0
        self._written.inc(written)
        self._flushes.inc()
        self._buffer = []
        self._buffered = 0
        tuning.trim_heap()

    def _drop(self, why: str) -> None:
        """A flush the database refused because the run is no longer running."""
        if not self._dropped:
            _LOG.warning("%s are not stored: %s", self._name, " ".join(why.split()))
        self._dropped = True

    def teardown(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


def _write_tables(
    conn: Connection,
    results: Sequence[pa.Table],
    run_id: str,
    schema: str,
    text_ids: bool = False,
    sources: Sources | None = None,
) -> int:
    """New results in one bulk write; those of changed activities supersede their old rows
    (which move to history) in another, through the one supersede path
    (``bulk.supersede_results_table``: a value of an input changed since is dropped). Each is
    one idempotent transaction. ``sources``: where each type is read (default: the pipeline's
    own tables)."""
    table = pa.concat_tables(results)
    if bulk.REPLACES_COLUMN not in table.column_names:
        return bulk.write_results_table(conn, table, run_id, schema, text_ids, sources)
    replaces = table.column(bulk.REPLACES_COLUMN)
    table = table.drop([bulk.REPLACES_COLUMN])
    written = 0
    new = table.filter(pc.invert(replaces))
    if new.num_rows:
        written += bulk.write_results_table(conn, new, run_id, schema, text_ids, sources)
    changed = table.filter(replaces)
    if changed.num_rows:
        written += bulk.supersede_results_table(
            conn, changed, run_id, "activity_changed", schema, text_ids, sources
        ).written
    return written


def _write_errors(
    conn: Connection,
    errors: Sequence[ErrorRecord],
    run_id: str,
    schema: str,
    sources: Sources | None = None,
) -> int:
    return writes.write_errors(conn, errors, run_id, schema, sources)


class WriteResults(beam.PTransform):
    """Stores results tables, at most one row per activity."""

    def __init__(
        self,
        database_url: str,
        run_id: str,
        batch_size: int = DEFAULT_WRITE_BATCH_SIZE,
        retry_policy: RetryPolicy = DEFAULT_POLICY,
        schema: str = tables.DEFAULT_SCHEMA,
        text_ids: bool = False,
        sources: Sources | None = None,
    ) -> None:
        super().__init__()
        self._fn = _BufferedWriteFn(
            database_url,
            run_id,
            batch_size,
            "results",
            functools.partial(
                _write_tables, text_ids=text_ids, sources=dict(sources) if sources else None
            ),
            lambda t: t.num_rows,
            retry_policy,
            schema,
        )

    def expand(self, results: Any) -> Any:
        return results | "WriteBatches" >> beam.ParDo(self._fn).with_input_types(pa.Table)


#: Dead letters per write, at most: each is a Python object with its input's text (about a
#: kilobyte), so a bundle of a large table would otherwise hold tens of megabytes of them.
ERRORS_BATCH = 5_000


class WriteErrors(beam.PTransform):
    """Stores dead letters, once per activity and input."""

    def __init__(
        self,
        database_url: str,
        run_id: str,
        batch_size: int = DEFAULT_WRITE_BATCH_SIZE,
        retry_policy: RetryPolicy = DEFAULT_POLICY,
        schema: str = tables.DEFAULT_SCHEMA,
        sources: Sources | None = None,
    ) -> None:
        super().__init__()
        self._fn = _BufferedWriteFn(
            database_url,
            run_id,
            min(batch_size, ERRORS_BATCH),
            "errors",
            functools.partial(_write_errors, sources=dict(sources) if sources else None),
            lambda _: 1,
            retry_policy,
            schema,
        )

    def expand(self, errors: Any) -> Any:
        return errors | "WriteBatches" >> beam.ParDo(self._fn).with_input_types(ErrorRecord)
