"""Replay of the stored Scope 2 market-based lines (``market_based_results``): each market
boundary is allocated again, from the location-based results, the instruments and the
residual mixes as they are now, with the choices its lines were stored with, by the code the
run's stage uses (``pipeline.market_allocation``), and compared exactly, a reporting year at a
time. A year that does not reproduce is named with why:

- ``instruments_changed`` / ``consumption_changed``: what its lines rest on changed since
  (their digests differ): the next run reallocates it;
- ``factor_changed``: the residual-mix rows it would use are not those it used (a newer
  edition loaded): the next run reallocates it;
- ``not_reproduced``: same inputs, different lines: a stored line was altered.

Besides, no instrument may be stored as allocated beyond its MWh (``over_allocated``).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping
from typing import Any

import psycopg2.extensions

from pipeline.market_allocation import (
    Boundary,
    allocate_boundary,
    facility_markets,
    first_claims,
    holders,
    taken_elsewhere,
)
from pipeline.methodology.market import KWH_PER_MWH, RESIDUAL_MIX_SET, boundary
from pipeline.model import InstrumentKind
from pipeline.store import market, queries
from pipeline.store.market_results import Choices, Line, stored_lines
from pipeline.store.sources import Source

#: Slack on an instrument's MWh (float sums of its lines), in kWh.
_SLACK_KWH = 1e-6


def _stored(conn: psycopg2.extensions.connection, schema: str) -> list[tuple[Line, str, str]]:
    with conn.cursor() as cur:
        found = [(line, *digests) for line, digests in stored_lines(cur, schema)]
    conn.rollback()
    return found


def verify_market_based(
    conn: psycopg2.extensions.connection,
    schema: str,
    electricity: Source | None,
    instruments: Mapping[InstrumentKind, Source],
    show: int = 20,
) -> dict[str, Any] | None:
    """The replay's findings (module docstring); None when no line is stored."""
    stored = _stored(conn, schema)
    if not stored:
        return None
    groups: dict[tuple[str, int], list[tuple[Line, str, str]]] = defaultdict(list)
    for item in stored:
        groups[(item[0].boundary, item[0].reporting_year)].append(item)
    digests: dict[str, tuple[str, str]] = {}
    found: dict[str, Any] = {
        "years": len(groups),
        "lines": len(stored),
        "reproduced": 0,
        "by_status": {},
        "mismatches": [],
        "over_allocated": [],
    }
    inputs = _inputs(conn, schema, electricity, instruments, {s[0].year_start for s in stored})
    held = _held(stored)
    again: dict[tuple[str, int], list[Line]] = {}
    for key, choices in sorted(_boundaries(groups).items()):
        got = inputs[choices.year_start]
        b = _boundary(key, got)
        lines, _ = allocate_boundary(b, taken_elsewhere(key, held, got["holders"]), choices)
        for x in lines:
            again.setdefault((key, x.reporting_year), []).append(x)
        digests[key] = b.digests()
    for (key, year), items in sorted(groups.items()):
        fresh = sorted(again.get((key, year), []), key=_order)
        status = _status([i[0] for i in items], fresh, (items[0][1], items[0][2]), digests[key])
        if status is None:
            found["reproduced"] += 1
        else:
            found["by_status"][status] = found["by_status"].get(status, 0) + 1
            if len(found["mismatches"]) < show:
                found["mismatches"].append({"boundary": key, "year": year, "status": status})
    found["over_allocated"] = _over(held, inputs)
    return found


def _boundaries(
    groups: Mapping[tuple[str, int], list[tuple[Line, str, str]]],
) -> dict[str, Choices]:
    """Each stored boundary with the choices its lines were allocated with."""
    found: dict[str, Choices] = {}
    for (key, _), items in groups.items():
        first = items[0][0]
        found.setdefault(key, Choices(first.year_start, first.vintage_window_years, first.sharing))
    return found


def _order(line: Line) -> tuple[str, int]:
    return line.activity_id, line.line


def _status(
    old: list[Line], again: list[Line], stored: tuple[str, str], now: tuple[str, str]
) -> str | None:
    if sorted(old, key=_order) == again:
        return None
    if stored[0] != now[0]:
        return "instruments_changed"
    if stored[1] != now[1]:
        return "consumption_changed"
    if {x.factor_id for x in old if x.basis == "residual_mix"} != {
        x.factor_id for x in again if x.basis == "residual_mix"
    }:
        return "factor_changed"
    return "not_reproduced"


def _held(stored: list[tuple[Line, str, str]]) -> dict[tuple[str, str], dict[str, float]]:
    """kWh of each instrument stored as allocated, by boundary."""
    held: dict[tuple[str, str], dict[str, float]] = defaultdict(lambda: defaultdict(float))
    for line, _, _ in stored:
        if line.instrument_kind in ("certificates", "contracts") and line.instrument_id:
            held[(line.instrument_kind, line.instrument_id)][line.boundary] += line.kwh
    return held


def _over(
    held: Mapping[tuple[str, str], Mapping[str, float]], inputs: Mapping[str, dict[str, Any]]
) -> list[dict[str, Any]]:
    mwh: dict[tuple[str, str], float] = {}
    for got in inputs.values():
        for kind in ("certificates", "contracts"):
            for item in got[kind]:
                mwh[(kind, str(item.id))] = item.mwh or 0.0
    over = []
    for (kind, ident), by in sorted(held.items()):
        total = sum(by.values())
        if total > mwh.get((kind, ident), 0.0) * KWH_PER_MWH + _SLACK_KWH:
            over.append({"kind": kind, "id": ident, "kwh": total, "mwh": mwh.get((kind, ident))})
    return over


def _inputs(
    conn: psycopg2.extensions.connection,
    schema: str,
    electricity: Source | None,
    instruments: Mapping[InstrumentKind, Source],
    year_starts: set[str],
) -> dict[str, dict[str, Any]]:
    """Per reporting-year start: the consumption, instruments, rates and residual mixes."""
    kinds: dict[str, list[Any]] = {
        kind: list(market.read_kind(conn, kind, source)) for kind, source in instruments.items()
    }
    mixes = [r for r in queries.read_factor_rows(conn, schema) if r.factor_set == RESIDUAL_MIX_SET]
    found = {}
    for start in year_starts:
        consumption = (
            [] if electricity is None else market.read_consumption(conn, electricity, schema, start)
        )
        found[start] = {
            "consumption": consumption,
            "certificates": kinds.get("certificates", []),
            "contracts": kinds.get("contracts", []),
            "supplier_rates": kinds.get("supplier_rates", []),
            "mixes": mixes,
        }
    return found


def _boundary(key: str, got: dict[str, Any]) -> Boundary:
    """The boundary's inputs (the inputs grouped by boundary once, kept in ``got``)."""
    if "by_boundary" not in got:
        by: dict[tuple[str, str], list[Any]] = defaultdict(list)
        for kind in ("consumption", "certificates", "contracts"):
            for item in got[kind]:
                by[(kind, boundary(item.market))].append(item)
        got["by_boundary"] = by
        got["facilities"] = facility_markets(
            (c.facility, c.market) for c in got["consumption"] if c.facility is not None
        )
        got["claims"] = first_claims(got["certificates"])
        got["holders"] = holders(got["certificates"], got["contracts"])
    by = got["by_boundary"]
    return Boundary(
        key,
        by.get(("consumption", key), []),
        by.get(("certificates", key), []),
        by.get(("contracts", key), []),
        got["supplier_rates"],
        got["mixes"],
        got["facilities"],
        got["claims"],
    )
