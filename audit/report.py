"""A self-contained HTML report of the inventory: charts as inline SVG, no script, no network.

    python -m audit.report [--database-url URL] [--out report.html] [--restatement ID]
        [--year-start 04-01] [--verify-sample 200]

Sections: a year selector and one section per reporting year with that year's headline (never
a total summed across years), by scope and category, activity type and gas
(``audit.report_years``, ``audit.inventory``); the GWP set of each factor set as recorded,
and whether ``audit.verify`` reproduces a sample now; by activity type and month; data-quality
coverage (``audit.coverage``); the top sources (factor set and key); the latest restatement's
diff (``audit.restate``), when there is one; and the audit trail (the code version, the
factor editions the stored results use, recent runs and restatements, each figure named by
what it counts). Every figure is read from the database when the report is written;
each carries its exact value in a ``data-kg`` (or ``data-value``) attribute, so a test (or an
auditor) can check the page against the database, and shows it rounded for people.

The kg CO2e are summed in double precision, as stored, so that each figure is the database's
own ``sum(kg_co2e)`` to the last bit. Should that overflow (results above the plausibility
bounds, stored before there were any), PostgreSQL refuses the sum, and the figures are summed
again in ``numeric``, which cannot overflow (``coverage.kg_sum``): the report never fails on
extreme data (a total beyond a double shows as ``inf``).
"""

from __future__ import annotations

import argparse
import datetime
import sys
from pathlib import Path
from typing import Any

import psycopg2
import sqlalchemy as sa
from psycopg2 import sql

from audit import coverage, report_years
from audit.charts import (
    TYPE_COLOURS,
    TYPE_LABELS,
    Bar,
    _e,
    hbar_chart,
    month_span,
    percent,
    scope_label,
    stacked_month_chart,
    tonnes,
)
from pipeline import cli, editions
from pipeline.levels import LEVELS
from pipeline.store import connections, install, tables
from pipeline.store.sources import Sources, default_sources, relation

LEVEL_LABELS = {
    "exact": "Exact factor",
    "country_fallback": "Country fallback",
    "year_mismatch": "Year mismatch",
    "class_substituted": "Class substituted",
    "lifecycle_basis": "Lifecycle basis",
    "errors": "Errors (no result)",
}


def _rows(engine: sa.Engine, query: str, **params: Any) -> list[tuple[Any, ...]]:
    with engine.connect() as conn:
        return [tuple(r) for r in conn.execute(sa.text(query), params)]


def _months(
    engine: sa.Engine, schema: str, sources: Sources, exact: bool = False
) -> list[tuple[Any, ...]]:
    """kg CO2e per activity type and month of the activity date, from each source."""
    found: list[tuple[Any, ...]] = []
    with connections.raw_connection(engine) as conn:
        with conn.cursor() as cur:
            cur.execute("SET TRANSACTION READ ONLY")
            for activity_type, source in sources.items():
                cur.execute(
                    sql.SQL(
                        "SELECT r.activity_type, to_char(a.activity_date, 'YYYY-MM') AS month, "
                        + coverage.kg_sum("r.kg_co2e", exact)
                        + " FROM {results} r JOIN ({activities}) a "
                        "ON a.id = r.activity_id WHERE r.activity_type = %s "
                        "AND a.activity_date IS NOT NULL GROUP BY 1, 2 ORDER BY 2"
                    ).format(
                        results=tables.qualified(tables.RESULTS_TABLE, schema),
                        activities=relation(source),
                    ),
                    (activity_type,),
                )
                found.extend(tuple(r) for r in cur.fetchall())
        conn.commit()
    return found


