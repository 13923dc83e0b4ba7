"""Arrow tables in and out of PostgreSQL: a key range's pending activities (a CSV ``COPY``
parsed by Arrow), results (a binary ``COPY``, ``pipeline.pgbinary``) and the run's write log.

Apart from the other store modules so that the driver, which only counts, plans and records,
does not load Arrow and numpy (a quarter of a second) before it knows there is anything to compute.
"""

from __future__ import annotations

import io
import json
from typing import Any

import psycopg2.extensions
import pyarrow as pa
import pyarrow.csv as pa_csv
import sqlalchemy as sa
from psycopg2 import sql
from sqlalchemy.dialects import postgresql

from pipeline import levels, pgbinary
from pipeline.model import ActivityType
from pipeline.store.queries import STORED_COLUMN, STORED_FINGERPRINT_COLUMN, pending_query
from pipeline.store.sources import Source
from pipeline.store.tables import (
    DEFAULT_SCHEMA,
    FINGERPRINT_COLUMNS,
    HISTORY_TABLE,
    RESULT_COLUMNS,
    RESULTS_TABLE,
    STORED_RESULT_COLUMNS,
    VERSION_COLUMN,
    WRITES_TABLE,
    qualified,
    table,
)
from pipeline.store.writes import stage, staged_copy


def read_pending_table(
    conn: psycopg2.extensions.connection,
    source: Source | ActivityType,
    start: Any,
    end: Any,
    arrow_schema: pa.Schema,
    date_from: str | None = None,
    date_to: str | None = None,
    schema: str = DEFAULT_SCHEMA,
    window: tuple[str | None, str | None] | None = None,
    recheck: bool = False,
) -> pa.Table:
    """The pending rows of one key range (or follow ``window``) as an Arrow table, in one
    ``COPY … TO STDOUT``, in a read-only transaction (a source is someone else's: the read
    never writes to it).

    ``arrow_schema`` gives the activity columns' Arrow types (``activity_date`` as ISO text);
    the table has three more columns: ``activity_version`` (the row's version), ``stored``
    (it has a result, whose version differs) and ``stored_fingerprint`` (that result's input
    fingerprint). An unquoted empty field is NULL and a quoted one the empty string, as
    PostgreSQL writes them.
    """
    query, params = pending_query(source, start, end, date_from, date_to, schema, window, recheck)
    arrow_schema = (
        arrow_schema.append(pa.field(VERSION_COLUMN, pa.int64()))
        .append(pa.field(STORED_COLUMN, pa.bool_()))
        .append(pa.field(STORED_FINGERPRINT_COLUMN, pa.int64()))
    )
    buf = io.BytesIO()
    with conn.cursor() as cur:
        cur.execute("SET TRANSACTION READ ONLY")
        # A join to the results planned as a loop would go quadratic if the statistics say
        # the results table is empty when it is not (right after a first run): hash or merge.
        # (A follow window is a few rows: for them, a loop over the results' index is right.)
        if window is None:
            cur.execute("SET LOCAL enable_nestloop = off")
        copy = sql.SQL("COPY ({}) TO STDOUT WITH (FORMAT csv)").format(query)
        cur.copy_expert(cur.mogrify(copy, params).decode(), buf)
    conn.commit()
    if buf.tell() == 0:
        return arrow_schema.empty_table()
    buf.seek(0)
    return pa_csv.read_csv(
        buf,
        read_options=pa_csv.ReadOptions(column_names=arrow_schema.names, block_size=1 << 24),
        parse_options=pa_csv.ParseOptions(newlines_in_values=True),
        convert_options=pa_csv.ConvertOptions(
            column_types=arrow_schema,
            null_values=[""],
            strings_can_be_null=True,
            quoted_strings_can_be_null=False,
            true_values=["t"],
            false_values=["f"],
        ),
    )


#: A results table's column that says which results replace those of an older version of
#: their activity (``supersede_results_table``), not present in the stored table.
REPLACES_COLUMN = "replaces"


