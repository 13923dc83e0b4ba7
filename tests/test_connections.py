"""Connections the PostgreSQL way, on a TLS-only, scram-only server (``tests.tls_server``).

- With no URL, libpq's own conventions decide: its variables, a pgpass file, a service file.
- A refusal that waiting cannot fix (a wrong password, a certificate from another CA, a
  pg_hba.conf rejection) fails at once, with libpq's message and what to check, and never shows
  the password; only transient failures are retried.
- The embedded server is used only when no libpq variable names a server (or when asked for),
  and none of the ``PG*`` variables reaches it.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import quote, urlencode

import psycopg2.sql
import pytest

from tests.tls_server import generate_ca

if TYPE_CHECKING:
    from tests.tls_server import TlsServer

ROOT = Path(__file__).resolve().parent.parent
#: Long enough that a retried failure would show: 8 tries wait about 35 s.
PATIENT = ["--retry-attempts", "8", "--retry-base-delay", "0.5"]


@dataclass(frozen=True)
class Target:
    server: TlsServer
    database: str
    role: str
    password: str
    workdir: Path

    def url(
        self,
        password: str | None = None,
        sslmode: str = "verify-full",
        sslrootcert: str | None = None,
    ) -> str:
        query = urlencode({"sslmode": sslmode, "sslrootcert": sslrootcert or self.server.ca_file})
        credentials = f"{quote(self.role)}:{quote(password or self.password, safe='')}"
        where = f"{self.server.host}:{self.server.port}/{self.database}"
        return f"postgresql://{credentials}@{where}?{query}"


@pytest.fixture(scope="module")
def target(tls_server: TlsServer, tmp_path_factory: pytest.TempPathFactory) -> Target:
    """A database with a schema the pipeline's role owns, and that role's password files."""
    suffix = uuid.uuid4().hex[:8]
    database, role = f"conn_{suffix}", f"pipeline_{suffix}"
    password = "pw-" + secrets.token_urlsafe(12)
    tls_server.create_database(database, tls_server.superuser)
    tls_server.create_role(role, password)
    conn = tls_server.connect(database)
    try:
        with conn.cursor() as cur:
            cur.execute(
                psycopg2.sql.SQL("CREATE SCHEMA emissions AUTHORIZATION {}").format(
                    psycopg2.sql.Identifier(role)
                )
            )
    finally:
        conn.close()
    workdir = tmp_path_factory.mktemp("connections")
    tls_server.write_client_files(workdir, "pipeline", database, role, password)
    return Target(tls_server, database, role, password, workdir)


def command(args: list[str], env: dict[str, str]) -> tuple[subprocess.CompletedProcess[str], float]:
    """``python -m …`` with only ``env`` besides the basics (no PG* or EMISSIONS_* of the test
    process), and how long it took."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("PG", "EMISSIONS_"))}
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", *args],
        cwd=ROOT,
        env={**clean, "PYTHONPATH": str(ROOT), **env},
        capture_output=True,
        text=True,
        timeout=300,
    )
    return done, time.monotonic() - started


def test_libpq_variables_and_a_pgpass_file_need_no_url(target: Target) -> None:
    env = {
        "PGHOST": target.server.host,
        "PGPORT": str(target.server.port),
        "PGUSER": target.role,
        "PGDATABASE": target.database,
        "PGSSLMODE": "verify-full",
        "PGSSLROOTCERT": str(target.server.ca_file),
        "PGPASSFILE": str(target.workdir / "pgpass"),
    }
    init, _ = command(["ops.admin", "init"], env)
    assert init.returncode == 0, init.stderr
    outcome = json.loads(init.stdout)
    where = f"postgresql://{target.role}@{target.server.host}:{target.server.port}/"
    assert outcome["database"] == where + target.database
    assert outcome["schema"] == "emissions" and outcome["factor_rows_added"] > 4000
    run, _ = command(["pipeline.run", "--progress-interval", "0"], env)
    assert run.returncode == 0, run.stderr
    summary = json.loads(run.stdout)
    assert summary["status"] == "succeeded" and summary["total_activities"] == 0
    assert target.password not in init.stdout + init.stderr + run.stdout + run.stderr