def figures(
    engine: sa.Engine,
    restatement_id: str | None = None,
    schema: str = tables.DEFAULT_SCHEMA,
    sources: Sources | None = None,
    year_start: str = "01-01",
    verify_sample: int = 0,
    threshold: float = 0.05,
) -> dict[str, Any]:
    """Everything the report shows, as read from the database now (each activity's date from
    its source: ``sources``, checked; default: the pipeline's own tables); the reporting
    years begin on ``year_start``; ``audit.verify`` runs on ``verify_sample`` results per
    type (0: not at all)."""
    install.ensure_initialised(engine, schema)  # an older database gains the audit tables
    sources = sources or default_sources(schema)
    total, scopes, by_type, months, top_sources = _checked_sums(engine, schema, sources)
    runs = _recent_runs(engine, schema)
    recent_restatements, chosen = _restatements(engine, schema, restatement_id)
    quality = coverage.coverage(engine, schema=schema)
    used = _editions_used(engine, schema)
    in_use = {(s, e) for s, e, _ in used}
    return {
        "results": int(total[0]),
        "kg_co2e": float(total[1]),
        "errors": quality["overall"]["errors"]["records"],
        "scopes": [(int(s), c, int(n), float(kg)) for s, c, n, kg in scopes],
        "by_type": [(t, int(n), float(kg)) for t, n, kg in by_type],
        "months": [(t, m, float(kg)) for t, m, kg in months],
        "top_sources": [(t, s, k, y, int(n), float(kg)) for t, s, k, y, n, kg in top_sources],
        "quality": quality,
        "editions": used,
        # Loaded, and used by no stored result (perhaps by results kept in history).
        "editions_unused": [e for e in _editions_loaded(engine, schema) if e not in in_use],
        "code_version": editions.code_version(),
        "runs": runs,
        "restatements": recent_restatements,
        "restatement": chosen[0] if chosen else None,
        "years": report_years.years(engine, schema, sources, year_start),
        "base_years": report_years.base_years(engine, schema, sources, year_start, threshold),
        "gwp": report_years.gwp_sets(engine, schema),
        "verify": report_years.verify_sample(engine, schema, sources, verify_sample),
    }


Rows = list[tuple[Any, ...]]


def _checked_sums(
    engine: sa.Engine, schema: str, sources: Sources
) -> tuple[tuple[Any, ...], Rows, Rows, Rows, Rows]:
    """``_sums``, exact (in numeric) when a float8 sum overflowed."""
    try:
        return _sums(engine, schema, sources, exact=False)
    except (sa.exc.DBAPIError, psycopg2.Error) as error:
        if not coverage.overflowed(error):
            raise
        return _sums(engine, schema, sources, exact=True)


def _recent_runs(engine: sa.Engine, schema: str) -> Rows:
    """The last 8 runs, with what they computed new, changed and retired."""
    restatements = tables.qualified_text(tables.RESTATEMENTS_TABLE, schema)
    return _rows(
        engine,
        # A restatement's own calculation_runs row is shown with the restatements.
        "SELECT run_id, status, runner, finished_at, total_processed, errors, "
        "total_co2e_tonnes, "
        "(SELECT sum((v->>'new')::bigint) FROM jsonb_each(by_activity_type) x(k, v)), "
        "(SELECT sum((v->>'changed')::bigint) FROM jsonb_each(by_activity_type) x(k, v)), "
        "(SELECT sum((v->>'retired')::bigint) FROM jsonb_each(by_activity_type) x(k, v)), "
        "message "
        f"FROM {tables.qualified_text(tables.RUNS_TABLE, schema)} c WHERE NOT EXISTS "
        f"(SELECT 1 FROM {restatements} s WHERE s.restatement_id = c.run_id) "
        "ORDER BY started_at DESC LIMIT 8",
    )


def _restatements(engine: sa.Engine, schema: str, restatement_id: str | None) -> tuple[Rows, Rows]:
    """The last 8 restatements, and the one shown: ``restatement_id``, or the last that
    succeeded and changed something (none when there is no such one)."""
    restatements = tables.qualified_text(tables.RESTATEMENTS_TABLE, schema)
    recent = _rows(
        engine,
        "SELECT restatement_id, status, pins, finished_at, examined, changed, refused, "
        "(diff->>'old_kg')::float8, (diff->>'new_kg')::float8 "
        f"FROM {restatements} ORDER BY started_at DESC LIMIT 8",
    )
    if restatement_id is None:
        chosen = _rows(
            engine,
            "SELECT restatement_id, finished_at, pins, changed, diff "
            f"FROM {restatements} "
            "WHERE status = 'succeeded' AND changed > 0 ORDER BY finished_at DESC LIMIT 1",
        )
    else:
        chosen = _rows(
            engine,
            "SELECT restatement_id, finished_at, pins, changed, diff "
            f"FROM {restatements} "
            "WHERE restatement_id = :r",
            r=restatement_id,
        )
        if not chosen:
            raise ValueError(f"no restatement {restatement_id}")
    return recent, chosen


