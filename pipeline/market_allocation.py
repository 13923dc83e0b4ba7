"""One market boundary's allocation, as the run's stage and ``audit.verify`` both make it:
the tested ``pipeline.methodology.market.allocate`` with what a boundary adds around it (the
retirement ids claimed over all boundaries, what other boundaries' stored lines already hold
of an instrument), turned into the stored lines (``pipeline.store.market_results``). Pure:
no Beam, no database.
"""

from __future__ import annotations

import dataclasses
import math
from collections import defaultdict
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pipeline.methodology import FactorBook
from pipeline.methodology.market import (
    KWH_PER_MWH,
    MarketResult,
    Options,
    Refused,
    allocate,
    boundary,
)
from pipeline.model import Certificate, Consumption, Contract, FactorRow, InstrumentKind
from pipeline.store.market_results import Choices, Line, digest

#: Below this many kWh an instrument is spent (float sums of its parts).
_SPENT_KWH = 1e-6
_KIND = {"certificate": "certificates", "contract": "contracts", "supplier_rate": "supplier_rates"}
#: What other boundaries' stored lines hold: (kind, id) → (kWh, those boundaries).
Taken = Mapping[tuple[str, str], tuple[float, list[str]]]
#: The boundaries an instrument is of in a run's inputs (its market's): (kind, id) → keys.
Holders = Mapping[tuple[str, str], Collection[str]]


@dataclass
class Boundary:
    """One boundary's inputs, as ``CoGroupByKey`` gives them, with what all boundaries share."""

    key: str
    consumption: list[Consumption]
    certificates: list[Certificate]
    contracts: list[Contract]
    rates: Sequence[Any]
    mixes: Sequence[FactorRow]
    facilities: Mapping[str, str]
    claims: Mapping[str, str]

    def digests(self) -> tuple[str, str]:
        """What its lines rest on: its instruments (and the supplier rates), its consumption."""
        instruments = digest([*self.certificates, *self.contracts, *self.rates])
        return instruments, digest(self.consumption)

    def instruments(self) -> list[tuple[str, str]]:
        return [("certificates", str(c.id)) for c in self.certificates] + [
            ("contracts", str(c.id)) for c in self.contracts
        ]


def holders(
    certificates: Iterable[Certificate], contracts: Iterable[Contract]
) -> dict[tuple[str, str], list[str]]:
    """The boundaries each instrument is of in these inputs (one, unless its id repeats)."""
    found: dict[tuple[str, str], set[str]] = defaultdict(set)
    for c in certificates:
        found[("certificates", str(c.id))].add(boundary(c.market))
    for d in contracts:
        found[("contracts", str(d.id))].add(boundary(d.market))
    return {ident: sorted(keys) for ident, keys in found.items()}


def taken_elsewhere(
    key: str, held: Mapping[tuple[str, str], Mapping[str, float]], of: Holders
) -> dict[tuple[str, str], tuple[float, list[str]]]:
    """What the stored lines of boundaries other than ``key`` hold of each instrument
    (``held``: kWh by boundary), counting only a boundary the instrument is still of in this
    run's inputs (``of``). One it has left (its market corrected) holds it only until this
    same run rewrites that boundary: counting it would refuse the instrument in its new
    boundary as allocated already, while the old one drops it, leaving it allocated nowhere."""
    taken = {}
    for ident, by in held.items():
        counted = of.get(ident, ())
        still = {where: kwh for where, kwh in by.items() if where != key and where in counted}
        if still:
            taken[ident] = (sum(still.values()), sorted(still))
    return taken


def retirement_key(c: Certificate) -> str:
    return (c.retirement_id or "").strip()


def first_claims(certificates: Iterable[Certificate]) -> dict[str, str]:
    """Each retirement id's first certificate (by id as text), over all boundaries."""
    found: dict[str, str] = {}
    for c in certificates:
        key = retirement_key(c)
        if key and (key not in found or str(c.id) < found[key]):
            found[key] = str(c.id)
    return found


def facility_markets(sites: Iterable[tuple[str, str]]) -> dict[str, str]:
    """Each facility's market (its first, in order), from (facility, market) pairs."""
    found: dict[str, str] = {}
    for facility, where in sorted(sites):
        found.setdefault(facility, where)
    return found


