"""The report's reporting years and statements of fact: one section per reporting year with that
year's headline (never a total summed across years) and a selector to reach it; the GWP set of
each factor set as the methodology records it; readable factor names; the database named by
host and database only; and whether ``audit.verify`` reproduces a sample of the figures."""

from __future__ import annotations

import datetime
from typing import Any

import sqlalchemy as sa

from audit import inventory
from audit.charts import TYPE_LABELS, Bar, _e, hbar_chart, percent, scope_label, tonnes
from audit.inventory import database_label as database_label
from pipeline.store import tables
from pipeline.store.sources import Sources

#: How a factor row's ``gwp_set`` reads in the report (docs/methodology.md §5.4).
GWP_LABELS = {
    "AR5-100": "IPCC AR5, 100-year (CH4 28, N2O 265)",
    "GWP100 (AR not stated)": "100-year; IPCC report not stated by the source",
}
#: Editions whose source states no GWP set, which the methodology assumes (§3.7).
GWP_ASSUMED = {"2025 flat file": "assumed AR5: the 2025 DESNZ export states no GWP set"}
_CLASSES = {
    "first": "first class",
    "business": "business class",
    "premium_economy": "premium economy class",
    "economy": "economy class",
    "average": "average passenger",
}


def factor_name(factor_set: str, key: str, year: int | None) -> str:
    """A factor row as a person names it: "DESNZ 2024, long-haul, first class, with radiative
    forcing" for ``desnz_air`` ``long-haul|first|rf`` of 2024."""
    if factor_set == "desnz_air":
        parts = key.split("|")
        if len(parts) == 3:
            haul, cabin, rf = parts
            forcing = "with radiative forcing" if rf == "rf" else "without radiative forcing"
            return f"DESNZ {year}, {haul}, {_CLASSES.get(cabin, cabin)}, {forcing}"
    names = {
        "egrid_subregion": f"eGRID {year}, subregion {key}",
        "egrid_us": f"eGRID {year}, US average",
        "desnz_uk_electricity": f"DESNZ {year}, UK grid electricity",
        "desnz_uk_td": f"DESNZ {year}, UK transmission and distribution losses",
        "country_grid": f"Ember {year}, grid average of {key}",
        "epa_sef": f"EPA Supply Chain factors, NAICS {key} (2022 USD)",
    }
    return names.get(factor_set, f"{factor_set} {key} {year}")


def gwp_sets(engine: sa.Engine, schema: str) -> list[tuple[str, str, str, int]]:
    """Per factor set and edition behind the stored results: its GWP set as recorded, and
    how many results use it."""
    with engine.connect() as conn:
        found = conn.execute(
            sa.text(
                "SELECT f.factor_set, f.edition, coalesce(f.gwp_set, ''), sum(r.n) FROM "
                "(SELECT factor_id, count(*) n FROM "
                f"{tables.qualified_text(tables.RESULTS_TABLE, schema)} GROUP BY 1) r "
                f"JOIN {tables.qualified_text(tables.FACTORS_TABLE, schema)} f "
                "ON f.id = r.factor_id GROUP BY 1, 2, 3 ORDER BY 1, 2, 3"
            )
        ).all()
    return [(s, e, g, int(n)) for s, e, g, n in found]


def gwp_label(gwp_set: str, edition: str) -> str:
    label = GWP_LABELS.get(gwp_set, gwp_set or "not stated")
    return f"{label} ({GWP_ASSUMED[edition]})" if edition in GWP_ASSUMED else label


def years(
    engine: sa.Engine, schema: str, sources: Sources, year_start: str = "01-01"
) -> list[dict[str, Any]]:
    """The inventory of every reporting year with results or dead letters, oldest first."""
    return inventory.inventories(engine, year_start, schema, sources)


def verify_sample(
    engine: sa.Engine, schema: str, sources: Sources, sample: int
) -> dict[str, Any] | None:
    """``audit.verify`` on ``sample`` results per type, now (None: not asked for)."""
    if sample <= 0:
        return None
    from audit import verify

    found = verify.verify(engine, sample=sample, schema=schema, sources=sources)
    return {
        "when": datetime.datetime.now(datetime.timezone.utc),
        "examined": found.examined,
        "reproduced": found.reproduced,
        "by_status": dict(found.by_status),
        "sample": sample,
    }


# --- HTML ----------------------------------------------------------------------------------


def _kg(kg: float) -> str:
    return f'<td class="num" data-kg="{kg!r}">{tonnes(kg)}</td>'


def _year_id(year: dict[str, Any]) -> str:
    return f"year-{year['period']['year']}"


