"""The inventory of a reporting year: every figure equals an independent SQL sum over the year's
results, for calendar and fiscal years; the base year, recalculated; the exports, as CSV."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from audit import inventory, inventory_export, restate
from pipeline import editions, run
from pipeline.store import connections

#: Hand-made activities around the year boundaries of both conventions (1 January, 1 April).
ELECTRICITY = (
    "(1, 1000, 'kWh', 'CAMX', 'USA', '2023-12-31'),"  # calendar 2023; fiscal 2023
    "(2, 2000, 'kWh', 'CAMX', 'USA', '2024-01-01'),"  # calendar 2024; fiscal 2023
    "(3, 3000, 'MWh', NULL, 'GBR', '2024-03-31'),"  # calendar 2024; fiscal 2023
    "(4, 4000, 'kWh', 'NYUP', 'USA', '2024-04-01'),"  # calendar 2024; fiscal 2024
    "(5, 500, 'kWh', 'ZZZZ', 'DEU', '2024-12-31'),"  # unknown subregion: country fallback
    "(6, 600, 'kWh', NULL, 'FRA', '2025-03-31'),"  # calendar 2025; fiscal 2024
    "(7, 700, 'kWh', 'CAMX', 'USA', '2025-04-01'),"  # calendar 2025; fiscal 2025
    "(8, 10, 'furlongs', 'CAMX', 'USA', '2024-06-01'),"  # dead letter in 2024
    "(9, 10, 'kWh', 'CAMX', 'USA', NULL)"  # dead letter without a date
)
SPEND = (
    "(1, 1000, 'USD', '111110', '2024-02-01'),"
    "(2, 2500, 'EUR', '541511', '2024-05-01'),"
    "(3, 100, 'GBP', '336111', '2023-06-01'),"
    "(4, 100, 'XXX', '336111', '2024-07-01')"  # dead letter in 2024
)
FLIGHTS = (
    "(1, 'LHR', 'JFK', 'business', 1, true, '2024-03-15', NULL),"
    "(2, 'SFO', 'LAX', 'economy', 2, false, '2024-09-01', NULL),"
    "(3, 'CDG', 'FRA', 'economy', 1, false, '2025-01-10', NULL)"
)

_ACTIVITIES = (
    "(SELECT 'electricity' t, id, activity_date d, coalesce(nullif(region, ''), country) reg "
    "FROM emissions.electricity_activities UNION ALL SELECT 'spend', id, activity_date, NULL "
    "FROM emissions.spend_activities UNION ALL SELECT 'air_travel', id, activity_date, NULL "
    "FROM emissions.air_travel_activities)"
)


def execute(engine: sa.Engine, query: str, **params: Any) -> None:
    with engine.begin() as conn:
        conn.execute(sa.text(query), params)


def rows(engine: sa.Engine, query: str, **params: Any) -> list[sa.Row]:
    with engine.connect() as conn:
        return list(conn.execute(sa.text(query), params).all())


def load_and_run(url: str, engine: sa.Engine, capsys: pytest.CaptureFixture[str]) -> None:
    execute(engine, f"INSERT INTO emissions.electricity_activities VALUES {ELECTRICITY}")
    execute(engine, f"INSERT INTO emissions.spend_activities VALUES {SPEND}")
    execute(engine, f"INSERT INTO emissions.air_travel_activities VALUES {FLIGHTS}")
    code = run.main(["--database-url", url, "--partitions", "1", "--progress-interval", "0"])
    out = capsys.readouterr().out
    assert code == 0, out


def sql_figures(engine: sa.Engine, start: str, end: str) -> dict[str, Any]:
    """The year's figures, computed here in SQL alone."""
    year = (
        f"FROM emissions.emission_results r JOIN {_ACTIVITIES} a ON a.t = r.activity_type "
        "AND a.id = r.activity_id WHERE a.d >= CAST(:s AS date) AND a.d < CAST(:e AS date)"
    )
    kg = "sum(r.kg_co2e::numeric)::float8"
    (total,) = rows(
        engine,
        f"SELECT count(*), coalesce({kg}, 0), coalesce(sum(r.kg_co2::numeric)::float8, 0), "
        "coalesce(sum(r.kg_ch4_co2e::numeric)::float8, 0), "
        "coalesce(sum(r.kg_n2o_co2e::numeric)::float8, 0), "
        "coalesce(sum((r.kg_co2e::numeric - coalesce(r.kg_co2, 0)::numeric - "
        "coalesce(r.kg_ch4_co2e, 0)::numeric - coalesce(r.kg_n2o_co2e, 0)::numeric))::float8, 0), "
        f"count(*) FILTER (WHERE r.fallback = 'country') {year}",
        s=start,
        e=end,
    )
    (dead,) = rows(
        engine,
        "SELECT count(*) FROM emissions.emission_errors e JOIN "
        f"{_ACTIVITIES} a ON a.t = e.activity_type AND a.id = e.activity_id "
        "WHERE a.d >= CAST(:s AS date) AND a.d < CAST(:e AS date) AND e.retired_at IS NULL",
        s=start,
        e=end,
    )
    return {
        "total": tuple(total),
        "dead_letters": dead[0],
        "scopes": {
            (s, c): (n, k)
            for s, c, n, k in rows(
                engine,
                f"SELECT r.scope, r.category, count(*), {kg} {year} GROUP BY 1, 2",
                s=start,
                e=end,
            )
        },
        "types": {
            t: (n, k)
            for t, n, k in rows(
                engine,
                f"SELECT r.activity_type, count(*), {kg} {year} GROUP BY 1",
                s=start,
                e=end,
            )
        },
        "regions": {
            (t, g): (n, k)
            for t, g, n, k in rows(
                engine,
                f"SELECT r.activity_type, a.reg, count(*), {kg} {year} GROUP BY 1, 2",
                s=start,
                e=end,
            )
        },
    }


