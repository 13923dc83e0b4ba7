"""Run records are append-only, and a failure's record says in one sentence what went wrong.

A run id already in ``calculation_runs`` is refused before anything is written, and the earlier
row stays byte-for-byte as it was; ``finish_run`` only ever finishes a row still ``running``.
A failed run stores (and prints) the exception its worker's traceback ends with, on one line of
at most ``summary.MESSAGE_LIMIT`` characters, not the traceback.
"""

from __future__ import annotations

import io
import threading
import uuid
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import pytest
import sqlalchemy as sa

from ops.seed import seed
from pipeline import retry, run, stopping, summary
from pipeline.store import connections, runs
from tests.support import results_count, scalar, start_run


def row_text(url: str, run_id: str) -> str:
    """The run's whole row, as PostgreSQL prints it."""
    return str(
        scalar(url, "SELECT r::text FROM emissions.calculation_runs r WHERE run_id = %s", (run_id,))
    )


def when(moment: datetime) -> str:
    return moment.isoformat(sep=" ", timespec="seconds")


def run_in_process(url: str, *extra: str) -> int:
    return run.main(
        ["--database-url", url, "--partitions", "2", "--progress-interval", "0", *extra]
    )


def test_a_reused_run_id_is_refused_and_the_earlier_record_is_untouched(
    database_url: str, engine: sa.Engine, capsys: pytest.CaptureFixture[str]
) -> None:
    seed(engine, 600, seed_value=5)
    run_id = str(uuid.uuid4())
    assert run_in_process(database_url, "--run-id", run_id) == 0
    capsys.readouterr()
    before = row_text(database_url, run_id)
    stored = results_count(database_url)
    finished = scalar(
        database_url,
        "SELECT finished_at FROM emissions.calculation_runs WHERE run_id = %s",
        (run_id,),
    )
    seed(engine, 300, seed_value=6)  # new work for the second run, had it been allowed

    assert run_in_process(database_url, "--run-id", run_id) == 2
    err = capsys.readouterr().err
    assert err.splitlines()[-1] == (
        f"error: run id {run_id} is already recorded (succeeded on {when(finished)}): "
        "choose another"
    )
    assert "Traceback" not in err
    assert row_text(database_url, run_id) == before
    assert scalar(database_url, "SELECT count(*) FROM emissions.calculation_runs") == 1
    assert results_count(database_url) == stored  # nothing written
    assert scalar(database_url, "SELECT count(*) FROM emissions.calculation_run_writes") == (
        scalar(
            database_url,
            "SELECT count(*) FROM emissions.calculation_run_writes WHERE run_id = %s",
            (run_id,),
        )
    )


def test_the_id_of_a_run_still_running_is_refused_too(
    database_url: str, engine: sa.Engine, capsys: pytest.CaptureFixture[str]
) -> None:
    seed(engine, 100, seed_value=5)
    run_id = str(uuid.uuid4())
    runs.start_run(engine, run_id, "DirectRunner", {})
    before = row_text(database_url, run_id)
    started = scalar(
        database_url,
        "SELECT started_at FROM emissions.calculation_runs WHERE run_id = %s",
        (run_id,),
    )
    assert run_in_process(database_url, "--run-id", run_id) == 2
    assert capsys.readouterr().err.splitlines()[-1] == (
        f"error: run id {run_id} is already recorded (running since {when(started)}): "
        "choose another"
    )
    assert row_text(database_url, run_id) == before
    assert results_count(database_url) == 0


def test_start_run_refuses_a_taken_id_and_finish_run_finishes_only_a_running_row(
    database_url: str, engine: sa.Engine
) -> None:
    run_id = str(uuid.uuid4())
    runs.start_run(engine, run_id, "DirectRunner", {"partitions": 2})
    running = row_text(database_url, run_id)
    # Two runs given the same id at once: the second start is refused, the row left alone.
    with pytest.raises(runs.RunIdTaken, match=f"run id {run_id} is already recorded"):
        runs.start_run(engine, run_id, "FlinkRunner", {"partitions": 9})
    assert row_text(database_url, run_id) == running

    assert runs.finish_run(engine, run_id, status="succeeded", total_processed=3) is True
    finished = row_text(database_url, run_id)
    assert runs.finish_run(engine, run_id, status="failed", message="late") is False
    assert row_text(database_url, run_id) == finished
    assert runs.finish_run(engine, str(uuid.uuid4()), status="failed") is False


def test_a_failed_run_stores_one_sentence_not_a_traceback(
    make_database: Callable[..., str], tmp_path: Path
) -> None:
    url = make_database("bigint")
    engine = connections.make_engine(url, poolclass=sa.pool.NullPool)
    seed(engine, 2_000, seed_value=3)
    with engine.begin() as conn:  # the database refuses every result (not transient)
        conn.execute(
            sa.text(
                "ALTER TABLE emissions.emission_results "
                "ADD CONSTRAINT refuse_all CHECK (kg_co2e < 0) NOT VALID"
            )
        )
    engine.dispose()
    run_id = str(uuid.uuid4())
    failed = start_run(url, tmp_path, "--partitions", "2", "--run-id", run_id, name="f")
    assert failed.wait(timeout=120) == 1

    message = (
        'CheckViolation: new row for relation "emission_results" violates check constraint '
        '"refuse_all" (while running WriteResults/WriteBatches)'
    )
    stored = scalar(
        url, "SELECT message FROM emissions.calculation_runs WHERE run_id = %s", (run_id,)
    )
    assert stored == message
    assert scalar(
        url, "SELECT status FROM emissions.calculation_runs WHERE run_id = %s", (run_id,)
    ) == ("failed")
    err = failed.stderr
    assert "Traceback" not in err
    lines = err.splitlines()
    assert lines[-1] == f"error: run {run_id} failed: {message}"
    assert [line for line in lines if message in line] == lines[-1:]  # said once (issue 27)
    assert len(lines) <= 5, err  # the run's own lines: no worker traceback, no Beam chatter


