"""A PostgreSQL restart in the middle of a restatement or a follow run is ridden out, as a batch
run rides it out (guarantee 4): every connection of the pipeline is ended by the server while
it works (``pg_terminate_backend``, what a restart does to them), and the work goes on on new
ones, with nothing lost, doubled or counted twice (chaos findings F3, F5)."""

from __future__ import annotations

import json
import signal
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg2
import pytest
import sqlalchemy as sa

from audit import restate, verify
from ops.seed import seed
from pipeline import editions, retry
from pipeline.store import bulk, connections
from pipeline.store.embedded import ensure_database
from pipeline.store.install import initialise
from tests.support import results_count, scalar, sql_reference, wait_for
from tests.test_follow import WITHIN, execute, following, matches_reference, start_follow
from tests.test_outage import ThrowawayServer, throwaway_server
from tests.test_verify import run_pipeline

AIR_2024 = "2024 full set v1.1"
AIR_2025 = "2025 flat file"
ELECTRICITY_ROW = (
    "INSERT INTO emissions.electricity_activities (id, quantity, unit, region, country, "
    "activity_date) VALUES (900001, 1234.5, 'kWh', 'CAMX', 'USA', '2024-05-01')"
)
FAST = retry.RetryPolicy(attempts=5, base_delay=0.05, max_delay=0.2)


def rows(engine: sa.Engine, query: str, **params: object) -> list[tuple[Any, ...]]:
    with engine.connect() as conn:
        return [tuple(r) for r in conn.execute(sa.text(query), params)]


def end_pipeline_sessions(url: str) -> int:
    """Ends every session of the pipeline in the database, as a restart does, and waits for
    them to be gone; how many there were."""
    with connections.connect(url) as admin:
        admin.autocommit = True
        with admin.cursor() as cur:
            cur.execute(
                "SELECT count(pg_terminate_backend(pid, 10000)) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid() "
                "AND application_name LIKE 'emissions-pipeline%%'"
            )
            (ended,) = cur.fetchone()
    admin.close()
    return int(ended)


def fail_once_at(
    monkeypatch: pytest.MonkeyPatch, module: Any, name: str, call: int, url: str, least: int = 2
) -> list[BaseException]:
    """``module.name`` (a writer taking a connection first) ends every pipeline session before
    its ``call``-th call: that call fails as it would after a restart. The errors it raised."""
    real: Callable[..., Any] = getattr(module, name)
    calls: list[int] = []
    raised: list[BaseException] = []

    def once(conn: psycopg2.extensions.connection, *args: Any, **kw: Any) -> Any:
        calls.append(1)
        if len(calls) == call:
            assert end_pipeline_sessions(url) >= least
        try:
            return real(conn, *args, **kw)
        except Exception as e:
            raised.append(e)
            raise

    monkeypatch.setattr(module, name, once)
    return raised


