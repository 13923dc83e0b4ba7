"""The inventory of one reporting year: its emissions by scope, Scope 3 category, gas, activity
type and country/region, with the results, dead letters and data-quality shares behind each
figure; compared with a base year (``audit.base_year``) and exported (``audit.inventory_export``).

    python -m audit.inventory --year 2024 [--year-start 04-01] [--base-year 2019]
        [--threshold 0.05] [--export DIR]

An activity belongs to the reporting year that contains its ``activity_date`` (read from its
source, as the pipeline reads it): calendar years by default; with ``--year-start MM-DD``,
fiscal years that begin on that day, each named by the calendar year it begins in (2024 with
``--year-start 04-01`` is 1 April 2024 to 31 March 2025). The rule is docs/methodology.md §4.1.

Every kg CO2e figure is the database's ``sum(kg_co2e::numeric)`` over the year's stored results
(``numeric`` cannot overflow, and sums of sums are exact), given as a double. The gases are the
results' own per-gas parts (CO2, CH4 and N2O, each in kg CO2e); ``not_split`` is the rest of
the total: results whose factor has no split (the Ember country intensities) or a partial one
(the eGRID US total has CO2 only), and the rounding of published splits.

Scope 2 is given both ways (``scope_2``): location-based from the results, market-based from
the lines a run stored (``market_based_results``, docs/scope2.md) for the same reporting years.
"""

from __future__ import annotations

import argparse
import datetime
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from psycopg2 import sql

from pipeline import cli
from pipeline.levels import LEVEL_SQL, LEVELS
from pipeline.model import ACTIVITY_TYPES
from pipeline.store import connections, tables
from pipeline.store.sources import Sources, default_sources, relation

#: The scope and Scope 3 category of each activity type (docs/methodology.md §1–3).
TYPE_SCOPES: dict[str, tuple[int, int | None]] = {
    "electricity": (2, None),
    "spend": (3, 1),
    "air_travel": (3, 6),
}
#: How each activity type's country or region is read from its activity; the others have none.
_REGION = {"electricity": "coalesce(nullif(a.region, ''), a.country)"}
GASES = ("co2", "ch4", "n2o", "not_split")
_DATE = re.compile(r"^(\d\d)-(\d\d)$")


@dataclass(frozen=True)
class Period:
    """A reporting year: ``start`` ≤ activity_date < ``end``."""

    year: int
    year_start: str
    start: datetime.date
    end: datetime.date

    @property
    def label(self) -> str:
        if self.year_start == "01-01":
            return str(self.year)
        last = self.end - datetime.timedelta(days=1)
        return f"FY {self.year} ({self.start.isoformat()} to {last.isoformat()})"

    def as_dict(self) -> dict[str, Any]:
        return {
            "year": self.year,
            "year_start": self.year_start,
            "start": self.start.isoformat(),
            "end_exclusive": self.end.isoformat(),
            "label": self.label,
        }


def period(year: int, year_start: str = "01-01") -> Period:
    """The reporting year ``year`` whose first day is ``year_start`` (``MM-DD``)."""
    found = _DATE.match(year_start)
    if found is None or not 1 <= year <= 9998:
        raise cli.UsageError(
            f"--year-start: expected MM-DD such as 04-01, got {year_start!r}"
            if found is None
            else f"--year: expected a year from 1 to 9998, got {year}"
        )
    month, day = int(found[1]), int(found[2])
    if (month, day) == (2, 29):
        raise cli.UsageError("--year-start 02-29 is not a day of every year: choose 03-01")
    try:
        start = datetime.date(year, month, day)
    except ValueError:
        raise cli.UsageError(f"--year-start: {year_start} is not a day of the year") from None
    return Period(year, year_start, start, datetime.date(year + 1, month, day))


