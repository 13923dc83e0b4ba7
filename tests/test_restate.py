"""Restatement: a pinned or newer factor edition restates exactly the results whose factors
differ, keeps what it replaced, reports a diff equal to the database's sums, and is a no-op
the second time."""

from __future__ import annotations

import dataclasses
import json

import pytest
import sqlalchemy as sa

from audit import report, restate, verify
from ops.seed import seed
from pipeline import editions, run
from pipeline.store import connections, queries, tables
from tests.test_report import parse
from tests.test_verify import run_pipeline

AIR_2024 = "2024 full set v1.1"
AIR_2025 = "2025 flat file"


def rows(engine: sa.Engine, query: str, **params: object) -> list[tuple]:
    with engine.connect() as conn:
        return [tuple(r) for r in conn.execute(sa.text(query), params)]


def snapshot(engine: sa.Engine) -> dict[tuple[str, str], tuple]:
    cols = ", ".join(tables.RESULT_COLUMNS + ("run_id",))
    return {
        (r[0], str(r[1])): r for r in rows(engine, f"SELECT {cols} FROM emissions.emission_results")
    }


def test_pinning_the_2025_air_edition_restates_the_flights_on_2024_factors(
    database_url: str, engine: sa.Engine, capsys: pytest.CaptureFixture[str]
) -> None:
    seed(engine, 800, seed_value=31)
    run_pipeline(database_url, capsys)
    before = snapshot(engine)
    on_2024 = {
        (t, str(i))
        for t, i in rows(
            engine,
            "SELECT r.activity_type, r.activity_id FROM emissions.emission_results r JOIN "
            "emissions.emission_factors "
            "f ON f.id = r.factor_id WHERE f.factor_set = 'desnz_air' AND f.edition = :e",
            e=AIR_2024,
        )
    }
    assert len(on_2024) > 20

    capsys.readouterr()
    assert restate.main(["--database-url", database_url, "--pin", f"desnz_air={AIR_2025}"]) == 0
    out = json.loads(capsys.readouterr().out)
    rid = out["restatement_id"]
    assert out["changed"] == len(on_2024)
    assert out["examined"] == len(before)
    assert out["refused"] == 0

    after = snapshot(engine)
    changed = {k for k in after if after[k] != before[k]}
    assert changed == on_2024
    # Every flight now uses a 2025 factor, flagged where the years differ.
    assert rows(
        engine,
        "SELECT DISTINCT f.edition FROM emissions.emission_results r JOIN "
        "emissions.emission_factors f "
        "ON f.id = r.factor_id WHERE r.activity_type = 'air_travel'",
    ) == [(AIR_2025,)]
    ym = tables.RESULT_COLUMNS.index("year_mismatch")
    assert all(after[k][ym] for k in changed), [
        (before[k], after[k]) for k in changed if not after[k][ym]
    ][:2]
    assert all(str(after[k][-1]) == rid for k in changed)
    # The superseded results are kept whole.
    history = {
        (r[0], str(r[1])): r
        for r in rows(
            engine,
            f"SELECT {', '.join(tables.RESULT_COLUMNS + ('run_id',))} "
            "FROM emissions.emission_results_history "
            "WHERE restatement_id = :r",
            r=rid,
        )
    }
    assert history == {k: before[k] for k in on_2024}

    # The diff's totals are the database's sums.
    (old_kg, new_kg, n) = rows(
        engine,
        "SELECT sum(h.kg_co2e), sum(r.kg_co2e), count(*) FROM emissions.emission_results_history h "
        "JOIN "
        "emissions.emission_results r USING (activity_type, activity_id) "
        "WHERE h.restatement_id = :r",
        r=rid,
    )[0]
    diff = out["diff"]
    assert diff["changed"] == n == len(on_2024)
    assert diff["old_kg"] == pytest.approx(old_kg, rel=1e-12)
    assert diff["new_kg"] == pytest.approx(new_kg, rel=1e-12)
    (group,) = diff["groups"]
    assert (group["activity_type"], group["scope"], group["category"]) == ("air_travel", 3, 6)
    assert group["old_kg"] == pytest.approx(old_kg, rel=1e-12)
    assert group["new_kg"] == pytest.approx(new_kg, rel=1e-12)
    largest = diff["largest"]
    assert len(largest) == 10
    deltas = [abs(c["new_kg"] - c["old_kg"]) for c in largest]
    assert deltas == sorted(deltas, reverse=True)
    (top_delta,) = rows(
        engine,
        "SELECT max(abs(r.kg_co2e - h.kg_co2e)) FROM emissions.emission_results_history h JOIN "
        "emissions.emission_results r USING (activity_type, activity_id) "
        "WHERE h.restatement_id = :r",
        r=rid,
    )[0]
    assert deltas[0] == top_delta
    assert AIR_2024 in largest[0]["old_factor"] and AIR_2025 in largest[0]["new_factor"]
    stored = rows(engine, "SELECT status, changed, diff FROM emissions.restatements")
    assert stored == [("succeeded", n, json.loads(json.dumps(diff)))]

    # The restated results reproduce, on the pinned edition; their fingerprints are new.
    checked = verify.verify(engine, sample=None)
    assert checked.reproduced == checked.examined == len(before), checked.mismatches[:3]
    # Same input row, other factor rows: the input fingerprint is kept, the factor one is new.
    assert rows(
        engine,
        "SELECT count(*) FILTER (WHERE h.input_fingerprint = r.input_fingerprint), "
        "count(*) FILTER (WHERE h.factor_fingerprint <> r.factor_fingerprint) "
        "FROM emissions.emission_results_history h JOIN emissions.emission_results r "
        "USING (activity_type, activity_id) WHERE r.run_id = :r",
        r=rid,
    ) == [(n, n)]

    # Twice changes nothing more.
    again = restate.restate(engine, editions.parse_pins([f"desnz_air={AIR_2025}"]))
    assert again.changed == 0 and again.diff["groups"] == []
    assert snapshot(engine) == after
    assert rows(engine, "SELECT count(*) FROM emissions.emission_results_history") == [(n,)]

    # The report shows the restatement that changed something, with the same figures.
    page = report.render(report.figures(engine), "test")
    dom = parse(page)
    assert dom.having(data_restatement=rid)
    (row,) = dom.having(data_row="diff")
    cells = [e for e in dom.found[dom.found.index(row) :] if "data-kg" in e[1]][:3]
    assert [float(c[1]["data-kg"]) for c in cells] == [
        group["old_kg"],
        group["new_kg"],
        group["new_kg"] - group["old_kg"],
    ]
    assert len(dom.having(data_row="largest")) == 10


