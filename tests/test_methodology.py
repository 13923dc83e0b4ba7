"""Pure-function tests of the calculations, against numbers worked by hand from the files."""

from __future__ import annotations

import datetime
import math
import pickle
from dataclasses import replace

import pytest

from pipeline.factors import load_shipped_factors
from pipeline.methodology import (
    FactorBook,
    calculate,
    calculate_air_travel,
    calculate_electricity,
    calculate_spend,
    select_year,
)
from pipeline.model import (
    AirTravelActivity,
    ElectricityActivity,
    FactorRow,
    InputError,
    Limits,
    SpendActivity,
)

LB = 0.45359237
REL = 1e-12


@pytest.fixture(scope="module")
def book() -> FactorBook:
    return FactorBook.from_rows(load_shipped_factors())


def day(year: int) -> datetime.date:
    return datetime.date(year, 6, 15)


D2022, D2023, D2025 = day(2022), day(2023), day(2025)


def elec(
    quantity: float | None = 1000.0,
    unit: str | None = "kWh",
    region: str | None = "CAMX",
    country: str | None = None,
    date: datetime.date | None = D2023,
) -> ElectricityActivity:
    return ElectricityActivity(1, quantity, unit, region, country, date)


def spend(
    amount: float | None = 1000.0,
    currency: str | None = "USD",
    naics: str | None = "334111",
    date: datetime.date | None = D2022,
) -> SpendActivity:
    return SpendActivity(2, amount, currency, naics, date)


def flight(
    origin: str | None = "LHR",
    destination: str | None = "JFK",
    cabin: str | None = "business",
    passengers: int | None = 1,
    return_trip: bool | None = True,
    date: datetime.date | None = D2025,
    distance_km: float | None = None,
) -> AirTravelActivity:
    return AirTravelActivity(
        3, origin, destination, cabin, passengers, return_trip, date, distance_km
    )