@dataclass
class Cell:
    """Results, kg CO2e (exact sums), gases and data-quality levels of one group, and the
    activities of the group refused as dead letters (no result)."""

    results: int = 0
    dead_letters: int = 0
    kg: Decimal = Decimal(0)
    gases: dict[str, Decimal] = field(default_factory=lambda: dict.fromkeys(GASES, Decimal(0)))
    levels: dict[str, tuple[int, Decimal]] = field(
        default_factory=lambda: {lv: (0, Decimal(0)) for lv in LEVELS}
    )

    def add(self, other: Cell) -> None:
        self.results += other.results
        self.dead_letters += other.dead_letters
        self.kg += other.kg
        for gas in GASES:
            self.gases[gas] += other.gases[gas]
        for lv in LEVELS:
            n, kg = self.levels[lv]
            self.levels[lv] = (n + other.levels[lv][0], kg + other.levels[lv][1])

    def figure(self) -> dict[str, Any]:
        """As exported: kg as doubles, shares of records (results + dead letters) and of kg."""
        records = self.results + self.dead_letters
        return {
            "kg_co2e": float(self.kg),
            "t_co2e": float(self.kg) / 1000.0,
            "results": self.results,
            "dead_letters": self.dead_letters,
            "kg_by_gas": {g: float(v) for g, v in self.gases.items()},
            "quality": {
                lv: {
                    "results": n,
                    "share_of_records": n / records if records else 0.0,
                    "share_of_kg": float(kg / self.kg) if self.kg else 0.0,
                }
                for lv, (n, kg) in self.levels.items()
            },
            "dead_letter_share_of_records": self.dead_letters / records if records else 0.0,
        }


#: A group of the inventory: activity type and country/region (None: not applicable).
Key = tuple[str, str | None]


#: The reporting year of an activity (the calendar year its reporting year begins in): its
#: date's year, less one before the year's first day (``%(ys)s``, ``MM-DD``).
_YEAR = (
    "(extract(year FROM a.activity_date)::int - (to_char(a.activity_date, 'MM-DD') < %(ys)s)::int)"
)
#: Which activities are read: those of one reporting year, or of every year.
_ONE_YEAR = "a.activity_date >= %(start)s AND a.activity_date < %(end)s"
_EVERY_YEAR = "a.activity_date IS NOT NULL"


def _results_query(activity_type: str, source: Any, schema: str, dated: str) -> sql.Composed:
    """Results of one type per reporting year and country/region: counts, exact kg, gases,
    levels."""
    levels = sql.SQL(", ").join(
        sql.SQL(
            "count(*) FILTER (WHERE {c}), coalesce(sum(kg_co2e::numeric) FILTER (WHERE {c}), 0)"
        ).format(c=sql.SQL(cond))
        for cond in LEVEL_SQL.values()
    )
    return sql.SQL(
        "SELECT ryear, region, count(*), sum(kg_co2e::numeric), "
        "sum(coalesce(kg_co2, 0)::numeric), sum(coalesce(kg_ch4_co2e, 0)::numeric), "
        "sum(coalesce(kg_n2o_co2e, 0)::numeric), {levels} FROM (SELECT r.*, {year} AS ryear, "
        "{region} AS region FROM {results} r JOIN ({activities}) a ON a.id = r.activity_id "
        "WHERE r.activity_type = %(type)s AND {dated}) x GROUP BY ryear, region"
    ).format(
        levels=levels,
        year=sql.SQL(_YEAR),
        region=sql.SQL(_REGION.get(activity_type, "NULL::text")),
        results=tables.qualified(tables.RESULTS_TABLE, schema),
        activities=relation(source),
        dated=sql.SQL(dated),
    )


def _dead_letters_query(activity_type: str, source: Any, schema: str, dated: str) -> sql.Composed:
    """Activities of one type refused as dead letters (open, with no result), per reporting
    year and country/region."""
    return sql.SQL(
        "SELECT {year}, {region}, count(DISTINCT e.activity_id) FROM {errors} e "
        "JOIN ({activities}) a ON a.id = e.activity_id WHERE e.activity_type = %(type)s "
        "AND e.retired_at IS NULL AND {dated} AND NOT EXISTS "
        "(SELECT 1 FROM {results} r WHERE r.activity_type = e.activity_type "
        "AND r.activity_id = e.activity_id) GROUP BY 1, 2"
    ).format(
        year=sql.SQL(_YEAR),
        region=sql.SQL(_REGION.get(activity_type, "NULL::text")),
        errors=tables.qualified(tables.ERRORS_TABLE, schema),
        results=tables.qualified(tables.RESULTS_TABLE, schema),
        activities=relation(source),
        dated=sql.SQL(dated),
    )


def _undated_query(activity_type: str, source: Any, schema: str) -> sql.Composed:
    """Open dead letters whose activity has no date: in no year (refused ``missing_date``)."""
    return sql.SQL(
        "SELECT count(DISTINCT e.activity_id) FROM {errors} e JOIN ({activities}) a "
        "ON a.id = e.activity_id WHERE e.activity_type = %(type)s AND e.retired_at IS NULL "
        "AND a.activity_date IS NULL"
    ).format(errors=tables.qualified(tables.ERRORS_TABLE, schema), activities=relation(source))


