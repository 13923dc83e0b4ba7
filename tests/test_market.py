"""Scope 2 market-based allocation (issue 25, items 2 and 6), the pure function: the
hand-computed cases of the issue's "Done when", and each refusal. No database: the
allocation is the methodology's (docs/methodology.md §10.3)."""

from __future__ import annotations

import datetime

import pytest

from pipeline.methodology.book import FactorBook
from pipeline.methodology.market import (
    Consumption,
    Options,
    Part,
    Refused,
    allocate,
)
from pipeline.model import Certificate, Contract, FactorRow, SupplierRate

RESIDUAL = 0.5  # kg CO2e/kWh, made up for the tests
GRID = 0.3  # the location-based factor of the fallback


def residual_book(*markets: str, year: int = 2024) -> FactorBook:
    return FactorBook.from_rows(
        FactorRow("residual_mix", m, year, RESIDUAL, "kg CO2e/kWh", "test", "t", "t", id=900 + n)
        for n, m in enumerate(markets)
    )


def site(ident: int, mwh: float, facility: str = "plant-a", market: str = "RFCE") -> Consumption:
    return Consumption(ident, mwh * 1000, market, 2024, GRID, 77, facility=facility)


def certificate(
    ident: str,
    mwh: float,
    market: str = "RFCE",
    facility: str | None = None,
    retirement: str | None = "auto",
    vintage: tuple[str, str] = ("2024-01-01", "2024-12-31"),
    source: str = "wind",
    rate: float | None = None,
) -> Certificate:
    start, end = (datetime.date.fromisoformat(d) for d in vintage)
    retired = f"R-{ident}" if retirement == "auto" else retirement
    return Certificate(ident, mwh, source, start, end, market, retired, facility, rate)


def test_600_mwh_of_certificates_for_1000_mwh_leave_400_mwh_at_the_residual_mix() -> None:
    done = allocate([site(1, 1000)], [certificate("GO-1", 600)], [], [], residual_book("RFCE"))
    (result,) = done.results
    assert result.parts == [
        Part("certificate", 600_000, 0.0, instrument_id="GO-1"),
        Part("residual_mix", 400_000, RESIDUAL, factor_id=900),
    ]
    assert result.kg_co2e == 400_000 * RESIDUAL == 200_000
    assert not result.grid_fallback
    assert done.refused == [] and done.unused_mwh == {}


def test_a_certificate_from_another_market_is_refused_and_its_mwh_taken_at_the_residual_mix() -> (
    None
):
    done = allocate(
        [site(1, 1000)],
        [certificate("GO-1", 600, market="DE")],
        [],
        [],
        residual_book("RFCE"),
    )
    assert done.refused == [
        Refused(
            "certificates",
            "GO-1",
            "other_market",
            "it is from DE, where nothing is consumed (RFCE)",
        )
    ]
    (result,) = done.results
    assert result.parts == [Part("residual_mix", 1_000_000, RESIDUAL, factor_id=900)]
    assert result.kg_co2e == 500_000


def test_a_certificate_retired_for_a_facility_in_another_market_is_refused() -> None:
    done = allocate(
        [site(1, 1000), site(2, 10, facility="depot", market="DE")],
        [certificate("GO-1", 600, market="DE", facility="plant-a")],
        [],
        [],
        residual_book("RFCE", "DE"),
    )
    assert [(r.instrument_id, r.code) for r in done.refused] == [("GO-1", "other_market")]
    assert "facility plant-a consumes in RFCE" in done.refused[0].message
    assert sum(r.kg_co2e for r in done.results) == 1_010_000 * RESIDUAL


@pytest.mark.parametrize("sharing", ["facility_first", "pro_rata"])
def test_two_facilities_sharing_one_pool_never_allocate_it_twice(sharing: str) -> None:
    done = allocate(
        [site(1, 1000, "plant-a"), site(2, 1000, "plant-b")],
        [certificate("GO-1", 400), certificate("GO-2", 200)],
        [],
        [],
        residual_book("RFCE"),
        Options(sharing=sharing),  # type: ignore[arg-type]
    )
    certified = {
        r.activity_id: sum(p.kwh for p in r.parts if p.basis == "certificate") for r in done.results
    }
    assert sum(certified.values()) == 600_000  # the pool's 600 MWh, once
    expected = {1: 600_000, 2: 0} if sharing == "facility_first" else {1: 300_000, 2: 300_000}
    assert certified == expected
    assert sum(r.kg_co2e for r in done.results) == (2_000_000 - 600_000) * RESIDUAL == 700_000
    assert done.unused_mwh == {}


def test_a_certificate_retired_for_a_facility_goes_to_it_and_no_other() -> None:
    done = allocate(
        [site(1, 1000, "plant-a"), site(2, 1000, "plant-b")],
        [certificate("GO-1", 1500, facility="plant-b")],
        [],
        [],
        residual_book("RFCE"),
    )
    by_id = {r.activity_id: r for r in done.results}
    assert by_id[1].parts == [Part("residual_mix", 1_000_000, RESIDUAL, factor_id=900)]
    assert by_id[2].parts == [Part("certificate", 1_000_000, 0.0, instrument_id="GO-1")]
    assert done.unused_mwh == {("certificates", "GO-1"): 500.0}


