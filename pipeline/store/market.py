"""Reads what the Scope 2 market-based allocation needs (docs/methodology.md §10.3): the
electricity consumption as computed location-based, with its facility and supplier, and the
team's instruments. Read-only: the sources' SQL is the team's own (``sources.read_only``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import psycopg2.extensions
from psycopg2 import sql

from pipeline.model import (
    INSTRUMENT_KINDS,
    Certificate,
    Consumption,
    Contract,
    InstrumentKind,
    SupplierRate,
)
from pipeline.store import tables
from pipeline.store.sources import (
    Field,
    Source,
    field_types,
    market_relation,
    read_only,
    relation,
)

#: The location-based method of an electricity result.
LOCATION_BASED = "scope2_location_based"


@dataclass
class Instruments:
    """The team's instruments, as mapped (none of a kind not mapped)."""

    certificates: list[Certificate] = field(default_factory=list)
    contracts: list[Contract] = field(default_factory=list)
    supplier_rates: list[SupplierRate] = field(default_factory=list)


def read_consumption(
    conn: psycopg2.extensions.connection,
    electricity: Source,
    schema: str = tables.DEFAULT_SCHEMA,
    year_start: str = "01-01",
) -> list[Consumption]:
    """Every dated electricity activity with a location-based result: its kWh, market (its
    region, upper-cased), reporting year (whose first day is ``year_start``, ``MM-DD``; named
    by the calendar year it begins in, as the inventory names it), grid factor and factor id,
    facility and supplier."""
    query = sql.SQL(
        "SELECT r.activity_id, r.activity_amount, upper(trim(a.region)), "
        "extract(year FROM a.activity_date)::int "
        "- (to_char(a.activity_date, 'MM-DD') < {year_start})::int, r.factor_value, r.factor_id, "
        "nullif(trim(m.facility), ''), nullif(trim(m.supplier), '') {consumed} "
        "ORDER BY r.activity_id"
    ).format(year_start=sql.Literal(year_start), consumed=_consumed(electricity, schema))
    read_only(conn)
    try:
        with conn.cursor() as cur:
            cur.execute(query)
            return [Consumption(*row) for row in cur.fetchall()]
    finally:
        conn.rollback()


def _consumed(electricity: Source, schema: str) -> sql.Composed:
    """``FROM … WHERE …``: the electricity activities with a location-based result."""
    return sql.SQL(
        "FROM {results} r JOIN ({activities}) a ON a.id = r.activity_id "
        "JOIN ({market}) m ON m.id = r.activity_id "
        "WHERE r.activity_type = 'electricity' AND r.method = {method} "
        "AND a.activity_date IS NOT NULL AND a.region IS NOT NULL"
    ).format(
        results=tables.qualified(tables.RESULTS_TABLE, schema),
        activities=relation(electricity),
        market=market_relation(electricity),
        method=sql.Literal(LOCATION_BASED),
    )


def inputs_digest(
    conn: psycopg2.extensions.connection,
    electricity: Source,
    checked: Mapping[InstrumentKind, Source],
    schema: str,
    residual_mix_set: str,
) -> str:
    """A digest of everything the allocation reads, computed in the database (one pass over
    the consumption, no row leaves it): each row's text hashed (``hashtextextended``) and the
    hashes summed, with the row counts, for the consumption (as ``read_consumption`` reads
    it), each kind of instrument and the residual mixes. Any change to any of them changes it
    (a sum of 64-bit hashes: equal sums of different rows are a 2⁻⁶⁴ chance)."""
    parts: list[sql.Composable] = [
        sql.SQL(
            "SELECT count(*)::text || ':' || coalesce(sum(hashtextextended(concat_ws('|', "
            "r.activity_id, r.activity_amount, a.region, a.activity_date, r.factor_value, "
            "r.factor_id, m.facility, m.supplier), 0)::numeric), 0)::text {}"
        ).format(_consumed(electricity, schema))
    ]
    for kind in sorted(checked):
        parts.append(
            sql.SQL(
                "SELECT {} || ':' || count(*)::text || ':' "
                "|| coalesce(sum(hashtextextended(i::text, 0)::numeric), 0)::text FROM ({}) i"
            ).format(sql.Literal(kind), relation(checked[kind]))
        )
    parts.append(
        sql.SQL(
            "SELECT count(*)::text || ':' || coalesce(sum(hashtextextended(f::text, 0)"
            "::numeric), 0)::text FROM {} f WHERE factor_set = {}"
        ).format(tables.qualified(tables.FACTORS_TABLE, schema), sql.Literal(residual_mix_set))
    )
    read_only(conn)
    try:
        with conn.cursor() as cur:
            found = []
            for part in parts:
                cur.execute(part)
                found.append(str(cur.fetchone()[0]))
    finally:
        conn.rollback()
    return "|".join(found)


def read_instruments(
    conn: psycopg2.extensions.connection, checked: Mapping[InstrumentKind, Source]
) -> Instruments:
    """The instruments of each mapped kind, read as the model's records (``checked``: the
    instruments' sources as ``checks.check_instruments`` returns them)."""
    found = Instruments()
    read_only(conn)
    try:
        for kind, source in checked.items():
            rows = _rows(conn, source)
            if kind == "certificates":
                found.certificates = [Certificate(*r) for r in rows]
            elif kind == "contracts":
                found.contracts = [Contract(*r) for r in rows]
            else:
                found.supplier_rates = [SupplierRate(*r) for r in rows]
    finally:
        conn.rollback()
    return found


def _rows(conn: psycopg2.extensions.connection, source: Source) -> list[tuple[Any, ...]]:
    """The source's rows as the methodology names them, without the row version."""
    with conn.cursor() as cur:
        cur.execute(sql.SQL("SELECT * FROM ({}) i ORDER BY 1").format(relation(source)))
        return [tuple(row[:-1]) for row in cur.fetchall()]


def read_kind(
    conn: psycopg2.extensions.connection, kind: InstrumentKind, source: Source
) -> list[Certificate] | list[Contract] | list[SupplierRate]:
    """The instruments of one kind (``source`` checked), read-only."""
    read_only(conn)
    try:
        rows = _rows(conn, source)
    finally:
        conn.rollback()
    if kind == "certificates":
        return [Certificate(*r) for r in rows]
    if kind == "contracts":
        return [Contract(*r) for r in rows]
    return [SupplierRate(*r) for r in rows]


def own_instruments(
    conn: psycopg2.extensions.connection, schema: str = tables.DEFAULT_SCHEMA
) -> dict[InstrumentKind, Source]:
    """The pipeline's own instrument tables (revision 0010) that hold a row, as sources: what
    the market-based method reads when no sources file is given. Read-only."""
    found: dict[InstrumentKind, Source] = {}
    try:
        with conn.cursor() as cur:
            for kind in INSTRUMENT_KINDS:
                name = tables.INSTRUMENT_TABLES[kind]
                cur.execute("SELECT to_regclass(%s)", (tables.qualified_text(name, schema),))
                row = cur.fetchone()
                if row is None or row[0] is None:
                    continue
                cur.execute(
                    sql.SQL("SELECT EXISTS (SELECT 1 FROM {})").format(
                        tables.qualified(name, schema)
                    )
                )
                held = cur.fetchone()
                if held is not None and held[0]:
                    found[kind] = Source(
                        activity_type="electricity",
                        table=(schema, name),
                        fields=tuple((f, Field(column=f)) for f in field_types(kind)),
                        instrument=kind,
                    )
    finally:
        conn.rollback()
    return found
