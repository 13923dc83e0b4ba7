"""``python -m ops.status``: the last runs, runs that stopped without finishing (found by their
heartbeat, and marked abandoned), pending work, and exit codes a monitor can use.

The killed run is a real ``python -m pipeline.run`` process SIGKILLed part-way; the live run
whose heartbeat keeps it from being marked is a real heartbeat thread on a real row.
"""

from __future__ import annotations

import datetime
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from ops import status
from ops.seed import seed
from pipeline import run
from pipeline.store import connections, runs
from tests.support import ROOT, RunProcess, results_count, scalar, start_run, wait_for

COUNT = 150_000
SMALL_COMMITS = ("--rows-per-range", "1000", "--write-batch-size", "500", "--partitions", "4")


def iso(moment: datetime.datetime | None) -> str | None:
    return None if moment is None else moment.astimezone(datetime.timezone.utc).isoformat()


def run_row(url: str, run_id: str) -> dict[str, Any]:
    engine = connections.make_engine(url, poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as conn:
            row = conn.execute(
                sa.text("SELECT * FROM emissions.calculation_runs WHERE run_id = :id"),
                {"id": run_id},
            ).mappings()
            return dict(row.one())
    finally:
        engine.dispose()


def described(row: dict[str, Any], **changed: Any) -> dict[str, Any]:
    """A finished run's row as the status describes it."""
    end = row["finished_at"] or row["heartbeat_at"]
    shown = {
        "run_id": str(row["run_id"]),
        "status": row["status"],
        "runner": row["runner"],
        "started_at": iso(row["started_at"]),
        "finished_at": iso(row["finished_at"]),
        "heartbeat_at": iso(row["heartbeat_at"]),
        "duration_s": round((end - row["started_at"]).total_seconds(), 3),
        "heartbeat_age_s": None,
        "total_activities": row["total_activities"],
        "pending": row["pending"],
        "processed": row["total_processed"],
        "errors": row["errors"],
        "co2e_tonnes": row["total_co2e_tonnes"],
        "message": row["message"],
        "airflow": None,
    }
    return {**shown, **changed}


def pending_by_type(url: str) -> dict[str, int]:
    """Activities with neither a result nor a dead letter, per type (nothing was changed)."""
    found = {}
    for activity_type, name in (
        ("electricity", "electricity_activities"),
        ("spend", "spend_activities"),
        ("air_travel", "air_travel_activities"),
    ):
        found[activity_type] = int(
            scalar(
                url,
                f"SELECT count(*) FROM emissions.{name} a WHERE NOT EXISTS (SELECT 1 FROM "
                "emissions.emission_results r WHERE r.activity_type = %s AND r.activity_id = a.id) "
                "AND NOT EXISTS (SELECT 1 FROM emissions.emission_errors e WHERE "
                "e.activity_type = %s AND e.activity_id = a.id)",
                (activity_type, activity_type),
            )
        )
    return found


def status_json(
    url: str, capsys: pytest.CaptureFixture[str], *extra: str
) -> tuple[int, dict[str, Any]]:
    code = status.main(["--database-url", url, "--json", *extra])
    out = capsys.readouterr().out
    return code, json.loads(out)


def run_in_process(url: str, capsys: pytest.CaptureFixture[str], *extra: str) -> dict[str, Any]:
    assert run.main(["--database-url", url, "--progress-interval", "0", *extra]) == 0
    out = capsys.readouterr().out
    summary: dict[str, Any] = json.loads(out)
    return summary


def status_process(url: str, *extra: str) -> subprocess.CompletedProcess[str]:
    """``python -m ops.status`` as a monitor runs it."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("EMISSIONS_", "AIRFLOW_"))}
    return subprocess.run(
        [sys.executable, "-m", "ops.status", "--database-url", url, *extra],
        cwd=ROOT,
        env={**env, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def heartbeat_older_than(url: str, run_id: str, seconds: float) -> bool:
    return bool(
        scalar(
            url,
            "SELECT now() - heartbeat_at > make_interval(secs => %s) "
            "FROM emissions.calculation_runs WHERE run_id = %s",
            (seconds, run_id),
        )
    )


def test_a_sigkilled_run_is_reported_and_marked_abandoned_then_the_next_run_says_so(
    make_database: Callable[..., str], tmp_path: Path
) -> None:
    url = make_database("bigint")
    engine = connections.make_engine(url, poolclass=sa.pool.NullPool)
    seed(engine, COUNT, seed_value=11)
    engine.dispose()
    run_id = str(uuid.uuid4())
    _kill_part_way(url, tmp_path, run_id)
    before = run_row(url, run_id)
    assert before["status"] == "running"

    # Within --stale-after a run that has stopped beating may be alive still: left running.
    waiting = status_process(url, "--json")
    assert waiting.returncode == 3, waiting.stderr  # pending, and no run has succeeded yet
    assert json.loads(waiting.stdout)["abandoned_now"] == []
    assert run_row(url, run_id)["status"] == "running"

    wait_for(lambda: heartbeat_older_than(url, run_id, 1.5), timeout=30, what="an old heartbeat")
    after, pending = _assert_marked_abandoned(url, run_id, before)
    assert 1_000 <= COUNT - sum(pending.values())  # what it committed stays
    # Marked once: a second look marks nothing more, and still says the last run was abandoned.
    again = status_process(url, "--json", "--stale-after", "1")
    assert again.returncode == 1
    assert json.loads(again.stdout)["abandoned_now"] == []

    # The next run says so in one line, computes the rest, and the status is healthy again.
    second = start_run(url, tmp_path, "--partitions", "4", name="second")
    assert second.wait(timeout=240) == 0, second.stderr[-3000:]
    _assert_warned_once(second, run_id, before["started_at"], after["heartbeat_at"])
    healthy = status_process(url, "--json")
    assert healthy.returncode == 0, healthy.stdout
    report = json.loads(healthy.stdout)
    assert report["problems"] == [] and report["pending_total"] == 0
    assert [r["status"] for r in report["runs"]] == ["succeeded", "abandoned"]
    print(
        f"\nabandoned: killed with {COUNT - sum(pending.values()):,} of {COUNT:,} done, "
        f"its last heartbeat {(after['heartbeat_at'] - after['started_at']).total_seconds():.1f} "
        f"s after its start; the next run computed {second.summary()['total_processed']:,}"
    )
    # Once a run has succeeded since, the abandoned one is no longer news.
    third = start_run(url, tmp_path, name="third")
    assert third.wait(timeout=120) == 0
    assert " WARNING " not in third.stderr


def _kill_part_way(url: str, tmp_path: Path, run_id: str) -> None:
    """Starts run ``run_id`` and SIGKILLs it once it has committed some and beat again."""
    # One worker, small commits; once it has committed some, its next commit waits for a lock
    # the test holds on the write log: far from done when its second heartbeat is written, 5 s
    # in (the heartbeat does not wait for that lock).
    killed = start_run(
        url, tmp_path, *SMALL_COMMITS, "--direct_num_workers=1", "--run-id", run_id, name="killed"
    )
    holder = connections.connect(url)
    try:
        wait_for(lambda: results_count(url) >= 1_000, timeout=120, interval=0.1, what="commits")
        with holder.cursor() as cur:
            cur.execute("LOCK TABLE emissions.calculation_run_writes IN EXCLUSIVE MODE")
        # A heartbeat after the first (written as the run starts): it beats while it works.
        wait_for(
            lambda: bool(
                scalar(
                    url,
                    "SELECT heartbeat_at - started_at > interval '4 s' "
                    "FROM emissions.calculation_runs WHERE run_id = %s",
                    (run_id,),
                )
            ),
            timeout=60,
            what="a later heartbeat",
        )
        assert killed.proc.poll() is None, "the run finished before it could be killed"
    finally:
        killed.kill()
        holder.rollback()
        holder.close()


def _assert_marked_abandoned(
    url: str, run_id: str, before: dict[str, Any]
) -> tuple[dict[str, Any], dict[str, int]]:
    """``ops.status --stale-after 1`` marks the killed run abandoned and reports exactly it;
    returns the run's row after and the pending activities per type."""
    checked = status_process(url, "--json", "--stale-after", "1")
    assert checked.returncode == 1, checked.stdout + checked.stderr
    assert checked.stderr == ""
    report = json.loads(checked.stdout)
    after = run_row(url, run_id)
    beat = after["heartbeat_at"]
    message = (
        "stopped without finishing: no heartbeat since "
        f"{beat.astimezone(datetime.timezone.utc):%Y-%m-%d %H:%M:%S} UTC (marked by ops.status)"
    )
    assert (after["status"], after["message"], after["finished_at"]) == ("abandoned", message, None)
    assert after["heartbeat_at"] == before["heartbeat_at"]  # marking is not a heartbeat
    pending = pending_by_type(url)
    killed_run = described(after)
    assert killed_run["duration_s"] == round((beat - after["started_at"]).total_seconds(), 3)
    assert report == {
        "status": "failing",
        "exit_code": 1,
        "problems": [
            f"the last run, {run_id}, abandoned: {message}",
            f"{sum(pending.values()):,} activities are pending and no run has succeeded in the "
            "last 93600 s: no run has ever succeeded",
        ],
        "database": connections.redact_url(url),
        "schema": "emissions",
        "stale_after_s": 1.0,
        "pending_after_s": 93600.0,
        "abandoned_now": [run_id],
        "last_run": killed_run,
        "last_success": None,
        "pending": pending,
        "pending_total": sum(pending.values()),
        "runs": [killed_run],
    }
    return after, pending


def _assert_warned_once(
    second: RunProcess, run_id: str, started_at: datetime.datetime, beat: datetime.datetime
) -> None:
    """The next run's one warning names the abandoned run, its start and last heartbeat."""
    started = started_at.astimezone(datetime.timezone.utc)
    warning = (
        f"WARNING pipeline.run 1 run stopped without finishing since the last successful run, "
        f"marked abandoned in calculation_runs: {run_id} (started {started:%Y-%m-%d %H:%M:%S} "
        f"UTC, last heartbeat {beat.astimezone(datetime.timezone.utc):%Y-%m-%d %H:%M:%S} UTC); "
        "what they committed stays, and what they left is pending again"
    )
    warned = [line for line in second.stderr.splitlines() if " WARNING " in line]
    assert len(warned) == 1 and warned[0].endswith(warning), second.stderr


def test_a_healthy_database_exits_0_and_the_json_is_exactly_the_runs(
    database_url: str, engine: sa.Engine, capsys: pytest.CaptureFixture[str]
) -> None:
    seed(engine, 600, seed_value=5)
    summary = run_in_process(database_url, capsys)
    code, report = status_json(database_url, capsys)
    assert code == 0
    row = run_row(database_url, summary["run_id"])
    shown = described(row)
    assert (shown["processed"], shown["errors"], shown["total_activities"]) == (
        summary["total_processed"],
        summary["errors"],
        600,
    )
    assert shown["co2e_tonnes"] == summary["total_co2e_tonnes"]
    assert report == {
        "status": "healthy",
        "exit_code": 0,
        "problems": [],
        "database": connections.redact_url(database_url),
        "schema": "emissions",
        "stale_after_s": 300.0,
        "pending_after_s": 93600.0,
        "abandoned_now": [],
        "last_run": shown,
        "last_success": {
            "run_id": summary["run_id"],
            "started_at": iso(row["started_at"]),
            "finished_at": iso(row["finished_at"]),
        },
        "pending": {"electricity": 0, "spend": 0, "air_travel": 0},
        "pending_total": 0,
        "runs": [shown],
    }
    # For a person: the verdict first, then what is pending, then the runs.
    assert status.main(["--database-url", database_url]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"HEALTHY: {connections.redact_url(database_url)}, schema emissions"
    assert lines[1] == "pending: 0 (electricity 0, spend 0, air_travel 0)"
    assert lines[2] == f"last success: {summary['run_id']}, started {iso(row['started_at'])}"
    assert lines[3] == "runs, newest first:"
    assert lines[4].split() == [
        "started", "(UTC)", "status", "runner", "duration", "processed", "errors", "tonnes",
        "run", "id",
    ]  # fmt: skip
    assert lines[5].split()[2:4] == ["succeeded", "DirectRunner"]
    assert lines[5].endswith(summary["run_id"]) and len(lines) == 6


def test_work_pending_longer_than_the_threshold_exits_2(
    database_url: str, engine: sa.Engine, capsys: pytest.CaptureFixture[str]
) -> None:
    seed(engine, 600, seed_value=5)
    summary = run_in_process(database_url, capsys)
    seed(engine, 300, seed_value=6)  # arrives after the run
    pending = pending_by_type(database_url)
    assert sum(pending.values()) == 300
    code, report = status_json(database_url, capsys)
    assert (code, report["problems"], report["pending"]) == (0, [], pending)  # not for long yet
    # The same, two days later (the run moved back in time, as the clock would move on).
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "UPDATE emissions.calculation_runs SET started_at = started_at - interval "
                "'2 days', finished_at = finished_at - interval '2 days', heartbeat_at = "
                "heartbeat_at - interval '2 days'"
            )
        )
    row = run_row(database_url, summary["run_id"])
    code, report = status_json(database_url, capsys)
    assert code == status.BEHIND == 3
    assert (report["status"], report["exit_code"]) == ("behind", 3)
    assert report["problems"] == [
        "300 activities are pending and no run has succeeded in the last 93600 s: the last run "
        f"that succeeded started at {iso(row['started_at'])}"
    ]
    assert report["last_run"] == described(row)
    # A threshold longer than the wait: healthy.
    code, report = status_json(database_url, capsys, "--pending-after", "259200")
    assert (code, report["problems"], report["pending_after_s"]) == (0, [], 259200.0)


