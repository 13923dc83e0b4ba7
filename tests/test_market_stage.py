"""Scope 2 market-based, stored by a real run (issue 25, "Done when", through the Beam stage):
the run computes the location-based results, then allocates the sources' instruments by
market boundary and stores each line with what it used (``market_based_results``); refused
instruments are dead letters of their own (``market_based_refused``); a change of
instruments reallocates the year and market it touches, the superseded lines kept in
history with a reason, and a rerun with nothing changed writes nothing. Figures by hand:
1,000 MWh in eGRID RFCE in 2024, certificates of 600 MWh → 400,000 kWh × 0.5 kg/kWh."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from audit import verify
from ops import admin
from pipeline import run
from pipeline.store import connections, market_results
from tests.support import execute, scalar, start_run, wait_for
from tests.test_instruments import CERTIFICATES, ELECTRICITY

APP = """
CREATE SCHEMA app;
CREATE TABLE app.power (id bigint PRIMARY KEY, kwh float8, region text, used_on date,
                        site text, tariff text);
CREATE TABLE app.certs (cert_id text PRIMARY KEY, mwh float8, fuel text, gen_from date,
                        gen_to date, country text, retired_as text, for_site text);
"""
#: The electricity and certificates of test_instruments' sources file.
SOURCES = ELECTRICITY + CERTIFICATES
RESIDUAL = "market,year,kg_co2e_per_kwh,source,edition\nRFCE,2024,0.5,Test mixes,test 2025\n"
LINES = (
    "SELECT activity_id, basis, instrument_id, kwh, kg_co2e, grid_fallback "
    "FROM emissions.market_based_results ORDER BY activity_id, line"
)


@pytest.fixture
def app(database_url: str, tmp_path: Path) -> tuple[str, Path]:
    execute(database_url, APP)
    path = tmp_path / "sources.toml"
    path.write_text(SOURCES)
    return database_url, path


def rows(url: str, query: str) -> list[tuple[Any, ...]]:
    conn = connections.connect(url)
    try:
        with conn.cursor() as cur:
            cur.execute(query)
            return [tuple(r) for r in cur.fetchall()]
    finally:
        conn.close()


def calculate(url: str, sources: Path, capsys: pytest.CaptureFixture[str], *more: str) -> Any:
    argv = ["--database-url", url, "--sources", str(sources), "--progress-interval", "0"]
    code = run.main([*argv, *more])
    out, err = capsys.readouterr()
    assert code == 0, err
    return json.loads(out)["market_based"]


def load_residual(url: str, sources: Path, tmp_path: Path) -> None:
    mixes = tmp_path / "residual.csv"
    mixes.write_text(RESIDUAL)
    load = ["load-factors", "--database-url", url, "--sources", str(sources)]
    assert admin.main([*load, "--kind", "residual_mix", "--file", str(mixes)]) == 0


def test_certificates_then_the_residual_mix_stored_with_what_each_line_used(
    app: tuple[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url, sources = app
    execute(url, "INSERT INTO app.power VALUES (1, 1000000, 'RFCE', '2024-03-01', 'a', NULL)")
    execute(
        url,
        "INSERT INTO app.certs VALUES "
        "('GO-1', 600, 'wind', '2024-01-01', '2024-12-31', 'RFCE', 'R-1', 'a'), "
        "('GO-2', 50, 'solar', '2024-01-01', '2024-06-30', 'DE', 'R-2', NULL)",
    )
    # No residual mix: the 400 MWh left are taken at the grid factor, flagged.
    first = calculate(url, sources, capsys)
    grid = scalar(url, "SELECT factor_value FROM emissions.emission_results")
    assert rows(url, LINES) == [
        ("1", "certificate", "GO-1", 600_000.0, 0.0, False),
        ("1", "grid_fallback", None, 400_000.0, 400_000 * grid, True),
    ]
    assert first["lines"] == 2 and first["grid_fallback_kwh"] == 400_000
    # The certificate from another market is refused, a dead letter of its own kind.
    assert rows(
        url,
        "SELECT instrument_kind, instrument_id, boundary, reason_code "
        "FROM emissions.market_based_refused WHERE retired_at IS NULL",
    ) == [("certificates", "GO-2", "DE", "other_market")]
    # A rerun with nothing changed writes nothing.
    again = calculate(url, sources, capsys)
    assert (again["lines"], again["moved"], again["refused"]) == (0, {}, 0)
    assert again["inputs_unchanged_since_run"] == scalar(
        url, "SELECT run_id::text FROM emissions.market_based_results LIMIT 1"
    )

    # A residual mix loaded: the year is reallocated, the old lines kept in history.
    load_residual(url, sources, tmp_path)
    capsys.readouterr()
    third = calculate(url, sources, capsys)
    assert "inputs_unchanged_since_run" not in third  # the residual mixes are inputs too
    assert rows(url, LINES) == [
        ("1", "certificate", "GO-1", 600_000.0, 0.0, False),
        ("1", "residual_mix", None, 400_000.0, 200_000.0, False),
    ]
    assert third["kg_co2e"] == 200_000 and third["moved"] == {"reallocated": 2}
    assert (
        scalar(
            url,
            "SELECT f.edition FROM emissions.market_based_results m JOIN "
            "emissions.emission_factors f ON f.id = m.factor_id WHERE m.basis = 'residual_mix'",
        )
        == "test 2025"
    )

    # A certificate corrected to 500 MWh: reallocated, for a reason of its own.
    execute(url, "UPDATE app.certs SET mwh = 500 WHERE cert_id = 'GO-1'")
    fourth = calculate(url, sources, capsys)
    assert fourth["moved"] == {"instruments_changed": 2}
    assert fourth["kg_co2e"] == 250_000
    assert scalar(url, "SELECT count(*) FROM emissions.market_based_results_history") == 4
    # The wrong-market certificate stays refused (one open dead letter, not one per run).
    assert scalar(url, "SELECT count(*) FROM emissions.market_based_refused") == 1

    # audit.verify replays the stored lines from the stored inputs: they reproduce.
    assert replay(url, sources, capsys) == (0, {"years": 1, "reproduced": 1, "by_status": {}})
    # A certificate retired later, not yet reallocated: named as such.
    execute(url, "UPDATE app.certs SET mwh = 700 WHERE cert_id = 'GO-1'")
    assert replay(url, sources, capsys)[1]["by_status"] == {"instruments_changed": 1}
    calculate(url, sources, capsys)
    assert replay(url, sources, capsys)[0] == 0
    # A stored line altered by hand: not reproduced.
    execute(url, "UPDATE emissions.market_based_results SET kg_co2e = 1 WHERE line = 2")
    assert replay(url, sources, capsys) == (
        1,
        {"years": 1, "reproduced": 0, "by_status": {"not_reproduced": 1}},
    )


def replay(url: str, sources: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, Any]:
    code = verify.main(["--database-url", url, "--sources", str(sources), "--all"])
    found = json.loads(capsys.readouterr().out)["market_based"]
    return code, {k: found[k] for k in ("years", "reproduced", "by_status")}


def test_a_certificate_of_another_market_is_refused_and_its_mwh_taken_at_the_residual_mix(
    app: tuple[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url, sources = app
    load_residual(url, sources, tmp_path)
    execute(url, "INSERT INTO app.power VALUES (1, 1000000, 'RFCE', '2024-03-01', 'a', NULL)")
    execute(
        url,
        "INSERT INTO app.certs VALUES "
        "('GO-1', 600, 'wind', '2024-01-01', '2024-12-31', 'CAMX', 'R-1', NULL)",
    )
    capsys.readouterr()
    done = calculate(url, sources, capsys)
    assert rows(url, LINES) == [("1", "residual_mix", None, 1_000_000.0, 500_000.0, False)]
    assert done["kg_co2e"] == 500_000 and done["refused"] == 1
    assert rows(
        url, "SELECT instrument_id, boundary, reason_code FROM emissions.market_based_refused"
    ) == [("GO-1", "US-WESTERN", "other_market")]
    # Corrected to the right market: the refusal is retired (kept), the year reallocated.
    execute(url, "UPDATE app.certs SET country = 'RFCE' WHERE cert_id = 'GO-1'")
    again = calculate(url, sources, capsys)
    assert again["kg_co2e"] == 200_000 and again["refused_open"] == 0
    assert again["moved"] == {"instruments_changed": 1}
    assert (
        scalar(
            url, "SELECT count(*) FROM emissions.market_based_refused WHERE retired_at IS NOT NULL"
        )
        == 1
    )
    # --market-based off: the stage does not run (the summary has no market_based entry).
    argv = ["--database-url", url, "--sources", str(sources), "--progress-interval", "0"]
    assert run.main([*argv, "--market-based", "off"]) == 0
    assert "market_based" not in json.loads(capsys.readouterr().out)


def test_two_facilities_share_one_pool_never_allocated_twice(
    app: tuple[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url, sources = app
    load_residual(url, sources, tmp_path)
    execute(
        url,
        "INSERT INTO app.power VALUES (1, 1000000, 'RFCE', '2024-03-01', 'a', NULL), "
        "(2, 1000000, 'RFCE', '2024-05-01', 'b', NULL), "
        "(3, 1000000, 'CAMX', '2024-05-01', 'c', NULL)",
    )
    execute(
        url,
        "INSERT INTO app.certs VALUES "
        "('POOL', 1200, 'wind', '2024-01-01', '2024-12-31', 'RFCE', 'R-1', NULL), "
        "('CA-1', 300, 'solar', '2024-01-01', '2024-12-31', 'CAMX', 'R-2', NULL)",
    )
    capsys.readouterr()
    calculate(url, sources, capsys)
    assert rows(url, LINES)[:4] == [
        ("1", "certificate", "POOL", 1_000_000.0, 0.0, False),
        ("2", "certificate", "POOL", 200_000.0, 0.0, False),
        ("2", "residual_mix", None, 800_000.0, 400_000.0, False),
        ("3", "certificate", "CA-1", 300_000.0, 0.0, False),
    ]
    assert (
        scalar(
            url,
            "SELECT sum(kwh) FROM emissions.market_based_results WHERE instrument_id = 'POOL'",
        )
        == 1_200_000
    )
    # No residual mix for CAMX: the grid factor, flagged.
    assert rows(url, LINES)[4][1:3] + rows(url, LINES)[4][5:] == ("grid_fallback", None, True)
    rfce_run = scalar(
        url,
        "SELECT DISTINCT run_id::text FROM emissions.market_based_results "
        "WHERE boundary = 'US-EASTERN'",
    )
    # A change in CAMX reallocates CAMX alone: RFCE's lines are those of the first run.
    execute(url, "UPDATE app.certs SET mwh = 400 WHERE cert_id = 'CA-1'")
    changed = calculate(url, sources, capsys, "--sharing", "facility_first")
    assert changed["moved"] == {"instruments_changed": 2} and changed["lines"] == 2
    assert (
        scalar(
            url,
            "SELECT DISTINCT run_id::text FROM emissions.market_based_results "
            "WHERE boundary = 'US-EASTERN'",
        )
        == rfce_run
    )
    # Pro rata: the pool halved between the two facilities, still 1,200 MWh in all; the
    # choice is stored on every line, so every line of both boundaries is reallocated.
    shared = calculate(url, sources, capsys, "--sharing", "pro_rata")
    assert shared["moved"] == {"reallocated": 5}
    assert rows(
        url,
        "SELECT activity_id, kwh FROM emissions.market_based_results "
        "WHERE instrument_id = 'POOL' ORDER BY 1",
    ) == [("1", 600_000.0), ("2", 600_000.0)]


@pytest.mark.parametrize(
    ("given", "said"),
    [
        (["--vintage-window-years", "11"], "--vintage-window-years must be between 0 and 10"),
        (["--year-start", "13-01"], "--year-start must be MM-DD"),
        (["--sharing", "evenly"], "--sharing"),
    ],
)
def test_the_reporters_choices_are_checked_before_anything_runs(
    given: list[str], said: str, capsys: pytest.CaptureFixture[str]
) -> None:
    url = "postgresql://nobody@127.0.0.1:1/none"
    assert run.main(["--database-url", url, *given]) == 2
    assert said in capsys.readouterr().err


def test_what_other_boundaries_hold_of_an_instrument_is_taken_off_it_first() -> None:
    import datetime

    from pipeline.market_allocation import Boundary, allocate_boundary
    from pipeline.model import Certificate, Consumption
    from pipeline.store.market_results import Choices

    year = (datetime.date(2024, 1, 1), datetime.date(2024, 12, 31))
    pool = Certificate("POOL", 1200, "wind", *year, "RFCE", "R-1", None, None)
    use = [Consumption(1, 1_000_000.0, "RFCE", 2024, 0.4, 9)]
    b = Boundary("RFCE", use, [pool], [], [], [], {}, {"R-1": "POOL"})
    lines, refused = allocate_boundary(b, {("certificates", "POOL"): (1e6, ["CAMX"])}, Choices())
    assert [(x.basis, x.instrument_id, x.kwh) for x in lines] == [
        ("certificate", "POOL", 200_000.0),
        ("grid_fallback", None, 800_000.0),
    ]
    lines, refused = allocate_boundary(b, {("certificates", "POOL"): (1.2e6, ["CAMX"])}, Choices())
    assert [x.basis for x in lines] == ["grid_fallback"]
    assert [(r[1], r[2]) for r in refused] == [("POOL", "over_allocated")]


def test_the_inventory_and_the_report_give_scope_2_both_ways(
    app: tuple[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import csv

    from audit import inventory, report

    url, sources = app
    load_residual(url, sources, tmp_path)
    execute(url, "INSERT INTO app.power VALUES (1, 1000000, 'RFCE', '2024-03-01', 'a', NULL)")
    execute(
        url,
        "INSERT INTO app.certs VALUES "
        "('GO-1', 600, 'wind', '2024-01-01', '2024-12-31', 'RFCE', 'R-1', 'a')",
    )
    capsys.readouterr()
    calculate(url, sources, capsys)
    location = scalar(url, "SELECT kg_co2e FROM emissions.emission_results")
    argv = ["--database-url", url, "--sources", str(sources), "--year", "2024"]
    assert inventory.main([*argv, "--export", str(tmp_path)]) == 0
    found = json.loads(capsys.readouterr().out)
    assert found["scope_2"]["location_based_kg"] == pytest.approx(location, rel=1e-12)
    assert found["scope_2"]["market_based_kg"] == 200_000
    assert found["scope_2"]["market_based_status"] == "computed"
    assert found["scope_2"]["market_based"]["share_specific_kwh"] == 0.6
    with (tmp_path / "esrs_e1_6_2024.csv").open() as f:
        esrs = {r["line"]: r for r in csv.DictReader(f)}
    assert float(esrs["gross_scope_2_market_based"]["kg_co2e"]) == 200_000
    assert esrs["gross_scope_2_market_based"]["status"] == "computed"
    assert float(esrs["total_ghg_market_based"]["kg_co2e"]) == 200_000  # electricity only
    with (tmp_path / "cdp_2024.csv").open() as f:
        cdp = [r for r in csv.DictReader(f) if r["scope2_method"] == "market-based"]
    assert [(float(r["kg_co2e"]), float(r["share_supplier_specific"])) for r in cdp] == [
        (200_000, 0.6)
    ]
    page = tmp_path / "report.html"
    assert report.main(["--database-url", url, "--sources", str(sources), "--out", str(page)]) == 0
    html = page.read_text()
    assert "market-based, at the rates of the certificates" in html
    assert 'data-figure="scope2-both" data-year="2024"' in html
    assert 'data-market-kg="200000.0"' in html


#: Scope 2 market-based of 2024 over the demo data, computed independently of the pipeline's
#: allocation: per market, its kWh less the 2024 certificates retired for it (at most its
#: kWh), at the market's residual mix; where none is loaded, the location-based kg (the grid
#: fallback). The demo's certificates are all in markets with a residual mix.
INDEPENDENT_2024 = """
WITH e AS (
  SELECT upper(trim(a.region)) AS m, r.activity_amount AS kwh, r.kg_co2e AS kg
  FROM emissions.emission_results r
  JOIN emissions.electricity_activities a ON a.id = r.activity_id
  WHERE r.activity_type = 'electricity'
    AND a.activity_date >= '2024-01-01' AND a.activity_date < '2025-01-01'),
