"""Connections: how a URL becomes a connection, retried when the failure is transient.

``make_engine`` gives SQLAlchemy engines for set-up and bookkeeping; ``connect`` and
``ResilientConnection`` give the raw psycopg2 connections the hot paths use (COPY). URLs are
shown only redacted (``redact_url``, ``scrub``). ``connection_bound`` is the most connections
one run can hold.
"""

from __future__ import annotations

import configparser
import contextlib
import logging
import os
import re
from collections.abc import Callable, Iterator
from typing import Any, TypeVar, cast

import psycopg2
import psycopg2.errors
import psycopg2.extensions
import sqlalchemy as sa

from pipeline import retry

T = TypeVar("T")

_LOG = logging.getLogger(__name__)

APPLICATION_NAME = "emissions-pipeline"
#: The database URL, when none is given on the command line.
DATABASE_URL_ENV = "EMISSIONS_DATABASE_URL"


def is_libpq_url(url: str) -> bool:
    """Whether ``url`` names no server itself (libpq's variables and files decide)."""
    try:
        u = sa.make_url(url)
    except Exception:  # noqa: BLE001 - not a URL at all
        return False
    named = (u.host, u.database, u.username, u.port, u.password)
    return not any(named) and set(u.query) <= {"options", "application_name"}


def for_run(url: str, run_id: str) -> str:
    """``url`` with an ``application_name`` that names the run (``emissions-pipeline run
    <id>``): every connection of a run says whose it is in ``pg_stat_activity``, and a run
    can tell its own claims on key ranges from another run's."""
    u = sa.make_url(url)
    named = u.update_query_dict({"application_name": f"{APPLICATION_NAME} run {run_id}"})
    return str(named.render_as_string(hide_password=False))


def without_password(url: str) -> str:
    """``url`` without its password (in the userinfo or a ``password`` parameter): what a job
    run by workers on other hosts carries. They read it from libpq's own variables or files on
    their host (``PGPASSWORD``, ``PGPASSFILE``, ``~/.pgpass``)."""
    u = sa.make_url(url)
    if u.password is None and "password" not in u.query:
        return url
    query = {k: v for k, v in u.query.items() if k != "password"}
    bare = sa.engine.URL.create(u.drivername, u.username, None, u.host, u.port, u.database, query)
    return str(bare.render_as_string(hide_password=False))


def with_timeouts(url: str, statement_s: float, lock_s: float) -> str:
    """``url`` with libpq ``options`` that bound every statement and every wait for a lock
    (0: none), so that nothing hangs silently: a statement cancelled by them fails with
    PostgreSQL's own message. Options already in the URL, or in ``$PGOPTIONS``, are kept."""
    settings = []
    if statement_s > 0:
        settings.append(f"-c statement_timeout={int(statement_s * 1000)}")
    if lock_s > 0:
        settings.append(f"-c lock_timeout={int(lock_s * 1000)}")
    if not settings:
        return url
    u = sa.make_url(url)
    given = u.query.get("options") or os.environ.get("PGOPTIONS") or ""
    if isinstance(given, tuple):
        given = " ".join(given)
    options = " ".join([*([given] if given else []), *settings])
    rendered = u.update_query_dict({"options": options}).render_as_string(hide_password=False)
    return str(rendered)


def redact_url(url: str) -> str:
    """The database URL with its password masked, for logs, summaries and errors; for a
    connection by libpq's variables, what they name."""
    if is_libpq_url(url):
        env = libpq_environment()
        if "PGSERVICE" in env:
            return f"postgresql:// (service {env['PGSERVICE']})"
        user = env.get("PGUSER", "")
        where = env.get("PGHOST", env.get("PGHOSTADDR", ""))
        port = f":{env['PGPORT']}" if "PGPORT" in env else ""
        return f"postgresql://{user}{'@' if user else ''}{where}{port}/{env.get('PGDATABASE', '')}"
    try:
        # Without the timeouts' libpq options: they are the run's settings, not where it is.
        shown = sa.make_url(url).difference_update_query(["options", "application_name"])
        return shown.render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - an unparsable URL must still never be printed raw
        return "<unparsable database URL>"


@contextlib.contextmanager
def raw_connection(engine: sa.Engine) -> Iterator[psycopg2.extensions.connection]:
    """The engine's psycopg2 connection (for COPY and cursors), returned to the pool after;
    one the server closed (a restart) is discarded, so that the next one is new."""
    pooled = engine.raw_connection()
    conn = cast(psycopg2.extensions.connection, pooled.driver_connection)
    lost = False
    try:
        yield conn
    except BaseException as e:
        lost = retry.is_transient(e)
        raise
    finally:
        if lost or conn.closed:
            pooled.invalidate()
        pooled.close()


