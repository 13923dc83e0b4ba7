"""Run records: a run's row in ``calculation_runs``, from start to outcome, and what it wrote.

What a run wrote is summed from its write log (``WRITES_TABLE``: a few rows per flush, written
in the same transaction as the results they describe), never by a scan of its results.
"""

from __future__ import annotations

import json
from typing import Any

import sqlalchemy as sa

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


def start_run(
    engine: sa.Engine,
    run_id: str,
    runner: str,
    options: dict[str, Any],
    schema: str = DEFAULT_SCHEMA,
    **fields: Any,
) -> None:
    """Record that a run has started (``fields``: more columns known from the start)."""
    runs = _runs_table(schema)
    with engine.begin() as conn:
        conn.execute(
            runs.insert().values(
                run_id=run_id,
                status="running",
                runner=runner,
                options=json.loads(json.dumps(options, default=str)),
                **fields,
            )
        )


def finish_run(engine: sa.Engine, run_id: str, schema: str = DEFAULT_SCHEMA, **fields: Any) -> None:
    """Store a run's outcome and summary."""
    runs = _runs_table(schema)
    with engine.begin() as conn:
        conn.execute(
            runs.update().where(runs.c.run_id == run_id).values(finished_at=sa.func.now(), **fields)
        )


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