def _editions_used(engine: sa.Engine, schema: str) -> list[tuple[str, str, int]]:
    """Per factor set and edition, how many stored results use one of its rows (as their
    emission factor, exchange rate or CPI deflator): the editions behind the figures now,
    whatever else is loaded."""
    factors = tables.qualified_text(tables.FACTORS_TABLE, schema)
    found = _rows(
        engine,
        # Counted per combination of factor rows first: a few thousand, however many results.
        "SELECT u.factor_set, u.edition, sum(r.n) FROM (SELECT factor_id, fx_factor_id, "
        "cpi_factor_id, cpi_base_factor_id, count(*) n "
        f"FROM {tables.qualified_text(tables.RESULTS_TABLE, schema)} GROUP BY 1, 2, 3, 4) r "
        f"LEFT JOIN {factors} e ON e.id = r.factor_id "
        f"LEFT JOIN {factors} x ON x.id = r.fx_factor_id "
        f"LEFT JOIN {factors} c ON c.id = r.cpi_factor_id "
        f"LEFT JOIN {factors} b ON b.id = r.cpi_base_factor_id "
        # Once per result and edition: both CPI rows are usually of the same edition.
        "CROSS JOIN LATERAL (SELECT DISTINCT v.factor_set, v.edition FROM (VALUES "
        "(e.factor_set, e.edition), (x.factor_set, x.edition), (c.factor_set, c.edition), "
        "(b.factor_set, b.edition)) v(factor_set, edition) WHERE v.factor_set IS NOT NULL) u "
        "GROUP BY 1, 2 ORDER BY 1, 2",
    )
    return [(s, e, int(n)) for s, e, n in found]


def _editions_loaded(engine: sa.Engine, schema: str) -> list[tuple[str, str]]:
    """Every (factor set, edition) loaded, used or not."""
    return [
        (s, e)
        for s, e in _rows(
            engine,
            "SELECT DISTINCT factor_set, edition "
            f"FROM {tables.qualified_text(tables.FACTORS_TABLE, schema)} ORDER BY 1, 2",
        )
    ]


def _sums(
    engine: sa.Engine, schema: str, sources: Sources, exact: bool
) -> tuple[tuple[Any, ...], Rows, Rows, Rows, Rows]:
    """The kg CO2e figures: the total, by scope and category, by type, by type and month, and
    the top sources; summed in double precision, or (``exact``) in numeric."""
    results = tables.qualified_text(tables.RESULTS_TABLE, schema)
    kg, kg_r = coverage.kg_sum("kg_co2e", exact), coverage.kg_sum("r.kg_co2e", exact)
    total = _rows(engine, f"SELECT count(*), coalesce({kg}, 0) FROM {results}")[0]
    scopes = _rows(
        engine,
        f"SELECT scope, category, count(*), {kg} FROM {results} "
        "GROUP BY scope, category ORDER BY scope, category NULLS FIRST",
    )
    by_type = _rows(
        engine,
        f"SELECT activity_type, count(*), {kg} FROM {results} "
        "GROUP BY activity_type ORDER BY activity_type",
    )
    months = _months(engine, schema, sources, exact)
    top_sources = _rows(
        engine,
        f"SELECT r.activity_type, f.factor_set, f.key, f.year, count(*), {kg_r} "
        f"FROM {results} r JOIN {tables.qualified_text(tables.FACTORS_TABLE, schema)} f "
        "ON f.id = r.factor_id "
        f"GROUP BY r.activity_type, f.factor_set, f.key, f.year ORDER BY {kg_r} DESC, "
        "f.factor_set, f.key, f.year LIMIT 10",
    )
    return total, scopes, by_type, months, top_sources


# --- The page ------------------------------------------------------------------------------

_CSS = """
body{font-family:"DejaVu Sans",Helvetica,Arial,sans-serif;margin:24px auto;max-width:980px;
color:#222;background:#fff}
h1{font-size:24px;margin-bottom:4px}h3{font-size:15px;margin-top:20px}
h2{font-size:18px;margin-top:32px;border-bottom:1px solid
#ddd;padding-bottom:4px}.meta{color:#666;font-size:13px}
.cards{display:flex;gap:16px;margin:16px 0}.card{border:1px solid #ddd;border-radius:6px;
padding:10px 16px;min-width:160px}.card .big{font-size:22px;font-weight:bold}
table{border-collapse:collapse;font-size:13px;margin:8px 0}th,td{padding:4px 10px;
border-bottom:1px solid #eee;text-align:left}td.num,th.num{text-align:right;
font-variant-numeric:tabular-nums}.chart text{font-size:12px;fill:#333}.chart .tick{
font-size:11px;fill:#555}.up{color:#b03a2e}.down{color:#1e8449}code{font-size:12px}
.why{color:#b03a2e;font-size:12px;max-width:24em}
nav.years{margin:12px 0;font-size:14px;line-height:1.8}section.year{margin-top:8px}
summary{cursor:pointer;color:#1b6ca8;margin:4px 0}
"""