def check(figures: dict[str, Any], want: dict[str, Any]) -> None:
    """Every figure of the inventory against the SQL's."""
    n, kg, co2, ch4, n2o, not_split, fallback = want["total"]
    total = figures["total"]
    assert (total["results"], total["kg_co2e"]) == (n, kg)
    assert figures["by_gas"] == {"co2": co2, "ch4": ch4, "n2o": n2o, "not_split": not_split}
    assert total["dead_letters"] == want["dead_letters"]
    assert total["quality"]["country_fallback"]["results"] == fallback
    assert {
        (f["scope"], f["category"]): (f["results"], f["kg_co2e"])
        for f in figures["by_category"]
        if f["results"]
    } == want["scopes"]
    by_scope: dict[int, float] = {}
    for (s, _), (_, k) in want["scopes"].items():
        by_scope[s] = by_scope.get(s, 0.0) + k
    assert {f["scope"]: f["kg_co2e"] for f in figures["by_scope"]} == pytest.approx(by_scope)
    assert {
        f["activity_type"]: (f["results"], f["kg_co2e"])
        for f in figures["by_activity_type"]
        if f["results"]
    } == want["types"]
    assert {
        (f["activity_type"], f["region"]): (f["results"], f["kg_co2e"])
        for f in figures["by_region"]
        if f["results"]
    } == want["regions"]


