"""Fixtures: a real PostgreSQL for every test that needs one.

Every test that uses a database (through ``pg_server_url``, or the TLS server of
``tests.tls_server``), or the Flink cluster or Airflow, is marked ``db`` when collected (a test
that starts one by itself says so with ``@pytest.mark.db``): ``./run_tests.sh -m "not db"`` runs
the pure tests alone, in seconds, with no server started.

The server is the embedded one (kept under ``.pgdata-test``), or the server of
``$TEST_DATABASE_URL`` when set (its user needs CREATEDB). A template database with the schema
and the shipped factors is made once per session; each test gets its own copy of it, so tests
never see each other's rows.
"""

from __future__ import annotations

import dataclasses
import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg2
import pytest
import sqlalchemy as sa
from psycopg2 import sql

from pipeline.factors import load_shipped_factors
from pipeline.methodology import FactorBook
from pipeline.store import connections, tables
from pipeline.store.embedded import server_url
from pipeline.store.install import initialise

ROOT = Path(__file__).resolve().parent.parent

#: The TLS-only Debian PostgreSQL (``tls_server`` fixture), for the tests that need one.
pytest_plugins = ["tests.tls_server"]

#: Fixtures that start or need a server: PostgreSQL, the local Flink cluster, Airflow.
_SERVER_FIXTURES = frozenset(
    {
        "pg_server_url",
        "tls_server",
        "local_flink",
        "flink_job_server_jar",
        "worker_pool",
        "airflow_venv",
        "airflow_env",
    }
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Marks ``db`` every test whose fixtures reach a server (PostgreSQL, Flink, Airflow)."""
    for item in items:
        if _SERVER_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.db)


def _admin_connect(url: str) -> psycopg2.extensions.connection:
    conn = connections.connect(url)
    conn.autocommit = True
    return conn


@pytest.fixture(scope="session")
def book() -> FactorBook:
    """The shipped factors, with ids as the database would give them."""
    rows = load_shipped_factors()
    return FactorBook.from_rows(dataclasses.replace(r, id=i + 1) for i, r in enumerate(rows))


@pytest.fixture(scope="session")
def pg_server_url() -> str:
    """The maintenance database of the test server."""
    return os.environ.get("TEST_DATABASE_URL") or server_url(ROOT / ".pgdata-test")


def _create_database(server: str, name: str, template: str | None = None) -> str:
    conn = _admin_connect(server)
    try:
        with conn.cursor() as cur:
            query = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name))
            if template:
                query = query + sql.SQL(" TEMPLATE {}").format(sql.Identifier(template))
            cur.execute(query)
    finally:
        conn.close()
    return sa.make_url(server).set(database=name).render_as_string(hide_password=False)


def _drop_database(server: str, name: str) -> None:
    conn = _admin_connect(server)
    try:
        with conn.cursor() as cur:
            cur.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )
    finally:
        conn.close()


@pytest.fixture(scope="session")
def database_template(pg_server_url: str) -> Iterator[Callable[[tables.IdType], str]]:
    """Name of a template database with schema and factors, per id type (made once)."""
    made: dict[str, str] = {}

    def template(id_type: tables.IdType) -> str:
        if id_type not in made:
            name = f"emissions_tpl_{id_type}_{uuid.uuid4().hex[:8]}"
            url = _create_database(pg_server_url, name)
            engine = connections.make_engine(url, poolclass=sa.pool.NullPool)
            try:
                initialise(engine, id_type)
            finally:
                engine.dispose()
            made[id_type] = name
        return made[id_type]

    yield template
    for name in made.values():
        _drop_database(pg_server_url, name)


@pytest.fixture
def make_database(
    pg_server_url: str, database_template: Callable[[tables.IdType], str]
) -> Iterator[Callable[..., str]]:
    """Factory: a fresh database (schema and factors loaded) for this test; dropped after."""
    created: list[str] = []

    def make(id_type: tables.IdType = "bigint") -> str:
        name = f"emissions_test_{uuid.uuid4().hex[:12]}"
        url = _create_database(pg_server_url, name, template=database_template(id_type))
        created.append(name)
        return url

    yield make
    for name in created:
        _drop_database(pg_server_url, name)


@pytest.fixture
def empty_database(pg_server_url: str) -> Iterator[str]:
    """A database with nothing in it (no schema, no factors); dropped after."""
    name = f"emissions_empty_{uuid.uuid4().hex[:12]}"
    url = _create_database(pg_server_url, name)
    yield url
    _drop_database(pg_server_url, name)


@pytest.fixture
def database_url(make_database: Callable[..., str]) -> str:
    """A fresh database with bigint activity ids, schema and factors loaded."""
    return make_database("bigint")


@pytest.fixture
def engine(database_url: str) -> Iterator[sa.Engine]:
    eng = connections.make_engine(database_url, poolclass=sa.pool.NullPool)
    yield eng
    eng.dispose()
