"""Business air travel, distance-based, Scope 3 category 6 (docs/methodology.md §3).

kg CO2e = one-way distance × passengers × (2 if return) × DESNZ factor (kg CO2e per
passenger.km), with radiative forcing unless the caller turns it off.

- Distance: ``distance_km`` when given, else the great-circle (haversine) distance between the
  airports in ``airportsdata`` (R = 6371.0088 km). DESNZ factors already carry the 8% uplift,
  so none is added. An unknown airport without a given distance is an error, never a guess.
- Haul by territory, as DESNZ defines it: both ends in the UK or Crown Dependencies →
  ``domestic``; one end there → the other end's band in the DESNZ haul table; neither →
  ``international``. The haul needs both airports' territories, so an unknown airport is an
  error even when a distance is given: without its country the flight could be domestic,
  short-haul, long-haul or international, and those factors differ by up to a factor of four.
- Cabin class: stripped, lower-cased, spaces and hyphens → underscores. A class DESNZ does not
  publish for the haul (any class on domestic flights; premium economy and first on short-haul)
  uses the haul's ``average`` row and sets ``class_substituted``. The result's ``cabin_class``
  is the class as booked; ``factor_key`` shows the row used.
- ``return_trip`` must be given: guessing one-way would halve a return flight silently.
- Plausibility: more passengers than ``Limits.max_passengers`` on one booking, or a given
  one-way distance beyond ``Limits.max_distance_km``, is a data error (``implausible_…``). A
  computed distance needs no bound: on a sphere of ``EARTH_RADIUS_KM`` it is at most about
  20,015 km.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping
from typing import Any

from pipeline.factors import CABIN_CLASSES, air_key, load_haul_definitions
from pipeline.methodology.book import FactorBook
from pipeline.methodology.common import (
    LONGEST_CODE,
    activity_year,
    amount_times_factor,
    at_most,
    clean_code,
    country_alpha3,
    non_negative,
    quoted,
    select,
    shown,
)
from pipeline.model import DEFAULT_LIMITS, AirTravelActivity, EmissionResult, InputError, Limits

METHOD = "distance_based_desnz"
AIR_SET = "desnz_air"
#: IUGG mean Earth radius, as docs/methodology.md §3.2 prescribes.
EARTH_RADIUS_KM = 6371.0088
#: The United Kingdom and the Crown Dependencies (Guernsey, Isle of Man, Jersey), ISO alpha-2.
UK_TERRITORIES = frozenset({"GB", "GG", "IM", "JE"})
#: Territories without an ISO 3166 code in pycountry, as the DESNZ haul table spells them.
EXTRA_ALPHA3 = {"XK": "XKX"}


@functools.lru_cache(maxsize=1)
def airports() -> Mapping[str, Mapping[str, Any]]:
    """The IATA airport table, loaded on first use (not at import) and then kept."""
    import airportsdata

    return airportsdata.load("IATA")


@functools.lru_cache(maxsize=1)
def shipped_haul_definitions() -> Mapping[str, str]:
    """The shipped DESNZ territory → haul table, read once."""
    return load_haul_definitions()


def haversine_km(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Great-circle distance in km on a sphere of radius ``EARTH_RADIUS_KM``."""
    phi1, phi2 = math.radians(lat1), math.radians(lat2)
    dphi = phi2 - phi1
    dlmb = math.radians(lon2 - lon1)
    a = math.sin(dphi / 2) ** 2 + math.cos(phi1) * math.cos(phi2) * math.sin(dlmb / 2) ** 2
    return 2 * EARTH_RADIUS_KM * math.asin(min(1.0, math.sqrt(a)))


def normalise_cabin_class(cabin_class: str | None) -> str:
    """``Premium Economy`` → ``premium_economy``; refuses a missing or unknown class."""
    if cabin_class is None or not cabin_class.strip():
        raise InputError("missing_cabin_class", "The flight has no cabin class.")
    text = cabin_class.strip()
    if len(text) <= LONGEST_CODE:
        text = text.lower().replace(" ", "_").replace("-", "_")
    if text not in CABIN_CLASSES:
        raise InputError(
            "unknown_cabin_class",
            f"The cabin class {quoted(cabin_class)} is not one of "
            f"{', '.join(sorted(CABIN_CLASSES))}.",
        )
    return text