def options_of(choices: Choices) -> Options:
    month, day = (int(x) for x in choices.year_start.split("-"))
    return Options(
        vintage_window_years=choices.vintage_window_years,
        sharing=choices.sharing,  # type: ignore[arg-type]
        year_start=(month, day),
    )


def allocate_boundary(
    b: Boundary, taken: Taken, choices: Choices
) -> tuple[list[Line], list[tuple[str, str, str, str]]]:
    """The boundary's lines and its refused instruments (kind, id, code, reason); supplier
    rates refused are not among them (they are kept once, for all boundaries)."""
    refused: list[Refused] = []
    kept: list[Certificate] = []
    for c in sorted(b.certificates, key=lambda c: str(c.id)):
        first = b.claims.get(retirement_key(c))
        if first is not None and first != str(c.id):
            message = f"retirement id {retirement_key(c)} is claimed by certificate {first}"
            refused.append(Refused("certificates", c.id, "claimed_twice", message))
        else:
            kept.append(c)
    contracts = sorted(b.contracts, key=lambda c: str(c.id))
    certs = _left("certificates", kept, taken, refused)
    deals = _left("contracts", contracts, taken, refused)
    markets = {c.market for c in b.consumption}
    residual = [r for r in b.mixes if r.key in markets]
    done = allocate(
        b.consumption,
        certs,
        deals,
        b.rates,
        FactorBook.from_rows(residual),
        options_of(choices),
        b.facilities,
    )
    who = {str(c.activity_id): (c.facility, c.supplier) for c in b.consumption}
    lines = lines_of(b.key, done.results, who, choices)
    mine = [r for r in done.refused if r.kind != "supplier_rates"]
    return lines, dead_letters([*refused, *mine])


def _left(kind: InstrumentKind, items: list[Any], taken: Taken, over: list[Refused]) -> list[Any]:
    """``items`` with what other boundaries' stored lines hold of each taken off; those with
    nothing left refused (``over_allocated``)."""
    kept = []
    for item in items:
        used = taken.get((kind, str(item.id)))
        mwh = item.mwh
        if used is None or mwh is None or not math.isfinite(mwh):
            kept.append(item)
            continue
        rest = mwh * KWH_PER_MWH - used[0]
        if rest <= _SPENT_KWH:
            where = ", ".join(used[1])
            message = (
                f"its {mwh:g} MWh are all allocated in {where} already: correct its market "
                "there, or retire another"
            )
            over.append(Refused(kind, item.id, "over_allocated", message))
        else:
            kept.append(dataclasses.replace(item, mwh=rest / KWH_PER_MWH))
    return kept


def refused_rates(rates: Sequence[Any]) -> list[tuple[str, str, str, str]]:
    """The supplier rates refused (kept once, for all boundaries)."""
    return dead_letters(allocate([], [], [], rates, FactorBook.from_rows([])).refused)


def lines_of(
    boundary: str,
    results: Iterable[MarketResult],
    who: Mapping[str, tuple[str | None, str | None]],
    choices: Choices,
) -> list[Line]:
    """The lines of ``results`` (``who``: activity id as text → its facility and supplier)."""
    found: list[Line] = []
    for r in results:
        ident = str(r.activity_id)
        facility, supplier = who.get(ident, (None, None))
        for n, p in enumerate(r.parts, start=1):
            found.append(
                Line(
                    boundary,
                    r.year,
                    ident,
                    n,
                    r.market,
                    facility,
                    supplier,
                    p.basis,
                    _KIND.get(p.basis),
                    None if p.instrument_id is None else str(p.instrument_id),
                    p.factor_id,
                    p.kwh,
                    p.kg_per_kwh,
                    p.kg_co2e,
                    p.basis == "grid_fallback",
                    p.year_mismatch,
                    choices.year_start,
                    choices.vintage_window_years,
                    choices.sharing,
                )
            )
    return found


def dead_letters(refused: Iterable[Refused]) -> list[tuple[str, str, str, str]]:
    return [(r.kind, str(r.instrument_id), r.code, r.message) for r in refused]
