"""Bulk writes: ``COPY`` straight into a table, or through a staging table and ``INSERT … ON
CONFLICT DO NOTHING`` when some rows already exist; one transaction per flush, idempotent.
"""

from __future__ import annotations

import collections
import dataclasses
import io
import json
import math
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any, Literal

import psycopg2
import psycopg2.errors
import psycopg2.extensions
from psycopg2 import sql

from pipeline.levels import LEVELS
from pipeline.model import (
    EmissionResult,
    ErrorRecord,
)
from pipeline.store.queries import key_cast
from pipeline.store.sources import (
    Source,
    Sources,
    default_sources,
    from_clause,
    key_column,
    read_only,
    read_only_within,
    relation,
    version_expression,
)
from pipeline.store.tables import (
    DEFAULT_SCHEMA,
    ERROR_COLUMNS,
    ERRORS_TABLE,
    HISTORY_TABLE,
    RESULT_COLUMNS,
    RESULTS_TABLE,
    STORED_RESULT_COLUMNS,
    WRITES_TABLE,
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


def stage(
    cur: psycopg2.extensions.cursor,
    table: str,
    columns: Sequence[str],
    data: io.StringIO | io.BytesIO | CopyData,
    fmt: Literal["csv", "binary"] = "csv",
    schema: str = DEFAULT_SCHEMA,
) -> sql.Identifier:
    """COPY rows into a temporary staging table shaped like ``table`` (emptied at commit, in
    the session's own ``pg_temp``); returns its name."""
    staging = sql.Identifier(f"staging_{table}")
    cur.execute(
        sql.SQL(
            "CREATE TEMP TABLE IF NOT EXISTS {s} ON COMMIT DELETE ROWS "
            "AS SELECT * FROM {t} WITH NO DATA"
        ).format(s=staging, t=qualified(table, schema))
    )
    cur.copy_expert(
        sql.SQL("COPY {s} ({c}) FROM STDIN WITH (FORMAT {f})").format(
            s=staging, c=sql.SQL(", ").join(map(sql.Identifier, columns)), f=sql.SQL(fmt)
        ),
        data,
        size=_COPY_CHUNK,
    )
    return staging


def copy_rows(
    cur: psycopg2.extensions.cursor,
    table: str,
    columns: Sequence[str],
    data: io.StringIO | io.BytesIO | CopyData,
    fmt: Literal["csv", "binary"] = "csv",
    schema: str = DEFAULT_SCHEMA,
) -> int:
    """One ``COPY`` straight into ``table``; returns the rows copied. A row that breaks a unique
    key refuses the whole COPY (``UniqueViolation``; the transaction is then to be rolled back)."""
    cur.copy_expert(
        sql.SQL("COPY {t} ({c}) FROM STDIN WITH (FORMAT {f})").format(
            t=qualified(table, schema),
            c=sql.SQL(", ").join(map(sql.Identifier, columns)),
            f=sql.SQL(fmt),
        ),
        data,
        size=_COPY_CHUNK,
    )
    return int(cur.rowcount)


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
            written = copy_rows(cur, table, columns, csv_data, fmt, schema)
            if after is not None:
                after(cur, None)
        conn.commit()
        return written
    except psycopg2.errors.UniqueViolation:
        conn.rollback()
    csv_data.seek(0)
    with conn.cursor() as cur:
        staging = stage(cur, table, columns, csv_data, fmt, schema)
        insert = sql.SQL("INSERT INTO {t} ({c}) SELECT {c} FROM {s} ON CONFLICT {k}").format(
            t=target, c=cols, s=staging, k=conflict
        )
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
    conflict = sql.SQL("(activity_type, activity_id) DO NOTHING")
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
    sources: Sources | None = None,
) -> int:
    """Insert dead letters not already recorded for the same input. Returns rows written.

    In the same transaction, the result of an activity corrected into input the methodology
    refuses leaves ``emission_results`` for its history (``retire_refused``): the dead letter of
    its input as it is now is its one truth. ``sources``: where each type is read (default: the
    pipeline's own tables)."""
    columns = ERROR_COLUMNS + ("input_hash", "run_id")
    unique = {(e.activity_type, str(e.activity_id), error_hash(e)): e for e in errors}
    rows = [dataclasses.astuple(e) + (key[2], run_id) for key, e in unique.items()]
    # The same bad input again, at a new row version (a no-op update, a restore): the record
    # stands, with the version now current, so that the row is not read again for nothing.
    # A record retired while its activity seemed deleted (a wrong mapping) reopens.
    conflict = sql.SQL(
        "(activity_type, activity_id, input_hash) DO UPDATE SET activity_version = "
        "EXCLUDED.activity_version, retired_at = NULL WHERE {e}.activity_version IS DISTINCT "
        "FROM EXCLUDED.activity_version OR {e}.retired_at IS NOT NULL"
    ).format(e=qualified(ERRORS_TABLE, schema))

    def log(cur: psycopg2.extensions.cursor, written: list[tuple[str, str]] | None) -> None:
        stored = [t for t, _, _ in unique] if written is None else [t for t, _ in written]
        log_errors(cur, run_id, collections.Counter(stored), schema)
        retire_refused(cur, list(unique.values()), run_id, sources, schema)

    return staged_copy(
        conn, ERRORS_TABLE, columns, copy_buffer(rows), conflict, after=log, schema=schema
    )


