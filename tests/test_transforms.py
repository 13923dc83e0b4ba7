"""DoFns called directly, and the composites in a TestPipeline with assert_that."""

from __future__ import annotations

import dataclasses
import datetime

import apache_beam as beam
import pyarrow as pa
import pytest
import sqlalchemy as sa
from apache_beam import pvalue
from apache_beam.runners.portability.fn_api_runner import FnApiRunner
from apache_beam.testing.test_pipeline import TestPipeline as BeamTestPipeline
from apache_beam.testing.util import assert_that, equal_to

from pipeline.methodology import FactorBook, calculate
from pipeline.methodology.batch import (
    activities_table,
    calculate_batch,
    input_repr,
)
from pipeline.model import (
    ACTIVITY_CLASSES,
    AirTravelActivity,
    ElectricityActivity,
    EmissionResult,
    ErrorRecord,
    SpendActivity,
)
from pipeline.ranges import plan_int_ranges
from pipeline.store import connections, queries, tables, writes
from tests.factories import result_for
from tests.support import assert_write_log_matches_results
from transforms.calculate import ERRORS, CalculateEmissions, CalculateFn, pack_book
from transforms.read import ActivityTable, ReadPendingActivities
from transforms.write import WriteErrors, WriteResults

RUN = "00000000-0000-4000-8000-0000000000aa"
D = datetime.date(2023, 6, 1)


def pipeline() -> BeamTestPipeline:
    return BeamTestPipeline(runner=FnApiRunner())


GOOD = ElectricityActivity(1, 1000.0, "kWh", "CAMX", None, D)
BAD = ElectricityActivity(2, None, "kWh", "CAMX", None, D)
FLIGHT = AirTravelActivity(3, "LHR", "JFK", "business", 1, True, datetime.date(2025, 3, 1))


def as_read(table: pa.Table, version: int = 7) -> pa.Table:
    """A table as the range read gives it: with each row's version, none with a result."""
    return table.append_column(
        queries.VERSION_COLUMN, pa.array([version] * table.num_rows, pa.int64())
    ).append_column(queries.STORED_COLUMN, pa.array([False] * table.num_rows, pa.bool_()))


def stored(result: EmissionResult) -> dict:
    """What is stored of a result (the factor's description lives in ``emission_factors``)."""
    return {c: getattr(result, c) for c in tables.RESULT_COLUMNS}


def rows_of(table: pa.Table) -> list[dict]:
    return table.select(list(tables.RESULT_COLUMNS)).to_pylist()


def run_fn(fn: CalculateFn, activities: list, book: FactorBook) -> tuple[list, list]:
    """Calls the DoFn directly on one table; returns (stored results, dead letters)."""
    fn.setup()
    (activity_type,) = {t for t, c in ACTIVITY_CLASSES.items() for a in activities if type(a) is c}
    table = ActivityTable(activity_type, as_read(activities_table(activity_type, activities)))
    results: list = []
    errors: list = []
    for out in fn.process(table, pack_book(book)):
        if isinstance(out, pvalue.TaggedOutput):
            assert out.tag == ERRORS
            errors.append(out.value)
        else:
            assert out.column("input_fingerprint").null_count == 0  # computed beside them
            assert out.column("factor_fingerprint").null_count == 0
            results += rows_of(out)
    return results, errors


def test_calculate_fn_yields_results_and_dead_letters(book: FactorBook) -> None:
    results, errors = run_fn(CalculateFn(), [GOOD, BAD], book)
    assert results == [stored(calculate(GOOD, book))]
    assert results[0]["kg_co2e"] == pytest.approx(1000 * 429.983 * 0.45359237 / 1000, rel=1e-12)
    assert errors == [
        ErrorRecord(
            "electricity",
            2,
            "missing_quantity",
            "The electricity quantity is missing (NULL); it is not 0.",
            input_repr(BAD),
            activity_version=7,
        )
    ]