def _airport(code: str | None, end: str, has_distance: bool) -> Mapping[str, Any]:
    text = clean_code(code)
    if text is None:
        raise InputError(f"missing_{end}", f"The flight has no {end} airport.")
    airport = airports().get(text)
    if airport is None:
        why = (
            "its country, and so the DESNZ haul, cannot be determined even though a distance "
            "was given"
            if has_distance
            else "no distance can be computed"
        )
        raise InputError(
            "unknown_airport",
            f"The {end} {quoted(code)} is not a known IATA airport code: {why}.",
        )
    return airport


def _passengers(value: object, limits: Limits) -> int:
    number = non_negative(value, "number of passengers", "passengers")
    if not number.is_integer():
        raise InputError(
            "invalid_passengers",
            f"The number of passengers {quoted(value)} is not a whole number.",
        )
    at_most(
        number,
        limits.max_passengers,
        "implausible_passengers",
        lambda: (
            f"The number of passengers {shown(number)} is above the plausibility bound of "
            f"{shown(limits.max_passengers)} for one booking (--max-passengers)."
        ),
    )
    return int(number)


def _distance(
    activity: AirTravelActivity, a: Mapping[str, Any], b: Mapping[str, Any], limits: Limits
) -> float:
    if activity.distance_km is not None:
        given = non_negative(activity.distance_km, "given flight distance", "distance")
        at_most(
            given,
            limits.max_distance_km,
            "implausible_distance",
            lambda: (
                f"The given flight distance {shown(given)} km is above the plausibility "
                f"bound of {shown(limits.max_distance_km)} km for one way (--max-distance-km)."
            ),
        )
        return given
    return haversine_km(float(a["lat"]), float(a["lon"]), float(b["lat"]), float(b["lon"]))


def haul_for(origin_country: str, destination_country: str, hauls: Mapping[str, str]) -> str:
    """The DESNZ haul of a flight between two territories (ISO alpha-2, as airportsdata)."""
    origin_uk = origin_country.upper() in UK_TERRITORIES
    destination_uk = destination_country.upper() in UK_TERRITORIES
    if origin_uk and destination_uk:
        return "domestic"
    if not origin_uk and not destination_uk:
        return "international"
    other = destination_country if origin_uk else origin_country
    iso3 = EXTRA_ALPHA3.get(other.upper()) or country_alpha3(other)
    haul = None if iso3 is None else hauls.get(iso3)
    if haul is None or haul == "domestic":
        raise InputError(
            "unknown_haul",
            f"The territory {quoted(other)} is not in the DESNZ haul table, so the haul of this "
            "UK flight cannot be determined.",
        )
    return haul


def calculate_air_travel(
    activity: AirTravelActivity,
    book: FactorBook,
    *,
    radiative_forcing: bool = True,
    limits: Limits = DEFAULT_LIMITS,
) -> EmissionResult:
    """kg CO2e of a flight = distance × passengers × (2 if return) × factor; Scope 3 cat 6."""
    has_distance = activity.distance_km is not None
    origin = _airport(activity.origin, "origin", has_distance)
    destination = _airport(activity.destination, "destination", has_distance)
    cabin = normalise_cabin_class(activity.cabin_class)
    passengers = _passengers(activity.passengers, limits)
    if activity.return_trip is None:
        raise InputError(
            "missing_return_trip",
            "The flight does not say whether it is one-way or return.",
        )
    year = activity_year(activity.activity_date)
    distance = _distance(activity, origin, destination, limits)

    hauls: Mapping[str, str] = (
        shipped_haul_definitions() if book.haul_definitions is None else book.haul_definitions
    )
    haul = haul_for(str(origin["country"]), str(destination["country"]), hauls)

    key = air_key(haul, cabin, radiative_forcing)
    substituted = not book.has(AIR_SET, key)
    if substituted:
        key = air_key(haul, "average", radiative_forcing)
    row, mismatch = select(book, AIR_SET, key, year)

    passenger_km = distance * passengers * (2 if activity.return_trip else 1)
    return EmissionResult(
        activity_type="air_travel",
        activity_id=activity.id,
        scope=3,
        category=6,
        method=METHOD,
        **amount_times_factor(passenger_km, "passenger.km", row),
        year_mismatch=mismatch,
        class_substituted=substituted,
        distance_km=distance,
        haul=haul,
        cabin_class=cabin,
        radiative_forcing=radiative_forcing,
    )
