"""The follow mode's marks: which changes of a source it has read, and which it knows computed.

A source the follow mode reads has a ``follow_by`` column that grows with every insert and
update (the pipeline's own tables number them from a sequence, ``change_seq``; a team's table
may have an ``updated_at``), with an index on it. Each poll (``poll_windows``) returns windows
``(after, up to]`` of that column to read; a window never holds more than ``rows_per_window``
rows, so memory does not grow with a backlog, and a poll never reads the table beyond its
windows, so its cost does not grow with the table.

Transactions commit out of order: a row numbered 100 may become visible after one numbered
101 has been read. So a poll keeps three values per activity type (``follow_marks``):

- ``scanned``: windows up to here have been handed out;
- ``mark``: every row at or below it is visible and computed (a result or a dead letter for
  its current version): a restart would need nothing below it;
- ``pending_xmax``/``pending_mark``: the next mark. Taken as (the snapshot's ``xmax``, how far
  the poll has scanned): a row at or below ``pending_mark`` that this snapshot could not see
  belongs to a transaction that had already started (its number was drawn before the
  snapshot's newest visible row), so once every transaction older than ``pending_xmax`` has
  ended, all of them are visible. A later poll that sees this (its snapshot's ``xmin`` has
  passed ``pending_xmax``) looks at ``(mark, pending_mark]`` once more: what is still to
  compute there (a late commit, or a window still being written) is handed out again, and
  when nothing is, the mark moves up to ``pending_mark``.

A window handed out twice is harmless: the read returns only rows without a result for their
current version, and the writes are idempotent. Two pollers of one type take turns (an
session advisory lock per schema and type).
"""

from __future__ import annotations

import logging
import re
import zlib
from dataclasses import dataclass
from typing import Any

import psycopg2
import psycopg2.extensions
from psycopg2 import sql

from pipeline.model import ActivityType
from pipeline.store.queries import follow_window, pending_query
from pipeline.store.sources import FOLLOW_COLUMN, Source, quote_name, read_only, relation
from pipeline.store.tables import DEFAULT_SCHEMA, MARKS_TABLE, RUNS_TABLE, qualified

_LOG = logging.getLogger(__name__)

Window = tuple[str | None, str]  # (after, up to]: values of the follow_by column, as text


@dataclass(frozen=True)
class Marks:
    """One activity type's row of ``follow_marks``."""

    mark: str | None = None
    scanned: str | None = None
    pending_xmax: int | None = None
    pending_mark: str | None = None


def _lock_key(schema: str, activity_type: ActivityType) -> int:
    return zlib.crc32(f"follow:{schema}:{activity_type}".encode()) - 2**31


def read_marks(
    conn: psycopg2.extensions.connection, activity_type: ActivityType, schema: str = DEFAULT_SCHEMA
) -> Marks | None:
    """The stored marks of a type (None when it has never been followed)."""
    with conn.cursor() as cur:
        cur.execute(
            sql.SQL(
                "SELECT mark, scanned, pending_xmax, pending_mark FROM {} WHERE activity_type = %s"
            ).format(qualified(MARKS_TABLE, schema)),
            (activity_type,),
        )
        row = cur.fetchone()
    return Marks(*row) if row is not None else None


def poll_windows(
    conn: psycopg2.extensions.connection,
    source: Source,
    rows_per_window: int,
    max_windows: int,
    schema: str = DEFAULT_SCHEMA,
    run_id: str | None = None,
) -> list[Window]:
    """The windows of ``source``'s changes to read now (see the module's docstring), the marks
    moved on. The source is read in a read-only transaction of its own (its SQL is a team's:
    it never runs where it could write), between reading the marks and storing them; an
    advisory lock held by the session over the three makes two pollers take turns.

    With ``run_id``, the marks move, and windows are handed out, only while that run is
    ``running`` (checked in the transaction that stores the marks): a run marked abandoned
    while it was frozen polls nothing and leaves the marks as they were, for the next run."""
    t = source.activity_type
    marks_table = qualified(MARKS_TABLE, schema)
    still_running = (
        sql.SQL("TRUE")
        if run_id is None
        else sql.SQL("EXISTS (SELECT 1 FROM {} WHERE run_id = {} AND status = 'running')").format(
            qualified(RUNS_TABLE, schema), sql.Literal(run_id)
        )
    )
    lock = _lock_key(schema, t)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT pg_advisory_lock(%s)", (lock,))
            marks = _stored_marks(cur, source, marks_table, still_running)
            conn.commit()
            if marks is None:
                return []  # its run is no longer running, and the type has no marks yet
            read_only(conn)
            windows, stored = _windows(cur, source, marks, rows_per_window, max_windows, schema)
            conn.commit()
            cur.execute(
                sql.SQL(
                    "UPDATE {} SET source = %s, mark = %s, scanned = %s, pending_xmax = %s, "
                    "pending_mark = %s, updated_at = now() WHERE activity_type = %s AND {}"
                ).format(marks_table, still_running),
                (
                    source.name,
                    stored.mark,
                    stored.scanned,
                    stored.pending_xmax,
                    stored.pending_mark,
                    t,
                ),
            )
            if not cur.rowcount:
                windows = []  # its run is no longer running: whatever it read is not its own
            conn.commit()
    except BaseException:
        if not conn.closed:
            conn.rollback()
        raise
    finally:
        _unlock(conn, lock)
    return windows