def _cell(row: Any) -> Cell:
    """A cell from a row of ``_results_query`` (after its year and region)."""
    cell = Cell(results=int(row[0]), kg=Decimal(row[1]))
    co2, ch4, n2o = (Decimal(v) for v in row[2:5])
    cell.gases = {"co2": co2, "ch4": ch4, "n2o": n2o, "not_split": cell.kg - co2 - ch4 - n2o}
    for i, lv in enumerate(LEVELS):
        cell.levels[lv] = (int(row[5 + 2 * i]), Decimal(row[6 + 2 * i]))
    return cell


def read_cells(
    engine: Any, year_start: str, schema: str, sources: Sources, only: Period | None = None
) -> tuple[dict[int, dict[Key, Cell]], int]:
    """Per reporting year (``only`` that one, else every year) and (activity type,
    country/region), its cell; and the undated dead letters. One pass over each type's
    results and dead letters, in one snapshot."""
    years: dict[int, dict[Key, Cell]] = {}
    undated = 0
    dated = _EVERY_YEAR if only is None else _ONE_YEAR
    with connections.raw_connection(engine) as conn:
        with conn.cursor() as cur:
            cur.execute("SET TRANSACTION READ ONLY, ISOLATION LEVEL REPEATABLE READ")
            for activity_type, source in sources.items():
                params: dict[str, Any] = {"type": activity_type, "ys": year_start}
                if only is not None:
                    params.update(start=only.start, end=only.end)
                cur.execute(_results_query(activity_type, source, schema, dated), params)
                for row in cur.fetchall():
                    years.setdefault(int(row[0]), {})[(activity_type, row[1])] = _cell(row[2:])
                cur.execute(_dead_letters_query(activity_type, source, schema, dated), params)
                for year, region, count in cur.fetchall():
                    cells = years.setdefault(int(year), {})
                    cells.setdefault((activity_type, region), Cell()).dead_letters = int(count)
                cur.execute(_undated_query(activity_type, source, schema), params)
                undated += int(cur.fetchone()[0])
        conn.commit()
    return years, undated


#: How each basis of a market-based line counts in CDP's shares: instrument-specific or not.
SPECIFIC_BASES = ("certificate", "contract", "supplier_rate")


#: Per reporting year, the activities of the market-based lines whose location-based result
#: is gone or has another kWh now (corrected, or deleted, since the lines were allocated).
_CHANGED_SINCE = sql.SQL(
    "SELECT m.reporting_year, count(*) FROM (SELECT reporting_year, activity_id, sum(kwh) AS kwh "
    "FROM {market} WHERE year_start = %s GROUP BY 1, 2) m LEFT JOIN {results} r "
    "ON r.activity_type = 'electricity' AND r.activity_id::text = m.activity_id "
    "WHERE r.activity_id IS NULL OR abs(r.activity_amount - m.kwh) > "
    "1e-9 * greatest(abs(r.activity_amount), 1) GROUP BY 1"
)


def read_market(engine: Any, year_start: str, schema: str) -> dict[str, Any]:
    """The stored Scope 2 market-based lines (docs/scope2.md) per reporting year: their exact
    kg, activities, kWh by basis, and how many of their activities' results changed since;
    only the lines allocated for ``year_start``'s years.
    ``status``: ``computed`` when there are such lines, ``other_year_start`` when the lines are
    for reporting years that start on another day, else ``not_computed``."""
    table = tables.qualified(tables.MARKET_TABLE, schema)
    results = tables.qualified(tables.RESULTS_TABLE, schema)
    found: dict[str, Any] = {"status": "not_computed", "years": {}, "year_starts": []}
    with connections.raw_connection(engine) as conn:
        with conn.cursor() as cur:
            cur.execute(
                "SELECT to_regclass(%s)", (tables.qualified_text(tables.MARKET_TABLE, schema),)
            )
            row = cur.fetchone()
            if row is None or row[0] is None:
                conn.rollback()
                return found
            cur.execute(sql.SQL("SELECT DISTINCT year_start FROM {} ORDER BY 1").format(table))
            found["year_starts"] = [r[0] for r in cur.fetchall()]
            cur.execute(
                sql.SQL(
                    "SELECT reporting_year, basis, sum(kg_co2e::numeric), sum(kwh::numeric), "
                    "count(DISTINCT activity_id) FROM {} WHERE year_start = %s GROUP BY 1, 2"
                ).format(table),
                (year_start,),
            )
            for year, basis, kg, kwh, _ in cur.fetchall():
                by = found["years"].setdefault(int(year), {"by_basis": {}})["by_basis"]
                by[basis] = (Decimal(kg), Decimal(kwh))
            cur.execute(
                sql.SQL(
                    "SELECT reporting_year, count(DISTINCT activity_id) FROM {} "
                    "WHERE year_start = %s GROUP BY 1"
                ).format(table),
                (year_start,),
            )
            for year, activities in cur.fetchall():
                found["years"][int(year)]["activities"] = int(activities)
            cur.execute(_CHANGED_SINCE.format(market=table, results=results), (year_start,))
            for year, changed in cur.fetchall():
                found["years"][int(year)]["changed"] = int(changed)
        conn.rollback()
    if year_start in found["year_starts"]:
        found["status"] = "computed"
    elif found["year_starts"]:
        found["status"] = "other_year_start"
    return found


