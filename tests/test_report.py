"""The HTML report, opened in headless Chromium: its charts render and its figures are the
database's."""

from __future__ import annotations

import json
import math
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from uuid import uuid4

import pytest
import sqlalchemy as sa

from audit import base_year, charts, coverage, inventory, report, restate
from ops.seed import seed
from pipeline import editions, run
from pipeline.levels import LEVELS
from tests.browser import dump_dom, ensure_chromium

#: The DESNZ air editions shipped: the report test restates every flight onto the 2025 one.
AIR_2024, AIR_2025 = "2024 full set v1.1", "2025 flat file"


class Elements(HTMLParser):
    """Every element's tag and attributes, and the text directly inside it, in order."""

    def __init__(self) -> None:
        super().__init__()
        self.found: list[tuple[str, dict[str, str], list[str]]] = []
        self._open: list[int] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.found.append((tag, {k: v or "" for k, v in attrs}, []))
        if tag not in ("br", "meta", "line", "img", "input"):
            self._open.append(len(self.found) - 1)

    def handle_endtag(self, tag: str) -> None:
        while self._open:
            index = self._open.pop()
            if self.found[index][0] == tag:
                break

    def handle_data(self, data: str) -> None:
        if self._open:
            self.found[self._open[-1]][2].append(data)

    def having(self, **attrs: str) -> list[tuple[str, dict[str, str], list[str]]]:
        want = {k.replace("_", "-"): v for k, v in attrs.items()}
        return [
            e
            for e in self.found
            if all(e[1].get(k) == v or v == "*" and k in e[1] for k, v in want.items())
        ]


def parse(dom: str) -> Elements:
    parser = Elements()
    parser.feed(dom)
    return parser


Element = tuple[str, dict[str, str], list[str]]


def text_of(element: Element) -> str:
    return "".join(element[2]).strip()


def inside(dom: Elements, element: Element) -> list[Element]:
    """The elements after ``element`` up to the next of its kind (its cells, for a row; its
    contents, for a table or a chart)."""
    start = dom.found.index(element)
    end = next(
        (i for i in range(start + 1, len(dom.found)) if dom.found[i][0] == element[0]),
        len(dom.found),
    )
    return dom.found[start + 1 : end]


def box(element: Element) -> tuple[float, float, float, float]:
    """What Chromium measured: left, top, right, bottom relative to the chart, in px."""
    left, top, right, bottom = (float(v) for v in element[1]["data-box"].split())
    return left, top, right, bottom


def months_back(last: str, first: str, stride: int) -> list[str]:
    """Every ``stride``-th month from ``last`` back to ``first``, oldest first."""
    year, month = (int(p) for p in last.split("-"))
    found = []
    while f"{year:04d}-{month:02d}" >= first:
        found.append(f"{year:04d}-{month:02d}")
        month -= stride
        while month < 1:
            year, month = year - 1, month + 12
    return found[::-1]


@pytest.fixture(scope="session")
def browser() -> str:
    return ensure_chromium()


def sql_rows(engine: sa.Engine, query: str, **params: Any) -> list[sa.Row]:
    with engine.connect() as conn:
        return list(conn.execute(sa.text(query), params).all())


def run_pipeline(url: str, capsys: pytest.CaptureFixture[str]) -> dict:
    code = run.main(["--database-url", url, "--partitions", "2", "--progress-interval", "0"])
    out = capsys.readouterr().out
    assert code == 0, out
    return json.loads(out[out.index("{") :])


