"""The schema remembers its sources (issue 23, item 2).

``ops.admin init --sources FILE`` stores the file (its text and sha256) in the pipeline's
schema. A run, ``ops.status``, ``audit.verify`` and ``audit.restate`` without ``--sources`` then
read the application's tables, never the pipeline's own (empty) ones: a forgotten file no
longer retires every result. Another file is refused in one line until ``ops.admin
set-sources`` changes it on purpose, recording the old and the new. Every run records the
sources' sha256 and the options that change numbers, and ``verify`` recomputes with them.
"""

from __future__ import annotations

import datetime
import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg2.extras
import pytest
import sqlalchemy as sa

from audit import restate, verify
from ops import admin, local, status
from pipeline import editions, follow, run
from pipeline.factors import load_shipped_factors
from pipeline.methodology import FactorBook, calculate
from pipeline.model import AirTravelActivity, ElectricityActivity, Limits
from pipeline.store import connections, sources, tables

SOURCES = """
[electricity]
table = "app.meters"
[electricity.fields]
quantity = "kwh"
unit = { value = "kWh" }
region = "grid"
activity_date = "day"

[air_travel]
table = "app.flights"
[air_travel.fields]
origin = "dep"
destination = "arr"
cabin_class = "cabin"
passengers = "pax"
return_trip = "back"
activity_date = "day"
"""
#: Meter readings: 30 in CAMX, one of 5e12 kWh (above the default bound of 1e12 kWh), one
#: with no quantity (a dead letter).
METERS = [
    *((i, 1000.0 + 37.5 * i, "CAMX", datetime.date(2024, 1 + i % 12, 3)) for i in range(1, 31)),
    (31, 5e12, "CAMX", datetime.date(2024, 6, 1)),
    (32, None, "CAMX", datetime.date(2024, 6, 1)),
]
ROUTES = [("LHR", "JFK"), ("SFO", "NRT"), ("CDG", "FRA"), ("LAX", "ORD")]
CABINS = ["economy", "business", "premium_economy", "first"]
FLIGHTS = [
    (i, *ROUTES[i % 4], CABINS[i % 4], 1 + i % 3, i % 2 == 0, datetime.date(2024, 1 + i % 12, 9))
    for i in range(1, 21)
]
#: The activities the run computes with the default bounds, and with --max-kwh 1e13.
RESULTS, RESULTS_LOOSE = 30 + 20, 31 + 20


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