# --- The message, from what a runner raises (no database) ----------------------------------

#: What the in-process runner raises when a worker's DoFn fails: a RuntimeError whose text is
#: the worker's traceback, chained, with Beam's step appended to the exception's message.
WORKER_FAILURE = """Traceback (most recent call last):
  File "apache_beam/runners/common.py", line 1558, in _invoke_bundle_method
  File "/work/main/pipeline/store/writes.py", line 137, in staged_copy
    cur.copy_expert(
psycopg2.errors.CheckViolation: new row for relation "emission_results" violates check constraint "refuse_all"
DETAIL:  Failing row contains (electricity, 1, 2, null, 12315.56080005, null, null, null)
CONTEXT:  COPY emission_results, line 1


During handling of the above exception, another exception occurred:

Traceback (most recent call last):
  File "/work/main/.venv/lib/python3.11/site-packages/apache_beam/runners/worker/sdk_worker.py", line 311, in _execute
    response = task()
               ^^^^^^
  File "/work/main/pipeline/store/writes.py", line 137, in staged_copy
    cur.copy_expert(
psycopg2.errors.CheckViolation: new row for relation "emission_results" violates check constraint "refuse_all"
DETAIL:  Failing row contains (electricity, 1, 2, null, 12315.56080005, null, null, null)
CONTEXT:  COPY emission_results, line 1
 [while running 'WriteResults/WriteBatches']
"""  # noqa: E501 - as the runner writes it


def test_a_worker_traceback_becomes_the_line_it_ends_with() -> None:
    assert summary.failure_message(RuntimeError(WORKER_FAILURE)) == (
        'CheckViolation: new row for relation "emission_results" violates check constraint '
        '"refuse_all" (while running WriteResults/WriteBatches)'
    )
    plain = "Traceback (most recent call last):\n  File \"x.py\", line 1, in f\nKeyError: 'k'\n"
    assert summary.failure_message(RuntimeError(plain)) == "KeyError: 'k'"


def test_a_database_outage_inside_a_runner_error_is_the_line_shown() -> None:
    text = (
        'Traceback (most recent call last):\n  File "w.py", line 9, in flush\n'
        "pipeline.retry.DatabaseUnavailable: the database is unavailable: writing results "
        "failed 3 time(s) over 0.5 s; last error: OperationalError: server closed the "
        "connection [while running 'WriteResults/WriteBatches']\n"
    )
    assert summary.failure_message(RuntimeError(text)) == (
        "the database is unavailable: writing results failed 3 time(s) over 0.5 s; last "
        "error: OperationalError: server closed the connection [while running "
        "'WriteResults/WriteBatches']"
    )
    unavailable = retry.DatabaseUnavailable("the database is unavailable: counting failed")
    assert summary.failure_message(RuntimeError("wrapped")) == "RuntimeError: wrapped"
    try:
        raise ValueError("outer") from unavailable
    except ValueError as e:
        assert summary.failure_message(e) == "the database is unavailable: counting failed"


def test_a_long_message_is_cut_to_one_line_of_the_limit() -> None:
    long = summary.failure_message(ValueError("bad value\n" + "x" * 1000))
    assert len(long) == summary.MESSAGE_LIMIT == 300
    assert long.startswith("ValueError: bad value xxx") and long.endswith("x…")
    assert "\n" not in long


def test_only_the_main_thread_prints_on_stderr_while_a_run_is_on() -> None:
    """Beam's worker threads print a failed bundle's traceback on stderr, even after the run
    has failed: behind ``WorkerStderr`` only the main thread's lines show (and the log)."""
    shown = io.StringIO()
    stderr = stopping.WorkerStderr(shown)
    print("error: one line", file=stderr)
    worker = threading.Thread(
        target=lambda: print("Traceback (most recent call last):", file=stderr)
    )
    worker.start()
    worker.join()
    assert shown.getvalue() == "error: one line\n"


def test_a_run_whose_database_is_down_from_the_start_says_no_row_stays_running(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """No row was ever written for it: its error says what failed, and nothing about a
    record 'running' in the database."""
    run_id = str(uuid.uuid4())
    url = "postgresql://nobody@127.0.0.1:1/none"
    assert run.main(["--database-url", url, "--run-id", run_id, "--retry-attempts", "1"]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.splitlines()
    assert len(lines) == 1, captured.err  # said once: no log line repeats it (issue 27)
    assert lines[0].startswith(
        f"error: run {run_id} failed: the database is unavailable: recording the run failed "
        "1 time(s)"
    )
    assert "stays 'running'" not in captured.err


def test_a_run_beats_while_it_works_and_stops_before_its_outcome(
    database_url: str, engine: sa.Engine, capsys: pytest.CaptureFixture[str]
) -> None:
    seed(engine, 600, seed_value=5)
    run_id = str(uuid.uuid4())
    assert run_in_process(database_url, "--run-id", run_id) == 0
    capsys.readouterr()
    started, beat, finished = (
        scalar(
            database_url,
            f"SELECT {column} FROM emissions.calculation_runs WHERE run_id = %s",
            (run_id,),
        )
        for column in ("started_at", "heartbeat_at", "finished_at")
    )
    assert started <= beat <= finished  # the last heartbeat came before the outcome
