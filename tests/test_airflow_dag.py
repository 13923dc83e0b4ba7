"""The Airflow DAG (dags/emissions_dag.py), tested by importing, rendering and running it.

Airflow lives in its own virtualenv (.venv-airflow, made by airflow/setup_airflow.sh when
missing), so every check drives it through a subprocess: ``airflow/inspect_dag.py`` for the
DagBag and the rendered task, ``airflow dags test`` for real runs. The runs use a throwaway
AIRFLOW_HOME, the connection as ``AIRFLOW_CONN_EMISSIONS_DB`` (a role with a password, so that
the log can be searched for it), the project's own interpreter for the pipeline, the
DirectRunner and the real PostgreSQL of the other tests.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg2
import pytest
import sqlalchemy as sa
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
from psycopg2 import sql

from ops import flink_cluster, flink_worker
from ops.flink_cluster import LocalFlinkCluster
from ops.seed import seed
from pipeline.options import add_arguments, validate
from pipeline.store import connections, tables

ROOT = Path(__file__).resolve().parent.parent
DAGS = ROOT / "dags"
SETUP = ROOT / "airflow" / "setup_airflow.sh"
INSPECT = ROOT / "airflow" / "inspect_dag.py"
DAG_ID = "emissions_daily"
# Airflow's own default for [core] dagbag_import_timeout.
IMPORT_BUDGET_S = 30.0
SEEDED = 20_000
SECRET = f"pw-{uuid.uuid4().hex}"
RUN_TIMEOUT_S = 300

pytest_plugins = ["tests.flink_fixtures"]


def _fail_loudly(what: str, proc: subprocess.CompletedProcess[str]) -> None:
    pytest.fail(f"{what} failed with exit code {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")


@pytest.fixture(scope="session")
def airflow_venv() -> Path:
    """The Airflow virtualenv, made from the shipped constraints when missing (never skipped)."""
    proc = subprocess.run(
        ["bash", str(SETUP)], capture_output=True, text=True, timeout=1800, check=False
    )
    if proc.returncode != 0:
        _fail_loudly("airflow/setup_airflow.sh", proc)
    venv = Path(proc.stdout.strip().splitlines()[-1])
    assert (venv / "bin" / "airflow").is_file(), proc.stdout
    return venv


@pytest.fixture(scope="session")
def airflow_env(airflow_venv: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Environment of an isolated Airflow: its own home and metadata database, our DAG folder."""
    home = tmp_path_factory.mktemp("airflow-home")
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("AIRFLOW", "EMISSIONS_", "VIRTUAL_ENV", "PYTHON"))
    }
    env.update(
        AIRFLOW_HOME=str(home),
        AIRFLOW__CORE__DAGS_FOLDER=str(DAGS),
        AIRFLOW__CORE__LOAD_EXAMPLES="False",
        # The pipeline runs with the project's interpreter, where it is installed (-e .).
        AIRFLOW_VAR_EMISSIONS_PYTHON=sys.executable,
        AIRFLOW_BIN=str(airflow_venv / "bin"),
    )
    proc = _airflow(env, "db", "migrate", cwd=home)
    if proc.returncode != 0:
        _fail_loudly("airflow db migrate", proc)
    return env


def _airflow(
    env: dict[str, str], *args: str, cwd: Path, extra_env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(Path(env["AIRFLOW_BIN"]) / "airflow"), *args],
        env={**env, **(extra_env or {})},
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
        check=False,
    )


_REPORTS: dict[tuple[str, ...], dict[str, Any]] = {}


def _inspect(
    env: dict[str, str], conf: dict[str, Any] | None = None, uris: tuple[str, ...] = ()
) -> dict[str, Any]:
    """The inspect_dag.py report for this Airflow home and conf (made once: it takes seconds)."""
    key = (env["AIRFLOW_HOME"], json.dumps(conf or {}, sort_keys=True), *uris)
    if key not in _REPORTS:
        _REPORTS[key] = _run_inspect(env, conf, uris)
    return _REPORTS[key]