def write_results_table(
    conn: psycopg2.extensions.connection,
    results: pa.Table,
    run_id: str,
    schema: str = DEFAULT_SCHEMA,
    text_ids: bool = False,
) -> int:
    """Insert a results table (``result_schema``, with the fingerprint columns when computed)
    not already stored, in binary ``COPY`` (``pipeline.pgbinary``). Returns rows written.

    Columns that are empty in the whole batch (the flight fields of electricity, say) are left
    out of the COPY: they are NULL by default, and PostgreSQL reads fewer fields.
    """
    data, order = _encode(results, run_id, text_ids)
    conflict = sql.SQL("(activity_type, activity_id) DO NOTHING")

    def log(cur: psycopg2.extensions.cursor, written: list[tuple[str, str]] | None) -> None:
        log_writes(cur, run_id, results if written is None else _only(results, written), schema)

    return staged_copy(conn, RESULTS_TABLE, order, data, conflict, "binary", log, schema)


def _encode(results: pa.Table, run_id: str, text_ids: bool) -> tuple[pgbinary.CopyData, list[str]]:
    """A results table as binary COPY data, with the run id; columns empty in the whole batch
    left out (they are NULL by default). Returns the data and its column order."""
    present = [c for c in RESULT_COLUMNS if results.column(c).null_count < results.num_rows]
    present += [c for c in (*FINGERPRINT_COLUMNS, VERSION_COLUMN) if c in results.column_names]
    copied = results.select(present).append_column(
        "run_id", pa.array([run_id] * results.num_rows, type=pa.string())
    )
    string_ids = pa.types.is_string(results.schema.field("activity_id").type)
    id_type: pgbinary.PgType = "text" if text_ids else "uuid"
    types = [
        id_type if c == "activity_id" and string_ids else _RESULT_PG_TYPES[c]
        for c in copied.column_names
    ]
    return pgbinary.encode(copied, types)


def supersede_results_table(
    conn: psycopg2.extensions.connection,
    results: pa.Table,
    run_id: str,
    reason: str,
    schema: str = DEFAULT_SCHEMA,
    text_ids: bool = False,
) -> int:
    """Replaces the stored results of the activities in ``results`` (new versions of them), in
    one transaction: each current row moves to history first, whole, with ``reason`` and this
    run's id; then the new values take its place. Returns how many results were written.

    Idempotent and safe beside other runs: only a stored row of another activity version (or
    of the same version with another input fingerprint) is replaced, so a retried flush, or a
    second run that computed the same version, changes nothing; a result that is gone
    meanwhile is inserted."""
    data, order = _encode(results, run_id, text_ids)
    cols = sql.SQL(", ").join(map(sql.Identifier, order))
    current = qualified(RESULTS_TABLE, schema)
    stored = sql.SQL(", ").join(sql.SQL("r.") + sql.Identifier(c) for c in STORED_RESULT_COLUMNS)
    # Another version, or the same version with other content (an application that changed
    # a row without its version column: ``--recheck``).
    differs = sql.SQL(
        "s.activity_type = r.activity_type AND s.activity_id = r.activity_id "
        "AND (r.activity_version IS DISTINCT FROM s.activity_version "
        "OR r.input_fingerprint IS DISTINCT FROM s.input_fingerprint)"
    )
    with conn.cursor() as cur:
        staging = stage(cur, RESULTS_TABLE, order, data, "binary", schema)
        # Lock the rows to replace first (in key order, so that two runs do not deadlock):
        # the statements after it see what a concurrent run committed meanwhile, and leave
        # a row that run already replaced with this version alone.
        cur.execute(
            sql.SQL(
                "SELECT 1 FROM {t} r JOIN {s} s ON s.activity_type = r.activity_type "
                "AND s.activity_id = r.activity_id ORDER BY r.activity_type, r.activity_id "
                "FOR UPDATE OF r"
            ).format(t=current, s=staging)
        )
        cur.execute(
            sql.SQL(
                "INSERT INTO {h} ({all}, restatement_id, reason) SELECT {stored}, %s, %s "
                "FROM {t} r JOIN {s} s ON {differs} ON CONFLICT DO NOTHING"
            ).format(
                h=qualified(HISTORY_TABLE, schema),
                all=sql.SQL(", ").join(map(sql.Identifier, STORED_RESULT_COLUMNS)),
                stored=stored,
                t=current,
                s=staging,
                differs=differs,
            ),
            (run_id, reason),
        )
        cur.execute(
            sql.SQL(
                "UPDATE {t} r SET {sets}, created_at = now() FROM {s} s WHERE {differs} "
                "RETURNING r.activity_type, r.activity_id::text"
            ).format(
                t=current,
                s=staging,
                differs=differs,
                sets=sql.SQL(", ").join(
                    sql.SQL("{c} = s.{c}").format(c=sql.Identifier(c))
                    for c in STORED_RESULT_COLUMNS
                    if c not in ("activity_type", "activity_id", "created_at")
                ),
            )
        )
        written = [(t, k) for t, k in cur.fetchall()]
        cur.execute(
            sql.SQL(
                "INSERT INTO {t} ({c}) SELECT {c} FROM {s} ON CONFLICT DO NOTHING "
                "RETURNING activity_type, activity_id::text"
            ).format(t=current, c=cols, s=staging)
        )
        written += [(t, k) for t, k in cur.fetchall()]
        if written:
            log_writes(cur, run_id, _only(results, written), schema, replaced=True)
    conn.commit()
    return len(written)


