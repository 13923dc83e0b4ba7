"""The layouts teams have (issue 23, item 4): a query source over one jsonb table for every
kind of activity gives exactly the kg of the same data in the pipeline's own tables; follow
reads a view through the index of the table under it (and says which index to create when
there is none); quoted, mixed-case and spaced names in ``table =``; a timestamptz
``activity_date`` is the same day under any session TimeZone, converted in the time zone the
sources file states (UTC unless it says another)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import sqlalchemy as sa

from ops import admin
from ops.seed import seed
from pipeline import run
from pipeline.store import connections, marks
from pipeline.store.checks import check_sources
from pipeline.store.sources import Source, SourcesError, parse_sources, parse_table_name
from tests.support import scalar, wait_for
from tests.test_follow import WITHIN, execute, result_of, start_follow

DOCS = Path(__file__).resolve().parent.parent / "docs" / "adoption.md"


def _doc(name: str) -> str:
    """The fenced block of docs/adoption.md marked ``<!-- tests/test_layouts.py: name -->``:
    the examples there are the ones these tests run."""
    text = DOCS.read_text()
    marker = f"<!-- tests/test_layouts.py: {name} -->\n```"
    start = text.index("\n", text.index(marker) + len(marker)) + 1
    return text[start : text.index("\n```", start)] + "\n"


#: One table for every kind of activity, its fields in a jsonb document (docs/adoption.md).
EVENTS = "CREATE SCHEMA app;\n" + _doc("events.sql")
#: The pipeline's own seeded tables, as the application would hold them.
EVENTS_FROM_OWN_TABLES = """
INSERT INTO app.events (kind, id, body)
SELECT 'electricity', id, jsonb_build_object('kwh', quantity, 'unit', unit, 'grid', region,
       'country', country, 'day', activity_date) FROM emissions.electricity_activities;
INSERT INTO app.events (kind, id, body)
SELECT 'spend', id, jsonb_build_object('amount', amount, 'currency', currency,
       'naics', naics_code, 'day', activity_date) FROM emissions.spend_activities;
INSERT INTO app.events (kind, id, body)
SELECT 'flight', id, jsonb_build_object('from', origin, 'to', destination, 'class', cabin_class,
       'pax', passengers, 'return', return_trip, 'day', activity_date, 'km', distance_km)
FROM emissions.air_travel_activities;
"""
#: Query sources over it: each field a column of the query, or an expression over them.
EVENTS_SOURCES = _doc("events.toml")
#: What a stored result is compared by.
COMPARED = "activity_type, activity_id, kg_co2e, factor_id, input_fingerprint, method"


def _run(url: str, capsys: pytest.CaptureFixture[str], *extra: str) -> dict:
    code = run.main(["--database-url", url, "--progress-interval", "0", *extra])
    out, err = capsys.readouterr()
    assert code == 0, err[-3000:]
    return json.loads(out[out.index("{") :])


def _init(url: str, capsys: pytest.CaptureFixture[str], sources: Path, schema: str) -> None:
    """A schema of its own for these sources (a run never creates one: issue 23)."""
    argv = ["init", "--database-url", url, "--sources", str(sources), "--schema", schema]
    assert admin.main(argv) == 0, capsys.readouterr().err
    capsys.readouterr()


def _same_results(url: str, mine: str, theirs: str) -> None:
    for a, b in ((mine, theirs), (theirs, mine)):
        differ = scalar(
            url,
            f"SELECT count(*) FROM (SELECT {COMPARED} FROM {a}.emission_results EXCEPT ALL "
            f"SELECT {COMPARED} FROM {b}.emission_results) d",
        )
        assert differ == 0, (a, b)


def _total(url: str, schema: str) -> float:
    return float(
        scalar(
            url,
            "SELECT sum(kg_co2e ORDER BY activity_type, activity_id) "
            f"FROM {schema}.emission_results",
        )
    )


def test_a_query_source_over_a_jsonb_table_gives_the_kg_of_the_pipelines_own_tables(
    database_url: str, engine: sa.Engine, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    seed(engine, 600, seed_value=23)  # bad rows included: they are refused alike
    own = _run(database_url, capsys)
    execute(database_url, EVENTS + EVENTS_FROM_OWN_TABLES)
    sources = tmp_path / "events.toml"
    sources.write_text(EVENTS_SOURCES)
    code = admin.main(["check-sources", "--database-url", database_url, "--sources", str(sources)])
    checked = json.loads(capsys.readouterr().out)
    assert code == 0
    assert {t: c["key_type"] for t, c in checked.items()} == {
        "electricity": "bigint",
        "spend": "bigint",
        "air_travel": "bigint",
    }
    _init(database_url, capsys, sources, "via_events")
    via = _run(database_url, capsys, "--sources", str(sources), "--schema", "via_events")
    assert via["total_activities"] == own["total_activities"] == 600
    assert via["total_processed"] == own["total_processed"] > 500
    assert via["errors"] == own["errors"]
    _same_results(database_url, "via_events", "emissions")
    # Exact kg, not to rounding: the sums (in one order) agree to the last bit.
    assert _total(database_url, "via_events") == _total(database_url, "emissions")
    # A second run has nothing to do: the versions are read back as they were stored.
    assert (
        _run(database_url, capsys, "--sources", str(sources), "--schema", "via_events")["pending"]
        == 0
    )


VIEW = (
    _doc("view.sql")
    + """
