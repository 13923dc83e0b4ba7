"""The production-style test server itself: TLS is required and verified, passwords are SCRAM.

Each test checks one promise of ``tests/tls_server.py`` that a misconfigured server would break:
an encrypted, verified connection works and stores SCRAM verifiers; an unencrypted one, a wrong
password, and a certificate from a CA the client does not trust are all refused.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import TYPE_CHECKING

import psycopg2
import pytest

if TYPE_CHECKING:
    from tests.tls_server import TlsServer

# The fixture comes in as a plugin, not by import: an imported fixture that is also a test's
# argument trips ruff's F811, and a module imported before it is registered as a plugin cannot
# have its asserts rewritten (pytest warns about that).
pytestmark = pytest.mark.db


def _role_and_database(server: TlsServer) -> tuple[str, str, str]:
    """A fresh login role with an awkward password, owning a fresh database: (role, pw, db)."""
    suffix = uuid.uuid4().hex[:8]
    role, dbname = f"app_{suffix}", f"tls_{suffix}"
    password = f"p@ss:w/rd?'{suffix}"  # needs URL quoting and SQL quoting alike
    server.create_role(role, password)
    server.create_database(dbname, role)
    return role, password, dbname


def test_verified_tls_connection_and_scram_passwords(tls_server: TlsServer) -> None:
    role, password, dbname = _role_and_database(tls_server)
    conn = psycopg2.connect(tls_server.url(role, password, dbname), connect_timeout=10)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT current_user, current_database()")
            assert cur.fetchone() == (role, dbname)
            cur.execute("SELECT ssl, version FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
            ssl, version = cur.fetchone()
            assert ssl is True
            assert version in ("TLSv1.2", "TLSv1.3")
            cur.execute("SHOW password_encryption")
            assert cur.fetchone() == ("scram-sha-256",)
    finally:
        conn.close()

    admin = tls_server.connect()
    try:
        with admin.cursor() as cur:
            cur.execute("SELECT rolpassword FROM pg_authid WHERE rolname = %s", (role,))
            (stored,) = cur.fetchone()
            assert stored.startswith("SCRAM-SHA-256$")
            assert password not in stored
            cur.execute("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
            assert cur.fetchone() == (True,)  # the superuser, too, came in over TLS
            # The rules in force: TLS with a SCRAM password, and nothing else.
            cur.execute(
                "SELECT type, auth_method, error FROM pg_hba_file_rules ORDER BY line_number"
            )
            assert cur.fetchall() == [("hostssl", "scram-sha-256", None)]
            cur.execute("SHOW listen_addresses")
            assert cur.fetchone() == ("127.0.0.1",)
            cur.execute("SHOW unix_socket_directories")
            assert cur.fetchone() == ("",)
    finally:
        admin.close()


def test_unencrypted_connection_is_refused(tls_server: TlsServer) -> None:
    role, password, dbname = _role_and_database(tls_server)
    with pytest.raises(psycopg2.OperationalError) as refused:
        psycopg2.connect(tls_server.url(role, password, dbname, sslmode="disable")).close()
    message = str(refused.value)
    assert "no pg_hba.conf entry" in message
    assert "no encryption" in message


def test_wrong_password_is_refused(tls_server: TlsServer) -> None:
    role, password, dbname = _role_and_database(tls_server)
    with pytest.raises(psycopg2.OperationalError) as refused:
        psycopg2.connect(tls_server.url(role, password + "x", dbname)).close()
    assert f'password authentication failed for user "{role}"' in str(refused.value)
    with pytest.raises(psycopg2.OperationalError) as refused:
        psycopg2.connect(tls_server.url(tls_server.superuser, "not-it", "postgres")).close()
    assert "password authentication failed" in str(refused.value)


def test_certificate_from_another_ca_is_rejected(tls_server: TlsServer, tmp_path: Path) -> None:
    from tests.tls_server import generate_ca  # registered as a plugin above: already imported

    role, password, dbname = _role_and_database(tls_server)
    _, other_ca = generate_ca(tmp_path / "other-ca", name="some other CA")
    url = tls_server.url(role, password, dbname).replace(
        f"sslrootcert={tls_server.ca_file}".replace("/", "%2F"),
        f"sslrootcert={other_ca}".replace("/", "%2F"),
    )
    assert str(other_ca).replace("/", "%2F") in url
    with pytest.raises(psycopg2.OperationalError) as refused:
        psycopg2.connect(url).close()
    assert "certificate verify failed" in str(refused.value)
    # The same URL with the server's own CA goes through: the CA is what made the difference.
    psycopg2.connect(tls_server.url(role, password, dbname)).close()
