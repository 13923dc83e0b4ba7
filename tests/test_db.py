"""Schema, range reads and bulk writes against a real PostgreSQL."""

from __future__ import annotations

import dataclasses
import datetime
import os
import random
import uuid
from collections.abc import Callable

import psycopg2
import pyarrow as pa
import pytest
import sqlalchemy as sa

from pipeline.factors import load_shipped_factors
from pipeline.methodology.batch import activity_schema, result_schema
from pipeline.model import ErrorRecord
from pipeline.ranges import KeyRange, key_bounds, plan_int_ranges, plan_ranges, plan_uuid_ranges
from pipeline.store import bulk, connections, install, queries, tables, writes
from pipeline.store.embedded import _same_setting, server_settings
from tests.factories import RUN, result_for

INT64 = pa.int64()


def insert_electricity(engine: sa.Engine, ids: list[int] | list[str]) -> None:
    with connections.raw_connection(engine) as raw:
        id_type = tables.results_id_type(raw) or "bigint"
    table = tables.table(tables.ACTIVITY_TABLES["electricity"], id_type=id_type)
    with engine.begin() as conn:
        if ids:
            conn.execute(
                table.insert(),
                [
                    {
                        "id": i,
                        "quantity": 10.0,
                        "unit": "kWh",
                        "region": "CAMX",
                        "activity_date": datetime.date(2023, 5, 1),
                    }
                    for i in ids
                ],
            )


def computed_from_current_rows(conn: psycopg2.extensions.connection) -> None:
    """Stamps the stored results with their activity rows' current versions, as a run does."""
    with conn.cursor() as cur:
        cur.execute(
            "UPDATE emissions.emission_results r SET activity_version = a.xmin::text::bigint "
            "FROM emissions.electricity_activities a WHERE a.id = r.activity_id"
        )
    conn.commit()


def read_all(url: str, ranges: list, id_type: pa.DataType = INT64) -> list:
    """Every id read by the range reads of ``ranges``, in order."""
    schema = activity_schema("electricity", id_type)
    conn = connections.connect(url)
    try:
        ids: list = []
        for r in ranges:
            table = bulk.read_pending_table(conn, r.activity_type, r.start, r.end, schema)
            ids += table.column("id").to_pylist()
        return ids
    finally:
        conn.close()


def test_create_schema_is_safe_to_run_twice(engine: sa.Engine) -> None:
    assert install.create_schema(engine) == "bigint"
    assert install.create_schema(engine) == "bigint"
    with pytest.raises(install.SchemaError, match="keyed by bigint"):
        install.create_schema(engine, "uuid")


def test_factors_load_once(engine: sa.Engine) -> None:
    rows = load_shipped_factors()
    assert queries.insert_factors(engine, rows) == 0  # the template already loaded them
    with engine.connect() as conn:
        stored = conn.execute(sa.text("SELECT count(*) FROM emissions.emission_factors")).scalar()
    assert stored == len(rows)


@pytest.mark.parametrize(
    ("ids", "partitions"),
    [([], 4), ([7], 4), ([1, 2, 3, 4, 5], 10), (list(range(1, 1001)), 7), ([-5, 0, 2**62], 3)],
)
def test_every_pending_row_is_read_exactly_once(
    engine: sa.Engine, database_url: str, ids: list[int], partitions: int
) -> None:
    insert_electricity(engine, ids)
    done = set(ids[::3])
    conn = connections.connect(database_url)
    try:
        writes.write_results(conn, [result_for(i) for i in done], RUN)
        computed_from_current_rows(conn)
        lo, hi, _ = key_bounds(conn, "electricity")
    finally:
        conn.close()
    planned = plan_int_ranges("electricity", lo, hi, partitions)
    read = read_all(database_url, planned)
    assert sorted(read) == sorted(set(ids) - done)


def test_uuid_keys_are_read_exactly_once(make_database: Callable[..., str]) -> None:
    url = make_database("uuid")
    engine = connections.make_engine(url, poolclass=sa.pool.NullPool)
    rng = random.Random(7)
    ids = [str(uuid.UUID(int=rng.getrandbits(128), version=4)) for _ in range(500)]
    insert_electricity(engine, ids)
    conn = connections.connect(url)
    try:
        writes.write_results(conn, [result_for(i) for i in ids[:100]], RUN)
        computed_from_current_rows(conn)
    finally:
        conn.close()
    read = read_all(url, plan_uuid_ranges("electricity", 5), pa.string())
    assert sorted(read) == sorted(ids[100:])
    engine.dispose()


