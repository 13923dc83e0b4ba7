"""Retrying transient database failures with exponential backoff and a bounded number of tries.

Transient means the same statement may well succeed if tried again: the connection was lost or
could not be opened (server restarting, network blip, too many connections), or the server
aborted the transaction to resolve a conflict (serialization failure, deadlock). Anything else
(a constraint violation, a permission error, a bug) is raised at once. When the attempts are
used up, ``DatabaseUnavailable`` says what was being done, how often it was tried and for how
long, and what the last error was.

Every write the pipeline does is idempotent (``ON CONFLICT DO NOTHING``), so repeating one whose
commit may or may not have reached the server is safe.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TypeVar

import psycopg2

T = TypeVar("T")

_LOG = logging.getLogger(__name__)

# SQLSTATEs worth another try: serialization failure, deadlock, admin/crash shutdown, the server
# starting up, too many connections, and the connection-exception class.
TRANSIENT_SQLSTATES = frozenset(
    {
        "40001",  # serialization_failure
        "40P01",  # deadlock_detected
        "57P01",  # admin_shutdown
        "57P02",  # crash_shutdown
        "57P03",  # cannot_connect_now (starting up, shutting down, in recovery)
        "53300",  # too_many_connections
        "08000",
        "08001",
        "08003",
        "08004",
        "08006",
    }
)


# Connection failures that no amount of waiting fixes: the server answered and said no, or the
# connection's own settings cannot work (TLS, certificates, service files).
PERMANENT_CONNECT_FAILURES = (
    "password authentication failed",
    "authentication failed",
    "no password supplied",
    "no pg_hba.conf entry",
    "pg_hba.conf rejects",
    "does not exist",
    "permission denied",
    "certificate verify failed",
    "certificate",
    "does not match host name",
    "server does not support SSL",
    "SSL is not enabled",
    "sslmode",
    "invalid connection option",
    "definition of service",
    "service file",
    "invalid integer value",
    "could not translate host name",
)

# The connection lost, as libpq says it. After an immediate shutdown or a crash of the server,
# an idle connection's next statement fails before libpq has marked the connection bad, and
# psycopg2 then raises its base ``DatabaseError`` (no SQLSTATE) rather than OperationalError.
CONNECTION_LOST = (
    "server closed the connection unexpectedly",
    "terminating connection",
    "connection already closed",
    "no connection to the server",
    "could not receive data from server",
    "could not send data to server",
    "SSL SYSCALL error",
    "SSL connection has been closed unexpectedly",
    "lost synchronization with server",
)

#: What to check, for a connection refused for good or a statement cancelled (first match).
_HINTS = (
    (
        ("statement timeout",),
        "a statement ran longer than --statement-timeout allows: PostgreSQL's plan for it may "
        "rest on stale statistics (ANALYZE the tables), or the limit is too low for the data",
    ),
    (
        ("lock timeout",),
        "another session held a lock on one of the pipeline's tables longer than --lock-timeout "
        "allows: find it in pg_locks and pg_stat_activity",
    ),
    (
        # Before the service hint: libpq's "Name or service not known" is about DNS.
        ("could not translate host name",),
        "check the host name, in the URL or PGHOST: the DNS does not know it",
    ),
    (
        ("password authentication failed", "no password supplied"),
        "check the password: in ~/.pgpass, a service file, or $EMISSIONS_DATABASE_URL",
    ),
    (
        ("no pg_hba.conf entry", "pg_hba.conf rejects"),
        "the server's pg_hba.conf does not let this user in from here with this encryption: "
        "ask its administrator, or use sslmode=require (or verify-full) if it takes TLS only",
    ),
    (
        ("certificate", "does not match host name", "SSL", "sslmode"),
        "check sslmode and sslrootcert: the CA file must be the one that signed the server's "
        "certificate, and with verify-full the host name must be the certificate's",
    ),
    (("does not exist",), "check the database and user names"),
    (("service",), "check PGSERVICE and the service file (PGSERVICEFILE, ~/.pg_service.conf)"),
)


def _driver_error(exc: BaseException) -> BaseException:
    """The driver's own error inside SQLAlchemy's wrapper (``.orig``), else ``exc``."""
    orig = getattr(exc, "orig", None)
    return orig if isinstance(orig, psycopg2.Error) else exc


def hint(exc: BaseException) -> str | None:
    """What to check, when ``exc`` is a connection refused for good; None otherwise."""
    exc = _driver_error(exc)
    text = str(exc)
    if not isinstance(exc, psycopg2.OperationalError) or is_transient(exc):
        return None
    for markers, advice in _HINTS:
        if any(m in text for m in markers):
            return advice
    return None


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently to retry: ``attempts`` tries in all, the waits between them
    doubling from ``base_delay`` up to ``max_delay`` seconds (with jitter, so that workers
    hit by the same outage do not all come back at the same instant)."""

    attempts: int = 8
    base_delay: float = 0.5
    max_delay: float = 10.0

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError(f"retry attempts must be at least 1, not {self.attempts}")
        if self.base_delay < 0 or self.max_delay < 0:
            raise ValueError("retry delays must not be negative")

    def delays(self) -> Iterator[float]:
        """The waits before the 2nd, 3rd, … attempt (``attempts - 1`` of them)."""
        for n in range(self.attempts - 1):
            ceiling = min(self.max_delay, self.base_delay * 2**n)
            yield ceiling * random.uniform(0.5, 1.0)

    def longest_wait(self) -> float:
        """The most time spent waiting between attempts before giving up."""
        return sum(min(self.max_delay, self.base_delay * 2**n) for n in range(self.attempts - 1))