def _kg_cell(kg: float) -> str:
    return f'<td class="num" data-kg="{kg!r}">{tonnes(kg)}</td>'


def _month_section(f: dict[str, Any]) -> str:
    # Every month from the first with data to the last, those without data included.
    months = month_span(m for _, m, _ in f["months"])
    series: dict[str, dict[str, float]] = {}
    for t, m, kg in f["months"]:
        series.setdefault(t, {})[m] = kg
    return (
        "<h2>Emissions by activity type and month</h2><p class='meta'>Each month's results, "
        "by the date of their activity: the reporting years' figures are in their sections "
        "above.</p>" + stacked_month_chart("by-month", months, series)
    )


def _quality_section(f: dict[str, Any]) -> str:
    q = f["quality"]
    overall = q["overall"]
    levels = [*LEVELS, "errors"]
    bars = [
        Bar(
            LEVEL_LABELS[level],
            overall[level]["share_of_records"],
            percent(overall[level]["share_of_records"]) + " of records",
            "#7f8c8d" if level == "errors" else "#16a085",
        )
        for level in levels
    ]
    head = "".join(f"<th class='num'>{_e(LEVEL_LABELS[lv])}</th>" for lv in levels)
    rows = []
    for name, cov in [("all", overall), *sorted(q["by_activity_type"].items())]:
        cells = "".join(
            f'<td class="num" data-level="{lv}" data-value="{cov[lv]["share_of_records"]!r}">'
            f"{percent(cov[lv]['share_of_records'])}"
            + (
                f"<br><small>{percent(cov[lv]['share_of_kg'])} of kg</small>"
                if lv != "errors"
                else ""
            )
            + "</td>"
            for lv in levels
        )
        label = "All activity types" if name == "all" else TYPE_LABELS.get(name, name)
        rows.append(
            f'<tr data-row="quality" data-type="{_e(name)}"><td>{_e(label)}</td>'
            f"<td class='num'>{cov['records']:,}</td>{cells}</tr>"
        )
    return (
        "<h2>Data quality and coverage</h2>"
        "<p class='meta'>Share of records (results and errors) computed at each level; a result "
        "can be at several (e.g. a country fallback with a year mismatch). Below each share, "
        "the share of kg CO2e.</p>"
        + hbar_chart("quality", bars)
        + f"<table><tr><th>activity type</th><th class='num'>records</th>{head}</tr>"
        + "".join(rows)
        + "</table>"
    )


def _sources_section(f: dict[str, Any]) -> str:
    name = report_years.factor_name
    bars = [
        Bar(name(s, k, y), kg, f"{tonnes(kg)} t", TYPE_COLOURS.get(t, "#777"))
        for t, s, k, y, _, kg in f["top_sources"]
    ]
    rows = "".join(
        f'<tr data-row="source" data-set="{_e(s)}" data-key="{_e(k)}" data-factor-year="{y}">'
        f"<td>{_e(TYPE_LABELS.get(t, t))}</td><td>{_e(name(s, k, y))}</td><td><code>{_e(s)}"
        f"</code> <code>{_e(k)}</code></td><td class='num'>{n:,}</td>{_kg_cell(kg)}</tr>"
        for t, s, k, y, n, kg in f["top_sources"]
    )
    return (
        "<h2>Top sources</h2><p class='meta'>The ten factors behind the most emissions, over "
        "every year with results (not a figure of any one reporting year).</p>"
        + hbar_chart("top-sources", bars)
        + "<table><tr><th>activity type</th><th>factor</th><th>set and key</th>"
        "<th class='num'>results</th><th class='num'>t CO2e</th></tr>" + rows + "</table>"
    )


