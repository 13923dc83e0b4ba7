"""The exports of one reporting year, as CSV and JSON, with stable column names
(docs/inventory.md): an ESRS E1-6 shaped table, a CDP shaped table, and the rows behind every
figure, so that an auditor can trace each down to its results.

Figures the pipeline does not compute are present and empty, with a ``status`` and a ``note``
that say so: gross Scope 1 (no Scope 1 activity type yet), Scope 2 market-based when no run
has allocated the team's contractual instruments (docs/scope2.md; filled from the stored
market-based lines once one has) and the Scope 3 categories without an activity type. An
empty cell is never a zero.
"""

from __future__ import annotations

import csv
import datetime
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from psycopg2 import sql

from audit.inventory import _REGION, Period
from pipeline.store import connections, tables
from pipeline.store.sources import Sources, read_only, relation

ESRS_COLUMNS = (
    "reporting_year",
    "period_start",
    "period_end",
    "line",
    "scope",
    "scope3_category",
    "scope2_method",
    "kg_co2e",
    "t_co2e",
    "results",
    "dead_letters",
    "status",
    "note",
)
CDP_COLUMNS = (
    "reporting_year",
    "period_start",
    "period_end",
    "scope",
    "scope2_method",
    "scope3_category",
    "calculation_method",
    "kg_co2e",
    "t_co2e",
    "results",
    "share_supplier_specific",
    "share_average_data",
    "status",
    "note",
)
ROW_COLUMNS = (
    "activity_type",
    "activity_id",
    "activity_date",
    "scope",
    "scope3_category",
    "region",
    "kg_co2e",
    "kg_co2",
    "kg_ch4_co2e",
    "kg_n2o_co2e",
    "method",
    "activity_amount",
    "activity_unit",
    "factor_set",
    "factor_key",
    "factor_year",
    "factor_edition",
    "gwp_set",
    "fallback",
    "year_mismatch",
    "class_substituted",
    "basis",
    "run_id",
)

#: The names of the Scope 3 categories (GHG Protocol Scope 3 Standard).
SCOPE3_CATEGORIES = {
    1: "Purchased goods and services",
    2: "Capital goods",
    3: "Fuel- and energy-related activities",
    4: "Upstream transportation and distribution",
    5: "Waste generated in operations",
    6: "Business travel",
    7: "Employee commuting",
    8: "Upstream leased assets",
    9: "Downstream transportation and distribution",
    10: "Processing of sold products",
    11: "Use of sold products",
    12: "End-of-life treatment of sold products",
    13: "Downstream leased assets",
    14: "Franchises",
    15: "Investments",
}
#: CDP's calculation method of each Scope 3 category the pipeline computes.
CDP_METHODS = {1: "spend-based", 6: "distance-based"}
NOT_SCOPE1 = "The pipeline does not compute Scope 1 (direct emissions): not reported here."
NOT_MARKET = (
    "Market-based Scope 2 needs the team's contractual instruments (certificates, contracts, "
    "supplier rates, residual mix): not computed yet, left empty."
)
MARKET_NOTE = (
    "Market-based: certificates and contracts meeting the Scope 2 Quality Criteria, then "
    "supplier rates, then the residual mix, then the grid average where no residual mix is "
    "loaded (flagged: {fallback:,.0f} kWh); {specific:.1%} of kWh instrument- or "
    "supplier-specific (docs/scope2.md)."
)
OTHER_YEARS = "Market-based Scope 2 is allocated for other reporting years: {}."
BEHIND = "Market-based Scope 2 is behind the location-based results: {}; left empty."
NOT_CATEGORY = "No activity type of the pipeline falls in this category: not computed."
#: Every factor the pipeline has is an average (grid, sector, route class): none is
#: supplier-specific, so each computed figure is 100% average data.
AVERAGE_NOTE = (
    "Average data: grid averages, EEIO sector averages and DESNZ route averages; no "
    "supplier-specific factor."
)


def _line(chosen: Period, **values: Any) -> dict[str, Any]:
    base = {
        "reporting_year": chosen.label,
        "period_start": chosen.start.isoformat(),
        "period_end": (chosen.end - datetime.timedelta(days=1)).isoformat(),
    }
    return {**base, **values}


def _figure(cell: dict[str, Any] | None) -> dict[str, Any]:
    if cell is None or not (cell["results"] or cell["dead_letters"]):
        return {"kg_co2e": 0.0, "t_co2e": 0.0, "results": 0, "dead_letters": 0}
    return {k: cell[k] for k in ("kg_co2e", "t_co2e", "results", "dead_letters")}


def _empty(status: str, note: str) -> dict[str, Any]:
    return {
        "kg_co2e": None,
        "t_co2e": None,
        "results": None,
        "dead_letters": None,
        "status": status,
        "note": note,
    }


