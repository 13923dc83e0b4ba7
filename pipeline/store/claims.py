"""Key-range claims: two runs side by side compute each key range once, and a claim dies with
its run.

A run claims a key range before it reads it (``claim``): a row of ``range_claims`` naming the
run. The claim is held as long as its run is ``running`` in ``calculation_runs``; nothing else
keeps it:

- a run that finishes (succeeded, failed, cancelled) releases its claims when its heartbeat
  stops (``release``), and holds none once its record says it is no longer running;
- a run that stops without finishing (killed, frozen by SIGSTOP, its machine cut off) stops
  beating; once its heartbeat is older than ``LEASE`` (the default ``--stale-after``), the
  next run that wants one of its ranges marks it ``abandoned`` (the same conditional update as
  ``runs.mark_abandoned``) and takes the range over, and so does any run after ``ops.status``
  has marked it. Its sessions are then ended (``cut_off``): a frozen process keeps its TCP
  connections open, and with them the locks of a flush it had begun;
- a run marked ``abandoned`` that resumes writes nothing: each flush logs itself in
  ``calculation_run_writes``, and a deferred trigger there refuses the commit of a run that is
  no longer ``running`` (SQLSTATE ``STOPPED``; the writer drops the flush).

So "this run still holds its claims" is "this run is still ``running``": a claim is only taken
from a run that is not, and a run never becomes ``running`` again.

Taking a range over is one transaction on the claim's row, locked first (``FOR UPDATE``): two
runs that want the same range of a dead run queue on that lock, and the second sees the
first's claim. (Session advisory locks, before, lived as long as the run's connections: a frozen
run kept its ranges for ever while the runs after it succeeded, leaving its work pending.)
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import psycopg2
import psycopg2.errors
import psycopg2.extensions
import sqlalchemy as sa
from psycopg2 import sql

from pipeline.store.connections import APPLICATION_NAME, raw_connection
from pipeline.store.tables import CLAIMS_TABLE, DEFAULT_SCHEMA, RUNS_TABLE, qualified

_LOG = logging.getLogger(__name__)

#: Seconds after its last heartbeat that a run still ``running`` holds its claims: the default
#: ``--stale-after`` of ``ops.status`` and of each run (``runs.DEFAULT_STALE_AFTER``).
LEASE = 300.0
#: The SQLSTATE of a flush refused because its run is no longer ``running`` (revision 0006).
STOPPED = "EM001"
#: A run's Beam counters of the ranges it left to another run: this, then that run's id.
LEFT_TO = "ranges_left_to:"
#: How long a claim waits for the lock on a claim's row (a claim is a few milliseconds; a
#: longer wait is a frozen session, which ``cut_off`` ends): then the range is left.
_LOCK_WAIT_MS = 5000


@dataclass(frozen=True)
class Claim:
    """What ``claim`` found: ``held``, this run holds the range now; ``holder``, the run that
    holds it (this one, another, or None when unknown); ``taken_from``, the stopped run it was
    taken over from; ``stopped``, this run is no longer ``running`` and claims nothing."""

    held: bool
    holder: str | None = None
    taken_from: str | None = None
    stopped: bool = False


def range_key(start: Any, end: Any) -> str:
    """A range's bounds as one text (``None``: unbounded), the same for every run that plans
    the same cut points."""
    return json.dumps([None if start is None else str(start), None if end is None else str(end)])


def _status(cur: psycopg2.extensions.cursor, schema: str, run_id: str) -> str | None:
    cur.execute(
        sql.SQL("SELECT status FROM {} WHERE run_id = %s").format(qualified(RUNS_TABLE, schema)),
        (run_id,),
    )
    found = cur.fetchone()
    return None if found is None else str(found[0])


def _mark_if_stale(
    cur: psycopg2.extensions.cursor, schema: str, holder: str, run_id: str, lease: float
) -> bool:
    """Marks ``holder`` abandoned if it is still ``running`` and its heartbeat (or start) is
    older than ``lease`` seconds, re-checked under the row's lock, as ``runs.mark_abandoned``
    does; returns whether it did."""
    cur.execute(
        sql.SQL(
            "UPDATE {runs} SET status = 'abandoned', message = 'stopped without finishing: no "
            "heartbeat since ' || to_char(timezone('UTC', coalesce(heartbeat_at, started_at)), "
            "'YYYY-MM-DD HH24:MI:SS') || ' UTC (marked by run ' || %s || ', which took over "
            "its key ranges)' WHERE run_id = %s AND status = 'running' "
            "AND coalesce(heartbeat_at, started_at) < now() - make_interval(secs => %s)"
        ).format(runs=qualified(RUNS_TABLE, schema)),
        (run_id, holder, lease),
    )
    return bool(cur.rowcount)


def _take(
    cur: psycopg2.extensions.cursor,
    schema: str,
    activity_type: str,
    start: Any,
    end: Any,
    run_id: str,
    lease: float,
) -> tuple[Claim, bool]:
    """The claim, in the caller's transaction; and whether a stale holder was marked."""
    if _status(cur, schema, run_id) not in (None, "running"):
        return Claim(False, stopped=True), False
    key = range_key(start, end)
    table = qualified(CLAIMS_TABLE, schema)
    for _ in range(2):  # once more if the holder released it between the two statements
        cur.execute(
            sql.SQL(
                "INSERT INTO {t} (activity_type, range_key, range_start, range_end, run_id) "
                "VALUES (%s, %s, %s, %s, %s) ON CONFLICT DO NOTHING RETURNING 1"
            ).format(t=table),
            (
                activity_type,
                key,
                None if start is None else str(start),
                None if end is None else str(end),
                run_id,
            ),
        )
        if cur.fetchone() is not None:
            return Claim(True, run_id), False
        cur.execute(
            sql.SQL(
                "SELECT run_id::text FROM {t} WHERE activity_type = %s AND range_key = %s "
                "FOR UPDATE"
            ).format(t=table),
            (activity_type, key),
        )
        found = cur.fetchone()
        if found is not None:
            break
    else:
        return Claim(False), False
    holder = str(found[0])
    if holder == run_id:
        return Claim(True, run_id), False
    marked = _mark_if_stale(cur, schema, holder, run_id, lease)
    if _status(cur, schema, holder) == "running":
        return Claim(False, holder), False
    cur.execute(
        sql.SQL(
            "UPDATE {t} SET run_id = %s, claimed_at = now() "
            "WHERE activity_type = %s AND range_key = %s"
        ).format(t=table),
        (run_id, activity_type, key),
    )
    return Claim(True, run_id, taken_from=holder), marked


