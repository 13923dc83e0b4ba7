"""Scope 2, market-based: the team's instruments allocated to its electricity consumption
(docs/methodology.md §10.3). Pure: the caller reads the consumption (the location-based
results, with their facility and supplier), the instruments and the factor book; this module
decides, for every kWh, which instrument or factor it is taken at, and which instruments are
refused and why.

The hierarchy (GHG Protocol Scope 2 Guidance, Table 6.3): certificates, then contracts, then
the supplier's rate, then the residual mix of the market, then the location-based grid
factor, flagged (the Guidance's last resort where no residual mix exists). An instrument that
fails a Scope 2 Quality Criterion (Guidance Table 7.1) is refused with a reason of its own,
never used. Over one call, an instrument is allocated at most its MWh: the caller allocates a
whole reporting year and market at once, and replaces what an earlier allocation of them
stored (the same instruments are never counted twice across runs).
"""

from __future__ import annotations

import datetime
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

from pipeline.methodology.book import FactorBook
from pipeline.model import ActivityId, Certificate, Consumption, Contract, SupplierRate

KWH_PER_MWH = 1000.0
RESIDUAL_MIX_SET = "residual_mix"
#: The US interconnects (Scope 2 Guidance, market boundaries for the US): each eGRID
#: subregion of the contiguous US in one of them. Alaska, Hawaii and Puerto Rico (AKGD, AKMS,
#: HIMS, HIOA, PRMS) are in none: their market is the subregion.
INTERCONNECTS: dict[str, tuple[str, ...]] = {
    "US-EASTERN": tuple(
        "FRCC MROE MROW NEWE NYCW NYLI NYUP RFCE RFCM RFCW SPNO SPSO SRMV SRMW SRSO SRTV "
        "SRVC".split()
    ),
    "US-WESTERN": ("AZNM", "CAMX", "NWPP", "RMPA"),
    "US-ERCOT": ("ERCT",),
}
INTERCONNECT_OF: dict[str, str] = {m: i for i, ms in INTERCONNECTS.items() for m in ms}
#: How an interconnect may be named (after ``US-`` and `` INTERCONNECT`` are dropped).
INTERCONNECT_NAMES = {"EASTERN": "US-EASTERN", "WESTERN": "US-WESTERN", "ERCOT": "US-ERCOT"}

#: How a pool of instruments (not retired for a facility) is shared among a market's
#: facilities: in activity order, each taking what it needs (``facility_first``: instruments
#: retired for a facility have gone to it before), or in proportion to what each still needs.
Sharing = Literal["facility_first", "pro_rata"]
#: What a kWh was taken at.
Basis = Literal["certificate", "contract", "supplier_rate", "residual_mix", "grid_fallback"]


@dataclass(frozen=True)
class Options:
    """The reporter's choices (docs/methodology.md §9, §10.3), with their defaults."""

    #: Years before the reporting year a vintage may end in (0: it must overlap the year).
    vintage_window_years: int = 0
    sharing: Sharing = "facility_first"
    #: Energy sources a certificate without a stated emission rate is taken at 0 for.
    renewable_sources: frozenset[str] = frozenset(
        {"wind", "solar", "hydro", "geothermal", "tidal", "wave", "marine"}
    )
    #: (month, day) of the first day of each reporting year, named by the calendar year it
    #: begins in (docs/methodology.md §4.1): (1, 1) for calendar years.
    year_start: tuple[int, int] = (1, 1)


@dataclass(frozen=True)
class Part:
    """kWh of one activity taken at one instrument or factor."""

    basis: Basis
    kwh: float
    kg_per_kwh: float
    instrument_id: ActivityId | None = None  # a certificate, contract or supplier rate
    factor_id: int | None = None  # the residual-mix row, or the grid factor of the fallback
    year_mismatch: bool = False  # a residual mix of another year (docs/methodology.md §4)

    @property
    def kg_co2e(self) -> float:
        return self.kwh * self.kg_per_kwh


@dataclass
class MarketResult:
    """An activity's market-based emissions: the sum of its parts."""

    activity_id: ActivityId
    year: int
    market: str
    parts: list[Part] = field(default_factory=list)
    #: The same kWh at the location-based grid factor, for the two totals side by side.
    location_kg_co2e: float = 0.0

    @property
    def kg_co2e(self) -> float:
        return math.fsum(p.kg_co2e for p in self.parts)

    @property
    def grid_fallback(self) -> bool:
        """Flag: some of it was taken at the grid factor, no residual mix being loaded."""
        return any(p.basis == "grid_fallback" for p in self.parts)


@dataclass(frozen=True)
class Refused:
    """An instrument refused (a dead letter of its own kind, docs/methodology.md §10.4)."""

    kind: Literal["certificates", "contracts", "supplier_rates"]
    instrument_id: ActivityId
    code: str
    message: str


