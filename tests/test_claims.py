"""Claims die with their run (issue 22, item 3).

A run claims each key range before it reads it; a run that is frozen (SIGSTOP: its TCP
connections stay open), cut off or abandoned must not keep its ranges. The frozen run here is a
real ``python -m pipeline.run`` process, stopped while a flush of it is open in the database
(held at its write-log row by a lock the test takes, so that it holds uncommitted rows and
locks, as a process frozen at any instant of a flush would).
"""

from __future__ import annotations

import json
import os
import signal
import threading
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg2
import pytest
import sqlalchemy as sa
from prometheus_client.parser import text_string_to_metric_families

from ops.seed import seed
from pipeline.model import ErrorRecord
from pipeline.store import claims, connections, runs, writes
from tests.support import duplicate_counts, scalar, start_run, wait_for
from tests.test_end_to_end import check_every_activity_once
from tests.test_status import heartbeat_older_than, pending_by_type, status_process
from transforms.write import WriteErrors

COUNT = 20_000
#: Small ranges and commits, one worker: the run holds ranges, and commits every range.
SMALL = ("--rows-per-range", "500", "--write-batch-size", "500", "--partitions", "4")


def rows_of(url: str, table: str, run_id: str) -> int:
    return int(scalar(url, f"SELECT count(*) FROM emissions.{table} WHERE run_id = %s", (run_id,)))


def sessions_of(url: str, run_id: str, waiting: bool = False) -> int:
    """The run's database sessions (those waiting for a lock, if ``waiting``)."""
    return int(
        scalar(
            url,
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s "
            "AND (NOT %s OR wait_event_type = 'Lock')",
            (f"{connections.APPLICATION_NAME} run {run_id}", waiting),
        )
    )


def assert_counts_are_its_rows(url: str, summary: dict[str, Any]) -> None:
    """A run's summary counts exactly the rows that carry its id."""
    run_id = summary["run_id"]
    stored = (rows_of(url, "emission_results", run_id), rows_of(url, "emission_errors", run_id))
    assert (summary["total_processed"], summary["errors"]) == stored, run_id


def exported_figures(path: Path) -> dict[str, Any]:
    """A run's Prometheus textfile: per-type gauges summed; the labels of ``…_info``."""
    found: dict[str, Any] = {}
    for family in text_string_to_metric_families(path.read_text()):
        for sample in family.samples:
            if sample.name.endswith("_info"):
                found[sample.name] = sample.labels
            else:
                found[sample.name] = found.get(sample.name, 0) + sample.value
    return found


def status_report(url: str, *extra: str) -> tuple[int, dict[str, Any]]:
    done = status_process(url, "--json", *extra)
    return done.returncode, json.loads(done.stdout)


