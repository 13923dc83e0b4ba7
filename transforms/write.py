"""WriteResults and WriteErrors: buffered, idempotent bulk writes.

Each DoFn buffers rows per bundle and flushes at a size and in ``finish_bundle``: one
transaction per flush, ``COPY`` into a staging table and one ``INSERT … ON CONFLICT DO
NOTHING``. A runner that retries a bundle therefore never doubles a row, and a crash loses
only what was not committed, which the next run finds still pending.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Generic, TypeVar

import apache_beam as beam
import psycopg2.extensions
from apache_beam.metrics import Metrics

from pipeline import db
from pipeline.model import EmissionResult, ErrorRecord
from pipeline.retry import DEFAULT_POLICY, RetryPolicy

T = TypeVar("T")

Writer = Callable[[psycopg2.extensions.connection, Sequence[Any], str], int]


class _BufferedWriteFn(beam.DoFn, Generic[T]):
    """Buffers elements per bundle and writes them in bulk with ``writer``."""

    def __init__(
        self,
        database_url: str,
        run_id: str,
        batch_size: int,
        writer: Writer,
        name: str,
        retry_policy: RetryPolicy = DEFAULT_POLICY,
    ) -> None:
        self._database_url = database_url
        self._run_id = run_id
        self._batch_size = batch_size
        self._writer = writer
        self._name = name
        self._retry_policy = retry_policy
        self._conn: db.ResilientConnection | None = None
        self._buffer: list[T] = []

    def setup(self) -> None:
        self._conn = db.ResilientConnection(self._database_url, self._retry_policy)
        self._conn.open()
        self._written = Metrics.counter("write", f"{self._name}_written")
        self._flushes = Metrics.counter("write", f"{self._name}_flushes")

    def start_bundle(self) -> None:
        self._buffer = []

    def process(self, element: T) -> None:
        self._buffer.append(element)
        if len(self._buffer) >= self._batch_size:
            self._flush()

    def finish_bundle(self) -> None:
        self._flush()

    def _flush(self) -> None:
        if not self._buffer:
            return
        assert self._conn is not None, "setup() opens the connection"
        rows, run_id, writer = self._buffer, self._run_id, self._writer
        # One idempotent transaction: after a lost connection it is simply written again.
        written = self._conn.run(f"writing {self._name}", lambda conn: writer(conn, rows, run_id))
        self._written.inc(written)
        self._flushes.inc()
        self._buffer = []

    def teardown(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


class WriteResults(beam.PTransform):
    """Stores results, at most one per activity."""

    def __init__(
        self,
        database_url: str,
        run_id: str,
        batch_size: int = 5000,
        retry_policy: RetryPolicy = DEFAULT_POLICY,
    ) -> None:
        super().__init__()
        self._fn = _BufferedWriteFn[EmissionResult](
            database_url, run_id, batch_size, db.write_results, "results", retry_policy
        )

    def expand(self, results: Any) -> Any:
        return results | "WriteBatches" >> beam.ParDo(self._fn)


class WriteErrors(beam.PTransform):
    """Stores dead letters, once per activity and input."""

    def __init__(
        self,
        database_url: str,
        run_id: str,
        batch_size: int = 5000,
        retry_policy: RetryPolicy = DEFAULT_POLICY,
    ) -> None:
        super().__init__()
        self._fn = _BufferedWriteFn[ErrorRecord](
            database_url, run_id, batch_size, db.write_errors, "errors", retry_policy
        )

    def expand(self, errors: Any) -> Any:
        return errors | "WriteBatches" >> beam.ParDo(self._fn)