def retire_refused(
    cur: psycopg2.extensions.cursor,
    errors: Sequence[ErrorRecord],
    run_id: str,
    sources: Sources | None = None,
    schema: str = DEFAULT_SCHEMA,
) -> int:
    """Moves to history (reason ``activity_changed``, ``run_id``) the stored results of the
    activities these dead letters refuse, when the result is of another version and the
    activity's row is still at the dead letter's version (a compare-and-swap, as
    ``bulk.supersede_results_table`` does: the source read in a read-only part, under the
    results' row locks). Otherwise the old result would stay in the totals beside the dead
    letter, and every run would read the activity again. Returns how many were retired."""
    sources = sources if sources is not None else default_sources(schema)
    retired = 0
    for activity_type in sorted({e.activity_type for e in errors}):
        versioned = [
            e for e in errors if e.activity_type == activity_type and e.activity_version is not None
        ]
        if not versioned:
            continue
        source = sources[activity_type]
        key_type = source.key_type or (
            "uuid" if isinstance(versioned[0].activity_id, str) else "bigint"
        )
        refused = sql.SQL("unnest(%s::{k}[], %s::bigint[]) AS e(id, version)").format(
            k=sql.SQL(key_type)
        )
        params = ([str(e.activity_id) for e in versioned], [e.activity_version for e in versioned])
        cur.execute(
            sql.SQL(
                "SELECT e.id::text, e.version FROM {r} r JOIN {e} ON r.activity_id = e.id "
                "WHERE r.activity_type = %s AND r.activity_version IS DISTINCT FROM e.version "
                "ORDER BY r.activity_id FOR UPDATE OF r"
            ).format(r=qualified(RESULTS_TABLE, schema), e=refused),
            (*params, activity_type),
        )
        candidates = cur.fetchall()
        if not candidates:
            continue
        with read_only_within(cur):
            cur.execute(
                sql.SQL(
                    "SELECT c.id FROM unnest(%s::text[], %s::bigint[]) AS c(id, version) "
                    "WHERE EXISTS (SELECT 1 FROM {source} WHERE {key} = c.id::{k} "
                    "AND {version} = c.version)"
                ).format(
                    source=from_clause(source),
                    key=key_column(source),
                    k=sql.SQL(key_type),
                    version=version_expression(source),
                ),
                ([i for i, _ in candidates], [v for _, v in candidates]),
            )
            current = [i for (i,) in cur.fetchall()]
        if not current:
            continue
        stored = sql.SQL(", ").join(map(sql.Identifier, STORED_RESULT_COLUMNS))
        cur.execute(
            sql.SQL(
                "WITH gone AS (DELETE FROM {r} r WHERE r.activity_type = %s "
                "AND r.activity_id = ANY(%s::{k}[]) RETURNING {stored}) "
                "INSERT INTO {h} ({stored}, restatement_id, reason) "
                "SELECT {stored}, %s, 'activity_changed' FROM gone"
            ).format(
                r=qualified(RESULTS_TABLE, schema),
                h=qualified(HISTORY_TABLE, schema),
                k=sql.SQL(key_type),
                stored=stored,
            ),
            (activity_type, current, run_id),
        )
        retired += cur.rowcount
    return retired