def claim(
    conn: psycopg2.extensions.connection,
    schema: str,
    activity_type: str,
    start: Any,
    end: Any,
    run_id: str,
    lease: float = LEASE,
) -> Claim:
    """Claims the key range ``start <= id < end`` of ``activity_type`` for ``run_id``, unless
    a run still ``running`` holds it; one transaction. A range this run already holds (a
    bundle read again) is its own; one held by a run that is no longer ``running``, or whose
    heartbeat is older than ``lease`` seconds (then marked ``abandoned``, and its sessions
    ended), is taken over."""
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT set_config('lock_timeout', %s, true)", (str(_LOCK_WAIT_MS),))
            found, marked = _take(cur, schema, activity_type, start, end, run_id, lease)
        conn.commit()
    except psycopg2.errors.LockNotAvailable:
        # The claim's row is locked by a session that does not move: left to its holder.
        conn.rollback()
        return Claim(False, holder(conn, schema, activity_type, start, end))
    if marked and found.taken_from is not None:
        _LOG.warning(
            "run %s stopped beating more than %g s ago: marked abandoned, its key ranges are "
            "taken over",
            found.taken_from,
            lease,
        )
        cut_off(conn, [found.taken_from])
    return found


def holder(
    conn: psycopg2.extensions.connection, schema: str, activity_type: str, start: Any, end: Any
) -> str | None:
    """The run that holds a key range's claim (committed), or None."""
    with conn.cursor() as cur:
        cur.execute(
            sql.SQL(
                "SELECT run_id::text FROM {t} WHERE activity_type = %s AND range_key = %s"
            ).format(t=qualified(CLAIMS_TABLE, schema)),
            (activity_type, range_key(start, end)),
        )
        found = cur.fetchone()
    conn.commit()
    return None if found is None else str(found[0])