def _run_inspect(
    env: dict[str, str], conf: dict[str, Any] | None, uris: tuple[str, ...]
) -> dict[str, Any]:
    proc = subprocess.run(
        [
            str(Path(env["AIRFLOW_BIN"]) / "python"),
            str(INSPECT),
            str(DAGS),
            "--interval-start",
            "2025-03-04",
            "--conf",
            json.dumps(conf or {}),
            *(a for uri in uris for a in ("--connection-uri", uri)),
        ],
        env=env,
        cwd=env["AIRFLOW_HOME"],
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
        check=False,
    )
    if proc.returncode != 0:
        _fail_loudly("airflow/inspect_dag.py", proc)
    report: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return report


# --- the DAG as Airflow parses and renders it -------------------------------------------------


def test_dag_folder_imports_without_errors_within_budget(airflow_env: dict[str, str]) -> None:
    report = _inspect(airflow_env)
    assert report["import_errors"] == {}
    assert report["dag_ids"] == [DAG_ID]
    assert report["import_seconds"] < IMPORT_BUDGET_S


def test_schedule_is_daily_without_catchup_and_retries_with_a_delay(
    airflow_env: dict[str, str],
) -> None:
    report = _inspect(airflow_env)
    # A data interval of one whole day, not Airflow 3's empty interval of "@daily".
    assert report["timetable"] == "CronDataIntervalTimetable"
    assert report["timetable_cron"] == "0 0 * * *"
    assert report["timetable_timezone"] == "UTC"
    assert report["catchup"] is False
    assert report["retries"] == 2
    assert report["retry_delay_seconds"] == 600


def _pipeline_view(command: list[str]) -> tuple[argparse.Namespace, str | None]:
    """The pipeline's own reading of the arguments the task would pass it (as pipeline.run)."""
    parser = argparse.ArgumentParser(add_help=False)
    add_arguments(parser)
    options, beam_args = parser.parse_known_args(command[3:])
    return options, PipelineOptions(beam_args).view_as(StandardOptions).runner


def test_rendered_task_runs_the_module_for_the_data_interval(airflow_env: dict[str, str]) -> None:
    report = _inspect(airflow_env)
    assert report["command"] == [
        sys.executable,
        "-m",
        "pipeline.run",
        "--runner=DirectRunner",
        "--date-from=2025-03-04",
        "--date-to=2025-03-05",
    ]
    # The false flag and the unset partitions are left out, not passed as =False / =None.
    assert not any("False" in a or "None" in a for a in report["command"])
    emissions, runner = _pipeline_view(report["command"])
    config = validate(emissions, "postgresql://u@h/d")
    assert (config.date_from, config.date_to) == ("2025-03-04", "2025-03-05")
    assert config.radiative_forcing is True
    assert runner == "DirectRunner"


def test_rendered_task_with_params_passes_flags_and_runner_options(
    airflow_env: dict[str, str], flink_job_server_jar: Path
) -> None:
    conf = {
        "runner": "FlinkRunner",
        "runner_options": {"flink_master": "localhost:8081", "parallelism": 4},
        "partitions": 4,
        "no_radiative_forcing": True,
    }
    report = _inspect(airflow_env, conf)
    # The options docs/airflow.md gives, plus the job server's that the DAG adds by itself
    # (without them Beam downloads a job server jar from the internet): the project's own.
    assert report["command"] == [
        sys.executable,
        "-m",
        "pipeline.run",
        "--runner=FlinkRunner",
        "--flink_master=localhost:8081",
        f"--flink_version={flink_cluster.FLINK_MINOR}",
        f"--flink_job_server_jar={flink_job_server_jar}",
        "--environment_type=PROCESS",
        "--parallelism=4",
        f"--environment_options=process_command={ROOT / 'flink' / 'worker-boot'}",
        "--sdk_worker_parallelism=1",
        f"--experiments=emissions_code={flink_worker.code_identity()}",
        "--date-from=2025-03-04",
        "--date-to=2025-03-05",
        "--partitions=4",
        "--no-radiative-forcing",
    ]
    emissions, runner = _pipeline_view(report["command"])
    config = validate(emissions, "postgresql://u@h/d")
    assert config.radiative_forcing is False
    assert config.partitions == 4
    assert runner == "FlinkRunner"


