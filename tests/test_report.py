"""The HTML report, opened in headless Chromium: its charts render and its figures are the
database's."""

from __future__ import annotations

import json
from html.parser import HTMLParser
from pathlib import Path
from uuid import uuid4

import pytest
import sqlalchemy as sa

from audit import coverage, report
from ops.seed import seed
from pipeline import run
from pipeline.levels import LEVELS
from tests.browser import dump_dom, ensure_chromium


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


@pytest.fixture(scope="session")
def browser() -> str:
    return ensure_chromium()


def sql_rows(engine: sa.Engine, query: str) -> list[sa.Row]:
    with engine.connect() as conn:
        return list(conn.execute(sa.text(query)).all())


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
    run_pipeline(database_url, capsys)
    assert report.main(["--database-url", database_url, "--out", str(tmp_path / "r.html")]) == 0
    page = tmp_path / "r.html"
    text = page.read_text()
    assert "<script" not in text and "http://" not in text.replace(
        'xmlns="http://www.w3.org/2000/svg"', ""
    )
    dom = parse(dump_dom(browser, page))
    assert dom.having(data_measured="yes"), "Chromium did not lay the page out"

    # Headline figures.
    (total,) = sql_rows(engine, "SELECT sum(kg_co2e), count(*) FROM emissions.emission_results")
    (card,) = dom.having(data_figure="total")
    assert float(card[1]["data-kg"]) == total[0]
    assert "".join(card[2]).strip() == f"{total[0] / 1000:,.2f} t CO2e"
    assert int(dom.having(data_figure="results")[0][1]["data-value"]) == total[1]
    (outstanding,) = sql_rows(
        engine,
        "SELECT count(DISTINCT (activity_type, activity_id)) FROM emissions.emission_errors e "
        "WHERE NOT "
        "EXISTS (SELECT 1 FROM emissions.emission_results r WHERE r.activity_type = "
        "e.activity_type "
        "AND r.activity_id = e.activity_id)",
    )
    assert int(dom.having(data_figure="errors")[0][1]["data-value"]) == outstanding[0] > 0

    # By scope and category: every row of the table, and every bar of the chart.
    scopes = sql_rows(
        engine,
        "SELECT scope, coalesce(category::text, ''), sum(kg_co2e) FROM emissions.emission_results "
        "GROUP BY 1, 2",
    )
    assert {(2, ""), (3, "1"), (3, "6")} == {(s, c) for s, c, _ in scopes}
    for s, c, kg in scopes:
        (row,) = dom.having(data_row="scope", data_scope=str(s), data_category=c)
        cells = [e for e in dom.found if e[0] == "td" and "data-kg" in e[1]]
        assert any(float(e[1]["data-kg"]) == kg for e in cells)
        (bar,) = [
            e
            for e in dom.having(data_label=report.scope_label(s, int(c) if c else None))
            if e[0] == "rect"
        ]
        assert float(bar[1]["data-value"]) == kg

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
        (row,) = dom.having(data_row="type", data_type=t)
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
        "SELECT f.factor_set, f.key, sum(r.kg_co2e) FROM emissions.emission_results r JOIN "
        "emissions.emission_factors f ON f.id = r.factor_id GROUP BY 1, 2 ORDER BY 3 DESC "
        "LIMIT 10",
    )
    sources = dom.having(data_row="source")
    assert [(e[1]["data-set"], e[1]["data-key"]) for e in sources] == [(s, k) for s, k, _ in top]

    # Every chart was laid out, with every bar of a positive value drawn.
    for name in ("by-scope", "by-month", "quality", "top-sources"):
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
    assert dom.having(data_restatement="none")


def test_report_of_an_empty_inventory(database_url: str, engine: sa.Engine, tmp_path: Path) -> None:
    out = tmp_path / "empty.html"
    assert report.main(["--database-url", database_url, "--out", str(out)]) == 0
    dom = parse(out.read_text())
    assert dom.having(data_figure="total")[0][1]["data-kg"] == "0.0"
    assert dom.having(data_figure="results")[0][1]["data-value"] == "0"
    assert dom.having(data_restatement="none")
    assert report.main(["--database-url", database_url, "--restatement", str(uuid4())]) == 1