def _scope_2(location: Cell | None, market: dict[str, Any] | None, year: int) -> dict[str, Any]:
    """Both Scope 2 methods side by side: market-based from the stored lines when a run has
    allocated the team's instruments for these reporting years; else empty, never 0."""
    found: dict[str, Any] = {
        "location_based_kg": float(location.kg) if location is not None else 0.0,
        "market_based_kg": None,
        "market_based_status": "not_computed",
    }
    if market is None or market["status"] == "not_computed":
        return found
    if market["status"] == "other_year_start":
        found["market_based_status"] = "other_year_start"
        found["market_based_note"] = (
            "the market-based lines are allocated for reporting years starting "
            f"{', '.join(market['year_starts'])}: run pipeline.run with this --year-start"
        )
        return found
    year_lines = market["years"].get(year, {"by_basis": {}, "activities": 0})
    lagging = _behind(location, year_lines)
    if lagging:
        found["market_based_status"] = "behind"
        found["market_based_note"] = lagging
        return found
    by = year_lines["by_basis"]
    kwh = sum((v[1] for v in by.values()), Decimal(0))
    found["market_based_kg"] = float(sum((v[0] for v in by.values()), Decimal(0)))
    found["market_based_status"] = "computed"
    found["market_based"] = {
        "activities": year_lines.get("activities", 0),
        "kwh": float(kwh),
        "by_basis": {
            b: {"kg_co2e": float(v[0]), "kwh": float(v[1])} for b, v in sorted(by.items())
        },
        "share_specific_kwh": float(
            sum((by[b][1] for b in SPECIFIC_BASES if b in by), Decimal(0)) / kwh
        )
        if kwh
        else 0.0,
        "grid_fallback_kwh": float(by["grid_fallback"][1]) if "grid_fallback" in by else 0.0,
    }
    return found


def _behind(location: Cell | None, year_lines: dict[str, Any]) -> str | None:
    """Why the year's market-based lines do not cover its location-based electricity as it is
    now (computed since they were allocated: ``pipeline.follow``, ``--market-based off``; or
    corrected or deleted since), or None when they do."""
    now = location.results if location is not None else 0
    covered = year_lines.get("activities", 0) - year_lines.get("changed", 0)
    if covered == now and not year_lines.get("changed", 0):
        return None
    return (
        f"the market-based lines cover {covered} of the {now} electricity activities with a "
        "location-based result as it is now: run pipeline.run to allocate them again"
    )


def database_label(url: str) -> str:
    """The database as the inventory and the report name it: host and database name, nothing
    else (no user, port, options or socket path)."""
    parsed = sa.make_url(url)
    host = parsed.host or ""
    socket = parsed.query.get("host")
    if not host or host.startswith("/") or socket:
        host = "local server"
    return f"{host}, database {parsed.database or '(default)'}"


def rollup(cells: dict[Key, Cell], by: Callable[[Key], Any]) -> dict[Any, Cell]:
    """The cells added up per ``by(key)``, in key order."""
    out: dict[Any, Cell] = {}
    for key in sorted(cells, key=lambda k: (k[0], k[1] or "")):
        out.setdefault(by(key), Cell()).add(cells[key])
    return out


def _sort_key(value: Any) -> tuple[Any, ...]:
    return tuple((v is not None, v if v is not None else 0) for v in value)