def test_report_renders_in_chromium_and_matches_the_database(
    database_url: str,
    engine: sa.Engine,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    browser: str,
) -> None:
    seed(engine, 800, seed_value=21)
    summary = run_pipeline(database_url, capsys)
    # 2024 named the base year before the restatement: the report shows it both ways.
    first_2024 = year_kg(engine, 2024)
    assert base_year.compare(engine, inventory.period(2024))["recorded_now"]
    # Every flight restated onto the 2025 edition: the audit trail must say so, per result.
    restated = restate.restate(engine, editions.parse_pins([f"desnz_air={AIR_2025}"]))
    assert restated.changed > 0
    assert report.main(["--database-url", database_url, "--out", str(tmp_path / "r.html")]) == 0
    page = tmp_path / "r.html"
    text = page.read_text()
    assert "<script" not in text and "http://" not in text.replace(
        'xmlns="http://www.w3.org/2000/svg"', ""
    )
    dom = parse(dump_dom(browser, page))
    assert dom.having(data_measured="yes"), "Chromium did not lay the page out"

    years_and_headlines(dom, engine, database_url)
    base_year_shown(dom, first_2024, year_kg(engine, 2024))
    verified = dom.having(data_verify="*")
    assert [e[1]["data-verify"] for e in verified] == ["reproduced"]
    assert int(verified[0][1]["data-examined"]) == int(verified[0][1]["data-reproduced"]) > 0

    # By activity type and month: one stacked bar segment per (type, month), summing to the
    # type's total.
    months = sql_rows(
        engine,
        "SELECT r.activity_type, to_char(a.activity_date, 'YYYY-MM'), sum(r.kg_co2e) "
        "FROM emissions.emission_results r JOIN (SELECT 'electricity' t, id, activity_date FROM "
        "emissions.electricity_activities UNION ALL SELECT 'spend', id, activity_date FROM "
        "emissions.spend_activities UNION ALL SELECT 'air_travel', id, activity_date FROM "
        "emissions.air_travel_activities) a ON a.t = r.activity_type AND a.id = r.activity_id "
        "GROUP BY 1, 2",
    )
    for t, m, kg in months:
        (seg,) = dom.having(data_label=f"{m} {t}")
        # the same rows summed by a differently planned query: equal up to summation order
        assert float(seg[1]["data-value"]) == pytest.approx(kg, rel=1e-12)
    for t, _, kg in sql_rows(
        engine,
        "SELECT activity_type, count(*), sum(kg_co2e) FROM emissions.emission_results GROUP BY 1",
    ):
        assert sum(k for tt, _, k in months if tt == t) == pytest.approx(kg, rel=1e-12)

    # Data quality: the shares are the coverage computed from the database.
    cov = coverage.coverage(engine)
    (overall,) = dom.having(data_row="quality", data_type="all")
    start = dom.found.index(overall)
    cells = [e for e in dom.found[start : start + 20] if "data-level" in e[1]]
    assert {e[1]["data-level"]: float(e[1]["data-value"]) for e in cells} == {
        level: cov["overall"][level]["share_of_records"] for level in [*LEVELS, "errors"]
    }
    fallback = sql_rows(
        engine,
        "SELECT count(*) FILTER (WHERE fallback = 'country')::float8 / count(*) "
        "FROM emissions.emission_results WHERE activity_type = 'electricity'",
    )[0][0]
    (elec,) = dom.having(data_row="quality", data_type="electricity")
    start = dom.found.index(elec)
    share = [
        e for e in dom.found[start : start + 20] if e[1].get("data-level") == "country_fallback"
    ]
    records = cov["by_activity_type"]["electricity"]["records"]
    results = cov["by_activity_type"]["electricity"]["results"]
    assert float(share[0][1]["data-value"]) == pytest.approx(fallback * results / records)
    assert 0 < fallback < 1

    # Top sources: the ten largest factor keys, largest first.
    top = sql_rows(
        engine,
        "SELECT f.factor_set, f.key, f.year, sum(r.kg_co2e) FROM emissions.emission_results r "
        "JOIN emissions.emission_factors f ON f.id = r.factor_id GROUP BY 1, 2, 3 "
        "ORDER BY 4 DESC LIMIT 10",
    )
    sources = dom.having(data_row="source")
    assert [(e[1]["data-set"], e[1]["data-key"], e[1]["data-factor-year"]) for e in sources] == [
        (s, k, str(y)) for s, k, y, _ in top
    ]
    # Named as a person names them, not by their raw keys.
    for e in sources:
        named = text_of(inside(dom, e)[1])
        assert "|" not in named and named.split(" ")[0] in ("DESNZ", "eGRID", "Ember", "EPA")
    assert report.report_years.factor_name("desnz_air", "long-haul|first|rf", 2024) == (
        "DESNZ 2024, long-haul, first class, with radiative forcing"
    )

    # Every chart was laid out, with every bar of a positive value drawn.
    for name in ("by-scope-2025", "by-month", "quality", "top-sources"):
        (svg,) = dom.having(data_chart=name)
        positive = [
            e
            for e in dom.found[dom.found.index(svg) :]
            if e[0] == "rect"
            and float(e[1].get("data-value", "0") or 0) > 0
            and e[1].get("data-label", "").split(" ")[0] != ""
        ]
        assert int(svg[1]["data-rendered-width"]) > 300
        assert int(svg[1]["data-rendered-bars"]) > 0
        assert positive
    (svg,) = dom.having(data_chart="by-month")
    assert int(svg[1]["data-rendered-bars"]) == len([m for m in months if m[2] > 0])
    assert dom.having(data_restatement=restated.restatement_id)
    # Every text of every chart lies wholly inside its picture, as Chromium laid it out.
    for svg in dom.having(data_chart="*"):
        assert svg[1]["data-rendered-outside"] == "0", svg[1]["data-chart"]
        assert all(e[1]["data-inside"] == "yes" for e in inside(dom, svg) if e[0] == "text")

    month_axis(dom, engine, months)
    audit_trail(dom, engine, summary, restated)


