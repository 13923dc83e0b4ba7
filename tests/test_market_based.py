"""Scope 2 both ways on a real database (issue 25, "Done when"): a facility in eGRID RFCE with
1,000 MWh in 2024, computed location-based by a run; 600 MWh of certificates of that vintage
and market, and one from Germany (refused). ``audit.market_based`` reads the stored result,
the instruments of the sources file and the residual mixes loaded: without a residual mix the
400 MWh left are taken at the grid factor, flagged; with one, at 0.5 kg/kWh = 200,000 kg."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from audit import market_based
from ops import admin
from pipeline import run
from tests.support import execute, scalar
from tests.test_instruments import APP, CERTIFICATES, ELECTRICITY

RESIDUAL = "market,year,kg_co2e_per_kwh,source,edition\nRFCE,2024,0.5,Test mixes,test 2025\n"


@pytest.fixture
def app_url(database_url: str) -> str:
    execute(database_url, APP)
    return database_url


def figures(url: str, sources: Path, capsys: pytest.CaptureFixture[str]) -> dict[str, Any]:
    code = market_based.main(["--database-url", url, "--sources", str(sources)])
    out, err = capsys.readouterr()
    assert code == 0, err
    found: dict[str, Any] = json.loads(out)
    return found


def test_the_market_based_figure_beside_the_location_based_one(
    app_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sources = tmp_path / "sources.toml"
    sources.write_text(ELECTRICITY.replace('supplier = "tariff"\n', "") + CERTIFICATES)
    argv = ["--database-url", app_url, "--sources", str(sources), "--progress-interval", "0"]
    assert run.main(argv) == 0, capsys.readouterr().err
    capsys.readouterr()
    location_kg = scalar(app_url, "SELECT kg_co2e FROM emissions.emission_results")
    grid = scalar(app_url, "SELECT factor_value FROM emissions.emission_results")

    found = figures(app_url, sources, capsys)
    year = found["years"]["2024"]
    assert year["kwh"] == 1_000_000
    assert year["location_based_kg_co2e"] == location_kg
    assert year["by_level"]["certificate"] == {"kwh": 600_000, "kg_co2e": 0.0}
    assert year["by_level"]["grid_fallback"]["kwh"] == 400_000  # no residual mix: flagged
    assert year["market_based_kg_co2e"] == 400_000 * grid
    assert year["grid_fallback_activities"] == 1
    assert [(r["id"], r["code"]) for r in found["refused_instruments"]] == [
        ("GO-2", "other_market")
    ]

    mixes = tmp_path / "residual.csv"
    mixes.write_text(RESIDUAL)
    load = ["load-factors", "--database-url", app_url, "--sources", str(sources)]
    load += ["--kind", "residual_mix"]
    assert admin.main([*load, "--file", str(mixes)]) == 0
    capsys.readouterr()
    year = figures(app_url, sources, capsys)["years"]["2024"]
    assert year["by_level"]["residual_mix"] == {"kwh": 400_000, "kg_co2e": 200_000}
    assert year["market_based_kg_co2e"] == 200_000
    assert year["grid_fallback_activities"] == 0
    # Fiscal years from 1 April: the activity of 1 March 2024 is in FY 2023.
    code = market_based.main(
        ["--database-url", app_url, "--sources", str(sources), "--year-start", "04-01"]
    )
    assert code == 0
    assert list(json.loads(capsys.readouterr().out)["years"]) == ["2023"]
    # It wrote nothing: one result, and the sources' tables as they were.
    assert scalar(app_url, "SELECT count(*) FROM emissions.emission_results") == 1
    assert scalar(app_url, "SELECT count(*) FROM app.touched") == 0
