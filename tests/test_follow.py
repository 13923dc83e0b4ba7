"""The follow mode: a row inserted or corrected by hand gets its result within seconds; a row
whose transaction commits after a later-numbered one is still found; SIGKILL and a restart
mid-stream lose and double nothing; SIGTERM ends it cleanly; a source it cannot follow is
refused in one line."""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path

import psycopg2
import pytest
import sqlalchemy as sa

from ops.seed import seed
from pipeline.store import connections
from tests.support import (
    RunProcess,
    duplicate_counts,
    scalar,
    sql_reference,
    start_run,
    wait_for,
)
from tests.test_end_to_end import run_pipeline

#: Seconds: a poll every half second; a result is expected well within this.
WITHIN = 15.0


def start_follow(url: str, workdir: Path, *extra: str, name: str = "follow") -> RunProcess:
    return start_run(
        url,
        workdir,
        "--poll-interval",
        "0.5",
        *extra,
        name=name,
        module="pipeline.follow",
    )


def following(url: str, proc: RunProcess) -> None:
    """Waits until the follow run has recorded itself and polled once."""

    def ready() -> bool:
        assert proc.proc.poll() is None, proc.stderr
        return bool(
            scalar(url, "SELECT count(*) FROM emissions.follow_marks WHERE scanned IS NOT NULL")
        )

    wait_for(ready, timeout=60, what="the follow run's first poll")


def result_of(url: str, activity_type: str, activity_id: int) -> tuple[float, float] | None:
    """(kg CO2e, activity amount) of the current result, if any."""
    conn = connections.connect(url)
    try:
        with conn.cursor() as cur:
            cur.execute(
                "SELECT kg_co2e, activity_amount FROM emissions.emission_results "
                "WHERE activity_type = %s AND activity_id = %s",
                (activity_type, activity_id),
            )
            row = cur.fetchone()
        conn.rollback()
    finally:
        conn.close()
    return (float(row[0]), float(row[1])) if row else None


def execute(url: str, statement: str, params: tuple[object, ...] = ()) -> None:
    conn = connections.connect(url)
    try:
        with conn.cursor() as cur:
            cur.execute(statement, params)
        conn.commit()
    finally:
        conn.close()


def matches_reference(url: str) -> None:
    """Exactly one current result per computable activity, each equal to the SQL reference."""
    reference = sql_reference(url)
    conn = connections.connect(url)
    try:
        with conn.cursor() as cur:
            cur.execute(
                "SELECT activity_type, activity_id::text, kg_co2e FROM emissions.emission_results"
            )
            stored = {(t, i): kg for t, i, kg in cur.fetchall()}
    finally:
        conn.close()
    assert set(stored) == set(reference)
    for key, kg in reference.items():
        assert stored[key] == pytest.approx(kg, rel=1e-12, abs=1e-12), key
    assert duplicate_counts(url) == (0, 0)