def make_engine(url: str, **kw: Any) -> sa.Engine:
    """An engine for set-up and bookkeeping (not for the hot path), always on psycopg2."""
    parsed = sa.make_url(url)
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg2")
    if "application_name" not in parsed.query:
        kw.setdefault("connect_args", {}).setdefault("application_name", APPLICATION_NAME)
    return sa.create_engine(parsed, pool_pre_ping=True, **kw)


# --- Connections ---------------------------------------------------------------------------


def connect(url: str, **driver_options: Any) -> psycopg2.extensions.connection:
    """A raw psycopg2 connection for the hot paths, from a SQLAlchemy-style URL.

    ``driver_options`` go to ``psycopg2.connect`` (e.g. ``connection_factory``).
    """
    u = sa.make_url(url)
    params: dict[str, Any] = {
        "dbname": u.database,
        "user": u.username,
        "password": u.password,
        "host": u.host,
        "port": u.port,
        "application_name": APPLICATION_NAME,
    }
    params.update(u.query)  # e.g. host=/path/to/socket for the embedded server
    params = {k: v for k, v in params.items() if v is not None}
    return psycopg2.connect(**params, **driver_options)


class ResilientConnection:
    """One psycopg2 connection for a DoFn, reopened and retried after transient failures.

    ``run(what, fn)`` calls ``fn(connection)``; when that fails transiently (the connection was
    lost, the server restarted, a serialization failure or deadlock), the connection is dropped
    and ``fn`` runs again on a fresh one, with backoff, up to the policy's attempts. ``fn`` must
    therefore be one whole transaction that is safe to repeat: every write here is idempotent.
    """

    def __init__(self, url: str, policy: retry.RetryPolicy = retry.DEFAULT_POLICY) -> None:
        self._url = url
        self._policy = policy
        self._conn: psycopg2.extensions.connection | None = None

    def open(self) -> None:
        """Connect now (retrying), so that a database that is down fails in ``setup``."""
        retry.call(self._ensure, what="connecting to the database", policy=self._policy)

    def _ensure(self) -> psycopg2.extensions.connection:
        if self._conn is None or self._conn.closed:
            self._conn = connect(self._url)
        return self._conn

    def _drop(self, _: BaseException | None = None) -> None:
        if self._conn is not None:
            with contextlib.suppress(Exception):
                self._conn.close()
        self._conn = None

    def run(self, what: str, fn: Callable[[psycopg2.extensions.connection], T]) -> T:
        def attempt() -> T:
            conn = self._ensure()
            try:
                return fn(conn)
            except Exception as e:
                if not retry.is_transient(e) and not conn.closed:
                    with contextlib.suppress(Exception):
                        conn.rollback()
                raise

        return retry.call(attempt, what=what, policy=self._policy, on_retry=self._drop)

    def close(self) -> None:
        self._drop()


def with_connection(
    url: str,
    what: str,
    fn: Callable[[psycopg2.extensions.connection], T],
    policy: retry.RetryPolicy = retry.DEFAULT_POLICY,
) -> T:
    """``fn`` on a short-lived connection, retried after transient failures, closed after."""
    resilient = ResilientConnection(url, policy)
    try:
        return resilient.run(what, fn)
    finally:
        resilient.close()


#: A password shorter than this is hidden only where it stands alone (not inside a word): a
#: one-letter password hidden in every word would garble every message ("O***erationalError"),
#: and a letter inside a word says nothing of it.
SHORT_PASSWORD = 4


def scrub(text: str, url: str | None) -> str:
    """``text`` with the URL's password (and the raw URL), and ``$PGPASSWORD``, replaced, for
    errors and logs: wherever it appears, or, when shorter than ``SHORT_PASSWORD``, wherever
    it stands alone."""
    secrets = [os.environ.get("PGPASSWORD") or ""]
    if url and not is_libpq_url(url):
        text = text.replace(url, redact_url(url))
        try:
            secrets.append(str(sa.make_url(url).password or ""))
        except Exception:  # noqa: BLE001 - an unparsable URL was replaced whole above
            pass
    for secret in secrets:
        if len(secret) >= SHORT_PASSWORD:
            text = text.replace(secret, "***")
        elif secret:
            text = re.sub(rf"(?<![^\W_]){re.escape(secret)}(?![^\W_])", "***", text)
    return text


# --- Connection budget ---------------------------------------------------------------------

#: The run's own engine (bookkeeping and progress lines): ``pool_size=2, max_overflow=0``.
DRIVER_CONNECTIONS = 2
#: Per worker: a range reader, two writers and the short-lived factor read.
WORKER_CONNECTIONS = 4


