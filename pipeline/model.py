"""Typed records that flow through the pipeline: activities, factors, results and dead letters.

Standard library only: every other module imports this one, and it imports nothing of ours.
"""

from __future__ import annotations

import dataclasses
import datetime
from dataclasses import dataclass
from typing import Literal

#: An activity's primary key: a big integer, or a UUID in its canonical text form.
ActivityId = int | str

ActivityType = Literal["electricity", "spend", "air_travel"]
ACTIVITY_TYPES: tuple[ActivityType, ...] = ("electricity", "spend", "air_travel")


@dataclass(frozen=True)
class ElectricityActivity:
    """Purchased electricity (Scope 2, location-based)."""

    id: ActivityId
    quantity: float | None
    unit: str | None  # Wh, kWh, MWh, GWh, MJ, GJ
    region: str | None  # eGRID subregion acronym, or a country ISO code (alpha-2 or alpha-3)
    country: str | None  # optional ISO country code, the fallback when region is unknown
    activity_date: datetime.date | None


@dataclass(frozen=True)
class SpendActivity:
    """Purchased goods and services by spend (Scope 3 category 1)."""

    id: ActivityId
    amount: float | None
    currency: str | None  # ISO 4217
    naics_code: str | None  # NAICS 2017, 6 digits
    activity_date: datetime.date | None


@dataclass(frozen=True)
class AirTravelActivity:
    """Business air travel (Scope 3 category 6)."""

    id: ActivityId
    origin: str | None  # IATA airport code
    destination: str | None  # IATA airport code
    cabin_class: str | None  # average, economy, premium_economy, business, first
    passengers: int | None
    return_trip: bool | None
    activity_date: datetime.date | None
    distance_km: float | None = None  # a known one-way distance; overrides the airports'


Activity = ElectricityActivity | SpendActivity | AirTravelActivity

ACTIVITY_CLASSES: dict[ActivityType, type] = {
    "electricity": ElectricityActivity,
    "spend": SpendActivity,
    "air_travel": AirTravelActivity,
}


def activity_fields(activity_type: ActivityType) -> tuple[str, ...]:
    """Column names of an activity type, in declaration order (``id`` first)."""
    return tuple(f.name for f in dataclasses.fields(ACTIVITY_CLASSES[activity_type]))


# --- Scope 2 market-based: the team's contractual instruments (docs/methodology.md §10) ---

#: What the market-based method allocates, each a table or query of the sources file.
InstrumentKind = Literal["certificates", "contracts", "supplier_rates"]
INSTRUMENT_KINDS: tuple[InstrumentKind, ...] = ("certificates", "contracts", "supplier_rates")


@dataclass(frozen=True)
class Certificate:
    """An energy attribute certificate (REC, Guarantee of Origin, I-REC, REGO) the team holds."""

    id: ActivityId
    mwh: float | None
    energy_source: str | None  # wind, solar, hydro, nuclear, gas, ...
    vintage_start: datetime.date | None  # the generation period it certifies
    vintage_end: datetime.date | None
    market: str | None  # a country code, or a US eGRID subregion or interconnect
    retirement_id: str | None  # the registry's retirement or cancellation id
    facility: str | None  # the facility it was retired for (optional)
    emission_rate: float | None  # kg CO2e/kWh (optional: 0 for a renewable source)


@dataclass(frozen=True)
class Contract:
    """A power purchase agreement or other direct contract: MWh delivered in a period."""

    id: ActivityId
    mwh: float | None
    period_start: datetime.date | None
    period_end: datetime.date | None
    emission_rate: float | None  # kg CO2e/kWh of the contracted generation
    market: str | None
    facility: str | None  # the facility it supplies (optional)


@dataclass(frozen=True)
class SupplierRate:
    """A supplier's (or tariff's) emission rate for a year."""

    id: ActivityId
    supplier: str | None  # the supplier or tariff, as electricity activities name it
    year: int | None
    kg_co2e_per_kwh: float | None
    # Whether the rate already accounts for the instruments the supplier sold to others
    # (Scope 2 Quality Criteria): a rate that does not is refused.
    accounts_for_sold_instruments: bool | None


@dataclass(frozen=True)
class Consumption:
    """One electricity activity as the allocation sees it: its location-based result's kWh,
    market (its region), reporting year, and grid factor (the fallback), with the optional
    facility and supplier of the sources mapping."""

    activity_id: ActivityId
    kwh: float
    market: str
    year: int
    grid_factor: float  # kg CO2e/kWh of the location-based result
    grid_factor_id: int | None = None
    facility: str | None = None
    supplier: str | None = None