def test_connection_becomes_the_database_url_the_pipeline_reads(
    airflow_env: dict[str, str],
) -> None:
    uris = (
        # a password that needs escaping, a unix socket directory
        "postgresql://emissions:p%40ss%2Fw%3Ard@/emissions?host=%2Fvar%2Frun%2Fpostgresql",
        # host and port, an extra that libpq reads
        "postgres://etl:secret@db.example.org:6543/carbon?sslmode=require",
        # the scheme chosen through an extra
        "postgresql://etl@db.example.org/carbon?sqlalchemy_scheme=postgresql%2Bpsycopg2",
    )
    urls = [sa.make_url(u) for u in _inspect(airflow_env, uris=uris)["database_urls"]]
    socket, tcp, scheme = urls
    assert (socket.drivername, socket.username, socket.password) == (
        "postgresql",
        "emissions",
        "p@ss/w:rd",
    )
    assert (socket.host, socket.database, dict(socket.query)) == (
        None,
        "emissions",
        {"host": "/var/run/postgresql"},
    )
    assert (tcp.drivername, tcp.host, tcp.port, tcp.database) == (
        "postgresql",
        "db.example.org",
        6543,
        "carbon",
    )
    assert (tcp.password, dict(tcp.query)) == ("secret", {"sslmode": "require"})
    assert (scheme.drivername, scheme.username, scheme.password, dict(scheme.query)) == (
        "postgresql+psycopg2",
        "etl",
        None,
        {},
    )


# --- the DAG run for real -----------------------------------------------------------------------


def _admin(url: str) -> psycopg2.extensions.connection:
    conn = connections.connect(url)
    conn.autocommit = True
    return conn


def _create_database(server: str, name: str, template: str) -> str:
    conn = _admin(server)
    try:
        with conn.cursor() as cur:
            cur.execute(
                sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
                    sql.Identifier(name), sql.Identifier(template)
                )
            )
    finally:
        conn.close()
    return sa.make_url(server).set(database=name).render_as_string(hide_password=False)


