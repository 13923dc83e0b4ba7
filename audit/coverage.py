"""Data quality and coverage: how much of the inventory rests on exact factors, and how much on
fallbacks, substitutions or a different basis; and how much could not be computed at all.

Per activity type and overall, the count and kg CO2e of results at each level, and their
shares of the records (results + errors) and of the kg CO2e. The levels are flags, so a result
can be at more than one (a country fallback with a year mismatch); ``exact`` is a result with
none of them.

- ``exact``: the factor of the activity's own region, year, class and a combustion basis;
- ``country_fallback``: an unknown grid subregion fell back to its country's factor;
- ``year_mismatch``: no factor for the activity's year (or an FX/CPI year): another year's;
- ``class_substituted``: no DESNZ factor for the cabin class in that haul: the average row;
- ``lifecycle_basis``: a lifecycle intensity (Ember/OWID), not combustion-only;
- ``errors``: activities with a dead letter and no result (no kg CO2e can be given).

The kg CO2e are summed in double precision, as stored (fast, and the database's own
``sum(kg_co2e)``). Should a sum overflow (results above the plausibility bounds, stored before
there were any), PostgreSQL refuses it, and the sums are made again in ``numeric``, which
cannot overflow (``kg_sum``, ``overflowed``; the report does the same): a total beyond a
double then reads ``inf`` instead of failing.
"""

from __future__ import annotations

from typing import Any

import psycopg2
import sqlalchemy as sa

from pipeline.levels import LEVEL_SQL, LEVELS, describe_coverage
from pipeline.store import runs, tables

#: PostgreSQL's SQLSTATE for a value out of range: a double precision sum that overflowed.
OVERFLOW = "22003"


def kg_sum(column: str, exact: bool) -> str:
    """The SQL sum of a kg column: in double precision, as stored; ``exact``: in ``numeric``,
    which cannot overflow (each value is taken to 15 significant digits)."""
    return f"sum({column}::numeric)" if exact else f"sum({column})"


def overflowed(error: Exception) -> bool:
    """Whether ``error`` (a driver error, or SQLAlchemy's around one) is an overflowed sum."""
    cause = getattr(error, "orig", error)
    return isinstance(cause, psycopg2.Error) and cause.pgcode == OVERFLOW


def _results_sql(schema: str, exact: bool = False) -> str:
    """Per activity type: results, kg, and per level its count and kg; of one run, or of all."""
    kg = kg_sum("kg_co2e", exact)
    levels = ", ".join(
        f"count(*) FILTER (WHERE {cond}), coalesce({kg} FILTER (WHERE {cond}), 0)"
        for cond in LEVEL_SQL.values()
    )
    return (
        f"SELECT activity_type, count(*), coalesce({kg}, 0), {levels} "
        f"FROM {tables.qualified_text(tables.RESULTS_TABLE, schema)} "
        "WHERE (CAST(:run_id AS uuid) IS NULL OR run_id = CAST(:run_id AS uuid)) "
        "GROUP BY activity_type"
    )


def coverage(
    engine: sa.Engine, run_id: str | None = None, schema: str = tables.DEFAULT_SCHEMA
) -> dict[str, Any]:
    """Coverage of the results of one run (or of every stored result when ``run_id`` is None).

    Errors are the run's dead letters (or all) whose activity still has no result.
    """
    params = {"run_id": run_id}
    with engine.connect() as conn:
        # Right after a run the statistics still describe the tables before it: PostgreSQL
        # expects next to no results, and would sort the run's results to group three types
        # (spilling to disk), or look each dead letter up by a scan of every result (minutes
        # at millions of rows). Grouped by hashing, and looked up in the primary key.
        conn.execute(sa.text("SET LOCAL enable_sort = off"))
        try:
            with conn.begin_nested():
                rows = conn.execute(sa.text(_results_sql(schema)), params).all()
        except sa.exc.DBAPIError as error:
            if not overflowed(error):
                raise
            rows = conn.execute(sa.text(_results_sql(schema, exact=True)), params).all()
        errors = runs.errors_without_result(conn, run_id, schema)
    raw: dict[str, tuple[int, float, dict[str, tuple[int, float]]]] = {}
    for row in rows:
        levels = {
            name: (int(row[3 + 2 * i]), float(row[4 + 2 * i])) for i, name in enumerate(LEVELS)
        }
        raw[row[0]] = (int(row[1]), float(row[2]), levels)
    return describe_coverage(raw, errors)