def year_kg(engine: sa.Engine, year: int) -> float:
    """The year's kg CO2e, summed here in SQL."""
    (found,) = sql_rows(
        engine,
        "SELECT sum(r.kg_co2e::numeric)::float8 FROM emissions.emission_results r JOIN "
        "(SELECT 'electricity' t, id, activity_date d FROM emissions.electricity_activities "
        "UNION ALL SELECT 'spend', id, activity_date FROM emissions.spend_activities "
        "UNION ALL SELECT 'air_travel', id, activity_date FROM emissions.air_travel_activities) a "
        "ON a.t = r.activity_type AND a.id = r.activity_id "
        "WHERE a.d >= make_date(:y, 1, 1) AND a.d < make_date(:y + 1, 1, 1)",
        y=year,
    )
    return float(found[0])


def base_year_shown(dom: Elements, first: float, now: float) -> None:
    """The recorded base year, as first reported and as recalculated after the restatement
    of its flights, with the restatement as the cause, flagged as the threshold says."""
    (table,) = dom.having(data_table="base-year", data_year="2024")
    kg = {
        e[1]["data-row"]: float(next(c for c in inside(dom, e) if "data-kg" in c[1])[1]["data-kg"])
        for e in dom.having(data_row="*")
        if e[1]["data-row"] in ("first-reported", "recalculated", "change")
    }
    assert (kg["first-reported"], kg["recalculated"]) == (first, now)
    assert kg["change"] == pytest.approx(now - first, rel=1e-9) and now < first
    (cause,) = dom.having(data_row="base-cause")
    assert cause[1]["data-reason"] == "restatement"
    change = float(next(c for c in inside(dom, cause) if "data-kg" in c[1])[1]["data-kg"])
    assert change == pytest.approx(now - first, rel=1e-9)
    (flag,) = dom.having(data_base_year="2024")
    assert flag[1]["data-significant"] == str(abs(now - first) / first > 0.05).lower()
    assert table


