"""Run records: a run's row in ``calculation_runs``, from start to outcome, and what it wrote.

Records are append-only: a run id is taken once, and a process only ever finishes the row it
started (``finish_run`` updates a row that is still ``running``), so no later mistake can
rewrite an earlier run's outcome.

What a run wrote is summed from its write log (``WRITES_TABLE``: a few rows per flush, written
in the same transaction as the results they describe), never by a scan of its results.
"""

from __future__ import annotations

import contextlib
import json
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from pipeline.levels import LEVELS, Tally, describe_coverage
from pipeline.store.tables import (
    DEFAULT_SCHEMA,
    ERRORS_TABLE,
    RESULTS_TABLE,
    RUNS_TABLE,
    WRITES_TABLE,
    qualified_text,
    table,
)


def _runs_table(schema: str) -> sa.Table:
    return table(RUNS_TABLE, schema)


class RunIdTaken(Exception):
    """The run id is already in ``calculation_runs``: run records are append-only, so a run
    never takes over (and later rewrites) the record of another."""


def _taken(conn: sa.Connection, runs: sa.Table, run_id: str) -> RunIdTaken | None:
    row = conn.execute(
        sa.select(runs.c.status, runs.c.started_at, runs.c.finished_at).where(
            runs.c.run_id == run_id
        )
    ).first()
    if row is None:
        return None
    status, started_at, finished_at = row
    if finished_at is None:
        when = f"{status} since {started_at.isoformat(sep=' ', timespec='seconds')}"
    else:
        when = f"{status} on {finished_at.isoformat(sep=' ', timespec='seconds')}"
    return RunIdTaken(f"run id {run_id} is already recorded ({when}): choose another")


def check_new_run_id(engine: sa.Engine, run_id: str, schema: str = DEFAULT_SCHEMA) -> None:
    """Raises ``RunIdTaken`` when ``run_id`` is already recorded, before a run writes
    anything (``start_run`` refuses it too, for two runs given the same id at once)."""
    with engine.connect() as conn:
        taken = _taken(conn, _runs_table(schema), run_id)
    if taken is not None:
        raise taken


def start_run(
    engine: sa.Engine,
    run_id: str,
    runner: str,
    options: dict[str, Any],
    schema: str = DEFAULT_SCHEMA,
    **fields: Any,
) -> None:
    """Record that a run has started (``fields``: more columns known from the start).

    Raises ``RunIdTaken``, and changes nothing, when the id is already recorded: the row of
    an earlier run is an audit record and stays as it is."""
    runs = _runs_table(schema)
    with engine.begin() as conn:
        inserted = conn.execute(
            postgresql.insert(runs)
            .values(
                run_id=run_id,
                status="running",
                runner=runner,
                options=json.loads(json.dumps(options, default=str)),
                **fields,
            )
            .on_conflict_do_nothing(index_elements=[runs.c.run_id])
        )
        if inserted.rowcount == 0:
            raise _taken(conn, runs, run_id) or RunIdTaken(f"run id {run_id} is already recorded")


def finish_run(engine: sa.Engine, run_id: str, schema: str = DEFAULT_SCHEMA, **fields: Any) -> bool:
    """Store the outcome and summary of a run this process started; returns whether it did.

    Only a row still ``running`` is updated: a finished run's record (the audit trail) is
    never rewritten, whatever goes wrong later in a process that happens to know its id."""
    runs = _runs_table(schema)
    with engine.begin() as conn:
        updated = conn.execute(
            runs.update()
            .where(runs.c.run_id == run_id, runs.c.status == "running")
            .values(finished_at=sa.func.now(), **fields)
        )
        return bool(updated.rowcount == 1)


def hold_commits(engine: sa.Engine, schema: str, wait_s: float) -> sa.Connection | None:
    """Keeps every flush, of any run, from committing from now on, until the connection this
    returns closes (a stopped run lets it close with the process); None when the lock could
    not be had within ``wait_s`` seconds.

    A results flush writes its row of the write log last, just before its commit, and a
    dead-letter flush writes only dead letters. A SHARE lock on both tables waits for the
    flushes that have already written there (they commit) and makes every other one wait
    there; when the process ends, their connections close and they roll back. What the run
    has committed is then fixed: counted while the lock is held, it is what stays stored."""
    conn = engine.connect()
    try:
        conn.execute(
            sa.text("SELECT set_config('lock_timeout', :ms, true)"),
            {"ms": str(max(1, int(wait_s * 1000)))},
        )
        conn.execute(
            sa.text(
                f"LOCK TABLE {qualified_text(WRITES_TABLE, schema)}, "
                f"{qualified_text(ERRORS_TABLE, schema)} IN SHARE MODE"
            )
        )
    except sa.exc.DBAPIError:  # without the lock, what is counted is a lower bound
        with contextlib.suppress(Exception):
            conn.close()
        return None
    return conn