@dataclass
class Allocation:
    """What ``allocate`` decided: one result per activity, the refused instruments, and the
    MWh of each usable instrument left over."""

    results: list[MarketResult]
    refused: list[Refused]
    unused_mwh: dict[tuple[str, ActivityId], float]


@dataclass
class _Supply:
    """A usable instrument with what is left of it, in kWh."""

    kind: Literal["certificates", "contracts"]
    instrument_id: ActivityId
    market: str
    facility: str | None
    years: frozenset[int]
    kg_per_kwh: float
    left: float


def _years(
    start: datetime.date | None, end: datetime.date | None, options: Options
) -> frozenset[int]:
    """The reporting years a vintage or delivery period may serve: those it overlaps, and the
    ``vintage_window_years`` after it ends."""
    assert start is not None and end is not None

    def year(day: datetime.date) -> int:
        return day.year - ((day.month, day.day) < options.year_start)

    return frozenset(range(year(start), year(end) + options.vintage_window_years + 1))


def _certificate(
    c: Certificate,
    markets: Mapping[str, frozenset[int]],
    facilities: Mapping[str, str],
    claimed: set[str],
    options: Options,
) -> _Supply | Refused:
    """A certificate made usable, or refused naming the Quality Criterion it fails."""

    def refused(code: str, message: str) -> Refused:
        return Refused("certificates", c.id, code, message)

    if c.mwh is None or not math.isfinite(c.mwh) or c.mwh <= 0:
        return refused("invalid_mwh", f"its MWh ({c.mwh}) is not a positive number")
    if not (c.retirement_id or "").strip():
        return refused("not_retired", "it has no retirement or cancellation id: claim it first")
    retirement = (c.retirement_id or "").strip()
    if retirement in claimed:
        return refused(
            "claimed_twice", f"retirement id {retirement} is claimed by another certificate"
        )
    claimed.add(retirement)
    if c.vintage_start is None or c.vintage_end is None or c.vintage_end < c.vintage_start:
        return refused("invalid_vintage", "its vintage needs a start and an end, in order")
    rate = c.emission_rate
    if rate is None:
        if (c.energy_source or "").strip().lower() not in options.renewable_sources:
            return refused(
                "no_emission_rate",
                f"a {c.energy_source!r} certificate needs its emission rate stated",
            )
        rate = 0.0
    if not math.isfinite(rate) or rate < 0:
        return refused("invalid_emission_rate", f"its emission rate {rate} is not ≥ 0")
    window = f"; vintage window {options.vintage_window_years} years"
    period = ("vintage", c.vintage_start, c.vintage_end, window)
    return _usable(
        "certificates", c, period, rate, c.mwh * KWH_PER_MWH, markets, facilities, options
    )


def _contract(
    c: Contract,
    markets: Mapping[str, frozenset[int]],
    facilities: Mapping[str, str],
    options: Options,
) -> _Supply | Refused:
    def refused(code: str, message: str) -> Refused:
        return Refused("contracts", c.id, code, message)

    if c.mwh is None or not math.isfinite(c.mwh) or c.mwh <= 0:
        return refused("invalid_mwh", f"its MWh ({c.mwh}) is not a positive number")
    if c.period_start is None or c.period_end is None or c.period_end < c.period_start:
        return refused("invalid_period", "its delivery period needs a start and an end, in order")
    rate = c.emission_rate
    if rate is None or not math.isfinite(rate) or rate < 0:
        return refused("invalid_emission_rate", f"its emission rate {rate} is not a number ≥ 0")
    period = ("delivery", c.period_start, c.period_end, "")
    return _usable("contracts", c, period, rate, c.mwh * KWH_PER_MWH, markets, facilities, options)


def _usable(
    kind: Literal["certificates", "contracts"],
    c: Certificate | Contract,
    period: tuple[str, datetime.date | None, datetime.date | None, str],
    rate: float,
    kwh: float,
    markets: Mapping[str, frozenset[int]],
    facilities: Mapping[str, str],
    options: Options,
) -> _Supply | Refused:
    """An instrument whose own fields are valid, made usable: refused unless its market
    boundary has consumption (``_market_check``) and its ``period`` (what it is called, its
    start and end, and a note for the refusal) serves a year with consumption there."""
    market = normalise_market(c.market)
    facility = (c.facility or "").strip() or None
    found = _market_check(kind, c.id, market, facility, markets, facilities)
    if found is not None:
        return found
    what, start, end, note = period
    years = _years(start, end, options)
    if not years & _served_years(market, markets):
        return Refused(
            kind,
            c.id,
            "vintage_outside_window",
            f"its {what} {start}..{end} serves no year with consumption "
            f"in {market} ({_listed(_served_years(market, markets))}{note})",
        )
    return _Supply(kind, c.id, market, facility, years, rate, kwh)


