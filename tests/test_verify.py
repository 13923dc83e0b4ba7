"""Replay: a run stores every result's fingerprints, and ``verify`` finds every row that does not
reproduce, and why."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest
import sqlalchemy as sa

from audit import coverage, verify
from ops.seed import seed
from pipeline import editions, run
from pipeline.levels import LEVELS
from pipeline.store import connections


def run_pipeline(url: str, capsys: pytest.CaptureFixture[str], *extra: str) -> dict:
    code = run.main(
        ["--database-url", url, "--partitions", "2", "--progress-interval", "0", *extra]
    )
    out = capsys.readouterr().out
    assert code == 0, out
    return json.loads(out[out.index("{") :])


def scalar(engine: sa.Engine, query: str, **params: object) -> object:
    with engine.connect() as conn:
        return conn.execute(sa.text(query), params).scalar()


def test_a_run_fingerprints_every_result_and_every_result_reproduces(
    database_url: str, engine: sa.Engine, capsys: pytest.CaptureFixture[str]
) -> None:
    seed(engine, 600, seed_value=11)
    summary = run_pipeline(database_url, capsys)
    results = scalar(engine, "SELECT count(*) FROM emissions.emission_results")
    assert results == summary["total_processed"] > 500
    sealed = scalar(
        engine,
        "SELECT count(*) FROM emissions.emission_results r JOIN emissions.calculation_runs c USING "
        "(run_id) "
        "WHERE r.input_fingerprint IS NOT NULL AND r.factor_fingerprint IS NOT NULL "
        "AND c.code_version = :v",
        v=editions.code_version(),
    )
    assert sealed == results
    # The summary carries the audit facts, and they are stored with the run.
    assert summary["code_version"] == editions.code_version()
    assert summary["factor_editions"]["desnz_air"] == ["2024 full set v1.1", "2025 flat file"]
    again = coverage.coverage(engine, summary["run_id"])["overall"]
    for level in LEVELS:
        assert summary["quality"]["overall"][level]["records"] == again[level]["records"]
    stored = scalar(
        engine,
        "SELECT quality FROM emissions.calculation_runs WHERE run_id = :r",
        r=summary["run_id"],
    )
    assert stored == json.loads(json.dumps(summary["quality"]))

    report = verify.verify(engine, sample=None)
    assert report.examined == results
    assert report.reproduced == results, report.mismatches[:3]
    assert report.unsealed == 0

    capsys.readouterr()
    assert verify.main(["--database-url", database_url, "--sample", "50"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["examined"] == 150 and out["not_reproduced"] == 0


def test_verify_names_the_tampered_rows_and_why(
    database_url: str, engine: sa.Engine, capsys: pytest.CaptureFixture[str]
) -> None:
    seed(engine, 300, seed_value=12)
    run_pipeline(database_url, capsys)
    with engine.begin() as conn:
        # A result altered in place.
        tampered = conn.execute(
            sa.text(
                "UPDATE emissions.emission_results SET kg_co2e = kg_co2e * 1.0000001 WHERE "
                "activity_id = "
                "(SELECT min(activity_id) FROM emissions.emission_results WHERE activity_type = "
                "'spend') "
                "AND activity_type = 'spend' RETURNING activity_id, kg_co2e"
            )
        ).one()
        # An input corrected after its result was computed.
        edited = conn.execute(
            sa.text(
                "UPDATE emissions.electricity_activities SET quantity = quantity + 1 WHERE id = "
                "(SELECT min(activity_id) FROM emissions.emission_results WHERE activity_type = "
                "'electricity') RETURNING id"
            )
        ).scalar_one()
    report = verify.verify(engine, sample=None)
    assert report.examined - report.reproduced == 2
    found = {(m.activity_type, m.activity_id): m for m in report.mismatches}
    spend = found[("spend", str(tampered[0]))]
    assert spend.status == "not_reproduced"
    assert list(spend.fields) == ["kg_co2e"]
    assert spend.fields["kg_co2e"][0] == tampered[1]
    assert spend.fields["kg_co2e"][1] != tampered[1]
    assert found[("electricity", str(edited))].status == "input_changed"

    capsys.readouterr()
    assert verify.main(["--database-url", database_url, "--all"]) == 1
    out = json.loads(capsys.readouterr().out)
    assert out["by_status"] == {"input_changed": 1, "not_reproduced": 1}


def test_verify_tells_an_edited_factor_row_and_a_deleted_activity(
    database_url: str, engine: sa.Engine, capsys: pytest.CaptureFixture[str]
) -> None:
    seed(engine, 300, seed_value=13)
    run_pipeline(database_url, capsys)
    with engine.begin() as conn:
        # The factor row the fewest electricity results use, edited in place.
        factor_id, users = conn.execute(
            sa.text(
                "SELECT factor_id, count(*) FROM emissions.emission_results WHERE activity_type = "
                "'electricity' GROUP BY factor_id ORDER BY count(*), factor_id LIMIT 1"
            )
        ).one()
        conn.execute(
            sa.text(
                "UPDATE emissions.emission_factors SET edition = edition || ' (edited)' WHERE id = "
                ":i"
            ),
            {"i": factor_id},
        )
        gone = conn.execute(
            sa.text(
                "DELETE FROM emissions.spend_activities WHERE id = (SELECT min(activity_id) FROM "
                "emissions.emission_results WHERE activity_type = 'spend') RETURNING id"
            )
        ).scalar_one()
    report = verify.verify(engine, sample=None)
    assert report.by_status == {"factor_changed": users, "input_missing": 1}
    found = {(m.activity_type, m.activity_id): m.status for m in report.mismatches}
    assert found[("spend", str(gone))] == "input_missing"
    assert sum(1 for s in found.values() if s == "factor_changed") == users


def test_uuid_keyed_results_are_fingerprinted_and_reproduce(
    make_database: Callable[..., str], capsys: pytest.CaptureFixture[str]
) -> None:
    url = make_database("uuid")
    engine = connections.make_engine(url, poolclass=sa.pool.NullPool)
    try:
        seed(engine, 300, seed_value=14)
        summary = run_pipeline(url, capsys)
        report = verify.verify(engine, sample=None)
        assert report.examined == summary["total_processed"] > 250
        assert report.unsealed == 0
        assert report.reproduced == report.examined, report.mismatches[:3]
    finally:
        engine.dispose()