def log_errors(
    cur: psycopg2.extensions.cursor,
    run_id: str,
    stored: dict[str, int],
    schema: str = DEFAULT_SCHEMA,
) -> None:
    """Records in ``WRITES_TABLE`` how many dead letters a flush stored (new ones, and those
    given a new version of their activity) per activity type, in the flush's transaction: a
    run counts what it stored, and the log's trigger refuses the flush of a run that is no
    longer running (revision 0006)."""
    none = json.dumps({name: [0, 0.0] for name in LEVELS})
    rows = [(run_id, t, 0, 0.0, none, 0, n) for t, n in sorted(stored.items()) if n]
    if rows:
        cur.executemany(
            sql.SQL(
                "INSERT INTO {} (run_id, activity_type, results, kg_co2e, levels, replaced, "
                "errors) VALUES (%s, %s, %s, %s, %s, %s, %s)"
            ).format(qualified(WRITES_TABLE, schema)),
            rows,
        )


def refresh_versions(
    conn: psycopg2.extensions.connection,
    activity_type: str,
    ids: Sequence[Any],
    versions: Sequence[int],
    key_type: str,
    schema: str = DEFAULT_SCHEMA,
    fingerprints: Sequence[int | None] | None = None,
) -> int:
    """Records a new version of activities whose content did not change (a no-op ``UPDATE``, a
    restore): their results stand, and they are not read again. One statement; returns how
    many results it touched.

    ``fingerprints``: the input fingerprints of the results as the reader compared them; a
    result replaced since (by another writer, from other content) is left alone, so that no
    result claims a version it was not computed from."""
    if not ids:
        return 0
    same = list(fingerprints) if fingerprints is not None else [None] * len(ids)
    with conn.cursor() as cur:
        cur.execute(
            sql.SQL(
                "UPDATE {r} r SET activity_version = v.version FROM unnest(%s::{k}[], "
                "%s::bigint[], %s::bigint[]) AS v(id, version, fingerprint) "
                "WHERE r.activity_type = %s AND r.activity_id = v.id "
                "AND r.activity_version IS DISTINCT FROM v.version "
                "AND (%s OR r.input_fingerprint IS NOT DISTINCT FROM v.fingerprint)"
            ).format(r=qualified(RESULTS_TABLE, schema), k=sql.SQL(key_type)),
            (
                [str(i) for i in ids],
                list(versions),
                same,
                activity_type,
                fingerprints is None,
            ),
        )
        touched = cur.rowcount
    conn.commit()
    return touched