def _market_check(
    kind: Literal["certificates", "contracts"],
    ident: ActivityId,
    market: str,
    facility: str | None,
    markets: Mapping[str, frozenset[int]],
    facilities: Mapping[str, str],
) -> Refused | None:
    """Refused unless the instrument's market has consumption, and its facility (if named)
    consumes in that market (Quality Criterion: same market boundary)."""
    if not market:
        return Refused(kind, ident, "no_market", "it names no market")
    if facility is not None and not serves(market, facilities.get(facility, market)):
        return Refused(
            kind,
            ident,
            "other_market",
            f"it is from {market}, but facility {facility} consumes in {facilities[facility]}",
        )
    if not any(serves(market, m) for m in markets):
        known = ", ".join(sorted(markets)) or "none"
        return Refused(
            kind, ident, "other_market", f"it is from {market}, where nothing is consumed ({known})"
        )
    return None


def _served_years(market: str, markets: Mapping[str, frozenset[int]]) -> frozenset[int]:
    """The years with consumption in the markets an instrument of ``market`` serves."""
    found: set[int] = set()
    for m, years in markets.items():
        if serves(market, m):
            found |= years
    return frozenset(found)


def _listed(years: Iterable[int]) -> str:
    return ", ".join(str(y) for y in sorted(years))


def _draw(
    supply: _Supply,
    group: Sequence[int],
    need: list[float],
    parts: list[list[Part]],
    sharing: Sharing,
) -> None:
    """Takes what it can of ``supply`` for the consumption ``group`` (indexes into ``need``
    and ``parts``), in order or pro rata; never more than it has left."""
    basis: Basis = "certificate" if supply.kind == "certificates" else "contract"
    wanting = [i for i in group if need[i] > 0]
    if not wanting or supply.left <= 0:
        return
    shares: dict[int, float] = {}
    if sharing == "pro_rata":
        total = math.fsum(need[i] for i in wanting)
        available = min(supply.left, total)
        shares = {i: min(need[i], available * need[i] / total) for i in wanting}
    else:
        left = supply.left
        for i in wanting:
            shares[i] = min(need[i], left)
            left -= shares[i]
    for i, kwh in shares.items():
        if kwh <= 0:
            continue
        need[i] -= kwh
        supply.left = max(supply.left - kwh, 0.0)
        parts[i].append(Part(basis, kwh, supply.kg_per_kwh, instrument_id=supply.instrument_id))


def _supplier_rates(
    rates: Iterable[SupplierRate], refused: list[Refused]
) -> dict[tuple[str, int], SupplierRate]:
    """The usable rates by (supplier, year); the others refused (Quality Criterion: a rate
    must account for the instruments the supplier sold to others)."""
    usable: dict[tuple[str, int], SupplierRate] = {}
    for r in sorted(rates, key=lambda r: str(r.id)):
        name = (r.supplier or "").strip().casefold()
        rate = r.kg_co2e_per_kwh

        def refuse(code: str, message: str, r: SupplierRate = r) -> None:
            refused.append(Refused("supplier_rates", r.id, code, message))

        if not name or r.year is None:
            refuse("invalid_supplier_rate", "it needs a supplier and a year")
        elif rate is None or not math.isfinite(rate) or rate < 0:
            refuse("invalid_emission_rate", f"its rate {rate} is not a number ≥ 0")
        elif r.accounts_for_sold_instruments is not True:
            refuse(
                "not_net_of_sold_instruments",
                "it does not account for the instruments the supplier sold to others: the "
                "residual mix applies instead",
            )
        elif (name, r.year) in usable:
            refuse("duplicate_supplier_rate", f"{r.supplier} {r.year} has another rate")
        else:
            usable[(name, r.year)] = r
    return usable


