"""``./run_local.sh`` (``python -m ops.local``): demo rows only where they were asked for."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import sqlalchemy as sa

from pipeline.store import connections

ROOT = Path(__file__).resolve().parent.parent


def local(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("PG", "EMISSIONS_"))}
    return subprocess.run(
        [sys.executable, "-m", "ops.local", "--progress-interval", "0", *args],
        cwd=ROOT,
        env={**clean, "PYTHONPATH": str(ROOT), "EMISSIONS_DATABASE_URL": url, "SEED_COUNT": "300"},
        capture_output=True,
        text=True,
        timeout=300,
    )


def activities(url: str) -> int:
    engine = connections.make_engine(url, poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as conn:
            return int(
                conn.execute(
                    sa.text(
                        "SELECT (SELECT count(*) FROM emissions.electricity_activities) + "
                        "(SELECT count(*) FROM emissions.spend_activities) + "
                        "(SELECT count(*) FROM emissions.air_travel_activities)"
                    )
                ).scalar()
                or 0
            )
    finally:
        engine.dispose()


def test_a_database_of_your_own_gets_no_demo_rows_unless_asked(empty_database: str) -> None:
    done = local(empty_database)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["total_activities"] == 0
    assert activities(empty_database) == 0
    asked = local(empty_database, "--seed-demo")
    assert asked.returncode == 0, asked.stderr
    summary = json.loads(asked.stdout)
    assert activities(empty_database) == summary["total_activities"] == 300
    assert summary["total_processed"] + summary["errors"] == 300


def test_a_run_that_finds_nothing_pending_says_so_and_how_to_start_afresh(
    empty_database: str,
) -> None:
    first = local(empty_database, "--seed-demo")
    assert first.returncode == 0, first.stderr
    assert "nothing was pending" not in first.stderr
    again = local(empty_database, "--seed-demo")
    assert again.returncode == 0, again.stderr
    summary = json.loads(again.stdout)
    assert (summary["pending"], summary["total_processed"]) == (0, 0)
    note = again.stderr.strip().splitlines()[-1]
    assert note.startswith("note: nothing was pending: all 300 activities in schema emissions ")
    assert "this run on DirectRunner computed nothing" in note
    assert "(--schema emissions_2): it gets its own tables and 300 demo activities" in note
    # What the note says to do computes everything again, in a schema of its own.
    fresh = local(empty_database, "--seed-demo", "--schema", "emissions_2")
    assert fresh.returncode == 0, fresh.stderr
    assert json.loads(fresh.stdout)["pending"] == 300
    assert "nothing was pending" not in fresh.stderr