DEFAULT_POLICY = RetryPolicy()


class DatabaseUnavailable(RuntimeError):
    """The database kept failing transiently until the retry attempts were used up."""


def is_transient(exc: BaseException) -> bool:
    """True when ``exc`` (or the driver error inside it) is worth retrying."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, psycopg2.Error):
            code = current.pgcode
            if code is not None:
                return code in TRANSIENT_SQLSTATES
            # No SQLSTATE: the failure happened on the client side of the connection (refused,
            # reset, server closed it, connection already closed), unless the server refused
            # the login itself (wrong password, unknown database or role).
            text = str(current)
            if any(marker in text for marker in PERMANENT_CONNECT_FAILURES):
                return False
            if isinstance(current, psycopg2.OperationalError | psycopg2.InterfaceError):
                return True
            return any(marker in text for marker in CONNECTION_LOST)
        # SQLAlchemy wraps the driver's error in ``.orig``.
        orig = getattr(current, "orig", None)
        current = orig if isinstance(orig, BaseException) else current.__cause__
    return False


def describe(exc: BaseException) -> str:
    """A one-line description of an error, for messages (with what to check, when the
    database refused the connection for good)."""
    advice = hint(exc)
    exc = _driver_error(exc)
    text = " ".join(str(exc).split())
    found = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    return f"{found} ({advice})" if advice else found


def call(
    fn: Callable[[], T],
    *,
    what: str,
    policy: RetryPolicy = DEFAULT_POLICY,
    on_retry: Callable[[BaseException], None] | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """``fn()``, tried again after a transient database failure, at most ``policy.attempts`` times.

    ``on_retry`` runs after each transient failure (e.g. to drop a broken connection).
    Non-transient errors propagate unchanged; exhausted attempts raise ``DatabaseUnavailable``.
    """
    started = time.monotonic()
    delays = policy.delays()
    attempt = 0
    while True:
        attempt += 1
        try:
            return fn()
        except Exception as e:
            if not is_transient(e):
                raise
            if on_retry is not None:
                on_retry(e)
            delay = next(delays, None)
            if delay is None:
                raise DatabaseUnavailable(
                    f"the database is unavailable: {what} failed {attempt} time(s) over "
                    f"{time.monotonic() - started:.1f} s; last error: {describe(e)}"
                ) from e
            _LOG.warning(
                "%s failed (attempt %d of %d), retrying in %.2f s: %s",
                what,
                attempt,
                policy.attempts,
                delay,
                describe(e),
            )
            sleep(delay)
