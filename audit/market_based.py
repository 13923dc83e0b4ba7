"""Scope 2 both ways, on demand: the market-based figure beside the location-based one, from
the stored location-based results, the team's instruments and the residual mixes loaded.

    python -m audit.market_based [--year 2024] [--vintage-window-years N] [--sharing pro_rata]

It reads the electricity results, the instruments of the sources file (docs/scope2.md) and
the residual mixes in force, allocates them (docs/methodology.md §10.3) and prints, per
reporting year (calendar, or fiscal with --year-start), both totals, the kWh and kg at each
level of the hierarchy, the kWh taken at the grid factor for want of a residual mix
(flagged), the refused instruments with their reasons and the MWh left unused. It writes
nothing: the runs store the market-based lines (``pipeline.market_stage``, docs/scope2.md),
which the inventory reads; this is the same allocation, on demand.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Iterable
from typing import Any, get_args

from audit.inventory import period
from pipeline import cli
from pipeline.methodology.book import FactorBook
from pipeline.methodology.market import (
    RESIDUAL_MIX_SET,
    Allocation,
    Basis,
    MarketResult,
    Options,
    Sharing,
    allocate,
)
from pipeline.store import connections, market, queries


def build_parser() -> argparse.ArgumentParser:
    """The command's options."""
    parser = cli.parser("audit.market_based", __doc__)
    cli.add_database_option(parser)
    parser.add_argument("--year", type=int, default=None, help="one reporting year (default: all)")
    parser.add_argument(
        "--year-start",
        "--year_start",
        dest="year_start",
        default="01-01",
        help="first day (MM-DD) of each reporting year, as audit.inventory takes it: 01-01 for "
        "calendar years, 04-01 for fiscal years from 1 April (named by the year they begin in)",
    )
    parser.add_argument(
        "--vintage-window-years",
        "--vintage_window_years",
        dest="vintage_window_years",
        type=int,
        default=0,
        help="years after a certificate's vintage (or a contract's delivery) ends that it may "
        "still serve (0: it must overlap the reporting year)",
    )
    parser.add_argument(
        "--sharing",
        choices=get_args(Sharing),
        default="facility_first",
        help="how instruments not retired for a facility are shared among a market's "
        "consumption: in activity order, or in proportion to what each needs",
    )
    cli.add_log_level_option(parser)
    return parser


def summary(done: Allocation, year: int | None = None) -> dict[str, Any]:
    """Both totals per year, by level of the hierarchy, with the refused and unused."""
    years: dict[int, list[MarketResult]] = {}
    for r in done.results:
        if year is None or r.year == year:
            years.setdefault(r.year, []).append(r)
    return {
        "years": {str(y): _year(results) for y, results in sorted(years.items())},
        "refused_instruments": [
            {"kind": f.kind, "id": f.instrument_id, "code": f.code, "reason": f.message}
            for f in done.refused
        ],
        "unused_mwh": [
            {"kind": kind, "id": ident, "mwh": mwh}
            for (kind, ident), mwh in done.unused_mwh.items()
        ],
    }


def _year(results: Iterable[MarketResult]) -> dict[str, Any]:
    results = list(results)
    parts = [p for r in results for p in r.parts]
    levels: dict[str, dict[str, float]] = {}
    for basis in get_args(Basis):
        chosen = [p for p in parts if p.basis == basis]
        levels[basis] = {
            "kwh": math.fsum(p.kwh for p in chosen),
            "kg_co2e": math.fsum(p.kg_co2e for p in chosen),
        }
    return {
        "activities": len(results),
        "kwh": math.fsum(p.kwh for p in parts),
        "location_based_kg_co2e": math.fsum(r.location_kg_co2e for r in results),
        "market_based_kg_co2e": math.fsum(r.kg_co2e for r in results),
        "by_level": levels,
        "grid_fallback_activities": sum(r.grid_fallback for r in results),
        "residual_mix_year_mismatch_kwh": math.fsum(p.kwh for p in parts if p.year_mismatch),
    }


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    cli.setup_logging(args.log_level)

    def body(target: cli.Target) -> int:
        first = period(args.year or 2000, args.year_start).start  # refuses a bad --year-start
        options = Options(
            vintage_window_years=args.vintage_window_years,
            sharing=args.sharing,
            year_start=(first.month, first.day),
        )
        checked = cli.checked_sources(target)
        if "electricity" not in checked:
            raise cli.UsageError("the sources map no electricity: there is no Scope 2 to allocate")
        instruments = cli.checked_instruments(target, cli.target_instruments(args, target))
        with connections.raw_connection(target.engine) as conn:
            consumption = market.read_consumption(
                conn, checked["electricity"], target.schema, args.year_start
            )
            found = market.read_instruments(conn, instruments)
            rows = queries.read_factor_rows(conn, target.schema)
        book = FactorBook.from_rows(r for r in rows if r.factor_set == RESIDUAL_MIX_SET)
        done = allocate(
            consumption, found.certificates, found.contracts, found.supplier_rates, book, options
        )
        cli.print_json(summary(done, args.year))
        return cli.OK

    return cli.run(args, "allocating Scope 2 market-based", body, pool_size=1, max_overflow=0)


if __name__ == "__main__":
    sys.exit(main())