INSTRUMENT_CLASSES: dict[InstrumentKind, type] = {
    "certificates": Certificate,
    "contracts": Contract,
    "supplier_rates": SupplierRate,
}
#: Fields an instrument mapping may leave out (NULL), by kind.
OPTIONAL_INSTRUMENT_FIELDS: dict[InstrumentKind, frozenset[str]] = {
    "certificates": frozenset({"facility", "emission_rate"}),
    "contracts": frozenset({"facility"}),
    "supplier_rates": frozenset(),
}
#: Fields an electricity mapping may add for the market-based method (not the location-based
#: calculation's input: they do not change its results or their fingerprints).
MARKET_FIELDS: tuple[str, ...] = ("facility", "supplier")


@dataclass(frozen=True)
class FactorRow:
    """One row of ``emission_factors``: a published value with where it came from.

    ``value`` is in ``unit`` (for example ``kg CO2e/kWh``); ``kg_co2``, ``kg_ch4_co2e`` and
    ``kg_n2o_co2e`` are the per-gas split in the same unit, where the publisher gives it.
    Non-emission reference series (exchange rates, CPI) are rows too, so that every number a
    result depends on is stored, versioned and referenced by id.
    """

    factor_set: str  # e.g. egrid_subregion, desnz_uk_electricity, country_grid, epa_sef, ...
    key: str  # e.g. CAMX, GBR, 334111, long-haul|business|rf
    year: int
    value: float
    unit: str
    source: str
    edition: str
    source_ref: str  # the row, cell or id in the published file
    kg_co2: float | None = None
    kg_ch4_co2e: float | None = None
    kg_n2o_co2e: float | None = None
    basis: str | None = None  # combustion | lifecycle (electricity)
    gwp_set: str | None = None  # e.g. AR5-100
    id: int | None = None  # database id, set once loaded


@dataclass(frozen=True)
class EmissionResult:
    """One computed result; everything needed to recompute it by hand.

    ``kg_co2e == activity_amount * factor_value`` where ``activity_amount`` is the activity
    expressed in the factor's unit (kWh, 2022 USD, passenger.km).
    """

    activity_type: ActivityType
    activity_id: ActivityId
    scope: int
    category: int | None
    kg_co2e: float
    kg_co2: float | None
    kg_ch4_co2e: float | None
    kg_n2o_co2e: float | None
    method: str
    activity_amount: float
    activity_unit: str
    factor_id: int | None
    factor_set: str
    factor_key: str
    factor_year: int
    factor_value: float
    factor_unit: str
    factor_source: str
    factor_edition: str
    gwp_set: str | None
    basis: str | None = None
    region_level: str | None = None  # subregion | country
    fallback: str | None = None  # country (an unknown subregion fell back to its country)
    year_mismatch: bool = False
    class_substituted: bool = False
    distance_km: float | None = None
    haul: str | None = None
    cabin_class: str | None = None
    radiative_forcing: bool | None = None
    exchange_rate: float | None = None  # USD per unit of the activity's currency
    fx_factor_id: int | None = None
    cpi_deflator: float | None = None  # CPI(2022) / CPI(activity year)
    cpi_factor_id: int | None = None  # the activity year's CPI row
    cpi_base_factor_id: int | None = None  # the 2022 CPI row


@dataclass(frozen=True)
class Limits:
    """Upper bounds of plausibility for one activity (docs/methodology.md §6.3).

    A finite value can still be absurd (1e300 kWh, 2^31 − 1 passengers): it gives a finite but
    meaningless result that swamps every total, and two of them overflow a sum. Each default
    lies well beyond anything one real activity reaches, so that only data errors are refused:

    - ``max_kwh`` 1e12 kWh (1,000 TWh), after unit conversion: about 30 times the yearly
      consumption of the largest corporate buyers (about 30 TWh), more than any country but
      the four largest (China, the US, India, Russia) uses in a year;
    - ``max_spend_usd`` 1e11 2022 USD, after conversion, so that one bound means the same
      money in every currency: above the largest purchase orders ever announced (aircraft
      orders of about 7e10 USD at list price);
    - ``max_passengers`` 1,000 on one booking: no aircraft seats as many (an A380 is
      certified for 853);
    - ``max_distance_km`` 20,037.5 km for a given one-way distance: half the Earth's
      equatorial circumference, which no two points on it exceed along the surface.
    """

    max_kwh: float = 1e12
    max_spend_usd: float = 1e11
    max_passengers: int = 1_000
    max_distance_km: float = 20_037.5


DEFAULT_LIMITS = Limits()


@dataclass(frozen=True)
class ErrorRecord:
    """A dead letter: an activity that could not be calculated, and why."""

    activity_type: ActivityType
    activity_id: ActivityId
    reason_code: str  # short, stable: missing_quantity, unknown_unit, unknown_region, ...
    reason: str  # a sentence a person understands
    input_repr: str  # the activity as read, for the record
    activity_version: int | None = None  # the row version it was read at (PostgreSQL xmin)


class InputError(ValueError):
    """Raised by the calculation for input it cannot or must not calculate."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