def test_a_frozen_run_loses_its_claims_and_writes_nothing_when_it_resumes(
    make_database: Callable[..., str], tmp_path: Path
) -> None:
    url = make_database("bigint")
    engine = connections.make_engine(url, poolclass=sa.pool.NullPool)
    seed(engine, COUNT, seed_value=31)
    frozen_id = str(uuid.uuid4())
    exported = tmp_path / "frozen.prom"
    frozen = start_run(
        url,
        tmp_path,
        *SMALL,
        *("--direct_num_workers=1", "--run-id", frozen_id, "--metrics-file", str(exported)),
        name="frozen",
    )
    holder = connections.connect(url)
    try:
        wait_for(
            lambda: rows_of(url, "emission_results", frozen_id) >= 2_000,
            timeout=120,
            interval=0.1,
            what="the first commits",
        )
        with holder.cursor() as cur:  # its next flush waits at its write-log row ...
            cur.execute("LOCK TABLE emissions.calculation_run_writes IN EXCLUSIVE MODE")
        wait_for(lambda: sessions_of(url, frozen_id, waiting=True) > 0, 60, what="a flush")
        assert frozen.proc.poll() is None, "the run finished before it could be frozen"
        os.killpg(frozen.proc.pid, signal.SIGSTOP)  # ... and stays open, uncommitted
    except BaseException:
        frozen.kill()
        raise
    finally:
        holder.rollback()
        holder.close()
    try:
        # A run started while the frozen one's claims are live leaves its ranges to it, and
        # says which run that is.
        first = start_run(url, tmp_path, *SMALL, name="first")
        assert first.wait() == 0, first.stderr[-2000:]
        left = first.summary()
        assert left["ranges_left_to_another_run"] > 0
        pending = sum(pending_by_type(url).values())
        assert pending > 0
        assert_counts_are_its_rows(url, left)

        # Declared abandoned, the frozen run still holds work: unhealthy, in one line.
        wait_for(lambda: heartbeat_older_than(url, frozen_id, 1.5), 30, what="an old heartbeat")
        code, report = status_report(url, "--stale-after", "1")
        assert code == 1, report
        assert report["abandoned_now"] == [frozen_id]
        assert report["last_run"]["run_id"] == left["run_id"]
        ranges = left["ranges_left_to_another_run"]
        assert report["problems"] == [
            f"run {frozen_id} (abandoned) stopped holding {ranges:,} key range(s) that runs "
            f"after it left to it; {pending:,} activities are pending: the next run takes them "
            "over and computes them"
        ]
        assert left["ranges_left_to_runs"] == {frozen_id: ranges}
        # Its sessions were ended: the rows and locks of its open flush are gone.
        wait_for(lambda: sessions_of(url, frozen_id) == 0, 10, what="its sessions ended")

        # The next run takes its ranges over and computes everything.
        second = start_run(url, tmp_path, *SMALL, name="second")
        assert second.wait() == 0, second.stderr[-2000:]
        taken = second.summary()
        assert taken["ranges_left_to_another_run"] == 0
        assert taken["total_processed"] + taken["errors"] == pending
        assert_counts_are_its_rows(url, taken)
        assert sum(pending_by_type(url).values()) == 0
        check_every_activity_once(url, engine)
        assert status_report(url)[0] == 0
        stored = {t: rows_of(url, t, frozen_id) for t in ("emission_results", "emission_errors")}
        assert sum(stored.values()) + sum(
            s["total_processed"] + s["errors"] for s in (left, taken)
        ) == int(scalar(url, "SELECT count(*) FROM emissions.emission_results")) + int(
            scalar(url, "SELECT count(*) FROM emissions.emission_errors")
        )
    finally:
        os.killpg(frozen.proc.pid, signal.SIGCONT)

    # Resumed, it writes nothing: its flush is refused, and it reads no more ranges.
    assert frozen.wait(timeout=120) == 1  # it did not finish its work: others did
    assert {t: rows_of(url, t, frozen_id) for t in stored} == stored
    assert duplicate_counts(url) == (0, 0)
    check_every_activity_once(url, engine)
    assert f"run {frozen_id} was recorded abandoned by another process" in frozen.stderr
    assert (
        scalar(url, "SELECT status FROM emissions.calculation_runs WHERE run_id = %s", (frozen_id,))
        == "abandoned"
    )
    # What it says it stored is what carries its id.
    figures = exported_figures(exported)
    assert figures["emissions_run_info"]["status"] == "abandoned"
    assert (figures["emissions_run_rows_written"], figures["emissions_run_dead_letters"]) == (
        stored["emission_results"],
        stored["emission_errors"],
    )
    assert status_report(url)[0] == 0
    engine.dispose()


def start(engine: sa.Engine) -> str:
    run_id = str(uuid.uuid4())
    runs.start_run(engine, run_id, "test", {})
    return run_id


def age_heartbeat(engine: sa.Engine, run_id: str, seconds: float) -> None:
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "UPDATE emissions.calculation_runs SET heartbeat_at = now() - "
                "make_interval(secs => :s) WHERE run_id = :id"
            ),
            {"s": seconds, "id": run_id},
        )