def test_a_restatement_rides_out_a_restart_between_its_writes(
    database_url: str,
    engine: sa.Engine,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    seed(engine, 400, seed_value=31)
    run_pipeline(database_url, capsys)
    results = rows(engine, "SELECT count(*) FROM emissions.emission_results")[0][0]
    on_2024 = rows(
        engine,
        "SELECT count(*) FROM emissions.emission_results r JOIN emissions.emission_factors f "
        "ON f.id = r.factor_id WHERE f.factor_set = 'desnz_air' AND f.edition = :e",
        e=AIR_2024,
    )[0][0]
    assert on_2024 > 30

    # Ten results per write: the server ends every session before the third one.
    raised = fail_once_at(monkeypatch, bulk, "supersede_results_table", 3, database_url)
    pins = editions.parse_pins([f"desnz_air={AIR_2025}"])
    out = restate.restate(engine, pins, chunk=10, policy=FAST)

    assert len(raised) == 1 and retry.is_transient(raised[0]), raised
    # Counted once each, though read again after the restart.
    assert (out.examined, out.changed, out.refused, out.left_to_next_run) == (
        results,
        on_2024,
        0,
        0,
    )
    assert out.diff["changed"] == on_2024
    # Each restated result moved to history once; none is left on a 2024 factor.
    assert rows(
        engine,
        "SELECT count(*), count(DISTINCT activity_id) FROM emissions.emission_results_history "
        "WHERE restatement_id = :r",
        r=out.restatement_id,
    ) == [(on_2024, on_2024)]
    assert rows(
        engine,
        "SELECT DISTINCT f.edition FROM emissions.emission_results r JOIN "
        "emissions.emission_factors f ON f.id = r.factor_id WHERE r.activity_type = 'air_travel'",
    ) == [(AIR_2025,)]
    assert rows(
        engine,
        "SELECT r.status, r.changed, c.status FROM emissions.restatements r "
        "JOIN emissions.calculation_runs c ON c.run_id = r.restatement_id",
    ) == [("succeeded", on_2024, "succeeded")]
    # The lock was taken again after the restart, and released at the end.
    assert rows(engine, "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'") == [(0,)]
    checked = verify.verify(engine, sample=None)
    assert checked.reproduced == checked.examined == results, checked.mismatches[:3]


def test_the_restatement_command_says_nothing_of_a_restart_it_rode_out(
    database_url: str,
    engine: sa.Engine,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    seed(engine, 200, seed_value=32)
    run_pipeline(database_url, capsys)
    raised = fail_once_at(monkeypatch, bulk, "supersede_results_table", 1, database_url)
    code = restate.main(["--database-url", database_url, "--pin", f"desnz_air={AIR_2025}"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert len(raised) == 1
    out = json.loads(captured.out)
    assert out["changed"] > 0 and out["left_to_next_run"] == 0
    assert rows(
        engine,
        "SELECT count(*) FROM emissions.emission_results_history WHERE restatement_id = :r",
        r=out["restatement_id"],
    ) == [(out["changed"],)]


@pytest.fixture(scope="module")
def server() -> Iterator[ThrowawayServer]:
    with throwaway_server("fixes") as srv:
        yield srv


@pytest.mark.db
def test_follow_rides_out_an_immediate_restart(server: ThrowawayServer, tmp_path: Path) -> None:
    url = ensure_database(server.url, f"fixes_{uuid.uuid4().hex[:8]}")
    engine = connections.make_engine(url, poolclass=sa.pool.NullPool)
    initialise(engine)
    seed(engine, 300, seed_value=8)
    engine.dispose()
    computable = len(sql_reference(url))
    proc = start_follow(url, tmp_path, "--retry-attempts", "10", "--retry-base-delay", "0.2")
    try:
        following(url, proc)
        wait_for(lambda: results_count(url) == computable, timeout=WITHIN, what="the backlog")
        electricity = int(
            scalar(
                url,
                "SELECT count(*) FROM emissions.emission_results "
                "WHERE activity_type = 'electricity'",
            )
        )
        # A crash of the server: every connection of the follow run is idle and now dead, and
        # its next statement fails with psycopg2's bare DatabaseError.
        server._pg_ctl("-m", "immediate", "stop")
        server.start()
        execute(url, ELECTRICITY_ROW)
        execute(url, "UPDATE emissions.electricity_activities SET quantity = quantity * 10")
        changed = "SELECT count(*) FROM emissions.emission_results_history"
        wait_for(
            lambda: (
                proc.proc.poll() is not None
                or (results_count(url) == computable + 1 and scalar(url, changed) == electricity)
            ),
            timeout=2 * WITHIN,
            what="the corrections computed after the restart",
        )
        assert proc.proc.poll() is None, proc.stderr[-3000:]
        matches_reference(url)
        proc.proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 128 + signal.SIGTERM
    finally:
        proc.kill()
    assert "retrying in" in proc.stderr  # it did meet the restart
    assert scalar(url, "SELECT status FROM emissions.calculation_runs") == "cancelled"


def test_follow_rides_out_a_restart_while_it_starts(
    database_url: str,
    engine: sa.Engine,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Chaos finding F8: the server ends every session while follow checks its sources'
    indexes, at start-up; it checks again on a new connection, then computes a row inserted
    after the restart, once."""
    from pipeline import follow

    seed(engine, 300, seed_value=9)
    raised = fail_once_at(monkeypatch, follow.marks, "unindexed", 1, database_url, least=1)
    failing = follow.marks.unindexed

    def then_insert(conn: psycopg2.extensions.connection, *args: Any) -> Any:
        try:
            return failing(conn, *args)
        except Exception:  # the restart: a row arrives while follow is cut off
            execute(database_url, ELECTRICITY_ROW)
            raise

    monkeypatch.setattr(follow.marks, "unindexed", then_insert)
    code = follow.main(
        [
            *("--database-url", database_url, "--poll-interval", "0.2", "--stop-after", "4"),
            *("--retry-attempts", "5", "--retry-base-delay", "0.05"),
        ]
    )
    err = capsys.readouterr().err
    assert code == 0, err[-3000:]
    assert len(raised) == 1 and retry.is_transient(raised[0]), raised
    assert "retrying in" in err
    assert results_count(database_url) == len(sql_reference(database_url))
    assert rows(
        engine,
        "SELECT count(*) FROM emissions.emission_results "
        "WHERE activity_type = 'electricity' AND activity_id = '900001'",
    ) == [(1,)]
    assert rows(engine, "SELECT status FROM emissions.calculation_runs") == [("succeeded",)]