def test_a_service_file_needs_no_url(target: Target) -> None:
    env = {
        "PGSERVICEFILE": str(target.workdir / "pg_service.conf"),
        "PGSERVICE": "pipeline",
        "PGPASSFILE": str(target.workdir / "pgpass"),
    }
    done, _ = command(["ops.admin", "init"], env)
    assert done.returncode == 0, done.stderr
    shown, _ = command(["ops.admin", "revision"], env)
    assert shown.returncode == 0, shown.stderr
    revision = json.loads(shown.stdout)
    assert revision["up_to_date"] and revision["revision"] == revision["newest"]
    assert revision["database"] == "postgresql:// (service pipeline)"


def test_a_wrong_password_fails_at_once_with_a_hint(target: Target) -> None:
    wrong = target.password + "-wrong"
    done, took = command(
        ["pipeline.run", *PATIENT], {"EMISSIONS_DATABASE_URL": target.url(password=wrong)}
    )
    assert done.returncode == 1
    assert took < 15, f"retried a refusal for {took:.0f} s"
    assert "password authentication failed" in done.stderr
    assert "check the password" in done.stderr
    assert wrong not in done.stderr + done.stdout
    assert target.password not in done.stderr + done.stdout


def test_a_certificate_from_another_ca_fails_at_once_with_a_hint(
    target: Target, tmp_path: Path
) -> None:
    _, other_ca = generate_ca(tmp_path / "other-ca", "another CA")
    url = target.url(sslrootcert=str(other_ca))
    done, took = command(["ops.admin", "init"], {"EMISSIONS_DATABASE_URL": url})
    assert done.returncode == 1
    assert took < 15, f"retried a refusal for {took:.0f} s"
    assert "certificate verify failed" in done.stderr
    assert "sslrootcert" in done.stderr  # the hint
    assert target.password not in done.stderr + done.stdout
    run, took = command(["pipeline.run", *PATIENT], {"EMISSIONS_DATABASE_URL": url})
    assert run.returncode == 1 and took < 15
    assert "certificate verify failed" in run.stderr


def test_a_pg_hba_rejection_fails_at_once_with_a_hint(target: Target) -> None:
    url = target.url(sslmode="disable")
    done, took = command(["pipeline.run", *PATIENT], {"EMISSIONS_DATABASE_URL": url})
    assert done.returncode == 1
    assert took < 15, f"retried a refusal for {took:.0f} s"
    assert "no pg_hba.conf entry" in done.stderr
    assert "pg_hba.conf does not let this user in" in done.stderr
    assert target.password not in done.stderr + done.stdout


@pytest.mark.db
def test_the_embedded_server_is_used_without_libpq_variables_and_gets_none_of_them() -> None:
    # PGOPTIONS would make every statement time out at once, were it to reach the server.
    env = {
        "EMISSIONS_PGDATA": str(ROOT / ".pgdata-test"),
        "PGOPTIONS": "-c statement_timeout=1",
        "PGAPPNAME": "not-the-pipeline",
    }
    done, _ = command(["ops.admin", "init"], env)
    assert done.returncode == 0, done.stderr
    assert "the embedded PostgreSQL ignores PGAPPNAME, PGOPTIONS" in done.stderr
    assert json.loads(done.stdout)["database"].endswith(
        "/emissions?host=%2F" + str(ROOT / ".pgdata-test").strip("/").replace("/", "%2F")
    )
    # Asked for by name, it wins over libpq's variables (which point nowhere here).
    asked = {**env, "EMISSIONS_DATABASE_URL": "embedded", "PGHOST": "127.0.0.1", "PGPORT": "1"}
    done, _ = command(["ops.admin", "revision"], asked)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["up_to_date"]