def _market_figure(figures: dict[str, Any], kg: float | None) -> dict[str, Any]:
    """A market-based figure (``kg``: its kg CO2e), or empty saying why."""
    scope_2 = figures["scope_2"]
    if scope_2["market_based_status"] == "other_year_start":
        return _empty("not_computed", OTHER_YEARS.format(scope_2["market_based_note"]))
    if scope_2["market_based_status"] == "behind":
        return _empty("behind", BEHIND.format(scope_2["market_based_note"]))
    if scope_2["market_based_status"] != "computed" or kg is None:
        return _empty("not_computed", NOT_MARKET)
    detail = scope_2["market_based"]
    scopes = {f["scope"]: f for f in figures["by_scope"]}
    return {
        "kg_co2e": kg,
        "t_co2e": kg / 1000.0,
        "results": detail["activities"],
        "dead_letters": _figure(scopes.get(2))["dead_letters"],
        "status": "computed",
        "note": MARKET_NOTE.format(
            fallback=detail["grid_fallback_kwh"], specific=detail["share_specific_kwh"]
        ),
    }


def market_total(figures: dict[str, Any]) -> float | None:
    """Total GHG with Scope 2 market-based: the total less Scope 2 location-based, plus it."""
    scope_2 = figures["scope_2"]
    if scope_2["market_based_kg"] is None:
        return None
    kg: float = figures["total"]["kg_co2e"] - scope_2["location_based_kg"]
    return kg + scope_2["market_based_kg"]


def esrs_table(figures: dict[str, Any], chosen: Period) -> list[dict[str, Any]]:
    """ESRS E1-6 (gross Scopes 1, 2 and 3 and total GHG emissions), one line per figure."""
    return [
        *_esrs_scope_lines(figures, chosen),
        *_esrs_category_lines(figures, chosen),
        *_esrs_total_lines(figures, chosen),
    ]


def _esrs_scope_lines(figures: dict[str, Any], chosen: Period) -> list[dict[str, Any]]:
    """Gross Scope 1, Scope 2 (location- and market-based) and Scope 3."""
    scopes = {f["scope"]: f for f in figures["by_scope"]}
    return [
        _line(
            chosen,
            line="gross_scope_1",
            scope=1,
            scope3_category=None,
            scope2_method=None,
            **_empty("not_computed", NOT_SCOPE1),
        ),
        _line(
            chosen,
            line="gross_scope_2_location_based",
            scope=2,
            scope3_category=None,
            scope2_method="location-based",
            **_figure(scopes.get(2)),
            status="computed",
            note="",
        ),
        _line(
            chosen,
            line="gross_scope_2_market_based",
            scope=2,
            scope3_category=None,
            scope2_method="market-based",
            **_market_figure(figures, figures["scope_2"]["market_based_kg"]),
        ),
        _line(
            chosen,
            line="gross_scope_3",
            scope=3,
            scope3_category=None,
            scope2_method=None,
            **_figure(scopes.get(3)),
            status="computed",
            note="The sum of the categories computed below.",
        ),
    ]


def _esrs_category_lines(figures: dict[str, Any], chosen: Period) -> list[dict[str, Any]]:
    """Each Scope 3 category: computed, or said not to be."""
    categories = {f["category"]: f for f in figures["by_category"] if f["scope"] == 3}
    out = []
    for number, name in SCOPE3_CATEGORIES.items():
        computed = number in CDP_METHODS
        out.append(
            _line(
                chosen,
                line=f"scope_3_category_{number}",
                scope=3,
                scope3_category=number,
                scope2_method=None,
                **(
                    {**_figure(categories.get(number)), "status": "computed", "note": name}
                    if computed
                    else _empty("not_computed", f"{name}. {NOT_CATEGORY}")
                ),
            )
        )
    return out


def _esrs_total_lines(figures: dict[str, Any], chosen: Period) -> list[dict[str, Any]]:
    """The total GHG emissions, location- and market-based."""
    return [
        _line(
            chosen,
            line="total_ghg_location_based",
            scope=None,
            scope3_category=None,
            scope2_method="location-based",
            **_figure(figures["total"]),
            status="computed",
            note="Scope 2 location-based + Scope 3; Scope 1 not included (not computed).",
        ),
        _line(
            chosen,
            line="total_ghg_market_based",
            scope=None,
            scope3_category=None,
            scope2_method="market-based",
            **_market_total(figures),
        ),
    ]


def _market_total(figures: dict[str, Any]) -> dict[str, Any]:
    found = _market_figure(figures, market_total(figures))
    if found["status"] == "computed":
        total = _figure(figures["total"])
        found.update(results=total["results"], dead_letters=total["dead_letters"])
        found["note"] = "Scope 2 market-based + Scope 3; Scope 1 not included (not computed)."
    return found


def _cdp_market(figures: dict[str, Any]) -> dict[str, Any]:
    found = _market_figure(figures, figures["scope_2"]["market_based_kg"])
    found.pop("dead_letters")
    specific = None
    if found["status"] == "computed":
        specific = figures["scope_2"]["market_based"]["share_specific_kwh"]
    return {
        **found,
        "share_supplier_specific": specific,
        "share_average_data": None if specific is None else 1.0 - specific,
    }