def test_a_failed_last_run_exits_1_and_a_live_run_is_not_the_last_run(
    database_url: str, engine: sa.Engine, capsys: pytest.CaptureFixture[str]
) -> None:
    failed, live = str(uuid.uuid4()), str(uuid.uuid4())
    runs.start_run(engine, failed, "FlinkRunner", {})
    assert runs.finish_run(engine, failed, status="failed", message="the database is unavailable")
    time.sleep(0.01)
    runs.start_run(engine, live, "DirectRunner", {})
    code, report = status_json(database_url, capsys)
    assert code == 1
    assert report["problems"] == [f"the last run, {failed}, failed: the database is unavailable"]
    assert report["last_run"]["run_id"] == failed
    newest = report["runs"][0]
    assert (newest["run_id"], newest["status"], newest["finished_at"]) == (live, "running", None)
    assert newest["heartbeat_age_s"] is not None and 0 <= newest["heartbeat_age_s"] < 60
    assert newest["duration_s"] is not None and newest["duration_s"] >= 0
    assert report["abandoned_now"] == []
    # A cancelled run (stopped by a signal, recorded with what it committed) is not a failure.
    assert runs.finish_run(engine, live, status="cancelled", message="cancelled by SIGTERM")
    code, report = status_json(database_url, capsys)
    assert (code, report["problems"], report["last_run"]["status"]) == (0, [], "cancelled")