def retire_deleted(
    conn: psycopg2.extensions.connection,
    source: Source,
    start: Any,
    end: Any,
    run_id: str,
    schema: str = DEFAULT_SCHEMA,
) -> tuple[int, int]:
    """Retires, within one key range, the results and dead letters of activities that no longer
    exist: each result moves to history (reason ``activity_deleted``, this run's id) in the
    statement that deletes it, and leaves the totals; each dead letter stays as a record, marked
    retired. Set-based; returns (results retired, dead letters retired). Safe to repeat: a
    result retired is no longer there to move.

    Which activities are gone is asked first, in a read-only transaction (the source is a
    team's SQL: it never runs where it could write, ``gone_in_range``); the rows found are then
    retired in one transaction, each only if it is still the row the probe saw (its ``xmin``):
    a result another writer replaced since stays."""
    results, errors = gone_in_range(conn, source, start, end, schema)
    if not results and not errors:
        return 0, 0
    # (A source not checked has no key type: the pipeline's own table, whose ids are these.)
    key_type = source.key_type or (
        "uuid" if results and isinstance(results[0][0], str) else "bigint"
    )
    params = {
        "activity_type": source.activity_type,
        "run_id": run_id,
        "ids": [str(k) for k, _ in results],
        "xmins": [x for _, x in results],
        "errors": errors,
    }
    stored = sql.SQL(", ").join(map(sql.Identifier, STORED_RESULT_COLUMNS))
    where = sql.SQL(
        "r.activity_type = %(activity_type)s AND (r.activity_id, r.xmin::text) IN "
        "(SELECT g.id::{k}, g.x FROM unnest(%(ids)s::text[], %(xmins)s::text[]) AS g(id, x))"
    ).format(k=sql.SQL(key_type))

    with conn.cursor() as cur:
        cur.execute(
            sql.SQL(
                "WITH gone AS (DELETE FROM {r} r WHERE {where} RETURNING {stored}) "
                "INSERT INTO {h} ({stored}, restatement_id, reason) "
                "SELECT {stored}, %(run_id)s, 'activity_deleted' FROM gone"
            ).format(
                r=qualified(RESULTS_TABLE, schema),
                h=qualified(HISTORY_TABLE, schema),
                where=where,
                stored=stored,
            ),
            params,
        )
        gone = cur.rowcount
        cur.execute(
            sql.SQL(
                "UPDATE {e} e SET retired_at = now() WHERE e.retired_at IS NULL "
                "AND e.id = ANY(%(errors)s::bigint[])"
            ).format(e=qualified(ERRORS_TABLE, schema)),
            params,
        )
        retired_errors = cur.rowcount
    conn.commit()
    return int(gone), int(retired_errors)


def gone_in_range(
    conn: psycopg2.extensions.connection,
    source: Source,
    start: Any,
    end: Any,
    schema: str = DEFAULT_SCHEMA,
) -> tuple[list[tuple[Any, str]], list[int]]:
    """Within one key range, the results ((activity id, row ``xmin``)) and open dead letters
    (ids) whose activity no longer exists; in a read-only transaction of its own."""
    params: dict[str, Any] = {"activity_type": source.activity_type}
    bounds: dict[str, list[sql.Composable]] = {"r": [], "e": []}
    for alias in bounds:
        column = sql.SQL("{}.activity_id").format(sql.Identifier(alias))
        if start is not None:
            bounds[alias].append(
                column + sql.SQL(" >= %(start)s") + key_cast(start, source.key_type)
            )
            params["start"] = str(start)
        if end is not None:
            bounds[alias].append(column + sql.SQL(" < %(end)s") + key_cast(end, source.key_type))
            params["end"] = str(end)

    def where(alias: str) -> sql.Composed:
        return sql.SQL(" AND ").join(
            [
                sql.SQL("{}.activity_type = %(activity_type)s").format(sql.Identifier(alias)),
                *bounds[alias],
                sql.SQL("NOT EXISTS (SELECT 1 FROM ({relation}) a WHERE a.id = {k})").format(
                    relation=relation(source),
                    k=sql.SQL("{}.activity_id").format(sql.Identifier(alias)),
                ),
            ]
        )

    try:
        with conn.cursor() as cur:
            read_only(conn)
            cur.execute("SET LOCAL enable_nestloop = off")  # see ``bulk.read_pending_table``
            cur.execute(
                sql.SQL("SELECT r.activity_id, r.xmin::text FROM {r} r WHERE {w}").format(
                    r=qualified(RESULTS_TABLE, schema), w=where("r")
                ),
                params,
            )
            results = [(k, str(x)) for k, x in cur.fetchall()]
            cur.execute(
                sql.SQL("SELECT e.id FROM {e} e WHERE e.retired_at IS NULL AND {w}").format(
                    e=qualified(ERRORS_TABLE, schema), w=where("e")
                ),
                params,
            )
            errors = [int(i) for (i,) in cur.fetchall()]
    finally:
        conn.rollback()
    return results, errors
