"""A production-style PostgreSQL for tests: TLS only, SCRAM only, started by the tests themselves.

The embedded test server is reached over a unix socket without a password, so it never
exercises what a real deployment needs: a TCP connection that must be encrypted, a certificate
that must verify against a CA, and passwords that are stored and checked as SCRAM-SHA-256.
This module starts Debian's PostgreSQL (installed on demand by ``scripts/ensure_postgresql.sh``)
on a free port of 127.0.0.1 with a throwaway CA, ``ssl = on`` and a pg_hba.conf that has a single
``hostssl ... scram-sha-256`` line: no unix socket, no plain TCP, no trust. Even the superuser
logs in with a password (given to initdb through a 0600 file, never on a command line) over TLS.

Use it from a test module with ``pytest_plugins = ["tests.tls_server"]`` (or by importing the
``tls_server`` fixture), then ``tls_server.create_role(...)``, ``tls_server.create_database(...)``
and ``tls_server.url(...)``.
"""

from __future__ import annotations

import os
import pwd
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from urllib.parse import quote, urlencode

import psycopg2
import pytest
from psycopg2 import sql

ROOT = Path(__file__).resolve().parent.parent
LOOPBACK = "127.0.0.1"
SUPERUSER = "postgres"
#: The OS user that runs the server when the tests run as root: PostgreSQL refuses to run as root.
SERVER_OS_USER = "postgres"
#: Tries at starting the server: the free port found may be taken by someone else before it binds.
START_ATTEMPTS = 3


def ensure_postgresql() -> Path:
    """The server's bin directory; ``scripts/ensure_postgresql.sh`` installs it when missing."""
    done = subprocess.run(
        [str(ROOT / "scripts" / "ensure_postgresql.sh")],
        check=True,
        capture_output=True,
        text=True,
        timeout=900,
    )
    return Path(done.stdout.strip().splitlines()[-1])