def test_a_year_s_figures_equal_sql_sums_for_calendar_and_fiscal_years(
    database_url: str, engine: sa.Engine, capsys: pytest.CaptureFixture[str]
) -> None:
    load_and_run(database_url, engine, capsys)
    calendar = inventory.inventory(engine, inventory.period(2024))
    want = sql_figures(engine, "2024-01-01", "2025-01-01")
    check(calendar, want)
    # The hand-made year: electricity 2, 3, 4, 5; spend 1, 2; flights 1, 2; dead letters 8
    # (a unit nobody knows) and spend 4 (a currency nobody knows); 9 has no date.
    assert calendar["total"]["results"] == 8
    assert calendar["total"]["dead_letters"] == 2
    assert calendar["dead_letters_without_date"] == 1
    # 3 names no subregion (GBR), 5 an unknown one (ZZZZ, DEU): their countries' factors.
    assert calendar["total"]["quality"]["country_fallback"]["results"] == 2
    assert [r["region"] for r in calendar["by_region"] if r["activity_type"] == "electricity"] == [
        "CAMX",
        "GBR",
        "NYUP",
        "ZZZZ",
    ]

    fiscal = inventory.inventory(engine, inventory.period(2024, "04-01"))
    check(fiscal, sql_figures(engine, "2024-04-01", "2025-04-01"))
    assert fiscal["period"]["label"] == "FY 2024 (2024-04-01 to 2025-03-31)"
    # Fiscal 2024: electricity 4, 5, 6; spend 2; flights 2, 3.
    assert fiscal["total"]["results"] == 6
    assert inventory.inventory(engine, inventory.period(2023, "04-01"))["total"]["results"] == 6

    # The years partition the results: no result is in two years, none is lost.
    (stored,) = rows(
        engine, "SELECT sum(kg_co2e::numeric)::float8, count(*) FROM emissions.emission_results"
    )
    assert stored[1] == 13  # 7 electricity, 3 spend, 3 flights
    # Every year at once (the report's sections, read in one pass) is each year alone.
    for start, want_years in (("01-01", [2023, 2024, 2025]), ("04-01", [2023, 2024, 2025])):
        each = inventory.inventories(engine, start)
        assert [f["period"]["year"] for f in each] == want_years
        assert each == [inventory.inventory(engine, inventory.period(y, start)) for y in want_years]
        assert sum(f["total"]["results"] for f in each) == stored[1]
        assert sum(f["total"]["kg_co2e"] for f in each) == pytest.approx(stored[0], rel=1e-12)


def test_the_command_prints_the_year_and_refuses_a_bad_year_start(
    database_url: str, engine: sa.Engine, capsys: pytest.CaptureFixture[str]
) -> None:
    load_and_run(database_url, engine, capsys)
    assert inventory.main(["--database-url", database_url, "--year", "2024"]) == 0
    printed = json.loads(capsys.readouterr().out)
    check(printed, sql_figures(engine, "2024-01-01", "2025-01-01"))
    # Host and database name only: no user, password, port or socket path.
    assert printed["database"].endswith(f", database {sa.make_url(database_url).database}")
    assert "@" not in printed["database"] and "/" not in printed["database"]
    assert printed["scope_2"]["market_based_kg"] is None
    assert printed["scope_2"]["location_based_kg"] == printed["by_scope"][0]["kg_co2e"]
    assert (
        inventory.main(["--database-url", database_url, "--year", "2024", "--year-start", "02-29"])
        == 2
    )
    assert "choose 03-01" in capsys.readouterr().err


def history_change(engine: sa.Engine, reason: str) -> float:
    """What the versions of the 2024 activities superseded for ``reason`` changed: each one's
    successor (the next version, the result now, or nothing) less itself."""
    (found,) = rows(
        engine,
        "SELECT coalesce(sum(coalesce(nxt, 0)::numeric - kg::numeric), 0)::float8 FROM (SELECT "
        "h.reason, h.kg_co2e kg, coalesce(lead(h.kg_co2e) OVER (PARTITION BY h.activity_type, "
        "h.activity_id ORDER BY h.history_id), r.kg_co2e) nxt "
        "FROM emissions.emission_results_history h LEFT JOIN emissions.emission_results r "
        "USING (activity_type, activity_id)) x WHERE reason = :reason",
        reason=reason,
    )
    return float(found[0])