def selector(found: list[dict[str, Any]]) -> str:
    """Links to each year's section, newest first."""
    links = " · ".join(
        f'<a href="#{_year_id(y)}" data-year-link="{y["period"]["year"]}">'
        f"{_e(y['period']['label'])}</a>"
        for y in reversed(found)
    )
    return (
        "<nav class='years' data-selector='years'><strong>Reporting year:</strong> "
        + (links or "no results yet")
        + "</nav>"
    )


def _year_cards(year: dict[str, Any]) -> str:
    """A year's headline cards: its total, its results and its activities in error."""
    p, t = year["period"], year["total"]
    y = p["year"]
    return (
        f'<div class="cards"><div class="card"><div>Emissions {_e(p["label"])}</div>'
        f'<div class="big" data-figure="year-total" data-year="{y}" data-kg="{t["kg_co2e"]!r}">'
        f"{tonnes(t['kg_co2e'])} t CO2e</div></div><div class='card'><div>Results</div>"
        f'<div class="big" data-figure="year-results" data-year="{y}" '
        f'data-value="{t["results"]}">{t["results"]:,}</div></div><div class="card"><div>'
        f'Activities in error</div><div class="big" data-figure="year-errors" data-year="{y}" '
        f'data-value="{t["dead_letters"]}">{t["dead_letters"]:,}</div></div></div>'
    )


def _scope_2_part(year: dict[str, Any]) -> str:
    """Scope 2 both ways, when the year's market-based figure is computed."""
    s2, y = year.get("scope_2", {}), year["period"]["year"]
    if s2.get("market_based_status") == "behind":
        return (
            f'<p class="meta" data-figure="scope2-behind" data-year="{y}">Scope 2 market-based: '
            f"not given, {_e(s2['market_based_note'])}.</p>"
        )
    if s2.get("market_based_status") != "computed":
        return ""
    loc, mkt = s2["location_based_kg"], s2["market_based_kg"]
    fallback = s2["market_based"]["grid_fallback_kwh"]
    flagged = (
        f" ({fallback:,.0f} kWh at the grid average, no residual mix loaded)" if fallback else ""
    )
    return (
        f'<p class="meta" data-figure="scope2-both" data-year="{y}" data-location-kg="{loc!r}" '
        f'data-market-kg="{mkt!r}">Scope 2: {tonnes(loc)} t CO2e location-based, '
        f"{tonnes(mkt)} t market-based{_e(flagged)}.</p>"
    )


def year_section(year: dict[str, Any], newest: bool = False) -> str:
    """One reporting year: its headline, and (folded but for the newest year) by scope and
    category, by activity type and by gas."""
    p = year["period"]
    y = p["year"]
    cards = _year_cards(year) + _scope_2_part(year)
    scopes = [c for c in year["by_category"] if c["results"]]
    bars = [
        Bar(scope_label(c["scope"], c["category"]), c["kg_co2e"], f"{tonnes(c['kg_co2e'])} t")
        for c in scopes
    ]
    scope_rows = "".join(
        f'<tr data-row="scope" data-year="{y}" data-scope="{c["scope"]}" '
        f'data-category="{"" if c["category"] is None else c["category"]}">'
        f"<td>{_e(scope_label(c['scope'], c['category']))}</td>"
        f"<td class='num'>{c['results']:,}</td><td class='num'>{c['dead_letters']:,}</td>"
        f"{_kg(c['kg_co2e'])}<td class='num'>{percent(c['quality']['exact']['share_of_kg'])}"
        "</td></tr>"
        for c in scopes
    )
    type_rows = "".join(
        f'<tr data-row="type" data-year="{y}" data-type="{_e(c["activity_type"])}">'
        f"<td>{_e(TYPE_LABELS.get(c['activity_type'], c['activity_type']))}</td>"
        f"<td class='num'>{c['results']:,}</td><td class='num'>{c['dead_letters']:,}</td>"
        f"{_kg(c['kg_co2e'])}</tr>"
        for c in year["by_activity_type"]
    )
    gases = "".join(
        f'<tr data-row="gas" data-year="{y}" data-gas="{g}"><td>{_e(name)}</td>{_kg(kg)}</tr>'
        for g, name, kg in (
            ("co2", "CO2", year["by_gas"]["co2"]),
            ("ch4", "CH4 (as CO2e)", year["by_gas"]["ch4"]),
            ("n2o", "N2O (as CO2e)", year["by_gas"]["n2o"]),
            ("not_split", "Not split by gas", year["by_gas"]["not_split"]),
        )
    )
    return (
        f'<section class="year" id="{_year_id(year)}" data-year="{y}">'
        f"<h2>{_e(p['label'])}</h2><p class='meta'>Activities dated {_e(p['start'])} to "
        f"{_e(p['end_exclusive'])} (excluded). <code>python -m audit.inventory --year {y}"
        "</code> gives every figure and the exports.</p>"
        + cards
        + f"<details data-year-details='{y}'{' open' if newest else ''}><summary>By scope and "
        f"category, activity type and gas, {_e(p['label'])}</summary>"
        + hbar_chart(f"by-scope-{y}", bars)
        + "<table><tr><th>scope</th><th class='num'>results</th><th class='num'>in error</th>"
        "<th class='num'>t CO2e</th><th class='num'>exact factor (share of kg)</th></tr>"
        + scope_rows
        + "</table><table><tr><th>activity type</th><th class='num'>results</th>"
        "<th class='num'>in error</th><th class='num'>t CO2e</th></tr>"
        + type_rows
        + "</table><table><tr><th>gas</th><th class='num'>t CO2e</th></tr>"
        + gases
        + "</table></details></section>"
    )