def test_without_a_residual_mix_the_rest_is_taken_at_the_grid_factor_flagged() -> None:
    done = allocate([site(1, 1000)], [certificate("GO-1", 600)], [], [], residual_book("DE"))
    (result,) = done.results
    assert result.parts[-1] == Part("grid_fallback", 400_000, GRID, factor_id=77)
    assert result.grid_fallback
    assert result.kg_co2e == 400_000 * GRID


def test_the_hierarchy_certificates_then_contracts_then_the_supplier_rate() -> None:
    consumer = Consumption(1, 1_000_000, "RFCE", 2024, GRID, 77, supplier="GreenFix")
    ppa = Contract(7, 300, datetime.date(2024, 5, 1), datetime.date(2024, 5, 31), 0.1, "RFCE", None)
    rate = SupplierRate(3, "greenfix ", 2024, 0.2, True)
    done = allocate([consumer], [certificate("GO-1", 600)], [ppa], [rate], residual_book("RFCE"))
    (result,) = done.results
    assert result.parts == [
        Part("certificate", 600_000, 0.0, instrument_id="GO-1"),
        Part("contract", 300_000, 0.1, instrument_id=7),
        Part("supplier_rate", 100_000, 0.2, instrument_id=3),
    ]
    assert result.kg_co2e == pytest.approx(300_000 * 0.1 + 100_000 * 0.2)


REFUSALS = {
    "no retirement id": (certificate("X", 10, retirement=None), "not_retired"),
    "outside the vintage window": (
        certificate("X", 10, vintage=("2022-01-01", "2022-12-31")),
        "vintage_outside_window",
    ),
    "no MWh": (certificate("X", 0), "invalid_mwh"),
    "gas without a rate": (certificate("X", 10, source="gas"), "no_emission_rate"),
}


@pytest.mark.parametrize("case", sorted(REFUSALS))
def test_a_bad_certificate_is_refused_with_its_reason_never_used(case: str) -> None:
    bad, code = REFUSALS[case]
    done = allocate([site(1, 1000)], [bad], [], [], residual_book("RFCE"))
    assert [(r.kind, r.instrument_id, r.code) for r in done.refused] == [
        ("certificates", "X", code)
    ]
    assert done.results[0].parts == [Part("residual_mix", 1_000_000, RESIDUAL, factor_id=900)]


def test_a_vintage_window_admits_last_years_certificates() -> None:
    old = certificate("X", 10, vintage=("2023-01-01", "2023-12-31"))
    done = allocate(
        [site(1, 1000)], [old], [], [], residual_book("RFCE"), Options(vintage_window_years=1)
    )
    assert done.refused == []
    assert done.results[0].parts[0] == Part("certificate", 10_000, 0.0, instrument_id="X")


def test_one_retirement_claimed_by_two_certificates_is_used_once() -> None:
    twice = [certificate("A", 100, retirement="R-1"), certificate("B", 100, retirement="R-1")]
    done = allocate([site(1, 1000)], twice, [], [], residual_book("RFCE"))
    assert [(r.instrument_id, r.code) for r in done.refused] == [("B", "claimed_twice")]
    certified = sum(p.kwh for p in done.results[0].parts if p.basis == "certificate")
    assert certified == 100_000


def test_a_supplier_rate_not_net_of_sold_instruments_is_refused() -> None:
    consumer = Consumption(1, 1000.0, "RFCE", 2024, GRID, 77, supplier="GreenFix")
    rate = SupplierRate(3, "GreenFix", 2024, 0.0, False)
    done = allocate([consumer], [], [], [rate], residual_book("RFCE"))
    assert [(r.kind, r.code) for r in done.refused] == [
        ("supplier_rates", "not_net_of_sold_instruments")
    ]
    assert done.results[0].parts == [Part("residual_mix", 1000.0, RESIDUAL, factor_id=900)]


def test_fiscal_years_decide_which_vintage_serves_which_year() -> None:
    # FY 2024 runs from 1 April 2024 to 31 March 2025: a Q1 2025 vintage serves it.
    q1 = certificate("X", 10, vintage=("2025-01-01", "2025-03-31"))
    fiscal = Options(year_start=(4, 1))
    done = allocate([site(1, 1000)], [q1], [], [], residual_book("RFCE"), fiscal)
    assert done.refused == []
    assert done.results[0].parts[0] == Part("certificate", 10_000, 0.0, instrument_id="X")
    calendar = allocate([site(1, 1000)], [q1], [], [], residual_book("RFCE"))
    assert [r.code for r in calendar.refused] == ["vintage_outside_window"]


def test_us_market_boundaries_are_the_subregion_or_its_interconnect() -> None:
    from pipeline.methodology.market import boundary, normalise_market, serves

    assert [boundary(m) for m in ("rfce", "CAMX", "ERCT", "HIOA", "DE", "Eastern")] == [
        "US-EASTERN",
        "US-WESTERN",
        "US-ERCOT",
        "HIOA",
        "DE",
        "US-EASTERN",
    ]
    assert normalise_market("Western Interconnect") == "US-WESTERN"
    assert normalise_market("us-ercot") == "US-ERCOT"
    assert serves("US-EASTERN", "SRSO") and serves("RFCE", "RFCE")
    assert not serves("RFCE", "SRSO") and not serves("US-WESTERN", "RFCE")