def _unlock(conn: psycopg2.extensions.connection, lock: int) -> None:
    """Releases the poll's lock (a broken connection's lock ended with its session)."""
    if conn.closed:
        return
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT pg_advisory_unlock(%s)", (lock,))
        conn.commit()
    except psycopg2.Error:
        pass


def _stored_marks(
    cur: Any, source: Source, marks_table: sql.Composed, still_running: sql.Composable
) -> Marks | None:
    """The type's marks (a row made for it when it has none, only while the run is running:
    None when it is not and there is none); empty marks when the source changed."""
    t = source.activity_type
    cur.execute(
        sql.SQL(
            "INSERT INTO {} (activity_type, source) SELECT %s, %s WHERE {} "
            "ON CONFLICT (activity_type) DO NOTHING"
        ).format(marks_table, still_running),
        (t, source.name),
    )
    cur.execute(
        sql.SQL(
            "SELECT source, mark, scanned, pending_xmax, pending_mark FROM {} "
            "WHERE activity_type = %s"
        ).format(marks_table),
        (t,),
    )
    row = cur.fetchone()
    if row is None:
        return None
    stored_source, *values = row
    if stored_source != source.name:
        _LOG.info(
            "%s: following %s now (was %s): starting from its first row",
            t,
            source.name,
            stored_source,
        )
        return Marks()
    return Marks(*values)


def _windows(
    cur: Any,
    source: Source,
    marks: Marks,
    rows_per_window: int,
    max_windows: int,
    schema: str,
) -> tuple[list[Window], Marks]:
    """The windows to read, and the marks to store after them: reads the source only."""
    windows: list[Window] = []
    # One statement, one snapshot: what is in progress, and the newest visible row.
    cur.execute(
        sql.SQL(
            "SELECT pg_snapshot_xmin(s)::text::bigint, pg_snapshot_xmax(s)::text::bigint,"
            " top FROM (SELECT pg_current_snapshot() AS s, (SELECT max(a.{k})::text "
            "FROM ({r}) a) AS top) q"
        ).format(k=sql.Identifier(FOLLOW_COLUMN), r=relation(source)),
    )
    xmin, xmax, top = cur.fetchone()
    mark, pending_xmax, pending_mark = marks.mark, marks.pending_xmax, marks.pending_mark
    if pending_xmax is not None and pending_mark is not None and xmin >= pending_xmax:
        if _anything_to_compute(cur, source, (mark, pending_mark), schema):
            windows.append((mark, pending_mark))  # late commits, or still being written
        else:
            mark, pending_xmax, pending_mark = pending_mark, None, None
    scanned = marks.scanned if marks.scanned is not None else mark
    if top is not None:
        cuts = _cuts(cur, source, scanned, top, rows_per_window, max_windows)
        ends = [*cuts, top] if len(cuts) < max_windows else cuts
        for end in ends:
            if end != scanned:
                windows.append((scanned, end))
                scanned = end
    if pending_xmax is None and scanned is not None and scanned != mark:
        pending_xmax, pending_mark = xmax, scanned
    return windows, Marks(mark, scanned, pending_xmax, pending_mark)


def _anything_to_compute(
    cur: Any, source: Source, window: tuple[str | None, str], schema: str
) -> bool:
    query, params = pending_query(source, None, None, schema=schema, window=window)
    cur.execute(sql.SQL("SELECT EXISTS ({})").format(query), params)
    return bool(cur.fetchone()[0])