@pytest.fixture
def app(empty_database: str, tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A database with the application's tables (``app``) and a sources file for them."""
    conn = connections.connect(empty_database)
    with conn.cursor() as cur:
        cur.execute(
            "CREATE SCHEMA app; "
            "CREATE TABLE app.meters (id bigint PRIMARY KEY, kwh float8, grid text, day date, "
            "seq bigserial); CREATE INDEX ON app.meters (seq); "
            "CREATE TABLE app.flights (id bigint PRIMARY KEY, dep text, arr text, cabin text, "
            "pax int, back boolean, day date)"
        )
        psycopg2.extras.execute_values(cur, "INSERT INTO app.meters VALUES %s", METERS)
        psycopg2.extras.execute_values(cur, "INSERT INTO app.flights VALUES %s", FLIGHTS)
    conn.commit()
    conn.close()
    path = tmp_path / "sources.toml"
    path.write_text(SOURCES)
    yield empty_database, path


def expected_kg(radiative_forcing: bool = True, limits: Limits | None = None) -> float:
    """The kg CO2e of the application's activities, computed here, one by one."""
    book = FactorBook.from_rows(editions.choose_factor_rows(load_shipped_factors(), {}))
    total, limits = 0.0, limits or Limits()
    for i, kwh, grid, day in METERS:
        if kwh is None or kwh > limits.max_kwh:
            continue
        meter = ElectricityActivity(i, kwh, "kWh", grid, None, day)
        total += calculate(meter, book, limits=limits).kg_co2e
    for f in FLIGHTS:
        flight = AirTravelActivity(*f)
        total += calculate(flight, book, radiative_forcing=radiative_forcing).kg_co2e
    return total


def one(url: str, query: str, *params: Any) -> Any:
    engine = connections.make_engine(url, poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as conn:
            return conn.execute(sa.text(query), {f"p{i}": p for i, p in enumerate(params)}).first()
    finally:
        engine.dispose()


def results(url: str) -> tuple[int, float, int]:
    """Results, their kg CO2e, and rows in history (a retired or replaced result)."""
    count, kg = one(url, "SELECT count(*), sum(kg_co2e) FROM emissions.emission_results")
    (history,) = one(url, "SELECT count(*) FROM emissions.emission_results_history")
    return int(count), float(kg or 0), int(history)


def run_pipeline(url: str, capsys: pytest.CaptureFixture[str], *extra: str) -> dict[str, Any]:
    code = run.main(["--database-url", url, "--progress-interval", "0", *extra])
    out = capsys.readouterr()
    assert code == 0, out.err
    return json.loads(out.out[out.out.index("{") :])


def init(url: str, capsys: pytest.CaptureFixture[str], *extra: str) -> dict[str, Any]:
    assert admin.main(["init", "--database-url", url, *extra]) == 0
    out = capsys.readouterr().out
    return json.loads(out[out.index("{") :])


def test_a_run_without_sources_reads_the_sources_init_stored(
    app: tuple[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    url, path = app
    outcome = init(url, capsys, "--sources", str(path))
    assert outcome["sources_sha256"] == sha(SOURCES)
    stored = one(url, "SELECT sha256, text, previous_sha256 FROM emissions.sources_config")
    assert tuple(stored) == (sha(SOURCES), SOURCES, None)

    summary = run_pipeline(url, capsys)  # no --sources, no $EMISSIONS_SOURCES
    assert summary["sources"] == {"electricity": "app.meters", "air_travel": "app.flights"}
    assert summary["sources_sha256"] == sha(SOURCES)
    count, kg, history = results(url)
    assert (count, history) == (RESULTS, 0)
    assert kg == pytest.approx(expected_kg(), rel=1e-12)
    assert summary["errors"] == 2  # the 5e12 kWh reading and the one with no quantity

    again = run_pipeline(url, capsys)
    assert again["pending"] == 0
    assert results(url) == (count, kg, 0)  # nothing retired
    (open_errors,) = one(
        url, "SELECT count(*) FROM emissions.emission_errors WHERE retired_at IS NULL"
    )
    assert open_errors == 2


def test_a_different_file_is_refused_until_set_sources_changes_it(
    app: tuple[str, Path],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    url, path = app
    init(url, capsys, "--sources", str(path))
    other = tmp_path / "other.toml"
    text = SOURCES.replace('region = "grid"', 'region = { value = "CAMX" }')
    other.write_text(text)
    line = (
        f"error: the sources given (sha256 {sha(text)[:12]}…) differ from the schema's "
        f"({sha(SOURCES)[:12]}…): run `ops.admin set-sources --sources FILE` to change them "
        "on purpose\n"
    )
    assert run.main(["--database-url", url, "--sources", str(other)]) == 2
    assert capsys.readouterr().err == line
    monkeypatch.setenv("EMISSIONS_SOURCES", str(other))
    assert run.main(["--database-url", url]) == 2
    assert capsys.readouterr().err == line
    assert status.main(["--database-url", url]) == 2
    assert capsys.readouterr().err == line
    assert admin.main(["init", "--database-url", url]) == 2  # init never changes them
    assert capsys.readouterr().err == line
    # The two refused runs are recorded from their first statement: failed, with the line.
    (runs,) = one(
        url,
        "SELECT array_agg(status || ': ' || message) FROM emissions.calculation_runs "
        "WHERE runner IS NOT NULL",
    )
    assert runs == [f"failed: {line.removeprefix('error: ').strip()}"] * 2

    assert admin.main(["check-sources", "--database-url", url]) == 0  # a new file is checked
    assert json.loads(capsys.readouterr().out)["electricity"]["source"] == "app.meters"
    assert admin.main(["set-sources", "--database-url", url]) == 0
    changed = json.loads(capsys.readouterr().out)
    assert changed["changed"] is True
    assert (changed["previous_sha256"], changed["sha256"]) == (sha(SOURCES), sha(text))
    rows = one(
        url,
        "SELECT array_agg(sha256 ORDER BY id), array_agg(previous_sha256 ORDER BY id), "
        "bool_and(changed_by = current_user) FROM emissions.sources_config",
    )
    assert tuple(rows) == ([sha(SOURCES), sha(text)], [None, sha(SOURCES)], True)
    summary = run_pipeline(url, capsys)
    assert summary["sources_sha256"] == sha(text)
    monkeypatch.delenv("EMISSIONS_SOURCES")
    assert run_pipeline(url, capsys)["pending"] == 0  # the stored file, now the new one
    assert run.main(["--database-url", url, "--sources", str(path)]) == 2
    assert "differ from the schema's" in capsys.readouterr().err


def test_status_without_the_file_counts_what_the_stored_sources_hold(
    app: tuple[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    url, path = app
    init(url, capsys, "--sources", str(path))
    assert status.main(["--database-url", url, "--json"]) == status.BEHIND
    report = json.loads(capsys.readouterr().out)
    assert report["pending"] == {"electricity": len(METERS), "air_travel": len(FLIGHTS)}
    assert report["pending_total"] == 52


def test_a_run_records_its_sources_and_the_options_that_change_numbers(
    app: tuple[str, Path],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    url, path = app
    init(url, capsys, "--sources", str(path))
    monkeypatch.chdir(path.parent)
    monkeypatch.setenv("EMISSIONS_SOURCES", path.name)  # relative, by the environment
    summary = run_pipeline(
        url,
        capsys,
        "--no-radiative-forcing",
        "--max-kwh",
        "1e13",
        "--max-passengers",
        "9",
        "--factor-edition",
        "desnz_air=2025 flat file",
    )
    sources_sha, options, given = one(
        url,
        "SELECT sources_sha256, calculation_options, options->>'sources' "
        "FROM emissions.calculation_runs WHERE run_id = :p0",
        summary["run_id"],
    )
    assert sources_sha == sha(SOURCES)
    assert given == str(path.resolve())
    # The time zone of each source, where the sources say one (UTC by default).
    assert options.pop("time_zones") == {"air_travel": "UTC", "electricity": "UTC"}
    assert options == {
        "radiative_forcing": False,
        "limits": {
            "max_kwh": 1e13,
            "max_spend_usd": 1e11,
            "max_passengers": 9,
            "max_distance_km": 20037.5,
        },
        "factor_pins": {"desnz_air": "2025 flat file"},
        "sources": {"sha256": sha(SOURCES), "from": "file", "file": str(path.resolve())},
    }


def test_verify_and_restate_use_the_options_the_run_recorded(
    app: tuple[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    url, path = app
    init(url, capsys, "--sources", str(path))
    run_pipeline(url, capsys, "--no-radiative-forcing", "--max-kwh", "1e13")
    count, kg, _ = results(url)
    assert count == RESULTS_LOOSE
    assert kg == pytest.approx(expected_kg(False, Limits(max_kwh=1e13)), rel=1e-12)

    assert verify.main(["--database-url", url, "--all"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert (report["examined"], report["not_reproduced"]) == (RESULTS_LOOSE, 0)

    assert restate.main(["--database-url", url]) == 0
    outcome = json.loads(capsys.readouterr().out)
    assert (outcome["examined"], outcome["changed"], outcome["refused"]) == (RESULTS_LOOSE, 0, 0)
    options = one(
        url,
        "SELECT sources_sha256, calculation_options FROM emissions.calculation_runs "
        "WHERE run_id = :p0",
        outcome["restatement_id"],
    )
    assert options[0] == sha(SOURCES)
    assert options[1]["limits"]["max_kwh"] == 1e13


def test_a_schema_that_stores_none_never_falls_back_after_a_run_read_a_file(
    app: tuple[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """Initialised without a file (as before revision 0005), a schema stores no sources: a
    run given the file reads it, and a run given none afterwards is refused instead of
    retiring every result; set-sources stores the file, and runs without it then read it."""
    url, path = app
    init(url, capsys)
    first = run_pipeline(url, capsys, "--sources", str(path))
    assert results(url)[0] == RESULTS
    assert run.main(["--database-url", url]) == 2
    assert capsys.readouterr().err == (
        "error: no sources file is given and the schema stores none, but run "
        f"{first['run_id']} read one (sha256 {sha(SOURCES)[:12]}…): store it with "
        "`ops.admin set-sources --sources FILE`\n"
    )
    assert results(url) == (RESULTS, pytest.approx(expected_kg(), rel=1e-12), 0)
    assert admin.main(["set-sources", "--database-url", url, "--sources", str(path)]) == 0
    assert json.loads(capsys.readouterr().out)["previous_sha256"] is None
    assert run_pipeline(url, capsys)["pending"] == 0
    assert results(url)[::2] == (RESULTS, 0)


def test_follow_without_a_file_follows_the_stored_sources(
    app: tuple[str, Path], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    url, path = app
    followed = tmp_path / "followed.toml"
    text = SOURCES.replace('table = "app.meters"', 'table = "app.meters"\nfollow_by = "seq"')
    followed.write_text(text)
    init(url, capsys, "--sources", str(followed))
    assert follow.main(["--database-url", url, "--sources", str(path)]) == 2
    assert "differ from the schema's" in capsys.readouterr().err
    argv = ["--database-url", url, "--activity-types", "electricity", "--poll-interval", "0.5"]
    assert follow.main([*argv, "--stop-after", "4", "--progress-interval", "0"]) == 0
    out = capsys.readouterr().out
    assert json.loads(out[out.index("{") :])["total_processed"] == 30
    (count,) = one(url, "SELECT count(*) FROM emissions.emission_results")
    assert count == 30
    (recorded,) = one(
        url,
        "SELECT sources_sha256 FROM emissions.calculation_runs WHERE runner IS NOT NULL "
        "AND status = 'succeeded'",
    )
    assert recorded == sha(text)


def test_run_local_with_a_file_stores_it_as_init_does(
    app: tuple[str, Path], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    url, path = app
    # ops.local hands the database, schema and sources to the run through the environment:
    # put back what was there after the test, so that later tests do not inherit them.
    for name in (connections.DATABASE_URL_ENV, tables.SCHEMA_ENV, sources.SOURCES_ENV):
        monkeypatch.setenv(name, "")
        monkeypatch.delenv(name)
    assert (
        local.main(["--database-url", url, "--sources", str(path), "--progress-interval", "0"]) == 0
    )
    capsys.readouterr()
    assert tuple(one(url, "SELECT count(*), min(sha256) FROM emissions.sources_config")) == (
        1,
        sha(SOURCES),
    )
    assert results(url)[0] == RESULTS
    summary = run_pipeline(url, capsys)  # no file: the stored one
    assert (summary["pending"], summary["sources_sha256"]) == (0, sha(SOURCES))
    assert results(url)[::2] == (RESULTS, 0)