def test_a_live_run_is_never_marked_and_a_dead_one_is_marked_once(
    database_url: str, engine: sa.Engine
) -> None:
    live, finished = str(uuid.uuid4()), str(uuid.uuid4())
    runs.start_run(engine, finished, "DirectRunner", {})
    assert runs.finish_run(engine, finished, status="succeeded")
    runs.start_run(engine, live, "DirectRunner", {})
    beating = runs.Heartbeat(engine, live, interval=0.2)
    with beating:
        time.sleep(1.5)
        assert runs.mark_abandoned(engine, stale_after=1.0) == []  # its heartbeat is fresh
        assert beating.beats >= 4 and beating.running
    stopped_at = time.monotonic()
    assert runs.mark_abandoned(engine, stale_after=1.0) == []
    wait_for(lambda: heartbeat_older_than(database_url, live, 1.1), timeout=10, what="old")
    assert time.monotonic() - stopped_at >= 0.9
    # The finished run's heartbeat is old too: only a run still 'running' is ever marked.
    assert runs.mark_abandoned(engine, stale_after=1.0) == [live]
    assert runs.mark_abandoned(engine, stale_after=1.0) == []
    assert runs.beat(engine, live) is False  # an abandoned run's heartbeat changes nothing
    assert runs.finish_run(engine, live, status="succeeded") is False  # nor does its end
    with engine.connect() as conn:
        found = conn.execute(sa.text("SELECT run_id, status FROM emissions.calculation_runs"))
        statuses = {str(r): s for r, s in found}
    assert statuses == {finished: "succeeded", live: "abandoned"}


