"""Hostile and malformed input, generated with hypothesis.

NULLs, negatives, NaN and ±infinity, enormous and denormal values, unknown, mixed-case,
space-padded and unicode codes, dates from year 1 to 9999 and beyond what Python can hold
(BC, year 10000, ±infinity), extreme ids: the run must never crash, every row must end as a
result or as an error with a reason, and the valid rows' results must be exactly what a run over
the valid rows alone produces. A second run (the same ids seen again, one bad row corrected,
new rows added) must add only what is new.

Two levels: the pure ``calculate()`` with many examples (cheap), and whole runs of
``pipeline.run`` over a generated table per example (expensive, so few examples).
"""

from __future__ import annotations

import datetime
import functools
import json
import math
from collections.abc import Callable
from typing import Any

import hypothesis.strategies as st
import psycopg2.extras
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from psycopg2 import sql

from pipeline import run
from pipeline.factors import load_shipped_factors
from pipeline.methodology import FactorBook, calculate
from pipeline.model import (
    AirTravelActivity,
    ElectricityActivity,
    EmissionResult,
    InputError,
    SpendActivity,
)
from pipeline.store import connections, tables

# Tallies for the report in docs/guarantees.md (printed with -s).
TRIED = {"calculate_examples": 0, "rows_in_runs": 0, "runs": 0}

# Any character PostgreSQL text can hold: UTF-8 encodable (no lone surrogates), no NUL.
text = st.text(alphabet=st.characters(codec="utf-8", exclude_characters="\x00"), max_size=8)
numbers = st.one_of(
    st.none(),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0.0, -0.0, -1.0, 1e308, -1e308, 5e-324, 1e300, 12.5, 2**53 + 1.0]),
)
units = st.one_of(
    st.none(),
    st.sampled_from(["kWh", "KWH", " kwh ", "MWh", "gwh", "MJ", "GJ", "Wh", "therm", "", " "]),
    st.sampled_from(["kWh\u200b", "\uff4b\uff37\uff48", "kW h", "k\u0301Wh"]),
    text,
)
regions = st.one_of(
    st.none(),
    st.sampled_from(["CAMX", "camx", " CAMX ", "GB", "gbr", "US", "usa", "FR", "ZZ", "AQ", ""]),
    st.sampled_from(["\uff23\uff21\uff2d\uff38", "CAMX\n", "Fr", "XK", "ÅLAND"]),
    text,
)
currencies = st.one_of(
    st.none(), st.sampled_from(["USD", "usd", " EUR ", "GBP", "JPY", "XYZ", "", "€", "US D"]), text
)
naics = st.one_of(
    st.none(),
    st.sampled_from(["325110", " 325110 ", "221100", "999999", "32511", "3251100", "abcdef", ""]),
    st.sampled_from(["３２５１１０", "325110\t"]),
    text,
)
airports = st.one_of(
    st.none(),
    st.sampled_from(["LHR", "lhr", " JFK ", "CDG", "EDI", "ZZZ", "", "ÅÄÖ", "L HR"]),
    text,
)
cabins = st.one_of(
    st.none(),
    st.sampled_from(["economy", "Economy", "BUSINESS", "premium economy", "premium-economy"]),
    st.sampled_from(["first", "average", "coach", "", " first "]),
    text,
)
python_dates = st.dates(min_value=datetime.date(1, 1, 1), max_value=datetime.date(9999, 12, 31))
sql_dates = st.one_of(
    st.none(),
    python_dates.map(datetime.date.isoformat),
    st.sampled_from(["10000-01-01", "0044-03-15 BC", "infinity", "-infinity", "2023-02-28"]),
)
ids = st.integers(min_value=-(2**63), max_value=2**63 - 1)


def electricity(date: Any) -> Any:
    return st.tuples(numbers, units, regions, regions, date)


def spend(date: Any) -> Any:
    return st.tuples(numbers, currencies, naics, date)


def air(date: Any) -> Any:
    passengers = st.one_of(st.none(), st.integers(-5, 2**31 - 1), st.sampled_from([0, 1, 2]))
    return st.tuples(airports, airports, cabins, passengers, st.one_of(st.none(), st.booleans()),
                     date, numbers)  # fmt: skip


# --- The pure calculation, many examples ---------------------------------------------------


@functools.cache
def book() -> FactorBook:
    rows = load_shipped_factors()
    return FactorBook.from_rows(
        [r.__class__(**{**r.__dict__, "id": i}) for i, r in enumerate(rows)]
    )