def gwp_part(rows: list[tuple[str, str, str, int]]) -> str:
    body = "".join(
        f'<tr data-row="gwp" data-set="{_e(s)}" data-edition="{_e(e)}" data-gwp="{_e(g)}">'
        f"<td><code>{_e(s)}</code></td><td>{_e(e)}</td><td>{_e(gwp_label(g, e))}</td>"
        f"<td class='num'>{n:,}</td></tr>"
        for s, e, g, n in rows
    )
    return (
        "<table data-table='gwp'><tr><th>factor set</th><th>edition</th><th>GWP set</th>"
        "<th class='num'>results</th></tr>" + body + "</table>"
    )


def verify_part(found: dict[str, Any] | None) -> str:
    if found is None:
        return (
            "<p class='meta' data-verify='not-run'>Not verified while making this report "
            "(<code>--verify-sample 0</code>); run <code>python -m audit.verify</code>.</p>"
        )
    ok = found["examined"] == found["reproduced"]
    when = found["when"].strftime("%Y-%m-%d %H:%M UTC")
    outcome = (
        "every one reproduced exactly"
        if ok
        else f"{found['examined'] - found['reproduced']:,} did not reproduce "
        f"({', '.join(f'{k}: {v:,}' for k, v in sorted(found['by_status'].items()))})"
    )
    return (
        f"<p class='meta' data-verify='{'reproduced' if ok else 'not-reproduced'}' "
        f"data-examined='{found['examined']}' data-reproduced='{found['reproduced']}'>"
        f"<code>audit.verify</code> on a sample of up to {found['sample']:,} results per "
        f"activity type, {_e(when)}: {found['examined']:,} recomputed, {_e(outcome)}.</p>"
    )


def base_years(
    engine: sa.Engine, schema: str, sources: Sources, year_start: str, threshold: float
) -> list[dict[str, Any]]:
    """Every recorded base year, as first reported and as recalculated (none is recorded
    here: ``audit.inventory --base-year`` records one)."""
    from audit import base_year

    return [
        base_year.compare(engine, inventory.period(y, year_start), threshold, schema, sources)
        for y in base_year.recorded(engine, year_start, schema)
    ]


def base_year_part(found: list[dict[str, Any]]) -> str:
    if not found:
        return (
            "<h2>Base year</h2><p class='meta' data-base-year='none'>No base year recorded: "
            "<code>python -m audit.inventory --year Y --base-year B</code> records B as first "
            "reported.</p>"
        )
    parts = ["<h2>Base year</h2>"]
    for b in found:
        y = b["period"]["year"]
        causes = "".join(
            f'<tr data-row="base-cause" data-year="{y}" data-reason="{_e(c["reason"])}">'
            f"<td>of which {_e(c['reason'].replace('_', ' '))}</td>"
            f"<td class='num'>{c['results']:,}</td>"
            f"{_kg(c['change_kg'])}</tr>"
            for c in b["causes"]
        )
        flag = "significant" if b["significant"] else "within"
        parts.append(
            f'<p class="meta {"up" if b["significant"] else ""}" data-base-year="{y}" '
            f'data-significant="{str(b["significant"]).lower()}">{_e(b["message"])}</p>'
            f"<table data-table='base-year' data-year='{y}'><tr><th></th>"
            "<th class='num'>results</th><th class='num'>t CO2e</th></tr>"
            f"<tr data-row='first-reported'><td>as first reported, "
            f"{_e(b.get('recorded_at', '')[:10])}</td>"
            f"<td class='num'>{b['results_first_reported']:,}</td>"
            f"{_kg(b['first_reported_kg'])}</tr><tr data-row='recalculated'><td>as recalculated"
            f" now</td><td class='num'>{b['results_recalculated']:,}</td>"
            f"{_kg(b['recalculated_kg'])}</tr><tr data-row='change' "
            f"data-flag='{flag}'><td>change ({100.0 * b['change_share']:+.1f}%, threshold "
            f"{100.0 * b['threshold']:g}%)</td><td></td>{_kg(b['change_kg'])}</tr>"
            + causes
            + "</table>"
        )
    return "".join(parts)