def _errors_sql(schema: str) -> str:
    """Per activity type: activities with a dead letter (of the run, or any) and no result."""
    return (
        "SELECT e.activity_type, count(DISTINCT e.activity_id) "
        f"FROM {qualified_text(ERRORS_TABLE, schema)} e WHERE NOT EXISTS (SELECT 1 FROM "
        f"{qualified_text(RESULTS_TABLE, schema)} r "
        "WHERE r.activity_type = e.activity_type AND r.activity_id = e.activity_id) "
        "AND e.retired_at IS NULL "
        "AND (CAST(:run_id AS uuid) IS NULL OR e.run_id = CAST(:run_id AS uuid)) "
        "GROUP BY e.activity_type"
    )


def run_coverage(engine: sa.Engine, run_id: str, schema: str = DEFAULT_SCHEMA) -> dict[str, Any]:
    """``coverage(engine, run_id)`` from the run's write log (``WRITES_TABLE``: a few rows
    per flush, written with the results they describe) instead of a scan of its results.

    The same counts; the kg CO2e are the same sums, added in another order (they agree to
    floating-point rounding, about 1e-15 relative)."""
    tallies: dict[str, Tally] = {}
    with engine.connect() as conn:
        logged = conn.execute(
            sa.text(
                "SELECT activity_type, results, kg_co2e, levels FROM "
                f"{qualified_text(WRITES_TABLE, schema)} "
                "WHERE run_id = CAST(:run_id AS uuid) ORDER BY id"
            ),
            {"run_id": run_id},
        ).all()
        errors = errors_without_result(conn, run_id, schema)
    for activity_type, results, kg, by_level in logged:
        flush = Tally(
            int(results),
            float(kg),
            {name: (int(by_level[name][0]), float(by_level[name][1])) for name in LEVELS},
        )
        tallies.setdefault(activity_type, Tally()).add(flush)
    raw = {t: (c.results, c.kg_co2e, c.levels) for t, c in tallies.items()}
    return describe_coverage(raw, errors)


def errors_without_result(
    conn: sa.Connection, run_id: str | None, schema: str = DEFAULT_SCHEMA
) -> dict[str, int]:
    """Per activity type, the run's (or all) dead-lettered activities that have no result.
    Each is looked up in the results' primary key (see ``coverage``), never by a scan."""
    conn.execute(sa.text("SET LOCAL enable_seqscan = off"))
    found = conn.execute(sa.text(_errors_sql(schema)), {"run_id": run_id}).all()
    return {r[0]: int(r[1]) for r in found}


def results_written(engine: sa.Engine, run_id: str, schema: str = DEFAULT_SCHEMA) -> int:
    """How many results a run has committed so far, from its write log (no scan)."""
    with engine.connect() as conn:
        return int(
            conn.execute(
                sa.text(
                    "SELECT coalesce(sum(results), 0) FROM "
                    f"{qualified_text(WRITES_TABLE, schema)} "
                    "WHERE run_id = CAST(:run_id AS uuid)"
                ),
                {"run_id": run_id},
            ).scalar()
            or 0
        )


def nothing_written() -> dict[str, Any]:
    """The coverage of a run that wrote nothing (it had nothing pending)."""
    return describe_coverage({}, {})


def replaced_results(
    engine: sa.Engine, run_id: str, schema: str = DEFAULT_SCHEMA
) -> dict[str, int]:
    """Per activity type, how many of a run's results replaced those of changed activities
    (from its write log)."""
    with engine.connect() as conn:
        rows = conn.execute(
            sa.text(
                "SELECT activity_type, sum(replaced) FROM "
                f"{qualified_text(WRITES_TABLE, schema)} WHERE run_id = CAST(:run_id AS uuid) "
                "GROUP BY activity_type"
            ),
            {"run_id": run_id},
        ).all()
    return {str(t): int(n) for t, n in rows}
