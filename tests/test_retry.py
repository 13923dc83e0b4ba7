"""The retry helper: what counts as transient, backoff bounds, and what the caller sees."""

from __future__ import annotations

from typing import Any

import psycopg2
import psycopg2.errors
import pytest
import sqlalchemy as sa

from pipeline import retry
from pipeline.model import ErrorRecord
from pipeline.store import connections, writes
from tests.factories import RUN, result_for


def pg_error(cls: type[psycopg2.Error], code: str | None) -> psycopg2.Error:
    """A driver error carrying ``code`` as its SQLSTATE, as the server would send it."""
    error = cls("injected")
    if code is not None:
        # pgcode is read-only on psycopg2 errors; a subclass can supply it.
        error = type("Coded", (cls,), {"pgcode": code})("injected")
    return error


@pytest.mark.parametrize(
    ("error", "transient"),
    [
        (psycopg2.OperationalError("server closed the connection unexpectedly"), True),
        (psycopg2.InterfaceError("connection already closed"), True),
        # An idle connection's next statement after an immediate shutdown (or a crash): libpq
        # has not marked the connection bad yet, so psycopg2 raises its base DatabaseError,
        # without a SQLSTATE (chaos finding F5).
        (
            psycopg2.DatabaseError(
                "server closed the connection unexpectedly\n\tThis probably means the server "
                "terminated abnormally\n\tbefore or while processing the request.\n"
            ),
            True,
        ),
        (psycopg2.DatabaseError("SSL SYSCALL error: EOF detected"), True),
        (psycopg2.DatabaseError("could not receive data from server: Connection reset"), True),
        (psycopg2.DatabaseError("invalid byte sequence for encoding"), False),
        (pg_error(psycopg2.errors.SerializationFailure, "40001"), True),
        (pg_error(psycopg2.errors.DeadlockDetected, "40P01"), True),
        (pg_error(psycopg2.errors.AdminShutdown, "57P01"), True),
        (pg_error(psycopg2.errors.CannotConnectNow, "57P03"), True),
        (pg_error(psycopg2.errors.TooManyConnections, "53300"), True),
        (pg_error(psycopg2.errors.UniqueViolation, "23505"), False),
        (pg_error(psycopg2.errors.InsufficientPrivilege, "42501"), False),
        (pg_error(psycopg2.errors.QueryCanceled, "57014"), False),
        (pg_error(psycopg2.errors.UndefinedTable, "42P01"), False),
        (ValueError("a bug"), False),
        (psycopg2.OperationalError('FATAL:  password authentication failed for user "a"'), False),
        (psycopg2.OperationalError('FATAL:  database "nowhere" does not exist'), False),
    ],
)
def test_what_is_transient(error: BaseException, transient: bool) -> None:
    assert retry.is_transient(error) is transient
    # SQLAlchemy wraps the driver's error; the verdict is the same.
    wrapped = sa.exc.OperationalError("SELECT 1", {}, error)
    assert retry.is_transient(wrapped) is transient


def test_transient_failures_are_retried_with_growing_waits() -> None:
    waits: list[float] = []
    calls = iter([psycopg2.OperationalError("lost"), psycopg2.OperationalError("lost"), 42])

    def flaky() -> Any:
        outcome = next(calls)
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    policy = retry.RetryPolicy(attempts=5, base_delay=1.0, max_delay=10.0)
    assert retry.call(flaky, what="x", policy=policy, sleep=waits.append) == 42
    assert len(waits) == 2
    assert 0.5 <= waits[0] <= 1.0 and 1.0 <= waits[1] <= 2.0


def test_attempts_are_bounded_and_the_message_says_what_failed() -> None:
    waits: list[float] = []
    tries = 0

    def down() -> None:
        nonlocal tries
        tries += 1
        raise psycopg2.OperationalError('connection to server on socket "/x" failed')

    policy = retry.RetryPolicy(attempts=4, base_delay=1.0, max_delay=3.0)
    with pytest.raises(retry.DatabaseUnavailable) as caught:
        retry.call(down, what="writing results", policy=policy, sleep=waits.append)
    assert tries == 4 and len(waits) == 3
    assert max(waits) <= 3.0 and sum(waits) <= policy.longest_wait() == 1 + 2 + 3
    message = str(caught.value)
    assert message.startswith("the database is unavailable: writing results failed 4 time(s)")
    assert "OperationalError" in message
    assert isinstance(caught.value.__cause__, psycopg2.OperationalError)


def test_other_errors_are_not_retried() -> None:
    tries = 0

    def broken() -> None:
        nonlocal tries
        tries += 1
        raise pg_error(psycopg2.errors.UniqueViolation, "23505")

    with pytest.raises(psycopg2.errors.UniqueViolation):
        retry.call(broken, what="x", sleep=lambda _: None)
    assert tries == 1


def test_policy_is_validated() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        retry.RetryPolicy(attempts=0)
    assert retry.DEFAULT_POLICY.longest_wait() == 0.5 + 1 + 2 + 4 + 8 + 10 + 10


def test_a_resilient_connection_reconnects_after_losing_its_connection(
    database_url: str, engine: sa.Engine
) -> None:
    conn = connections.ResilientConnection(
        database_url, retry.RetryPolicy(attempts=3, base_delay=0.01)
    )
    conn.open()
    first = conn.run("pid", lambda c: c.get_backend_pid())
    # The server ends the session, as a restart or a failover would.
    with engine.connect() as admin:
        admin.execute(sa.text("SELECT pg_terminate_backend(:p)"), {"p": first})
    second = conn.run("pid", lambda c: (c.cursor().execute("SELECT 1"), c.get_backend_pid())[1])
    assert second != first
    conn.close()


def test_duplicates_inside_one_batch_larger_than_the_bind_parameter_limit(
    database_url: str, engine: sa.Engine
) -> None:
    # 3,000 distinct results × 36 columns is over 100,000 values, above the 65,535 bind
    # parameters one statement may carry; every one appears twice, and a third is stored.
    distinct = [result_for(i) for i in range(3_000)]
    conn = connections.connect(database_url)
    try:
        assert writes.write_results(conn, distinct[::3], RUN) == 1_000
        assert writes.write_results(conn, distinct + distinct[::-1], RUN) == 2_000
        errors = [ErrorRecord("spend", i, "x", "y", f'{{"id": {i}}}') for i in range(3_000)]
        assert writes.write_errors(conn, errors + errors, RUN) == 3_000
    finally:
        conn.close()
    with engine.connect() as c:
        assert (
            c.execute(sa.text("SELECT count(*) FROM emissions.emission_results")).scalar() == 3_000
        )
        assert (
            c.execute(sa.text("SELECT count(*) FROM emissions.emission_errors")).scalar() == 3_000
        )