def connection_bound(workers: int = 1) -> int:
    """The most connections one run holds at once.

    The driver's pool (bookkeeping, planning the key ranges, progress), and per worker: one
    range reader and two writers (results, errors), each its own DoFn, however many activity
    types the run reads (one DoFn serves them all); plus one short-lived connection that reads
    the factors. Every DoFn opens its connection in ``setup`` and closes it in ``teardown``;
    none opens one per element or per bundle.
    """
    return DRIVER_CONNECTIONS + workers * WORKER_CONNECTIONS


#: libpq's variables that say which server to reach, and how: when one is set and no URL is
#: given, libpq's own conventions decide (with ~/.pgpass and service files).
LIBPQ_TARGET_VARIABLES = (
    "PGHOST",
    "PGHOSTADDR",
    "PGPORT",
    "PGDATABASE",
    "PGUSER",
    "PGPASSWORD",
    "PGSERVICE",
    "PGSSLMODE",
)
#: A URL without parameters: libpq fills in everything from its environment and files.
LIBPQ_URL = "postgresql://"
#: Asks for the embedded server whatever the environment says.
EMBEDDED = "embedded"


def libpq_environment() -> dict[str, str]:
    """The libpq variables set in this process that name a server (none: not used)."""
    return {k: os.environ[k] for k in LIBPQ_TARGET_VARIABLES if os.environ.get(k)}


class UrlError(ValueError):
    """The database to use cannot be told from what was given; the message says what to fix
    (and never holds the password)."""


def check_url(url: str) -> str:
    """``url``, unless its password (or user) holds an ``@`` or ``:`` that is not
    percent-encoded where that moves the split: the password's end is then taken for the host,
    its rest for the port ("invalid literal for int()"). Refused as such, without showing it
    (a user name like Azure's ``user@server`` that parses as meant is left alone)."""
    if "://" not in url:
        return url
    try:
        parsed = sa.make_url(url)
    except ValueError as e:  # the port is not a number
        if "@" in str(e):
            raise UrlError(_UNENCODED) from None
        raise UrlError(
            "the database URL's port is not a number: write postgresql://user@host:5432/db"
        ) from None
    if parsed.host and "@" in parsed.host:
        raise UrlError(_UNENCODED)
    return url


_UNENCODED = (
    "the database URL holds an @ or : in its user or password that is not percent-encoded: "
    "percent-encode the password (@ is %40, : is %3A)"
)


def _service_file_alone() -> str | None:
    """What to say when ``$PGSERVICEFILE`` is set but ``$PGSERVICE`` is not: a service file
    was meant, but libpq connects to no service unless one is named."""
    path = os.environ.get("PGSERVICEFILE")
    if not path or os.environ.get("PGSERVICE"):
        return None
    parser = configparser.ConfigParser(interpolation=None)
    try:
        parser.read(path)
        named = f" (the file defines {', '.join(parser.sections())})" if parser.sections() else ""
    except configparser.Error:
        named = ""
    return (
        f"PGSERVICEFILE is set but PGSERVICE is not: set PGSERVICE to the service to connect "
        f"to{named}, or unset PGSERVICEFILE to use the embedded server"
    )


def resolve_database_url(url: str | None) -> str:
    """The database a command works on, the same way for every command and script:

    1. the URL given (``--database-url``), else ``$EMISSIONS_DATABASE_URL``;
    2. else, when a libpq variable names a server (``PGHOST``, ``PGSERVICE``, …), libpq's own
       conventions: those variables, ``~/.pgpass``, service files;
    3. else (or when the URL is ``embedded``) the embedded server's database, started if
       needed, with every ``PG*`` variable removed from this process first, so that none of
       them reaches the server or its connections; but not when ``$PGSERVICEFILE`` is set
       without ``$PGSERVICE`` (a service was meant: ``UrlError`` says to name it).

    A URL whose password holds an unencoded ``@`` or ``:`` is refused (``UrlError``).
    """
    chosen = url or os.environ.get(DATABASE_URL_ENV)
    if chosen and chosen != EMBEDDED:
        return check_url(chosen)
    if chosen != EMBEDDED and libpq_environment():
        _LOG.info(
            "no database URL given: connecting as libpq's %s say",
            ", ".join(sorted(libpq_environment())),
        )
        return LIBPQ_URL
    alone = _service_file_alone() if chosen != EMBEDDED else None
    if alone:
        raise UrlError(alone)
    from pipeline.store import embedded

    ignored = sorted(k for k in os.environ if k.startswith("PG"))
    for name in ignored:
        del os.environ[name]
    if ignored:
        _LOG.info("the embedded PostgreSQL ignores %s", ", ".join(ignored))
    folder = embedded.data_dir()
    _LOG.info("no database URL given: using the embedded PostgreSQL under %s", folder)
    return embedded.ensure_database(embedded.server_url(folder), embedded.DEFAULT_DATABASE)
