"""The batch (Arrow) calculation agrees exactly with the per-row reference functions."""

from __future__ import annotations

import dataclasses
import datetime
import json
import math

import pyarrow as pa
import pytest

from ops.seed import generate
from pipeline.methodology import FactorBook
from pipeline.methodology.batch import (
    activities_table,
    calculate_batch,
    calculate_one,
    input_repr,
    results_from_table,
)
from pipeline.model import (
    ACTIVITY_CLASSES,
    ActivityType,
    AirTravelActivity,
    ElectricityActivity,
    EmissionResult,
    ErrorRecord,
    SpendActivity,
)
from pipeline.store import tables

D = datetime.date(2024, 2, 29)
HOSTILE: dict[ActivityType, list] = {
    "electricity": [
        ElectricityActivity(-1, 0.0, "kWh", "CAMX", None, D),
        ElectricityActivity(-2, 1e308, "GWh", "CAMX", None, D),  # overflows
        ElectricityActivity(-3, math.inf, "kWh", "GBR", None, D),
        ElectricityActivity(-4, -0.0, " mwh ", " newe ", None, D),
        ElectricityActivity(-5, 12.5, "kWh", "XXWE", "de", datetime.date(1, 1, 1)),
        ElectricityActivity(-6, 12.5, "kWh", "XXWE", None, datetime.date(9999, 12, 31)),
        ElectricityActivity(-7, 12.5, "kWh", "ATA", None, D),
        ElectricityActivity(-8, 12.5, "kWh", "ÜÑÍ", "GB", None),
        ElectricityActivity(-9, 12.5, None, "CAMX", None, D),
        ElectricityActivity(-10, 5e-324, "Wh", "US", None, D),
    ],
    "spend": [
        SpendActivity(-1, 0.0, "usd", "334111", D),
        SpendActivity(-2, 1e308, "JPY", "334111", D),
        SpendActivity(-3, 100.0, "EUR", " 334111 ", datetime.date(1990, 5, 5)),
        SpendActivity(-4, 100.0, "EUR", "221112", D),
        SpendActivity(-5, math.nan, "EUR", "334111", D),
        SpendActivity(-6, 100.0, "", "334111", D),
        SpendActivity(-7, 100.0, "GBP", None, datetime.date(2099, 1, 1)),
    ],
    "air_travel": [
        AirTravelActivity(-1, "lhr", "jfk", "Premium Economy", 2, True, D),
        AirTravelActivity(-2, "LHR", "CDG", "first", 1, False, D),  # class substituted
        AirTravelActivity(-3, "LHR", "QQQ", "economy", 1, False, D, 500.0),
        AirTravelActivity(-4, "EDI", "LHR", "business", 0, True, D),
        AirTravelActivity(-5, "SYD", "MEL", "economy", 1, True, D, 700.0),
        AirTravelActivity(-6, "SYD", "MEL", "economy", 1, True, D, -1.0),
        AirTravelActivity(-7, "SYD", "MEL", "economy", 1, True, D, math.inf),
        AirTravelActivity(-8, "JER", "LGW", "economy", None, True, D),
        AirTravelActivity(-9, "PBH", "LHR", "economy", 1, True, D),  # no DESNZ haul
        AirTravelActivity(-10, "JFK", "LAX", "economy", 2_000_000_000, True, D),
    ],
}


def per_row(activity_type: ActivityType, activities: list, book: FactorBook, rf: bool):
    results: dict = {}
    errors: set = set()
    for a in activities:
        out = calculate_one(a, activity_type, book, rf)
        if isinstance(out, EmissionResult):
            results[out.activity_id] = out
        else:
            errors.add(out)
    return results, errors


