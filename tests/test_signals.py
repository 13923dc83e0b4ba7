"""Graceful stop: a run sent SIGTERM (Airflow's task timeout) or SIGINT (Ctrl-C) part-way.

A real ``python -m pipeline.run`` process works through 100,000 activities, committing every
few hundred rows, and is sent the signal (to the Python process alone, as Airflow sends it)
once some results are committed. It must end at once with 143 or 130, one line on stderr and
no traceback, its run recorded ``cancelled`` with exactly what it committed; the next run
computes the rest, and every activity ends with one result or one dead letter.
"""

from __future__ import annotations

import os
import signal
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg2.errors
import pytest
import sqlalchemy as sa

from ops.seed import seed
from pipeline import run, stopping
from pipeline.model import ErrorRecord
from pipeline.options import parse_run_args, validate
from pipeline.store import connections, runs, writes
from tests.support import duplicate_counts, results_count, scalar, start_run, wait_for
from tests.test_end_to_end import check_every_activity_once

COUNT = 100_000
SMALL_COMMITS = ("--rows-per-range", "1000", "--write-batch-size", "500", "--partitions", "4")


def run_row(url: str, run_id: str) -> tuple[str, str, int, int]:
    """(status, message, total_processed, errors) of a run's record."""
    conn = connections.connect(url)
    try:
        with conn.cursor() as cur:
            cur.execute(
                "SELECT status, message, total_processed, errors FROM emissions.calculation_runs "
                "WHERE run_id = %s",
                (run_id,),
            )
            row = cur.fetchone()
        assert row is not None, f"run {run_id} is not recorded"
        return str(row[0]), str(row[1]), int(row[2]), int(row[3])
    finally:
        conn.close()


@pytest.mark.parametrize(
    ("signum", "name", "code"),
    [(signal.SIGTERM, "SIGTERM", 143), (signal.SIGINT, "SIGINT", 130)],
    ids=["SIGTERM", "SIGINT"],
)
def test_a_signal_part_way_cancels_the_run_cleanly_and_the_next_run_finishes(
    make_database: Callable[..., str], tmp_path: Path, signum: int, name: str, code: int
) -> None:
    url = make_database("bigint")
    engine = connections.make_engine(url, poolclass=sa.pool.NullPool)
    seed(engine, COUNT, seed_value=11)
    run_id = str(uuid.uuid4())

    first = start_run(url, tmp_path, *SMALL_COMMITS, "--run-id", run_id, name="1")
    try:
        wait_for(lambda: results_count(url) >= 1_000, timeout=120, interval=0.1, what="commits")
        assert first.proc.poll() is None, "the run finished before it could be stopped"
        first.proc.send_signal(signum)  # the Python process alone, as Airflow does
        signalled = time.monotonic()
        assert first.wait(timeout=60) == code
        took = time.monotonic() - signalled
    finally:
        first.kill()  # only if still running (it is its own process group)

    stored = results_count(url)
    by_run = int(
        scalar(url, "SELECT count(*) FROM emissions.emission_results WHERE run_id = %s", (run_id,))
    )
    dead_letters = int(scalar(url, "SELECT count(*) FROM emissions.emission_errors"))
    assert stored == by_run
    assert 1_000 <= stored < COUNT * 0.9, stored  # part-way, not done
    message = f"cancelled by {name} after {stored:,} results were stored"
    status, recorded, processed, errors = run_row(url, run_id)
    assert (status, recorded, processed) == ("cancelled", message, stored)
    assert errors == dead_letters  # the dead letters it committed, none since

    err = first.stderr
    assert "Traceback" not in err
    lines = err.splitlines()
    assert lines[-1] == f"run {run_id} {message}; the next run computes the rest"
    # Before it, only the run's own few progress lines: no Beam chatter, no error.
    assert len(lines) <= 4, err
    assert all(" INFO pipeline." in line for line in lines[:-1]), err
    assert first.stdout == ""
    assert duplicate_counts(url) == (0, 0)

    second = start_run(url, tmp_path, "--partitions", "4", name="2")
    assert second.wait(timeout=180) == 0, second.stderr[-3000:]
    summary = second.summary()
    assert summary["total_activities"] == COUNT
    assert summary["skipped"] == stored + dead_letters
    assert summary["pending"] == COUNT - stored - dead_letters
    total_errors = int(scalar(url, "SELECT count(*) FROM emissions.emission_errors"))
    assert stored + summary["total_processed"] + total_errors == COUNT
    check_every_activity_once(url, engine)  # one result or one dead letter each; equal to SQL
    assert duplicate_counts(url) == (0, 0)
    print(f"\n{name}: stopped {took:.2f} s after the signal with {stored:,} of {COUNT:,} stored")
    engine.dispose()