def _restatement_section(f: dict[str, Any]) -> str:
    chosen = f["restatement"]
    if chosen is None:
        return (
            "<h2>Restatement</h2><p class='meta' data-restatement='none'>No restatement has "
            "changed any result yet.</p>"
        )
    rid, finished, pins, changed, diff = chosen
    groups = diff.get("groups", [])
    bars: list[Bar] = []
    for g in groups:
        label = f"{TYPE_LABELS.get(g['activity_type'], g['activity_type'])}, " + scope_label(
            g["scope"], g["category"]
        )
        bars.append(Bar(label + " (old)", g["old_kg"], f"{tonnes(g['old_kg'])} t", "#95a5a6"))
        bars.append(Bar(label + " (new)", g["new_kg"], f"{tonnes(g['new_kg'])} t", "#8e44ad"))
    group_rows = "".join(
        f'<tr data-row="diff" data-type="{_e(g["activity_type"])}" data-scope="{g["scope"]}">'
        f"<td>{_e(TYPE_LABELS.get(g['activity_type'], g['activity_type']))}</td>"
        f"<td>{_e(scope_label(g['scope'], g['category']))}</td>"
        f"<td class='num'>{g['changed']:,}</td>{_kg_cell(g['old_kg'])}{_kg_cell(g['new_kg'])}"
        f"{_delta_cell(g['new_kg'] - g['old_kg'])}</tr>"
        for g in groups
    )
    largest = "".join(
        f'<tr data-row="largest"><td>{_e(TYPE_LABELS.get(c["activity_type"], c["activity_type"]))}'
        f"</td><td>{_e(c['activity_id'])}</td><td><code>{_e(c['old_factor'])}</code></td>"
        f"<td><code>{_e(c['new_factor'])}</code></td>{_kg_cell(c['old_kg'])}"
        f"{_kg_cell(c['new_kg'])}{_delta_cell(c['new_kg'] - c['old_kg'])}</tr>"
        for c in diff.get("largest", [])
    )
    pinned = _pins(pins)
    return (
        f"<h2>Restatement</h2><p class='meta' data-restatement='{_e(rid)}'>Restatement "
        f"<code>{_e(rid)}</code> ({_e(pinned)}), finished {_e(_when(finished))}: "
        f"{changed:,} results changed; the superseded results are kept in "
        f"<code>{tables.HISTORY_TABLE}</code>.</p>"
        + hbar_chart("restatement", bars)
        + "<table><tr><th>activity type</th><th>scope</th><th class='num'>changed</th>"
        "<th class='num'>old t CO2e</th><th class='num'>new t CO2e</th><th class='num'>change"
        "</th></tr>" + group_rows + "</table><h3>Largest changes</h3>"
        "<table><tr><th>activity type</th><th>activity</th><th>old factor</th><th>new factor"
        "</th><th class='num'>old t</th><th class='num'>new t</th><th class='num'>change</th>"
        "</tr>" + largest + "</table>"
    )


def _delta_cell(delta: float) -> str:
    css = "up" if delta > 0 else "down" if delta < 0 else ""
    sign = "+" if delta > 0 else ""
    return f'<td class="num {css}" data-kg="{delta!r}">{sign}{tonnes(delta)}</td>'