def check_outcome(activity: Any) -> None:
    TRIED["calculate_examples"] += 1
    try:
        result = calculate(activity, book())
    except InputError as e:
        assert e.code and e.message
        return
    assert isinstance(result, EmissionResult)
    assert math.isfinite(result.kg_co2e) and result.kg_co2e >= 0
    assert result.activity_id == activity.id


@settings(max_examples=400, deadline=None)
@given(row=electricity(st.one_of(st.none(), python_dates)))
def test_calculate_electricity_never_fails_unexpectedly(row: tuple[Any, ...]) -> None:
    check_outcome(ElectricityActivity(1, *row))


@settings(max_examples=400, deadline=None)
@given(row=spend(st.one_of(st.none(), python_dates)))
def test_calculate_spend_never_fails_unexpectedly(row: tuple[Any, ...]) -> None:
    check_outcome(SpendActivity(1, *row))


@settings(max_examples=400, deadline=None)
@given(row=air(st.one_of(st.none(), python_dates)))
def test_calculate_air_travel_never_fails_unexpectedly(row: tuple[Any, ...]) -> None:
    check_outcome(AirTravelActivity(1, *row))


@pytest.mark.parametrize("value", ["10000-01-01", "0044-03-15 BC", "infinity", "-infinity"])
def test_dates_python_cannot_hold_are_refused_by_name(value: str) -> None:
    with pytest.raises(InputError, match="outside the years 1 to 9999") as caught:
        calculate(ElectricityActivity(1, 10.0, "kWh", "CAMX", None, value), book())  # type: ignore[arg-type]
    assert caught.value.code == "invalid_date"


# --- Whole runs over generated tables, few examples ----------------------------------------

COLUMNS = {
    "electricity": ("id", "quantity", "unit", "region", "country", "activity_date"),
    "spend": ("id", "amount", "currency", "naics_code", "activity_date"),
    "air_travel": (
        "id", "origin", "destination", "cabin_class", "passengers", "return_trip",
        "activity_date", "distance_km",
    ),
}  # fmt: skip

# Valid rows, with ids the generated ones never use (those are odd; these are even).
GOOD: dict[str, list[tuple[Any, ...]]] = {
    "electricity": [
        (2, 1250.0, "kWh", "CAMX", None, "2023-05-01"),
        (4, 3.5, "MWh", "GB", None, "2024-01-31"),
        (6, 900.0, "kWh", "NOPE", "FR", "2022-07-01"),
        (8, 0.0, "GJ", "DE", None, "2019-03-03"),
    ],
    "spend": [
        (2, 1000.0, "USD", "325110", "2022-06-01"),
        (4, 250.75, "EUR", "541511", "2019-11-11"),
        (6, 0.0, "GBP", "325110", "2024-02-29"),
    ],
    "air_travel": [
        (2, "LHR", "JFK", "economy", 1, True, "2024-03-01", None),
        (4, "EDI", "LHR", "business", 2, False, "2025-01-15", None),
        (6, "CDG", "FRA", "first", 1, False, "2023-09-09", 500.0),
    ],
}


def insert(url: str, activity_type: str, rows: list[tuple[Any, ...]]) -> None:
    if not rows:
        return
    cols = COLUMNS[activity_type]
    template = "(" + ", ".join("%s::date" if c == "activity_date" else "%s" for c in cols) + ")"
    query = sql.SQL("INSERT INTO {} ({}) VALUES %s").format(
        tables.qualified(tables.ACTIVITY_TABLES[activity_type]),  # type: ignore[index]
        sql.SQL(", ").join(map(sql.Identifier, cols)),
    )
    conn = connections.connect(url)
    try:
        with conn.cursor() as cur:
            psycopg2.extras.execute_values(cur, query.as_string(conn), rows, template=template)
        conn.commit()
    finally:
        conn.close()


def fetch(url: str, query: str) -> list[tuple[Any, ...]]:
    conn = connections.connect(url)
    try:
        with conn.cursor() as cur:
            cur.execute(query)
            rows = cur.fetchall()
        conn.commit()
        return rows
    finally:
        conn.close()


RESULT_VIEW = (
    "SELECT activity_type, activity_id::text, kg_co2e, kg_co2, kg_ch4_co2e, kg_n2o_co2e, "
    "activity_amount, factor_id, factor_value, fallback, "
    "year_mismatch, class_substituted, distance_km, haul, exchange_rate, cpi_deflator "
    "FROM emissions.emission_results"
)


def run_ok(url: str, capsys: pytest.CaptureFixture[str]) -> dict[str, Any]:
    code = run.main(["--database-url", url, "--partitions", "3", "--progress-interval", "0"])
    out = capsys.readouterr()
    assert code == 0, out.err[-3000:]
    TRIED["runs"] += 1
    return json.loads(out.out[out.out.index("{") :])