def test_a_row_inserted_and_a_row_corrected_by_hand_get_results_within_seconds(
    database_url: str,
    engine: sa.Engine,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    seed(engine, 300, seed_value=8)
    run_pipeline(database_url, capsys)
    corrected = int(
        scalar(
            database_url,
            "SELECT min(activity_id) FROM emissions.emission_results "
            "WHERE activity_type = 'electricity'",
        )
    )
    before = result_of(database_url, "electricity", corrected)
    assert before is not None
    proc = start_follow(database_url, tmp_path)
    try:
        following(database_url, proc)
        started = time.monotonic()
        execute(
            database_url,
            "INSERT INTO emissions.electricity_activities (id, quantity, unit, region, country, "
            "activity_date) VALUES (900001, 1234.5, 'kWh', 'CAMX', 'USA', '2024-05-01')",
        )
        execute(
            database_url,
            "UPDATE emissions.electricity_activities SET quantity = quantity * 10 WHERE id = %s",
            (corrected,),
        )
        wait_for(
            lambda: (
                result_of(database_url, "electricity", 900001) is not None
                and result_of(database_url, "electricity", corrected) != before
            ),
            timeout=WITHIN,
            what="results for the inserted and the corrected rows",
        )
        latency = time.monotonic() - started
        new = result_of(database_url, "electricity", 900001)
        after = result_of(database_url, "electricity", corrected)
        assert new is not None and new[1] == 1234.5
        assert after is not None and after[1] == pytest.approx(before[1] * 10, rel=1e-12)
        # The old result of the corrected row is in history, replaced by the follow run.
        follow_run = scalar(
            database_url,
            "SELECT run_id::text FROM emissions.calculation_runs WHERE options->>'follow' = 'true'",
        )
        assert (
            scalar(
                database_url,
                "SELECT count(*) FROM emissions.emission_results_history WHERE activity_id = %s "
                "AND reason = 'activity_changed' AND restatement_id = %s",
                (corrected, follow_run),
            )
            == 1
        )
        matches_reference(database_url)
        # SIGTERM: a clean end, recorded with what it stored.
        proc.proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 128 + signal.SIGTERM
    finally:
        proc.kill()
    status, processed = scalar(
        database_url,
        "SELECT ARRAY[status, total_processed::text] FROM emissions.calculation_runs "
        "WHERE options->>'follow' = 'true'",
    )
    assert (status, int(processed)) == ("cancelled", 2)
    assert "cancelled by SIGTERM after 2 results were stored" in proc.stderr
    assert latency < WITHIN


def test_a_row_committed_after_a_later_numbered_one_is_still_found(
    database_url: str, engine: sa.Engine, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    seed(engine, 100, seed_value=9)
    run_pipeline(database_url, capsys)
    proc = start_follow(database_url, tmp_path)
    late = connections.connect(database_url)
    try:
        following(database_url, proc)
        # The first transaction draws its number, and stays open...
        with late.cursor() as cur:
            cur.execute(
                "INSERT INTO emissions.spend_activities (id, amount, currency, naics_code, "
                "activity_date) VALUES (800001, 500, 'USD', '334111', '2024-03-01') "
                "RETURNING change_seq"
            )
            (early_number,) = cur.fetchone()
        # ... while a later-numbered row commits, and is computed.
        execute(
            database_url,
            "INSERT INTO emissions.spend_activities (id, amount, currency, naics_code, "
            "activity_date) VALUES (800002, 700, 'USD', '334111', '2024-03-01')",
        )
        wait_for(
            lambda: result_of(database_url, "spend", 800002) is not None,
            timeout=WITHIN,
            what="the later row's result",
        )
        later_number = scalar(
            database_url, "SELECT change_seq FROM emissions.spend_activities WHERE id = 800002"
        )
        assert early_number < later_number
        assert result_of(database_url, "spend", 800001) is None
        time.sleep(2)  # several polls pass over it meanwhile
        late.commit()
        wait_for(
            lambda: result_of(database_url, "spend", 800001) is not None,
            timeout=WITHIN,
            what="the late row's result",
        )
        # Once nothing is left to compute, the mark passes both.
        wait_for(
            lambda: (
                int(
                    scalar(
                        database_url,
                        "SELECT coalesce(mark::bigint, 0) FROM emissions.follow_marks "
                        "WHERE activity_type = 'spend'",
                    )
                )
                >= later_number
            ),
            timeout=WITHIN,
            what="the mark to pass the late row",
        )
        matches_reference(database_url)
    finally:
        late.close()
        proc.kill()


def test_sigkill_and_a_restart_mid_stream_and_a_batch_run_beside_it_lose_and_double_nothing(
    database_url: str, engine: sa.Engine, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    seed(engine, 200, seed_value=10)
    run_pipeline(database_url, capsys)
    done = threading.Event()
    inserted: list[int] = []

    def insert() -> None:
        """New rows and corrections, a few every 50 ms, until told to stop."""
        conn = psycopg2.connect(database_url)
        try:
            next_id = 700_000
            while not done.is_set():
                with conn.cursor() as cur:
                    for _ in range(5):
                        cur.execute(
                            "INSERT INTO emissions.air_travel_activities (id, origin, "
                            "destination, cabin_class, passengers, return_trip, activity_date) "
                            "VALUES (%s, 'LHR', 'JFK', 'economy', 1, false, '2024-06-01')",
                            (next_id,),
                        )
                        inserted.append(next_id)
                        next_id += 1
                    cur.execute(
                        "UPDATE emissions.electricity_activities SET quantity = quantity + 1 "
                        "WHERE id = (SELECT id FROM emissions.electricity_activities "
                        "ORDER BY random() LIMIT 1)"
                    )
                conn.commit()
                time.sleep(0.05)
        finally:
            conn.close()

    writer = threading.Thread(target=insert)
    first = start_follow(database_url, tmp_path, name="first")
    try:
        following(database_url, first)
        writer.start()
        # Killed once it has stored a good part of what is coming in.
        wait_for(
            lambda: (
                int(
                    scalar(
                        database_url,
                        "SELECT count(*) FROM emissions.emission_results "
                        "WHERE activity_type = 'air_travel' AND activity_id >= 700000",
                    )
                )
                >= 100
            ),
            timeout=60,
            what="the first follow run to store 100 new flights",
        )
        first.kill()
        time.sleep(1)  # rows keep arriving while nothing follows them
        second = start_follow(database_url, tmp_path, name="second")
        try:
            following(database_url, second)
            # A batch run beside it, while rows arrive: the two share the work, nothing doubled.
            batch = start_run(database_url, tmp_path, "--progress-interval", "0", name="batch")
            assert batch.wait() == 0, batch.stderr[-2000:]
            time.sleep(2)
            done.set()
            writer.join(timeout=30)
            wait_for(
                lambda: (
                    int(
                        scalar(
                            database_url,
                            "SELECT count(*) FROM emissions.emission_results "
                            "WHERE activity_type = 'air_travel' AND activity_id >= 700000",
                        )
                    )
                    == len(inserted)
                ),
                timeout=60,
                what="a result for every inserted flight",
            )
            # Every correction too: the results equal the computation from the rows as they are.
            wait_for(lambda: _matches(database_url), timeout=60, what="every correction computed")
        finally:
            second.kill()
    finally:
        done.set()
        first.kill()
    matches_reference(database_url)


def _matches(url: str) -> bool:
    try:
        matches_reference(url)
    except AssertionError:
        return False
    return True


def test_a_source_without_a_follow_by_column_is_refused_in_one_line(
    make_database: Callable[..., str], tmp_path: Path
) -> None:
    url = make_database("bigint")
    execute(
        url,
        "CREATE SCHEMA app; CREATE TABLE app.power (id bigint PRIMARY KEY, kwh float8, "
        "region text, used_on date)",
    )
    sources = tmp_path / "sources.toml"
    sources.write_text(
        '[electricity]\ntable = "app.power"\n'
        '[electricity.fields]\nquantity = "kwh"\nunit = { value = "kWh" }\n'
        'region = "region"\nactivity_date = "used_on"\n'
    )
    proc = start_follow(url, tmp_path, "--sources", str(sources), "--activity-types", "electricity")
    assert proc.wait(timeout=60) == 2
    lines = proc.stderr.strip().splitlines()
    refused = (
        "electricity: app.power has no follow_by column: name an indexed column that "
        "grows with every insert and update (a number from a sequence, an updated_at "
        "timestamp) as follow_by in the sources file (docs/follow.md)"
    )
    assert lines[-1] == f"error: {refused}"
    # Recorded from its first statement: a refused run is a failed run, with its reason.
    assert scalar(url, "SELECT count(*) FROM emissions.calculation_runs") == 1
    assert scalar(url, "SELECT status || ': ' || message FROM emissions.calculation_runs") == (
        f"failed: {refused}"
    )


def test_a_teams_table_is_followed_by_its_own_indexed_updated_at(
    make_database: Callable[..., str], tmp_path: Path
) -> None:
    url = make_database("bigint")
    execute(
        url,
        "CREATE SCHEMA app; CREATE TABLE app.power (id bigint PRIMARY KEY, kwh float8, "
        "region text, used_on date, updated_at timestamptz NOT NULL DEFAULT now()); "
        "CREATE INDEX ON app.power (updated_at); "
        "INSERT INTO app.power (id, kwh, region, used_on) "
        "SELECT g, 100 + g, 'CAMX', '2024-02-01' FROM generate_series(1, 50) g",
    )
    sources = tmp_path / "sources.toml"
    sources.write_text(
        '[electricity]\ntable = "app.power"\nfollow_by = "updated_at"\n'
        '[electricity.fields]\nquantity = "kwh"\nunit = { value = "kWh" }\n'
        'region = "region"\nactivity_date = "used_on"\n'
    )
    proc = start_follow(url, tmp_path, "--sources", str(sources), "--activity-types", "electricity")
    try:
        # The rows already there are computed by the first polls, then a new one within seconds.
        wait_for(
            lambda: scalar(url, "SELECT count(*) FROM emissions.emission_results") == 50,
            timeout=60,
            what="the 50 rows already there",
        )
        execute(
            url,
            "INSERT INTO app.power (id, kwh, region, used_on) "
            "VALUES (51, 2000, 'CAMX', '2024-02-02')",
        )
        execute(url, "UPDATE app.power SET kwh = 5000, updated_at = now() WHERE id = 7")
        wait_for(
            lambda: (
                result_of(url, "electricity", 51) is not None
                and (result_of(url, "electricity", 7) or (0, 0))[1] == 5000
            ),
            timeout=WITHIN,
            what="results for the new and the corrected row",
        )
    finally:
        proc.kill()
    assert scalar(url, "SELECT count(*) FROM emissions.emission_results") == 51
    assert duplicate_counts(url) == (0, 0)
    # Its marks are timestamps of the source's own column.
    mark = scalar(
        url, "SELECT scanned FROM emissions.follow_marks WHERE activity_type = 'electricity'"
    )
    assert mark == scalar(url, "SELECT max(updated_at)::text FROM app.power")