def allocate(
    consumption: Iterable[Consumption],
    certificates: Iterable[Certificate],
    contracts: Iterable[Contract],
    supplier_rates: Iterable[SupplierRate],
    book: FactorBook,
    options: Options = Options(),
    facilities: Mapping[str, str] | None = None,
) -> Allocation:
    """Every activity's market-based emissions, by the hierarchy (module docstring); the
    instruments refused, each with its reason; and the MWh left of each usable instrument.
    ``facilities``: each facility's market over all the consumption, when ``consumption`` is
    one market boundary's only (an instrument retired for a facility of another market is
    refused then too)."""
    items = sorted(
        consumption, key=lambda c: (c.year, c.market, c.facility or "", str(c.activity_id))
    )
    markets: dict[str, set[int]] = {}
    sites: dict[str, str] = dict(facilities or {})
    for c in items:
        markets.setdefault(c.market, set()).add(c.year)
        if c.facility is not None:
            sites.setdefault(c.facility, c.market)
    years = {m: frozenset(y) for m, y in markets.items()}
    refused: list[Refused] = []
    supplies: list[_Supply] = []
    claimed: set[str] = set()
    for cert in sorted(certificates, key=lambda c: str(c.id)):
        _keep(_certificate(cert, years, sites, claimed, options), supplies, refused)
    for contract in sorted(contracts, key=lambda c: str(c.id)):
        _keep(_contract(contract, years, sites, options), supplies, refused)
    supplies.sort(key=lambda s: (min(s.years), str(s.instrument_id)))
    rates = _supplier_rates(supplier_rates, refused)
    need = [c.kwh for c in items]
    parts: list[list[Part]] = [[] for _ in items]
    groups: dict[tuple[int, str], list[int]] = {}
    for i, c in enumerate(items):
        groups.setdefault((c.year, c.market), []).append(i)
    # Instruments of the consumption's own market first, then those of its interconnect
    # (US, §10.3), over all the interconnect's markets at once; certificates before contracts.
    wide: dict[tuple[int, str], list[int]] = {}
    for i, c in enumerate(items):
        if INTERCONNECT_OF.get(c.market) is not None:
            wide.setdefault((c.year, INTERCONNECT_OF[c.market]), []).append(i)
    for kind in ("certificates", "contracts"):
        for (year, market), group in [*sorted(groups.items()), *sorted(wide.items())]:
            eligible = [
                s for s in supplies if s.kind == kind and s.market == market and year in s.years
            ]
            for s in eligible:  # retired for a facility: to that facility only, first
                if s.facility is not None:
                    own = [i for i in group if items[i].facility == s.facility]
                    _draw(s, own, need, parts, options.sharing)
            for s in eligible:
                if s.facility is None:
                    _draw(s, group, need, parts, options.sharing)
    for i, c in enumerate(items):
        if need[i] > 0:
            parts[i].append(_rest(c, need[i], rates, book))
    results = [
        MarketResult(c.activity_id, c.year, c.market, parts[i], c.kwh * c.grid_factor)
        for i, c in enumerate(items)
    ]
    unused: dict[tuple[str, ActivityId], float] = {
        (s.kind, s.instrument_id): s.left / KWH_PER_MWH for s in supplies if s.left > 0
    }
    return Allocation(results, refused, unused)


def normalise_market(market: str | None) -> str:
    """A market as instruments and consumption are matched by: upper-cased, and a US
    interconnect by its one name (``EASTERN``, ``Eastern Interconnect`` → ``US-EASTERN``)."""
    found = (market or "").strip().upper()
    bare = found.removeprefix("US-").removeprefix("US ").removesuffix(" INTERCONNECT").strip()
    return INTERCONNECT_NAMES.get(bare, found)


def serves(instrument_market: str, consumption_market: str) -> bool:
    """Whether an instrument of one market may cover consumption in another: the same
    market, or (US) the interconnect of the consumption's eGRID subregion."""
    return instrument_market == consumption_market or (
        INTERCONNECT_OF.get(consumption_market) == instrument_market
    )


def boundary(market: str | None) -> str:
    """The market boundary a market belongs to (docs/methodology.md §10.3): the unit the
    allocation groups consumption and instruments by. A US eGRID subregion's interconnect
    (its instruments may be of the subregion or of the interconnect), else the market."""
    found = normalise_market(market)
    return INTERCONNECT_OF.get(found, found)


def _keep(found: _Supply | Refused, supplies: list[_Supply], refused: list[Refused]) -> None:
    if isinstance(found, Refused):
        refused.append(found)
    else:
        supplies.append(found)


def _rest(
    c: Consumption,
    kwh: float,
    rates: Mapping[tuple[str, int], SupplierRate],
    book: FactorBook,
) -> Part:
    """The kWh no certificate or contract covers: the supplier's rate, else the residual mix
    (the year rule of §4), else the grid factor, flagged."""
    rate = rates.get(((c.supplier or "").strip().casefold(), c.year))
    if rate is not None and rate.kg_co2e_per_kwh is not None:
        return Part("supplier_rate", kwh, rate.kg_co2e_per_kwh, instrument_id=rate.id)
    if book.has(RESIDUAL_MIX_SET, c.market):
        row, mismatch = book.select(RESIDUAL_MIX_SET, c.market, c.year)
        return Part("residual_mix", kwh, row.value, factor_id=row.id, year_mismatch=mismatch)
    return Part("grid_fallback", kwh, c.grid_factor, factor_id=c.grid_factor_id)
