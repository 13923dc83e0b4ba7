"""Scope 2 market-based (issue 25, item 1): the team's instruments as data it has, mapped in
the sources file beside its activities (a table or query per kind: certificates, contracts,
supplier rates) and checked by ``check-sources`` like them, read-only; electricity gains the
optional ``facility`` and ``supplier`` fields, which are not the location-based input."""

from __future__ import annotations

import datetime
import json
from pathlib import Path

import pytest

from ops import admin
from pipeline.store import connections, sources
from pipeline.store.checks import check_instruments
from pipeline.store.sources import SourcesError, load_instruments, load_sources, relation
from tests.support import execute, scalar

APP = """
CREATE SCHEMA app;
CREATE TABLE app.touched (at timestamptz NOT NULL DEFAULT clock_timestamp());
CREATE FUNCTION app.touch() RETURNS boolean LANGUAGE plpgsql AS
$$ BEGIN INSERT INTO app.touched DEFAULT VALUES; RETURN true; END $$;
CREATE TABLE app.power (id bigint PRIMARY KEY, kwh float8, region text, used_on date,
                        site text, tariff text);
INSERT INTO app.power VALUES (1, 1000000, 'RFCE', '2024-03-01', 'plant-a', 'GreenFix');
CREATE TABLE app.certs (cert_id text PRIMARY KEY, mwh numeric, fuel text, gen_from date,
                        gen_to date, country text, retired_as text, for_site text);
INSERT INTO app.certs VALUES
  ('GO-1', 600, 'wind', '2024-01-01', '2024-12-31', 'RFCE', 'R-778', 'plant-a'),
  ('GO-2', 50, 'solar', '2024-01-01', '2024-06-30', 'DE', 'R-779', NULL);
CREATE TABLE app.ppas (id bigint PRIMARY KEY, delivered_mwh float8, month date,
                       kg_per_kwh float8, grid text, v integer NOT NULL DEFAULT 1);
INSERT INTO app.ppas VALUES (7, 120.5, '2024-05-01', 0, 'RFCE', 1);
CREATE TABLE app.tariffs (id integer PRIMARY KEY, name text, year integer, rate float8,
                          net_of_sold boolean);
INSERT INTO app.tariffs VALUES (3, 'GreenFix', 2024, 0.21, true);
"""

ELECTRICITY = """
[electricity]
table = "app.power"
[electricity.fields]
quantity = "kwh"
unit = { value = "kWh" }
region = "region"
activity_date = "used_on"
facility = "site"
supplier = "tariff"
"""
CERTIFICATES = """
[certificates]
table = "app.certs"
key = "cert_id"
[certificates.fields]
mwh = "mwh"
energy_source = "fuel"
vintage_start = "gen_from"
vintage_end = "gen_to"
market = "country"
retirement_id = "retired_as"
facility = "for_site"
"""
CONTRACTS = """
[contracts]
query = "SELECT id, delivered_mwh, month, kg_per_kwh, grid, v FROM app.ppas"
version = "v"
[contracts.fields]
mwh = "delivered_mwh"
period_start = "month"
period_end = { sql = "(month + interval '1 month' - interval '1 day')::date" }
emission_rate = "kg_per_kwh"
market = "grid"
"""
SUPPLIER_RATES = """
[supplier_rates]
table = "app.tariffs"
[supplier_rates.fields]
supplier = "name"
year = "year"
kg_co2e_per_kwh = "rate"
accounts_for_sold_instruments = "net_of_sold"
"""
ALL = ELECTRICITY + CERTIFICATES + CONTRACTS + SUPPLIER_RATES


@pytest.fixture
def app_url(database_url: str) -> str:
    execute(database_url, APP)
    return database_url


