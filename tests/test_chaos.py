"""The fault harness (``benchmarks.chaos``): its schedules come from their seed alone, and its
invariant checkers find each kind of violation, planted by hand in a real database."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest

from benchmarks import chaos, chaos_checks
from ops.seed import seed
from pipeline.store import connections
from tests.support import start_run


def test_a_schedule_is_made_from_its_seed_alone() -> None:
    first = chaos.make_schedule(7, 6.0)
    assert chaos.make_schedule(7, 6.0) == first
    assert chaos.make_schedule(8, 6.0) != first
    kinds = [e.kind for e in first.events]
    assert kinds[0] == "insert" and kinds[1] in ("run", "follow")
    assert [e.at for e in first.events] == sorted(e.at for e in first.events)
    for s in range(200):
        schedule = chaos.make_schedule(s, 6.0)
        # 8–16 events and the backlog, and a few more after each restatement or follow.
        starts = sum(e.kind.startswith("restate") or e.kind == "follow" for e in schedule.events)
        assert 9 <= len(schedule.events) <= 17 + 4 * starts
        assert sum(e.kind == "restart" for e in schedule.events) <= 1
        assert all(0 <= e.at <= 6.0 + chaos.SCENARIO_TAIL for e in schedule.events)
        assert {e.kind for e in schedule.events} <= set(chaos.WEIGHTS) | {"insert"}
    every = {e.kind for s in range(200) for e in chaos.make_schedule(s, 6.0).events}
    assert every == set(chaos.WEIGHTS)  # over 200 schedules, every kind of event occurs


def test_the_checkers_find_each_planted_violation(database_url: str, tmp_path: Path) -> None:
    engine = connections.make_engine(database_url)
    try:
        with chaos._connection(database_url) as conn:
            chaos_checks.install_log(conn, chaos.SCHEMA)
        seed(engine, 300, seed_value=5)
    finally:
        engine.dispose()
    run = start_run(database_url, tmp_path)
    assert run.wait() == 0, run.stderr[-2000:]
    run_id = run.summary()["run_id"]

    with chaos._connection(database_url) as conn:
        verdicts = [
            chaos_checks.one_truth(conn, "emissions", chaos._mismatches(database_url)),
            chaos_checks.deleted(conn, "emissions"),
            chaos_checks.history(conn, "emissions"),
            chaos_checks.counts(conn, "emissions"),
        ]
        assert [v.count for v in verdicts] == [0, 0, 0, 0]
        assert chaos_checks.pending_truth(conn, "emissions") == []
        assert chaos_checks.stored_by_run(conn)[run_id]["total"] == run.summary()["total_processed"]

        # Planted: a value altered in place, a result dropped (neither current nor in
        # history), an activity deleted under its result, a dead letter beside a current
        # result, a run's count off by two.
        e = "emissions"
        with conn.cursor() as cur:
            cur.execute(
                f"UPDATE {e}.emission_results SET kg_co2e = kg_co2e * 2 WHERE activity_id = "
                f"(SELECT min(activity_id) FROM {e}.emission_results WHERE activity_type = "
                "'electricity') AND activity_type = 'electricity' RETURNING activity_id::text"
            )
            (altered,) = cur.fetchone()
            cur.execute(
                f"DELETE FROM {e}.emission_results WHERE activity_type = 'spend' AND "
                f"activity_id = (SELECT min(activity_id) FROM {e}.emission_results WHERE "
                "activity_type = 'spend') RETURNING activity_id::text"
            )
            (dropped,) = cur.fetchone()
            cur.execute(
                f"DELETE FROM {e}.air_travel_activities WHERE id = (SELECT min(activity_id) "
                f"FROM {e}.emission_results WHERE activity_type = 'air_travel') RETURNING id::text"
            )
            (gone,) = cur.fetchone()
            cur.execute(
                f"INSERT INTO {e}.emission_errors (activity_type, activity_id, reason_code, "
                "reason, input_repr, input_hash, activity_version, run_id) SELECT "
                "'electricity', a.id, 'planted', 'planted', 'x', 'planted', "
                f"a.xmin::text::bigint, %s FROM {e}.electricity_activities a "
                f"JOIN {e}.emission_results r ON r.activity_type = 'electricity' AND "
                "r.activity_id = a.id ORDER BY a.id DESC LIMIT 1 RETURNING activity_id::text",
                (str(uuid.uuid4()),),  # by no recorded run: the counts stay as they were
            )
            (doubled,) = cur.fetchone()
            cur.execute(
                f"UPDATE {e}.calculation_runs SET total_processed = total_processed + 2 "
                "WHERE run_id = %s",
                (run_id,),
            )
        conn.commit()

        truth = chaos_checks.one_truth(conn, "emissions", chaos._mismatches(database_url))
        found = {(r["problem"], r["activity_type"], r["activity_id"]) for r in truth.rows}
        assert found == {
            ("not_reproduced", "electricity", altered),
            ("not_reproduced", "air_travel", gone),  # verify: input_missing
            ("missing", "spend", dropped),
            ("both", "electricity", doubled),
        }
        assert [r["activity_id"] for r in chaos_checks.pending_truth(conn, "emissions")] == [
            dropped
        ]
        deleted = chaos_checks.deleted(conn, "emissions")
        assert [(r["kind"], r["activity_type"], r["activity_id"]) for r in deleted.rows] == [
            ("result", "air_travel", gone)
        ]
        history = chaos_checks.history(conn, "emissions")
        # The altered value left without reaching history, as did the dropped one.
        assert {(r["problem"], r["activity_type"], r["activity_id"]) for r in history.rows} == {
            ("lost", "electricity", altered),
            ("lost", "spend", dropped),
        }
        # The altered value was stored under the run's id too: the run's count is one over.
        counts = chaos_checks.counts(conn, "emissions")
        assert [(r["run_id"], r["summary_processed"] - r["stored"]) for r in counts.rows] == [
            (run_id, 1)
        ]


@pytest.mark.db
def test_a_short_harness_keeps_every_invariant(capsys: pytest.CaptureFixture[str]) -> None:
    """CI's short version of the fault harness: 3 schedules with fixed seeds, on a
    throwaway PostgreSQL of its own, with runs, follow, restatements, corrections, kills,
    freezes and a restart among them; every invariant holds."""
    code = chaos.main(["--schedules", "3", "--seed", "95", "--keep-going", "--json"])
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    outcomes, totals = lines[:-1], lines[-1]["totals"]
    violated = {
        o["seed"]: [v for v in o["verdicts"] if not v["ok"]] for o in outcomes if not o["ok"]
    }
    assert violated == {}
    assert code == 0
    assert [o["seed"] for o in outcomes] == list(range(95, 95 + 3))
    assert all(len(o["verdicts"]) == 5 for o in outcomes)
    assert totals["faults_total"] >= 5