def years_and_headlines(dom: Elements, engine: sa.Engine, url: str) -> None:
    """A selector of the reporting years and one section per year, each with that year's
    headline and scopes equal to SQL sums over the year; no headline sums years; the GWP set
    of each factor set as recorded; the database named by host and name only."""
    assert not dom.having(data_figure="total") and not dom.having(data_figure="results")
    activities = (
        "(SELECT 'electricity' t, id, activity_date d FROM emissions.electricity_activities "
        "UNION ALL SELECT 'spend', id, activity_date FROM emissions.spend_activities "
        "UNION ALL SELECT 'air_travel', id, activity_date FROM emissions.air_travel_activities)"
    )
    per_year = sql_rows(
        engine,
        "SELECT extract(year FROM a.d)::int, count(*), sum(r.kg_co2e::numeric)::float8 "
        f"FROM emissions.emission_results r JOIN {activities} a ON a.t = r.activity_type "
        "AND a.id = r.activity_id GROUP BY 1 ORDER BY 1 DESC",
    )
    assert [y for y, _, _ in per_year] == list(range(2025, 2018, -1))
    # The selector: one link per year, newest first, each to its section.
    links = dom.having(data_year_link="*")
    assert [int(e[1]["data-year-link"]) for e in links] == [y for y, _, _ in per_year]
    sections = [e for e in dom.having(data_year="*") if e[0] == "section"]
    assert [e[1]["id"] for e in sections] == [e[1]["href"][1:] for e in links]
    # Each year's headline is that year's, and nothing else is a headline.
    cards = dom.having(data_figure="year-total")
    assert [(int(e[1]["data-year"]), float(e[1]["data-kg"])) for e in cards] == [
        (y, kg) for y, _, kg in per_year
    ]
    assert all(text_of(e) == f"{float(e[1]['data-kg']) / 1000:,.2f} t CO2e" for e in cards)
    headlines = {e[1].get("data-figure") for e in dom.having(data_figure="*")}
    assert headlines == {"year-total", "year-results", "year-errors"}
    assert [int(e[1]["data-value"]) for e in dom.having(data_figure="year-results")] == [
        n for _, n, _ in per_year
    ]
    # 2024 by scope and category, and its bars.
    scopes = sql_rows(
        engine,
        "SELECT r.scope, coalesce(r.category::text, ''), sum(r.kg_co2e::numeric)::float8 "
        f"FROM emissions.emission_results r JOIN {activities} a ON a.t = r.activity_type "
        "AND a.id = r.activity_id WHERE a.d >= '2024-01-01' AND a.d < '2025-01-01' "
        "GROUP BY 1, 2",
    )
    assert {(2, ""), (3, "1"), (3, "6")} == {(s, c) for s, c, _ in scopes}
    for s, c, kg in scopes:
        (row,) = dom.having(data_row="scope", data_year="2024", data_scope=str(s), data_category=c)
        assert float([e for e in inside(dom, row) if "data-kg" in e[1]][0][1]["data-kg"]) == kg
    # The newest year's details are open, the others folded under their headlines.
    assert [e[1]["data-year-details"] for e in dom.having(data_year_details="*")] == [
        str(y) for y, _, _ in per_year
    ]
    assert ["open" in e[1] for e in dom.having(data_year_details="*")] == [True] + [False] * (
        len(per_year) - 1
    )
    (svg,) = dom.having(data_chart="by-scope-2024")
    assert sorted(float(e[1]["data-value"]) for e in inside(dom, svg) if e[0] == "rect") == (
        sorted(kg for _, _, kg in scopes)
    )
    # GWP sets as recorded: Ember's is not stated; DESNZ's 2025 edition is assumed AR5.
    gwp = {(e[1]["data-set"], e[1]["data-edition"]): e for e in dom.having(data_row="gwp")}
    (ember,) = [e for (s, _), e in gwp.items() if s == "country_grid"]
    assert "not stated" in text_of(inside(dom, ember)[3])
    assert "assumed AR5" in text_of(inside(dom, gwp[("desnz_air", AIR_2025)])[3])
    assert "AR5 GWP-100" not in "".join(t for e in dom.found for t in e[2])
    # The database: host and name, no user, port or socket path.
    (meta,) = dom.having(data_database="")
    parsed = sa.make_url(url)
    shown = text_of(meta)
    assert f"database {parsed.database}" in shown
    assert "postgresql" not in shown and "/" not in shown.split(" from ")[1].split(".")[0]


