"""Crash and resume: a run SIGKILLed part-way loses nothing, and the next run finishes the job.

A real ``python -m pipeline.run`` process works through enough activities to take several
seconds, committing every few hundred rows; it is killed with SIGKILL once some results are
committed. The next run must skip exactly what was committed, compute the rest, and leave every
activity with exactly one result (equal to the independent SQL computation) or one error.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import sqlalchemy as sa

from ops.seed import seed
from pipeline.store import connections
from tests.support import duplicate_counts, results_count, scalar, start_run, wait_for
from tests.test_end_to_end import check_every_activity_once

# Enough for a run of several seconds, committing every thousand rows or so (the test says so
# if the run finishes before it can be killed).
COUNT = 100_000
SMALL_COMMITS = ("--rows-per-range", "1000", "--write-batch-size", "500", "--partitions", "4")


def test_sigkill_part_way_then_resume(make_database: Callable[..., str], tmp_path: Path) -> None:
    url = make_database("bigint")
    engine = connections.make_engine(url, poolclass=sa.pool.NullPool)
    seed(engine, COUNT, seed_value=11)

    first = start_run(url, tmp_path, *SMALL_COMMITS, name="1")
    try:
        wait_for(lambda: results_count(url) >= 1_000, timeout=120, interval=0.1, what="commits")
        assert first.proc.poll() is None, "the run finished before it could be killed"
    finally:
        first.kill()
    committed = results_count(url)
    assert 1_000 <= committed < COUNT * 0.9, committed  # part-way, not done
    assert duplicate_counts(url) == (0, 0)
    # The killed run never got to record an outcome.
    assert scalar(url, "SELECT status FROM emissions.calculation_runs") == "running"

    second = start_run(url, tmp_path, "--partitions", "4", name="2")
    assert second.wait() == 0, second.stderr
    summary = second.summary()
    assert summary["total_activities"] == COUNT
    assert summary["skipped"] == committed
    assert summary["pending"] == COUNT - committed
    errors = int(scalar(url, "SELECT count(*) FROM emissions.emission_errors"))
    assert committed + summary["total_processed"] + errors == COUNT

    check_every_activity_once(url, engine)  # one result or one error each; totals match SQL
    print(f"\ncrash: killed with {committed} of {COUNT} committed; resumed, skipped {committed}")
    assert duplicate_counts(url) == (0, 0)
    engine.dispose()