def test_holding_commits_waits_for_a_flush_at_its_commit_and_keeps_later_ones_out(
    database_url: str, engine: sa.Engine
) -> None:
    """``runs.hold_commits``, which a stopped run counts under: a flush that has written its
    row of the write log commits first; one that gets there later waits, and rolls back when
    its connection closes."""
    run_id = str(uuid.uuid4())
    log_row = (
        "INSERT INTO emissions.calculation_run_writes (run_id, activity_type, results, "
        "kg_co2e, levels) VALUES (%s, 'electricity', %s, 1.0, '{}')"
    )
    at_commit = connections.connect(database_url)
    later = connections.connect(database_url)
    try:
        with at_commit.cursor() as cur:
            cur.execute(log_row, (run_id, 7))  # written, not yet committed
        committer = threading.Timer(0.5, at_commit.commit)
        committer.start()
        began = time.monotonic()
        held = runs.hold_commits(engine, "emissions", wait_s=10)
        waited = time.monotonic() - began
        committer.join()
        assert held is not None
        assert 0.4 < waited < 5, waited  # it waited for that flush to commit
        assert runs.results_written(engine, run_id) == 7
        with later.cursor() as cur:
            cur.execute("SET lock_timeout = '300ms'")
            with pytest.raises(psycopg2.errors.LockNotAvailable):
                cur.execute(log_row, (run_id, 5))  # a later flush cannot get to its commit
        later.rollback()
        assert runs.results_written(engine, run_id) == 7
        held.close()  # as when the process ends
        with later.cursor() as cur:
            cur.execute(log_row, (run_id, 5))
        later.commit()
        assert runs.results_written(engine, run_id) == 12
    finally:
        at_commit.close()
        later.close()


def test_a_dead_letter_flush_in_flight_when_a_run_is_stopped_is_counted_exactly(
    database_url: str, engine: sa.Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """F9 of the fault harness (issue 22): a run stopped while one of its dead-letter flushes
    has copied its dead letters in but not yet written its row of the write log. The stopped
    run's hold on commits waits for that flush, which commits, and counts it: the record says
    3 dead letters, as many as carry the run's id, and the count is exact (no "at least").

    Before, the hold locked the write log first, then waited for the dead letters' table,
    which the flush held; the flush then waited for the write log: a deadlock, in which the
    hold gave way, so the run counted without it while the flush committed beside the count
    (82 recorded, 83 stored, seed 1102)."""
    run_id = str(uuid.uuid4())
    runs.start_run(engine, run_id, "DirectRunner", {})
    config = validate(parse_run_args(["--run-id", run_id])[0], database_url)
    copied, release = threading.Event(), threading.Event()
    log_errors = writes.log_errors

    def paused(*args: Any, **kwargs: Any) -> None:
        copied.set()  # its dead letters are in (uncommitted), its log row not yet
        release.wait(30)
        log_errors(*args, **kwargs)

    monkeypatch.setattr(writes, "log_errors", paused)
    refused = [
        ErrorRecord("electricity", i, "unknown_unit", "unit 'parsec' is unknown", f"row {i}")
        for i in (1, 2, 3)
    ]
    flushing = connections.connect(database_url)
    outcome: dict[str, Any] = {}

    def flush() -> None:
        try:
            outcome["written"] = writes.write_errors(flushing, refused, run_id, "emissions")
        except Exception as e:  # noqa: BLE001 - asserted below
            outcome["error"] = e

    flusher = threading.Thread(target=flush)
    flusher.start()
    held = None
    try:
        assert copied.wait(30), "the flush did not start"
        threading.Timer(0.5, release.set).start()  # once the hold waits for it
        line, held = stopping.record_cancelled(
            engine, config, stopping.Cancelled(signal.SIGTERM), {}, time.monotonic()
        )
        flusher.join(30)
        assert outcome == {"written": 3}
        assert held is not None  # counted under the hold: exact
        message = "cancelled by SIGTERM after 0 results were stored"
        assert run_row(database_url, run_id) == ("cancelled", message, 0, 3)
        carried = "SELECT count(*) FROM emissions.emission_errors WHERE run_id = %s"
        assert scalar(database_url, carried, (run_id,)) == 3
        assert line == f"run {run_id} {message}; the next run computes the rest"
    finally:
        release.set()
        flusher.join(30)
        if held is not None:
            held.close()
        flushing.close()


def test_holding_commits_gives_up_after_its_wait(database_url: str, engine: sa.Engine) -> None:
    """A flush that never reaches its commit (a hung worker) does not hold up a stopped run
    for long: after ``wait_s`` it counts without the lock (a lower bound, and says so)."""
    hung = connections.connect(database_url)
    try:
        with hung.cursor() as cur:
            cur.execute(
                "INSERT INTO emissions.calculation_run_writes (run_id, activity_type, results, "
                "kg_co2e, levels) VALUES (%s, 'spend', 1, 1.0, '{}')",
                (str(uuid.uuid4()),),
            )
        began = time.monotonic()
        assert runs.hold_commits(engine, "emissions", wait_s=0.3) is None
        assert time.monotonic() - began < 3
    finally:
        hung.close()


def test_the_handler_only_records_the_signal_and_main_puts_the_old_ones_back() -> None:
    before = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    stop = stopping.Stop()
    stop.install()
    try:
        stop.check()  # nothing yet
        os.kill(os.getpid(), signal.SIGINT)  # no KeyboardInterrupt: only recorded
        os.kill(os.getpid(), signal.SIGTERM)  # the first signal is the one that counts
        with pytest.raises(stopping.Cancelled, match="^cancelled by SIGINT$") as caught:
            stop.check()
        assert caught.value.exit_code == 130
        assert stopping.Cancelled(signal.SIGTERM).exit_code == 143
    finally:
        stop.restore()
    assert {s: signal.getsignal(s) for s in before} == before


def test_only_workers_in_this_process_make_the_count_exact() -> None:
    assert run.workers_in_process([]) is True  # DirectRunner, two threads
    assert run.workers_in_process(["--direct_running_mode=in_memory"]) is True
    assert run.workers_in_process(["--direct_running_mode=multi_processing"]) is False
    assert run.workers_in_process(["--runner=FlinkRunner"]) is False
