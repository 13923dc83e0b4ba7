"""Binary COPY: what PostgreSQL reads back is exactly the Arrow table written, NULLs included."""

from __future__ import annotations

import math
import uuid
from typing import Any

import psycopg2.extensions
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline import pgbinary
from pipeline.store import connections

COLUMNS: list[tuple[str, pgbinary.PgType, pa.DataType, str]] = [
    ("a_text", "text", pa.string(), "text"),
    ("a_int2", "int2", pa.int64(), "smallint"),
    ("a_int4", "int4", pa.int64(), "integer"),
    ("a_int8", "int8", pa.int64(), "bigint"),
    ("a_float", "float8", pa.float64(), "double precision"),
    ("a_bool", "bool", pa.bool_(), "boolean"),
    ("a_uuid", "uuid", pa.string(), "uuid"),
]
VALUES: dict[str, Any] = {
    "text": st.text(max_size=20).map(lambda t: t.replace("\x00", "")),
    "int2": st.integers(-(2**15), 2**15 - 1),
    "int4": st.integers(-(2**31), 2**31 - 1),
    "int8": st.integers(-(2**63), 2**63 - 1),
    "float8": st.floats(allow_nan=True, allow_infinity=True),
    "bool": st.booleans(),
    "uuid": st.uuids().map(str),
}
rows_strategy = st.lists(
    st.tuples(*[st.one_of(st.none(), VALUES[t]) for _, t, _, _ in COLUMNS]),
    min_size=0,
    max_size=30,
)


def round_trip(conn: psycopg2.extensions.connection, table: pa.Table) -> list[tuple[Any, ...]]:
    """Writes ``table`` by binary COPY into a fresh temporary table; returns its rows."""
    data, order = pgbinary.encode(table, [t for _, t, _, _ in COLUMNS])
    with conn.cursor() as cur:
        cur.execute("DROP TABLE IF EXISTS round_trip")
        cur.execute(
            "CREATE TEMP TABLE round_trip (n serial, "
            + ", ".join(f"{name} {sql_type}" for name, _, _, sql_type in COLUMNS)
            + ")"
        )
        cur.copy_expert(
            f"COPY round_trip ({', '.join(order)}) FROM STDIN WITH (FORMAT binary)",
            data,
        )
        cur.execute(f"SELECT {', '.join(n for n, _, _, _ in COLUMNS)} FROM round_trip ORDER BY n")
        found = cur.fetchall()
    conn.rollback()
    return found


def same(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        if math.isnan(a):
            return math.isnan(b)
        return a == b and math.copysign(1, a) == math.copysign(1, b)
    return a == b


@pytest.fixture
def conn(database_url: str) -> Any:
    c = connections.connect(database_url)
    yield c
    c.close()


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(rows=rows_strategy)
def test_postgresql_reads_back_exactly_what_was_written(
    conn: psycopg2.extensions.connection, rows: list[tuple[Any, ...]]
) -> None:
    table = pa.table(
        {
            name: pa.array([r[i] for r in rows], arrow_type)
            for i, (name, _, arrow_type, _) in enumerate(COLUMNS)
        }
    )
    found = round_trip(conn, table)
    assert len(found) == len(rows)
    for got, want in zip(found, rows, strict=True):
        for (_, pg_type, _, _), g, w in zip(COLUMNS, got, want, strict=True):
            if pg_type == "uuid" and g is not None:
                g = str(g)
            assert same(g, w), (pg_type, g, w)


def test_edge_values_and_a_repeated_run_id(conn: psycopg2.extensions.connection) -> None:
    run = str(uuid.uuid4()).upper()  # upper-case hex is a UUID too
    table = pa.table(
        {
            "a_text": ["", "ünïcode ✓", 'quote " and \\ backslash', None],
            "a_int2": [-(2**15), 2**15 - 1, 0, None],
            "a_int4": [-(2**31), 2**31 - 1, 0, 1],
            "a_int8": [-(2**63), 2**63 - 1, 0, 1],
            "a_float": [-0.0, 5e-324, 1.7976931348623157e308, 0.1 + 0.2],
            "a_bool": [True, False, None, True],
            "a_uuid": [run, run, run, run],
        }
    )
    found = round_trip(conn, table)
    assert [r[0] for r in found] == ["", "ünïcode ✓", 'quote " and \\ backslash', None]
    assert [r[1] for r in found] == [-(2**15), 2**15 - 1, 0, None]
    assert [r[4] for r in found][1:] == [5e-324, 1.7976931348623157e308, 0.1 + 0.2]
    assert math.copysign(1, found[0][4]) == -1.0
    assert {str(r[6]) for r in found} == {run.lower()}


def test_a_value_that_does_not_fit_is_refused() -> None:
    table = pa.table({"a": pa.array([2**15], pa.int64())})
    with pytest.raises(ValueError, match="does not fit int2"):
        pgbinary.encode(table, ["int2"])
    with pytest.raises(ValueError, match="not 32 hex digits"):
        pgbinary.encode(pa.table({"u": ["not-a-uuid"]}), ["uuid"])