c AS (SELECT m, sum(kwh) AS kwh, sum(kg) AS kg FROM e GROUP BY m),
k AS (SELECT upper(market) AS m, sum(mwh) * 1000 AS kwh FROM emissions.instrument_certificates
      WHERE retirement_id IS NOT NULL AND vintage_start <= '2024-12-31'
        AND vintage_end >= '2024-01-01' GROUP BY 1),
rm AS (SELECT key AS m, value FROM emissions.emission_factors
       WHERE factor_set = 'residual_mix' AND year = 2024)
SELECT sum(CASE WHEN rm.value IS NULL THEN c.kg
                ELSE (c.kwh - least(c.kwh, coalesce(k.kwh, 0))) * rm.value END)
FROM c LEFT JOIN k USING (m) LEFT JOIN rm USING (m)
"""


def test_the_demo_data_inventory_matches_an_independent_sql_computation(
    database_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from audit import inventory
    from ops import seed

    url = database_url
    assert seed.main(["--database-url", url, "--count", "3000"]) == 0
    seeded = json.loads(capsys.readouterr().out)["seeded"]
    assert (seeded["certificates"], seeded["supplier_rates"]) == (3, 1)
    assert run.main(["--database-url", url, "--progress-interval", "0"]) == 0
    summary = json.loads(capsys.readouterr().out)["market_based"]
    assert summary["lines"] > 0 and summary["refused_open"] == 1
    assert rows(
        url,
        "SELECT instrument_id, reason_code FROM emissions.market_based_refused "
        "WHERE retired_at IS NULL",
    ) == [("DEMO-REC-UNRETIRED", "not_retired")]
    assert inventory.main(["--database-url", url, "--year", "2024"]) == 0
    found = json.loads(capsys.readouterr().out)["scope_2"]
    expected = float(scalar(url, INDEPENDENT_2024))
    assert found["market_based_status"] == "computed"
    assert found["market_based_kg"] == pytest.approx(expected, rel=1e-9)
    assert found["market_based"]["by_basis"]["certificate"]["kwh"] == float(
        scalar(
            url,
            "SELECT sum(kwh) FROM emissions.market_based_results "
            "WHERE basis = 'certificate' AND reporting_year = 2024",
        )
    )
    # The certificates used no more than their MWh, and reproduce.
    assert (
        scalar(
            url,
            "SELECT count(*) FROM (SELECT instrument_id, sum(kwh) s FROM "
            "emissions.market_based_results WHERE instrument_id IS NOT NULL GROUP BY 1) u "
            "JOIN emissions.instrument_certificates c ON c.id = u.instrument_id "
            "WHERE u.s > c.mwh * 1000",
        )
        == 0
    )
    assert verify.main(["--database-url", url, "--sample", "10"]) == 0


def test_a_us_certificate_may_name_the_interconnect_of_the_subregions_it_serves(
    app: tuple[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url, sources = app
    execute(
        url,
        "INSERT INTO app.power VALUES (1, 1000000, 'RFCE', '2024-03-01', 'a', NULL), "
        "(2, 1000000, 'SRSO', '2024-05-01', 'b', NULL)",
    )
    execute(
        url,
        "INSERT INTO app.certs VALUES "
        "('EAST', 1500, 'wind', '2024-01-01', '2024-12-31', 'Eastern', 'R-1', NULL), "
        "('PJM', 300, 'solar', '2024-01-01', '2024-12-31', 'RFCE', 'R-2', NULL), "
        "('WEST', 100, 'solar', '2024-01-01', '2024-12-31', 'WESTERN', 'R-3', NULL)",
    )
    calculate(url, sources, capsys)
    # The subregion's own certificate first, then the interconnect's, over both subregions.
    assert rows(
        url,
        "SELECT boundary, market, activity_id, basis, instrument_id, kwh "
        "FROM emissions.market_based_results ORDER BY activity_id, line",
    ) == [
        ("US-EASTERN", "RFCE", "1", "certificate", "PJM", 300_000.0),
        ("US-EASTERN", "RFCE", "1", "certificate", "EAST", 700_000.0),
        ("US-EASTERN", "SRSO", "2", "certificate", "EAST", 800_000.0),
        ("US-EASTERN", "SRSO", "2", "grid_fallback", None, 200_000.0),
    ]
    # The Western interconnect has no consumption: refused.
    assert rows(
        url,
        "SELECT instrument_id, boundary, reason_code FROM emissions.market_based_refused",
    ) == [("WEST", "US-WESTERN", "other_market")]


def one_facility(
    app: tuple[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> tuple[str, Path]:
    """1,000 MWh in RFCE in 2024, a 600 MWh certificate for it, the residual mix loaded."""
    url, sources = app
    execute(url, "INSERT INTO app.power VALUES (1, 1000000, 'RFCE', '2024-03-01', 'a', NULL)")
    execute(
        url,
        "INSERT INTO app.certs VALUES "
        "('GO-1', 600, 'wind', '2024-01-01', '2024-12-31', 'RFCE', 'R-1', 'a')",
    )
    load_residual(url, sources, tmp_path)
    capsys.readouterr()
    return url, sources


def test_a_run_skips_the_allocation_only_while_nothing_it_reads_has_changed(
    app: tuple[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The stage is skipped when the digest of its inputs (consumption with its results,
    instruments, residual mixes, choices, code) equals that of the last complete allocation:
    every change of one of them allocates again, and --recheck always does."""
    url, sources = one_facility(app, tmp_path, capsys)
    first = calculate(url, sources, capsys)
    assert first["lines"] == 2 and first["kg_co2e"] == 200_000
    assert "inputs_unchanged_since_run" in calculate(url, sources, capsys)

    # The consumption corrected (a new location-based result): allocated again.
    execute(url, "UPDATE app.power SET kwh = 800000 WHERE id = 1")
    changed = calculate(url, sources, capsys)
    assert "inputs_unchanged_since_run" not in changed
    assert changed["moved"] == {"consumption_changed": 2} and changed["kg_co2e"] == 100_000
    # A facility or supplier changed is an input too, though no result changes.
    execute(url, "UPDATE app.power SET tariff = 'green' WHERE id = 1")
    assert "inputs_unchanged_since_run" not in calculate(url, sources, capsys)
    assert "inputs_unchanged_since_run" in calculate(url, sources, capsys)
    # Another choice of the reporter's: allocated again; --recheck: always.
    wider = calculate(url, sources, capsys, "--vintage-window-years", "1")
    assert "inputs_unchanged_since_run" not in wider
    assert "inputs_unchanged_since_run" in calculate(
        url, sources, capsys, "--vintage-window-years", "1"
    )
    forced = calculate(url, sources, capsys, "--vintage-window-years", "1", "--recheck")
    assert "inputs_unchanged_since_run" not in forced and forced["lines"] == 0
    assert scalar(url, "SELECT sum(kg_co2e) FROM emissions.market_based_results") == 100_000