INSERT INTO app.events (kind, id, body)
SELECT 'electricity', g, jsonb_build_object('kwh', 100 + g, 'grid', 'CAMX', 'day', '2024-03-01')
FROM generate_series(1, 40) g;
INSERT INTO app.events (kind, id, body)
SELECT 'spend', g, jsonb_build_object('amount', 10) FROM generate_series(1, 40) g;
"""
)
VIEW_SOURCES = _doc("view.toml")


def test_follow_reads_a_view_through_the_index_of_the_table_under_it(
    make_database: Callable[..., str], tmp_path: Path
) -> None:
    url = make_database("bigint")
    execute(url, EVENTS + VIEW)
    sources = tmp_path / "view.toml"
    sources.write_text(VIEW_SOURCES)
    args = ("--sources", str(sources), "--activity-types", "electricity")
    refused = start_follow(url, tmp_path, *args, name="refused")
    assert refused.wait(timeout=120) == 2
    said = refused.stderr.strip().splitlines()[-1]
    assert said == (
        "error: electricity: app.power: follow_by updated_at is not read through an index "
        "(each poll would read all of app.events): create an index on app.events "
        "(updated_at), then start again"
    )
    assert said in DOCS.read_text()  # as docs/adoption.md shows it
    execute(url, "CREATE INDEX ON app.events (updated_at)")
    proc = start_follow(url, tmp_path, *args)
    try:
        wait_for(
            lambda: scalar(url, "SELECT count(*) FROM emissions.emission_results") == 40,
            timeout=90,
            what="the 40 rows already there",
        )
        execute(
            url,
            "INSERT INTO app.events (kind, id, body) VALUES ('electricity', 41, "
            """'{"kwh": 2500, "grid": "CAMX", "day": "2024-03-02"}')""",
        )
        started = time.monotonic()
        wait_for(
            lambda: result_of(url, "electricity", 41) is not None,
            timeout=WITHIN,
            what="the inserted row's result",
        )
        assert time.monotonic() - started < WITHIN
    finally:
        proc.kill()
    assert (result_of(url, "electricity", 41) or (0, 0))[1] == 2500.0
    assert scalar(url, "SELECT count(*) FROM emissions.emission_results") == 41


def test_table_names_are_read_with_sql_quoting() -> None:
    assert parse_table_name('"Ops Data"."MeterReadings"') == ("Ops Data", "MeterReadings")
    assert parse_table_name("App.Readings") == ("app", "readings")  # unquoted: lower case
    assert parse_table_name('app."say ""hi"""') == ("app", 'say "hi"')
    assert parse_table_name('"a.b".c') == ("a.b", "c")
    for wrong in (
        "readings",
        "a.b.c",
        '"Ops Data.x',
        "a.",
        '"".x',
        "a;b.c",
        "a .b",
        "a." + "x" * 64,
    ):
        assert parse_table_name(wrong) is None, wrong
    found = parse_sources(
        {
            "electricity": {
                "table": '"Ops Data"."MeterReadings"',
                "fields": {
                    "quantity": "Kwh",
                    "unit": "Unit",
                    "region": "Grid",
                    "activity_date": "Day",
                },
            }
        },
        "test",
    )
    assert found["electricity"].name == '"Ops Data"."MeterReadings"'
    with pytest.raises(SourcesError, match=r"write it schema-qualified, as schema.name \(in "):
        parse_sources({"electricity": {"table": "Ops Data.MeterReadings"}}, "test")