def _only(results: pa.Table, keys: list[tuple[str, str]]) -> pa.Table:
    """The rows of ``results`` with the given (activity type, id as text) keys."""
    wanted = set(keys)
    ids = results.column("activity_id").cast(pa.string()).to_pylist()
    types = results.column("activity_type").to_pylist()
    mask = [(t, i) in wanted for t, i in zip(types, ids, strict=True)]
    return results.filter(pa.array(mask, pa.bool_()))


def log_writes(
    cur: psycopg2.extensions.cursor,
    run_id: str,
    written: pa.Table,
    schema: str = DEFAULT_SCHEMA,
    replaced: bool = False,
) -> None:
    """Records what a flush wrote (``levels.tally`` per activity type) in ``WRITES_TABLE``;
    ``replaced``: these results replaced those of older versions of their activities.

    ``levels.tally`` refuses a sum that is not finite with a sentence saying so; the JSON is
    written strictly as well (no ``Infinity``, which PostgreSQL's json refuses)."""
    rows = [
        (
            run_id,
            t,
            c.results,
            c.kg_co2e,
            json.dumps({k: list(v) for k, v in c.levels.items()}, allow_nan=False),
            c.results if replaced else 0,
        )
        for t, c in levels.tally(written).items()
    ]
    if rows:
        cur.executemany(
            sql.SQL(
                "INSERT INTO {} (run_id, activity_type, results, kg_co2e, levels, replaced) "
                "VALUES (%s, %s, %s, %s, %s, %s)"
            ).format(qualified(WRITES_TABLE, schema)),
            rows,
        )


def _pg_type(column: sa.Column[Any]) -> pgbinary.PgType:
    """The binary COPY type of a column of the schema."""
    typ = column.type
    if isinstance(typ, postgresql.UUID):
        return "uuid"
    if isinstance(typ, sa.SmallInteger):
        return "int2"
    if isinstance(typ, sa.BigInteger):
        return "int8"
    if isinstance(typ, sa.Integer):
        return "int4"
    if isinstance(typ, sa.Float):
        return "float8"
    if isinstance(typ, sa.Boolean):
        return "bool"
    if isinstance(typ, sa.Text):
        return "text"
    raise TypeError(f"no binary COPY type for {column.name} ({typ})")


_RESULT_PG_TYPES: dict[str, pgbinary.PgType] = {
    c.name: _pg_type(c) for c in table(RESULTS_TABLE).columns if c.name != "created_at"
}
