"""The base year: as first reported, as recalculated, and what changed it.

The first time a base year is named (``audit.inventory --base-year 2019``), its stored results
are recorded as first reported (``base_year_results``: each result's activity and kg CO2e, and
when). Every later inventory compares them with the base year's results now:

- *as first reported*: the recorded results' total;
- *as recalculated*: the inventory of the base year from the results stored now;
- *what caused the change*, from the history of each recorded result
  (``emission_results_history``): each version superseded since, by the reason it left
  (``restatement``: another factor edition; ``activity_changed``: a corrected activity;
  ``activity_deleted``: a deleted activity), counted as the difference between it and the
  version that replaced it (0 for a deleted activity); ``activity_added``: results of the base
  year that were not there when it was recorded (late data); ``other``: what remains (an
  activity whose corrected date moved it out of the year).

The change is significant when it exceeds the threshold (5% by default, common practice under
the GHG Protocol Corporate Standard, chapter 5) of the total as first reported: the inventory
then says that the base year must be recalculated, with both figures.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from psycopg2 import sql

from audit.inventory import Period, inventory
from pipeline.store import connections, tables
from pipeline.store.sources import Sources, default_sources, read_only_within, relation

REASONS = (*tables.HISTORY_REASONS, "activity_added", "other")


def _record(cur: Any, chosen: Period, schema: str, sources: Sources) -> None:
    """Record the base year's results now, unless it is recorded already (one statement per
    type, in one transaction: a base year is recorded whole or not at all). Which results are
    in the year is read from the sources in a read-only part of it (``read_only_within``: the
    sources' SQL never runs where it could write)."""
    base = tables.qualified(tables.BASE_YEAR_TABLE, schema)
    for activity_type, source in sources.items():
        params = {
            "ys": chosen.year_start,
            "year": chosen.year,
            "type": activity_type,
            "start": chosen.start,
            "end": chosen.end,
        }
        with read_only_within(cur):
            cur.execute(
                sql.SQL(
                    "SELECT r.activity_id::text FROM {results} r JOIN ({activities}) a "
                    "ON a.id = r.activity_id WHERE r.activity_type = %(type)s "
                    "AND a.activity_date >= %(start)s AND a.activity_date < %(end)s"
                ).format(
                    results=tables.qualified(tables.RESULTS_TABLE, schema),
                    activities=relation(source),
                ),
                params,
            )
            params["ids"] = [i for (i,) in cur.fetchall()]
        cur.execute(
            sql.SQL(
                "INSERT INTO {base} (year_start, base_year, activity_type, activity_id, scope, "
                "category, kg_co2e) SELECT %(ys)s, %(year)s, r.activity_type, "
                "r.activity_id::text, r.scope, r.category, r.kg_co2e FROM {results} r "
                "WHERE r.activity_type = %(type)s AND r.activity_id::text = ANY(%(ids)s) "
                "ON CONFLICT DO NOTHING"
            ).format(base=base, results=tables.qualified(tables.RESULTS_TABLE, schema)),
            params,
        )


def _causes_query(schema: str) -> sql.Composed:
    """Per reason, the recorded results it changed and by how much (kg, exact sums)."""
    return sql.SQL(
        "WITH b AS (SELECT activity_type, activity_id, recorded_at FROM {base} "
        "WHERE year_start = %(ys)s AND base_year = %(year)s), "
        "h AS (SELECT h.activity_type, h.activity_id::text AS id, h.kg_co2e, h.reason, "
        "h.history_id FROM {history} h JOIN b ON b.activity_type = h.activity_type "
        "AND b.activity_id = h.activity_id::text WHERE h.superseded_at >= b.recorded_at), "
        # In the order the versions were kept (one run may replace an activity twice).
        "steps AS (SELECT h.reason, h.activity_type, h.id, h.kg_co2e, "
        "coalesce(lead(h.kg_co2e) OVER (PARTITION BY h.activity_type, h.id "
        "ORDER BY h.history_id), r.kg_co2e, 0) AS next_kg FROM h LEFT JOIN {results} r "
        "ON r.activity_type = h.activity_type AND r.activity_id::text = h.id) "
        "SELECT reason, count(DISTINCT (activity_type, id)), "
        "sum(next_kg::numeric - kg_co2e::numeric) FROM steps GROUP BY reason"
    ).format(
        base=tables.qualified(tables.BASE_YEAR_TABLE, schema),
        history=tables.qualified(tables.HISTORY_TABLE, schema),
        results=tables.qualified(tables.RESULTS_TABLE, schema),
    )


def _added_query(schema: str, source: Any) -> sql.Composed:
    """The base year's results now whose activity was not recorded (late data)."""
    return sql.SQL(
        "SELECT count(*), coalesce(sum(r.kg_co2e::numeric), 0) FROM {results} r "
        "JOIN ({activities}) a ON a.id = r.activity_id WHERE r.activity_type = %(type)s "
        "AND a.activity_date >= %(start)s AND a.activity_date < %(end)s AND NOT EXISTS "
        "(SELECT 1 FROM {base} b WHERE b.year_start = %(ys)s AND b.base_year = %(year)s "
        "AND b.activity_type = r.activity_type AND b.activity_id = r.activity_id::text)"
    ).format(
        results=tables.qualified(tables.RESULTS_TABLE, schema),
        base=tables.qualified(tables.BASE_YEAR_TABLE, schema),
        activities=relation(source),
    )


def _read(
    engine: Any, chosen: Period, schema: str, sources: Sources
) -> tuple[bool, Any, Decimal, int, dict[str, tuple[int, Decimal]]]:
    """Whether the base year was recorded just now; when it was recorded, its total and
    results as first reported; the changes per reason."""
    base = tables.qualified(tables.BASE_YEAR_TABLE, schema)
    key = {"ys": chosen.year_start, "year": chosen.year}
    with connections.raw_connection(engine) as conn:
        with conn.cursor() as cur:
            # One recorder at a time, so that a base year is recorded once, whole.
            cur.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (f"base_year {schema}",))
            cur.execute(
                sql.SQL(
                    "SELECT count(*), min(recorded_at), coalesce(sum(kg_co2e::numeric), 0) "
                    "FROM {base} WHERE year_start = %(ys)s AND base_year = %(year)s"
                ).format(base=base),
                key,
            )
            count, recorded_at, first = cur.fetchone()
            recorded_now = count == 0
            if recorded_now:
                _record(cur, chosen, schema, sources)
                conn.commit()
                return True, None, Decimal(0), 0, {}
            cur.execute(_causes_query(schema), key)
            causes = {r[0]: (int(r[1]), Decimal(r[2])) for r in cur.fetchall()}
            added, added_kg = 0, Decimal(0)
            for activity_type, source in sources.items():
                params = {**key, "type": activity_type, "start": chosen.start, "end": chosen.end}
                with read_only_within(cur):  # the sources' SQL, read-only
                    cur.execute(_added_query(schema, source), params)
                    n, kg = cur.fetchone()
                added, added_kg = added + int(n), added_kg + Decimal(kg)
            if added:
                causes["activity_added"] = (added, added_kg)
        conn.commit()
    return False, recorded_at, Decimal(first), int(count), causes


