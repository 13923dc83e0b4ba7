"""User SQL runs read-only: a sources expression or query that writes (here ``app.touch()``,
which inserts into an application table) is refused by ``check-sources`` and by a run before
anything is written, and every statement that evaluates a source (counts, range planning,
range reads, retirement probes, follow polls, verify, restatement reads) fails rather than
write, even when the check did not meet the side effect. The application's table keeps 0 rows
throughout (issue 22, item 5)."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg2
import psycopg2.errors
import pyarrow as pa
import pytest
import sqlalchemy as sa

from audit.base_year import compare
from audit.inventory import inventory, period
from audit.inventory_export import result_rows
from audit.restate import restate
from audit.verify import verify
from ops import admin
from pipeline import run
from pipeline.ranges import plan_ranges
from pipeline.store import bulk, connections, marks, queries, writes
from pipeline.store.checks import check_sources
from pipeline.store.sources import Source, load_sources, read_only_within
from tests.support import execute, scalar

APP = """
CREATE SCHEMA app;
CREATE TABLE app.touched (at timestamptz NOT NULL DEFAULT clock_timestamp());
CREATE FUNCTION app.touch() RETURNS boolean LANGUAGE plpgsql AS
$$ BEGIN INSERT INTO app.touched DEFAULT VALUES; RETURN true; END $$;
CREATE TABLE app.power (id bigint PRIMARY KEY, kwh float8, region text, used_on date,
                        v integer NOT NULL DEFAULT 1,
                        updated_at timestamptz NOT NULL DEFAULT now());
