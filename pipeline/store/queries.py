"""Queries: which activities are pending, how many, and the factor rows.

The pending condition is an anti-join inside each range read: only rows with no result (and no
dead letter for their current version) leave the database. Identifiers are composed with
``psycopg2.sql.Identifier``; values are always bound parameters.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import logging
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import psycopg2
import psycopg2.errors
import psycopg2.extensions
import sqlalchemy as sa
from psycopg2 import sql
from sqlalchemy.dialects import postgresql

from pipeline.model import (
    ACTIVITY_TYPES,
    ActivityType,
    FactorRow,
    activity_fields,
)
from pipeline.store.connections import raw_connection
from pipeline.store.sources import (
    FOLLOW_COLUMN,
    VERSION_COLUMN,
    Source,
    Sources,
    as_source,
    default_sources,
    read_only,
    relation,
)
from pipeline.store.tables import (
    DEFAULT_SCHEMA,
    ERRORS_TABLE,
    FACTORS_TABLE,
    RESULTS_TABLE,
    qualified,
    qualified_text,
    table,
)

_LOG = logging.getLogger(__name__)

# --- Factors -------------------------------------------------------------------------------

_FACTOR_COLUMNS = tuple(f.name for f in dataclasses.fields(FactorRow) if f.name != "id")


def insert_factors(
    engine: sa.Engine | sa.Connection, rows: Iterable[FactorRow], schema: str = DEFAULT_SCHEMA
) -> int:
    """Insert factor rows not already present (by set, edition, key, year). Returns rows added.

    In one transaction of its own, or in the caller's when given a connection (``admin init``
    sets up the schema and loads the shipped factors as one)."""
    factors = table(FACTORS_TABLE, schema)
    payload = [{c: getattr(r, c) for c in _FACTOR_COLUMNS} for r in rows]
    if not payload:
        return 0
    stmt = postgresql.insert(factors).on_conflict_do_nothing(constraint="uq_factor_identity")
    added = 0
    with contextlib.ExitStack() as transaction:
        conn = (
            engine
            if isinstance(engine, sa.Connection)
            else transaction.enter_context(engine.begin())
        )
        for start in range(0, len(payload), 5000):
            added += conn.execute(stmt, payload[start : start + 5000]).rowcount or 0
    return added


def read_factor_rows(
    conn: psycopg2.extensions.connection, schema: str = DEFAULT_SCHEMA
) -> list[FactorRow]:
    """The factor rows in force, with their database ids.

    Where several editions hold a value for the same set, key and year (a re-published file
    loaded next to the old one), the one loaded last is in force.
    """
    cols = ("id",) + _FACTOR_COLUMNS
    query = sql.SQL(
        "SELECT DISTINCT ON (factor_set, key, year) {} FROM {} "
        "ORDER BY factor_set, key, year, id DESC"
    ).format(sql.SQL(", ").join(map(sql.Identifier, cols)), qualified(FACTORS_TABLE, schema))
    with conn.cursor() as cur:
        cur.execute(query)
        fetched = cur.fetchall()
    conn.commit()
    return [FactorRow(**dict(zip(cols, row, strict=True))) for row in fetched]


# --- Pending activities --------------------------------------------------------------------


def key_cast(key: Any, key_type: str | None = None) -> sql.SQL:
    """The cast of a key bound: the source's key type, else (a source not yet checked) big
    integers for ints and UUIDs for text."""
    if key_type is None:
        key_type = "uuid" if isinstance(key, str) else "bigint"
    return sql.SQL("::" + {"bigint": "bigint", "uuid": "uuid", "text": "text"}[key_type])


#: A new activity: no result, and no open dead letter for this very version of the row (a
#: refused row is not read again until it changes; one whose dead letter was retired, as if
#: it had been deleted, is read again, and its dead letter reopens: ``writes.write_errors``).
_NEW = sql.SQL(
    "r.activity_id IS NULL AND NOT EXISTS (SELECT 1 FROM {e} e "
    "WHERE e.activity_type = %(activity_type)s AND e.activity_id = a.id{e_range} "
    "AND e.activity_version = a.activity_version AND e.retired_at IS NULL)"
)
#: A changed activity, perhaps: its version is not the one its result was computed from. (The
#: reader compares the input fingerprints: a new version with the same content is no change.)
_CHANGED = sql.SQL(
    "r.activity_id IS NOT NULL AND r.activity_version IS DISTINCT FROM a.activity_version"
)
#: ``--recheck``: every activity with a result, whatever its version (an application may change
#: a row without its version column); the reader keeps those whose fingerprint differs.
_STORED = sql.SQL("r.activity_id IS NOT NULL")


def _bounds(alias: str, start: Any, end: Any, key_type: str | None) -> sql.Composed:
    """Key bounds on ``alias.activity_id``: they follow from ``activity_id = a.id``, but
    PostgreSQL does not carry inequalities across a join; without them every range read would
    look through all the results (and dead letters) of its type."""
    found: list[sql.Composable] = []
    column = sql.SQL(" AND {}.activity_id").format(sql.Identifier(alias))
    if start is not None:
        found.append(column + sql.SQL(" >= %(start)s") + key_cast(start, key_type))
    if end is not None:
        found.append(column + sql.SQL(" < %(end)s") + key_cast(end, key_type))
    return sql.Composed(found)


def _results_join(
    schema: str, start: Any = None, end: Any = None, key_type: str | None = None
) -> sql.Composed:
    """``LEFT JOIN`` of each activity to its current result, within the key range."""
    return sql.SQL(
        "LEFT JOIN {r} r ON r.activity_type = %(activity_type)s AND r.activity_id = a.id{b}"
    ).format(r=qualified(RESULTS_TABLE, schema), b=_bounds("r", start, end, key_type))


def _new(
    schema: str, start: Any = None, end: Any = None, key_type: str | None = None
) -> sql.Composed:
    return _NEW.format(
        e=qualified(ERRORS_TABLE, schema), e_range=_bounds("e", start, end, key_type)
    )


def _in_scope(
    source: Source,
    start: Any = None,
    end: Any = None,
    date_from: str | None = None,
    date_to: str | None = None,
) -> tuple[list[sql.Composable], dict[str, Any]]:
    """Conditions (and their parameters) for a key range and an activity-date window."""
    conditions: list[sql.Composable] = [sql.SQL("true")]
    params: dict[str, Any] = {"activity_type": source.activity_type}
    if start is not None:
        conditions.append(sql.SQL("a.id >= %(start)s") + key_cast(start, source.key_type))
        params["start"] = str(start)
    if end is not None:
        conditions.append(sql.SQL("a.id < %(end)s") + key_cast(end, source.key_type))
        params["end"] = str(end)
    if date_from is not None:
        conditions.append(sql.SQL("a.activity_date >= %(date_from)s::date"))
        params["date_from"] = date_from
    if date_to is not None:
        conditions.append(sql.SQL("a.activity_date < %(date_to)s::date"))
        params["date_to"] = date_to
    return conditions, params


#: The columns a range read adds to the activity's: whether it has a result, and that
#: result's input fingerprint (to tell a changed row from a new version of the same content).
STORED_COLUMN = "stored"
STORED_FINGERPRINT_COLUMN = "stored_fingerprint"


def pending_query(
    source: Source | ActivityType,
    start: Any,
    end: Any,
    date_from: str | None = None,
    date_to: str | None = None,
    schema: str = DEFAULT_SCHEMA,
    window: tuple[str | None, str | None] | None = None,
    recheck: bool = False,
) -> tuple[sql.Composed, dict[str, Any]]:
    """One key range of the activities to compute: new ones, and those whose version differs
    from their result's (``recheck``: every one with a result). Each comes with its row
    version, whether it has a result, and that result's input fingerprint. ``window`` (after,
    up to) narrows it to the rows whose ``follow_by`` value is in that interval (the follow
    mode's reads)."""
    source = as_source(source, schema)
    conditions, params = _in_scope(source, start, end, date_from, date_to)
    if window is not None:
        found, window_params = follow_window(source, *window)
        conditions += found
        params.update(window_params)
    select = sql.SQL(", ").join(
        [sql.SQL("a.") + sql.Identifier(c) for c in activity_fields(source.activity_type)]
        + [
            sql.SQL("a.") + sql.Identifier(VERSION_COLUMN),
            sql.SQL("r.activity_id IS NOT NULL AS {}").format(sql.Identifier(STORED_COLUMN)),
            sql.SQL("r.input_fingerprint AS {}").format(sql.Identifier(STORED_FINGERPRINT_COLUMN)),
        ]
    )
    query = sql.SQL(
        "SELECT {select} FROM ({relation}) a {join} WHERE {where} AND (({new}) OR ({changed}))"
    ).format(
        select=select,
        relation=relation(source),
        join=_results_join(schema, start, end, source.key_type),
        where=sql.SQL(" AND ").join(conditions),
        new=_new(schema, start, end, source.key_type),
        changed=_STORED if recheck else _CHANGED,
    )
    return query, params


#: How a ``follow_by`` value (kept as text) is cast back to its column's type.
_FOLLOW_CASTS = {
    "int2": "bigint",
    "int4": "bigint",
    "int8": "bigint",
    "timestamp": "timestamp",
    "timestamptz": "timestamptz",
}


def follow_cast(source: Source) -> sql.SQL:
    """``::type`` for values of the source's ``follow_by`` column."""
    if source.follow_type not in _FOLLOW_CASTS:
        raise ValueError(f"{source.name} has no usable follow_by column")
    return sql.SQL("::" + _FOLLOW_CASTS[source.follow_type])


def follow_window(
    source: Source, after: str | None, upto: str | None
) -> tuple[list[sql.Composable], dict[str, Any]]:
    """Conditions for ``after < follow_by <= upto`` (an end left None is open)."""
    cast = follow_cast(source)
    column = sql.SQL("a.") + sql.Identifier(FOLLOW_COLUMN)
    conditions: list[sql.Composable] = [column + sql.SQL(" IS NOT NULL")]
    params: dict[str, Any] = {}
    if after is not None:
        conditions.append(column + sql.SQL(" > %(after)s") + cast)
        params["after"] = after
    if upto is not None:
        conditions.append(column + sql.SQL(" <= %(upto)s") + cast)
        params["upto"] = upto
    return conditions, params


def count_query(
    source: Source | ActivityType,
    date_from: str | None = None,
    date_to: str | None = None,
    schema: str = DEFAULT_SCHEMA,
    recheck: bool = False,
) -> tuple[sql.Composed, dict[str, Any]]:
    """One pass over a source and its results (a full join: hashed or merged, never a loop
    per row): activities in scope, those without a result, those whose version changed
    (``recheck``: every one with a result, to compare), results and open dead letters whose
    activity no longer exists (whatever the date window: a deletion is not dated), and the
    activities without a result refused in their current version (not new: ``_NEW``), found
    from the open dead letters rather than by looking each row up in them."""
    source = as_source(source, schema)
    conditions, params = _in_scope(source, None, None, date_from, date_to)
    in_scope = sql.SQL("a.id IS NOT NULL AND ") + sql.SQL(" AND ").join(conditions)
    query = sql.SQL(
        "SELECT count(*) FILTER (WHERE {scope}), "
        "count(*) FILTER (WHERE {scope} AND r.activity_id IS NULL), "
        "count(*) FILTER (WHERE {scope} AND {changed}), "
        "count(*) FILTER (WHERE a.id IS NULL), "
        "(SELECT count(*) FROM {e} e WHERE e.activity_type = %(activity_type)s "
        "AND e.retired_at IS NULL AND NOT EXISTS (SELECT 1 FROM ({relation}) d "
        "WHERE d.id = e.activity_id OFFSET 0)), "
        "(SELECT count(DISTINCT e.activity_id) FROM {e} e "
        "WHERE e.activity_type = %(activity_type)s AND e.retired_at IS NULL "
        "AND NOT EXISTS (SELECT 1 FROM {r} r WHERE r.activity_type = %(activity_type)s "
        "AND r.activity_id = e.activity_id) AND EXISTS (SELECT 1 FROM ({relation}) a "
        "WHERE a.id = e.activity_id AND a.activity_version = e.activity_version AND {scope} "
        "OFFSET 0)) "
        "FROM ({relation}) a FULL JOIN (SELECT activity_id, activity_version FROM {r} "
        "WHERE activity_type = %(activity_type)s) r ON r.activity_id = a.id"
    ).format(
        scope=in_scope,
        changed=_STORED if recheck else _CHANGED,
        relation=relation(source),
        r=qualified(RESULTS_TABLE, schema),
        e=qualified(ERRORS_TABLE, schema),
    )
    return query, params


# --- Bookkeeping ---------------------------------------------------------------------------


def count_activities(
    engine: sa.Engine,
    activity_types: Sequence[ActivityType] = ACTIVITY_TYPES,
    date_from: str | None = None,
    date_to: str | None = None,
    workers: int = 2,
    on_pending: Callable[[], None] | None = None,
    sources: Sources | None = None,
    schema: str = DEFAULT_SCHEMA,
    progress_interval: float = 10.0,
    recheck: bool = False,
) -> dict[str, dict[str, int]]:
    """Per activity type: activities in scope (``total``), those to compute (``pending``:
    ``new`` ones and those whose version ``changed``; ``recheck``: every one with a result,
    whose fingerprint the read compares), and results and open dead letters whose activity is
    gone (``deleted``, ``deleted_errors``).

    One full join per type; they run on up to ``workers`` connections at once (the engine's
    pool must allow as many). ``on_pending`` is called once, as soon as a count finds
    activities to compute."""
    announced: list[bool] = []
    lock = threading.Lock()
    sources = sources or default_sources(schema)

    def count(activity_type: ActivityType) -> dict[str, int]:
        query = count_query(sources[activity_type], date_from, date_to, schema, recheck)
        with raw_connection(engine) as raw:
            read_only(raw)
            with raw.cursor() as cur:
                # The counts already take a connection per table, two at once: parallel
                # workers for each would only queue for the same cores.
                cur.execute("SET LOCAL max_parallel_workers_per_gather = 0")
                cur.execute(*query)
                found = [int(n) for n in cur.fetchone()]
            total, unresulted, changed, deleted, orphaned, refused = found
            new = unresulted - refused
            raw.commit()
        if (new or changed) and on_pending is not None:
            with lock:
                first, announced[:] = not announced, [True]
            if first:
                on_pending()
        return {
            "total": total,
            "pending": new + changed,
            "new": new,
            "changed": changed,
            "deleted": deleted,
            "deleted_errors": orphaned,
        }

    with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
        futures = [pool.submit(count, t) for t in activity_types]
        started = time.monotonic()
        while True:
            done, waiting = concurrent.futures.wait(futures, timeout=progress_interval or None)
            if not waiting:
                break
            # A count that takes long says so (a lock held elsewhere, a slow plan): a run
            # never waits in silence.
            _LOG.info(
                "still counting activities after %.0f s (%d of %d types counted)",
                time.monotonic() - started,
                len(done),
                len(futures),
            )
        found = [f.result() for f in futures]
    return dict(zip(activity_types, found, strict=True))


def outstanding_errors(engine: sa.Engine, schema: str = DEFAULT_SCHEMA) -> dict[str, int]:
    """Activities with a dead letter and still no result, per activity type."""
    with engine.connect() as conn:
        rows = conn.execute(
            sa.text(
                "SELECT e.activity_type, count(DISTINCT e.activity_id) "
                f"FROM {qualified_text(ERRORS_TABLE, schema)} e WHERE NOT EXISTS "
                f"(SELECT 1 FROM {qualified_text(RESULTS_TABLE, schema)} r "
                "WHERE r.activity_type = e.activity_type AND r.activity_id = e.activity_id) "
                "AND e.retired_at IS NULL "
                "GROUP BY e.activity_type"
            )
        )
        return {r[0]: int(r[1]) for r in rows}
