"""One supersede path for every writer (issue 22, items 1 and 2; issue 23, restatement locks).

A stored result is replaced only by a value computed from its activity's input as it is now (a
compare-and-swap on the source row's current version, in the statement that replaces it); a
value computed from an outdated input is dropped and the activity stays pending. Every value
that leaves ``emission_results`` reaches its history exactly once, however many times one run
replaces it; a retried flush adds nothing. Restatements lock per schema.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import psycopg2
import pyarrow as pa
import pytest
import sqlalchemy as sa

from audit import restate, verify
from ops.seed import seed
from pipeline.methodology import FactorBook
from pipeline.ranges import KeyRange
from pipeline.store import bulk, connections, install, queries, writes
from pipeline.store.sources import default_sources
from tests.test_end_to_end import run_pipeline
from transforms.calculate import CalculateFn, pack_book
from transforms.read import ReadRangeFn
from transforms.write import _write_tables

AIR_2024 = "2024 full set v1.1"
AIR_2025 = "2025 flat file"
RUN_ID = str(uuid.uuid4())


@pytest.fixture
def db(
    make_database: Callable[..., str],
) -> Iterator[tuple[str, sa.Engine]]:
    url = make_database("bigint")
    engine = connections.make_engine(url, poolclass=sa.pool.NullPool)
    yield url, engine
    engine.dispose()


def rows(engine: sa.Engine, query: str, **params: object) -> list[tuple[Any, ...]]:
    with engine.begin() as conn:
        result = conn.execute(sa.text(query), params)
        return [tuple(r) for r in result] if result.returns_rows else []


def computed(url: str, activity_type: str) -> list[pa.Table]:
    """The pending activities of a type read and calculated as a run does, not yet written."""
    reader = ReadRangeFn(url)
    reader.setup()
    try:
        read = list(reader.process(KeyRange(activity_type, None, None)))  # type: ignore[arg-type]
    finally:
        reader.teardown()
    conn = connections.connect(url)
    try:
        book = pack_book(FactorBook.from_rows(queries.read_factor_rows(conn)))
    finally:
        conn.close()
    calculate = CalculateFn()
    calculate.setup()
    return [
        out for table in read for out in calculate.process(table, book) if isinstance(out, pa.Table)
    ]


def kg_of(tables_: list[pa.Table], activity_id: int) -> float:
    (kg,) = [
        kg
        for t in tables_
        for i, kg in zip(
            t.column("activity_id").to_pylist(), t.column("kg_co2e").to_pylist(), strict=True
        )
        if i == activity_id
    ]
    return float(kg)


def write(url: str, results: list[pa.Table], run_id: str = RUN_ID) -> int:
    conn = connections.connect(url)
    try:
        return _write_tables(conn, results, run_id, "emissions")
    finally:
        conn.close()


def current(engine: sa.Engine, activity_type: str, activity_id: int) -> tuple[float, bool]:
    """(kg CO2e stored, whether the result claims the activity row's current version)."""
    table = f"emissions.{activity_type}_activities"
    ((kg, same),) = rows(
        engine,
        f"SELECT r.kg_co2e, r.activity_version = a.xmin::text::bigint FROM "
        f"emissions.emission_results r JOIN {table} a ON a.id = r.activity_id "
        "WHERE r.activity_type = :t AND r.activity_id = :i",
        t=activity_type,
        i=activity_id,
    )
    return float(kg), bool(same)


def history(engine: sa.Engine, activity_type: str, activity_id: int) -> list[tuple[float, str]]:
    return [
        (float(kg), reason)
        for kg, reason in rows(
            engine,
            "SELECT kg_co2e, reason FROM emissions.emission_results_history "
            "WHERE activity_type = :t AND activity_id = :i ORDER BY superseded_at",
            t=activity_type,
            i=activity_id,
        )
    ]


def electricity_id(engine: sa.Engine) -> int:
    ((i,),) = rows(engine, "SELECT min(id) FROM emissions.electricity_activities")
    return int(i)


def set_quantity(engine: sa.Engine, activity_id: int, quantity: float) -> None:
    rows(
        engine,
        "UPDATE emissions.electricity_activities SET quantity = :q WHERE id = :i",
        q=quantity,
        i=activity_id,
    )


def test_a_restatement_beside_a_correction_never_stores_a_value_of_the_old_input(
    db: tuple[str, sa.Engine],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Activity 8891 of the issue: a restatement reads its snapshot; a flight is turned into a
    return trip and a run stores its new result; the restatement's value, computed from the one
    way trip, must not replace it."""
    url, engine = db
    seed(engine, 400, seed_value=22)
    run_pipeline(url, capsys)
    ((flight,),) = rows(
        engine,
        "SELECT min(r.activity_id) FROM emissions.emission_results r "
        "JOIN emissions.emission_factors f ON f.id = r.factor_id "
        "JOIN emissions.air_travel_activities a ON a.id = r.activity_id "
        "WHERE f.edition = :e AND NOT a.return_trip",
        e=AIR_2024,
    )
    one_way, _ = current(engine, "air_travel", flight)
    seen: dict[str, float] = {}
    original = restate._recompute

    def correction_meanwhile(*args: Any, **kwargs: Any) -> Any:
        # The restatement's snapshot is taken (its rows are fetched): the correction lands
        # and a run stores the result of the new input, before the restatement writes.
        if not seen:
            rows(
                engine,
                "UPDATE emissions.air_travel_activities SET return_trip = true WHERE id = :i",
                i=flight,
            )
            seen["return"] = kg_of(computed(url, "air_travel"), flight)
            assert run_pipeline(url, capsys)["changed"] == 1
        return original(*args, **kwargs)

    monkeypatch.setattr(restate, "_recompute", correction_meanwhile)
    capsys.readouterr()
    code = restate.main(
        ["--database-url", url, "--pin", f"desnz_air={AIR_2025}", "--activity-types", "air_travel"]
    )
    out = capsys.readouterr().out
    assert code == 0, out
    outcome = json.loads(out)
    # The return trip's result stands: the value of the new input, at its version.
    assert seen["return"] > 1.5 * one_way
    assert current(engine, "air_travel", flight) == (seen["return"], True)
    assert history(engine, "air_travel", flight) == [(one_way, "activity_changed")]
    assert outcome["left_to_next_run"] == 1
    summary = run_pipeline(url, capsys)
    assert summary["pending"] == 0
    report = verify.verify(engine, sample=None)
    ((results,),) = rows(engine, "SELECT count(*) FROM emissions.emission_results")
    assert report.examined == results > 300
    assert report.examined - report.reproduced == 0, report.as_dict()


def test_a_stale_batch_write_never_replaces_a_newer_result(
    db: tuple[str, sa.Engine], capsys: pytest.CaptureFixture[str]
) -> None:
    url, engine = db
    seed(engine, 300, seed_value=23)
    run_pipeline(url, capsys)
    changed = electricity_id(engine)
    # A slow run reads the activity at one version, computes, and has not written yet ...
    set_quantity(engine, changed, 1000.0)
    stale = computed(url, "electricity")
    # ... meanwhile it is corrected again, and another run stores the newer value.
    set_quantity(engine, changed, 3000.0)
    newer = run_pipeline(url, capsys)
    assert newer["changed"] == 1
    kg_newer, _ = current(engine, "electricity", changed)
    assert kg_newer == pytest.approx(3 * kg_of(stale, changed), rel=1e-12)
    before = history(engine, "electricity", changed)
    # The slow run's write is dropped: the stored result stays the newer one, at its version.
    assert write(url, stale) == 0
    assert current(engine, "electricity", changed) == (kg_newer, True)
    assert history(engine, "electricity", changed) == before
    assert run_pipeline(url, capsys)["pending"] == 0


def test_a_newer_result_replaces_an_older_one_both_read_as_new(
    db: tuple[str, sa.Engine], capsys: pytest.CaptureFixture[str]
) -> None:
    """Two writers read a new activity at two versions; the older value lands first. The newer
    one, refused by the plain insert, goes through the supersede path and replaces it."""
    url, engine = db
    seed(engine, 200, seed_value=24)
    run_pipeline(url, capsys)
    new_id = 10_000_000
    rows(
        engine,
        "INSERT INTO emissions.electricity_activities (id, quantity, unit, region, country, "
        "activity_date) SELECT :n, 100, unit, region, country, activity_date "
        "FROM emissions.electricity_activities WHERE id = :i",
        n=new_id,
        i=electricity_id(engine),
    )
    older = computed(url, "electricity")
    set_quantity(engine, new_id, 200.0)
    newer = computed(url, "electricity")
    kg_older, kg_newer = kg_of(older, new_id), kg_of(newer, new_id)
    assert kg_newer == pytest.approx(2 * kg_older, rel=1e-12)
    assert write(url, older) == 1  # claims the version it was computed from: still pending
    assert current(engine, "electricity", new_id) == (kg_older, False)
    assert write(url, newer) == 1
    assert current(engine, "electricity", new_id) == (kg_newer, True)
    assert history(engine, "electricity", new_id) == [(kg_older, "activity_changed")]
    assert write(url, older) == 0  # and the older value never comes back
    assert current(engine, "electricity", new_id) == (kg_newer, True)


def test_every_value_one_run_replaces_reaches_history_once(
    db: tuple[str, sa.Engine], capsys: pytest.CaptureFixture[str]
) -> None:
    """A follow run lives for days: an activity corrected twice within one run id keeps both
    earlier values in history, in order; a retried flush adds no history row; the retirement
    of the third value by the same run id keeps it too."""
    url, engine = db
    seed(engine, 300, seed_value=25)
    run_pipeline(url, capsys)
    changed = electricity_id(engine)
    kg_first, _ = current(engine, "electricity", changed)
    set_quantity(engine, changed, 1000.0)
    second = computed(url, "electricity")
    assert write(url, second) == 1
    set_quantity(engine, changed, 2000.0)
    third = computed(url, "electricity")
    assert write(url, third) == 1
    kg_second, kg_third = kg_of(second, changed), kg_of(third, changed)
    assert kg_third == pytest.approx(2 * kg_second, rel=1e-12)
    assert history(engine, "electricity", changed) == [
        (kg_first, "activity_changed"),
        (kg_second, "activity_changed"),
    ]
    assert current(engine, "electricity", changed) == (kg_third, True)
    # A retried flush (its commit not acknowledged) writes nothing and keeps nothing twice.
    assert write(url, third) == 0
    assert len(history(engine, "electricity", changed)) == 2
    # The same run retires it when the activity is deleted: the third value is kept as well.
    rows(engine, "DELETE FROM emissions.electricity_activities WHERE id = :i", i=changed)
    conn = connections.connect(url)
    try:
        source = default_sources()["electricity"]
        assert writes.retire_deleted(conn, source, None, None, RUN_ID) == (1, 0)
    finally:
        conn.close()
    assert history(engine, "electricity", changed) == [
        (kg_first, "activity_changed"),
        (kg_second, "activity_changed"),
        (kg_third, "activity_deleted"),
    ]
    ((moved_by,),) = rows(
        engine,
        "SELECT count(DISTINCT restatement_id) FROM emissions.emission_results_history "
        "WHERE activity_id = :i AND restatement_id = :r",
        i=changed,
        r=RUN_ID,
    )
    assert moved_by == 1


def test_restatements_lock_per_schema(
    db: tuple[str, sa.Engine], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two restatements in two schemas of one database run at once; in one schema, a second
    is refused while the first runs."""
    url, engine = db
    seed(engine, 200, seed_value=26)
    run_pipeline(url, capsys)
    install.create_schema(engine, "bigint", "second")
    inside: dict[str, Any] = {}
    original = restate._recompute

    def others_meanwhile(*args: Any, **kwargs: Any) -> Any:
        if not inside:
            inside["other schema"] = restate.restate(engine, schema="second")
            with pytest.raises(restate.RestatementRunning, match="in schema emissions"):
                restate.restate(engine)
        return original(*args, **kwargs)

    monkeypatch.setattr(restate, "_recompute", others_meanwhile)
    outcome = restate.restate(engine, {"desnz_air": AIR_2025}, ["air_travel"])
    assert outcome.changed > 0
    assert inside["other schema"].examined == 0
    statuses = rows(
        engine,
        "SELECT status, count(*) FROM emissions.restatements GROUP BY 1 "
        "UNION ALL SELECT status, count(*) FROM second.restatements GROUP BY 1",
    )
    assert statuses == [("succeeded", 1), ("succeeded", 1)]


def test_a_restatement_cut_off_part_way_is_read_again_and_counts_each_result_once(
    db: tuple[str, sa.Engine], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The fault harness's F3: a PostgreSQL restart failed a restatement. Its connection lost
    after its first chunk is stored, the restatement reads the type again and completes; each
    flight restated once, examined once."""
    url, engine = db
    seed(engine, 400, seed_value=27)
    run_pipeline(url, capsys)
    ((flights, on_2024),) = rows(
        engine,
        "SELECT count(*), count(*) FILTER (WHERE f.edition = :e) "
        "FROM emissions.emission_results r JOIN emissions.emission_factors f "
        "ON f.id = r.factor_id WHERE r.activity_type = 'air_travel'",
        e=AIR_2024,
    )
    assert on_2024 > 20
    original = bulk.supersede_results_table
    calls: list[int] = []

    def cut_off_on_the_second_chunk(*args: Any, **kwargs: Any) -> Any:
        calls.append(len(calls))
        if len(calls) == 2:
            raise psycopg2.OperationalError("server closed the connection unexpectedly")
        return original(*args, **kwargs)

    monkeypatch.setattr(bulk, "supersede_results_table", cut_off_on_the_second_chunk)
    outcome = restate.restate(engine, {"desnz_air": AIR_2025}, ["air_travel"], chunk=10)
    assert len(calls) > 3
    assert (outcome.examined, outcome.changed, outcome.left_to_next_run) == (flights, on_2024, 0)
    assert outcome.diff["changed"] == on_2024
    ((kept, distinct),) = rows(
        engine,
        "SELECT count(*), count(DISTINCT activity_id) FROM emissions.emission_results_history "
        "WHERE restatement_id = :r",
        r=outcome.restatement_id,
    )
    assert kept == distinct == on_2024
    assert rows(engine, "SELECT status FROM emissions.restatements") == [("succeeded",)]


def test_an_activity_corrected_into_refused_input_keeps_its_dead_letter_only(
    db: tuple[str, sa.Engine], capsys: pytest.CaptureFixture[str]
) -> None:
    """The fault harness's F1: a correction the methodology refuses left the old result in the
    totals beside the new dead letter, and every run read the activity again."""
    url, engine = db
    seed(engine, 300, seed_value=28)
    run_pipeline(url, capsys)
    refused = electricity_id(engine)
    kg_before, _ = current(engine, "electricity", refused)
    rows(
        engine,
        "UPDATE emissions.electricity_activities SET unit = 'furlongs' WHERE id = :i",
        i=refused,
    )
    summary = run_pipeline(url, capsys)
    assert summary["by_activity_type"]["electricity"]["errors"] == 1
    assert rows(
        engine,
        "SELECT count(*) FROM emissions.emission_results WHERE activity_type = 'electricity' "
        "AND activity_id = :i",
        i=refused,
    ) == [(0,)]
    assert history(engine, "electricity", refused) == [(kg_before, "activity_changed")]
    assert rows(
        engine,
        "SELECT e.reason_code, e.activity_version = a.xmin::text::bigint "
        "FROM emissions.emission_errors e JOIN emissions.electricity_activities a "
        "ON a.id = e.activity_id WHERE e.activity_type = 'electricity' AND e.activity_id = :i "
        "AND e.retired_at IS NULL",
        i=refused,
    ) == [("unknown_unit", True)]
    again = run_pipeline(url, capsys)
    assert (again["pending"], again["total_processed"]) == (0, 0)
    report = verify.verify(engine, sample=None)
    assert report.examined - report.reproduced == 0, report.as_dict()
