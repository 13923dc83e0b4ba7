"""The stored Scope 2 market-based lines (revision 0009): written one market boundary at a
time, in one transaction that holds the boundary's lock, by ``pipeline.market_stage``.

A reporting year of a boundary is rewritten only when its lines differ from those stored:
the old lines move to ``market_based_results_history`` with a reason of their own, in the
statement that deletes them; an unchanged year is left alone (a rerun writes nothing). The
refused instruments of the boundary are kept as open dead letters in
``market_based_refused``; one no longer refused is retired, never deleted.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import psycopg2.extensions
import psycopg2.extras
from psycopg2 import sql

from pipeline.store import tables

#: The boundary locks' class (``pg_advisory_xact_lock(class, hashtext(schema|boundary))``).
_LOCK = 7355612
#: The stage lock's class (``pg_advisory_lock(class, hashtext(schema))``): held by a run's
#: whole stage, from before it reads its inputs until their digest is recorded.
STAGE_LOCK = 7355613
#: The boundary the refused supplier rates are kept under (they serve every boundary).
RATES_BOUNDARY: str | None = None


class Line(NamedTuple):
    """One stored line, as compared with a new allocation (without run and time)."""

    boundary: str
    reporting_year: int
    activity_id: str
    line: int
    market: str
    facility: str | None
    supplier: str | None
    basis: str
    instrument_kind: str | None
    instrument_id: str | None
    factor_id: int | None
    kwh: float
    kg_per_kwh: float
    kg_co2e: float
    grid_fallback: bool
    year_mismatch: bool
    year_start: str
    vintage_window_years: int
    sharing: str


LINE_COLUMNS: tuple[str, ...] = Line._fields
DIGEST_COLUMNS = ("instruments_digest", "consumption_digest")


@dataclass(frozen=True)
class Choices:
    """The reporter's choices a boundary was allocated with, stored on each line."""

    year_start: str = "01-01"
    vintage_window_years: int = 0
    sharing: str = "facility_first"


@dataclass
class Written:
    """What one boundary's write did."""

    lines: int = 0
    moved: int = 0
    refused: int = 0
    retired: int = 0
    years: list[int] = field(default_factory=list)


def digest(records: Iterable[Any]) -> str:
    """A sha256 of the records' reprs, in sorted order: what a boundary's lines rest on."""
    h = hashlib.sha256()
    for text in sorted(repr(r) for r in records):
        h.update(text.encode("utf-8"))
        h.update(b"\n")
    return h.hexdigest()


def lock(cur: psycopg2.extensions.cursor, schema: str, boundary: str | None) -> None:
    """Holds the boundary's lock until the transaction ends: two runs take turns on it."""
    cur.execute("SELECT pg_advisory_xact_lock(%s, hashtext(%s))", (_LOCK, f"{schema}|{boundary}"))


def try_stage_lock(conn: psycopg2.extensions.connection, schema: str) -> bool:
    """Takes the schema's stage lock for ``conn``'s session, unless another session holds it."""
    with conn.cursor() as cur:
        cur.execute("SELECT pg_try_advisory_lock(%s, hashtext(%s))", (STAGE_LOCK, schema))
        row = cur.fetchone()
    return bool(row and row[0])


def held_elsewhere(
    cur: psycopg2.extensions.cursor,
    schema: str,
    boundary: str,
    instruments: Iterable[tuple[str, str]],
) -> dict[tuple[str, str], dict[str, float]]:
    """kWh of each (kind, id) stored as allocated in other boundaries, by boundary."""
    wanted = sorted(set(instruments))
    if not wanted:
        return {}
    cur.execute(
        sql.SQL(
            "SELECT instrument_kind, instrument_id, boundary, sum(kwh) FROM {} "
            "WHERE boundary <> %s AND (instrument_kind, instrument_id) IN "
            "(SELECT * FROM unnest(%s::text[], %s::text[])) GROUP BY 1, 2, 3"
        ).format(tables.qualified(tables.MARKET_TABLE, schema)),
        (boundary, [k for k, _ in wanted], [i for _, i in wanted]),
    )
    held: dict[tuple[str, str], dict[str, float]] = {}
    for kind, ident, where, kwh in cur.fetchall():
        held.setdefault((kind, ident), {})[where] = float(kwh)
    return held


def stored_lines(
    cur: psycopg2.extensions.cursor,
    schema: str,
    where: sql.Composable | None = None,
    params: Sequence[Any] = (),
) -> list[tuple[Line, tuple[str, str]]]:
    """The stored lines (``where`` and what follows it in the statement: the condition and
    the order), each with the digests it was written with."""
    cur.execute(
        sql.SQL("SELECT {}, {} FROM {}{}").format(
            sql.SQL(", ").join(map(sql.Identifier, LINE_COLUMNS)),
            sql.SQL(", ").join(map(sql.Identifier, DIGEST_COLUMNS)),
            tables.qualified(tables.MARKET_TABLE, schema),
            where or sql.SQL(""),
        ),
        params,
    )
    return [(Line(*row[: len(LINE_COLUMNS)]), (row[-2], row[-1])) for row in cur.fetchall()]


