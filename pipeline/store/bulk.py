"""Arrow tables in and out of PostgreSQL: a key range's pending activities (a CSV ``COPY``
parsed by Arrow), results (a binary ``COPY``, ``pipeline.pgbinary``) and the run's write log.

Apart from the other store modules so that the driver, which only counts, plans and records,
does not load Arrow and numpy (a quarter of a second) before it knows there is anything to compute.
"""

from __future__ import annotations

import dataclasses
import io
import json
from typing import Any

import psycopg2.errors
import psycopg2.extensions
import pyarrow as pa
import pyarrow.csv as pa_csv
import sqlalchemy as sa
from psycopg2 import sql
from sqlalchemy.dialects import postgresql

from pipeline import levels, pgbinary
from pipeline.model import ActivityType
from pipeline.store.queries import STORED_COLUMN, STORED_FINGERPRINT_COLUMN, pending_query
from pipeline.store.sources import (
    Source,
    Sources,
    default_sources,
    from_clause,
    key_column,
    read_only_within,
    version_expression,
)
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
from pipeline.store.writes import copy_rows, stage


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
    sources: Sources | None = None,
) -> int:
    """Store a results table (``result_schema``, with the fingerprint and version columns when
    computed) of activities read as new, in one binary ``COPY`` (``pipeline.pgbinary``).
    Returns rows written.

    The hot path: every row is new (they were read as pending just before), and one ``COPY``
    straight into the table is all. When a row is already stored (a retried flush, or another
    run or follow stored a result of the activity meanwhile), the unique key refuses the whole
    COPY, and the table goes through ``supersede_results_table`` instead, which keeps whichever
    value was computed from the activity's input as it is now.

    Columns that are empty in the whole batch (the flight fields of electricity, say) are left
    out of the COPY: they are NULL by default, and PostgreSQL reads fewer fields.
    """
    data, order = _encode(results, run_id, text_ids)
    try:
        with conn.cursor() as cur:
            written = copy_rows(cur, RESULTS_TABLE, order, data, "binary", schema)
            log_writes(cur, run_id, results, schema)
        conn.commit()
        return written
    except psycopg2.errors.UniqueViolation:
        conn.rollback()
    superseded = supersede_results_table(
        conn, results, run_id, "activity_changed", schema, text_ids, sources
    )
    return superseded.written


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


@dataclasses.dataclass(frozen=True)
class Superseded:
    """What ``supersede_results_table`` did with a results table."""

    #: Results stored: ``replaced`` plus those of activities that had none.
    written: int = 0
    #: Stored results replaced (each moved to history first).
    replaced: int = 0
    #: Results computed from an input that has changed since (or is gone): dropped, their
    #: activities left pending for the next run (or follow) to compute from the input as it is.
    stale: int = 0


def supersede_results_table(
    conn: psycopg2.extensions.connection,
    results: pa.Table,
    run_id: str,
    reason: str,
    schema: str = DEFAULT_SCHEMA,
    text_ids: bool = False,
    sources: Sources | None = None,
    log: bool = True,
) -> Superseded:
    """The one path by which every writer (batch runs, follow, restatements) replaces stored
    results, in one transaction; ``results`` carries the version of the activity row each
    value was computed from (``activity_version``) and its fingerprints.

    1. The stored rows of these activities are locked, in key order (two writers do not
       deadlock, and none changes them until this one commits).
    2. Compare-and-swap on the input: a value whose activity row is no longer at the version it
       was computed from (``sources``: where each type is read; default: the pipeline's own
       tables) is dropped: a newer result is never replaced by an older one, and the activity
       stays pending until a writer brings the value of its input as it is now.
    3. A stored row computed from anything else (another version, input or factor fingerprint:
       the same version with other content is an application that changed a row without its
       version column, ``--recheck``) moves, whole, to history (with ``reason`` and
       ``run_id``), and the new value takes its place, in one statement: what is kept is
       exactly what is replaced.
    4. The values of activities with no stored result are inserted.

    Idempotent: a retried flush, or a second writer with the same value, finds it stored and
    changes nothing; nothing moves to history twice. ``log``: record the writes in the run's
    write log (``log_writes``)."""
    data, order = _encode(results, run_id, text_ids)
    sources = sources if sources is not None else default_sources(schema)
    current = qualified(RESULTS_TABLE, schema)
    with conn.cursor() as cur:
        staging = stage(cur, RESULTS_TABLE, order, data, "binary", schema)
        cur.execute(
            sql.SQL(
                "SELECT 1 FROM {t} r JOIN {n} n ON n.activity_type = r.activity_type "
                "AND n.activity_id = r.activity_id ORDER BY r.activity_type, r.activity_id "
                "FOR UPDATE OF r"
            ).format(t=current, n=staging)
        )
        stale = sum(
            _drop_stale(cur, staging, sources[t])
            for t in sorted(set(results.column("activity_type").to_pylist()))
        )
        replaced = _replace(cur, staging, order, run_id, reason, schema)
        cur.execute(
            sql.SQL(
                "INSERT INTO {t} ({c}) SELECT {c} FROM {n} ON CONFLICT DO NOTHING "
                "RETURNING activity_type, activity_id::text"
            ).format(t=current, c=sql.SQL(", ").join(map(sql.Identifier, order)), n=staging)
        )
        inserted = [(t, k) for t, k in cur.fetchall()]
        if log and replaced:
            log_writes(cur, run_id, _only(results, replaced), schema, replaced=True)
        if log and inserted:
            log_writes(cur, run_id, _only(results, inserted), schema)
    conn.commit()
    return Superseded(len(replaced) + len(inserted), len(replaced), stale)