def _snapshot(url: str, table: str, drop: tuple[str, ...]) -> list[tuple[Any, ...]]:
    """Every row of ``table`` without the ``drop`` columns, in a stable order."""
    engine = connections.make_engine(url, poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as conn:
            reflected = sa.Table(table, sa.MetaData(), autoload_with=conn, schema="emissions")
            columns = [c for c in reflected.columns if c.name not in drop]
            query = sa.select(*columns).order_by(*columns)
            return [tuple(r) for r in conn.execute(query)]
    finally:
        engine.dispose()


def _outcomes(url: str, drop: tuple[str, ...] = ("id", "run_id", "created_at")) -> dict[str, Any]:
    return {
        "results": _snapshot(url, tables.RESULTS_TABLE, drop),
        "errors": _snapshot(url, tables.ERRORS_TABLE, drop),
    }


def _activities_on(url: str, day: datetime.date | None) -> set[tuple[str, str]]:
    """(type, id) of the activities dated ``day``; of all activities when ``day`` is None."""
    engine = connections.make_engine(url, poolclass=sa.pool.NullPool)
    found: set[tuple[str, str]] = set()
    try:
        with engine.connect() as conn:
            for activity_type, table in tables.ACTIVITY_TABLES.items():
                query = sa.text(
                    f"SELECT id::text FROM {tables.qualified_text(table)} WHERE (:d)::date IS NULL "
                    "OR activity_date = :d"
                )
                found |= {(activity_type, i) for (i,) in conn.execute(query, {"d": day})}
    finally:
        engine.dispose()
    return found


def _busiest_day(url: str) -> datetime.date:
    engine = connections.make_engine(url, poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as conn:
            union = " UNION ALL ".join(
                f"SELECT activity_date FROM {tables.qualified_text(t)}"
                for t in tables.ACTIVITY_TABLES.values()
            )
            row = conn.execute(
                sa.text(
                    f"SELECT activity_date FROM ({union}) a WHERE activity_date IS NOT NULL "
                    "GROUP BY 1 ORDER BY count(*) DESC, 1 LIMIT 1"
                )
            ).one()
            day: datetime.date = row[0]
            return day
    finally:
        engine.dispose()


def _grant_role(url: str, role: str, password: str) -> None:
    """A login role with a password and the rights of the user that owns the schema.

    The pipeline needs an owner's rights (it replaces its views on every run), so the role joins
    the owning user rather than getting table grants.
    """
    conn = _admin(url)
    try:
        with conn.cursor() as cur:
            r = sql.Identifier(role)
            cur.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD %s").format(r), (password,))
            cur.execute("SELECT current_user")
            (owner,) = cur.fetchone() or ("",)
            cur.execute(sql.SQL("GRANT {} TO {}").format(sql.Identifier(owner), r))
    finally:
        conn.close()


def _drop(server: str, databases: list[str], role: str) -> None:
    conn = _admin(server)
    try:
        with conn.cursor() as cur:
            for name in databases:
                cur.execute(
                    sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
                )
            cur.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))
    finally:
        conn.close()


@dataclass
class Runs:
    day: datetime.date
    interval_args: tuple[str, str]
    first: subprocess.CompletedProcess[str]
    rerun: subprocess.CompletedProcess[str]
    failed: subprocess.CompletedProcess[str]
    direct: subprocess.CompletedProcess[str]
    missing_database: str
    role: str
    after_first: dict[str, Any]
    after_first_full: dict[str, Any]
    after_rerun_full: dict[str, Any]
    direct_outcomes: dict[str, Any]
    day_activities: set[tuple[str, str]]
    airflow_metadata: bytes


