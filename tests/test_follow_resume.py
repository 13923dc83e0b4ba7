"""A follow run resumed after it was declared abandoned (issue 22, item 3) stops at once,
writes nothing and leaves its marks where they were: what changed meanwhile is the next
follow run's, computed once. A follow run's counts are the rows it stored (item 7's counts).

The frozen run is a real ``python -m pipeline.follow`` process, stopped by SIGSTOP (its TCP
connections stay open) and marked abandoned by ``ops.status --stale-after 1``.
"""

from __future__ import annotations

import os
import signal
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
import sqlalchemy as sa

from ops.seed import seed
from pipeline.store import checks, connections, runs
from pipeline.store import marks as marks_store
from pipeline.store.sources import default_sources
from tests.support import RunProcess, duplicate_counts, scalar, wait_for
from tests.test_claims import rows_of, sessions_of, status_report
from tests.test_end_to_end import run_pipeline
from tests.test_follow import execute, matches_reference, result_of, start_follow
from tests.test_status import heartbeat_older_than

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


def test_a_resumed_abandoned_follow_run_stops_at_once_and_the_next_computes_its_changes_once(
    make_database: Callable[..., str], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    url = make_database("bigint")
    engine = connections.make_engine(url, poolclass=sa.pool.NullPool)
    seed(engine, 300, seed_value=12)
    run_pipeline(url, capsys)
    frozen_id = str(uuid.uuid4())
    frozen = _start_and_freeze(url, tmp_path, frozen_id)
    try:
        _declare_abandoned(url, frozen_id)
        corrected = _change_while_frozen(url, engine)
        before = marks(url)
        stored = {t: rows_of(url, t, frozen_id) for t in ("emission_results", "emission_errors")}
        resumed = time.monotonic()
    finally:
        os.killpg(frozen.proc.pid, signal.SIGCONT)
    _assert_stops_at_once(frozen, frozen_id, resumed)
    # It wrote nothing, and its marks stayed below what changed while it was frozen.
    assert {t: rows_of(url, t, frozen_id) for t in stored} == stored
    assert marks(url) == before
    assert (
        scalar(url, "SELECT status FROM emissions.calculation_runs WHERE run_id = %s", (frozen_id,))
        == "abandoned"
    )

    # The next follow run computes each change once.
    after_id = str(uuid.uuid4())
    after = _follow_until_sigterm(url, tmp_path, after_id)
    _assert_each_change_computed_once(url, after, after_id, corrected)
    engine.dispose()


def _start_and_freeze(url: str, tmp_path: Path, frozen_id: str) -> RunProcess:
    """A follow run that works (a result within seconds), then stopped by SIGSTOP."""
    frozen = start_follow(url, tmp_path, "--run-id", frozen_id, name="frozen")
    try:
        insert_electricity(url, 900000, 10.0, "kWh")
        wait_for(lambda: result_of(url, "electricity", 900000) is not None, 60, what="a result")
        os.killpg(frozen.proc.pid, signal.SIGSTOP)
    except BaseException:
        frozen.kill()
        raise
    return frozen


def _declare_abandoned(url: str, frozen_id: str) -> None:
    """``ops.status --stale-after 1`` records the frozen run abandoned and ends its sessions."""
    wait_for(lambda: heartbeat_older_than(url, frozen_id, 1.5), 30, what="an old heartbeat")
    code, report = status_report(url, "--stale-after", "1")
    assert report["abandoned_now"] == [frozen_id], report
    wait_for(lambda: sessions_of(url, frozen_id) == 0, 10, what="its sessions ended")


def _change_while_frozen(url: str, engine: sa.Engine) -> list[int]:
    """Inserts ``INSERTED`` and doubles the quantity of three computed activities (returned)."""
    for activity_id, quantity, unit in INSERTED:
        insert_electricity(url, activity_id, quantity, unit)
    corrected = [
        int(i)
        for (i,) in engine.connect().execute(
            sa.text(
                "SELECT activity_id FROM emissions.emission_results WHERE activity_type = "
                "'electricity' AND activity_id < 900000 ORDER BY activity_id LIMIT 3"
            )
        )
    ]
    execute(
        url,
        "UPDATE emissions.electricity_activities SET quantity = quantity * 2 WHERE id = ANY(%s)",
        (corrected,),
    )
    return corrected


def _assert_stops_at_once(frozen: RunProcess, frozen_id: str, resumed: float) -> None:
    """Resumed at ``resumed``, the run exits 1 within 15 s, saying once that it was abandoned."""
    try:
        assert frozen.wait(timeout=30) == 1, frozen.stderr[-2000:]
    finally:
        frozen.kill()
    assert time.monotonic() - resumed < 15
    said = [line for line in frozen.stderr.splitlines() if line.startswith("error:")]
    assert len(said) == 1 and said[0].startswith(
        f"error: run {frozen_id} was recorded abandoned by another process"
    ), said


def _follow_until_sigterm(url: str, tmp_path: Path, run_id: str) -> RunProcess:
    """A follow run until it has stored the 5 results and 1 dead letter (and a few polls
    more), then stopped by SIGTERM."""
    after = start_follow(url, tmp_path, "--run-id", run_id, name="after")
    try:
        wait_for(
            lambda: (
                rows_of(url, "emission_results", run_id) == 5
                and rows_of(url, "emission_errors", run_id) == 1
            ),
            60,
            what="the changes computed by the next follow run",
        )
        time.sleep(2)  # a few more polls: nothing computed twice
        after.proc.send_signal(signal.SIGTERM)
        assert after.wait(timeout=60) == 128 + signal.SIGTERM
    finally:
        after.kill()
    return after


def _assert_each_change_computed_once(
    url: str, after: RunProcess, after_id: str, corrected: list[int]
) -> None:
    assert recorded_counts(url, after_id) == (5, 1)
    assert "cancelled by SIGTERM after 5 results were stored" in after.stderr
    assert (
        scalar(
            url,
            "SELECT coalesce(sum(results), 0) FROM emissions.calculation_run_writes "
            "WHERE run_id = %s",
            (after_id,),
        )
        == 5
    )
    assert (
        scalar(
            url,
            "SELECT count(*) FROM emissions.emission_results_history WHERE activity_id = ANY(%s) "
            "AND restatement_id = %s",
            (corrected, after_id),
        )
        == 3
    )
    assert result_of(url, "electricity", 900002) == (
        pytest.approx(2.5 * result_of(url, "electricity", 900001)[0], rel=1e-12),  # type: ignore[index]
        2500.0,
    )
    matches_reference(url)
    assert duplicate_counts(url) == (0, 0)


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


def test_a_poll_of_a_run_no_longer_running_hands_out_nothing_and_moves_no_mark(
    database_url: str, engine: sa.Engine, capsys: pytest.CaptureFixture[str]
) -> None:
    """The poll checks its run in the transactions that store the marks: a follow run marked
    abandoned (while frozen) that polls before it notices reads nothing, moves nothing and
    makes no row (one made when it resumed failed test_a_resumed_abandoned_follow_run_…)."""
    seed(engine, 100, seed_value=14)
    with connections.raw_connection(engine) as conn:
        source = checks.check_sources(conn, {"electricity": default_sources()["electricity"]})[
            "electricity"
        ]
    live, stopped = str(uuid.uuid4()), str(uuid.uuid4())
    for run_id in (live, stopped):
        runs.start_run(engine, run_id, "DirectRunner", {"follow": True})
    execute(
        database_url,
        "UPDATE emissions.calculation_runs SET status = 'abandoned' WHERE run_id = %s",
        (stopped,),
    )

    def poll(run_id: str) -> list[marks_store.Window]:
        with connections.raw_connection(engine) as conn:
            return marks_store.poll_windows(conn, source, 1_000, 2, run_id=run_id)

    assert poll(stopped) == []
    assert marks(database_url) == {}  # not even the type's first (empty) row: it wrote nothing
    top = str(scalar(database_url, "SELECT max(change_seq) FROM emissions.electricity_activities"))
    assert poll(live) == [(None, top)]
    assert marks(database_url) == {"electricity": (None, top)}
    insert_electricity(database_url, 900001, 1.0, "kWh")
    assert poll(stopped) == []
    assert marks(database_url) == {"electricity": (None, top)}
    # What was handed out and not stored (a flush refused or dropped) keeps the mark back: it
    # is handed out again; once stored, the mark passes it.
    newest = str(
        scalar(database_url, "SELECT max(change_seq) FROM emissions.electricity_activities")
    )
    assert poll(live) == [(None, top), (top, newest)]
    assert marks(database_url) == {"electricity": (None, newest)}
    run_pipeline(database_url, capsys)
    assert poll(live) == []
    assert marks(database_url) == {"electricity": (top, newest)}