def _stored(
    cur: psycopg2.extensions.cursor, schema: str, boundary: str
) -> dict[int, tuple[list[Line], tuple[str, str]]]:
    """The boundary's stored lines by year, with the digests they were written with."""
    where = sql.SQL(" WHERE boundary = %s ORDER BY reporting_year, 3, 4")
    found: dict[int, tuple[list[Line], tuple[str, str]]] = {}
    for line, digests in stored_lines(cur, schema, where, (boundary,)):
        year = found.setdefault(line.reporting_year, ([], digests))
        year[0].append(line)
    return found


def _reason(old: tuple[str, str], new: tuple[str, str]) -> str:
    if old[0] != new[0]:
        return "instruments_changed"
    if old[1] != new[1]:
        return "consumption_changed"
    return "reallocated"


def write_boundary(
    cur: psycopg2.extensions.cursor,
    schema: str,
    boundary: str,
    lines: Sequence[Line],
    digests: tuple[str, str],
    run_id: str,
) -> Written:
    """Brings the boundary's stored lines to ``lines``, a year at a time (module docstring),
    in the caller's transaction, which holds the boundary's lock."""
    table = tables.qualified(tables.MARKET_TABLE, schema)
    history = tables.qualified(tables.MARKET_HISTORY_TABLE, schema)
    stored = _stored(cur, schema, boundary)
    new: dict[int, list[Line]] = {}
    for line in lines:
        new.setdefault(line.reporting_year, []).append(line)
    done = Written()
    columns = sql.SQL(", ").join(map(sql.Identifier, (*LINE_COLUMNS, *DIGEST_COLUMNS, "run_id")))
    for year in sorted(set(stored) | set(new)):
        old_lines, old_digests = stored.get(year, ([], digests))
        fresh = sorted(new.get(year, []), key=lambda x: (x.activity_id, x.line))
        if sorted(old_lines, key=lambda x: (x.activity_id, x.line)) == fresh:
            if old_digests != digests:  # same lines: only what they rest on is noted
                cur.execute(
                    sql.SQL(
                        "UPDATE {} SET instruments_digest = %s, consumption_digest = %s "
                        "WHERE boundary = %s AND reporting_year = %s"
                    ).format(table),
                    (*digests, boundary, year),
                )
            continue
        done.years.append(year)
        if old_lines:
            cur.execute(
                sql.SQL(
                    "WITH moved AS (DELETE FROM {table} WHERE boundary = %s AND reporting_year = "
                    "%s RETURNING *) INSERT INTO {history} ({columns}, superseded_by, reason) "
                    "SELECT {columns}, %s, %s FROM moved"
                ).format(table=table, history=history, columns=columns),
                (boundary, year, run_id, _reason(old_digests, digests)),
            )
            done.moved += cur.rowcount
        if fresh:
            psycopg2.extras.execute_values(
                cur,
                sql.SQL("INSERT INTO {} ({}) VALUES %s")
                .format(table, columns)
                .as_string(cur.connection),
                [(*line, *digests, run_id) for line in fresh],
            )
            done.lines += len(fresh)
    return done


def write_refused(
    cur: psycopg2.extensions.cursor,
    schema: str,
    boundary: str | None,
    refused: Iterable[tuple[str, str, str, str]],
    run_id: str,
    done: Written | None = None,
) -> Written:
    """Keeps ``refused`` ((kind, instrument id, reason code, reason) each) as the boundary's
    open dead letters: a new refusal (instrument and
    reason code) is inserted, one no longer found is retired; the others are left alone."""
    done = done or Written()
    table = tables.qualified(tables.MARKET_REFUSED_TABLE, schema)
    cur.execute(
        sql.SQL(
            "SELECT id, instrument_kind, instrument_id, reason_code FROM {} "
            "WHERE boundary IS NOT DISTINCT FROM %s AND retired_at IS NULL"
        ).format(table),
        (boundary,),
    )
    open_ = {(k, i, c): n for n, k, i, c in cur.fetchall()}
    now = {(k, i, c): reason for k, i, c, reason in refused}
    gone = [n for key, n in open_.items() if key not in now]
    if gone:
        cur.execute(
            sql.SQL("UPDATE {} SET retired_at = now() WHERE id = ANY(%s)").format(table), (gone,)
        )
        done.retired += len(gone)
    added = [
        (k, i, boundary, c, reason, run_id)
        for (k, i, c), reason in sorted(now.items())
        if (k, i, c) not in open_
    ]
    if added:
        psycopg2.extras.execute_values(
            cur,
            sql.SQL(
                "INSERT INTO {} (instrument_kind, instrument_id, boundary, reason_code, reason, "
                "run_id) VALUES %s"
            )
            .format(table)
            .as_string(cur.connection),
            added,
        )
        done.refused += len(added)
    return done


def stored_boundaries(conn: psycopg2.extensions.connection, schema: str) -> list[str]:
    """The boundaries with stored lines or open dead letters (a boundary whose consumption
    and instruments are all gone is still visited, and emptied)."""
    with conn.cursor() as cur:
        cur.execute(
            sql.SQL(
                "SELECT boundary FROM {} UNION SELECT boundary FROM {} "
                "WHERE retired_at IS NULL AND boundary IS NOT NULL"
            ).format(
                tables.qualified(tables.MARKET_TABLE, schema),
                tables.qualified(tables.MARKET_REFUSED_TABLE, schema),
            )
        )
        found = sorted(r[0] for r in cur.fetchall())
    conn.rollback()
    return found