QUOTED = """
CREATE SCHEMA "Ops Data";
CREATE TABLE "Ops Data"."MeterReadings" ("ID" bigint PRIMARY KEY, "Kwh" float8, "Grid" text,
                                          "Read On" date);
INSERT INTO "Ops Data"."MeterReadings"
SELECT g, 10 * g, 'CAMX', '2024-05-01' FROM generate_series(1, 25) g;
"""


def _quoted_sources(table: str) -> str:
    return (
        f"[electricity]\ntable = '{table}'\nkey = \"ID\"\n[electricity.fields]\n"
        'quantity = "Kwh"\nunit = { value = "kWh" }\nregion = "Grid"\n'
        'activity_date = { column = "Read On" }\n'
    )


def test_a_quoted_mixed_case_spaced_table_name_works(
    database_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    execute(database_url, QUOTED)
    sources = tmp_path / "quoted.toml"
    sources.write_text(_quoted_sources('"Ops Data".MeterReadings'))  # folded: not found
    code = admin.main(["check-sources", "--database-url", database_url, "--sources", str(sources)])
    err = capsys.readouterr().err
    assert code == 2
    assert (
        '  - electricity: "Ops Data".meterreadings does not exist: did you mean '
        '"Ops Data"."MeterReadings"? (a name with capitals or spaces is written in double '
        'quotes: table = \'"Ops Data"."MeterReadings"\')'
    ) in err, err
    sources.write_text(_quoted_sources('"Ops Data"."MeterReadings"'))
    done = _run(database_url, capsys, "--sources", str(sources))
    assert done["sources"]["electricity"] == '"Ops Data"."MeterReadings"'
    assert done["total_processed"] == 25 and done["errors"] == 0
    assert scalar(database_url, "SELECT sum(activity_amount) FROM emissions.emission_results") == (
        10 * 25 * 26 / 2
    )


FLIGHT = """
CREATE SCHEMA app;
CREATE TABLE app.flights (id bigint PRIMARY KEY, origin text, destination text,
                          departed_at timestamptz);
INSERT INTO app.flights VALUES (24834, 'LHR', 'JFK', '2024-12-31 21:01:00+00');
"""


def _flight_sources(time_zone: str | None, date: str = '"departed_at"') -> str:
    setting = f'time_zone = "{time_zone}"\n' if time_zone else ""
    return (
        setting + '[air_travel]\ntable = "app.flights"\n[air_travel.fields]\n'
        'origin = "origin"\ndestination = "destination"\ncabin_class = { value = "economy" }\n'
        "passengers = { value = 1 }\nreturn_trip = { value = false }\n"
        f"activity_date = {date}\n"
    )


def _flight(url: str, schema: str) -> tuple[int, float]:
    conn = connections.connect(url)
    try:
        with conn.cursor() as cur:
            cur.execute(
                f"SELECT f.year, r.kg_co2e FROM {schema}.emission_results r "
                f"JOIN {schema}.emission_factors f ON f.id = r.factor_id"
            )
            (found,) = cur.fetchall()
        conn.rollback()
    finally:
        conn.close()
    return int(found[0]), float(found[1])


def test_a_timestamptz_activity_date_is_the_same_day_under_any_session_time_zone(
    database_url: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    execute(database_url, FLIGHT)
    sources = tmp_path / "flights.toml"
    found = {}
    expression = _flight_sources(None, "{ sql = \"departed_at + interval '1 minute'\" }")
    for zone, name, text in (
        ("UTC", "column", _flight_sources(None)),
        ("Pacific/Auckland", "column", _flight_sources(None)),
        ("Pacific/Auckland", "expression", expression),  # 21:02 UTC: the same day
    ):
        sources.write_text(text)
        monkeypatch.setenv("PGTZ", zone)
        schema = f"tz_{name}_{zone.split('/')[-1].lower()}"
        _init(database_url, capsys, sources, schema)
        _run(database_url, capsys, "--sources", str(sources), "--schema", schema)
        found[(zone, name)] = _flight(database_url, schema)
    assert set(found.values()) == {found[("UTC", "column")]}, found
    assert found[("UTC", "column")][0] == 2024  # 21:01 UTC: still the last day of 2024
    # The file says which zone the day is taken in: in Auckland it is already 2025.
    sources.write_text(_flight_sources("Pacific/Auckland"))
    monkeypatch.setenv("PGTZ", "UTC")
    _init(database_url, capsys, sources, "tz_stated")
    _run(database_url, capsys, "--sources", str(sources), "--schema", "tz_stated")
    stated = _flight(database_url, "tz_stated")
    assert stated[0] == 2025 and stated[1] != found[("UTC", "column")][1]
    sources.write_text(_flight_sources("Mars/Olympus"))
    code = admin.main(["check-sources", "--database-url", database_url, "--sources", str(sources)])
    assert code == 2
    assert "air_travel: time_zone = 'Mars/Olympus' is not a time zone PostgreSQL knows" in (
        capsys.readouterr().err
    )


def _followed_query(url: str, query: str) -> Source:
    source = parse_sources(
        {
            "electricity": {
                "query": query,
                "version": "version",
                "follow_by": "updated_at",
                "fields": {
                    "quantity": {"sql": "(body->>'kwh')::float8"},
                    "unit": {"value": "kWh"},
                    "region": {"sql": "body->>'grid'"},
                    "activity_date": {"sql": "(body->>'day')::date"},
                },
            }
        },
        "test",
    )
    conn = connections.connect(url)
    try:
        return check_sources(conn, source)["electricity"]
    finally:
        conn.close()


def _unindexed(url: str, source: Source) -> str | None:
    conn = connections.connect(url)
    try:
        return marks.unindexed(conn, source)
    finally:
        conn.close()


def test_a_query_is_followed_through_the_index_of_its_table(database_url: str) -> None:
    execute(database_url, EVENTS + "ALTER TABLE app.events ADD COLUMN changed timestamptz;")
    plain = _followed_query(
        database_url,
        "SELECT id, version, body, updated_at FROM app.events WHERE kind = 'electricity'",
    )
    renamed = _followed_query(
        database_url,
        "SELECT id, version, body, changed AS updated_at FROM app.events "
        "WHERE kind = 'electricity'",
    )
    assert _unindexed(database_url, plain) == (
        "the electricity query: follow_by updated_at is not read through an index (each poll "
        "would read all of app.events): create an index on app.events (updated_at), then "
        "start again"
    )
    assert _unindexed(database_url, renamed) == (
        "the electricity query: follow_by updated_at is not read through an index (each poll "
        "would read all of app.events): create an index on app.events (changed), then start "
        "again"
    )
    execute(database_url, "CREATE INDEX ON app.events (updated_at)")
    assert _unindexed(database_url, plain) is None
    assert _unindexed(database_url, renamed) is not None  # its column has none yet
    execute(database_url, "CREATE INDEX ON app.events (changed)")
    assert _unindexed(database_url, renamed) is None
