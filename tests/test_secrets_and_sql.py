"""Secrets and SQL: the password never leaks; identifiers are checked; values are never
formatted into SQL text.

A role with a password is created on the test server, and real runs (one that succeeds, one the
database refuses) are made with a URL holding that password. Every line they print, every
column of their ``calculation_runs`` rows, and the messages of the errors raised along the way
are searched for it, in plain and in URL-encoded form.
"""

from __future__ import annotations

import ast
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import psycopg2
import pyarrow as pa
import pytest
import sqlalchemy as sa
from psycopg2 import sql

from ops.seed import seed
from pipeline import retry
from pipeline.methodology.batch import activity_schema
from pipeline.store import bulk, connections, tables
from tests.support import ROOT, start_run

PASSWORD = "Tr0ub4dor&3-s3cr3t@x%"


def forms(password: str) -> list[str]:
    return [password, quote(password, safe=""), "s3cr3t"]


@pytest.fixture
def role_url(database_url: str, pg_server_url: str) -> Iterator[str]:
    """The test database's URL for a new role that has a password and the rights a run needs."""
    role = f"alice_{uuid.uuid4().hex[:8]}"
    admin = connections.connect(database_url)
    admin.autocommit = True
    with admin.cursor() as cur:
        cur.execute(
            sql.SQL("CREATE ROLE {} LOGIN PASSWORD %s").format(sql.Identifier(role)), (PASSWORD,)
        )
        for grant in (
            "GRANT USAGE ON SCHEMA emissions TO {}",
            "GRANT ALL ON ALL TABLES IN SCHEMA emissions TO {}",
            "GRANT ALL ON ALL SEQUENCES IN SCHEMA emissions TO {}",
        ):
            cur.execute(sql.SQL(grant).format(sql.Identifier(role)))
    url = sa.make_url(database_url).set(username=role, password=PASSWORD)
    try:
        yield url.render_as_string(hide_password=False)
    finally:
        with admin.cursor() as cur:
            cur.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
        admin.close()
        server = connections.connect(pg_server_url)
        server.autocommit = True
        try:
            with server.cursor() as cur:
                cur.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))
        finally:
            server.close()


def runs_table_text(url: str) -> str:
    conn = connections.connect(url)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT r::text FROM emissions.calculation_runs r")
            return "\n".join(row[0] for row in cur.fetchall())
    finally:
        conn.close()


def assert_no_password(text: str) -> None:
    for form in forms(PASSWORD):
        assert form not in text, f"password form {form!r} leaked"