@pytest.fixture(scope="module")
def runs(
    airflow_env: dict[str, str],
    pg_server_url: str,
    database_template: Callable[[tables.IdType], str],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Runs]:
    """Seed a database and copy it; DAG run, rerun and failing run on it, direct run on the copy."""
    suffix = uuid.uuid4().hex[:10]
    via_airflow, direct, role = (
        f"emissions_af_{suffix}",
        f"emissions_direct_{suffix}",
        f"af_{suffix}",
    )
    try:
        url = _create_database(pg_server_url, via_airflow, database_template("bigint"))
        engine = connections.make_engine(url, poolclass=sa.pool.NullPool)
        try:
            seed(engine, SEEDED)
        finally:
            engine.dispose()
        direct_url = _create_database(pg_server_url, direct, via_airflow)
        _grant_role(url, role, SECRET)
        role_url = sa.make_url(url).set(username=role, password=SECRET).render_as_string(False)
        day = _busiest_day(url)
        next_day = day + datetime.timedelta(days=1)
        cwd = tmp_path_factory.mktemp("airflow-cwd")  # not the repository: no accidental imports
        # No retries: a failing run would otherwise wait out the retry delay before failing.
        connection = {"AIRFLOW_CONN_EMISSIONS_DB": role_url, "AIRFLOW__EMISSIONS__RETRIES": "0"}
        # A manual run's data interval is the day that ends at its logical date.
        first = _airflow(
            airflow_env, "dags", "test", DAG_ID, next_day.isoformat(), cwd=cwd, extra_env=connection
        )
        after_first = _outcomes(url)
        after_first_full = _outcomes(url, drop=())
        rerun = _airflow(
            airflow_env, "dags", "test", DAG_ID, next_day.isoformat(), cwd=cwd, extra_env=connection
        )
        after_rerun_full = _outcomes(url, drop=())
        missing_db = sa.make_url(role_url).set(database=f"missing_{suffix}")
        failed = _airflow(
            airflow_env,
            "dags",
            "test",
            DAG_ID,
            (next_day + datetime.timedelta(days=1)).isoformat(),
            cwd=cwd,
            extra_env={
                **connection,
                "AIRFLOW_CONN_EMISSIONS_DB": missing_db.render_as_string(False),
            },
        )
        direct_run = subprocess.run(
            [
                sys.executable,
                "-m",
                "pipeline.run",
                "--date-from",
                day.isoformat(),
                "--date-to",
                next_day.isoformat(),
            ],
            env={**os.environ, "EMISSIONS_DATABASE_URL": direct_url},
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=RUN_TIMEOUT_S,
            check=False,
        )
        metadata = Path(airflow_env["AIRFLOW_HOME"]) / "airflow.db"
        yield Runs(
            day=day,
            interval_args=(f"--date-from={day.isoformat()}", f"--date-to={next_day.isoformat()}"),
            first=first,
            rerun=rerun,
            failed=failed,
            direct=direct_run,
            missing_database=f"missing_{suffix}",
            role=role,
            after_first=after_first,
            after_first_full=after_first_full,
            after_rerun_full=after_rerun_full,
            direct_outcomes=_outcomes(direct_url),
            day_activities=_activities_on(url, day),
            airflow_metadata=metadata.read_bytes() if metadata.exists() else b"",
        )
    finally:
        _drop(pg_server_url, [via_airflow, direct], role)


def _log(proc: subprocess.CompletedProcess[str]) -> str:
    return proc.stdout + proc.stderr


def test_dag_run_calculates_the_data_interval(runs: Runs) -> None:
    assert runs.first.returncode == 0, _log(runs.first)
    log = _log(runs.first)
    assert "Running command: " in log
    command = next(line for line in log.splitlines() if "Running command: " in line)
    assert "-m pipeline.run --runner=DirectRunner" in command
    for arg in runs.interval_args:
        assert arg in command
    # Every activity of that day, and only those, has a result or a dead letter.
    done = {(r[0], str(r[1])) for r in runs.after_first["results"]}
    failed = {(e[0], str(e[1])) for e in runs.after_first["errors"]}
    assert runs.day_activities, "the busiest seeded day has activities"
    assert done, "the run wrote results"
    assert done | failed == runs.day_activities


def test_dag_run_matches_a_direct_run(runs: Runs) -> None:
    assert runs.direct.returncode == 0, _log(runs.direct)
    assert runs.after_first == runs.direct_outcomes


def test_rerunning_the_interval_writes_nothing_new(runs: Runs) -> None:
    assert runs.rerun.returncode == 0, _log(runs.rerun)
    # Not even the run ids or timestamps of the rows change.
    assert runs.after_rerun_full == runs.after_first_full


def test_failing_pipeline_fails_the_task(runs: Runs) -> None:
    log = _log(runs.failed)
    assert runs.failed.returncode != 0, log
    assert "Apache Beam process failed with return code 1" in log
    # The pipeline's own error reaches the task log (and the run is marked failed).
    assert f'database "{runs.missing_database}" does not exist' in log
    assert "state=failed" in log


def test_password_stays_out_of_the_logs_and_the_metadata(runs: Runs) -> None:
    # The connection's user and password did reach the pipeline, which names the user only.
    assert f"{runs.role}:***@" in _log(runs.first)
    for proc in (runs.first, runs.rerun, runs.failed):
        assert SECRET not in _log(proc)
    assert runs.airflow_metadata, "the runs were recorded in Airflow's metadata database"
    assert SECRET.encode() not in runs.airflow_metadata


