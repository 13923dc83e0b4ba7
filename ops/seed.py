"""Deterministic demo data: ``python -m ops.seed --count N [--database-url URL]``.

A realistic mix of the three activity types (real eGRID subregions and countries, real NAICS
codes, real airport pairs) with about 1% bad rows of every kind the methodology refuses. The
same ``--seed`` and starting ids give the same rows. Rows are streamed with ``COPY``, so a
million takes seconds. The command (and ``ops.local``'s demo) also adds a few Scope 2
instruments and demo residual mixes (``seed_instruments``).
"""

from __future__ import annotations

import argparse
import csv
import datetime
import io
import os
import random
import sys
import uuid
from collections.abc import Iterator, Sequence
from typing import Any

import sqlalchemy as sa
from psycopg2 import sql

from pipeline import cli
from pipeline.factors import DATA_DIR, KG_PER_KWH, RESIDUAL_MIX_SET
from pipeline.model import ActivityType, FactorRow, activity_fields
from pipeline.store import connections, install, queries, sources, tables, writes

SUBREGIONS = (
    "AKGD AKMS AZNM CAMX ERCT FRCC HIMS HIOA MROE MROW NEWE NWPP NYCW NYLI NYUP PRMS RFCE "
    "RFCM RFCW RMPA SPNO SPSO SRMV SRMW SRSO SRTV SRVC"
).split()
COUNTRIES = "GBR GB DEU FRA IND CHN JPN BRA CAN AUS ZAF ESP ITA POL NLD SWE NOR MEX US".split()
UNITS = ("kWh", "kWh", "kWh", "MWh", "MWh", "GJ", "MJ", "Wh")
CURRENCIES = ("USD", "USD", "USD", "EUR", "EUR", "GBP", "JPY", "CAD", "CHF", "AUD")
CABINS = (
    "economy",
    "economy",
    "economy",
    "business",
    "premium_economy",
    "first",
    "average",
)
AIRPORT_PAIRS = (
    ("LHR", "JFK"),
    ("LHR", "CDG"),
    ("EDI", "LHR"),
    ("MAN", "AMS"),
    ("LHR", "SIN"),
    ("JFK", "LAX"),
    ("SFO", "ORD"),
    ("CDG", "FRA"),
    ("FRA", "NRT"),
    ("SYD", "MEL"),
    ("GLA", "BHD"),
    ("LGW", "BCN"),
    ("DXB", "LHR"),
    ("BOS", "LHR"),
    ("MAD", "MEX"),
    ("HKG", "SIN"),
    ("YYZ", "YVR"),
    ("JER", "LGW"),
    ("IOM", "MAN"),
    ("ATL", "MIA"),
)
START = datetime.date(2019, 1, 1)
DAYS = (datetime.date(2025, 12, 31) - START).days
SHARES: dict[ActivityType, float] = {
    "electricity": 0.40,
    "spend": 0.35,
    "air_travel": 0.25,
}
BAD_SHARE = 0.01


def naics_codes() -> list[str]:
    """The NAICS codes of the shipped EPA factors, excluding 2211xx (electricity)."""
    path = DATA_DIR / "epa_sef_v1_3_0_co2e.csv"
    with path.open(newline="", encoding="utf-8-sig") as f:
        return [r[0] for r in csv.reader(f) if r and r[0].isdigit() and not r[0].startswith("2211")]


def _date(rng: random.Random) -> datetime.date:
    return START + datetime.timedelta(days=rng.randrange(DAYS + 1))


def electricity_row(rng: random.Random, bad: bool) -> tuple[Any, ...]:
    if bad:
        return rng.choice(
            [
                (None, "kWh", "CAMX", None),
                (-120.0, "kWh", "ERCT", None),
                (float("nan"), "MWh", "GBR", None),
                (500.0, "kWhh", "NEWE", None),
                (500.0, "kWh", "ZZZZ", None),
            ]
        ) + (_date(rng),)
    r = rng.random()
    if r < 0.6:
        region, country = rng.choice(SUBREGIONS), None
    elif r < 0.95:
        region, country = rng.choice(COUNTRIES), None
    else:  # an unknown subregion with a known country: the country fallback
        region, country = "XXWE", rng.choice(("US", "GBR", "DE"))
    unit = rng.choice(UNITS)
    scale = {"Wh": 1e6, "kWh": 1e3, "MWh": 1.0, "MJ": 3.6e3, "GJ": 3.6}[unit]
    quantity = round(rng.lognormvariate(3.0, 1.2) * scale, 3)
    return (quantity, unit, region, country, _date(rng))