def test_a_newer_edition_restates_only_the_results_on_the_revised_factor(
    database_url: str, engine: sa.Engine, capsys: pytest.CaptureFixture[str]
) -> None:
    seed(engine, 600, seed_value=32)
    run_pipeline(database_url, capsys, "--activity-types", "electricity")
    (key, uses) = rows(
        engine,
        "SELECT f.key, count(*) FROM emissions.emission_results r JOIN emissions.emission_factors "
        "f "
        "ON f.id = r.factor_id WHERE f.factor_set = 'egrid_subregion' "
        "GROUP BY f.key ORDER BY 2 DESC, 1 LIMIT 1",
    )[0]
    with connections.raw_connection(engine) as conn:
        current = [
            r
            for r in editions.read_all_factor_rows(conn)
            if r.factor_set == "egrid_subregion" and r.key == key
        ]
    revised = [
        dataclasses.replace(r, id=None, edition="eGRID2023 rev3 (test)", value=r.value * 1.1)
        for r in current
    ]
    assert queries.insert_factors(engine, revised) == len(revised)
    before = snapshot(engine)

    outcome = restate.restate(engine)
    assert outcome.pins == {}
    assert outcome.changed == uses
    after = snapshot(engine)
    changed = {k for k in after if after[k] != before[k]}
    assert len(changed) == uses
    kg = tables.RESULT_COLUMNS.index("kg_co2e")
    amount = tables.RESULT_COLUMNS.index("activity_amount")
    for k in changed:
        assert after[k][kg] == after[k][amount] * (current[0].value * 1.1)
    assert outcome.diff["new_kg"] == pytest.approx(outcome.diff["old_kg"] * 1.1, rel=1e-9)
    # Pinning the original edition back restates them back; history keeps both steps.
    back = restate.restate(engine, {"egrid_subregion": current[0].edition})
    assert back.changed == uses
    assert {k: v[:-1] for k, v in snapshot(engine).items()} == {
        k: v[:-1] for k, v in before.items()
    }
    assert rows(engine, "SELECT count(*) FROM emissions.emission_results_history") == [(2 * uses,)]
    assert verify.verify(engine, sample=None).reproduced == len(before)