def test_the_password_never_appears_in_output_runs_or_errors(
    role_url: str, database_url: str, engine: sa.Engine, tmp_path: Path
) -> None:
    assert PASSWORD in role_url or quote(PASSWORD, safe="") in role_url
    seed(engine, 500, seed_value=4)
    env_path = {"PYTHONPATH": str(ROOT)}
    init = subprocess.run(
        [sys.executable, "-m", "ops.admin", "init", "--database-url", role_url],
        cwd=ROOT,
        env={**env_path, "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert init.returncode == 0, init.stderr
    assert_no_password(init.stdout + init.stderr)

    ok = start_run(role_url, tmp_path, "--partitions", "2", name="ok")
    assert ok.wait() == 0, ok.stderr[-2000:]
    assert ok.summary()["total_processed"] > 0
    assert_no_password(ok.stdout + ok.stderr)

    # The database refuses the writes (not transient): the run fails and says why.
    with engine.begin() as conn:
        conn.execute(sa.text("TRUNCATE emissions.emission_results, emissions.emission_errors"))
        user = sa.make_url(role_url).username
        conn.execute(sa.text(f'REVOKE INSERT ON emissions.emission_results FROM "{user}"'))
    failed = start_run(role_url, tmp_path, "--partitions", "2", "--retry-attempts", "2", name="no")
    assert failed.wait() == 1
    assert "permission denied" in failed.stderr
    assert_no_password(failed.stdout + failed.stderr)

    stored = runs_table_text(database_url)
    assert "failed" in stored and "succeeded" in stored
    assert_no_password(stored)


def test_errors_raised_on_the_way_do_not_carry_the_password() -> None:
    # Unreachable server: the error the retries end with, and what a run prints.
    url = f"postgresql://alice:{quote(PASSWORD, safe='')}@127.0.0.1:1/nowhere"
    policy = retry.RetryPolicy(attempts=2, base_delay=0.01)
    with pytest.raises(retry.DatabaseUnavailable) as caught:
        connections.ResilientConnection(url, policy).open()
    assert_no_password(str(caught.value) + repr(caught.value.__cause__))
    assert "connecting to the database failed 2 time(s)" in str(caught.value)
    assert_no_password(
        connections.redact_url(url) + connections.scrub(f"boom {url} {PASSWORD}", url)
    )


# --- Identifiers and SQL text ------------------------------------------------------------


def test_every_table_name_is_a_checked_identifier() -> None:
    """No option names a table or schema today; the names are constants, and valid ones."""
    names = [*tables.ACTIVITY_TABLES.values(), tables.RESULTS_TABLE, tables.ERRORS_TABLE]
    names += [tables.FACTORS_TABLE, tables.RUNS_TABLE]
    for name in names:
        assert tables.validate_identifier(name) == name
    for hostile in [
        'x"; DROP TABLE emissions.emission_results; --',
        "Emission_Results",
        "a b",
        "é",
    ]:
        with pytest.raises(ValueError, match="not a valid identifier"):
            tables.validate_identifier(hostile)


SQL_SINKS = {"execute", "text", "SQL", "executemany", "copy_expert", "mogrify"}


def _sql_call_args(tree: ast.AST) -> Iterator[tuple[int, ast.expr]]:
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            if name in SQL_SINKS and node.args:
                yield node.lineno, node.args[0]


def _formatted_names(expr: ast.expr) -> list[ast.expr]:
    """What is interpolated into a string expression by f-string, % or .format()."""
    found: list[ast.expr] = []
    for node in ast.walk(expr):
        if isinstance(node, ast.FormattedValue):
            found.append(node.value)
        elif isinstance(node, ast.BinOp) and isinstance(node.op, ast.Mod):
            if isinstance(node.left, ast.Constant) and isinstance(node.left.value, str):
                found.append(node.right)
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "format"
            and isinstance(node.func.value, ast.Constant)
        ):
            found.extend(node.args)
    return found


#: Functions whose result is a checked, quoted identifier (``tables.qualified_text``).
_IDENTIFIER_FUNCTIONS = frozenset({"qualified_text", "validate_schema", "validate_identifier"})


def _is_constant_identifier(expr: ast.expr) -> bool:
    """A module-level UPPER_CASE constant (a table name), e.g. ``RESULTS_TABLE``, or an
    identifier checked and quoted by ``qualified_text(...)``."""
    if isinstance(expr, ast.Call):
        func = expr.func
        name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
        return name in _IDENTIFIER_FUNCTIONS
    if isinstance(expr, ast.Name):
        return expr.id.isupper()
    if isinstance(expr, ast.Attribute):
        return expr.attr.isupper()
    if isinstance(expr, ast.Subscript):  # ACTIVITY_TABLES[...]
        return _is_constant_identifier(expr.value)
    return False


def test_no_sql_is_built_by_formatting_values_into_strings() -> None:
    """Lint over the production code (``pipeline/``, ``transforms/``, ``audit/``, ``ops/``):
    SQL passed to execute/text/SQL/copy is a literal, a composed ``psycopg2.sql`` object, or an
    f-string whose only holes are UPPER_CASE table-name constants or identifiers checked and
    quoted by ``qualified_text``.

    Values always travel as bound parameters; identifiers through ``sql.Identifier``.
    """
    offenders = []
    files = [
        *ROOT.glob("pipeline/**/*.py"),
        *ROOT.glob("transforms/**/*.py"),
        *ROOT.glob("audit/**/*.py"),
        *ROOT.glob("ops/**/*.py"),
    ]
    assert len(files) > 10
    for path in files:
        tree = ast.parse(path.read_text(), filename=str(path))
        for line, arg in _sql_call_args(tree):
            for hole in _formatted_names(arg):
                if not _is_constant_identifier(hole):
                    offenders.append(f"{path.relative_to(ROOT)}:{line}: {ast.unparse(hole)}")
    assert offenders == [], "\n".join(offenders)


def test_the_lint_catches_a_formatted_value() -> None:
    bad = ast.parse('cur.execute(f"SELECT * FROM t WHERE id = {activity_id}")')
    good = ast.parse('conn.execute(sa.text(f"SELECT count(*) FROM {RESULTS_TABLE}"))')
    assert [ast.unparse(h) for _, a in _sql_call_args(bad) for h in _formatted_names(a)] == [
        "activity_id"
    ]
    assert all(
        _is_constant_identifier(h) for _, a in _sql_call_args(good) for h in _formatted_names(a)
    )


def test_a_hostile_value_is_data_not_sql(database_url: str, engine: sa.Engine) -> None:
    hostile = "'); DROP TABLE emissions.emission_results; --"
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO emissions.spend_activities (id, amount, currency, naics_code, "
                "activity_date) "
                "VALUES (1, 10, :c, :c, '2023-01-01')"
            ),
            {"c": hostile},
        )
    conn2: psycopg2.extensions.connection = connections.connect(database_url)
    try:
        table = bulk.read_pending_table(
            conn2, "spend", None, None, activity_schema("spend", pa.int64())
        )
    finally:
        conn2.close()
    assert table.column("currency").to_pylist() == [hostile]
    with engine.connect() as conn:
        assert (
            conn.execute(sa.text("SELECT count(*) FROM emissions.emission_results")).scalar() == 0
        )