def compare(
    engine: Any,
    chosen: Period,
    threshold: float = 0.05,
    schema: str = tables.DEFAULT_SCHEMA,
    sources: Sources | None = None,
) -> dict[str, Any]:
    """The base year ``chosen`` as first reported and as recalculated (recorded first, when
    it never was), the causes of the change, and whether it is significant."""
    sources = sources or default_sources(schema)
    recorded_now, recorded_at, first, count, causes = _read(engine, chosen, schema, sources)
    now = inventory(engine, chosen, schema, sources)["total"]
    if recorded_now:
        return {
            "period": chosen.as_dict(),
            "recorded_now": True,
            "first_reported_kg": now["kg_co2e"],
            "recalculated_kg": now["kg_co2e"],
            "results_first_reported": now["results"],
            "results_recalculated": now["results"],
            "change_kg": 0.0,
            "change_share": 0.0,
            "threshold": threshold,
            "significant": False,
            "causes": [],
            "message": f"Base year {chosen.label} recorded now as first reported: "
            f"{now['kg_co2e'] / 1000.0:,.2f} t CO2e from {now['results']:,} results.",
        }
    recalculated = Decimal(now["kg_co2e"])
    change = recalculated - first
    explained = sum((kg for _, kg in causes.values()), Decimal(0))
    if abs(change - explained) > Decimal("1e-6") * max(abs(first), Decimal(1)):
        causes["other"] = (0, change - explained)
    share = float(change / first) if first else (0.0 if not change else float("inf"))
    significant = abs(share) > threshold
    return {
        "period": chosen.as_dict(),
        "recorded_now": False,
        "recorded_at": recorded_at.isoformat(),
        "first_reported_kg": float(first),
        "recalculated_kg": float(recalculated),
        "results_first_reported": count,
        "results_recalculated": now["results"],
        "change_kg": float(change),
        "change_share": share,
        "threshold": threshold,
        "significant": significant,
        "causes": [
            {"reason": reason, "results": causes[reason][0], "change_kg": float(causes[reason][1])}
            for reason in REASONS
            if reason in causes
        ],
        "message": _message(chosen, first, recalculated, share, threshold, significant),
    }


def _message(
    chosen: Period,
    first: Decimal,
    recalculated: Decimal,
    share: float,
    threshold: float,
    significant: bool,
) -> str:
    figures = (
        f"{float(first) / 1000.0:,.2f} t CO2e as first reported, "
        f"{float(recalculated) / 1000.0:,.2f} t as recalculated ({100.0 * share:+.1f}%)"
    )
    if significant:
        return (
            f"Base year {chosen.label} changed by more than the {100.0 * threshold:g}% "
            f"threshold: {figures}. Recalculate the base year."
        )
    return f"Base year {chosen.label}: {figures}, within the {100.0 * threshold:g}% threshold."


def recorded(engine: Any, year_start: str, schema: str = tables.DEFAULT_SCHEMA) -> list[int]:
    """The base years recorded for reporting years beginning on ``year_start``, oldest first
    (read only: the report shows them, it never records one)."""
    with connections.raw_connection(engine) as conn:
        with conn.cursor() as cur:
            cur.execute(
                sql.SQL(
                    "SELECT DISTINCT base_year FROM {base} WHERE year_start = %s ORDER BY 1"
                ).format(base=tables.qualified(tables.BASE_YEAR_TABLE, schema)),
                (year_start,),
            )
            found = [int(r[0]) for r in cur.fetchall()]
        conn.commit()
    return found
