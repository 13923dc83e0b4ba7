"""The pipeline's schema is versioned (Alembic): a database laid out by release 0.1.0 is upgraded
with everything in it kept, a schema holding tables the pipeline did not make is refused, and
the migrations build exactly the tables the code reads and writes."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from ops import admin
from pipeline import run
from pipeline.store import connections, install, tables
from pipeline.store.migrations.versions import r0001_release_0_1_0 as first

ROOT = Path(__file__).resolve().parent.parent
LEGACY_DUMP = ROOT / "tests" / "data" / "legacy_0_1_0.sql"
#: Row counts of the release-0.1.0 database in the dump (see its header).
LEGACY_ROWS = {
    "electricity_activities": 160,
    "spend_activities": 140,
    "air_travel_activities": 100,
    "emission_factors": 4214,
    "emission_results": 397,
    "emission_errors": 3,
    "calculation_runs": 2,
    "calculation_run_writes": 6,
    "emission_results_history": 15,
    "restatements": 1,
}


def execute(url: str, statement: str) -> None:
    conn = connections.connect(url)
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(statement)
    finally:
        conn.close()


def fingerprints(url: str, schema: str) -> dict[str, tuple[int, str]]:
    """Per table of the release: its row count and an md5 of its rows (the release's columns:
    later revisions add some)."""
    release = first._metadata("bigint", schema)
    conn = connections.connect(url)
    found = {}
    try:
        with conn.cursor() as cur:
            for name in LEGACY_ROWS:
                columns = ", ".join(c.name for c in release.tables[f"{schema}.{name}"].columns)
                cur.execute(
                    f"SELECT count(*), md5(string_agg(t::text, '|' ORDER BY t::text)) "
                    f"FROM (SELECT {columns} FROM {tables.qualified_text(name, schema)}) t"
                )
                count, digest = cur.fetchone()
                found[name] = (int(count), str(digest))
        conn.commit()
    finally:
        conn.close()
    return found


def relations(url: str, schema: str) -> set[str]:
    conn = connections.connect(url)
    try:
        with conn.cursor() as cur:
            cur.execute(
                "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                "WHERE n.nspname = %s AND c.relkind IN ('r', 'v')",
                (schema,),
            )
            return {r[0] for r in cur.fetchall()}
    finally:
        conn.close()


@pytest.fixture
def legacy(empty_database: str) -> Iterator[str]:
    """A database exactly as release 0.1.0 left it (tables in public)."""
    execute(empty_database, LEGACY_DUMP.read_text())
    yield empty_database


def test_a_release_0_1_0_database_is_upgraded_with_everything_kept(
    legacy: str, capsys: pytest.CaptureFixture[str]
) -> None:
    before = fingerprints(legacy, "public")
    assert {n: c for n, (c, _) in before.items()} == LEGACY_ROWS
    assert admin.main(["revision", "--database-url", legacy]) == 1  # not versioned yet
    capsys.readouterr()

    assert admin.main(["init", "--database-url", legacy]) == 0
    outcome = json.loads(capsys.readouterr().out)
    assert outcome["revision"] == install.head_revision() and outcome["id_type"] == "bigint"
    assert outcome["factor_rows_added"] == 0  # the release had loaded them all
    # Moved, not copied: nothing of the pipeline is left in public, all of it in its schema,
    # every row as it was (results, dead letters, runs, write log, history, restatements).
    assert relations(legacy, "public") == set()
    assert relations(legacy, "emissions") == {
        *LEGACY_ROWS,
        tables.EXPLAINED_VIEW,
        "alembic_version",
        tables.MARKS_TABLE,  # revision 0004's, new
        tables.SOURCES_TABLE,  # revision 0005's, new
        tables.CLAIMS_TABLE,  # revision 0006's, new
        tables.BASE_YEAR_TABLE,  # revision 0008's, new
        tables.MARKET_TABLE,  # revision 0009's, new
        tables.MARKET_HISTORY_TABLE,
        tables.MARKET_REFUSED_TABLE,
        *tables.INSTRUMENT_TABLES.values(),  # revision 0010's, new
        tables.MARKET_INPUTS_TABLE,  # revision 0011's, new
    }
    assert fingerprints(legacy, "emissions") == before
    assert admin.main(["init", "--database-url", legacy]) == 0  # twice is once
    assert fingerprints(legacy, "emissions") == before
    capsys.readouterr()
    assert admin.main(["revision", "--database-url", legacy]) == 0
    assert json.loads(capsys.readouterr().out)["up_to_date"]
    # The explained view still joins the moved tables.
    engine = connections.make_engine(legacy, poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as conn:
            explained = conn.execute(
                sa.text("SELECT count(*) FROM emissions.emission_results_explained")
            ).scalar()
        assert explained == LEGACY_ROWS["emission_results"]
    finally:
        engine.dispose()
    # Every activity had a result or a dead letter: a run computes nothing new. The results of
    # the release have no activity version yet, and a restore gives every row a new one: the
    # run reads them once, finds their content unchanged, and records their versions.
    assert run.main(["--database-url", legacy, "--progress-interval", "0"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["total_activities"] == 400 and summary["pending"] == 400
    assert summary["total_processed"] == 0 and summary["retired"] == 0
    after = fingerprints(legacy, "emissions")
    for name in ("emission_results", "emission_results_history", "emission_factors"):
        assert after[name] == before[name]  # not a value changed
    assert run.main(["--database-url", legacy, "--progress-interval", "0"]) == 0
    again = json.loads(capsys.readouterr().out)
    assert again["pending"] == 0 and again["total_processed"] == 0


def test_tables_the_pipeline_did_not_make_are_refused_not_altered(
    empty_database: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # An application's own emission_results in the schema the pipeline is told to use.
    foreign = (
        "CREATE SCHEMA emissions; CREATE TABLE emissions.emission_results (id uuid PRIMARY KEY, "
        "activity_id uuid, activity_type text, co2e_kg double precision, calculated_at "
        "timestamptz); INSERT INTO emissions.emission_results VALUES "
        "(gen_random_uuid(), gen_random_uuid(), 'electricity', 1.5, now())"
    )
    execute(empty_database, foreign)
    assert admin.main(["init", "--database-url", empty_database]) == 1
    err = capsys.readouterr().err
    assert "the schema emissions already holds emission_results, not made by the pipeline" in err
    assert "emissions.emission_results has no column scope" in err
    assert "has columns it should not: calculated_at, co2e_kg, id" in err
    assert relations(empty_database, "emissions") == {"emission_results"}  # nothing added
    conn = connections.connect(empty_database)
    try:
        with conn.cursor() as cur:
            cur.execute(
                "SELECT string_agg(attname, ',' ORDER BY attnum) FROM pg_attribute "
                "WHERE attrelid = 'emissions.emission_results'::regclass AND attnum > 0"
            )
            assert cur.fetchone() == ("id,activity_id,activity_type,co2e_kg,calculated_at",)
            cur.execute("SELECT count(*) FROM emissions.emission_results")
            assert cur.fetchone() == (1,)
    finally:
        conn.close()
    # Another schema of the same database works, beside it.
    assert admin.main(["init", "--database-url", empty_database, "--schema", "carbon"]) == 0
    assert tables.RESULTS_TABLE in relations(empty_database, "carbon")


@pytest.mark.parametrize("id_type", tables.ID_TYPES)
def test_the_migrations_build_what_the_code_expects(
    empty_database: str, id_type: tables.IdType
) -> None:
    engine = connections.make_engine(empty_database, poolclass=sa.pool.NullPool)
    try:
        assert install.create_schema(engine, id_type, "other") == id_type
        with engine.connect() as conn:
            expected = tables.build_metadata(id_type, "other")
            assert install.shape_differences(conn, "other", expected) == []
            # The check itself sees a difference when there is one.
            conn.execute(sa.text("ALTER TABLE other.emission_errors DROP COLUMN input_hash"))
            assert install.shape_differences(conn, "other", expected) == [
                "other.emission_errors has no column input_hash (text)"
            ]
            conn.rollback()
        assert install.revision(engine, "other").up_to_date
    finally:
        engine.dispose()


def test_a_role_that_may_not_create_the_schema_is_told_what_to_ask_for(
    empty_database: str, capsys: pytest.CaptureFixture[str]
) -> None:
    role = "reader_" + empty_database.rsplit("_", 1)[-1][:8]
    execute(empty_database, f'CREATE ROLE "{role}" LOGIN')
    try:
        url = sa.make_url(empty_database).set(username=role).render_as_string(False)
        assert admin.main(["init", "--database-url", url]) == 1
        err = capsys.readouterr().err
        assert "ask an administrator to run CREATE SCHEMA emissions AUTHORIZATION" in err
        assert relations(empty_database, "emissions") == set()
    finally:
        execute(empty_database, f'DROP ROLE "{role}"')


def test_the_newest_revision_is_read_as_alembic_reads_it() -> None:
    assert install.head_revision() == install.alembic_head() == "0011"