def test_an_unknown_edition_is_refused_before_anything_is_written(
    database_url: str, engine: sa.Engine, capsys: pytest.CaptureFixture[str]
) -> None:
    assert restate.main(["--database-url", database_url, "--pin", "desnz_air=1999"]) == 2
    assert "desnz_air has no edition '1999'" in capsys.readouterr().err
    assert restate.main(["--database-url", database_url, "--pin", "nonsense"]) == 2
    assert rows(engine, "SELECT count(*) FROM emissions.restatements") == [(0,)]


def test_a_run_pinned_to_an_edition_uses_and_records_it(
    database_url: str, engine: sa.Engine, capsys: pytest.CaptureFixture[str]
) -> None:
    seed(engine, 600, seed_value=33)
    pin = f"desnz_air={AIR_2025}"
    summary = run_pipeline(
        database_url, capsys, "--activity-types", "air_travel", "--factor-edition", pin
    )
    assert summary["factor_pins"] == {"desnz_air": AIR_2025}
    assert summary["factor_editions"]["desnz_air"] == [AIR_2025]
    assert summary["factor_editions"]["epa_sef"]  # the other sets: newest rows, recorded too
    assert rows(
        engine,
        "SELECT factor_pins FROM emissions.calculation_runs WHERE run_id = :r",
        r=summary["run_id"],
    ) == [({"desnz_air": AIR_2025},)]
    assert rows(
        engine,
        "SELECT DISTINCT f.edition FROM emissions.emission_results r JOIN "
        "emissions.emission_factors f "
        "ON f.id = r.factor_id",
    ) == [(AIR_2025,)]
    # verify replays it on its pinned edition; a restatement on the same edition changes nothing.
    checked = verify.verify(engine, sample=None)
    assert checked.reproduced == checked.examined == summary["total_processed"] > 100
    assert restate.restate(engine, {"desnz_air": AIR_2025}).changed == 0
    # Without the pin, the year rule puts the flights before 2025 back on 2024 factors.
    assert (
        restate.restate(engine).changed
        == rows(
            engine,
            "SELECT count(*) FROM emissions.air_travel_activities a JOIN "
            "emissions.emission_results r "
            "ON r.activity_id = a.id AND r.activity_type = 'air_travel' "
            "WHERE a.activity_date < '2025-01-01'",
        )[0][0]
    )

    capsys.readouterr()
    code = run.main(["--database-url", database_url, "--factor-edition", "desnz_air=1999"])
    assert code == 2
    assert "desnz_air has no edition '1999'" in capsys.readouterr().err


def test_one_restatement_at_a_time(engine: sa.Engine) -> None:
    # The lock is per schema (tests/test_one_truth.py runs two schemas' at once).
    with connections.raw_connection(engine) as other:
        with other.cursor() as cur:
            cur.execute("SELECT pg_advisory_lock(7355609, hashtext('emissions'))")
        other.commit()
        with pytest.raises(restate.RestatementRunning):
            restate.restate(engine)
        with other.cursor() as cur:
            cur.execute("SELECT pg_advisory_unlock(7355609, hashtext('emissions'))")
        other.commit()
    assert restate.restate(engine).changed == 0


def test_the_editions_in_force_are_those_of_the_rows_a_calculation_chooses(
    engine: sa.Engine,
) -> None:
    # Two air editions are loaded; a partial third egrid edition revises one key only.
    with connections.raw_connection(engine) as conn:
        every_row = editions.read_all_factor_rows(conn)
    egrid = [r for r in every_row if r.factor_set == "egrid_subregion"]
    revised = [dataclasses.replace(egrid[0], id=None, edition="eGRID2023 rev3 (test)")]
    assert queries.insert_factors(engine, revised) == 1
    with connections.raw_connection(engine) as conn:
        every_row = editions.read_all_factor_rows(conn)
    for pins in ({}, {"desnz_air": AIR_2024}, {"egrid_subregion": egrid[0].edition}):
        expected = editions.editions_in_force(editions.choose_factor_rows(every_row, pins))
        assert editions.current_editions(engine, pins) == expected
    in_force = editions.current_editions(engine)
    assert in_force["egrid_subregion"] == sorted([egrid[0].edition, "eGRID2023 rev3 (test)"])
    with pytest.raises(editions.EditionError, match="desnz_air has no edition '1999'"):
        editions.current_editions(engine, {"desnz_air": "1999"})