def free_port() -> int:
    """A TCP port of 127.0.0.1 that nothing listens on now (the kernel picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        port: int = sock.getsockname()[1]
        return port


def _openssl(*args: str) -> None:
    """Runs the openssl command line; its chatter is only shown when it fails."""
    subprocess.run(["openssl", *args], check=True, capture_output=True, text=True, timeout=120)


def _new_key_args(key: Path) -> list[str]:
    """``openssl req`` arguments for a fresh unencrypted P-256 key (quick to make; libpq and the
    server both take it)."""
    curve = "ec_paramgen_curve:prime256v1"
    return ["-newkey", "ec", "-pkeyopt", curve, "-nodes", "-keyout", str(key)]


def generate_ca(directory: Path, name: str = "throwaway test CA") -> tuple[Path, Path]:
    """A new self-signed CA in ``directory``: (key, certificate), the key mode 0600.

    Valid for two days only: it exists for one test session and is worth nothing after it."""
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    key, cert = directory / "ca.key", directory / "ca.crt"
    _openssl(
        "req", "-x509", "-new", *_new_key_args(key), "-out", str(cert), "-days", "2",
        "-subj", f"/CN={name}",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
    )  # fmt: skip
    key.chmod(0o600)
    return key, cert


def generate_server_cert(directory: Path, ca_key: Path, ca_cert: Path) -> tuple[Path, Path]:
    """A server key and certificate in ``directory``, signed by the CA, for ``localhost`` and
    127.0.0.1 (so that ``sslmode=verify-full`` passes with either host name): (key, cert)."""
    key, csr, cert = directory / "server.key", directory / "server.csr", directory / "server.crt"
    extensions = directory / "server.ext"
    extensions.write_text(
        "basicConstraints = critical, CA:FALSE\n"
        "keyUsage = critical, digitalSignature, keyEncipherment\n"
        "extendedKeyUsage = serverAuth\n"
        f"subjectAltName = DNS:localhost, IP:{LOOPBACK}\n",
        encoding="utf-8",
    )
    _openssl("req", "-new", *_new_key_args(key), "-out", str(csr), "-subj", "/CN=localhost")
    key.chmod(0o600)
    _openssl(
        "x509", "-req", "-in", str(csr), "-CA", str(ca_cert), "-CAkey", str(ca_key),
        "-set_serial", f"0x{secrets.token_hex(16)}", "-days", "2", "-sha256",
        "-extfile", str(extensions), "-out", str(cert),
    )  # fmt: skip
    csr.unlink()
    extensions.unlink()
    return key, cert


def _conf_string(value: str | Path) -> str:
    """A postgresql.conf string literal."""
    return "'" + str(value).replace("'", "''") + "'"


class TlsServer:
    """A running TLS-only PostgreSQL: where it listens, its CA, and its superuser's password.

    Clients connect to ``host`` (127.0.0.1) on ``port`` with ``sslmode=verify-full`` and
    ``sslrootcert=ca_file``; ``url`` builds such a URL. ``stop`` shuts it down and deletes its
    data."""

    def __init__(
        self,
        *,
        bin_dir: Path,
        server_dir: Path,
        port: int,
        ca_file: Path,
        superuser_password: str,
        run_as: Sequence[str],
    ) -> None:
        self.bin_dir = bin_dir
        #: Holds the data directory, the server's key and certificate, and its log.
        self.server_dir = server_dir
        self.data_dir = server_dir / "data"
        self.log_file = server_dir / "server.log"
        self.host = LOOPBACK
        self.port = port
        self.ca_file = ca_file
        self.superuser = SUPERUSER
        self.superuser_password = superuser_password
        self._run_as = list(run_as)
        self._running = False

    def url(
        self, user: str, password: str | None, dbname: str, sslmode: str = "verify-full"
    ) -> str:
        """A ``postgresql://`` URL for libpq, psycopg2 and SQLAlchemy, verifying the server's
        certificate against the throwaway CA unless ``sslmode`` says otherwise."""
        credentials = quote(user, safe="")
        if password is not None:
            credentials += ":" + quote(password, safe="")
        query = urlencode({"sslmode": sslmode, "sslrootcert": str(self.ca_file)})
        return (
            f"postgresql://{credentials}@{self.host}:{self.port}/{quote(dbname, safe='')}?{query}"
        )

    def write_client_files(
        self, directory: Path, service: str, dbname: str, user: str, password: str
    ) -> None:
        """libpq's own files for a role, as a team would keep them: ``directory/pgpass``
        (mode 0600, the password) and ``directory/pg_service.conf`` (a service named
        ``service`` that reaches ``dbname`` as ``user`` over verified TLS, without password)."""
        pgpass = directory / "pgpass"
        pgpass.write_text(f"{self.host}:{self.port}:{dbname}:{user}:{password}\n")
        pgpass.chmod(0o600)
        (directory / "pg_service.conf").write_text(
            f"[{service}]\nhost={self.host}\nport={self.port}\ndbname={dbname}\n"
            f"user={user}\nsslmode=verify-full\nsslrootcert={self.ca_file}\n"
        )

    def superuser_url(self, dbname: str = "postgres") -> str:
        """The superuser's URL (over verified TLS, like every other connection)."""
        return self.url(self.superuser, self.superuser_password, dbname)

    def connect(self, dbname: str = "postgres") -> psycopg2.extensions.connection:
        """An autocommit superuser connection (CREATE DATABASE cannot run in a transaction)."""
        conn = psycopg2.connect(self.superuser_url(dbname), connect_timeout=10)
        conn.autocommit = True
        return conn

    def _execute(self, statement: sql.Composable) -> None:
        conn = self.connect()
        try:
            with conn.cursor() as cur:
                cur.execute(statement)
        finally:
            conn.close()

    def create_role(
        self,
        name: str,
        password: str | None,
        *,
        login: bool = True,
        createdb: bool = False,
        superuser: bool = False,
    ) -> None:
        """CREATE ROLE with a password that the server stores as a SCRAM-SHA-256 verifier.

        CREATE ROLE takes no bind parameters, so the password goes in as a quoted literal
        (``sql.Literal``), never pasted into the text; the name is a quoted identifier."""
        options = [
            sql.SQL("LOGIN" if login else "NOLOGIN"),
            sql.SQL("CREATEDB" if createdb else "NOCREATEDB"),
            sql.SQL("SUPERUSER" if superuser else "NOSUPERUSER"),
            sql.SQL("PASSWORD {}").format(
                sql.Literal(password) if password is not None else sql.SQL("NULL")
            ),
        ]
        self._execute(
            sql.SQL("CREATE ROLE {} WITH {}").format(
                sql.Identifier(name), sql.SQL(" ").join(options)
            )
        )

    def create_database(self, name: str, owner: str) -> None:
        """CREATE DATABASE ``name`` owned by role ``owner``."""
        self._execute(
            sql.SQL("CREATE DATABASE {} OWNER {}").format(
                sql.Identifier(name), sql.Identifier(owner)
            )
        )

    def _pg_ctl(self, *args: str, timeout: float = 90) -> subprocess.CompletedProcess[str]:
        return _run(
            [*self._run_as, str(self.bin_dir / "pg_ctl"), "-D", str(self.data_dir), *args],
            cwd=self.server_dir,
            timeout=timeout,
        )

    def _start(self) -> None:
        """``pg_ctl -w start``: returns once the server accepts connections."""
        self._pg_ctl("-w", "-t", "60", "-l", str(self.log_file), "start")
        self._running = True

    def log(self) -> str:
        """The server's log so far (for error messages)."""
        try:
            return self.log_file.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""

    def stop(self) -> None:
        """Shut down at once (``-m fast``: clients are disconnected) and delete the data.

        Safe to call twice, and after a failed start."""
        if self._running or (self.data_dir / "postmaster.pid").exists():
            self._pg_ctl("-w", "-t", "60", "-m", "fast", "stop")
            self._running = False
        shutil.rmtree(self.server_dir, ignore_errors=True)


