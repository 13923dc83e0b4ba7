"""Scope 2, market-based (issue 25): the residual mixes a team loads.

No residual mix is shipped (the publishers' licences forbid redistribution): a team loads the
file it obtained with ``ops.admin load-factors --kind residual_mix`` (docs/scope2.md). The
figures below are made up for the tests, not any publisher's.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import sqlalchemy as sa

from ops import admin
from pipeline import factors
from pipeline.factors import FactorFileError

GOOD = (
    "market,year,kg_co2e_per_kwh,source,edition\n"
    "rfce,2024,0.5,Test residual mixes,test 2025\n"
    "DE,2024,0.6,Test residual mixes,test 2025\n"
    "DE,2023,0.65,Test residual mixes,test 2025\n"
)


def written(tmp_path: Path, text: str, name: str = "residual.csv") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def residual_rows(engine: sa.Engine) -> list[tuple[str, int, float, str, str, str]]:
    with engine.connect() as conn:
        found = conn.execute(
            sa.text(
                "SELECT key, year, value, unit, source, edition FROM emissions.emission_factors "
                "WHERE factor_set = 'residual_mix' ORDER BY key, year, edition"
            )
        ).all()
    return [tuple(r) for r in found]


def test_a_residual_mix_file_is_read_row_by_row_with_its_source_and_edition(
    tmp_path: Path,
) -> None:
    rows = factors.parse_residual_mix(written(tmp_path, GOOD))
    assert [(r.factor_set, r.key, r.year, r.value, r.unit) for r in rows] == [
        ("residual_mix", "RFCE", 2024, 0.5, "kg CO2e/kWh"),
        ("residual_mix", "DE", 2024, 0.6, "kg CO2e/kWh"),
        ("residual_mix", "DE", 2023, 0.65, "kg CO2e/kWh"),
    ]
    assert {(r.source, r.edition) for r in rows} == {("Test residual mixes", "test 2025")}
    assert rows[0].source_ref == "residual.csv line 2 (RFCE 2024)"


BAD_LINES = {
    "negative": ("DE,2024,-0.6,S,E", r"line 2: negative value -0.6 in kg_co2e_per_kwh"),
    "missing value": ("DE,2024,,S,E", r"line 2: missing value in kg_co2e_per_kwh"),
    "no source": ("DE,2024,0.6,,E", r"line 2: missing value in source"),
    "no edition": ("DE,2024,0.6,S,", r"line 2: missing value in edition"),
    "not a year": ("DE,24,0.6,S,E", r"line 2: year is not a year: '24'"),
    "not a market": ("D E;,2024,0.6,S,E", r"line 2: market is not a country code"),
    "duplicate": ("DE,2024,0.6,S,E\nde,2024,0.7,S,E", r"line 3: duplicate key .*first on line 2"),
}


@pytest.mark.parametrize("case", sorted(BAD_LINES))
def test_a_bad_residual_mix_row_refuses_the_file_naming_the_line(case: str, tmp_path: Path) -> None:
    line, message = BAD_LINES[case]
    path = written(tmp_path, "market,year,kg_co2e_per_kwh,source,edition\n" + line + "\n")
    with pytest.raises(FactorFileError, match=message):
        factors.parse_residual_mix(path)


def test_a_residual_mix_file_without_the_documented_columns_is_refused(tmp_path: Path) -> None:
    path = written(tmp_path, "country,year,value\nDE,2024,0.6\n")
    with pytest.raises(FactorFileError, match="line 1: missing column.s. market, kg_co2e_per_kwh"):
        factors.parse_residual_mix(path)


def test_load_factors_loads_a_residual_mix_once_and_as_a_named_edition(
    database_url: str, engine: sa.Engine, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert residual_rows(engine) == []  # none shipped
    argv = ["load-factors", "--database-url", database_url, "--kind", "residual_mix"]
    argv += ["--file", str(written(tmp_path, GOOD))]
    assert admin.main(argv) == 0
    assert json.loads(capsys.readouterr().out)["factor_rows_added"] == 3
    source = "Test residual mixes"
    assert residual_rows(engine) == [
        ("DE", 2023, 0.65, "kg CO2e/kWh", source, "test 2025"),
        ("DE", 2024, 0.6, "kg CO2e/kWh", source, "test 2025"),
        ("RFCE", 2024, 0.5, "kg CO2e/kWh", source, "test 2025"),
    ]
    assert admin.main(argv) == 0
    assert json.loads(capsys.readouterr().out)["factor_rows_added"] == 0
    # A corrected file under the same edition is refused; under a new name it loads beside.
    corrected = written(tmp_path, GOOD.replace("0.5,", "0.55,"), "corrected.csv")
    argv[-1] = str(corrected)
    assert admin.main(argv) == 2
    assert re.search(r"refused: .*residual_mix RFCE 2024.*--edition NAME", capsys.readouterr().err)
    assert admin.main([*argv, "--edition", "test 2025 corrected"]) == 0
    assert json.loads(capsys.readouterr().out)["factor_rows_added"] == 3
    assert len(residual_rows(engine)) == 6
