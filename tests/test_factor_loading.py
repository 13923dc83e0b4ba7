"""Factor data checks at load time, against a real database.

A factor file with a negative or missing value, an unknown unit or a duplicate key is refused
with a message naming the file and row, and nothing of it is written: the factors in force are
exactly those before. Loading is one transaction, so a failure part-way (here: a row the
database's own check refuses) leaves nothing behind either.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Callable
from pathlib import Path

import pytest
import sqlalchemy as sa

from ops import admin
from pipeline import factors
from pipeline.model import FactorRow
from pipeline.store import connections, queries


def edited(src: Path, tmp_path: Path, line: int, old: str, new: str) -> Path:
    lines = src.read_text(encoding="utf-8").splitlines(keepends=True)
    assert old in lines[line - 1]
    lines[line - 1] = lines[line - 1].replace(old, new, 1)
    out = tmp_path / src.name
    out.write_text("".join(lines), encoding="utf-8")
    return out


def duplicated_last_row(src: Path, tmp_path: Path) -> Path:
    lines = src.read_text(encoding="utf-8").splitlines(keepends=True)
    out = tmp_path / src.name
    out.write_text("".join([*lines, lines[1]]), encoding="utf-8")
    return out


def in_force(url: str) -> list[FactorRow]:
    return connections.with_connection(url, "reading factors", queries.read_factor_rows)


def fingerprint(engine: sa.Engine) -> tuple[int, str]:
    with engine.connect() as conn:
        row = conn.execute(
            sa.text(
                "SELECT count(*), md5(string_agg(f::text, '|' ORDER BY id)) FROM "
                "emissions.emission_factors f"
            )
        ).one()
    return int(row[0]), str(row[1])


BAD_FILES: dict[str, tuple[str, Callable[[Path], Path], str]] = {
    "negative": (
        "cpi",
        lambda tmp: edited(factors.CPI_FILE, tmp, 4, "229.594", "-229.594"),
        r"us_cpi_u_annual\.csv line 4: negative value",
    ),
    "missing": (
        "egrid",
        lambda tmp: edited(factors.EGRID_FILE, tmp, 5, ",429.983,", ",,"),
        r"egrid2023_rev2_subregions\.csv line 5: missing value",
    ),
    "unknown unit": (
        "uk_electricity",
        lambda tmp: edited(factors.UK_ELECTRICITY_FILE, tmp, 2, ",kWh,", ",MWh,"),
        r"desnz_uk_electricity\.csv line 2: unexpected unit",
    ),
    "duplicate key": (
        "air",
        lambda tmp: duplicated_last_row(factors.AIR_FILE, tmp),
        r"desnz_2025_air_travel\.csv line \d+: duplicate key .*first on line 2",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_a_bad_factor_file_is_refused_and_the_factors_in_force_stay(
    case: str,
    database_url: str,
    engine: sa.Engine,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    kind, make_file, message = BAD_FILES[case]
    before, before_rows = fingerprint(engine), in_force(database_url)
    path = make_file(tmp_path)
    argv = ["load-factors", "--database-url", database_url, "--kind", kind, "--file", str(path)]
    code = admin.main(argv)
    err = capsys.readouterr().err
    assert code == 1
    assert "refused:" in err and "nothing was loaded" in err
    assert re.search(message, err), err
    assert fingerprint(engine) == before
    assert in_force(database_url) == before_rows


def test_a_good_factor_file_loads_and_loading_it_twice_adds_nothing(
    database_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["load-factors", "--database-url", database_url, "--kind", "cpi"]
    argv += ["--file", str(factors.CPI_FILE)]
    assert admin.main(argv) == 0
    # The template holds them already.
    assert json.loads(capsys.readouterr().out)["factor_rows_added"] == 0


def test_loading_is_one_transaction(engine: sa.Engine) -> None:
    before = fingerprint(engine)
    template = factors.parse_cpi()[0]
    new_edition = [
        dataclasses.replace(template, edition="test edition", year=1900 + i, value=1.0 + i)
        for i in range(50)
    ]
    refused_by_database = dataclasses.replace(
        template, edition="test edition", year=1800, value=-1.0
    )
    with pytest.raises(sa.exc.IntegrityError, match="ck_factor_value_non_negative"):
        queries.insert_factors(engine, [*new_edition, refused_by_database])
    assert fingerprint(engine) == before  # not even the 50 good rows before it
    assert queries.insert_factors(engine, new_edition) == 50