def test_an_allocation_cut_short_leaves_no_digest_to_skip_by(
    app: tuple[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A stage that fails part-way may have written some boundaries only: the digest of the
    last complete allocation is gone from the moment it starts, so the next run allocates,
    even when the inputs are back to what that allocation read."""
    url, sources = one_facility(app, tmp_path, capsys)
    assert calculate(url, sources, capsys)["kg_co2e"] == 200_000
    digest = "SELECT count(*) FROM emissions.market_based_inputs"
    assert scalar(url, digest) == 1
    # A certificate the stage cannot store (the test's constraint): the run fails in the stage.
    execute(
        url,
        "ALTER TABLE emissions.market_based_results ADD CONSTRAINT test_refuses "
        "CHECK (instrument_id IS DISTINCT FROM 'GO-9'); "
        "INSERT INTO app.certs VALUES "
        "('GO-9', 100, 'wind', '2024-01-01', '2024-12-31', 'RFCE', 'R-9', 'a')",
    )
    argv = ["--database-url", url, "--sources", str(sources), "--progress-interval", "0"]
    assert run.main(argv) == 1
    capsys.readouterr()
    assert scalar(url, digest) == 0
    # The inputs as the last complete allocation read them: allocated again all the same.
    execute(
        url,
        "DELETE FROM app.certs WHERE cert_id = 'GO-9'; "
        "ALTER TABLE emissions.market_based_results DROP CONSTRAINT test_refuses",
    )
    again = calculate(url, sources, capsys)
    assert "inputs_unchanged_since_run" not in again and again["kg_co2e"] == 200_000
    assert scalar(url, digest) == 1


def test_a_certificate_whose_market_is_corrected_moves_to_its_new_boundary_whole(
    app: tuple[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Its old boundary's stored lines still hold it when the run allocates the new one: they
    are this run's to rewrite, not another's claim. Moved one way, then back (the runner
    allocates the two boundaries in its own order: one of the two ways has the new boundary
    first)."""
    url, sources = app
    load_residual(url, sources, tmp_path)
    execute(
        url,
        "INSERT INTO app.power VALUES (1, 1000000, 'RFCE', '2024-03-01', 'a', NULL), "
        "(3, 500000, 'CAMX', '2024-03-01', 'c', NULL)",
    )
    execute(
        url,
        "INSERT INTO app.certs VALUES "
        "('MOVER', 300, 'wind', '2024-01-01', '2024-12-31', 'CAMX', 'R-9', NULL)",
    )
    held = (
        "SELECT boundary, activity_id, kwh FROM emissions.market_based_results "
        "WHERE instrument_id = 'MOVER'"
    )
    refused = "SELECT count(*) FROM emissions.market_based_refused WHERE retired_at IS NULL"
    capsys.readouterr()
    calculate(url, sources, capsys)
    assert rows(url, held) == [("US-WESTERN", "3", 300_000.0)]
    for market, where, used in (("RFCE", "US-EASTERN", "1"), ("CAMX", "US-WESTERN", "3")):
        execute(url, f"UPDATE app.certs SET country = '{market}' WHERE cert_id = 'MOVER'")
        calculate(url, sources, capsys)
        assert rows(url, held) == [(where, used, 300_000.0)], market
        assert scalar(url, refused) == 0, market
        # The replay, which takes off what other boundaries hold by the same rule, agrees.
        code, found = replay(url, sources, capsys)
        assert code == 0 and found["reproduced"] == found["years"] == 2, found


def test_two_runs_stages_take_turns_and_the_later_reads_what_the_earlier_left(
    app: tuple[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A run's stage holds the schema's allocation lock from before it reads its inputs until
    its digest is recorded: one that read the instruments before another run's correction
    can no longer write a boundary after that run (its old lines left behind the newer
    digest, which the next run would skip by). Here the lock is held as another stage holds
    it; the run waits, saying so, and allocates the certificate as corrected meanwhile."""
    url, sources = one_facility(app, tmp_path, capsys)
    other = connections.connect(url)
    other.autocommit = True
    with other.cursor() as cur:
        cur.execute(
            "SELECT pg_advisory_lock(%s, hashtext('emissions'))", (market_results.STAGE_LOCK,)
        )
    proc = start_run(url, tmp_path, "--sources", str(sources))
    try:
        wait_for(
            lambda: "waiting for another run's Scope 2 market-based allocation" in proc.stderr,
            timeout=60,
            what="the run to wait for the other stage",
        )
        assert scalar(url, "SELECT count(*) FROM emissions.market_based_results") == 0
        execute(url, "UPDATE app.certs SET mwh = 800 WHERE cert_id = 'GO-1'")
        other.close()  # the other stage ends
        assert proc.wait(timeout=120) == 0, proc.stderr[-3000:]
    finally:
        other.close()
        proc.kill()
    assert proc.summary()["market_based"]["kg_co2e"] == 100_000  # 200,000 kWh × 0.5


def test_the_inventory_gives_no_market_based_figure_from_lines_behind_the_results(
    app: tuple[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Electricity computed since the last allocation (``pipeline.follow``, or a run with
    ``--market-based off``) is in the location-based figure but in no market-based line: the
    inventory then says the lines are behind and gives no market-based figure, rather than
    one that leaves that electricity out; once a run allocates again, it gives it."""
    import csv

    from audit import inventory, report

    url, sources = one_facility(app, tmp_path, capsys)
    assert calculate(url, sources, capsys)["kg_co2e"] == 200_000
    argv = ["--database-url", url, "--sources", str(sources), "--year", "2024"]

    def scope_2() -> dict[str, Any]:
        assert inventory.main(argv) == 0
        return dict(json.loads(capsys.readouterr().out)["scope_2"])

    assert scope_2()["market_based_kg"] == 200_000
    # A second meter of 500 MWh, computed location-based only; then the first one corrected.
    execute(url, "INSERT INTO app.power VALUES (2, 500000, 'RFCE', '2024-05-01', 'b', NULL)")
    location_only = ["--database-url", url, "--sources", str(sources), "--market-based", "off"]
    assert run.main(location_only) == 0
    capsys.readouterr()
    behind = scope_2()
    assert behind["market_based_kg"] is None
    assert behind["market_based_status"] == "behind"
    assert "1 of the 2 electricity activities" in behind["market_based_note"]
    assert inventory.main([*argv, "--export", str(tmp_path)]) == 0
    capsys.readouterr()
    with (tmp_path / "esrs_e1_6_2024.csv").open() as f:
        esrs = {r["line"]: r for r in csv.DictReader(f)}
    line = esrs["gross_scope_2_market_based"]
    assert (line["kg_co2e"], line["status"]) == ("", "behind")
    page = tmp_path / "report.html"
    assert report.main(["--database-url", url, "--sources", str(sources), "--out", str(page)]) == 0
    assert 'data-figure="scope2-behind" data-year="2024"' in page.read_text()
    execute(url, "UPDATE app.power SET kwh = 800000 WHERE id = 1")
    assert run.main(location_only) == 0
    capsys.readouterr()
    assert scope_2()["market_based_status"] == "behind"
    # Allocated again: 1,300 MWh less 600 MWh of certificates, at 0.5 kg/kWh.
    assert calculate(url, sources, capsys)["kg_co2e"] == 350_000
    again = scope_2()
    assert again["market_based_status"] == "computed" and again["market_based_kg"] == 350_000
