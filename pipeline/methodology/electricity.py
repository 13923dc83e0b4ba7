"""Purchased electricity, GHG Protocol Scope 2 location-based (docs/methodology.md §1).

Factor selection, most specific first:

1. ``region`` is an eGRID subregion acronym → ``egrid_subregion`` (region level ``subregion``).
2. ``region`` is a country code (ISO alpha-2 or alpha-3, any case) → the country's factor:
   DESNZ for the UK, the eGRID US total for the US, otherwise the lifecycle country intensity
   (region level ``country``).
3. ``region`` is neither (or missing) but ``country`` is a known country → that country's
   factor, flagged ``fallback="country"``.
4. Anything else is an error; there is no global average.

``region`` wins over ``country`` when both are usable. A known country with no factor in any
set (for example Antarctica) is an error too. The factor year follows the year rule in
``book.select_year`` and any difference is flagged ``year_mismatch``. More kWh than
``Limits.max_kwh`` in one activity is a data error (``implausible_quantity``), not a result.
"""

from __future__ import annotations

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
from pipeline.model import (
    DEFAULT_LIMITS,
    ElectricityActivity,
    EmissionResult,
    FactorRow,
    InputError,
    Limits,
)

METHOD = "scope2_location_based"

#: kWh per unit; matched case-insensitively (1 kWh = 3.6 MJ exactly).
KWH_PER_UNIT = {
    "wh": 1e-3,
    "kwh": 1.0,
    "mwh": 1e3,
    "gwh": 1e6,
    "mj": 1 / 3.6,
    "gj": 1e3 / 3.6,
}


def to_kwh(quantity: object, unit: str | None) -> float:
    """The quantity in kWh; refuses a missing, negative or non-finite quantity or a bad unit."""
    number = non_negative(quantity, "electricity quantity", "quantity")
    if unit is None or not unit.strip():
        raise InputError("missing_unit", "The electricity quantity has no unit.")
    text = unit.strip()
    per_unit = None if len(text) > LONGEST_CODE else KWH_PER_UNIT.get(text.lower())
    if per_unit is None:
        raise InputError(
            "unknown_unit",
            f"The unit {quoted(unit)} is not an energy unit this pipeline knows "
            "(Wh, kWh, MWh, GWh, MJ, GJ).",
        )
    return number * per_unit


def _country_factor(book: FactorBook, iso3: str, year: int) -> tuple[FactorRow, bool]:
    """The country-level row: DESNZ for the UK, eGRID US total for the US, else lifecycle."""
    if iso3 == "GBR":
        return select(book, "desnz_uk_electricity", "GBR", year)
    if iso3 == "USA":
        return select(book, "egrid_us", "USA", year)
    if not book.has("country_grid", iso3):
        raise InputError(
            "no_country_factor",
            f"There is no grid intensity for country {iso3} in the shipped country data.",
        )
    return select(book, "country_grid", iso3, year)


def calculate_electricity(
    activity: ElectricityActivity, book: FactorBook, *, limits: Limits = DEFAULT_LIMITS
) -> EmissionResult:
    """kg CO2e of purchased electricity = kWh × grid factor; Scope 2, no category."""
    kwh = to_kwh(activity.quantity, activity.unit)
    at_most(
        kwh,
        limits.max_kwh,
        "implausible_quantity",
        lambda: (
            f"The electricity quantity {activity.quantity!r} {str(activity.unit).strip()} "
            f"is {shown(kwh)} kWh, above the plausibility bound of "
            f"{shown(limits.max_kwh)} kWh for one activity (--max-kwh)."
        ),
    )
    year = activity_year(activity.activity_date)
    region = clean_code(activity.region)
    fallback: str | None = None

    if region is not None and book.has("egrid_subregion", region):
        row, mismatch = select(book, "egrid_subregion", region, year)
        level = "subregion"
    else:
        iso3 = country_alpha3(region)
        if iso3 is None:
            iso3 = country_alpha3(activity.country)
            if iso3 is None:
                raise _unknown_region(activity.region, activity.country)
            fallback = "country"
        row, mismatch = _country_factor(book, iso3, year)
        level = "country"

    return EmissionResult(
        activity_type="electricity",
        activity_id=activity.id,
        scope=2,
        category=None,
        method=METHOD,
        **amount_times_factor(kwh, "kWh", row),
        basis=row.basis,
        region_level=level,
        fallback=fallback,
        year_mismatch=mismatch,
    )


def _unknown_region(region: str | None, country: str | None) -> InputError:
    if region is None or not region.strip():
        if country is None or not country.strip():
            return InputError("missing_region", "The activity has neither a region nor a country.")
        return InputError(
            "unknown_region",
            f"The activity has no region and {quoted(country)} is not a country code.",
        )
    suffix = (
        ""
        if country is None or not country.strip()
        else f" and {quoted(country)} is not one either"
    )
    return InputError(
        "unknown_region",
        f"The region {quoted(region)} is neither an eGRID subregion nor a country code{suffix}; "
        "no global average is used.",
    )