def month_axis(dom: Elements, engine: sa.Engine, months: list[sa.Row]) -> None:
    """The monthly chart's axes: round value ticks in a readable unit, every label inside the
    picture and apart from the others, and months up to the last month with data."""
    (svg,) = dom.having(data_chart="by-month")
    texts = [e for e in inside(dom, svg) if e[0] == "text"]
    width, height = int(svg[1]["data-rendered-width"]), int(svg[1]["data-rendered-height"])
    assert (width, height) == (900, 320)

    # Value axis: 0 to the first round step above the largest month, in tonnes here.
    by_month: dict[str, float] = {}
    for _, m, kg in months:
        by_month[m] = by_month.get(m, 0.0) + kg
    largest = max(by_month.values())
    ticks = [e for e in texts if "data-tick-kg" in e[1]]
    assert [text_of(e) for e in ticks] == ["0", "100", "200", "300", "400", "500", "600"]
    assert [float(e[1]["data-tick-kg"]) for e in ticks] == [100_000.0 * i for i in range(7)]
    assert 500_000.0 < largest <= 600_000.0
    (unit,) = [e for e in texts if "axis-unit" in e[1].get("class", "")]
    assert text_of(unit) == "t CO2e"
    # Drawn where their values are: equally spaced, top to bottom.
    centres = [(box(e)[1] + box(e)[3]) / 2 for e in ticks]
    gaps = [a - b for a, b in zip(centres, centres[1:], strict=False)]
    assert all(g == pytest.approx(gaps[0], abs=0.2) and g > 30 for g in gaps)
    # The bars stand on the 0 tick, and the tallest month's reaches its value on that scale.
    (top_month,) = [m for m, kg in by_month.items() if kg == largest]
    tallest = [e for e in dom.having(data_label="*") if e[1]["data-label"].startswith(top_month)]
    bar_top, base = min(box(e)[1] for e in tallest), max(box(e)[3] for e in tallest)
    scale_px = (centres[0] - centres[-1]) / 600_000.0
    assert base == pytest.approx(centres[0], abs=1.5)
    assert base - bar_top == pytest.approx(largest * scale_px, abs=1.0)

    # Month axis: every sixth month, counted back from the last month with data.
    (first, last) = sql_rows(
        engine,
        "SELECT to_char(min(a.d), 'YYYY-MM'), to_char(max(a.d), 'YYYY-MM') FROM "
        "emissions.emission_results r JOIN (SELECT 'electricity' t, id, activity_date d FROM "
        "emissions.electricity_activities UNION ALL SELECT 'spend', id, activity_date FROM "
        "emissions.spend_activities UNION ALL SELECT 'air_travel', id, activity_date FROM "
        "emissions.air_travel_activities) a ON a.t = r.activity_type AND a.id = r.activity_id",
    )[0]
    assert (first, last) == ("2019-01", "2025-12")
    labels = [e for e in texts if "data-month" in e[1]]
    assert [text_of(e) for e in labels] == [e[1]["data-month"] for e in labels]
    assert [text_of(e) for e in labels] == months_back(last, first, 6)
    assert [text_of(e) for e in labels][-2:] == ["2025-06", "2025-12"]
    # Apart: each ends before the next begins; readable: 11 px, as the value ticks.
    spans = [(box(e)[0], box(e)[2]) for e in labels]
    assert all(a[1] + 4 < b[0] for a, b in zip(spans, spans[1:], strict=False))
    assert {e[1]["data-font-size"] for e in [*labels, *ticks, unit]} == {"11px"}