CREATE INDEX ON app.power (updated_at);
INSERT INTO app.power (id, kwh, region, used_on)
SELECT g, 100 + g, 'CAMX', '2024-02-01' FROM generate_series(1, 300) g;
"""
FIELDS = (
    '[electricity.fields]\nquantity = "kwh"\nunit = { value = "kWh" }\nregion = "region"\n'
    'activity_date = "used_on"\n'
)
#: The side effect in a field's expression, as the issue found it.
TOUCHING_FIELD = (
    '[electricity]\ntable = "app.power"\n'
    + FIELDS
    + 'country = { sql = "CASE WHEN app.touch() THEN region END" }\n'
)
INNOCENT_QUERY = "SELECT id, kwh, region, used_on, v, updated_at FROM app.power"


def _query_source(query: str) -> str:
    return f'[electricity]\nquery = "{query}"\nversion = "v"\nfollow_by = "updated_at"\n' + FIELDS


def touched(url: str) -> int:
    return int(scalar(url, "SELECT count(*) FROM app.touched"))


@pytest.fixture
def app_url(database_url: str) -> str:
    execute(database_url, APP)
    return database_url


def _write(tmp_path: Path, text: str, name: str = "sources.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_check_sources_and_a_run_refuse_a_field_that_writes(
    app_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sources = _write(tmp_path, TOUCHING_FIELD)
    code = admin.main(["check-sources", "--database-url", app_url, "--sources", str(sources)])
    err = capsys.readouterr().err
    assert code == 2
    problem = [line for line in err.splitlines() if "country" in line]
    assert len(problem) == 1, err
    assert problem[0].startswith(
        "  - electricity: app.power: country = expression "
        "'CASE WHEN app.touch() THEN region END' writes to the database (cannot execute "
        "INSERT in a read-only transaction): the sources' SQL must only read"
    ), problem
    assert touched(app_url) == 0

    code = run.main(
        ["--database-url", app_url, "--sources", str(sources), "--progress-interval", "0"]
    )
    err = capsys.readouterr().err
    assert code == 2, err
    assert "country = expression" in err and "writes to the database" in err
    assert touched(app_url) == 0

    code = admin.main(
        ["init", "--database-url", app_url, "--schema", "fresh", "--sources", str(sources)]
    )
    err = capsys.readouterr().err
    assert code == 2, err
    assert "country = expression" in err and "writes to the database" in err
    assert touched(app_url) == 0
    assert scalar(app_url, "SELECT count(*) FROM emissions.emission_results") == 0


def test_a_query_that_writes_is_refused_by_the_check(
    app_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sources = _write(tmp_path, _query_source(INNOCENT_QUERY + " WHERE app.touch()"))
    code = admin.main(["check-sources", "--database-url", app_url, "--sources", str(sources)])
    err = capsys.readouterr().err
    assert code == 2
    assert (
        "  - electricity: the electricity query: writes to the database (cannot execute "
        "INSERT in a read-only transaction)"
    ) in err, err
    assert touched(app_url) == 0


@pytest.fixture
def computed(
    app_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> Iterator[tuple[str, sa.Engine, Source]]:
    """The 300 rows computed through an innocent query source; then the same source made to
    write on every row it reads (as if the check had not met the side effect)."""
    sources = _write(tmp_path, _query_source(INNOCENT_QUERY))
    code = run.main(
        ["--database-url", app_url, "--sources", str(sources), "--progress-interval", "0"]
    )
    out = capsys.readouterr().out
    assert code == 0, out
    assert json.loads(out[out.index("{") :])["total_processed"] == 300
    engine = connections.make_engine(app_url, poolclass=sa.pool.NullPool)
    with connections.raw_connection(engine) as conn:
        checked = check_sources(conn, load_sources(sources))["electricity"]
    writing = dataclasses.replace(checked, query=INNOCENT_QUERY + " WHERE app.touch()")
    yield app_url, engine, writing
    engine.dispose()


def _on_connection(engine: sa.Engine, work: Callable[[Any], object]) -> Callable[[], object]:
    def call() -> object:
        with connections.raw_connection(engine) as conn:
            return work(conn)

    return call


def _innocent(source: Source) -> Source:
    return dataclasses.replace(source, query=INNOCENT_QUERY)


STATEMENTS: dict[str, Callable[[sa.Engine, Source], Callable[[], object]]] = {
    "count": lambda e, s: (
        lambda: queries.count_activities(e, ["electricity"], sources={"electricity": s})
    ),
    "plan rows": lambda e, s: _on_connection(e, lambda c: plan_ranges(c, s, 2, 100)),
    "plan bounds": lambda e, s: _on_connection(e, lambda c: plan_ranges(c, s, 2, 100, "bounds")),
    "read range": lambda e, s: _on_connection(
        e,
        lambda c: bulk.read_pending_table(
            c, s, None, None, pa.schema([(n, pa.string()) for n in ("id",)])
        ),
    ),
    "retire probe": lambda e, s: _on_connection(
        e, lambda c: writes.retire_deleted(c, s, None, None, "00000000-0000-0000-0000-000000000001")
    ),
    "follow poll": lambda e, s: _on_connection(e, lambda c: marks.poll_windows(c, s, 100, 2)),
    "verify": lambda e, s: lambda: verify(e, ["electricity"], None, sources={"electricity": s}),
    "restate": lambda e, s: lambda: restate(e, {}, ["electricity"], sources={"electricity": s}),
    "inventory": lambda e, s: lambda: inventory(e, period(2024), sources={"electricity": s}),
    "inventory rows": lambda e, s: (
        lambda: list(result_rows(e, period(2024), "emissions", {"electricity": s}))
    ),
    "base year recorded": lambda e, s: lambda: compare(e, period(2024), sources={"electricity": s}),
    "base year compared": lambda e, s: (
        lambda: (
            compare(e, period(2024), sources={"electricity": _innocent(s)}),  # recorded, then
            compare(e, period(2024), sources={"electricity": s}),
        )
    ),
}


@pytest.mark.parametrize("statement", sorted(STATEMENTS))
def test_every_statement_that_evaluates_a_source_is_read_only(
    computed: tuple[str, sa.Engine, Source], statement: str
) -> None:
    url, engine, writing = computed
    with pytest.raises(psycopg2.errors.ReadOnlySqlTransaction):
        STATEMENTS[statement](engine, writing)()
    assert touched(url) == 0
    assert scalar(url, "SELECT count(*) FROM emissions.emission_results") == 300


def test_a_read_only_part_inside_a_transaction_that_writes(app_url: str) -> None:
    """``read_only_within``: a source read under the locks of the writes it decides, where
    SQL that writes fails, and the transaction writes again after it."""
    conn = connections.connect(app_url)
    try:
        with conn.cursor() as cur:
            cur.execute("CREATE TABLE emissions.probe (n int)")
            cur.execute("INSERT INTO emissions.probe VALUES (1)")
            with read_only_within(cur):
                cur.execute("SELECT count(*) FROM app.power")
                assert cur.fetchone() == (300,)
            with pytest.raises(psycopg2.errors.ReadOnlySqlTransaction):
                with read_only_within(cur):
                    cur.execute("SELECT app.touch()")
            cur.execute("SET LOCAL lock_timeout = '1s'")  # the transaction goes on, writing
            cur.execute("INSERT INTO emissions.probe VALUES (2)")
        conn.commit()
    finally:
        conn.close()
    assert scalar(app_url, "SELECT sum(n) FROM emissions.probe") == 3
    assert touched(app_url) == 0