def _when(value: Any) -> str:
    if isinstance(value, datetime.datetime):
        return value.astimezone(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return "—" if value is None else str(value)


def _count(value: Any) -> str:
    """A count as shown: thousands separated, or a dash when the run did not record it."""
    return "—" if value is None else f"{value:,}"


def _raw(value: Any) -> str:
    return "" if value is None else _e(value)


def _count_cell(counts: str, value: Any) -> str:
    """A cell of a count, named by what it counts (``data-count``), its value exact."""
    return f'<td class="num" data-count="{counts}" data-value="{_raw(value)}">{_count(value)}</td>'


def _editions_part(f: dict[str, Any]) -> str:
    rows = (
        "".join(
            f'<tr data-row="edition" data-set="{_e(s)}" data-edition="{_e(e)}" data-value="{n}">'
            f"<td><code>{_e(s)}</code></td><td>{_e(e)}</td><td class='num'>{n:,}</td></tr>"
            for s, e, n in f["editions"]
        )
        or "<tr data-row='edition-none'><td colspan='3'>No stored results.</td></tr>"
    )
    unused = "; ".join(
        f'<span data-row="edition-unused" data-set="{_e(s)}" data-edition="{_e(e)}">'
        f"<code>{_e(s)}</code> {_e(e)}</span>"
        for s, e in f["editions_unused"]
    )
    return (
        "<h3>Factor editions used by the stored results</h3><p class='meta'>The editions of "
        "the factor rows (emission factor, exchange rate, CPI deflator) that the results "
        "stored now were computed with, and how many results use each. A result keeps its "
        "rows until a run or a restatement replaces it.</p><table data-table='editions'><tr>"
        "<th>factor set</th><th>edition</th><th class='num'>stored results using it</th></tr>"
        + rows
        + "</table>"
        + (f"<p class='meta'>Loaded, but used by no stored result: {unused}.</p>" if unused else "")
    )


def _runs_part(f: dict[str, Any]) -> str:
    runs = (
        "".join(
            f"<tr data-run='{_e(r[0])}' data-new='{_raw(r[7])}' data-changed='{_raw(r[8])}' "
            f"data-retired='{_raw(r[9])}'><td><code>{_e(r[0])}</code></td>"
            + _status_cell(r[0], r[1], r[10])
            + f"<td>{_e(r[2] or '')}</td><td>{_e(_when(r[3]))}</td>"
            + _count_cell("written", r[4])
            + _count_cell("new", r[7])
            + _count_cell("changed", r[8])
            + _count_cell("retired", r[9])
            + _count_cell("errors", r[5])
            + (
                '<td class="num" data-count="tonnes_written">—</td>'
                if r[6] is None
                else f'<td class="num" data-count="tonnes_written" data-value="{r[6]!r}">'
                f"{tonnes(1000.0 * r[6])}</td>"
            )
            + "</tr>"
            for r in f["runs"]
        )
        or "<tr data-row='run-none'><td colspan='10'>No calculation run yet.</td></tr>"
    )
    restated = (
        "".join(
            f"<tr data-row='restatement' data-id='{_e(r[0])}'><td><code>{_e(r[0])}</code></td>"
            f"<td>{_e(r[1])}</td><td>{_e(_pins(r[2]))}</td><td>{_e(_when(r[3]))}</td>"
            + _count_cell("examined", r[4])
            + _count_cell("restated", r[5])
            + _count_cell("refused", r[6])
            + (
                '<td class="num">—</td>' * 3
                if r[7] is None or r[8] is None
                else _kg_cell(r[7]) + _kg_cell(r[8]) + _delta_cell(r[8] - r[7])
            )
            + "</tr>"
            for r in f["restatements"]
        )
        or "<tr data-row='restatement-none'><td colspan='10'>No restatement yet.</td></tr>"
    )
    return (
        "<h3>Recent calculation runs</h3><table data-table='runs'><tr><th>run</th>"
        "<th>status</th><th>runner</th><th>finished</th><th class='num'>results written</th>"
        "<th class='num'>for new activities</th><th class='num'>for changed activities</th>"
        "<th class='num'>retired with deleted activities</th><th class='num'>errors</th>"
        "<th class='num'>t CO2e written by this run</th></tr>"
        + runs
        + "</table><p class='meta'>Results written: the results the run stored, for "
        "activities computed for the first time (new) and for corrected activities (their "
        "new results replaced the old, which moved to history). Retired: results of deleted "
        "activities, moved to history. Errors: activities the run refused, as dead letters. "
        "t CO2e written: the total of the results the run wrote, as it wrote them; a later "
        "restatement may have changed them since. A dash: not recorded (the run did not "
        "finish). A run that did not succeed says why under its status.</p>"
        "<h3>Recent restatements</h3><table data-table='restatements'><tr>"
        "<th rowspan='2'>restatement</th><th rowspan='2'>status</th><th rowspan='2'>pins</th>"
        "<th rowspan='2'>finished</th>"
        "<th rowspan='2' class='num'>results examined</th>"
        "<th rowspan='2' class='num'>results restated</th><th rowspan='2' class='num'>refused"
        "</th><th colspan='3' class='num'>t CO2e of the results it restated</th></tr><tr>"
        "<th class='num'>before</th><th class='num'>after</th>"
        "<th class='num'>change from the restatement</th></tr>"
        + restated
        + "</table><p class='meta'>A restatement recomputes stored results on the factor "
        "editions chosen; its tonnes are those of the results it changed, before and after, "
        "not of the inventory.</p>"
    )


#: The outcomes of a run whose record says why it did not succeed.
_UNSUCCESSFUL = ("failed", "abandoned", "cancelled")


def _status_cell(run_id: Any, status: Any, message: Any) -> str:
    """A run's outcome, with its one-line reason when it did not succeed."""
    why = (
        f"<div class='why' data-message='{_e(run_id)}'>{_e(message)}</div>"
        if status in _UNSUCCESSFUL and message
        else ""
    )
    return f"<td data-status='{_e(status)}'>{_e(status)}{why}</td>"


def _pins(pins: Any) -> str:
    return ", ".join(f"{k} = {v}" for k, v in sorted((pins or {}).items())) or "newest editions"


def _audit_section(f: dict[str, Any]) -> str:
    return (
        "<h2>Audit trail</h2><p class='meta'>Every result stores its factor row, its "
        "intermediate values and the run that produced it, and a fingerprint of its input row, "
        "factor rows and code version (<code>python -m audit.verify</code> replays them). "
        f"Code version now: <code data-code-version>{_e(f['code_version'])}</code>.</p>"
        + _editions_part(f)
        + _runs_part(f)
    )


def render(f: dict[str, Any], database: str, now: datetime.datetime | None = None) -> str:
    """The report page for the figures ``f``."""
    when = (now or datetime.datetime.now(datetime.timezone.utc)).strftime("%Y-%m-%d %H:%M UTC")
    # One headline per reporting year, never one summed across years.
    newest_first = list(reversed(f["years"]))
    years = report_years.selector(f["years"]) + "".join(
        report_years.year_section(y, newest=i == 0) for i, y in enumerate(newest_first)
    )
    body = "".join(
        [
            _month_section(f),
            _quality_section(f),
            _sources_section(f),
            _restatement_section(f),
            _audit_section(f),
        ]
    )
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        "<title>Emissions report</title>"
        f"<style>{_CSS}</style></head><body><h1>Emissions report</h1>"
        f"<p class='meta' data-database>Generated {_e(when)} from {_e(database)}. Tonnes of "
        "CO2e over 100 years, each factor set on the GWP set its source states (below); "
        "Scope 2 two ways: location-based, at the average emission rate of the grids where "
        "the electricity was used, and market-based, at the rates of the certificates, "
        "contracts and supplier tariffs the company bought, with the residual mix for the rest "
        "(where no run has allocated them, market-based is not computed).</p>"
        + report_years.verify_part(f["verify"])
        + years
        + report_years.base_year_part(f.get("base_years", []))
        + "<h2>GWP sets</h2><p class='meta'>The global warming potentials behind the results, "
        "per factor set and edition, as the methodology records them (docs/methodology.md "
        "§5.4).</p>" + report_years.gwp_part(f["gwp"]) + body + "</body></html>\n"
    )


