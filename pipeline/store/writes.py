"""Bulk writes: ``COPY`` straight into a table, or through a staging table and ``INSERT … ON
CONFLICT DO NOTHING`` when some rows already exist; one transaction per flush, idempotent.
"""

from __future__ import annotations

import dataclasses
import io
import math
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any, Literal

import psycopg2
import psycopg2.errors
import psycopg2.extensions
from psycopg2 import sql

from pipeline.model import (
    EmissionResult,
    ErrorRecord,
)
from pipeline.store.tables import (
    DEFAULT_SCHEMA,
    ERROR_COLUMNS,
    ERRORS_TABLE,
    RESULT_COLUMNS,
    RESULTS_TABLE,
    qualified,
)

if TYPE_CHECKING:
    from pipeline.pgbinary import CopyData

# --- Bulk writes ---------------------------------------------------------------------------


def _copy_field(value: Any) -> str:
    """One value in PostgreSQL's CSV COPY format: NULL is an empty unquoted field."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "t" if value else "f"
    if isinstance(value, float):
        if math.isnan(value):
            return "NaN"
        if math.isinf(value):
            return "Infinity" if value > 0 else "-Infinity"
        return repr(value)  # shortest text that round-trips the double exactly
    if isinstance(value, int):
        return str(value)
    text = str(value)
    return '"' + text.replace('"', '""') + '"'


def copy_buffer(rows: Iterable[Sequence[Any]]) -> io.StringIO:
    """Rows as a CSV text buffer for ``COPY … FROM STDIN``."""
    buf = io.StringIO()
    for row in rows:
        buf.write(",".join(_copy_field(v) for v in row))
        buf.write("\n")
    buf.seek(0)
    return buf


def _staged_insert(
    conn: psycopg2.extensions.connection,
    table: str,
    columns: Sequence[str],
    rows: Sequence[Sequence[Any]],
    conflict: sql.Composable,
    schema: str = DEFAULT_SCHEMA,
) -> int:
    """COPY rows into a temporary staging table, then insert what is new; one transaction."""
    return staged_copy(conn, table, columns, copy_buffer(rows), conflict, schema=schema)


_COPY_CHUNK = 1 << 20  # bytes handed to the server per read of the COPY data


def staged_copy(
    conn: psycopg2.extensions.connection,
    table: str,
    columns: Sequence[str],
    csv_data: io.StringIO | io.BytesIO | CopyData,
    conflict: sql.Composable,
    fmt: Literal["csv", "binary"] = "csv",
    after: Callable[[psycopg2.extensions.cursor, list[tuple[str, str]] | None], None] | None = None,
    schema: str = DEFAULT_SCHEMA,
) -> int:
    """Insert the rows that are new (CSV or binary COPY data), in one transaction; returns how
    many were written.

    First, optimistically, one ``COPY`` straight into the table: when every row is new (the
    usual case: rows were read as pending just before) that is all. If a row already exists
    (a retried bundle, a concurrent run), the unique key refuses the whole COPY, nothing of it
    is kept, and the rows go through a staging table and ``INSERT … ON CONFLICT DO NOTHING``.

    ``after`` runs in the same transaction, before the commit, with ``None`` when every row
    was written, or else the keys (``activity_type``, ``activity_id`` as text) of those that
    were.
    """
    cols = sql.SQL(", ").join(map(sql.Identifier, columns))
    target = qualified(table, schema)
    try:
        with conn.cursor() as cur:
            cur.copy_expert(
                sql.SQL("COPY {t} ({c}) FROM STDIN WITH (FORMAT {f})").format(
                    t=target, c=cols, f=sql.SQL(fmt)
                ),
                csv_data,
                size=_COPY_CHUNK,
            )
            written = cur.rowcount
            if after is not None:
                after(cur, None)
        conn.commit()
        return written
    except psycopg2.errors.UniqueViolation:
        conn.rollback()
    csv_data.seek(0)
    staging = sql.Identifier(f"staging_{table}")
    with conn.cursor() as cur:
        cur.execute(
            sql.SQL(
                "CREATE TEMP TABLE IF NOT EXISTS {s} ON COMMIT DELETE ROWS "
                "AS SELECT * FROM {t} WITH NO DATA"
            ).format(s=staging, t=target)
        )
        cur.copy_expert(
            sql.SQL("COPY {s} ({c}) FROM STDIN WITH (FORMAT {f})").format(
                s=staging, c=cols, f=sql.SQL(fmt)
            ),
            csv_data,
            size=_COPY_CHUNK,
        )
        insert = sql.SQL(
            "INSERT INTO {t} ({c}) SELECT {c} FROM {s} ON CONFLICT {k} DO NOTHING"
        ).format(t=target, c=cols, s=staging, k=conflict)
        if after is not None:
            insert += sql.SQL(" RETURNING activity_type, activity_id::text")
        cur.execute(insert)
        written = cur.rowcount
        if after is not None:
            after(cur, [(t, k) for t, k in cur.fetchall()])
    conn.commit()
    return written


def write_results(
    conn: psycopg2.extensions.connection,
    results: Sequence[EmissionResult],
    run_id: str,
    schema: str = DEFAULT_SCHEMA,
) -> int:
    """Insert results not already stored (unique per activity). Returns rows written."""
    columns = RESULT_COLUMNS + ("run_id",)
    rows = [tuple(getattr(r, c) for c in RESULT_COLUMNS) + (run_id,) for r in results]
    conflict = sql.SQL("(activity_type, activity_id)")
    return _staged_insert(conn, RESULTS_TABLE, columns, rows, conflict, schema)


def error_hash(error: ErrorRecord) -> str:
    """A stable fingerprint of the bad input, so the same bad row is recorded once."""
    import hashlib

    return hashlib.sha256(error.input_repr.encode()).hexdigest()


def write_errors(
    conn: psycopg2.extensions.connection,
    errors: Sequence[ErrorRecord],
    run_id: str,
    schema: str = DEFAULT_SCHEMA,
) -> int:
    """Insert dead letters not already recorded for the same input. Returns rows written."""
    columns = ERROR_COLUMNS + ("input_hash", "run_id")
    rows = [dataclasses.astuple(e) + (error_hash(e), run_id) for e in errors]
    conflict = sql.SQL("(activity_type, activity_id, input_hash)")
    return _staged_insert(conn, ERRORS_TABLE, columns, rows, conflict, schema)
