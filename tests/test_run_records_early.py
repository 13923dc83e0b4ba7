"""Every run is recorded from its first statement, and atomic where promised (issue 22).

A run that fails at once (its statements cut off by a 1 ms ``--statement-timeout``) has a
``failed`` row with PostgreSQL's message, which ``ops.status``, the report and the metrics all
see; the last success stays in the metrics. ``ops.admin init`` killed at any instant leaves no
schema or the whole of it; a run killed during its post-run vacuum, with all its writes
committed, is recorded as succeeded.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest
import sqlalchemy as sa
from prometheus_client.parser import text_string_to_metric_families

from audit import report, restate
from ops import status
from ops.seed import seed
from pipeline import cli, follow, run, summary
from pipeline.factors import load_shipped_factors
from pipeline.store import connections, install, runs
from tests.support import ROOT, scalar, start_run, wait_for
from tests.test_report import parse, text_of

TIMED_OUT = "canceling statement due to statement timeout"


def metric_values(path: Path) -> dict[str, float]:
    """Every sample without labels (and the info's status), by name."""
    found: dict[str, float] = {}
    for family in text_string_to_metric_families(path.read_text()):
        for s in family.samples:
            if s.name == "emissions_run_info":
                found[f"info:{s.labels['status']}"] = s.value
            elif not s.labels:
                found[s.name] = s.value
    return found


def run_row(url: str, run_id: str) -> tuple[str, str | None]:
    conn = connections.connect(url)
    try:
        with conn.cursor() as cur:
            cur.execute(
                "SELECT status, message FROM emissions.calculation_runs WHERE run_id = %s",
                (run_id,),
            )
            row = cur.fetchone()
    finally:
        conn.close()
    assert row is not None, f"run {run_id} has no row"
    return row[0], row[1]


def test_a_run_cut_off_at_once_is_recorded_failed_and_seen_by_status_report_and_metrics(
    database_url: str,
    engine: sa.Engine,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    seed(engine, 2_000, seed_value=41)
    metrics_file = tmp_path / "emissions.prom"
    common = ["--database-url", database_url, "--progress-interval", "0"]
    good = str(uuid.uuid4())
    assert run.main([*common, "--run-id", good, "--metrics-file", str(metrics_file)]) == 0
    finished_at = scalar(
        database_url,
        "SELECT finished_at FROM emissions.calculation_runs WHERE run_id = %s",
        (good,),
    )
    assert metric_values(metrics_file)["emissions_run_last_success_time_seconds"] == (
        finished_at.timestamp()
    )
    seed(engine, 500, seed_value=42)
    capsys.readouterr()

    bad = str(uuid.uuid4())
    code = run.main(
        [
            *common,
            *("--run-id", bad, "--metrics-file", str(metrics_file)),
            *("--statement-timeout", "0.001", "--retry-attempts", "1"),
        ]
    )
    assert code == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    state, message = run_row(database_url, bad)
    assert state == "failed"
    assert message is not None and TIMED_OUT in message
    assert len(message) <= summary.MESSAGE_LIMIT and "\n" not in message
    assert err.splitlines()[-1] == f"error: run {bad} failed: {message}"

    # ops.status: the last run failed, exit 1, naming it.
    assert status.main(["--database-url", database_url, "--json"]) == 1
    said = json.loads(capsys.readouterr().out)
    assert said["problems"][0] == f"the last run, {bad}, failed: {message}"
    assert said["last_run"]["run_id"] == bad

    # The metrics: this run failed; the last success is still the earlier run's end.
    found = metric_values(metrics_file)
    assert found["emissions_run_success"] == 0.0
    assert found["info:failed"] == 1.0
    assert found["emissions_run_last_success_time_seconds"] == finished_at.timestamp()

    # The report lists it, failed, with its message.
    page = report.write_report(engine, tmp_path / "report.html", "db")
    dom = parse(page.read_text())
    (row,) = dom.having(data_run=bad)
    (cell,) = [e for e in dom.having(data_status="failed") if e in dom.found]
    assert text_of(cell) == "failed"
    (why,) = dom.having(data_message=bad)
    assert text_of(why) == message
    assert dom.found.index(row) < dom.found.index(cell) < dom.found.index(why)


def test_a_follow_run_cut_off_at_once_is_recorded_failed(
    database_url: str, engine: sa.Engine, capsys: pytest.CaptureFixture[str]
) -> None:
    seed(engine, 300, seed_value=43)
    run_id = str(uuid.uuid4())
    code = follow.main(
        [
            *("--database-url", database_url, "--run-id", run_id),
            *("--statement-timeout", "0.001", "--retry-attempts", "1", "--stop-after", "5"),
        ]
    )
    assert code == 1
    err = capsys.readouterr().err
    state, message = run_row(database_url, run_id)
    assert state == "failed"
    assert message is not None and TIMED_OUT in message and len(message) <= 300
    assert err.splitlines()[-1] == f"error: run {run_id} failed: {message}"


def test_a_run_before_init_says_so_in_one_line_and_creates_nothing(
    empty_database: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """No schema, so nowhere to record the run: it says to run init, whatever its timeout."""
    run_id = str(uuid.uuid4())
    code = run.main(
        [
            *("--database-url", empty_database, "--run-id", run_id),
            *("--statement-timeout", "0.001", "--retry-attempts", "1"),
        ]
    )
    assert code == 2
    err = capsys.readouterr().err
    assert err.splitlines() == [f"error: {cli.init_first('emissions')}"]
    assert scalar(empty_database, "SELECT to_regnamespace('emissions')::text") is None


def test_a_run_on_a_schema_behind_that_fails_says_it_is_not_recorded(
    empty_database: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """A schema an older release made: the run migrates it before it can record itself; cut
    off before that, it says so on its one line, and the migration is rolled back whole."""
    from alembic import command

    engine = connections.make_engine(empty_database, poolclass=sa.pool.NullPool)
    with engine.begin() as conn:
        conn.execute(sa.text("CREATE SCHEMA emissions"))
        command.upgrade(install._alembic_config(conn, "emissions", "bigint"), "0004")
    engine.dispose()
    run_id = str(uuid.uuid4())
    code = run.main(
        [
            *("--database-url", empty_database, "--run-id", run_id),
            *("--statement-timeout", "0.001", "--retry-attempts", "1"),
        ]
    )
    assert code == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    last = err.splitlines()[-1]
    assert last.startswith(f"error: run {run_id} failed: QueryCanceled: {TIMED_OUT}")
    assert last.endswith("(not recorded: the schema emissions is at revision 0004)")
    assert scalar(empty_database, "SELECT version_num FROM emissions.alembic_version") == "0004"


# --- Atomic where promised ---------------------------------------------------------------


def _others(url: str) -> int:
    """Sessions on the database other than this one (the init being killed, until it ends)."""
    return int(
        scalar(
            url,
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
            "AND pid <> pg_backend_pid()",
        )
    )


def _set_up(url: str) -> str:
    """'nothing' (no schema), 'everything' (the newest revision and every shipped factor), or
    what was found in between."""
    if scalar(url, "SELECT to_regnamespace('emissions')::text") is None:
        return "nothing"
    if scalar(url, "SELECT to_regclass('emissions.alembic_version')::text") is None:
        return "a schema without its version table"
    revision = scalar(url, "SELECT version_num FROM emissions.alembic_version")
    factors = scalar(url, "SELECT count(*) FROM emissions.emission_factors")
    if (revision, factors) == (install.head_revision(), len(load_shipped_factors())):
        return "everything"
    return f"revision {revision} with {factors} factor rows"


def _kill_init(url: str, signum: int, instant: float | str) -> str:
    """Starts ``ops.admin init``, sends it ``signum`` at ``instant`` (seconds after its first
    connection, or 'visible': as soon as its schema can be seen from another session), and
    returns what it left once its session has ended."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "ops.admin", "init", "--database-url", url],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    watcher = connections.connect(url)
    watcher.autocommit = True
    try:
        with watcher.cursor() as cur:
            query = (
                "SELECT to_regclass('emissions.alembic_version') IS NOT NULL"
                if instant == "visible"
                else "SELECT count(*) > 0 FROM pg_stat_activity WHERE datname = "
                "current_database() AND pid <> pg_backend_pid()"
            )
            deadline = time.monotonic() + 60
            while proc.poll() is None and time.monotonic() < deadline:
                cur.execute(query)
                (seen,) = cur.fetchone()
                if seen:
                    break
                time.sleep(0.002)
        if isinstance(instant, float):
            time.sleep(instant)
        if proc.poll() is None:
            os.kill(proc.pid, signum)
        proc.wait(timeout=30)
    finally:
        watcher.close()
    wait_for(lambda: _others(url) == 0, timeout=30, what="the killed init's session to end")
    return _set_up(url)


def test_init_killed_at_any_instant_leaves_nothing_or_everything(empty_database: str) -> None:
    url = empty_database
    instants: list[tuple[int, float | str]] = [
        (signal.SIGKILL, "visible"),
        (signal.SIGTERM, "visible"),
        (signal.SIGKILL, 0.0),
        (signal.SIGTERM, 0.1),
        (signal.SIGKILL, 0.3),
    ]
    left = {}
    for signum, instant in instants:
        left[(signal.Signals(signum).name, instant)] = found = _kill_init(url, signum, instant)
        assert found in ("nothing", "everything"), left
        if found == "everything":  # start again from nothing
            conn = connections.connect(url)
            conn.autocommit = True
            with conn.cursor() as cur:
                cur.execute("DROP SCHEMA emissions CASCADE")
            conn.close()
    assert "nothing" in left.values(), left  # some kill did land inside the set-up
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-m", "ops.admin", "init", "--database-url", url],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["factor_rows_added"] == len(load_shipped_factors())
    assert _set_up(url) == "everything"


def test_a_run_stopped_during_its_vacuum_is_recorded_succeeded(
    database_url: str, engine: sa.Engine, tmp_path: Path
) -> None:
    """All its writes are committed before the vacuum (housekeeping), made slow here by a
    cost delay: SIGTERM then cancels the vacuum, and the run stays succeeded."""
    seed(engine, 12_000, seed_value=44)
    slow = "&options=" + "-c vacuum_cost_delay=20 -c vacuum_cost_limit=1".replace(" ", "%20")
    slow = slow.replace("=", "%3D").replace("options%3D", "options=")
    run_id = str(uuid.uuid4())
    proc = start_run(database_url + slow, tmp_path, "--run-id", run_id, "--partitions", "2")
    try:
        wait_for(
            lambda: bool(
                scalar(
                    database_url,
                    "SELECT count(*) FROM pg_stat_activity WHERE query ILIKE 'VACUUM%%' "
                    "AND state = 'active' AND datname = current_database()",
                )
            ),
            timeout=120,
            interval=0.02,
            what="the run's vacuum",
        )
        assert run_row(database_url, run_id)[0] == "succeeded"  # recorded before the vacuum
        signalled = time.monotonic()
        proc.proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=60)
        took = time.monotonic() - signalled
    finally:
        proc.kill()
    assert code == 0, proc.stderr
    print(f"the run ended {took:.2f} s after SIGTERM")
    assert took < 5, f"{took:.1f} s"
    assert run_row(database_url, run_id) == ("succeeded", None)
    stored = scalar(
        database_url,
        "SELECT count(*) FROM emissions.emission_results WHERE run_id = %s",
        (run_id,),
    )
    errors = scalar(
        database_url,
        "SELECT count(*) FROM emissions.emission_errors WHERE run_id = %s",
        (run_id,),
    )
    assert stored + errors == 12_000
    assert (
        scalar(
            database_url,
            "SELECT total_processed FROM emissions.calculation_runs WHERE run_id = %s",
            (run_id,),
        )
        == stored
        == proc.summary()["total_processed"]
    )
    assert (
        'stopped vacuuming "emissions"."emission_results" after this run\'s writes (SIGTERM)'
        in (proc.stderr)
    )
    assert "Traceback" not in proc.stderr


def test_a_run_marked_abandoned_while_it_worked_exits_1_and_its_record_stays(
    database_url: str, engine: sa.Engine, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Another process marks the run abandoned (as ops.status does for a frozen run): the
    run keeps that record, says so, and exits 1 with its figures exported as abandoned."""
    seed(engine, 3_000, seed_value=45)
    run_id = str(uuid.uuid4())
    marked: list[str] = []

    def mark() -> None:
        wait_for(
            lambda: (
                scalar(
                    database_url,
                    "SELECT count(*) FROM emissions.calculation_runs WHERE run_id = %s",
                    (run_id,),
                )
                == 1
            ),
            timeout=60,
            interval=0.005,
        )
        time.sleep(0.01)  # a heartbeat older than the threshold below
        marked.extend(runs.mark_abandoned(engine, 0.001, by="ops.status"))

    marker = threading.Thread(target=mark)
    marker.start()
    metrics_file = tmp_path / "emissions.prom"
    code = run.main(
        [
            *("--database-url", database_url, "--run-id", run_id, "--progress-interval", "0"),
            *("--metrics-file", str(metrics_file)),
        ]
    )
    marker.join()
    assert marked == [run_id]
    captured = capsys.readouterr()
    assert code == 1
    assert captured.out == ""
    state, message = run_row(database_url, run_id)
    assert state == "abandoned" and message is not None
    assert message.startswith("stopped without finishing: no heartbeat since ")
    assert captured.err.splitlines()[-1] == (
        f"error: run {run_id} was recorded abandoned by another process while it worked "
        f"({message}): its outcome was not recorded"
    )
    found = metric_values(metrics_file)
    assert (found["emissions_run_success"], found["info:abandoned"]) == (0.0, 1.0)


def test_a_failed_restatement_is_recorded_in_one_line(
    database_url: str, engine: sa.Engine, capsys: pytest.CaptureFixture[str]
) -> None:
    seed(engine, 600, seed_value=46)
    common = ["--database-url", database_url, "--progress-interval", "0"]
    assert run.main(common) == 0
    with engine.begin() as conn:  # the database refuses every restated result (not transient)
        conn.execute(
            sa.text(
                "ALTER TABLE emissions.emission_results "
                "ADD CONSTRAINT refuse_all CHECK (kg_co2e < 0) NOT VALID"
            )
        )
    capsys.readouterr()
    pin = ["--pin", "desnz_air=2025 flat file", "--activity-types", "air_travel"]
    assert restate.main(["--database-url", database_url, *pin]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    with engine.connect() as conn:
        ((state, message, heartbeat),) = conn.execute(
            sa.text(
                "SELECT status, message, heartbeat_at IS NOT NULL FROM emissions.calculation_runs "
                "WHERE runner = 'restatement'"
            )
        ).all()
        (stored,) = conn.execute(sa.text("SELECT message FROM emissions.restatements")).one()
    assert (state, heartbeat) == ("failed", True)
    assert message == stored
    assert message.startswith(
        'CheckViolation: new row for relation "emission_results" violates check constraint '
        '"refuse_all"'
    )
    assert len(message) <= summary.MESSAGE_LIMIT and "\n" not in message


def test_a_refused_run_is_recorded_failed_and_its_figures_say_so(
    database_url: str, engine: sa.Engine, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    seed(engine, 100, seed_value=47)
    run_id = str(uuid.uuid4())
    metrics_file = tmp_path / "emissions.prom"
    code = run.main(
        [
            *("--database-url", database_url, "--run-id", run_id),
            *("--factor-edition", "desnz_air=1999", "--metrics-file", str(metrics_file)),
        ]
    )
    assert code == 2
    said = capsys.readouterr().err.splitlines()[-1]
    assert said.startswith("error: --factor-edition: desnz_air has no edition '1999'")
    assert run_row(database_url, run_id) == (
        "failed",
        said.removeprefix("error: --factor-edition: "),
    )
    found = metric_values(metrics_file)
    assert (found["emissions_run_success"], found["info:failed"]) == (0.0, 1.0)
    assert "emissions_run_last_success_time_seconds" not in found  # none has succeeded