def audit_trail(
    dom: Elements, engine: sa.Engine, summary: dict[str, Any], restated: restate.Outcome
) -> None:
    """Runs and restatements each with figures named by what they count; the editions the
    stored results use, per result."""
    (runs,) = dom.having(data_table="runs")
    assert [text_of(e) for e in inside(dom, runs) if e[0] == "th"] == [
        "run",
        "status",
        "runner",
        "finished",
        "results written",
        "for new activities",
        "for changed activities",
        "retired with deleted activities",
        "errors",
        "t CO2e written by this run",
    ]
    # The restatement is not a run among runs: its tonnes are a change, shown with it.
    assert [e[1]["data-run"] for e in dom.having(data_run="*")] == [summary["run_id"]]
    (row,) = dom.having(data_run=summary["run_id"])
    cells = {e[1]["data-count"]: e for e in inside(dom, row) if "data-count" in e[1]}
    (stored,) = sql_rows(
        engine,
        "SELECT total_processed, errors, total_co2e_tonnes FROM emissions.calculation_runs "
        "WHERE run_id = :r",
        r=summary["run_id"],
    )
    assert {k: e[1]["data-value"] for k, e in cells.items()} == {
        "written": str(stored[0]),
        "new": str(summary["new"]),
        "changed": "0",
        "retired": "0",
        "errors": str(stored[1]),
        "tonnes_written": repr(stored[2]),
    }
    assert stored[0] == summary["new"] == 794 and stored[1] == summary["errors"] == 6
    assert text_of(cells["written"]) == "794"
    assert text_of(cells["tonnes_written"]) == f"{stored[2]:,.2f}"

    (table,) = dom.having(data_table="restatements")
    assert [text_of(e) for e in inside(dom, table) if e[0] == "th"] == [
        "restatement",
        "status",
        "pins",
        "finished",
        "results examined",
        "results restated",
        "refused",
        "t CO2e of the results it restated",
        "before",
        "after",
        "change from the restatement",
    ]
    (row,) = dom.having(data_row="restatement")
    assert row[1]["data-id"] == restated.restatement_id
    tds = [e for e in inside(dom, row) if e[0] == "td"]
    assert [text_of(c) for c in tds[1:3]] == ["succeeded", f"desnz_air = {AIR_2025}"]
    counts = {e[1]["data-count"]: int(e[1]["data-value"]) for e in tds if "data-count" in e[1]}
    assert counts == {
        "examined": restated.examined,
        "restated": restated.changed,
        "refused": restated.refused,
    }
    old_kg, new_kg = restated.diff["old_kg"], restated.diff["new_kg"]
    assert [float(c[1]["data-kg"]) for c in tds if "data-kg" in c[1]] == [
        old_kg,
        new_kg,
        new_kg - old_kg,
    ]
    assert new_kg < old_kg  # the 2025 factors are the lower ones

    # Editions: what the stored results use, counted once per result.
    used = sql_rows(
        engine,
        "SELECT f.factor_set, f.edition, count(DISTINCT (u.activity_type, u.activity_id)) "
        "FROM (SELECT activity_type, activity_id, factor_id id FROM emissions.emission_results "
        "UNION ALL SELECT activity_type, activity_id, fx_factor_id FROM "
        "emissions.emission_results UNION ALL SELECT activity_type, activity_id, cpi_factor_id "
        "FROM emissions.emission_results UNION ALL SELECT activity_type, activity_id, "
        "cpi_base_factor_id FROM emissions.emission_results) u "
        "JOIN emissions.emission_factors f ON f.id = u.id GROUP BY 1, 2 ORDER BY 1, 2",
    )
    shown = [
        (e[1]["data-set"], e[1]["data-edition"], int(e[1]["data-value"]))
        for e in dom.having(data_row="edition")
    ]
    assert shown == [tuple(r) for r in used]
    (flights,) = sql_rows(
        engine, "SELECT count(*) FROM emissions.emission_results WHERE activity_type = 'air_travel'"
    )
    assert [r for r in shown if r[0] == "desnz_air"] == [("desnz_air", AIR_2025, flights[0])]
    unused = [
        (e[1]["data-set"], e[1]["data-edition"]) for e in dom.having(data_row="edition-unused")
    ]
    assert ("desnz_air", AIR_2024) in unused
    assert not {(s, e) for s, e, _ in shown} & set(unused)