def cdp_table(figures: dict[str, Any], chosen: Period) -> list[dict[str, Any]]:
    """CDP's Scope 2 by method and Scope 3 by category with its method and data shares."""
    scopes = {f["scope"]: f for f in figures["by_scope"]}
    categories = {f["category"]: f for f in figures["by_category"] if f["scope"] == 3}

    def computed(cell: dict[str, Any] | None) -> dict[str, Any]:
        found = _figure(cell)
        found.pop("dead_letters")
        shares = (0.0, 1.0) if found["results"] else (None, None)
        return {
            **found,
            "share_supplier_specific": shares[0],
            "share_average_data": shares[1],
            "status": "computed",
            "note": AVERAGE_NOTE,
        }

    out = [
        _line(
            chosen,
            scope=2,
            scope2_method="location-based",
            scope3_category=None,
            calculation_method="location-based",
            **computed(scopes.get(2)),
        ),
        _line(
            chosen,
            scope=2,
            scope2_method="market-based",
            scope3_category=None,
            calculation_method="market-based",
            **_cdp_market(figures),
        ),
    ]
    for number, method in CDP_METHODS.items():
        out.append(
            _line(
                chosen,
                scope=3,
                scope2_method=None,
                scope3_category=number,
                calculation_method=method,
                **computed(categories.get(number)),
            )
        )
    return out


def _rows_query(activity_type: str, source: Any, schema: str) -> sql.Composed:
    return sql.SQL(
        "SELECT r.activity_type, r.activity_id::text, a.activity_date, r.scope, r.category, "
        "{region}, r.kg_co2e, r.kg_co2, r.kg_ch4_co2e, r.kg_n2o_co2e, r.method, "
        "r.activity_amount, r.activity_unit, f.factor_set, f.key, f.year, f.edition, "
        "f.gwp_set, r.fallback, r.year_mismatch, r.class_substituted, r.basis, r.run_id "
        "FROM {results} r JOIN ({activities}) a ON a.id = r.activity_id "
        "JOIN {factors} f ON f.id = r.factor_id WHERE r.activity_type = %(type)s "
        "AND a.activity_date >= %(start)s AND a.activity_date < %(end)s "
        "ORDER BY a.activity_date, r.activity_id"
    ).format(
        region=sql.SQL(_REGION.get(activity_type, "NULL::text")),
        results=tables.qualified(tables.RESULTS_TABLE, schema),
        factors=tables.qualified(tables.FACTORS_TABLE, schema),
        activities=relation(source),
    )


def result_rows(
    engine: Any, chosen: Period, schema: str, sources: Sources
) -> Iterator[dict[str, Any]]:
    """Every result of the year, with its activity's date and region and its factor row."""
    with connections.raw_connection(engine) as conn:
        read_only(conn)  # the sources' SQL never runs where it could write
        for activity_type, source in sources.items():
            # A server-side cursor: the rows of a large year never sit in memory twice.
            with conn.cursor(name=f"inventory_rows_{activity_type}") as cur:
                cur.itersize = 5000
                cur.execute(
                    _rows_query(activity_type, source, schema),
                    {"type": activity_type, "start": chosen.start, "end": chosen.end},
                )
                for row in cur:
                    found = dict(zip(ROW_COLUMNS, row, strict=True))
                    found["activity_date"] = found["activity_date"].isoformat()
                    found["run_id"] = str(found["run_id"])
                    yield found
        conn.commit()


def _write_csv(path: Path, columns: tuple[str, ...], rows: Any) -> None:
    with path.open("w", encoding="utf-8", newline="") as out:
        writer = csv.DictWriter(out, fieldnames=columns, lineterminator="\r\n")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: "" if row.get(k) is None else row[k] for k in columns})


def export(
    engine: Any,
    figures: dict[str, Any],
    chosen: Period,
    out: Path,
    schema: str,
    sources: Sources,
) -> list[Path]:
    """Write the year's tables into ``out``; the paths written."""
    out.mkdir(parents=True, exist_ok=True)
    tag = str(chosen.year) if chosen.year_start == "01-01" else f"fy{chosen.year}"
    esrs, cdp = esrs_table(figures, chosen), cdp_table(figures, chosen)
    rows = list(result_rows(engine, chosen, schema, sources))
    paths = [
        out / f"esrs_e1_6_{tag}.csv",
        out / f"cdp_{tag}.csv",
        out / f"rows_{tag}.csv",
        out / f"inventory_{tag}.json",
    ]
    _write_csv(paths[0], ESRS_COLUMNS, esrs)
    _write_csv(paths[1], CDP_COLUMNS, cdp)
    _write_csv(paths[2], ROW_COLUMNS, rows)
    document = {
        "period": chosen.as_dict(),
        "figures": {k: v for k, v in figures.items() if k not in ("exported",)},
        "esrs_e1_6": esrs,
        "cdp": cdp,
        "rows": rows,
    }
    paths[3].write_text(json.dumps(document, indent=1, default=str) + "\n", encoding="utf-8")
    return paths