def spend_row(rng: random.Random, codes: Sequence[str], bad: bool) -> tuple[Any, ...]:
    if bad:
        return rng.choice(
            [
                (None, "USD", codes[0]),
                (-250.0, "USD", codes[1]),
                (1000.0, "XYZ", codes[2]),
                (1000.0, "USD", "221100"),
                (1000.0, "EUR", "999999"),
            ]
        ) + (_date(rng),)
    amount = round(rng.lognormvariate(7.0, 1.5), 2)
    return (amount, rng.choice(CURRENCIES), rng.choice(codes), _date(rng))


def air_row(rng: random.Random, bad: bool) -> tuple[Any, ...]:
    if bad:
        return rng.choice(
            [
                ("QQQ", "LHR", "economy", 1, False, _date(rng), None),
                ("LHR", "JFK", "luxury", 1, True, _date(rng), None),
                ("LHR", "CDG", "economy", -2, False, _date(rng), None),
                ("LHR", "CDG", "economy", 1, None, _date(rng), None),
            ]
        )
    origin, destination = rng.choice(AIRPORT_PAIRS)
    if rng.random() < 0.5:
        origin, destination = destination, origin
    passengers = 1 if rng.random() < 0.85 else rng.randint(2, 6)
    return (
        origin,
        destination,
        rng.choice(CABINS),
        passengers,
        rng.random() < 0.5,
        _date(rng),
        None,
    )


def generate(
    activity_type: ActivityType,
    count: int,
    seed: int,
    first_id: int,
    id_type: tables.IdType,
) -> Iterator[tuple[Any, ...]]:
    """``count`` rows of one type, deterministic in (seed, first_id)."""
    rng = random.Random(f"{seed}:{activity_type}:{first_id}")
    codes = naics_codes() if activity_type == "spend" else []
    for i in range(count):
        bad = rng.random() < BAD_SHARE
        if activity_type == "electricity":
            row = electricity_row(rng, bad)
        elif activity_type == "spend":
            row = spend_row(rng, codes, bad)
        else:
            row = air_row(rng, bad)
        key: Any = first_id + i
        if id_type == "uuid":
            key = str(uuid.UUID(int=rng.getrandbits(128), version=4))
        elif id_type == "text":
            key = f"{activity_type[:2]}-{first_id + i:012d}"
        yield (key, *row)


def _copy_rows(
    conn: Any, table: sql.Identifier, columns: Sequence[str], rows: Iterator[tuple[Any, ...]]
) -> int:
    n = 0
    chunk: list[tuple[Any, ...]] = []
    with conn.cursor() as cur:
        for row in rows:
            chunk.append(row)
            if len(chunk) == 50_000:
                n += _copy_chunk(cur, table, columns, chunk)
                chunk = []
        n += _copy_chunk(cur, table, columns, chunk)
    return n


def _copy_chunk(
    cur: Any, table: sql.Identifier, columns: Sequence[str], chunk: list[tuple[Any, ...]]
) -> int:
    if not chunk:
        return 0
    buf: io.StringIO = writes.copy_buffer(chunk)
    cur.copy_expert(
        sql.SQL("COPY {} ({}) FROM STDIN WITH (FORMAT csv)").format(
            table, sql.SQL(", ").join(map(sql.Identifier, columns))
        ),
        buf,
    )
    return len(chunk)


def seed(
    engine: sa.Engine, count: int, seed_value: int = 42, schema: str = tables.DEFAULT_SCHEMA
) -> dict[str, int]:
    """Append ``count`` activities split across the pipeline's own activity tables (in
    ``schema``, made first if missing); returns rows added per type."""
    with connections.raw_connection(engine) as raw:
        id_type = tables.results_id_type(raw, schema)
    if id_type is None:
        id_type = install.create_schema(engine, schema=schema)
    split = {t: int(count * share) for t, share in SHARES.items()}
    split["electricity"] += count - sum(split.values())
    added: dict[str, int] = {}
    with connections.raw_connection(engine) as raw:
        for activity_type, n in split.items():
            table = tables.qualified(tables.ACTIVITY_TABLES[activity_type], schema)
            with raw.cursor() as cur:
                cur.execute(
                    sql.SQL("SELECT count(*), max(id) FROM {}").format(table)
                    if id_type == "bigint"
                    else sql.SQL("SELECT count(*), NULL FROM {}").format(table)
                )
                existing, max_id = cur.fetchone()
            first_id = (max_id or 0) + 1 if id_type == "bigint" else existing + 1
            rows = generate(activity_type, n, seed_value, first_id, id_type)
            added[activity_type] = _copy_rows(raw, table, activity_fields(activity_type), rows)
        raw.commit()
    return added