# --- on Flink, with the options docs/airflow.md gives ----------------------------------------


def test_dag_runs_on_flink_with_the_documented_options(
    airflow_env: dict[str, str],
    local_flink: LocalFlinkCluster,
    flink_home: Path,
    pg_server_url: str,
    database_template: Callable[[tables.IdType], str],
    tmp_path: Path,
) -> None:
    """docs/airflow.md's Flink recipe as written: ``{"runner": "FlinkRunner"}`` is all the
    trigger gives, the DAG finds the local cluster from its state file (here the session's
    cluster, saved where ``ops.flink_cluster start`` saves it) and adds the job server's
    options; the run computes the interval on the cluster exactly as the DirectRunner does on
    a copy of the data, and no job server outlives it."""
    suffix = uuid.uuid4().hex[:10]
    on_flink, direct = f"emissions_afflink_{suffix}", f"emissions_afdirect_{suffix}"
    try:
        url = _create_database(pg_server_url, on_flink, database_template("bigint"))
        engine = connections.make_engine(url, poolclass=sa.pool.NullPool)
        try:
            seed(engine, 5000, seed_value=3)
        finally:
            engine.dispose()
        direct_url = _create_database(pg_server_url, direct, on_flink)
        day = _busiest_day(url)
        next_day = day + datetime.timedelta(days=1)
        conf = {"runner": "FlinkRunner"}
        doc = (ROOT / "docs" / "airflow.md").read_text()
        assert f"--conf '{json.dumps(conf)}'" in doc
        assert "AIRFLOW__EMISSIONS__RETRIES=0 .venv-airflow/bin/airflow dags test" in doc
        cache = tmp_path / "flink-cache"
        (cache / "cluster").mkdir(parents=True)
        (cache / flink_home.name).symlink_to(flink_home)
        jar = flink_cluster.job_server_jar_path()
        (cache / jar.name).symlink_to(jar)
        local_flink.save(cache / "cluster" / "cluster.json")
        before = int((local_flink.overview() or {}).get("jobs-finished", 0))  # type: ignore[call-overload]
        proc = _airflow(
            airflow_env,
            "dags",
            "test",
            DAG_ID,
            next_day.isoformat(),
            "--conf",
            json.dumps(conf),
            cwd=tmp_path,
            extra_env={
                "AIRFLOW_CONN_EMISSIONS_DB": url,
                "AIRFLOW__EMISSIONS__RETRIES": "0",
                flink_cluster.CACHE_ENV: str(cache),
            },
        )
        assert proc.returncode == 0, _log(proc)[-5000:]
        command = next(line for line in _log(proc).splitlines() if "Running command: " in line)
        assert "--runner=FlinkRunner" in command
        assert f"--flink_master={local_flink.master}" in command
        assert f"--flink_job_server_jar={cache / jar.name}" in command
        assert "--environment_type=PROCESS" in command
        overview = local_flink.overview() or {}
        assert int(overview.get("jobs-finished", 0)) == before + 1, overview  # type: ignore[call-overload]
        assert flink_cluster.job_servers_of(local_flink.master) == []

        direct_run = subprocess.run(
            [sys.executable, "-m", "pipeline.run", f"--date-from={day}", f"--date-to={next_day}"],
            env={**os.environ, "EMISSIONS_DATABASE_URL": direct_url},
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=RUN_TIMEOUT_S,
            check=False,
        )
        assert direct_run.returncode == 0, _log(direct_run)
        outcomes = _outcomes(url)
        assert outcomes["results"], "the Flink run wrote results"
        assert outcomes == _outcomes(direct_url)
    finally:
        conn = _admin(pg_server_url)
        try:
            with conn.cursor() as cur:
                for name in (on_flink, direct):
                    cur.execute(
                        sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                            sql.Identifier(name)
                        )
                    )
        finally:
            conn.close()