def test_the_heartbeat_stops_when_its_run_is_marked_by_someone_else(
    database_url: str, engine: sa.Engine, caplog: pytest.LogCaptureFixture
) -> None:
    run_id = str(uuid.uuid4())
    runs.start_run(engine, run_id, "DirectRunner", {})
    with engine.begin() as conn:  # marked from outside, as a status with a too-short threshold
        conn.execute(sa.text("UPDATE emissions.calculation_runs SET status = 'abandoned'"))
    beating = runs.Heartbeat(engine, run_id, interval=0.1)
    with caplog.at_level("WARNING", logger="pipeline.store.runs"), beating:
        wait_for(lambda: not beating.running, timeout=10, what="the heartbeat to notice")
        time.sleep(0.3)
    assert beating.beats == 0
    assert [r.getMessage() for r in caplog.records] == [
        f"run {run_id} is no longer 'running' in calculation_runs (marked by another "
        "process): its heartbeat stops and its outcome will not be recorded"
    ]


def test_airflows_run_and_data_interval_are_stored_with_the_run(
    database_url: str,
    engine: sa.Engine,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    seed(engine, 300, seed_value=5)
    monkeypatch.setenv("AIRFLOW_CTX_DAG_ID", "emissions_nightly")
    monkeypatch.setenv("AIRFLOW_CTX_DAG_RUN_ID", "scheduled__2025-03-01T00:00:00+00:00")
    # As the DAG runs it: the data interval's days as --date-from/--date-to.
    first = run_in_process(
        database_url, capsys, "--date-from", "2025-03-01", "--date-to", "2025-03-02"
    )
    row = run_row(database_url, first["run_id"])
    utc = datetime.timezone.utc
    assert (
        row["airflow_dag_id"],
        row["airflow_run_id"],
        row["data_interval_start"],
        row["data_interval_end"],
    ) == (
        "emissions_nightly",
        "scheduled__2025-03-01T00:00:00+00:00",
        datetime.datetime(2025, 3, 1, tzinfo=utc),
        datetime.datetime(2025, 3, 2, tzinfo=utc),
    )
    # Given explicitly (Airflow's data_interval_start and _end as they render).
    second = run_in_process(
        database_url,
        capsys,
        "--data-interval-start",
        "2025-03-02T00:00:00+00:00",
        "--data-interval-end",
        "2025-03-03T06:30:00Z",
    )
    code, report = status_json(database_url, capsys)
    assert code == 0
    assert [r["airflow"] for r in report["runs"]] == [
        {
            "dag_id": "emissions_nightly",
            "dag_run_id": "scheduled__2025-03-01T00:00:00+00:00",
            "data_interval_start": "2025-03-02T00:00:00+00:00",
            "data_interval_end": "2025-03-03T06:30:00+00:00",
        },
        {
            "dag_id": "emissions_nightly",
            "dag_run_id": "scheduled__2025-03-01T00:00:00+00:00",
            "data_interval_start": "2025-03-01T00:00:00+00:00",
            "data_interval_end": "2025-03-02T00:00:00+00:00",
        },
    ]
    assert report["runs"][0]["run_id"] == second["run_id"]
    # Outside Airflow, dates are a scope, not a data interval: nothing recorded.
    monkeypatch.delenv("AIRFLOW_CTX_DAG_ID")
    monkeypatch.delenv("AIRFLOW_CTX_DAG_RUN_ID")
    third = run_in_process(
        database_url, capsys, "--date-from", "2025-03-01", "--date-to", "2025-03-02"
    )
    row = run_row(database_url, third["run_id"])
    assert [row[c] for c in ("airflow_dag_id", "airflow_run_id", "data_interval_start")] == [
        None,
        None,
        None,
    ]
    # A data interval that is not a timestamp is refused, in one line.
    assert run.main(["--database-url", database_url, "--data-interval-start", "yesterday"]) == 2
    assert capsys.readouterr().err.splitlines() == [
        "error: --data-interval-start must be an ISO 8601 timestamp like "
        "2025-01-31T00:00:00+00:00, not 'yesterday'"
    ]


def test_status_options_are_checked_and_an_old_schema_is_named(
    empty_database: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as usage:
        status.main(["--database-url", empty_database, "--stale-after", "0"])
    assert usage.value.code == 2
    assert (
        capsys.readouterr()
        .err.splitlines()[-1]
        .endswith("error: --stale-after must be a number of seconds above 0")
    )
    assert status.main(["--database-url", empty_database]) == status.UNKNOWN == 4
    captured = capsys.readouterr()
    assert captured.out == ""
    # A run does not create a schema (issue 23): only init is named.
    assert captured.err.splitlines() == [
        "error: the schema emissions holds no pipeline yet: run python -m ops.admin init first "
        "(with --sources FILE to compute your own tables)"
    ]