def check_every_row_accounted_for(url: str, corrected: set[tuple[str, str]] | None = None) -> None:
    """Every activity has one result or an error with a reason; not both, unless it was
    corrected after its error (the error stays, as the record of the input it refused)."""
    activities = {
        (t, str(i))
        for t, table in tables.ACTIVITY_TABLES.items()
        for (i,) in fetch(url, f"SELECT id FROM {tables.qualified_text(table)}")
    }
    results = fetch(url, "SELECT activity_type, activity_id::text FROM emissions.emission_results")
    errors = fetch(
        url,
        "SELECT activity_type, activity_id::text, reason_code, reason FROM "
        "emissions.emission_errors",
    )
    assert len(results) == len(set(results))
    assert all(code and reason for _, _, code, reason in errors)
    with_error = {(t, i) for t, i, _, _ in errors}
    assert set(results) | with_error == activities
    assert not set(results) & with_error - (corrected or set())


def activity_tables(date: Any) -> Any:
    def rows(row: Any) -> Any:
        keyed = st.tuples(ids.map(lambda i: i | 1), row)  # odd: never a GOOD id
        return st.lists(keyed, min_size=8, max_size=25, unique_by=lambda r: r[0]).map(
            lambda found: [(i, *rest) for i, rest in found]
        )

    return st.fixed_dictionaries(
        {
            "electricity": rows(electricity(date)),
            "spend": rows(spend(date)),
            "air_travel": rows(air(date)),
        }
    )


@settings(
    max_examples=3,
    deadline=None,
    # A pipeline run per step makes shrinking cost minutes; a failure shows the raw example.
    phases=[Phase.explicit, Phase.reuse, Phase.generate],
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(bad=activity_tables(sql_dates), more=activity_tables(sql_dates))
def test_runs_over_hostile_tables(
    make_database: Callable[..., str],
    capsys: pytest.CaptureFixture[str],
    bad: dict[str, list[tuple[Any, ...]]],
    more: dict[str, list[tuple[Any, ...]]],
) -> None:
    mixed, clean = make_database("bigint"), make_database("bigint")
    for activity_type, rows in GOOD.items():
        insert(mixed, activity_type, rows)
        insert(clean, activity_type, rows)
        insert(mixed, activity_type, bad[activity_type])
    TRIED["rows_in_runs"] += sum(len(r) for r in bad.values())

    run_ok(mixed, capsys)
    run_ok(clean, capsys)
    check_every_row_accounted_for(mixed)
    good_ids = {(t, str(r[0])) for t, rows in GOOD.items() for r in rows}
    mixed_good = {r[:2]: r for r in fetch(mixed, RESULT_VIEW) if r[:2] in good_ids}
    clean_results = {r[:2]: r for r in fetch(clean, RESULT_VIEW)}
    assert set(clean_results) == good_ids  # the valid rows are valid
    assert mixed_good == clean_results  # and unchanged by the bad ones beside them

    # Again, with the same ids seen a second time, a bad row corrected and new rows added.
    before_results = fetch(mixed, RESULT_VIEW)
    before_errors = fetch(mixed, ERROR_KEYS)
    taken = {(t, r[0]) for t, rows in bad.items() for r in rows}
    for activity_type, rows in more.items():
        insert(mixed, activity_type, [r for r in rows if (activity_type, r[0]) not in taken])
    TRIED["rows_in_runs"] += sum(len(r) for r in more.values())
    corrected = fetch(mixed, CORRECT_ONE)
    run_ok(mixed, capsys)
    check_every_row_accounted_for(mixed, corrected={("electricity", str(i)) for (i,) in corrected})
    after_results = fetch(mixed, RESULT_VIEW)
    after_errors = fetch(mixed, ERROR_KEYS)
    assert set(before_results) <= set(after_results)  # nothing recomputed or changed
    assert set(before_errors) <= set(after_errors)
    assert len(after_errors) == len(set(after_errors))  # nothing recorded twice
    for (i,) in corrected:
        assert ("electricity", str(i)) in {r[:2] for r in after_results}


ERROR_KEYS = "SELECT activity_type, activity_id, input_hash FROM emissions.emission_errors"
# Correct the first electricity row that ended as an error: the next run must compute it.
CORRECT_ONE = (
    "UPDATE emissions.electricity_activities SET quantity = 5, unit = 'kWh', region = 'CAMX', "
    "activity_date = '2023-01-01' WHERE id = (SELECT min(activity_id) FROM "
    "emissions.emission_errors "
    "WHERE activity_type = 'electricity') RETURNING id"
)


def test_print_tally() -> None:
    print(f"hostile input tally: {TRIED}")
