"""Planning key ranges for partitioned reads: every step from the options to the ranges.

The planners (``plan_int_ranges``, ``plan_uuid_ranges``, ``plan_from_cuts``, ``ranges_needed``)
are pure functions; ``plan_ranges`` asks the database for what they need (row counts, cut points
in key order, key bounds) and calls them.

A range is half-open, ``start <= id < end``; ``None`` means unbounded. The first range of a
plan starts at ``None`` and the last ends at ``None``, so a plan always covers the whole key
space: a row inserted after the bounds were read is still read exactly once.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from typing import Any, Literal

import psycopg2.extensions
from psycopg2 import sql

from pipeline.model import ActivityType
from pipeline.store.sources import Source, as_source, from_clause, key_column, read_only

Key = int | str | None

_LOG = logging.getLogger(__name__)

UUID_SPACE = 1 << 128


@dataclass(frozen=True)
class KeyRange:
    """One partition of an activity table: ``start <= id < end`` (``None``: unbounded)."""

    activity_type: ActivityType
    start: Key
    end: Key


def plan_int_ranges(
    activity_type: ActivityType, lo: int | None, hi: int | None, partitions: int
) -> list[KeyRange]:
    """Split the integer keys ``lo..hi`` (inclusive) into at most ``partitions`` ranges.

    An empty table (``lo`` is None) gives no range; a span smaller than ``partitions`` gives
    one range per key value.
    """
    if partitions < 1:
        raise ValueError(f"partitions must be at least 1, not {partitions}")
    if lo is None or hi is None:
        return []
    span = hi - lo + 1
    n = min(partitions, span)
    # Boundaries at lo + span*i/n (integer division) spread the remainder over the ranges.
    cuts = [lo + (span * i) // n for i in range(1, n)]
    starts: list[Key] = [None, *cuts]
    ends: list[Key] = [*cuts, None]
    return [KeyRange(activity_type, s, e) for s, e in zip(starts, ends, strict=True)]


def plan_uuid_ranges(activity_type: ActivityType, partitions: int) -> list[KeyRange]:
    """Split the 128-bit UUID space into ``partitions`` equal ranges.

    PostgreSQL orders ``uuid`` values bytewise, which is the order of their 128-bit integers,
    so equal slices of that integer space are equal slices of random (v4) keys.
    """
    if partitions < 1:
        raise ValueError(f"partitions must be at least 1, not {partitions}")
    cuts = [str(uuid.UUID(int=(UUID_SPACE * i) // partitions)) for i in range(1, partitions)]
    starts: list[Key] = [None, *cuts]
    ends: list[Key] = [*cuts, None]
    return [KeyRange(activity_type, s, e) for s, e in zip(starts, ends, strict=True)]


#: The fewest rows a range holds (but in a table of one row): a range costs a query of its own.
MIN_ROWS_PER_RANGE = 2


def ranges_needed(rows: int, rows_per_range: int, partitions: int) -> int:
    """How many ranges a table of ``rows`` rows is read in: at least ``partitions``, and enough
    that none holds more than ``rows_per_range`` (so memory does not grow with the table), but
    never so many that a range holds fewer than ``MIN_ROWS_PER_RANGE`` rows."""
    if rows_per_range < MIN_ROWS_PER_RANGE or partitions < 1:
        raise ValueError(
            f"rows_per_range must be at least {MIN_ROWS_PER_RANGE} and partitions at least 1"
        )
    if rows <= 0:
        return 0
    return min(max(1, rows // MIN_ROWS_PER_RANGE), max(partitions, -(-rows // rows_per_range)))


def plan_from_cuts(activity_type: ActivityType, cuts: list[Key]) -> list[KeyRange]:
    """Ranges between sorted, distinct cut points (ids from the table in key order)."""
    starts: list[Key] = [None, *cuts]
    ends: list[Key] = [*cuts, None]
    return [KeyRange(activity_type, s, e) for s, e in zip(starts, ends, strict=True)]


def key_bounds(
    conn: psycopg2.extensions.connection, source: Source | ActivityType
) -> tuple[Any, Any, str]:
    """(lowest key, highest key, key type) of a source; keys are None when it is empty.

    Two index lookups (``min()`` is not defined for ``uuid``).
    """
    found = as_source(source)
    key, relation = key_column(found), from_clause(found)
    read_only(conn)  # a source is a team's SQL
    with conn.cursor() as cur:
        cur.execute(
            sql.SQL("SELECT {k}, pg_typeof({k})::text FROM {r} ORDER BY {k} LIMIT 1").format(
                k=key, r=relation
            )
        )
        first = cur.fetchone()
        cur.execute(
            sql.SQL("SELECT {k} FROM {r} ORDER BY {k} DESC LIMIT 1").format(k=key, r=relation)
        )
        last = cur.fetchone()
    conn.commit()
    if first is None or last is None:
        return None, None, ""
    return first[0], last[0], first[1]


def count_rows(conn: psycopg2.extensions.connection, source: Source | ActivityType) -> int:
    """The number of rows of a source."""
    read_only(conn)  # a source is a team's SQL
    with conn.cursor() as cur:
        cur.execute(sql.SQL("SELECT count(*) FROM {}").format(from_clause(as_source(source))))
        (count,) = cur.fetchone()
    conn.commit()
    return int(count)


def keys_at(
    conn: psycopg2.extensions.connection, source: Source | ActivityType, positions: list[int]
) -> list[Any]:
    """The keys at the given 1-based row positions in key order, from one ordered scan."""
    found = as_source(source)
    read_only(conn)  # a source is a team's SQL
    with conn.cursor() as cur:
        cur.execute(
            sql.SQL(
                "SELECT id FROM (SELECT {k} AS id, row_number() OVER (ORDER BY {k}) AS rn "
                "FROM {r}) c WHERE rn = ANY(%s) ORDER BY rn"
            ).format(k=key_column(found), r=from_clause(found)),
            (positions,),
        )
        cuts = [row[0] for row in cur.fetchall()]
    conn.commit()
    return cuts


Planner = Literal["rows", "bounds"]
PLANNERS: tuple[Planner, ...] = ("rows", "bounds")


def plan_ranges(
    conn: psycopg2.extensions.connection,
    source: Source | ActivityType,
    partitions: int,
    rows_per_range: int,
    planner: Planner = "rows",
    rows: int | None = None,
) -> list[KeyRange]:
    """The key ranges an activity table is read in (``rows``: its row count, if known).

    ``rows`` (default): cut points every N rows in key order (``keys_at``), so ranges hold
    equal numbers of rows however the keys are spread, and there are more ranges as the table
    grows (``ranges_needed``). ``bounds``: ``partitions`` equal slices of the key span
    (integers between the lowest and highest id; the 128-bit space for UUIDs): two index
    lookups, balanced only when keys are spread evenly.
    """
    found = as_source(source)
    activity_type = found.activity_type
    lo, hi, typ = key_bounds(conn, found) if planner == "bounds" else (None, None, "")
    if planner == "bounds" and typ in ("uuid", "bigint", "integer", "smallint"):
        if lo is None or hi is None:
            return []
        if typ == "uuid":
            return plan_uuid_ranges(activity_type, partitions)
        return plan_int_ranges(activity_type, int(lo), int(hi), partitions)
    # Text keys have no span to slice: they are cut by rows, like the default.
    if rows is None:
        rows = count_rows(conn, found)
    n = ranges_needed(rows, rows_per_range, partitions)
    if n == 0:
        return []
    if partitions > n:
        _LOG.warning(
            "--partitions %d: %s has %d rows, read in %d ranges of at least %d",
            partitions,
            activity_type,
            rows,
            n,
            MIN_ROWS_PER_RANGE,
        )
    # Cut at the rows i × rows / n (i = 1 … n-1): range sizes differ by one at most.
    positions = [i * rows // n + 1 for i in range(1, n)]
    cuts = keys_at(conn, found, positions) if positions else []
    return plan_from_cuts(activity_type, [c if isinstance(c, int) else str(c) for c in cuts])
