"""A follow run resumed after it was declared abandoned (issue 22, item 3) stops at once,
writes nothing and leaves its marks where they were: what changed meanwhile is the next
follow run's, computed once. A follow run's counts are the rows it stored (item 7's counts).

The frozen run is a real ``python -m pipeline.follow`` process, stopped by SIGSTOP (its TCP
connections stay open) and marked abandoned by ``ops.status --stale-after 1``.
"""

from __future__ import annotations

import signal
from pathlib import Path

import pytest
import sqlalchemy as sa

from ops.seed import seed
from pipeline.store import connections
from tests.support import scalar, wait_for
from tests.test_claims import rows_of
from tests.test_end_to_end import run_pipeline
from tests.test_follow import execute, result_of, start_follow

#: Inserted while the follow run is frozen (ids above the seed's); the last is refused.
INSERTED = (
    (900001, 1000.0, "kWh"),
    (900002, 2500.0, "kWh"),
    (900003, 7.0, "furlongs"),
)


def marks(url: str) -> dict[str, tuple[str | None, str | None]]:
    conn = connections.connect(url)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT activity_type, mark, scanned FROM emissions.follow_marks")
            return {t: (m, s) for t, m, s in cur.fetchall()}
    finally:
        conn.close()


def recorded_counts(url: str, run_id: str) -> tuple[int, int]:
    processed, errors = scalar(
        url,
        "SELECT ARRAY[total_processed, errors] FROM emissions.calculation_runs WHERE run_id = %s",
        (run_id,),
    )
    return int(processed), int(errors)


def insert_electricity(url: str, activity_id: int, quantity: float, unit: str) -> None:
    execute(
        url,
        "INSERT INTO emissions.electricity_activities (id, quantity, unit, region, country, "
        "activity_date) VALUES (%s, %s, %s, 'CAMX', 'USA', '2024-05-01')",
        (activity_id, quantity, unit),
    )


def _follow_id(url: str, other_than: str) -> str:
    return str(
        scalar(
            url,
            "SELECT run_id::text FROM emissions.calculation_runs WHERE options->>'follow' = "
            "'true' AND run_id::text <> %s",
            (other_than,),
        )
    )


@pytest.mark.parametrize("end", ["stop_after", "sigterm"])
def test_a_follow_runs_counts_are_the_rows_it_stored(
    end: str,
    database_url: str,
    engine: sa.Engine,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    """A dead letter the follow run stored counts, though its activity got a result since;
    in its summary (its time is up) as in its record (cancelled by SIGTERM)."""
    seed(engine, 200, seed_value=13)
    run_pipeline(database_url, capsys)
    stop_after = ("--stop-after", "12") if end == "stop_after" else ()
    proc = start_follow(database_url, tmp_path, *stop_after)
    try:
        insert_electricity(database_url, 900001, 5.0, "furlongs")
        wait_for(
            lambda: (
                scalar(
                    database_url,
                    "SELECT count(*) FROM emissions.emission_errors WHERE activity_id = 900001",
                )
                == 1
            ),
            30,
            what="a dead letter",
        )
        execute(
            database_url,
            "UPDATE emissions.electricity_activities SET unit = 'kWh' WHERE id = 900001",
        )
        if end == "sigterm":
            wait_for(
                lambda: result_of(database_url, "electricity", 900001) is not None,
                30,
                what="its result",
            )
            proc.proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == (0 if end == "stop_after" else 128 + signal.SIGTERM)
    finally:
        proc.kill()
    run_id = _follow_id(database_url, "")
    stored = (
        rows_of(database_url, "emission_results", run_id),
        rows_of(database_url, "emission_errors", run_id),
    )
    assert stored == (1, 1)
    if end == "stop_after":
        summary = proc.summary()
        assert (summary["total_processed"], summary["errors"]) == stored
    assert recorded_counts(database_url, run_id) == stored