def test_results_are_written_once_even_when_repeated(engine: sa.Engine, database_url: str) -> None:
    batch = [result_for(i) for i in range(1, 21)]
    duplicated = batch + batch[:5]  # duplicates inside one batch
    conn = connections.connect(database_url)
    try:
        assert writes.write_results(conn, duplicated, RUN) == 20
        assert writes.write_results(conn, batch, RUN) == 0  # a retried bundle
        # a different value for a stored activity does not overwrite it
        assert writes.write_results(conn, [result_for(1, kg=99.0)], RUN) == 0
    finally:
        conn.close()
    with engine.connect() as conn2:
        rows = conn2.execute(
            sa.text("SELECT count(*), sum(kg_co2e) FROM emissions.emission_results")
        ).one()
    assert rows == (20, 30.0)


def test_results_tables_are_written_once_whatever_columns_a_batch_has(
    engine: sa.Engine, database_url: str
) -> None:
    schema = result_schema(INT64)
    # Results of real activity rows, at their versions: the path a refused COPY falls back to
    # (the one supersede path) stores only values computed from an input as it is now.
    with engine.begin() as c:
        c.execute(
            sa.text(
                "INSERT INTO emissions.electricity_activities (id, quantity, unit) "
                "SELECT i, 10, 'kWh' FROM generate_series(1, 15) i"
            )
        )
        versions: dict[int, int] = dict(
            c.execute(
                sa.text("SELECT id, xmin::text::bigint FROM emissions.electricity_activities")
            ).all()
        )

    def table(ids: range, **fields: object) -> pa.Table:
        rows = [{**dataclasses.asdict(result_for(i)), **fields} for i in ids]
        return pa.Table.from_pylist(rows, schema=schema).append_column(
            "activity_version", pa.array([versions[i] for i in ids], pa.int64())
        )

    conn = connections.connect(database_url)
    try:
        assert bulk.write_results_table(conn, table(range(1, 11)), RUN) == 10
        # A retried batch: the binary COPY is refused whole, the staging path writes nothing.
        assert bulk.write_results_table(conn, table(range(1, 6)), RUN) == 0
        # Overlapping, and with a column the first batches did not have: only the new rows.
        assert bulk.write_results_table(conn, table(range(6, 16), exchange_rate=0.5), RUN) == 5
    finally:
        conn.close()
    with engine.connect() as c:
        rows = c.execute(
            sa.text(
                "SELECT activity_id, exchange_rate, kg_co2e FROM emissions.emission_results "
                "ORDER BY activity_id"
            )
        ).all()
    assert [r[0] for r in rows] == list(range(1, 16))
    assert [r[1] for r in rows] == [None] * 10 + [0.5] * 5  # stored rows are never overwritten
    assert {r[2] for r in rows} == {1.5}


def test_a_batch_larger_than_the_bind_parameter_limit(engine: sa.Engine, database_url: str) -> None:
    # 70,000 rows × 36 columns would be 2.5 million bind parameters; COPY has no such limit.
    batch = [result_for(i) for i in range(70_000)]
    conn = connections.connect(database_url)
    try:
        assert writes.write_results(conn, batch, RUN) == 70_000
    finally:
        conn.close()
    with engine.connect() as c:
        assert (
            c.execute(sa.text("SELECT count(*) FROM emissions.emission_results")).scalar() == 70_000
        )


def test_floats_round_trip_exactly(engine: sa.Engine, database_url: str) -> None:
    value = 0.1 + 0.2  # 0.30000000000000004
    conn = connections.connect(database_url)
    try:
        writes.write_results(conn, [result_for(1, kg=value)], RUN)
    finally:
        conn.close()
    with engine.connect() as c:
        assert (
            c.execute(sa.text("SELECT kg_co2e FROM emissions.emission_results")).scalar() == value
        )


def test_errors_are_recorded_once_per_input(engine: sa.Engine, database_url: str) -> None:
    error = ErrorRecord("spend", 3, "unknown_currency", "The currency 'XYZ' ...", '{"id": 3}')
    changed = dataclasses.replace(error, input_repr='{"id": 3, "currency": "XYQ"}')
    conn = connections.connect(database_url)
    try:
        assert writes.write_errors(conn, [error, error], RUN) == 1
        assert writes.write_errors(conn, [error], RUN) == 0
        assert writes.write_errors(conn, [changed], RUN) == 1  # new input, new record
    finally:
        conn.close()


