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
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from pipeline import db
from pipeline.levels import LEVEL_SQL, LEVELS, Tally

_LEVEL_COUNTS = ", ".join(
    f"count(*) FILTER (WHERE {cond}), coalesce(sum(kg_co2e) FILTER (WHERE {cond}), 0)"
    for cond in LEVEL_SQL.values()
)
#: Per activity type: results, kg, and per level its count and kg; of one run, or of all.
_RESULTS_SQL = (
    f"SELECT activity_type, count(*), coalesce(sum(kg_co2e), 0), {_LEVEL_COUNTS} "
    f"FROM {db.RESULTS_TABLE} WHERE (CAST(:run_id AS uuid) IS NULL "
    "OR run_id = CAST(:run_id AS uuid)) GROUP BY activity_type"
)
#: Per activity type: activities with a dead letter (of the run, or any) and no result.
_ERRORS_SQL = (
    "SELECT e.activity_type, count(DISTINCT e.activity_id) "
    f"FROM {db.ERRORS_TABLE} e WHERE NOT EXISTS (SELECT 1 FROM {db.RESULTS_TABLE} r "
    "WHERE r.activity_type = e.activity_type AND r.activity_id = e.activity_id) "
    "AND (CAST(:run_id AS uuid) IS NULL OR e.run_id = CAST(:run_id AS uuid)) "
    "GROUP BY e.activity_type"
)


def _share(part: float, whole: float) -> float:
    return part / whole if whole else 0.0


def coverage(engine: sa.Engine, run_id: str | None = None) -> dict[str, Any]:
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
        rows = conn.execute(sa.text(_RESULTS_SQL), params).all()
        errors = _errors_without_result(conn, run_id)
    raw: dict[str, tuple[int, float, dict[str, tuple[int, float]]]] = {}
    for row in rows:
        levels = {
            name: (int(row[3 + 2 * i]), float(row[4 + 2 * i])) for i, name in enumerate(LEVELS)
        }
        raw[row[0]] = (int(row[1]), float(row[2]), levels)
    return _coverage(raw, errors)


def run_coverage(engine: sa.Engine, run_id: str) -> dict[str, Any]:
    """``coverage(engine, run_id)`` from the run's write log (``db.WRITES_TABLE``: a few rows
    per flush, written with the results they describe) instead of a scan of its results.

    The same counts; the kg CO2e are the same sums, added in another order (they agree to
    floating-point rounding, about 1e-15 relative)."""
    tallies: dict[str, Tally] = {}
    with engine.connect() as conn:
        logged = conn.execute(
            sa.text(
                f"SELECT activity_type, results, kg_co2e, levels FROM {db.WRITES_TABLE} "
                "WHERE run_id = CAST(:run_id AS uuid) ORDER BY id"
            ),
            {"run_id": run_id},
        ).all()
        errors = _errors_without_result(conn, run_id)
    for activity_type, results, kg, by_level in logged:
        flush = Tally(
            int(results),
            float(kg),
            {name: (int(by_level[name][0]), float(by_level[name][1])) for name in LEVELS},
        )
        tallies.setdefault(activity_type, Tally()).add(flush)
    raw = {t: (c.results, c.kg_co2e, c.levels) for t, c in tallies.items()}
    return _coverage(raw, errors)


def _errors_without_result(conn: sa.Connection, run_id: str | None) -> dict[str, int]:
    """Per activity type, the run's (or all) dead-lettered activities that have no result.
    Each is looked up in the results' primary key (see ``coverage``), never by a scan."""
    conn.execute(sa.text("SET LOCAL enable_seqscan = off"))
    found = conn.execute(sa.text(_ERRORS_SQL), {"run_id": run_id}).all()
    return {r[0]: int(r[1]) for r in found}


def results_written(engine: sa.Engine, run_id: str) -> int:
    """How many results a run has committed so far, from its write log (no scan)."""
    with engine.connect() as conn:
        return int(
            conn.execute(
                sa.text(
                    f"SELECT coalesce(sum(results), 0) FROM {db.WRITES_TABLE} "
                    "WHERE run_id = CAST(:run_id AS uuid)"
                ),
                {"run_id": run_id},
            ).scalar()
            or 0
        )


def nothing_written() -> dict[str, Any]:
    """The coverage of a run that wrote nothing (it had nothing pending)."""
    return _coverage({}, {})


def _coverage(
    raw: dict[str, tuple[int, float, dict[str, tuple[int, float]]]], errors: dict[str, int]
) -> dict[str, Any]:
    per_type: dict[str, dict[str, Any]] = {}
    for t in sorted(set(raw) | set(errors)):
        results, kg, levels = raw.get(t, (0, 0.0, {n: (0, 0.0) for n in LEVELS}))
        per_type[t] = _describe(results, kg, levels, int(errors.get(t, 0)))
    total_levels = {
        n: (
            sum(raw[t][2][n][0] for t in raw),
            sum(raw[t][2][n][1] for t in raw),
        )
        for n in LEVELS
    }
    overall = _describe(
        sum(v[0] for v in raw.values()),
        sum(v[1] for v in raw.values()),
        total_levels,
        sum(errors.values(), 0),
    )
    return {"overall": overall, "by_activity_type": per_type}


def _describe(
    results: int, kg: float, levels: dict[str, tuple[int, float]], errors: int
) -> dict[str, Any]:
    records = results + errors
    out: dict[str, Any] = {"records": records, "results": results, "kg_co2e": kg}
    for name in LEVELS:
        n, level_kg = levels[name]
        out[name] = {
            "records": n,
            "kg_co2e": level_kg,
            "share_of_records": _share(n, records),
            "share_of_kg": _share(level_kg, kg),
        }
    out["errors"] = {"records": errors, "share_of_records": _share(errors, records)}
    return out