#: The demo's instruments (docs/scope2.md): certificates of 2024 for two eGRID subregions,
#: one never retired (refused ``not_retired``), and a supplier rate; invented figures.
DEMO_CERTIFICATES = (
    ("DEMO-REC-RFCE-2024", 150.0, "wind", "2024-01-01", "2024-12-31", "RFCE", "DEMO-R-1"),
    ("DEMO-REC-CAMX-2024", 80.0, "solar", "2024-01-01", "2024-12-31", "CAMX", "DEMO-R-2"),
    ("DEMO-REC-UNRETIRED", 40.0, "wind", "2024-01-01", "2024-12-31", "RFCE", None),
)
DEMO_SUPPLIER_RATES = (("DEMO-TARIFF-2024", "Demo Green Tariff", 2024, 0.12, True),)
#: Demo residual mixes (kg CO2e/kWh), every year of the demo: invented, not published mixes.
DEMO_RESIDUAL_MIXES = {"RFCE": 0.45, "CAMX": 0.3}
DEMO_RESIDUAL_SOURCE = "Demo residual mix (invented figures, not a published mix)"


def seed_instruments(engine: sa.Engine, schema: str = tables.DEFAULT_SCHEMA) -> dict[str, int]:
    """The demo's instruments in the pipeline's own instrument tables, and its residual mixes
    as factor rows (``residual_mix``, edition ``demo``); rows already there are kept."""
    certificates = tables.qualified(tables.INSTRUMENT_TABLES["certificates"], schema)
    rates = tables.qualified(tables.INSTRUMENT_TABLES["supplier_rates"], schema)
    added = {"certificates": 0, "supplier_rates": 0}
    with connections.raw_connection(engine) as raw:
        with raw.cursor() as cur:
            for row in DEMO_CERTIFICATES:
                cur.execute(
                    sql.SQL(
                        "INSERT INTO {} (id, mwh, energy_source, vintage_start, vintage_end, "
                        "market, retirement_id) VALUES (%s, %s, %s, %s, %s, %s, %s) "
                        "ON CONFLICT (id) DO NOTHING"
                    ).format(certificates),
                    row,
                )
                added["certificates"] += cur.rowcount
            for rate in DEMO_SUPPLIER_RATES:
                cur.execute(
                    sql.SQL(
                        "INSERT INTO {} (id, supplier, year, kg_co2e_per_kwh, "
                        "accounts_for_sold_instruments) VALUES (%s, %s, %s, %s, %s) "
                        "ON CONFLICT (id) DO NOTHING"
                    ).format(rates),
                    rate,
                )
                added["supplier_rates"] += cur.rowcount
        raw.commit()
    mixes = [
        FactorRow(
            factor_set=RESIDUAL_MIX_SET,
            key=market,
            year=year,
            value=value,
            unit=KG_PER_KWH,
            source=DEMO_RESIDUAL_SOURCE,
            edition="demo",
            source_ref=f"ops.seed ({market} {year})",
        )
        for market, value in DEMO_RESIDUAL_MIXES.items()
        for year in range(START.year, (START + datetime.timedelta(days=DAYS)).year + 1)
    ]
    added["residual_mix_rows"] = queries.insert_factors(engine, mixes, schema)
    return added


def build_parser() -> argparse.ArgumentParser:
    """The command's options."""
    parser = cli.parser("ops.seed", __doc__)
    parser.add_argument("--count", type=int, required=True, help="activities to add")
    parser.add_argument("--seed", type=int, default=42, help="random seed")
    cli.add_database_option(parser)
    parser.add_argument(
        "--if-empty",
        "--if_empty",
        dest="if_empty",
        action="store_true",
        help="add rows only when there are no activities yet",
    )
    parser.add_argument(
        "--no-instruments",
        "--no_instruments",
        dest="no_instruments",
        action="store_true",
        help="no demo certificates, supplier rate and residual mixes (docs/scope2.md)",
    )
    cli.add_log_level_option(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.count < 0:
        parser.error("--count must not be negative")
    cli.setup_logging(args.log_level)

    def seed_database(target: cli.Target) -> int:
        if args.sources or os.environ.get(sources.SOURCES_ENV):
            raise cli.UsageError(
                "seed adds demo rows to the pipeline's own activity tables, which a sources "
                "file replaces: it never writes to your sources. Seed without --sources."
            )
        database = connections.redact_url(target.url)
        install.create_schema(target.engine, schema=target.schema)
        if args.if_empty:
            existing = queries.count_activities(target.engine, schema=target.schema)
            if any(c["total"] for c in existing.values()):
                cli.print_json({"database": database, "seeded": {}})
                return cli.OK
        added = seed(target.engine, args.count, args.seed, target.schema)
        if not args.no_instruments:
            added.update(seed_instruments(target.engine, target.schema))
        cli.print_json({"database": database, "schema": target.schema, "seeded": added})
        return cli.OK

    return cli.run(args, "seeding", seed_database)


if __name__ == "__main__":
    sys.exit(main())