def haversine(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Written out again here so the test does not trust the module's own formula."""
    p1, p2 = math.radians(lat1), math.radians(lat2)
    h = (
        math.sin((p2 - p1) / 2) ** 2
        + math.cos(p1) * math.cos(p2) * math.sin(math.radians(lon2 - lon1) / 2) ** 2
    )
    return 2 * 6371.0088 * math.asin(math.sqrt(h))


# airportsdata coordinates
LHR = (51.4706, -0.46194)
JFK = (40.639928, -73.778692)


# --- year rule and book --------------------------------------------------------------------


def test_select_year() -> None:
    assert select_year([2024, 2025], 2024) == 2024
    assert select_year([2024, 2025], 2030) == 2025
    assert select_year([2024, 2025], 2023) == 2024
    assert select_year([2015, 2020, 2025], 2022) == 2020
    with pytest.raises(ValueError):
        select_year([], 2024)


def test_book_pickles_and_refuses_duplicates(book: FactorBook) -> None:
    assert pickle.loads(pickle.dumps(book)) == book
    row = FactorRow("cpi_u", "K", 2022, 1.0, "index", "s", "e", "r")
    with pytest.raises(ValueError, match="two factor rows for cpi_u K 2022"):
        FactorBook.from_rows([row, row])


# --- electricity ---------------------------------------------------------------------------


def test_egrid_subregion(book: FactorBook) -> None:
    r = calculate_electricity(elec(region=" camx "), book)
    assert r.kg_co2e == pytest.approx(1000 * 429.983 * LB / 1000, rel=REL)
    assert r.kg_co2 == pytest.approx(1000 * 428.464 * LB / 1000, rel=REL)
    assert r.kg_ch4_co2e == pytest.approx(1000 * 0.025 * 28 * LB / 1000, rel=REL)
    assert r.kg_n2o_co2e == pytest.approx(1000 * 0.003 * 265 * LB / 1000, rel=REL)
    assert (r.scope, r.category, r.method) == (2, None, "scope2_location_based")
    assert (r.region_level, r.fallback, r.basis, r.year_mismatch) == (
        "subregion",
        None,
        "combustion",
        False,
    )
    assert (r.factor_set, r.factor_key, r.factor_year) == ("egrid_subregion", "CAMX", 2023)
    assert (r.activity_amount, r.activity_unit, r.gwp_set) == (1000.0, "kWh", "AR5-100")
    assert r.factor_edition == "eGRID2023 rev2"
    assert r.kg_co2e == pytest.approx(r.activity_amount * r.factor_value, rel=REL)


def test_egrid_other_year_is_flagged(book: FactorBook) -> None:
    r = calculate_electricity(elec(region="NYUP", date=day(2025)), book)
    assert r.kg_co2e == pytest.approx(1000 * 242.776 * LB / 1000, rel=REL)
    assert (r.factor_year, r.year_mismatch) == (2023, True)


@pytest.mark.parametrize(
    ("year", "factor", "factor_year", "mismatch"),
    [
        (2024, 0.20705, 2024, False),
        (2025, 0.177, 2025, False),
        (2023, 0.20705, 2024, True),
        (2030, 0.177, 2025, True),
    ],
)
def test_uk_by_year(
    book: FactorBook, year: int, factor: float, factor_year: int, mismatch: bool
) -> None:
    r = calculate_electricity(elec(region="gb", date=day(year)), book)
    assert r.kg_co2e == pytest.approx(1000 * factor, rel=REL)
    assert (r.factor_set, r.factor_year, r.year_mismatch) == (
        "desnz_uk_electricity",
        factor_year,
        mismatch,
    )
    assert (r.region_level, r.basis, r.fallback) == ("country", "combustion", None)


def test_uk_2025_split_and_no_td(book: FactorBook) -> None:
    r = calculate_electricity(elec(region="GBR", date=day(2025)), book)
    assert r.kg_co2e == pytest.approx(1000 * 0.177, rel=REL)  # T&D 0.01853 is not added
    assert r.kg_co2 == pytest.approx(1000 * 0.17489, rel=REL)
    assert r.kg_ch4_co2e == pytest.approx(1000 * 0.0009, rel=REL)
    assert r.kg_n2o_co2e == pytest.approx(1000 * 0.00122, rel=REL)


def test_country_lifecycle(book: FactorBook) -> None:
    r = calculate_electricity(elec(region="fra", date=day(2015)), book)
    france_2015 = next(
        row
        for row in load_shipped_factors()
        if (row.factor_set, row.key, row.year)
        == (
            "country_grid",
            "FRA",
            2015,
        )
    )
    assert r.kg_co2e == pytest.approx(1000 * france_2015.value, rel=REL)
    assert (r.basis, r.region_level, r.factor_set) == ("lifecycle", "country", "country_grid")
    assert r.kg_co2 is None and r.kg_ch4_co2e is None and r.kg_n2o_co2e is None


def test_country_aruba_by_hand(book: FactorBook) -> None:
    r = calculate_electricity(elec(quantity=250, region="AW", date=day(2016)), book)
    assert r.kg_co2e == pytest.approx(250 * 563.83 / 1000, rel=REL)
    assert (r.factor_key, r.factor_year, r.year_mismatch) == ("ABW", 2016, False)


def test_country_later_year_falls_back_to_earlier(book: FactorBook) -> None:
    r = calculate_electricity(elec(region="ABW", date=day(2099)), book)
    assert r.year_mismatch and r.factor_year < 2099


def test_unknown_subregion_falls_back_to_country(book: FactorBook) -> None:
    r = calculate_electricity(elec(region="XXXX", country="US", date=day(2023)), book)
    assert r.kg_co2e == pytest.approx(1000 * 770.884 * LB / 1000, rel=REL)
    assert r.kg_co2 == pytest.approx(1000 * 767.209 * LB / 1000, rel=REL)
    assert r.kg_ch4_co2e is None and r.kg_n2o_co2e is None
    assert (r.factor_set, r.fallback, r.region_level) == ("egrid_us", "country", "country")


def test_region_us_uses_egrid_us_without_fallback(book: FactorBook) -> None:
    r = calculate_electricity(elec(region="usa"), book)
    assert (r.factor_set, r.fallback, r.region_level) == ("egrid_us", None, "country")


def test_unknown_subregion_falls_back_to_uk(book: FactorBook) -> None:
    r = calculate_electricity(elec(region="London", country="GBR", date=day(2024)), book)
    assert r.kg_co2e == pytest.approx(1000 * 0.20705, rel=REL)
    assert r.fallback == "country"


def test_missing_region_falls_back_to_country(book: FactorBook) -> None:
    r = calculate_electricity(elec(region=None, country="gb", date=day(2025)), book)
    assert (r.factor_set, r.fallback) == ("desnz_uk_electricity", "country")


@pytest.mark.parametrize(
    ("unit", "kwh"),
    [
        ("Wh", 1000 / 1000),
        (" kwh ", 1000.0),
        ("MWh", 1000 * 1000),
        ("GWH", 1000 * 1_000_000),
        ("MJ", 1000 / 3.6),
        ("gj", 1000 * 1000 / 3.6),
    ],
)
def test_units(book: FactorBook, unit: str, kwh: float) -> None:
    r = calculate_electricity(elec(quantity=1000, unit=unit, region="GB", date=day(2024)), book)
    assert r.activity_amount == pytest.approx(kwh, rel=REL)
    assert r.kg_co2e == pytest.approx(kwh * 0.20705, rel=REL)


def test_zero_quantity_is_zero(book: FactorBook) -> None:
    r = calculate_electricity(elec(quantity=0), book)
    assert r.kg_co2e == 0.0 and r.kg_co2 == 0.0


#: Bounds raised to the largest doubles: only overflow itself is left to refuse.
UNBOUNDED = Limits(
    max_kwh=1.7e308, max_spend_usd=1.7e308, max_passengers=1000, max_distance_km=1.7e308
)


def test_huge_finite_quantity_is_implausible_and_overflow_refused(book: FactorBook) -> None:
    with pytest.raises(InputError) as err:
        calculate_electricity(elec(quantity=1e300, unit="kWh"), book)
    assert err.value.code == "implausible_quantity"
    r = calculate_electricity(elec(quantity=1e300, unit="kWh"), book, limits=UNBOUNDED)
    assert math.isfinite(r.kg_co2e)
    with pytest.raises(InputError) as err:
        calculate_electricity(elec(quantity=1e306, unit="GWh"), book, limits=UNBOUNDED)
    assert err.value.code == "implausible_quantity"  # 1e306 GWh is an infinite number of kWh
    with pytest.raises(InputError) as err:
        calculate_air_travel(flight(distance_km=1e308, passengers=10), book, limits=UNBOUNDED)
    assert err.value.code == "result_not_finite"


@pytest.mark.parametrize(
    ("activity", "code", "named"),
    [
        (elec(quantity=None), "missing_quantity", "missing"),
        (elec(quantity=-1.0), "negative_quantity", "-1.0"),
        (elec(quantity=math.nan), "not_finite_quantity", "nan"),
        (elec(quantity=math.inf), "not_finite_quantity", "inf"),
        (elec(quantity=-math.inf), "not_finite_quantity", "-inf"),
        (elec(unit=None), "missing_unit", "no unit"),
        (elec(unit="therm"), "unknown_unit", "'therm'"),
        (elec(region="ZZZZ"), "unknown_region", "'ZZZZ'"),
        (elec(region="ZZZZ", country="QQ"), "unknown_region", "'QQ'"),
        (elec(region=None, country=None), "missing_region", "neither"),
        (elec(region="ATA"), "no_country_factor", "ATA"),
        (elec(date=None), "missing_date", "date"),
    ],
)
def test_electricity_errors(
    book: FactorBook, activity: ElectricityActivity, code: str, named: str
) -> None:
    with pytest.raises(InputError) as err:
        calculate_electricity(activity, book)
    assert err.value.code == code
    assert named in err.value.message


def test_bool_quantity_refused(book: FactorBook) -> None:
    with pytest.raises(InputError) as err:
        calculate_electricity(replace(elec(), quantity=True), book)
    assert err.value.code == "invalid_quantity"


# --- spend ---------------------------------------------------------------------------------

CPI_2022 = 292.655
CPI_2024 = 313.689
CPI_2025 = 321.943


def test_spend_usd_2022(book: FactorBook) -> None:
    r = calculate_spend(spend(amount=1000.0, currency="usd", naics="111110"), book)
    assert r.kg_co2e == pytest.approx(1000 * 1.0 * 0.532, rel=REL)
    assert r.kg_co2 == pytest.approx(1000 * 0.172, rel=REL)
    assert (r.exchange_rate, r.cpi_deflator, r.year_mismatch) == (1.0, 1.0, False)
    assert (r.activity_amount, r.activity_unit) == (1000.0, "2022 USD")
    assert (r.scope, r.category, r.method) == (3, 1, "spend_based_eeio")
    assert (r.factor_set, r.factor_key, r.factor_year, r.factor_value) == (
        "epa_sef",
        "111110",
        2022,
        0.532,
    )


def test_spend_eur_2024(book: FactorBook) -> None:
    r = calculate_spend(spend(amount=500.0, currency="EUR", naics="334111", date=day(2024)), book)
    rate = r.exchange_rate
    assert rate is not None and 1.0 < rate < 1.2
    assert r.cpi_deflator == CPI_2022 / CPI_2024
    assert r.kg_co2e == 500.0 * rate * (CPI_2022 / CPI_2024) * 0.058
    assert r.activity_amount == 500.0 * rate * (CPI_2022 / CPI_2024)
    assert not r.year_mismatch


def test_spend_gbp_2025(book: FactorBook) -> None:
    r = calculate_spend(spend(amount=100.0, currency="GBP", naics="334111", date=day(2025)), book)
    assert r.exchange_rate is not None and 1.1 < r.exchange_rate < 1.5
    assert r.kg_co2e == pytest.approx(100 * r.exchange_rate * CPI_2022 / CPI_2025 * 0.058, rel=REL)


def test_spend_cpi_year_after_data_is_flagged(book: FactorBook) -> None:
    # FX covers 2026 (year to date); CPI stops at 2025, so the 2025 CPI is used and flagged.
    r = calculate_spend(spend(currency="USD", date=day(2026)), book)
    assert r.cpi_deflator == CPI_2022 / CPI_2025
    assert r.year_mismatch


def test_spend_fx_year_before_data_is_flagged(book: FactorBook) -> None:
    r = calculate_spend(spend(currency="EUR", date=day(1990)), book)
    assert r.year_mismatch


def test_spend_zero(book: FactorBook) -> None:
    assert calculate_spend(spend(amount=0), book).kg_co2e == 0.0


def test_spend_factor_ids_recorded() -> None:
    rows = [
        FactorRow("fx_usd", "EUR", 2024, 1.1, "USD/EUR", "s", "e", "r", id=11),
        FactorRow("cpi_u", "CUUR0000SA0", 2022, 300.0, "index", "s", "e", "r", id=21),
        FactorRow("cpi_u", "CUUR0000SA0", 2024, 330.0, "index", "s", "e", "r", id=22),
        FactorRow("epa_sef", "334111", 2022, 0.5, "kg CO2e/2022 USD", "s", "e", "r", id=31),
    ]
    r = calculate_spend(
        spend(amount=10.0, currency="EUR", date=day(2024)), FactorBook.from_rows(rows)
    )
    assert (r.factor_id, r.fx_factor_id, r.cpi_factor_id) == (31, 11, 22)
    assert r.kg_co2e == 10.0 * 1.1 * (300.0 / 330.0) * 0.5


@pytest.mark.parametrize(
    ("activity", "code", "named"),
    [
        (spend(amount=None), "missing_amount", "missing"),
        (spend(amount=-20.0), "negative_amount", "refunds are not netted"),
        (spend(amount=math.nan), "not_finite_amount", "nan"),
        (spend(amount=math.inf), "not_finite_amount", "inf"),
        (spend(currency=None), "missing_currency", "currency"),
        (spend(currency="XYZ"), "unknown_currency", "'XYZ'"),
        (spend(naics=None), "missing_naics", "NAICS"),
        (spend(naics="221100"), "unknown_naics", "Scope 2"),
        (spend(naics="221122"), "unknown_naics", "Scope 2"),
        (spend(naics="999999"), "unknown_naics", "'999999'"),
        (spend(date=None), "missing_date", "date"),
        (spend(amount=1.7e308, currency="GBP", date=day(2024)), "implausible_amount", "1.7e+308"),
    ],
)
def test_spend_errors(book: FactorBook, activity: SpendActivity, code: str, named: str) -> None:
    with pytest.raises(InputError) as err:
        calculate_spend(activity, book)
    assert err.value.code == code
    assert named in err.value.message


# --- air travel ----------------------------------------------------------------------------


def test_lhr_jfk_business_return_rf(book: FactorBook) -> None:
    r = calculate_air_travel(flight(), book)
    d = haversine(*LHR, *JFK)
    assert 5500 < d < 5600
    assert r.distance_km == pytest.approx(d, rel=REL)
    assert r.kg_co2e == pytest.approx(d * 1 * 2 * 0.3394, rel=REL)
    assert r.kg_co2 == pytest.approx(d * 2 * 0.33652, rel=REL)
    assert r.kg_ch4_co2e == pytest.approx(d * 2 * 0.00002, rel=REL)
    assert r.kg_n2o_co2e == pytest.approx(d * 2 * 0.00285, rel=REL)
    assert r.activity_amount == pytest.approx(d * 2, rel=REL)
    assert (r.haul, r.cabin_class, r.radiative_forcing, r.class_substituted) == (
        "long-haul",
        "business",
        True,
        False,
    )
    assert (r.scope, r.category, r.method, r.activity_unit) == (
        3,
        6,
        "distance_based_desnz",
        "passenger.km",
    )
    assert (r.factor_key, r.factor_year, r.year_mismatch) == ("long-haul|business|rf", 2025, False)


def test_rf_off(book: FactorBook) -> None:
    r = calculate_air_travel(flight(), book, radiative_forcing=False)
    assert r.kg_co2e == pytest.approx(haversine(*LHR, *JFK) * 2 * 0.20083, rel=REL)
    assert (r.factor_key, r.radiative_forcing) == ("long-haul|business|no_rf", False)
    via_dispatch = calculate(flight(), book, radiative_forcing=False)
    assert via_dispatch == r


def test_domestic_economy_substitutes_average(book: FactorBook) -> None:
    r = calculate_air_travel(
        flight("LHR", "EDI", " Economy ", 3, False, day(2024), distance_km=530.0), book
    )
    assert r.kg_co2e == pytest.approx(530.0 * 3 * 0.27257, rel=REL)
    assert (r.haul, r.factor_key, r.class_substituted, r.cabin_class) == (
        "domestic",
        "domestic|average|rf",
        True,
        "economy",
    )


def test_crown_dependency_is_domestic(book: FactorBook) -> None:
    r = calculate_air_travel(flight("JER", "LGW", "average", 1, False, distance_km=150.0), book)
    assert r.haul == "domestic"
    assert r.kg_co2e == pytest.approx(150.0 * 0.22928, rel=REL)


def test_cdg_fra_international(book: FactorBook) -> None:
    r = calculate_air_travel(flight("CDG", "FRA", "premium-economy", 2, False), book)
    assert r.haul == "international"
    assert r.distance_km is not None and 400 < r.distance_km < 500
    assert r.kg_co2e == pytest.approx(r.distance_km * 2 * 0.17465, rel=REL)
    assert not r.class_substituted


def test_lhr_cdg_short_haul_first_substituted(book: FactorBook) -> None:
    r = calculate_air_travel(flight("CDG", "LHR", "First", 1, True, day(2024)), book)
    assert r.haul == "short-haul"
    assert (r.factor_key, r.class_substituted) == ("short-haul|average|rf", True)
    assert r.distance_km is not None
    assert r.kg_co2e == pytest.approx(r.distance_km * 2 * 0.18592, rel=REL)


def test_given_distance_overrides_airports_and_year_rule(book: FactorBook) -> None:
    r = calculate_air_travel(flight(distance_km=5555.5, return_trip=False, date=day(2019)), book)
    assert r.distance_km == 5555.5
    assert r.kg_co2e == pytest.approx(5555.5 * 0.58028, rel=REL)  # 2024 factor, flagged
    assert (r.factor_year, r.year_mismatch) == (2024, True)


def test_zero_passengers_and_zero_distance(book: FactorBook) -> None:
    assert calculate_air_travel(flight(passengers=0), book).kg_co2e == 0.0
    assert calculate_air_travel(flight(distance_km=0.0), book).kg_co2e == 0.0


@pytest.mark.parametrize(
    ("activity", "code", "named"),
    [
        (flight(origin="QQQ"), "unknown_airport", "'QQQ'"),
        (flight(destination="QQQ", distance_km=100.0), "unknown_airport", "haul"),
        (flight(origin=None), "missing_origin", "origin"),
        (flight(destination=" "), "missing_destination", "destination"),
        (flight(cabin="pilot seat"), "unknown_cabin_class", "'pilot seat'"),
        (flight(cabin=None), "missing_cabin_class", "cabin class"),
        (flight(passengers=None), "missing_passengers", "passengers"),
        (flight(passengers=-1), "negative_passengers", "-1"),
        (flight(return_trip=None), "missing_return_trip", "one-way or return"),
        (flight(date=None), "missing_date", "date"),
        (flight(distance_km=-5.0), "negative_distance", "-5.0"),
        (flight(distance_km=math.nan), "not_finite_distance", "nan"),
        (flight(distance_km=math.inf), "not_finite_distance", "inf"),
        (flight(distance_km=1e308, passengers=10), "implausible_distance", "1e+308"),
        (flight("LHR", "PBH"), "unknown_haul", "'BT'"),
    ],
)
def test_air_errors(book: FactorBook, activity: AirTravelActivity, code: str, named: str) -> None:
    with pytest.raises(InputError) as err:
        calculate_air_travel(activity, book)
    assert err.value.code == code
    assert named in err.value.message


def test_fractional_passengers_refused(book: FactorBook) -> None:
    with pytest.raises(InputError) as err:
        calculate_air_travel(replace(flight(), passengers=1.5), book)  # type: ignore[arg-type]
    assert err.value.code == "invalid_passengers"


# --- dispatch and ids ----------------------------------------------------------------------


def test_calculate_dispatches(book: FactorBook) -> None:
    assert calculate(elec(), book).activity_type == "electricity"
    assert calculate(spend(), book).activity_type == "spend"
    assert calculate(flight(), book).activity_type == "air_travel"
    with pytest.raises(TypeError):
        calculate("not an activity", book)  # type: ignore[arg-type]


def test_factor_id_from_rows() -> None:
    row = FactorRow(
        "egrid_subregion", "CAMX", 2023, 0.2, "kg CO2e/kWh", "s", "e", "r", basis="x", id=7
    )
    r = calculate_electricity(elec(), FactorBook.from_rows([row]))
    assert (r.factor_id, r.kg_co2e, r.kg_co2) == (7, 1000 * 0.2, None)


def test_custom_haul_table() -> None:
    row = FactorRow("desnz_air", "long-haul|average|rf", 2025, 0.1, "u", "s", "e", "r")
    book = FactorBook.from_rows([row], haul_definitions={"FRA": "long-haul"})
    r = calculate_air_travel(flight("LHR", "CDG", "average", 1, False, distance_km=10.0), book)
    assert (r.haul, r.kg_co2e) == ("long-haul", 10.0 * 0.1)