def write_report(
    engine: sa.Engine,
    out: Path,
    database: str,
    restatement_id: str | None = None,
    schema: str = tables.DEFAULT_SCHEMA,
    sources: Sources | None = None,
    year_start: str = "01-01",
    verify_sample: int = 0,
    threshold: float = 0.05,
) -> Path:
    """Write the report for the database behind ``engine`` to ``out`` (``database``: how the
    page names it, ``report_years.database_label``)."""
    page = render(
        figures(engine, restatement_id, schema, sources, year_start, verify_sample, threshold),
        database,
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(page, encoding="utf-8")
    return out


def build_parser() -> argparse.ArgumentParser:
    """The command's options."""
    parser = cli.parser("audit.report", __doc__)
    cli.add_database_option(parser)
    parser.add_argument("--out", default="report.html", help="where to write the page")
    parser.add_argument(
        "--restatement", default=None, help="the restatement to show (default: the latest)"
    )
    parser.add_argument(
        "--year-start",
        "--year_start",
        dest="year_start",
        default="01-01",
        help="first day (MM-DD) of each reporting year: 01-01 for calendar years",
    )
    parser.add_argument(
        "--verify-sample",
        "--verify_sample",
        dest="verify_sample",
        type=int,
        default=200,
        help="results per activity type that audit.verify recomputes for the report (0: none)",
    )
    cli.add_threshold_option(parser, "a recorded base year's total")
    cli.add_log_level_option(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    cli.setup_logging(args.log_level)
    cli.checked_threshold(parser, args.threshold)

    def report(target: cli.Target) -> int:
        out = write_report(
            target.engine,
            Path(args.out),
            report_years.database_label(target.url),
            args.restatement,
            target.schema,
            cli.checked_sources(target),
            args.year_start,
            args.verify_sample,
            args.threshold,
        )
        cli.print_json({"database": connections.redact_url(target.url), "report": str(out)})
        return cli.OK

    return cli.run(args, "report", report, pool_size=1, max_overflow=0)


if __name__ == "__main__":
    sys.exit(main())
