"""docs/flink.md's systemd unit for a TaskManager, run as written (issue 26): its ``ExecStart``
with its ``Environment=`` (paths moved from /opt to this checkout and the fetched Flink; the
``User=`` line aside, since the tests run as one user), joining a JobManager that has no
TaskManager of its own. A job then runs on it against Debian's PostgreSQL 15, TLS and scram
only, and its Python workers log in with the password file the unit names: the job carries no
password, and the TaskManager has no other way to it (no ``PGPASSWORD``, no ``~/.pgpass``).
"""

from __future__ import annotations

import os
import re
import secrets
import shlex
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import sqlalchemy as sa

from ops import flink_cluster
from ops.flink_cluster import LocalFlinkCluster
from ops.seed import seed
from pipeline import run
from pipeline.store import connections
from pipeline.store.install import initialise
from tests.support import scalar, sql_reference, wait_for
from tests.test_flink import table_rows

if TYPE_CHECKING:
    from tests.tls_server import TlsServer

pytest_plugins = ["tests.flink_fixtures"]

ROOT = Path(__file__).resolve().parent.parent
COUNT = 300


def documented_unit() -> str:
    """The ``[Service]`` unit of docs/flink.md's "Your own Flink cluster"."""
    doc = (ROOT / "docs" / "flink.md").read_text()
    found = re.search(
        r"```ini\n(# /etc/systemd/system/flink-taskmanager\.service\n.*?)```", doc, re.S
    )
    assert found, "docs/flink.md has no systemd unit for the TaskManager"
    return found[1]


def service_lines(unit: str) -> tuple[dict[str, str], list[str]]:
    """The unit's ``Environment=`` variables and its ``ExecStart`` command."""
    env: dict[str, str] = {}
    command: list[str] = []
    for line in unit.splitlines():
        key, _, value = line.partition("=")
        if key == "Environment":
            name, _, setting = value.partition("=")
            env[name] = setting
        elif key == "ExecStart":
            command = shlex.split(value)
    assert env and command
    return env, command


@pytest.fixture
def jobmanager(
    flink_home: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LocalFlinkCluster]:
    """A JobManager alone (its configuration is what the unit's TaskManager reads)."""
    cluster = LocalFlinkCluster.create(
        flink_home, tmp_path_factory.mktemp("flink-unit"), slots=1, taskmanagers=0
    )
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()


def scram_database(tls_server: TlsServer, count: int) -> tuple[str, str]:
    """A database of its own role (scram password) with the schema and ``count`` seeded
    activities: (URL with the password, the password)."""
    suffix = uuid.uuid4().hex[:8]
    role, dbname = f"flink_{suffix}", f"flink_{suffix}"
    password = "pw-" + secrets.token_urlsafe(12)
    tls_server.create_role(role, password)
    tls_server.create_database(dbname, role)
    url = tls_server.url(role, password, dbname)
    engine = connections.make_engine(url, poolclass=sa.pool.NullPool)
    try:
        initialise(engine, "bigint")
        seed(engine, count, seed_value=11)
    finally:
        engine.dispose()
    return url, password


def start_unit(
    unit: str, cluster: LocalFlinkCluster, pgpass: Path, home: Path, log: Path
) -> subprocess.Popen[bytes]:
    """The unit's ``ExecStart`` with its ``Environment=``, as systemd would run it: only the
    variables a service gets (no PG* of this process), the paths moved from /opt."""
    env, command = service_lines(unit)
    moved = {"/opt/flink": str(cluster.home), "/opt/emissions": str(ROOT)}

    def here(value: str) -> str:
        for documented, local in moved.items():
            value = value.replace(documented, local)
        return value

    env = {name: here(value) for name, value in env.items()}
    assert env.pop("PGPASSFILE") == "/etc/emissions/pgpass"
    service_env = {
        "PATH": os.environ["PATH"],
        "HOME": str(home),
        "PGPASSFILE": str(pgpass),
        **env,
        # What the unit's "configured with the JobManager's address" stands for here.
        "FLINK_CONF_DIR": str(cluster.workdir / "conf"),
        "FLINK_LOG_DIR": str(cluster.workdir / "log"),
    }
    if "JAVA_HOME" in os.environ:
        service_env["JAVA_HOME"] = os.environ["JAVA_HOME"]
    with log.open("wb") as out:
        return subprocess.Popen(
            [here(part) for part in command], env=service_env, stdout=out, stderr=out
        )


def slots(cluster: LocalFlinkCluster) -> int:
    return int(str((cluster.overview() or {}).get("slots-total", 0)))


def test_the_documented_taskmanager_unit_runs_a_job_whose_workers_read_the_password_file(
    tls_server: TlsServer,
    jobmanager: LocalFlinkCluster,
    flink_job_server_jar: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    unit = documented_unit()
    url, password = scram_database(tls_server, COUNT)
    pgpass = tmp_path / "pgpass"
    pgpass.write_text(f"{tls_server.host}:{tls_server.port}:*:*:{password}\n")
    pgpass.chmod(0o600)
    (tmp_path / "home").mkdir()
    taskmanager = start_unit(unit, jobmanager, pgpass, tmp_path / "home", tmp_path / "tm.log")
    try:
        wait_for(
            lambda: taskmanager.poll() is None and slots(jobmanager) == 1,
            timeout=120,
            what="the unit's TaskManager to offer its slot",
        )
        args = flink_cluster.beam_args(jobmanager.master, flink_job_server_jar, parallelism=1)
        code = run.main(["--database-url", url, "--progress-interval", "0", *args])
        out = capsys.readouterr()
        assert code == 0, out.err[-3000:]
    finally:
        taskmanager.terminate()
        taskmanager.wait(timeout=60)
    assert password not in (tmp_path / "tm.log").read_text(errors="replace")
    reference = sql_reference(url)
    assert len(reference) > COUNT * 0.9
    results = {
        (r["activity_type"], str(r["activity_id"])): r["kg_co2e"]
        for r in table_rows(url, "emission_results")
    }
    assert set(results) == set(reference)
    for key, kg in reference.items():
        assert results[key] == pytest.approx(kg, rel=1e-12, abs=1e-12), key
    assert (
        scalar(
            url, "SELECT status FROM emissions.calculation_runs ORDER BY started_at DESC LIMIT 1"
        )
        == "succeeded"
    )