def test_a_base_year_restated_over_the_threshold_shows_both_figures_and_why(
    database_url: str, engine: sa.Engine, capsys: pytest.CaptureFixture[str]
) -> None:
    load_and_run(database_url, engine, capsys)
    first = sql_figures(engine, "2024-01-01", "2025-01-01")["total"][1]
    argv = ["--database-url", database_url, "--year", "2025", "--base-year", "2024"]
    assert inventory.main(argv) == 0
    named = json.loads(capsys.readouterr().out)["base_year"]
    assert named["recorded_now"] and named["first_reported_kg"] == first
    assert "recorded now as first reported" in named["message"]

    # A corrected invoice (spend 1: twice the amount), a deleted flight (2), and the UK grid
    # factors restated onto DESNZ's 2025 edition (electricity 3 is in Great Britain).
    execute(engine, "UPDATE emissions.spend_activities SET amount = 2000 WHERE id = 1")
    execute(engine, "DELETE FROM emissions.air_travel_activities WHERE id = 2")
    code = run.main(
        [
            "--database-url",
            database_url,
            "--partitions",
            "1",
            "--progress-interval",
            "0",
            "--allow-retire",
        ]
    )
    assert code == 0, capsys.readouterr().out
    restated = restate.restate(engine, editions.parse_pins(["desnz_uk_electricity=2025 flat file"]))
    assert restated.changed == 1  # electricity 3: the only British activity
    capsys.readouterr()

    assert inventory.main(argv) == 0
    base = json.loads(capsys.readouterr().out)["base_year"]
    now = sql_figures(engine, "2024-01-01", "2025-01-01")["total"][1]
    assert not base["recorded_now"]
    assert (base["first_reported_kg"], base["recalculated_kg"]) == (first, now)
    assert base["change_kg"] == pytest.approx(now - first, rel=1e-12)
    causes = {c["reason"]: (c["results"], c["change_kg"]) for c in base["causes"]}
    assert set(causes) == {"restatement", "activity_changed", "activity_deleted"}
    for reason, (count, change) in causes.items():
        assert count == 1, reason
        assert change == pytest.approx(history_change(engine, reason), rel=1e-12)
    assert causes["restatement"][1] < 0  # DESNZ's 2025 grid factor is the lower one
    assert causes["activity_changed"][1] > 0  # twice the spend
    assert sum(c for _, c in causes.values()) == pytest.approx(now - first, rel=1e-9)
    share = (now - first) / first
    assert base["change_share"] == pytest.approx(share) and abs(share) > 0.05
    assert base["significant"] and "Recalculate the base year" in base["message"]
    # Under a threshold above the change, the same figures, not flagged.
    assert inventory.main([*argv, "--threshold", f"{abs(share) + 0.01:.4f}"]) == 0
    calm = json.loads(capsys.readouterr().out)["base_year"]
    assert not calm["significant"] and calm["recalculated_kg"] == now