def _cuts(
    cur: Any,
    source: Source,
    after: str | None,
    top: str,
    rows_per_window: int,
    max_windows: int,
) -> list[str]:
    """The ends of the full windows of ``(after, top]`` (each ``rows_per_window`` rows), at
    most ``max_windows``: read from the index, no further than those windows reach."""
    conditions, params = follow_window(source, after, top)
    column = sql.Identifier(FOLLOW_COLUMN)
    cur.execute(
        sql.SQL(
            "SELECT c.{k}::text FROM (SELECT n.{k}, row_number() OVER (ORDER BY n.{k}) AS i "
            "FROM (SELECT a.{k} FROM ({r}) a WHERE {w} ORDER BY a.{k} LIMIT %(limit)s) n) c "
            "WHERE c.i %% %(size)s = 0 ORDER BY c.{k}"
        ).format(k=column, r=relation(source), w=sql.SQL(" AND ").join(conditions)),
        {**params, "limit": rows_per_window * max_windows, "size": rows_per_window},
    )
    cuts = [str(v) for (v,) in cur.fetchall()]
    # Equal values at a cut stay in one window: the next starts after the last of them.
    return list(dict.fromkeys(cuts))


#: Plan nodes that mean a poll would read a whole relation (the planner chooses them although
#: they are disabled only when no index can serve the poll).
_FULL_READS = frozenset({"Seq Scan", "Sort", "Incremental Sort", "Bitmap Heap Scan"})


def unindexed(conn: psycopg2.extensions.connection, source: Source) -> str | None:
    """None when the follow mode's polls read ``source`` through an index on its
    ``follow_by`` (a table's, or the table's under a view or query); else what to do, in a
    line. Asked of the planner (``EXPLAIN`` of a poll, with full reads and sorts disabled), in
    a read-only transaction."""
    conditions, params = follow_window(source, _LOWEST[source.follow_type or ""], None)
    key = sql.Identifier(FOLLOW_COLUMN)
    try:
        read_only(conn)
        with conn.cursor() as cur:
            for setting in ("enable_seqscan", "enable_bitmapscan", "enable_sort"):
                cur.execute(sql.SQL("SET LOCAL {} = off").format(sql.Identifier(setting)))
            cur.execute("SET LOCAL enable_incremental_sort = off")
            cur.execute(
                sql.SQL(
                    "EXPLAIN (FORMAT JSON, VERBOSE) SELECT a.{k} FROM ({r}) a WHERE {w} "
                    "ORDER BY a.{k} LIMIT 1000"
                ).format(k=key, r=relation(source), w=sql.SQL(" AND ").join(conditions)),
                params,
            )
            (plan,) = cur.fetchone()
    finally:
        conn.rollback()
    top = plan[0]["Plan"] if isinstance(plan, list) else plan
    full = _full_reads(top, False)
    if not full:
        return None
    table = ".".join(quote_name(p) for p in full[0])
    column = _sorted_column(top)
    wanted = (
        f"create an index on {table} ({column})"
        if column is not None
        else f"create an index on {table} on what {source.follow_by} is read from"
    )
    return (
        f"{source.name}: follow_by {source.follow_by} is not read through an index (each poll "
        f"would read all of {table}): {wanted}, then start again"
    )


#: A plan's sort key that is a column of a relation (``events.updated_at``), as PostgreSQL
#: writes it (quoted where it must be).
_SORTED_COLUMN = re.compile(r'^(?:\w+|"(?:[^"]|"")+")\.(\w+|"(?:[^"]|"")+")$')


def _sorted_column(node: dict[str, Any]) -> str | None:
    """The column of the table beneath that a poll's plan sorts by (what an index would
    serve), when it is a plain column."""
    keys = node.get("Sort Key") or ()
    if node.get("Node Type") in ("Sort", "Incremental Sort") and keys:
        found = _SORTED_COLUMN.match(str(keys[0]))
        return found.group(1) if found else None
    for child in node.get("Plans", ()):
        if (column := _sorted_column(child)) is not None:
            return column
    return None


#: A value below every value of a ``follow_by`` column of each type: the window the plan is for.
_LOWEST = {
    "int2": "-1",
    "int4": "-1",
    "int8": "-1",
    "timestamp": "1970-01-01",
    "timestamptz": "1970-01-01 00:00:00+00",
}


def _full_reads(node: dict[str, Any], under: bool) -> list[tuple[str, str]]:
    """(schema, relation) of the scans in a plan that read a whole relation or feed a sort."""
    under = under or node.get("Node Type") in _FULL_READS
    found: list[tuple[str, str]] = []
    if under and "Relation Name" in node:
        found.append((str(node.get("Schema", "")), str(node["Relation Name"])))
    for child in node.get("Plans", ()):
        found.extend(_full_reads(child, under))
    return found