def inventory(
    engine: Any,
    chosen: Period,
    schema: str = tables.DEFAULT_SCHEMA,
    sources: Sources | None = None,
) -> dict[str, Any]:
    """The figures of the reporting year ``chosen``, read from the database now."""
    sources = sources or default_sources(schema)
    years, undated = read_cells(engine, chosen.year_start, schema, sources, chosen)
    market = read_market(engine, chosen.year_start, schema)
    return _figures(chosen, years.get(chosen.year, {}), undated, market)


def inventories(
    engine: Any,
    year_start: str = "01-01",
    schema: str = tables.DEFAULT_SCHEMA,
    sources: Sources | None = None,
) -> list[dict[str, Any]]:
    """The figures of every reporting year with a result or a dead letter, oldest first, read
    in one pass (the report's sections)."""
    period(2000, year_start)  # refuses a bad first day before reading anything
    sources = sources or default_sources(schema)
    years, undated = read_cells(engine, year_start, schema, sources)
    market = read_market(engine, year_start, schema)
    return [_figures(period(y, year_start), years[y], undated, market) for y in sorted(years)]


def _figures(
    chosen: Period, cells: dict[Key, Cell], undated: int, market: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The figures of one year from its cells."""
    total = Cell()
    for cell in cells.values():
        total.add(cell)
    scopes = rollup(cells, lambda k: TYPE_SCOPES[k[0]][0])
    categories = rollup(cells, lambda k: TYPE_SCOPES[k[0]])
    types = rollup(cells, lambda k: k[0])
    regions = rollup(cells, lambda k: k)
    return {
        "period": chosen.as_dict(),
        "total": total.figure(),
        "by_scope": [{"scope": s, **scopes[s].figure()} for s in sorted(scopes)],
        "by_category": [
            {"scope": s, "category": c, **categories[(s, c)].figure()}
            for s, c in sorted(categories, key=_sort_key)
        ],
        "by_gas": {g: float(total.gases[g]) for g in GASES},
        "scope_2": _scope_2(scopes.get(2), market, chosen.year),
        "by_activity_type": [
            {"activity_type": t, **types[t].figure()}
            for t in sorted(types, key=ACTIVITY_TYPES.index)
        ],
        "by_region": [
            {"activity_type": t, "region": r, **regions[(t, r)].figure()}
            for t, r in sorted(regions, key=lambda k: (ACTIVITY_TYPES.index(k[0]), k[1] or ""))
        ],
        "dead_letters_without_date": undated,
    }


def build_parser() -> argparse.ArgumentParser:
    """The command's options."""
    parser = cli.parser("audit.inventory", __doc__)
    cli.add_database_option(parser)
    parser.add_argument("--year", type=int, required=True, help="the reporting year")
    parser.add_argument(
        "--year-start",
        "--year_start",
        dest="year_start",
        default="01-01",
        help="first day (MM-DD) of each reporting year: 01-01 for calendar years, 04-01 for "
        "fiscal years from 1 April (named by the year they begin in)",
    )
    parser.add_argument(
        "--base-year",
        "--base_year",
        dest="base_year",
        type=int,
        default=None,
        help="the base year to compare with (recorded as first reported when first named)",
    )
    cli.add_threshold_option(parser, "the base year's total")
    parser.add_argument(
        "--export",
        default=None,
        metavar="DIR",
        help="write the ESRS E1-6, CDP and traceable rows tables there, as CSV and JSON",
    )
    cli.add_log_level_option(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    cli.setup_logging(args.log_level)
    cli.checked_threshold(parser, args.threshold)

    def body(target: cli.Target) -> int:
        from audit import base_year, inventory_export

        sources = cli.checked_sources(target)
        chosen = period(args.year, args.year_start)
        figures = inventory(target.engine, chosen, target.schema, sources)
        if args.base_year is not None:
            figures["base_year"] = base_year.compare(
                target.engine,
                period(args.base_year, args.year_start),
                args.threshold,
                target.schema,
                sources,
            )
        figures["database"] = database_label(target.url)
        if args.export is not None:
            written = inventory_export.export(
                target.engine, figures, chosen, Path(args.export), target.schema, sources
            )
            figures["exported"] = [str(p) for p in written]
        cli.print_json(figures)
        return cli.OK

    return cli.run(args, "inventory", body, pool_size=1, max_overflow=0)


if __name__ == "__main__":
    sys.exit(main())