def test_exports_open_as_csv_with_the_documented_columns(
    database_url: str, engine: sa.Engine, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    load_and_run(database_url, engine, capsys)
    out = tmp_path / "export"
    argv = ["--database-url", database_url, "--year", "2024", "--year-start", "04-01"]
    assert inventory.main([*argv, "--export", str(out)]) == 0
    capsys.readouterr()
    want = sql_figures(engine, "2024-04-01", "2025-04-01")

    def read(name: str) -> tuple[list[str], list[dict[str, str]]]:
        with (out / name).open(newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            return list(reader.fieldnames or []), list(reader)

    columns, esrs = read("esrs_e1_6_fy2024.csv")
    assert tuple(columns) == inventory_export.ESRS_COLUMNS
    lines = {r["line"]: r for r in esrs}
    assert list(lines)[:4] == [
        "gross_scope_1",
        "gross_scope_2_location_based",
        "gross_scope_2_market_based",
        "gross_scope_3",
    ]
    assert {(r["period_start"], r["period_end"], r["reporting_year"]) for r in esrs} == {
        ("2024-04-01", "2025-03-31", "FY 2024 (2024-04-01 to 2025-03-31)")
    }
    # Not computed: empty, never 0, and said so.
    for line in ("gross_scope_1", "gross_scope_2_market_based", "total_ghg_market_based"):
        assert lines[line]["kg_co2e"] == "" and lines[line]["status"] == "not_computed"
        assert lines[line]["note"]
    assert float(lines["gross_scope_2_location_based"]["kg_co2e"]) == pytest.approx(
        want["scopes"][(2, None)][1], rel=1e-15
    )
    assert float(lines["scope_3_category_1"]["kg_co2e"]) == want["scopes"][(3, 1)][1]
    assert float(lines["scope_3_category_6"]["kg_co2e"]) == want["scopes"][(3, 6)][1]
    assert lines["scope_3_category_4"]["kg_co2e"] == ""
    assert float(lines["total_ghg_location_based"]["kg_co2e"]) == want["total"][1]
    assert len(esrs) == 4 + 15 + 2

    columns, cdp = read("cdp_fy2024.csv")
    assert tuple(columns) == inventory_export.CDP_COLUMNS
    assert [
        (r["scope"], r["scope2_method"], r["scope3_category"], r["calculation_method"]) for r in cdp
    ] == [
        ("2", "location-based", "", "location-based"),
        ("2", "market-based", "", "market-based"),
        ("3", "", "1", "spend-based"),
        ("3", "", "6", "distance-based"),
    ]
    assert cdp[1]["kg_co2e"] == "" and cdp[1]["status"] == "not_computed"
    assert [(r["share_supplier_specific"], r["share_average_data"]) for r in cdp[2:]] == [
        ("0.0", "1.0"),
        ("0.0", "1.0"),
    ]

    # The rows behind the figures: one per result of the year, adding up to the total.
    columns, traced = read("rows_fy2024.csv")
    assert tuple(columns) == inventory_export.ROW_COLUMNS
    assert len(traced) == want["total"][0] == 6
    assert sorted((r["activity_type"], r["activity_id"]) for r in traced) == [
        ("air_travel", "2"),
        ("air_travel", "3"),
        ("electricity", "4"),
        ("electricity", "5"),
        ("electricity", "6"),
        ("spend", "2"),
    ]
    assert sum(float(r["kg_co2e"]) for r in traced) == pytest.approx(want["total"][1], rel=1e-12)
    stored = dict(
        ((t, str(i)), kg)
        for t, i, kg in rows(
            engine, "SELECT activity_type, activity_id, kg_co2e FROM emissions.emission_results"
        )
    )
    assert all(
        float(r["kg_co2e"]) == stored[(r["activity_type"], r["activity_id"])] for r in traced
    )
    document = json.loads((out / "inventory_fy2024.json").read_text())
    assert document["esrs_e1_6"][2]["kg_co2e"] is None
    assert len(document["rows"]) == 6
    assert document["figures"]["total"]["kg_co2e"] == want["total"][1]


def test_uuid_keys_a_year_its_base_year_and_its_rows(
    make_database: Any, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    url = make_database("uuid")
    engine = connections.make_engine(url, poolclass=sa.pool.NullPool)
    try:
        keys = [f"00000000-0000-4000-8000-00000000000{i}" for i in range(1, 4)]
        execute(
            engine,
            "INSERT INTO emissions.electricity_activities VALUES "
            f"('{keys[0]}', 1000, 'kWh', 'CAMX', 'USA', '2024-02-01'), "
            f"('{keys[1]}', 2000, 'kWh', 'NYUP', 'USA', '2024-03-01'), "
            f"('{keys[2]}', 3000, 'kWh', 'CAMX', 'USA', '2025-03-01')",
        )
        argv = ["--database-url", url, "--partitions", "1", "--progress-interval", "0"]
        assert run.main([*argv, "--allow-retire"]) == 0
        year = ["--database-url", url, "--year", "2024", "--base-year", "2024"]
        capsys.readouterr()
        assert inventory.main(year) == 0
        assert json.loads(capsys.readouterr().out)["base_year"]["recorded_now"]
        execute(engine, f"DELETE FROM emissions.electricity_activities WHERE id = '{keys[1]}'")
        assert run.main([*argv, "--allow-retire"]) == 0
        capsys.readouterr()
        assert inventory.main([*year, "--export", str(tmp_path)]) == 0
        now = json.loads(capsys.readouterr().out)
        (deleted,) = rows(
            engine,
            "SELECT kg_co2e FROM emissions.emission_results_history "
            "WHERE activity_id = CAST(:k AS uuid)",
            k=keys[1],
        )
        base = now["base_year"]
        assert base["results_first_reported"] == 2 and now["total"]["results"] == 1
        # (numeric sums take each double to 15 significant digits)
        assert [(c["reason"], c["results"]) for c in base["causes"]] == [("activity_deleted", 1)]
        assert base["causes"][0]["change_kg"] == pytest.approx(-deleted[0], rel=1e-14)
        assert base["first_reported_kg"] == pytest.approx(
            base["recalculated_kg"] + deleted[0], rel=1e-12
        )
        with (tmp_path / "rows_2024.csv").open(newline="") as f:
            assert [r["activity_id"] for r in csv.DictReader(f)] == [keys[0]]
    finally:
        engine.dispose()
