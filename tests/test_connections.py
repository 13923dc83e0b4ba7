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
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import quote, urlencode

import psycopg2.sql
import pytest

from ops import admin, status
from pipeline import follow, run
from pipeline.store import connections, embedded
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


# --- Set-up mistakes, each said in one line with what to do (issue 23, item 6) ---------------

UNREACHABLE = "postgresql://nobody@127.0.0.1:1/none"


def _outcome(main: Callable[[list[str]], int], argv: list[str]) -> int:
    try:
        return main(argv)
    except SystemExit as e:
        return int(e.code or 0)


def _without_database_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("PG") or name in ("EMISSIONS_DATABASE_URL", "EMISSIONS_SOURCES"):
            monkeypatch.delenv(name)


@pytest.mark.parametrize("password", ["s3cr@t", "s3cr@t:x", "a:b@c"])
def test_a_password_with_an_unencoded_at_sign_or_colon_says_to_encode_it(
    password: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _without_database_settings(monkeypatch)
    monkeypatch.setenv("EMISSIONS_DATABASE_URL", f"postgresql://carbon:{password}@db.example/c")
    said = (
        "error: the database URL holds an @ or : in its user or password that is not "
        "percent-encoded: percent-encode the password (@ is %40, : is %3A)"
    )
    for main, argv in ((admin.main, ["revision"]), (run.main, ["--progress-interval", "0"])):
        assert _outcome(main, argv) == 2
        captured = capsys.readouterr()
        assert (captured.out, captured.err.splitlines()) == ("", [said])
    # Encoded, it is a URL like any other (here, of a server that is not there); so is a user
    # name with an @ that parses as meant (Azure's user@server).
    for url in (
        f"postgresql://carbon:{quote(password, safe='')}@127.0.0.1:1/c",
        "postgresql://carbon@server:pw@127.0.0.1:1/c",
    ):
        monkeypatch.setenv("EMISSIONS_DATABASE_URL", url)
        assert _outcome(admin.main, ["revision"]) == 1
        assert "Connection refused" in capsys.readouterr().err


def test_an_unknown_host_is_said_to_be_the_host_name(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _without_database_settings(monkeypatch)
    monkeypatch.setenv("EMISSIONS_DATABASE_URL", "postgresql://carbon@no-such-host.invalid/c")
    assert _outcome(admin.main, ["revision"]) == 1
    err = capsys.readouterr().err
    assert "could not translate host name" in err
    assert err.rstrip().endswith(
        "(check the host name, in the URL or PGHOST: the DNS does not know it)"
    ), err
    assert "PGSERVICE" not in err


def test_a_service_file_without_a_service_is_refused_not_replaced_by_the_embedded_server(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    _without_database_settings(monkeypatch)
    services = tmp_path / "pg_service.conf"
    services.write_text("[carbon]\nhost=db.example\ndbname=carbon\n\n[reporting]\nhost=r\n")
    monkeypatch.setenv("PGSERVICEFILE", str(services))
    monkeypatch.setenv("EMISSIONS_PGDATA", str(tmp_path / "pgdata"))
    said = (
        "error: PGSERVICEFILE is set but PGSERVICE is not: set PGSERVICE to the service to "
        "connect to (the file defines carbon, reporting), or unset PGSERVICEFILE to use the "
        "embedded server"
    )
    for main, argv in (
        (admin.main, ["init"]),
        (run.main, ["--progress-interval", "0"]),
        (status.main, []),
    ):
        assert _outcome(main, argv) == 2
        captured = capsys.readouterr()
        assert (captured.out, captured.err.splitlines()) == ("", [said])
    assert not (tmp_path / "pgdata").exists()  # no embedded server was started


def test_the_embedded_servers_data_do_not_depend_on_the_working_directory(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("EMISSIONS_PGDATA", raising=False)
    monkeypatch.chdir(tmp_path)
    assert embedded.data_dir() == ROOT / ".pgdata"  # the checkout's, as ./run_local.sh uses
    # An installed package (no checkout around it): a per-user data folder.
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    installed = tmp_path / "site-packages"
    assert embedded.data_dir(installed) == tmp_path / "xdg" / "emissions-pipeline" / "pgdata"
    monkeypatch.delenv("XDG_DATA_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert embedded.data_dir(installed) == (
        tmp_path / "home" / ".local" / "share" / "emissions-pipeline" / "pgdata"
    )
    # Named, it is where it is said to be (a relative name: from where it was said).
    monkeypatch.setenv("EMISSIONS_PGDATA", "data")
    assert embedded.data_dir() == tmp_path / "data"


def test_max_connections_advises_what_can_be_done(
    database_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    base = ["--database-url", database_url, "--progress-interval", "0"]
    assert run.main([*base, "--max-connections", "3"]) == 2
    assert capsys.readouterr().err.splitlines() == [
        "error: --max-connections 3 is fewer than any run needs: 6 at once (2 for the run "
        "itself, 4 for one worker); allow at least 6"
    ]
    assert run.main([*base, "--max-connections", "7"]) == 2
    assert capsys.readouterr().err.splitlines() == [
        "error: this run could hold up to 10 database connections at once (2 workers), more "
        "than --max-connections 7: run 1 worker (--direct_num_workers=1), or allow 10"
    ]
    # Either advice, followed, runs.
    assert run.main([*base, "--max-connections", "7", "--direct_num_workers=1"]) == 0
    assert json.loads(capsys.readouterr().out)["status"] == "succeeded"
    assert run.main([*base, "--max-connections", "6", "--direct_num_workers=1"]) == 0


def test_a_run_before_init_says_to_run_init_and_creates_nothing(
    empty_database: str, capsys: pytest.CaptureFixture[str]
) -> None:
    said = (
        "error: the schema {} holds no pipeline yet: run python -m ops.admin init{} first "
        "(with --sources FILE to compute your own tables)"
    )
    base = ["--database-url", empty_database]
    for main, argv, schema in (
        (run.main, ["--progress-interval", "0"], "emissions"),
        (follow.main, ["--stop-after", "1"], "emissions"),
        (run.main, ["--schema", "emisions"], "emisions"),  # a mistyped schema: not made
    ):
        assert main([*base, *argv]) == 2
        named = "" if schema == "emissions" else f" --schema {schema}"
        captured = capsys.readouterr()
        assert (captured.out, captured.err.splitlines()) == ("", [said.format(schema, named)])
    conn = connections.connect(empty_database)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT count(*) FROM pg_namespace WHERE nspname LIKE 'emis%'")
            assert cur.fetchone() == (0,)
    finally:
        conn.close()
    assert admin.main(["init", *base]) == 0
    assert run.main([*base, "--progress-interval", "0"]) == 0
    capsys.readouterr()