def test_text_with_quotes_commas_and_newlines_survives_copy(
    engine: sa.Engine, database_url: str
) -> None:
    nasty = 'a "quoted", comma\nnewline \\ backslash é 🚀'
    error = ErrorRecord("spend", 4, "unknown_currency", nasty, nasty)
    conn = connections.connect(database_url)
    try:
        writes.write_errors(conn, [error], RUN)
    finally:
        conn.close()
    with engine.connect() as c:
        assert c.execute(sa.text("SELECT reason FROM emissions.emission_errors")).scalar() == nasty


def test_identifiers_are_validated() -> None:
    assert tables.validate_identifier("emission_results") == "emission_results"
    for bad in ["Results", "a;drop table x", "", "1abc", "x" * 64]:
        with pytest.raises(ValueError, match="not a valid identifier"):
            tables.validate_identifier(bad)


def test_redact_and_scrub_hide_the_password() -> None:
    url = "postgresql://alice:s3cr%40t@db.example:5432/emissions"
    assert "s3cr" not in connections.redact_url(url)
    assert connections.scrub(f"failed on {url} with s3cr@t", url).count("s3cr") == 0


def test_a_password_of_a_few_characters_is_hidden_without_garbling_words(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    url = "postgresql://alice:O@db.example:5432/emissions"
    said = f"OperationalError: connecting to {url} failed (password O rejected)"
    assert connections.scrub(said, url) == (
        "OperationalError: connecting to postgresql://alice:***@db.example:5432/emissions "
        "failed (password *** rejected)"
    )
    monkeypatch.setenv("PGPASSWORD", "e")
    assert connections.scrub("DatabaseError: e, then e.", None) == "DatabaseError: ***, then ***."
    # From four characters on, a password is hidden wherever it appears, inside a word too.
    url = "postgresql://alice:Oper@db.example:5432/emissions"
    assert connections.scrub("OperationalError: Oper", url) == "***ationalError: ***"


def test_the_embedded_server_settings_are_read_back_in_their_units() -> None:
    assert _same_setting(("shared_buffers", "131072", "8kB", False), "1GB")
    assert _same_setting(("max_wal_size", "4096", "MB", False), "4GB")
    assert _same_setting(("checkpoint_timeout", "900", "s", False), "15min")
    assert not _same_setting(("checkpoint_timeout", "300", "s", False), "15min")
    assert not _same_setting(("shared_buffers", "131072", "8kB", True), "1GB")  # not yet live
    buffers = int(server_settings()["shared_buffers"].removesuffix("MB"))
    assert 128 <= buffers <= 1024


def test_the_embedded_test_server_runs_with_those_settings(engine: sa.Engine) -> None:
    if os.environ.get("TEST_DATABASE_URL"):
        pytest.skip("a server of the caller's, not the embedded one")
    with engine.connect() as conn:
        found = {
            r[0]: r
            for r in conn.execute(
                sa.text(
                    "SELECT name, setting, unit, pending_restart FROM pg_settings "
                    "WHERE name = ANY(:n)"
                ),
                {"n": list(server_settings())},
            )
        }
    assert all(_same_setting(tuple(found[n]), v) for n, v in server_settings().items())


def test_small_ranges_are_cut_as_asked_and_hold_at_least_two_rows(
    engine: sa.Engine, database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    ids = [3, 9, 10, 11, 40, 41, 77]
    insert_electricity(engine, ids)
    conn = connections.connect(database_url)
    try:
        planned = plan_ranges(conn, "electricity", 1, 2)
        many = plan_ranges(conn, "electricity", 8, 20_000)
    finally:
        conn.close()
    assert planned == [
        KeyRange("electricity", None, 10),
        KeyRange("electricity", 10, 40),
        KeyRange("electricity", 40, None),
    ]
    assert sorted(read_all(database_url, planned)) == ids  # each row once
    assert [len(read_all(database_url, [r])) for r in planned] == [2, 2, 3]
    assert len(many) == 3  # 7 rows: at most 3 ranges of at least 2 rows, not 8
    assert "--partitions 8: electricity has 7 rows, read in 3 ranges" in caplog.text