def _drop_stale(cur: psycopg2.extensions.cursor, staging: sql.Identifier, source: Source) -> int:
    """Drops from the staged results of ``source``'s type those whose activity row is no longer
    at the version they were computed from (or is gone); returns how many.

    The source is read (its key and version only, by its key's index) in a read-only part of
    the writing transaction (``read_only_within``): a team's SQL never runs where it could
    write, and it is read under the locks of the writes it decides."""
    with read_only_within(cur):
        cur.execute(
            sql.SQL(
                "SELECT n.activity_id::text FROM {n} n WHERE n.activity_type = %s "
                "AND NOT EXISTS (SELECT 1 FROM {source} WHERE {key} = n.activity_id "
                "AND {version} = n.activity_version)"
            ).format(
                n=staging,
                source=from_clause(source),
                key=key_column(source),
                version=version_expression(source),
            ),
            (source.activity_type,),
        )
        stale = [k for (k,) in cur.fetchall()]
    if stale:
        cur.execute(
            sql.SQL(
                "DELETE FROM {n} n WHERE n.activity_type = %s AND n.activity_id::text = ANY(%s)"
            ).format(n=staging),
            (source.activity_type, stale),
        )
    return len(stale)


def _replace(
    cur: psycopg2.extensions.cursor,
    staging: sql.Identifier,
    order: list[str],
    run_id: str,
    reason: str,
    schema: str,
) -> list[tuple[str, str]]:
    """Moves each stored row computed from something else than its staged value to history and
    puts the staged value in its place, in one statement (one decision for both); returns the
    keys replaced."""
    current = qualified(RESULTS_TABLE, schema)
    computed_from = ("activity_version", *FINGERPRINT_COLUMNS)
    cur.execute(
        sql.SQL(
            "WITH moved AS (INSERT INTO {h} ({all}, restatement_id, reason) "
            "SELECT {stored}, %s, %s FROM {t} r JOIN {n} n ON n.activity_type = r.activity_type "
            "AND n.activity_id = r.activity_id WHERE ({old}) IS DISTINCT FROM ({new}) "
            "RETURNING activity_type, activity_id) "
            "UPDATE {t} r SET {sets}, created_at = now() FROM {n} n JOIN moved m "
            "ON m.activity_type = n.activity_type AND m.activity_id = n.activity_id "
            "WHERE r.activity_type = n.activity_type AND r.activity_id = n.activity_id "
            "RETURNING r.activity_type, r.activity_id::text"
        ).format(
            h=qualified(HISTORY_TABLE, schema),
            all=sql.SQL(", ").join(map(sql.Identifier, STORED_RESULT_COLUMNS)),
            stored=sql.SQL(", ").join(
                sql.SQL("r.") + sql.Identifier(c) for c in STORED_RESULT_COLUMNS
            ),
            t=current,
            n=staging,
            old=sql.SQL(", ").join(sql.SQL("r.") + sql.Identifier(c) for c in computed_from),
            new=sql.SQL(", ").join(sql.SQL("n.") + sql.Identifier(c) for c in computed_from),
            # Every stored column but the key: a column the staged table leaves out (empty
            # in the whole batch) is NULL there, as it is in a new row.
            sets=sql.SQL(", ").join(
                sql.SQL("{c} = n.{c}").format(c=sql.Identifier(c))
                for c in STORED_RESULT_COLUMNS
                if c not in ("activity_type", "activity_id", "created_at")
            ),
        ),
        (run_id, reason),
    )
    return [(t, k) for t, k in cur.fetchall()]


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