def _clean_env() -> dict[str, str]:
    """The environment less libpq's and the server's own variables (PGDATA, PGPORT, ...), which
    would otherwise steer initdb and pg_ctl somewhere else."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env["LC_ALL"] = "C.UTF-8"
    return env


def _run(command: Sequence[str], *, cwd: Path, timeout: float) -> subprocess.CompletedProcess[str]:
    """Runs a server command; on failure the error names the command and shows its output."""
    done = subprocess.run(
        list(command),
        cwd=cwd,
        env=_clean_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(
            f"{' '.join(command)} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}"
        )
    return done


def _server_settings(server: TlsServer, key: Path, cert: Path, ca: Path) -> str:
    """The settings that make it production-style (TLS, SCRAM, TCP on loopback only) and quick
    (no fsync: its data is thrown away anyway)."""
    settings: dict[str, str | int] = {
        "listen_addresses": _conf_string(LOOPBACK),
        "port": server.port,
        "unix_socket_directories": "''",
        "ssl": "on",
        "ssl_cert_file": _conf_string(cert),
        "ssl_key_file": _conf_string(key),
        "ssl_ca_file": _conf_string(ca),
        "ssl_min_protocol_version": "'TLSv1.2'",
        "password_encryption": "'scram-sha-256'",
        "fsync": "off",
        "synchronous_commit": "off",
        "full_page_writes": "off",
        "max_connections": 100,
        "shared_buffers": "'128MB'",
        "log_connections": "on",
    }
    return "".join(f"{name} = {value}\n" for name, value in settings.items())


#: The only way in: TLS from 127.0.0.1 with a SCRAM-SHA-256 password. No `host`, `local` or trust.
PG_HBA = (
    "# TYPE   DATABASE  USER  ADDRESS       METHOD\n"
    "hostssl  all       all   127.0.0.1/32  scram-sha-256\n"
)


def start_tls_server(workdir: Path) -> TlsServer:
    """Install (if needed), initialise and start a TLS-only, SCRAM-only PostgreSQL.

    The CA certificate clients need is ``workdir/tls/ca.crt``; the CA's key is deleted once it
    has signed the server's certificate. The server's own files go to ``workdir/server``, or, when
    running as root, to a private temporary directory owned by the ``postgres`` OS user: that user
    runs the server and cannot reach into root's pytest directories (mode 0700)."""
    bin_dir = ensure_postgresql()
    workdir.mkdir(parents=True, exist_ok=True)
    tls_dir = workdir / "tls"
    ca_key, ca_cert = generate_ca(tls_dir)

    owner: pwd.struct_passwd | None = None
    if os.geteuid() == 0:
        try:
            owner = pwd.getpwnam(SERVER_OS_USER)
        except KeyError as exc:
            raise RuntimeError(
                f"running as root but there is no {SERVER_OS_USER!r} OS user to run PostgreSQL"
            ) from exc
        server_dir = Path(tempfile.mkdtemp(prefix="tls-postgres-"))
        run_as = ["runuser", "-u", SERVER_OS_USER, "--"]
    else:
        server_dir = workdir / "server"
        server_dir.mkdir(mode=0o700)
        run_as = []
    server = TlsServer(
        bin_dir=bin_dir,
        server_dir=server_dir,
        port=free_port(),
        ca_file=ca_cert,
        superuser_password=secrets.token_urlsafe(24),
        run_as=run_as,
    )
    try:
        key, cert = generate_server_cert(server_dir, ca_key, ca_cert)
        ca_key.unlink()
        server_ca = server_dir / "ca.crt"
        shutil.copyfile(ca_cert, server_ca)
        password_file = server_dir / "superuser.pw"
        password_file.touch(mode=0o600)
        password_file.write_text(server.superuser_password + "\n", encoding="utf-8")
        if owner is not None:
            for path in (server_dir, key, cert, server_ca, password_file):
                os.chown(path, owner.pw_uid, owner.pw_gid)
        _run(
            [
                *run_as,
                str(bin_dir / "initdb"),
                "-D", str(server.data_dir),
                "--username", SUPERUSER,
                "--pwfile", str(password_file),
                "--auth", "scram-sha-256",
                "--encoding", "UTF8",
                "--locale", "C.UTF-8",
                "--no-sync",
                "--no-instructions",
            ],
            cwd=server_dir,
            timeout=300,
        )  # fmt: skip
        password_file.unlink()
        # Written as root or as the owner: either way the files stay the server user's.
        (server.data_dir / "pg_hba.conf").write_text(PG_HBA, encoding="utf-8")
        with (server.data_dir / "postgresql.conf").open("a", encoding="utf-8") as conf:
            conf.write("\n# tests/tls_server.py\ninclude 'tls_server.conf'\n")
        _start_on_a_free_port(server, key, cert, server_ca)
    except BaseException:
        try:
            server.stop()
        finally:
            shutil.rmtree(server_dir, ignore_errors=True)
        raise
    return server


def _start_on_a_free_port(server: TlsServer, key: Path, cert: Path, ca: Path) -> None:
    """Starts the server, with a new port if another process took the one it was given."""
    settings = server.data_dir / "tls_server.conf"
    for attempt in range(START_ATTEMPTS):
        settings.write_text(_server_settings(server, key, cert, ca), encoding="utf-8")
        data = server.data_dir.stat()
        if settings.stat().st_uid != data.st_uid:  # made by root: the server must read it
            os.chown(settings, data.st_uid, data.st_gid)
        try:
            server._start()
            return
        except RuntimeError as exc:
            if "could not bind" not in server.log() or attempt == START_ATTEMPTS - 1:
                raise RuntimeError(f"{exc}\nserver log:\n{server.log()}") from exc
            server.port = free_port()
            time.sleep(0.2)


@pytest.fixture(scope="session")
def tls_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsServer]:
    """One TLS-only PostgreSQL for the session, stopped (and its data deleted) at the end, also
    when tests failed."""
    server = start_tls_server(tmp_path_factory.mktemp("tls-server"))
    try:
        yield server
    finally:
        server.stop()
