"""Concurrent runs and connection limits, with real ``pipeline.run`` processes.

Two runs started at the same moment over the same pending activities must end with exactly one
result per activity: the mechanism is the unique constraint on ``(activity_type, activity_id)``
plus ``INSERT … ON CONFLICT DO NOTHING`` in every write, not a lock, so that runs (and retried
bundles) never wait on each other and a crashed run holds nothing that a later run must wait for.
The loser of a race simply writes nothing for that activity, and since a run's processed count is
counted in the database by its run id, each result is credited to exactly one run.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

import pytest
import sqlalchemy as sa

from ops.seed import seed
from pipeline import run
from pipeline.store import connections
from tests.support import duplicate_counts, results_count, scalar, start_run
from tests.test_end_to_end import all_activities, stored

COUNT = 6_000


def test_two_runs_at_once_share_the_work_and_write_each_result_once(
    make_database: Callable[..., str], tmp_path: Path
) -> None:
    url = make_database("bigint")
    engine = connections.make_engine(url, poolclass=sa.pool.NullPool)
    seed(engine, COUNT, seed_value=21)
    engine.dispose()

    runs = [
        start_run(url, tmp_path, "--write-batch-size", "200", "--partitions", "3", name=f"r{i}")
        for i in range(2)
    ]
    codes = [r.wait() for r in runs]
    assert codes == [0, 0], [r.stderr[-2000:] for r in runs]
    summaries = [r.summary() for r in runs]

    engine = connections.make_engine(url, poolclass=sa.pool.NullPool)
    results, errors = stored(engine)
    assert set(results) | set(errors) == all_activities(engine)
    assert not set(results) & set(errors)
    assert duplicate_counts(url) == (0, 0)
    # Every stored result is credited to exactly one of the two runs, and every dead letter
    # counted by exactly one: a run skips the key ranges the other is computing.
    assert sum(s["total_processed"] for s in summaries) == len(results) == results_count(url)
    assert sum(s["errors"] for s in summaries) == len(errors)
    assert int(scalar(url, "SELECT count(DISTINCT run_id) FROM emissions.emission_results")) <= 2
    engine.dispose()


def count_connections(server_url: str, database: str) -> int:
    return int(
        scalar(
            server_url,
            "SELECT count(*) FROM pg_stat_activity WHERE datname = %s",
            (database,),
        )
    )


def test_connections_stay_bounded_and_are_all_closed_after_the_run(
    make_database: Callable[..., str], pg_server_url: str, tmp_path: Path
) -> None:
    url = make_database("bigint")
    database = sa.make_url(url).database
    assert database is not None
    engine = connections.make_engine(url, poolclass=sa.pool.NullPool)
    seed(engine, COUNT, seed_value=22)
    engine.dispose()
    assert count_connections(pg_server_url, database) == 0

    peak = 0
    names: set[str] = set()
    stop = threading.Event()

    def sample() -> None:
        nonlocal peak
        conn = connections.connect(pg_server_url)
        conn.autocommit = True
        try:
            with conn.cursor() as cur:
                while not stop.wait(0.02):
                    cur.execute(
                        "SELECT application_name FROM pg_stat_activity WHERE datname = %s",
                        (database,),
                    )
                    rows = cur.fetchall()
                    peak = max(peak, len(rows))
                    names.update(r[0] for r in rows)
        finally:
            conn.close()

    # The default run: the DirectRunner's default workers, every activity type.
    bound = connections.connection_bound(workers=run.beam_workers(run.with_local_defaults([])))
    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        proc = start_run(
            url,
            tmp_path,
            *("--write-batch-size", "200", "--progress-interval", "0.2"),
            *("--max-connections", str(bound)),
        )
        assert proc.wait() == 0, proc.stderr[-2000:]
    finally:
        stop.set()
        sampler.join(timeout=10)
    assert 0 < peak <= bound, (peak, bound)
    # Every connection says whose it is, the run's id included (a backend shows '' until its
    # start-up completes).
    shown = names - {""}
    assert len(shown) == 1 and shown.pop().startswith(f"{connections.APPLICATION_NAME} run ")
    assert count_connections(pg_server_url, database) == 0
    print(f"peak connections {peak} (bound {bound})")


def test_a_run_that_could_exceed_the_connection_maximum_does_not_start(
    database_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["--database-url", database_url, "--progress-interval", "0"]
    assert run.main([*argv, "--max-connections", "4"]) == 2
    assert "--max-connections 4 is fewer than any run needs: 6 at once" in capsys.readouterr().err
    two_workers = ["--direct_num_workers", "2", "--max-connections", "9"]
    assert run.main([*argv, *two_workers]) == 2  # 2 + 2 × 4 = 10
    err = capsys.readouterr().err
    assert "up to 10 database connections" in err and "--direct_num_workers=1), or allow 10" in err