def written(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "sources.toml"
    path.write_text(text, encoding="utf-8")
    return path


def read(url: str, source: sources.Source) -> list[tuple[object, ...]]:
    conn = connections.connect(url)
    try:
        with conn.cursor() as cur:
            cur.execute(relation(source) + sources.sql.SQL(" ORDER BY 1"))
            return [tuple(r) for r in cur.fetchall()]
    finally:
        conn.close()


def test_check_sources_checks_a_real_table_or_query_per_kind_of_instrument(
    app_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = written(tmp_path, ALL)
    code = admin.main(["check-sources", "--database-url", app_url, "--sources", str(path)])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert json.loads(out) == {
        "electricity": {
            "source": "app.power",
            "key": "id",
            "key_type": "bigint",
            "version": "xmin",
        },
        "certificates": {
            "source": "app.certs",
            "key": "cert_id",
            "key_type": "text",
            "version": "xmin",
        },
        "contracts": {
            "source": "the contracts query",
            "key": "id",
            "key_type": "bigint",
            "version": "v",
        },
        "supplier_rates": {
            "source": "app.tariffs",
            "key": "id",
            "key_type": "bigint",
            "version": "xmin",
        },
    }
    conn = connections.connect(app_url)
    try:
        checked = check_instruments(conn, load_instruments(path))
    finally:
        conn.close()
    # Each kind reads as the methodology's record: the values, typed, one row per instrument.
    (go1, go2) = [r[:-1] for r in read(app_url, checked["certificates"])]
    year = (datetime.date(2024, 1, 1), datetime.date(2024, 12, 31))
    assert go1 == ("GO-1", 600.0, "wind", *year, "RFCE", "R-778", "plant-a", None)
    assert go2[-2:] == (None, None)  # no facility; the emission rate is not mapped: NULL
    (ppa,) = [r[:-1] for r in read(app_url, checked["contracts"])]
    may = (datetime.date(2024, 5, 1), datetime.date(2024, 5, 31))
    assert ppa == (7, 120.5, *may, 0.0, "RFCE", None)
    (rate,) = [r[:-1] for r in read(app_url, checked["supplier_rates"])]
    assert rate == (3, "GreenFix", 2024, 0.21, True)


def test_facility_and_supplier_are_read_beside_the_location_based_input_not_in_it(
    tmp_path: Path,
) -> None:
    (electricity,) = load_sources(written(tmp_path, ALL)).values()
    assert [n for n, _ in electricity.market_fields] == ["facility", "supplier"]
    assert [(f.column) for _, f in electricity.market_fields] == ["site", "tariff"]
    assert "site" not in repr(relation(electricity))  # fingerprints and results unchanged
    assert "facility" not in dict(electricity.fields)


def test_every_problem_of_the_instruments_mapping_is_named_at_once(tmp_path: Path) -> None:
    text = (
        ELECTRICITY
        + CERTIFICATES.replace('retirement_id = "retired_as"\n', "")
        + CONTRACTS.replace('emission_rate = "kg_per_kwh"\n', 'colour = "grid"\n')
        + "[guarantees]\ntable = 'app.certs'\n"
    )
    with pytest.raises(SourcesError) as raised:
        load_sources(written(tmp_path, text))
    assert raised.value.problems == [
        "[guarantees]: not an activity type (electricity, spend, air_travel) or a kind of "
        "instrument (certificates, contracts, supplier_rates)",
        "[certificates].fields.retirement_id: missing (the methodology needs it)",
        "[contracts].fields.colour: not a field of contracts (mwh, period_start, period_end, "
        "emission_rate, market, facility)",
        "[contracts].fields.emission_rate: missing (the methodology needs it)",
    ]


def test_check_sources_names_each_unusable_instrument_column_and_writes_nothing(
    app_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = (
        ELECTRICITY.replace('facility = "site"', 'facility = "plant"')
        + CERTIFICATES.replace('mwh = "mwh"', 'mwh = "fuel"')
        + CONTRACTS.replace(
            'market = "grid"', 'market = { sql = "CASE WHEN app.touch() THEN grid END" }'
        )
        + SUPPLIER_RATES.replace("app.tariffs", "app.tarifs")
    )
    code = admin.main(
        ["check-sources", "--database-url", app_url, "--sources", str(written(tmp_path, text))]
    )
    err = capsys.readouterr().err
    assert code == 2
    problems = [line for line in err.splitlines() if line.startswith("  - ")]
    assert problems[0] == (
        "  - electricity: app.power: facility reads column plant, which it does not have"
    )
    assert problems[1].startswith(
        "  - certificates: app.certs: mwh reads fuel, which is text; it needs one of"
    )
    assert problems[2].startswith(
        "  - contracts: the contracts query: market = expression 'CASE WHEN app.touch() THEN "
        "grid END' writes to the database"
    )
    assert problems[3] == (
        "  - supplier_rates: app.tarifs does not exist (or this role cannot see its schema)"
    )
    assert len(problems) == 4, err
    assert scalar(app_url, "SELECT count(*) FROM app.touched") == 0


def test_check_sources_without_a_file_checks_the_stored_sources_instruments(
    app_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = written(tmp_path, ALL)
    assert admin.main(["set-sources", "--database-url", app_url, "--sources", str(path)]) == 0
    capsys.readouterr()
    assert admin.main(["check-sources", "--database-url", app_url]) == 0
    assert set(json.loads(capsys.readouterr().out)) == {
        "electricity",
        "certificates",
        "contracts",
        "supplier_rates",
    }