@pytest.mark.parametrize("activity_type", ["electricity", "spend", "air_travel"])
@pytest.mark.parametrize("id_type", ["bigint", "uuid"])
@pytest.mark.parametrize("rf", [True, False])
def test_batch_equals_per_row(
    book: FactorBook, activity_type: ActivityType, id_type: str, rf: bool
) -> None:
    cls = ACTIVITY_CLASSES[activity_type]
    activities = [cls(*row) for row in generate(activity_type, 3000, 11, 1, id_type)]  # type: ignore[arg-type]
    if id_type == "bigint":
        activities += HOSTILE[activity_type]
    expected_results, expected_errors = per_row(activity_type, activities, book, rf)

    outcome = calculate_batch(
        activity_type, activities_table(activity_type, activities), book, radiative_forcing=rf
    )
    got = {r.activity_id: r for r in results_from_table(outcome.results)}
    assert got == expected_results  # every field, bit for bit
    assert set(outcome.errors) == expected_errors
    assert len(outcome.errors) == len(expected_errors)
    assert len(got) + len(outcome.errors) == len(activities)
    # The stored columns only (as the pipeline asks): the same values, the same dead letters.
    stored = calculate_batch(
        activity_type,
        activities_table(activity_type, activities),
        book,
        radiative_forcing=rf,
        fields=tables.RESULT_COLUMNS,
    )
    assert stored.results.column_names == list(tables.RESULT_COLUMNS)
    assert stored.results.equals(outcome.results.select(list(tables.RESULT_COLUMNS)))
    assert stored.errors == outcome.errors


def test_every_fallback_and_flag_is_exercised(book: FactorBook) -> None:
    activities = [
        ElectricityActivity(1, 10.0, "kWh", "CAMX", None, D),  # subregion, year mismatch
        ElectricityActivity(2, 10.0, "kWh", "GB", None, datetime.date(2025, 1, 1)),
        ElectricityActivity(3, 10.0, "kWh", "IND", None, datetime.date(2023, 1, 1)),  # lifecycle
        ElectricityActivity(4, 10.0, "kWh", "XXWE", "US", D),  # country fallback
    ]
    out = calculate_batch("electricity", activities_table("electricity", activities), book)
    got = {r.activity_id: r for r in results_from_table(out.results)}
    assert [(got[i].fallback, got[i].year_mismatch, got[i].basis) for i in (1, 2, 3, 4)] == [
        (None, True, "combustion"),
        (None, False, "combustion"),
        (None, False, "lifecycle"),
        ("country", True, "combustion"),
    ]
    assert got == per_row("electricity", activities, book, True)[0]


def test_invalid_dates_become_dead_letters(book: FactorBook) -> None:
    table = pa.table(
        {
            "id": [1, 2, 3],
            "quantity": [1.0, 1.0, 1.0],
            "unit": ["kWh"] * 3,
            "region": ["CAMX"] * 3,
            "country": [None] * 3,
            "activity_date": ["0044-03-15 BC", "20000-01-01", "2023-01-01"],
        }
    )
    out = calculate_batch("electricity", table, book)
    assert [r.activity_id for r in results_from_table(out.results)] == [3]
    assert sorted((e.activity_id, e.reason_code) for e in out.errors) == [
        (1, "invalid_date"),
        (2, "invalid_date"),
    ]
    assert "20000-01-01" in next(e for e in out.errors if e.activity_id == 2).reason


def test_an_empty_batch(book: FactorBook) -> None:
    out = calculate_batch("spend", activities_table("spend", []), book)
    assert out.results.num_rows == 0 and out.errors == []


def test_error_records_are_the_per_row_ones(book: FactorBook) -> None:
    bad = SpendActivity(9, -5.0, "USD", "334111", D)
    out = calculate_batch("spend", activities_table("spend", [bad]), book)
    assert out.errors == [calculate_one(bad, "spend", book, True)]
    assert isinstance(out.errors[0], ErrorRecord)
    assert out.errors[0].reason_code == "negative_amount"


@pytest.mark.parametrize("activity_type", ["electricity", "spend", "air_travel"])
def test_input_repr_is_the_text_dead_letters_have_always_had(activity_type: ActivityType) -> None:
    """The dead-letter text (and so its ``input_hash``, which keeps one record per bad input)
    must not change between versions: it is ``dataclasses.asdict`` as JSON, byte for byte."""
    cls = ACTIVITY_CLASSES[activity_type]
    generated = [cls(*row) for row in generate(activity_type, 300, 5, 1, "uuid")]
    activities = HOSTILE[activity_type] + generated
    for a in activities:
        assert input_repr(a) == json.dumps(dataclasses.asdict(a), default=str, sort_keys=True)
    assert input_repr(HOSTILE["electricity"][0]) == (
        '{"activity_date": "2024-02-29", "country": null, "id": -1, "quantity": 0.0, '
        '"region": "CAMX", "unit": "kWh"}'
    )