def test_a_claim_is_never_taken_from_a_live_run_and_always_from_a_stopped_one(
    database_url: str,
) -> None:
    engine = connections.make_engine(database_url, poolclass=sa.pool.NullPool)
    conn = connections.connect(database_url)
    live, other = start(engine), start(engine)
    try:
        with runs.Heartbeat(engine, live, interval=0.2):
            assert claims.claim(conn, "emissions", "spend", 10, 20, live) == claims.Claim(
                True, live
            )
            for _ in range(20):  # a live run's claim is never taken, however often asked
                assert claims.claim(conn, "emissions", "spend", 10, 20, other) == claims.Claim(
                    False, live
                )
            assert claims.claim(conn, "emissions", "spend", 10, 20, live).held  # its own
            assert claims.claim(conn, "emissions", "spend", 10, None, other).held  # another
        # The heartbeat stopped with the run's work: its claims are released with it.
        assert claims.claim(conn, "emissions", "spend", 10, 20, other) == claims.Claim(True, other)

        # A run still 'running' whose heartbeat is older than the lease (the default
        # --stale-after) is marked abandoned by the run that takes its range over; under the
        # lease, it keeps it.
        assert claims.LEASE == runs.DEFAULT_STALE_AFTER
        stale = start(engine)
        assert claims.claim(conn, "emissions", "electricity", None, 5, stale).held
        age_heartbeat(engine, stale, claims.LEASE - 5)
        assert not claims.claim(conn, "emissions", "electricity", None, 5, other).held
        age_heartbeat(engine, stale, claims.LEASE + 1)
        assert claims.claim(conn, "emissions", "electricity", None, 5, other) == claims.Claim(
            True, other, taken_from=stale
        )
        row = next(r for r in runs.recent_runs(engine) if r.run_id == stale)
        status, message = row.status, row.message
        assert status == "abandoned"
        assert message is not None and f"(marked by run {other}, which took over" in message
        # A run no longer running claims nothing, and its flushes are refused.
        assert claims.claim(conn, "emissions", "spend", 30, 40, stale) == claims.Claim(
            False, stopped=True
        )
        error = ErrorRecord("spend", 7, "bad", "a bad row", "{}", 1)
        with pytest.raises(psycopg2.Error) as refused:
            writes.write_errors(conn, [error], stale)
        assert refused.value.pgcode == claims.STOPPED
        assert rows_of(database_url, "emission_errors", stale) == 0
        # In the pipeline, such a flush is dropped (and said), and the run goes on.
        sink = WriteErrors(database_url, stale)._fn
        sink.setup()
        try:
            sink.start_bundle()
            list(sink.process(error))
            sink.finish_bundle()
        finally:
            sink.teardown()
        assert rows_of(database_url, "emission_errors", stale) == 0
        assert writes.write_errors(conn, [error], other) == 1
    finally:
        conn.close()
        engine.dispose()


def test_two_runs_taking_over_a_stopped_runs_range_at_once_get_it_once(
    database_url: str,
) -> None:
    engine = connections.make_engine(database_url, poolclass=sa.pool.NullPool)
    dead = start(engine)
    takers = [start(engine) for _ in range(4)]
    setup = connections.connect(database_url)
    try:
        for i in range(30):
            assert claims.claim(setup, "emissions", "air_travel", i, i + 1, dead).held
        assert runs.finish_run(engine, dead, status="failed", message="test")
    finally:
        setup.close()
    won: dict[str, list[int]] = {t: [] for t in takers}
    barrier = threading.Barrier(len(takers))

    def take(run_id: str) -> None:
        conn = connections.connect(database_url)
        try:
            barrier.wait()
            for i in range(30):
                found = claims.claim(conn, "emissions", "air_travel", i, i + 1, run_id)
                if found.held:
                    assert found.taken_from == dead
                    won[run_id].append(i)
        finally:
            conn.close()

    threads = [threading.Thread(target=take, args=(t,)) for t in takers]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert sorted(i for got in won.values() for i in got) == list(range(30))
    assert (
        int(
            scalar(
                database_url,
                "SELECT count(*) FROM emissions.range_claims WHERE run_id = ANY(%s::uuid[])",
                (takers,),
            )
        )
        == 30
    )
    engine.dispose()
