"""No silent hang: stale planner statistics, a lock held elsewhere, a statement that runs too
long. A run either finishes in seconds or fails saying why, and says so while it waits."""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import sqlalchemy as sa

from ops.seed import seed
from pipeline.options import OptionsError, add_arguments, validate
from pipeline.store import connections
from tests.support import start_run
from tests.test_end_to_end import check_every_activity_once


def execute(url: str, *statements: str) -> None:
    conn = connections.connect(url)
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            for statement in statements:
                cur.execute(statement)
    finally:
        conn.close()


def test_a_run_after_a_first_one_on_stale_statistics_finishes_in_seconds(
    make_database: Callable[..., str], tmp_path: Path
) -> None:
    """The statistics say the results are empty (analysed before the first run, autovacuum
    off, and the first run's own VACUUM skipped: another session holds the table, as
    autovacuum or a backup would), yet a second run over twice the activities plans well: it
    analyses what is stale first, and its joins cannot become loops over an 'empty' table."""
    url = make_database("bigint")
    execute(
        url,
        "ALTER TABLE emissions.emission_results SET (autovacuum_enabled = false)",
        "ALTER TABLE emissions.emission_errors SET (autovacuum_enabled = false)",
        "ANALYZE emissions.emission_results",
        "ANALYZE emissions.emission_errors",
    )
    engine = connections.make_engine(url, poolclass=sa.pool.NullPool)
    seed(engine, 40_000, seed_value=31)
    holder = connections.connect(url)
    try:
        with holder.cursor() as cur:
            cur.execute("LOCK TABLE emissions.emission_results IN SHARE UPDATE EXCLUSIVE MODE")
        first = start_run(url, tmp_path, "--progress-interval", "0", name="1")
        assert first.wait() == 0, first.stderr[-2000:]
    finally:
        holder.rollback()
        holder.close()
    assert "another session holds it" in first.stderr
    assert "vacuumed and analysed" not in first.stderr
    seed(engine, 40_000, seed_value=32)
    started = time.monotonic()
    second = start_run(url, tmp_path, "--progress-interval", "0", name="2")
    assert second.wait() == 0, second.stderr[-2000:]
    took = time.monotonic() - started
    assert "analysed emission_results" in second.stderr
    assert second.summary()["pending"] == 40_000
    assert took < 90, f"{took:.0f} s"
    check_every_activity_once(url, engine)
    engine.dispose()


def test_a_lock_held_elsewhere_fails_the_run_saying_so(
    make_database: Callable[..., str], tmp_path: Path
) -> None:
    url = make_database("bigint")
    engine = connections.make_engine(url, poolclass=sa.pool.NullPool)
    seed(engine, 300, seed_value=33)
    engine.dispose()
    holder = connections.connect(url)
    try:
        with holder.cursor() as cur:
            cur.execute("LOCK TABLE emissions.emission_results IN ACCESS EXCLUSIVE MODE")
        started = time.monotonic()
        run = start_run(
            url,
            tmp_path,
            *("--lock-timeout", "3", "--retry-attempts", "1", "--progress-interval", "1"),
        )
        code = run.wait()
        took = time.monotonic() - started
    finally:
        holder.rollback()
        holder.close()
    assert code == 1
    assert took < 30, f"{took:.0f} s"
    assert "still counting activities after 1 s" in run.stderr  # not waiting in silence
    assert "lock timeout" in run.stderr
    assert "pg_locks" in run.stderr  # what to look at
    assert "Traceback" not in run.stderr


def test_a_statement_over_its_time_fails_the_run_saying_so(
    make_database: Callable[..., str], tmp_path: Path
) -> None:
    url = make_database("bigint")
    engine = connections.make_engine(url, poolclass=sa.pool.NullPool)
    seed(engine, 2_000, seed_value=34)
    engine.dispose()
    run = start_run(url, tmp_path, "--statement-timeout", "0.001", "--retry-attempts", "1")
    assert run.wait() == 1
    assert "statement timeout" in run.stderr
    assert "--statement-timeout" in run.stderr


@pytest.mark.parametrize("option", ["--statement-timeout", "--lock-timeout"])
@pytest.mark.parametrize("value", ["nan", "inf", "-1"])
def test_timeouts_must_be_finite(option: str, value: str) -> None:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    with pytest.raises(OptionsError, match=option):
        validate(parser.parse_args([option, value]), "postgresql://u@h/d")
