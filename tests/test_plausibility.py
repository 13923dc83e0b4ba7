"""Plausibility bounds (docs/methodology.md §6.3), sums that stay finite, and dead letters of a
bounded size whatever the input (§6.4).

The per-row functions refuse a value above its bound with its own code and a sentence naming
the value and the bound; the batch path gives the very same results and dead letters, at the
exact edges too. A run on absurd rows succeeds with them as dead letters, and the report renders
even on results stored before the bounds existed.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import math
import tracemalloc
from pathlib import Path
from typing import Any

import psycopg2
import pyarrow as pa
import pytest
import sqlalchemy as sa

from audit import coverage, report, verify
from ops.seed import seed
from pipeline import levels, run
from pipeline.methodology import FactorBook, calculate
from pipeline.methodology.batch import (
    Probes,
    activities_table,
    calculate_batch,
    calculate_one,
    input_repr,
    results_from_table,
)
from pipeline.methodology.common import MAX_TEXT_CHARS, text_digest
from pipeline.model import (
    ACTIVITY_CLASSES,
    ACTIVITY_TYPES,
    DEFAULT_LIMITS,
    Activity,
    ActivityType,
    AirTravelActivity,
    ElectricityActivity,
    EmissionResult,
    ErrorRecord,
    InputError,
    Limits,
    SpendActivity,
    activity_fields,
)
from pipeline.options import OptionsError, add_arguments, validate
from pipeline.store import tables, writes

D = datetime.date(2024, 2, 29)
D2022 = datetime.date(2022, 6, 1)  # USD in 2022: the 2022 USD are the amount itself
SMALL = Limits(max_kwh=500.0, max_spend_usd=250.0, max_passengers=3, max_distance_km=100.0)
BIG = 10 * 1024 * 1024  # characters of a hostile text value


def up(x: float) -> float:
    return math.nextafter(x, math.inf)


def down(x: float) -> float:
    return math.nextafter(x, 0.0)


def edge_cases(limits: Limits) -> dict[ActivityType, list[tuple[Activity, str | None]]]:
    """Activities at and around each bound of ``limits``, with the code each must get (None:
    a result)."""
    kwh, usd = limits.max_kwh, limits.max_spend_usd
    km, seats = limits.max_distance_km, limits.max_passengers
    return {
        "electricity": [
            (ElectricityActivity(1, kwh, "kWh", "CAMX", None, D), None),
            (ElectricityActivity(2, up(kwh), "kWh", "CAMX", None, D), "implausible_quantity"),
            (ElectricityActivity(3, down(kwh), " KWH ", "GB", None, D), None),
            (ElectricityActivity(4, up(kwh), "kWh", "FRA", None, D), "implausible_quantity"),
            (ElectricityActivity(5, kwh / 1000, "MWh", "XXWE", "DE", D), None),
            (ElectricityActivity(6, 1.3e308, "kWh", "CAMX", None, D), "implausible_quantity"),
            # The kWh overflow to infinity: above every bound, not a product that overflowed.
            (ElectricityActivity(7, 1e306, "GWh", "CAMX", None, D), "implausible_quantity"),
            # The bound comes after the unit: an unknown unit is still that.
            (ElectricityActivity(8, 1e300, "therm", "CAMX", None, D), "unknown_unit"),
            (ElectricityActivity(9, 2.0, "kWh", "CAMX", None, D), None),
        ],
        "spend": [
            (SpendActivity(1, usd, "USD", "334111", D2022), None),
            (SpendActivity(2, up(usd), "USD", "334111", D2022), "implausible_amount"),
            (SpendActivity(3, down(usd), "usd", "334111", D2022), None),
            (SpendActivity(4, 1e300, "USD", "334111", D2022), "implausible_amount"),
            # Converted first: pounds whose dollars overflow are above the bound too.
            (SpendActivity(5, 1.7e308, "GBP", "334111", D), "implausible_amount"),
            (SpendActivity(6, 1e300, "JPY", "334111", D), "implausible_amount"),
            (SpendActivity(7, 1e300, "USD", "999999", D), "unknown_naics"),
            (SpendActivity(8, 1.0, "EUR", "334111", D), None),
        ],
        "air_travel": [
            (AirTravelActivity(1, "LHR", "JFK", "economy", seats, True, D), None),
            (
                AirTravelActivity(2, "LHR", "JFK", "economy", seats + 1, True, D),
                "implausible_passengers",
            ),
            (
                AirTravelActivity(3, "LHR", "JFK", "economy", 2**31 - 1, False, D),
                "implausible_passengers",
            ),
            (AirTravelActivity(4, "SYD", "MEL", "economy", 1, False, D, km), None),
            (AirTravelActivity(5, "SYD", "MEL", "economy", 1, False, D, down(km)), None),
            (
                AirTravelActivity(6, "SYD", "MEL", "economy", 1, True, D, up(km)),
                "implausible_distance",
            ),
            (
                AirTravelActivity(7, "SYD", "MEL", "economy", 1, True, D, 1e308),
                "implausible_distance",
            ),
            # A computed distance has no bound (LHR–SYD is about 17,000 km).
            (AirTravelActivity(8, "LHR", "SYD", "business", 1, True, D), None),
            # Passengers are checked before the distance, as the per-row order says.
            (
                AirTravelActivity(9, "SYD", "MEL", "economy", 2**31 - 1, True, D, 1e308),
                "implausible_passengers",
            ),
        ],
    }


def outcomes(
    activity_type: ActivityType, activities: list[Activity], book: FactorBook, limits: Limits
) -> tuple[dict[Any, EmissionResult], dict[Any, ErrorRecord]]:
    """Per row, then per batch; asserts that both give the same, and returns it."""
    results: dict[Any, EmissionResult] = {}
    errors: dict[Any, ErrorRecord] = {}
    for a in activities:
        out = calculate_one(a, activity_type, book, True, limits)
        if isinstance(out, EmissionResult):
            results[out.activity_id] = out
        else:
            errors[out.activity_id] = out
    batch = calculate_batch(
        activity_type, activities_table(activity_type, activities), book, limits=limits
    )
    assert {r.activity_id: r for r in results_from_table(batch.results)} == results
    assert {e.activity_id: e for e in batch.errors} == errors
    assert len(batch.errors) == len(errors)
    return results, errors


@pytest.mark.parametrize("limits", [DEFAULT_LIMITS, SMALL], ids=["default", "small"])
@pytest.mark.parametrize("activity_type", ACTIVITY_TYPES)
def test_edges_are_refused_alike_per_row_and_in_batch(
    book: FactorBook, activity_type: ActivityType, limits: Limits
) -> None:
    cases = edge_cases(limits)[activity_type]
    results, errors = outcomes(activity_type, [a for a, _ in cases], book, limits)
    got = {a.id: (errors[a.id].reason_code if a.id in errors else None) for a, _ in cases}
    assert got == {a.id: code for a, code in cases}
    for activity, code in cases:
        if code is not None and code.startswith("implausible_"):
            with pytest.raises(InputError) as refused:
                calculate(activity, book, limits=limits)
            assert refused.value.code == code
            assert refused.value.message == errors[activity.id].reason
    # A value at its bound is a result, computed as ever: kWh and 2022 USD are the bound.
    if activity_type == "electricity":
        assert results[1].activity_amount == limits.max_kwh
    elif activity_type == "spend":
        assert results[1].activity_amount == limits.max_spend_usd
    else:
        assert results[4].distance_km == limits.max_distance_km


def test_refusals_name_the_value_and_the_bound(book: FactorBook) -> None:
    cases: list[tuple[Activity, str, str]] = [
        (
            ElectricityActivity(1, 1.3e308, "kWh", "TM", None, D),
            "implausible_quantity",
            "The electricity quantity 1.3e+308 kWh is 1.3e+308 kWh, above the plausibility "
            "bound of 1,000,000,000,000 kWh for one activity (--max-kwh).",
        ),
        (
            ElectricityActivity(2, 2e6, "GWh", "TM", None, D),
            "implausible_quantity",
            "The electricity quantity 2000000.0 GWh is 2,000,000,000,000 kWh, above the "
            "plausibility bound of 1,000,000,000,000 kWh for one activity (--max-kwh).",
        ),
        (
            SpendActivity(3, 1e300, "USD", "334111", D2022),
            "implausible_amount",
            "The spend amount 1e+300 USD is 1e+300 2022 USD, above the plausibility bound of "
            "100,000,000,000 2022 USD for one activity (--max-spend-usd).",
        ),
        (
            AirTravelActivity(4, "LHR", "JFK", "economy", 2**31 - 1, True, D),
            "implausible_passengers",
            "The number of passengers 2,147,483,647 is above the plausibility bound of 1,000 "
            "for one booking (--max-passengers).",
        ),
        (
            AirTravelActivity(5, "LHR", "JFK", "economy", 1, True, D, up(20_037.5)),
            "implausible_distance",
            "The given flight distance 20037.500000000004 km is above the plausibility bound "
            "of 20037.5 km for one way (--max-distance-km).",
        ),
    ]
    for activity, code, message in cases:
        with pytest.raises(InputError) as refused:
            calculate(activity, book)
        assert (refused.value.code, refused.value.message) == (code, message)


def test_the_bound_is_on_2022_dollars_not_on_the_currency(book: FactorBook) -> None:
    """10^11 yen is well under the bound (about 7e8 dollars), 10^11 pounds well over it."""
    yen = calculate(SpendActivity(1, 1e11, "JPY", "334111", D), book)
    assert yen.activity_amount == 1e11 * yen.exchange_rate * yen.cpi_deflator  # type: ignore[operator]
    assert 5e8 < yen.activity_amount < 1e9
    with pytest.raises(InputError) as refused:
        calculate(SpendActivity(2, 1e11, "GBP", "334111", D), book)
    assert refused.value.code == "implausible_amount"


def test_probes_made_for_other_limits_are_refused(book: FactorBook) -> None:
    table = activities_table("electricity", [ElectricityActivity(1, 1.0, "kWh", "CAMX", None, D)])
    probes = Probes("electricity", book, True, SMALL)
    with pytest.raises(ValueError, match="the probes were made for"):
        calculate_batch("electricity", table, book, probes=probes)
    outcome = calculate_batch("electricity", table, book, limits=SMALL, probes=probes)
    assert outcome.results.num_rows == 1 and outcome.errors == []


# --- Sums ----------------------------------------------------------------------------------


def results_table(kg: list[float]) -> pa.Table:
    n = len(kg)
    return pa.table(
        {
            "activity_type": ["electricity"] * n,
            "kg_co2e": pa.array(kg, pa.float64()),
            "fallback": pa.array([None] * n, pa.string()),
            "year_mismatch": [False] * n,
            "class_substituted": [False] * n,
            "basis": ["combustion"] * n,
        }
    )


def test_a_flush_whose_kg_overflow_is_refused_with_a_sentence() -> None:
    assert levels.tally(results_table([1.5e308, 1.0]))["electricity"].kg_co2e == 1.5e308
    with pytest.raises(OverflowError, match="beyond what a double holds") as refused:
        levels.tally(results_table([1.5e308, 1.5e308]))
    assert str(refused.value).startswith(
        "the kg CO2e of one flush's electricity results sum to inf"
    )
    total = levels.Tally()
    total.add(levels.tally(results_table([1.5e308]))["electricity"])
    with pytest.raises(OverflowError, match="the results added up"):
        total.add(levels.tally(results_table([1.5e308]))["electricity"])


# --- Options -------------------------------------------------------------------------------


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(list(argv))


@pytest.mark.parametrize(
    "option", ["--max-kwh", "--max-spend-usd", "--max-passengers", "--max-distance-km"]
)
@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "0", "-1"])
def test_limit_options_at_the_edges_are_refused(option: str, value: str) -> None:
    with pytest.raises(OptionsError, match=f"^{option} must be a finite number above 0, not "):
        validate(parse(f"{option}={value}"), "postgresql://u@h/d")


def test_limit_options_reach_the_run_config() -> None:
    assert validate(parse(), "postgresql://u@h/d").limits == DEFAULT_LIMITS
    options = parse(
        "--max-kwh", "500", "--max_spend_usd", "250", "--max-passengers", "3",
        "--max-distance-km", "100",
    )  # fmt: skip
    assert validate(options, "postgresql://u@h/d").limits == SMALL
    with pytest.raises(OptionsError, match="^--max-passengers must be a whole number, not 1.5$"):
        validate(parse("--max-passengers", "1.5"), "postgresql://u@h/d")


# --- Dead letters of a bounded size --------------------------------------------------------


def test_short_values_are_kept_as_ever_and_long_ones_bounded_with_their_hash() -> None:
    short = ElectricityActivity(1, 5.0, "x" * MAX_TEXT_CHARS, "CAMX", None, D)
    assert input_repr(short) == json.dumps(dataclasses.asdict(short), default=str, sort_keys=True)
    value = "x" * MAX_TEXT_CHARS + "y"
    long = dataclasses.replace(short, unit=value)
    digest = text_digest(value)
    assert len(digest) == 64
    assert input_repr(long) == json.dumps(
        {**dataclasses.asdict(long), "unit": "x" * 200 + f"…[+1 chars, sha256 {digest}]"},
        default=str,
        sort_keys=True,
    )


def test_a_huge_text_value_makes_a_small_dead_letter(book: FactorBook) -> None:
    first = "é" * BIG
    second = "é" * (BIG - 1) + "e"  # the same first 200 characters, and length
    activities = [
        ElectricityActivity(1, 5.0, first, "CAMX", None, D),
        ElectricityActivity(2, 5.0, second, "CAMX", None, D),
        ElectricityActivity(3, 5.0, "kWh", "CAMX", None, D),
        ElectricityActivity(4, 5.0, "kWh", first, None, D),
    ]
    table = activities_table("electricity", activities)
    probes = Probes("electricity", book)
    warm_up = [ElectricityActivity(5, 5.0, "kWh", "ZZZZ", "FR", D), activities[2]]
    calculate_batch("electricity", activities_table("electricity", warm_up), book, probes=probes)
    tracemalloc.start()
    try:
        outcome = calculate_batch("electricity", table, book, probes=probes)
        kept, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # What stays is a few kilobytes (dead letters, probes): no copy of a huge value is kept.
    # On the way, the three huge values (one byte a character in Python) take less than three
    # times their size: each becomes Python text once, for the per-row function; case-folding
    # and escaping them took dozens of times their size.
    assert kept < 200_000
    assert peak < 3 * 3 * BIG
    kept_texts = [v for _, ctx in probes._answers for v in ctx if isinstance(v, str)]
    assert kept_texts and max(len(v) for v in kept_texts) <= MAX_TEXT_CHARS
    assert outcome.results.num_rows == 1
    errors = {e.activity_id: e for e in outcome.errors}
    assert [errors[i].reason_code for i in (1, 2, 4)] == [
        "unknown_unit",
        "unknown_unit",
        "unknown_region",
    ]
    tail = f"…[+{BIG - 200} chars, sha256 "
    marker = "\\u00e9" * 200 + json.dumps(tail)[1:-1]
    expected = (
        '{"activity_date": "2024-02-29", "country": null, "id": 1, "quantity": 5.0, '
        f'"region": "CAMX", "unit": "{marker}{text_digest(first)}]"}}'
    )
    assert errors[1].input_repr == expected
    assert len(errors[1].input_repr) == 1400
    assert errors[1].reason == (
        f"The unit {'é' * 80!r}…[+{BIG - 80} chars] is not an energy unit this pipeline knows "
        "(Wh, kWh, MWh, GWh, MJ, GJ)."
    )
    assert len(errors[2].input_repr) == 1400
    # The same activity with the other value: the texts differ only in the hash of the whole
    # value, and so do the input_hash values that keep one dead letter per distinct input.
    again = calculate_one(
        dataclasses.replace(activities[0], unit=second), "electricity", book, True
    )
    assert isinstance(again, ErrorRecord)
    assert again.input_repr[:-67] == errors[1].input_repr[:-67]
    assert again.input_repr != errors[1].input_repr
    assert writes.error_hash(again) != writes.error_hash(errors[1])
    assert len(errors[4].reason) < 400 and len(errors[4].input_repr) < 1500


# --- On PostgreSQL -------------------------------------------------------------------------


def run_pipeline(url: str, capsys: pytest.CaptureFixture[str], *extra: str) -> dict[str, Any]:
    code = run.main(
        ["--database-url", url, "--partitions", "3", "--progress-interval", "0", *extra]
    )
    out = capsys.readouterr().out
    assert code == 0, out
    summary: dict[str, Any] = json.loads(out[out.index("{") :])
    return summary


def stored(engine: sa.Engine) -> tuple[dict[tuple[str, int], float], dict[tuple[str, int], str]]:
    with engine.connect() as conn:
        results = {
            (t, int(i)): kg
            for t, i, kg in conn.execute(
                sa.text(
                    "SELECT activity_type, activity_id, kg_co2e FROM emissions.emission_results"
                )
            )
        }
        errors = {
            (t, int(i)): code
            for t, i, code in conn.execute(
                sa.text(
                    "SELECT activity_type, activity_id, reason_code FROM emissions.emission_errors"
                )
            )
        }
    return results, errors


def expected(
    engine: sa.Engine, book: FactorBook
) -> tuple[dict[tuple[str, int], float], dict[tuple[str, int], str]]:
    """Every activity in the database, computed by the per-row functions (default bounds)."""
    results: dict[tuple[str, int], float] = {}
    errors: dict[tuple[str, int], str] = {}
    with engine.connect() as conn:
        for activity_type in ACTIVITY_TYPES:
            names = activity_fields(activity_type)
            table = tables.qualified_text(tables.ACTIVITY_TABLES[activity_type])
            rows = conn.execute(sa.text(f"SELECT {', '.join(names)} FROM {table}")).all()
            for row in rows:
                activity = ACTIVITY_CLASSES[activity_type](**dict(zip(names, row, strict=True)))
                out = calculate_one(activity, activity_type, book, True)
                if isinstance(out, EmissionResult):
                    results[(activity_type, int(row[0]))] = out.kg_co2e
                else:
                    errors[(activity_type, int(row[0]))] = out.reason_code
    return results, errors


def test_absurd_rows_become_dead_letters_and_the_run_and_report_succeed(
    database_url: str,
    engine: sa.Engine,
    book: FactorBook,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    seed(engine, 1000)
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO emissions.electricity_activities VALUES "
                "(100001,1.3e308,'kWh','TM',NULL,'2020-06-01'),"
                "(100002,1.3e308,'kWh','TM',NULL,'2020-06-01')"
            )
        )
    summary = run_pipeline(database_url, capsys)
    assert summary["status"] == "succeeded"
    assert math.isfinite(summary["total_co2e_tonnes"])

    results, errors = stored(engine)
    want_results, want_errors = expected(engine, book)
    assert (
        errors[("electricity", 100001)]
        == errors[("electricity", 100002)]
        == ("implausible_quantity")
    )
    assert sorted(k for k, code in errors.items() if code.startswith("implausible_")) == [
        ("electricity", 100001),
        ("electricity", 100002),
    ]
    assert errors == want_errors  # every other refusal is the one it always was
    assert results == want_results  # and every other activity is computed, to the bit
    assert len(results) + len(errors) == 1002
    assert summary["errors"] == len(errors)
    with engine.connect() as conn:
        logged = conn.execute(
            sa.text(
                "SELECT count(*), bool_and(kg_co2e < 'Infinity'), sum(results) FROM "
                f"{tables.qualified_text(tables.WRITES_TABLE)}"
            )
        ).one()
    assert logged[1] is True and logged[2] == len(results)

    page = report.write_report(engine, tmp_path / "r.html", "test")
    text = page.read_text()
    total = math.fsum(results.values())
    # One headline per reporting year (never one summed across years); the years add up.
    shown = [
        float(part.split('data-kg="')[1].split('"')[0])
        for part in text.split('data-figure="year-total" ')[1:]
    ]
    assert len(shown) > 1 and math.fsum(shown) == pytest.approx(total, rel=1e-12)

    checked = verify.verify(engine, list(ACTIVITY_TYPES), sample=None)
    assert checked.examined == len(results) and checked.reproduced == checked.examined


def test_the_report_and_coverage_survive_results_whose_sum_overflows(
    database_url: str, engine: sa.Engine, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """Results above the bounds, stored before there were any: a double precision sum of them
    overflows, and PostgreSQL refuses it; the report sums again in numeric."""
    seed(engine, 300)
    run_pipeline(database_url, capsys)
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "UPDATE emissions.emission_results SET kg_co2e = 1.5e308 WHERE (activity_type, "
                "activity_id) IN (SELECT activity_type, activity_id FROM "
                "emissions.emission_results WHERE activity_type = 'electricity' "
                "ORDER BY activity_id LIMIT 2)"
            )
        )
    with pytest.raises(sa.exc.DataError) as overflow, engine.connect() as conn:
        conn.execute(sa.text("SELECT sum(kg_co2e) FROM emissions.emission_results")).all()
    assert isinstance(overflow.value.orig, psycopg2.errors.NumericValueOutOfRange)

    quality = coverage.coverage(engine)
    assert quality["by_activity_type"]["electricity"]["kg_co2e"] == math.inf
    assert math.isfinite(quality["by_activity_type"]["spend"]["kg_co2e"])
    text = report.write_report(engine, tmp_path / "r.html", "test").read_text()
    # The years of the huge results show them (inf where two share a year), none is NaN.
    years = [
        float(part.split('data-kg="')[1].split('"')[0])
        for part in text.split('data-figure="year-total" ')[1:]
    ]
    assert max(years) >= 1.5e308 and not any(math.isnan(y) for y in years)
    assert '<tr data-row="type" data-year="' in text and 'data-type="spend"' in text
    assert '"nan' not in text  # every bar has a length: the overflowed one the whole chart


def test_limit_options_reach_the_calculation(
    database_url: str, engine: sa.Engine, capsys: pytest.CaptureFixture[str]
) -> None:
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO emissions.electricity_activities VALUES "
                "(1, 500, 'kWh', 'CAMX', NULL, '2023-06-01'),"
                "(2, 500.001, 'kWh', 'CAMX', NULL, '2023-06-01'),"
                "(3, 1e12, 'kWh', 'CAMX', NULL, '2023-06-01')"
            )
        )
    run_pipeline(database_url, capsys, "--max-kwh", "500")
    results, errors = stored(engine)
    assert set(results) == {("electricity", 1)}
    assert errors == {
        ("electricity", 2): "implausible_quantity",
        ("electricity", 3): ("implausible_quantity"),
    }


def test_a_huge_text_value_is_stored_as_a_small_dead_letter(
    database_url: str, engine: sa.Engine, capsys: pytest.CaptureFixture[str]
) -> None:
    """Two activities with 10 MB units, refused; then the first corrected to the second's value
    (the same first 200 characters): a second dead letter, since the input differs."""
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO emissions.electricity_activities VALUES "
                "(1, 5, repeat('x', :n), 'CAMX', NULL, '2023-06-01'),"
                "(2, 5, repeat('x', :n - 1) || 'y', 'CAMX', NULL, '2023-06-01'),"
                "(3, 5, 'kWh', 'CAMX', NULL, '2023-06-01')"
            ),
            {"n": BIG},
        )
    summary = run_pipeline(database_url, capsys)
    assert summary["errors"] == 2 and summary["total_processed"] == 1
    with engine.connect() as conn:
        rows = conn.execute(
            sa.text(
                "SELECT activity_id, reason_code, input_repr, reason, input_hash "
                "FROM emissions.emission_errors ORDER BY activity_id"
            )
        ).all()
    june = datetime.date(2023, 6, 1)
    first = ElectricityActivity(1, 5.0, "x" * BIG, "CAMX", None, june)
    second = ElectricityActivity(2, 5.0, "x" * (BIG - 1) + "y", "CAMX", None, june)
    reason = (
        f"The unit {'x' * 80!r}…[+{BIG - 80} chars] is not an energy unit this pipeline knows "
        "(Wh, kWh, MWh, GWh, MJ, GJ)."
    )
    assert [tuple(r[:4]) for r in rows] == [
        (1, "unknown_unit", input_repr(first), reason),
        (2, "unknown_unit", input_repr(second), reason),
    ]
    assert len(rows[0][2]) == len(rows[1][2]) == 400

    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "UPDATE emissions.electricity_activities SET unit = repeat('x', :n - 1) || 'y' "
                "WHERE id = 1"
            ),
            {"n": BIG},
        )
    summary = run_pipeline(database_url, capsys)
    assert summary["errors"] == 1 and summary["total_processed"] == 0
    with engine.connect() as conn:
        hashes = conn.execute(
            sa.text(
                "SELECT input_repr, input_hash FROM emissions.emission_errors "
                "WHERE activity_id = 1 ORDER BY created_at, input_hash"
            )
        ).all()
    corrected = dataclasses.replace(second, id=1)
    assert {r[0] for r in hashes} == {input_repr(first), input_repr(corrected)}
    assert len({r[1] for r in hashes}) == 2  # the same first 200 characters, two records