def test_calculate_fn_turns_an_unexpected_failure_into_a_dead_letter(
    book: FactorBook, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr("pipeline.methodology.batch.calculate", broken)
    monkeypatch.setattr("transforms.calculate._CURRENT", [])  # no answers kept from before
    results, errors = run_fn(CalculateFn(), [GOOD], book)
    assert results == []
    assert [(e.activity_id, e.reason_code, e.reason) for e in errors] == [
        (1, "calculation_failed", "the calculation failed unexpectedly: RuntimeError: boom")
    ]


def test_radiative_forcing_option_reaches_the_calculation(book: FactorBook) -> None:
    (a,), _ = run_fn(CalculateFn(radiative_forcing=True), [FLIGHT], book)
    (b,), _ = run_fn(CalculateFn(radiative_forcing=False), [FLIGHT], book)
    rf = calculate(FLIGHT, book, radiative_forcing=True)
    no_rf = calculate(FLIGHT, book, radiative_forcing=False)
    assert (rf.factor_key, no_rf.factor_key) == (
        "long-haul|business|rf",
        "long-haul|business|no_rf",
    )
    assert (a, b) == (stored(rf), stored(no_rf))
    assert a["factor_value"] == 0.3394 and b["factor_value"] == 0.20083


def test_calculate_emissions_composite(book: FactorBook) -> None:
    spend = SpendActivity(10, 100.0, "USD", "334111", datetime.date(2022, 1, 1))
    bad_spend = SpendActivity(11, 100.0, "XYZ", "334111", datetime.date(2022, 1, 1))
    expected = calculate(spend, book)
    with pipeline() as p:
        factors = p | "Book" >> beam.Create([pack_book(book)])
        out = (
            p
            | beam.Create(
                [ActivityTable("spend", as_read(activities_table("spend", [spend, bad_spend])))]
            )
            | CalculateEmissions(factors)
        )
        assert_that(
            out.results | beam.FlatMap(rows_of), equal_to([stored(expected)]), label="Results"
        )
        assert_that(
            out[ERRORS] | beam.Map(lambda e: (e.activity_id, e.reason_code)),
            equal_to([(11, "unknown_currency")]),
            label="Errors",
        )


def _insert(engine: sa.Engine, rows: list[dict]) -> None:
    table = tables.table(tables.ACTIVITY_TABLES["electricity"])
    with engine.begin() as conn:
        conn.execute(table.insert(), rows)


def test_read_pending_activities_composite(engine: sa.Engine, database_url: str) -> None:
    rows = [
        {"id": i, "quantity": float(i), "unit": "kWh", "region": "CAMX", "activity_date": D}
        for i in range(1, 31)
    ]
    _insert(engine, rows)
    conn = connections.connect(database_url)
    try:  # activities 1..10 already have a result
        writes.write_results(conn, [result_for(i) for i in range(1, 11)], RUN)
    finally:
        conn.close()
    expected = [(i, float(i), "kWh", "CAMX", None, D.isoformat()) for i in range(11, 31)]
    with pipeline() as p:
        ranges = plan_int_ranges("electricity", 1, 30, 4)
        read = p | ReadPendingActivities(database_url, ranges) | beam.Map(lambda a: a.table)
        rows = read | beam.FlatMap(
            lambda t: [
                tuple(r.values())
                for r in t.drop([queries.VERSION_COLUMN, queries.STORED_COLUMN]).to_pylist()
            ]
        )
        assert_that(rows, equal_to(expected))
        versions = read | beam.FlatMap(lambda t: t.column(queries.VERSION_COLUMN).to_pylist())
        assert_that(
            versions | beam.Map(lambda v: isinstance(v, int) and v > 0),
            equal_to([True] * 20),
            label="EveryRowHasItsVersion",
        )


def test_read_pending_activities_by_date(engine: sa.Engine, database_url: str) -> None:
    _insert(
        engine,
        [
            {"id": 1, "quantity": 1.0, "unit": "kWh", "region": "CAMX", "activity_date": D},
            {
                "id": 2,
                "quantity": 2.0,
                "unit": "kWh",
                "region": "CAMX",
                "activity_date": datetime.date(2024, 1, 1),
            },
        ],
    )
    with pipeline() as p:
        ranges = plan_int_ranges("electricity", 1, 2, 2)
        read = p | ReadPendingActivities(
            database_url, ranges, date_from="2024-01-01", date_to="2024-01-02"
        )
        assert_that(read | beam.FlatMap(lambda a: a.table.column("id").to_pylist()), equal_to([2]))


def test_write_composites_store_each_row_once(
    engine: sa.Engine, database_url: str, book: FactorBook
) -> None:
    activities = [ElectricityActivity(i, 10.0 * i, "MWh", "NEWE", None, D) for i in range(1, 101)]
    results = [calculate(a, book) for a in activities]
    table = calculate_batch("electricity", activities_table("electricity", activities), book)
    # The activity rows, and the versions the results were computed from: a flush that finds
    # rows stored goes through the one supersede path, which checks them.
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO emissions.electricity_activities (id, quantity, unit, region) "
                "SELECT i, 10.0 * i, 'MWh', 'NEWE' FROM generate_series(1, 100) i"
            )
        )
        versions: dict[int, int] = dict(
            conn.execute(
                sa.text("SELECT id, xmin::text::bigint FROM emissions.electricity_activities")
            ).all()
        )
    ids = table.results.column("activity_id").to_pylist()
    table = dataclasses.replace(
        table,
        results=table.results.append_column(
            tables.VERSION_COLUMN, pa.array([versions[i] for i in ids], pa.int64())
        ),
    )
    error = ErrorRecord("electricity", 500, "unknown_unit", "bad unit", "{}")

    def run_once() -> None:
        with pipeline() as p:
            # every result twice: as a retried bundle would deliver them
            tables = [table.results.slice(0, 60), table.results.slice(40), table.results]
            _ = p | "R" >> beam.Create(tables) | WriteResults(database_url, RUN, 70)
            _ = p | "E" >> beam.Create([error, error]) | WriteErrors(database_url, RUN, 7)

    run_once()
    run_once()
    with engine.connect() as conn:
        count, total = conn.execute(
            sa.text("SELECT count(*), sum(kg_co2e) FROM emissions.emission_results")
        ).one()
        errors = conn.execute(sa.text("SELECT count(*) FROM emissions.emission_errors")).scalar()
    assert count == 100
    assert total == pytest.approx(sum(r.kg_co2e for r in results), rel=1e-12)
    assert errors == 1
    # Overlapping flushes (the second and third hold rows already stored) log only what they
    # wrote: 100 results in all, whatever order the flushes ran in.
    with engine.connect() as conn:
        logged = conn.execute(
            sa.text(
                "SELECT sum(results), sum(kg_co2e), count(*) FROM "
                f"{tables.qualified_text(tables.WRITES_TABLE)}"
            )
        ).one()
    assert logged[0] == 100 and logged[1] == pytest.approx(total, rel=1e-12)
    assert_write_log_matches_results(engine, RUN)