def test_report_of_an_empty_inventory(database_url: str, engine: sa.Engine, tmp_path: Path) -> None:
    out = tmp_path / "empty.html"
    assert report.main(["--database-url", database_url, "--out", str(out)]) == 0
    dom = parse(out.read_text())
    # No year has results: no headline at all, and the selector says so.
    assert not dom.having(data_figure="*")
    (selector,) = dom.having(data_selector="years")
    assert "no results yet" in "".join(selector[2])
    assert dom.having(data_restatement="none")
    assert dom.having(data_base_year="none")
    assert report.main(["--database-url", database_url, "--restatement", str(uuid4())]) == 1


@pytest.mark.parametrize(
    ("largest_kg", "unit", "labels"),
    [
        # The month: 10,469.02 t, once one label, clipped.
        (10_469_020.0, "kt", ["0", "2", "4", "6", "8", "10", "12"]),
        (550_000.0, "t", ["0", "100", "200", "300", "400", "500", "600"]),
        (2_400_000.0, "t", ["0", "500", "1,000", "1,500", "2,000", "2,500"]),
        (9_000_000.0, "kt", ["0", "2", "4", "6", "8", "10"]),
        (123_456_789.0, "kt", ["0", "25", "50", "75", "100", "125"]),
        (3e12, "Mt", ["0", "500", "1,000", "1,500", "2,000", "2,500", "3,000"]),
        (9_999.0, "t", ["0", "2", "4", "6", "8", "10"]),
        # Under a tonne, in kg.
        (700.0, "kg", ["0", "200", "400", "600", "800"]),
        (0.3, "kg", ["0.00", "0.05", "0.10", "0.15", "0.20", "0.25", "0.30"]),
        # Nothing to show, or only a sum beyond a double: an axis of one tonne.
        (0.0, "t", ["0.0", "0.2", "0.4", "0.6", "0.8", "1.0"]),
        (math.inf, "t", ["0.0", "0.2", "0.4", "0.6", "0.8", "1.0"]),
        # Round steps beyond a double: 0 and the value itself.
        (1.7e308, "Gt", ["0", "1.7e+296"]),
    ],
)
def test_value_scale_ticks_are_round_steps_in_a_unit_of_at_most_four_digits(
    largest_kg: float, unit: str, labels: list[str]
) -> None:
    scale = charts.value_scale(largest_kg)
    assert (scale.unit, [scale.label(t) for t in scale.ticks]) == (unit, labels)
    steps = [b - a for a, b in zip(scale.ticks, scale.ticks[1:], strict=False)]
    assert scale.ticks[0] == 0.0 and steps == pytest.approx([steps[0]] * len(steps))
    if math.isfinite(largest_kg) and largest_kg > 0:
        assert scale.ticks[-2] < largest_kg <= scale.top


def test_month_span_has_every_month_and_the_labels_end_on_the_last() -> None:
    assert charts.month_span(["2025-02", "2024-11", "2025-02"]) == [
        "2024-11",
        "2024-12",
        "2025-01",
        "2025-02",
    ]
    assert charts.month_span([]) == []
    # 84 months (2019-01 to 2025-12) 9.79 px apart: every sixth, counted back from the last.
    assert charts.month_labels(84, 822 / 84) == list(range(5, 84, 6))
    assert charts.month_labels(5, 100.0) == [0, 1, 2, 3, 4]
    assert charts.month_labels(13, 20.0) == [0, 3, 6, 9, 12]
    assert charts.month_labels(1, 822.0) == [0]
    assert charts.month_labels(0, 822.0) == []