def cut_off(conn: psycopg2.extensions.connection, run_ids: Sequence[str]) -> int:
    """Ends the database sessions of runs declared stopped (each names its run in its
    ``application_name``, ``connections.for_run``), so that the locks and the uncommitted rows
    of a frozen process go with them; returns how many. A role that may not end them (not the
    same role, not ``pg_signal_backend``) is said in one warning: their locks stay until the
    process ends or the server's timeouts end them."""
    if not run_ids:
        return 0
    names = [f"{APPLICATION_NAME} run {r}" for r in run_ids]
    try:
        with conn.cursor() as cur:
            cur.execute(
                "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE datname = current_database() AND application_name = ANY(%s) "
                "AND pid <> pg_backend_pid()",
                (names,),
            )
            (ended,) = cur.fetchone()
        conn.commit()
    except psycopg2.Error as e:
        conn.rollback()
        _LOG.warning(
            "the sessions of stopped run(s) %s could not be ended (%s): their locks stay until "
            "their processes end",
            ", ".join(run_ids),
            " ".join(str(e).split()),
        )
        return 0
    return int(ended or 0)


def release(conn: psycopg2.extensions.connection, run_id: str, schema: str) -> int:
    """Drops every claim of ``run_id`` (its work is over); returns how many."""
    with conn.cursor() as cur:
        cur.execute(
            sql.SQL("DELETE FROM {} WHERE run_id = %s").format(qualified(CLAIMS_TABLE, schema)),
            (run_id,),
        )
        released = cur.rowcount
    conn.commit()
    return int(released)


def release_all(engine: sa.Engine, run_id: str, schema: str = DEFAULT_SCHEMA) -> int:
    """``release`` on a connection of ``engine``'s pool."""
    with raw_connection(engine) as conn:
        return release(conn, run_id, schema)


def _of_stopped_runs(schema: str) -> sql.Composed:
    return sql.SQL(
        "FROM {c} c LEFT JOIN {r} r ON r.run_id = c.run_id "
        "WHERE r.status IS DISTINCT FROM 'running'"
    ).format(c=qualified(CLAIMS_TABLE, schema), r=qualified(RUNS_TABLE, schema))


@dataclass(frozen=True)
class Left:
    """Key ranges still claimed by a run that is no longer ``running``: work the runs after
    it left to it, which no run has taken over yet."""

    run_id: str
    status: str | None
    ranges: int


def left_to_stopped_runs(engine: sa.Engine, schema: str = DEFAULT_SCHEMA) -> list[Left]:
    """The runs no longer ``running`` that still hold claims, most ranges first."""
    with raw_connection(engine) as conn:
        with conn.cursor() as cur:
            cur.execute(
                sql.SQL(
                    "SELECT c.run_id::text, r.status, count(*) {f} GROUP BY 1, 2 ORDER BY 3 DESC, 1"
                ).format(f=_of_stopped_runs(schema))
            )
            found = [Left(str(i), None if s is None else str(s), int(n)) for i, s, n in cur]
        conn.commit()
    return found


def sweep(engine: sa.Engine, run_ids: Sequence[str], schema: str = DEFAULT_SCHEMA) -> int:
    """Before a run: ends the sessions of the runs just marked abandoned (``run_ids``) and
    drops the claims of every run no longer ``running`` (this run computes their ranges, or
    a range planned otherwise covers them); returns how many claims were dropped."""
    with raw_connection(engine) as conn:
        cut_off(conn, run_ids)
        with conn.cursor() as cur:
            cur.execute(
                sql.SQL(
                    "DELETE FROM {c} c WHERE NOT EXISTS (SELECT 1 FROM {r} r "
                    "WHERE r.run_id = c.run_id AND r.status = 'running')"
                ).format(c=qualified(CLAIMS_TABLE, schema), r=qualified(RUNS_TABLE, schema))
            )
            dropped = cur.rowcount
        conn.commit()
    return int(dropped)
