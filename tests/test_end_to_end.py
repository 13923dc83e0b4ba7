"""End to end on a real PostgreSQL: seed, run ``pipeline.run``, check every row, rerun."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest
import sqlalchemy as sa

from ops.seed import seed
from pipeline import run
from pipeline.store import connections, tables
from tests.support import sql_reference

COUNT = 4000


def run_pipeline(url: str, capsys: pytest.CaptureFixture[str], *extra: str) -> dict:
    code = run.main(
        ["--database-url", url, "--partitions", "3", "--progress-interval", "0", *extra]
    )
    out, err = capsys.readouterr()
    assert code == 0, f"exit {code}: {err[-2000:]}"
    return json.loads(out[out.index("{") :])


def stored(engine: sa.Engine) -> tuple[dict[tuple[str, str], float], dict[tuple[str, str], int]]:
    with engine.connect() as conn:
        results = {
            (t, i): kg
            for t, i, kg in conn.execute(
                sa.text(
                    "SELECT activity_type, activity_id::text, kg_co2e FROM "
                    "emissions.emission_results"
                )
            )
        }
        errors = {
            (t, i): n
            for t, i, n in conn.execute(
                sa.text(
                    "SELECT activity_type, activity_id::text, count(*) FROM "
                    "emissions.emission_errors "
                    "GROUP BY 1, 2"
                )
            )
        }
    return results, errors


def all_activities(engine: sa.Engine) -> set[tuple[str, str]]:
    with engine.connect() as conn:
        return {
            (t, str(i))
            for t, table in tables.ACTIVITY_TABLES.items()
            for (i,) in conn.execute(sa.text(f"SELECT id FROM {tables.qualified_text(table)}"))
        }


def check_every_activity_once(
    url: str, engine: sa.Engine, rf: bool = True, errors_may_remain: bool = False
) -> dict:
    results, errors = stored(engine)
    activities = all_activities(engine)
    # exactly one result or one error per activity, never both, never neither; a corrected
    # row keeps its old dead letter as history next to its new result
    assert set(results) | set(errors) == activities
    if not errors_may_remain:
        assert not set(results) & set(errors)
        assert all(n == 1 for n in errors.values())
    # the same rows and values as the independent in-database computation
    reference = sql_reference(url, rf)
    assert set(reference) == set(results)
    for key, kg in reference.items():
        assert results[key] == pytest.approx(kg, rel=1e-12, abs=1e-12), key
    assert sum(results.values()) == pytest.approx(sum(reference.values()), rel=1e-9)
    return results


@pytest.mark.parametrize("id_type", ["bigint", "uuid"])
def test_seed_run_check_rerun(
    make_database: Callable[..., str], capsys: pytest.CaptureFixture[str], id_type: str
) -> None:
    url = make_database(id_type)
    engine = connections.make_engine(url, poolclass=sa.pool.NullPool)
    added = seed(engine, COUNT, seed_value=7)
    assert sum(added.values()) == COUNT

    summary = run_pipeline(url, capsys)
    results = check_every_activity_once(url, engine)
    _, errors = stored(engine)
    assert summary["total_activities"] == COUNT
    assert summary["skipped"] == 0
    assert summary["total_processed"] == len(results)
    assert summary["errors"] == len(errors)
    assert summary["total_processed"] + summary["errors"] == COUNT
    assert summary["total_co2e_tonnes"] == pytest.approx(sum(results.values()) / 1000, rel=1e-9)
    for t, per_type in summary["by_activity_type"].items():
        assert per_type["processed"] == sum(1 for k in results if k[0] == t)
        assert per_type["errors"] == sum(1 for k in errors if k[0] == t)
    assert 0 < summary["errors"] < COUNT * 0.02  # the seed's ~1% bad rows

    with engine.connect() as conn:
        row = conn.execute(
            sa.text(
                "SELECT status, total_processed, errors, total_co2e_tonnes, metrics_source "
                "FROM emissions.calculation_runs WHERE run_id = :r"
            ),
            {"r": summary["run_id"]},
        ).one()
    assert tuple(row) == (
        "succeeded",
        summary["total_processed"],
        summary["errors"],
        pytest.approx(summary["total_co2e_tonnes"], rel=1e-12),
        "beam_counters",
    )

    # A rerun finds nothing pending, and writes nothing: refused rows that did not change are
    # not read again.
    again = run_pipeline(url, capsys)
    assert (again["pending"], again["total_processed"], again["errors"]) == (0, 0, 0)
    assert again["skipped"] == COUNT
    assert stored(engine) == (results, errors)

    # Correcting a refused row makes it pending again; the next run computes it.
    table = tables.ACTIVITY_TABLES["spend"]
    with engine.begin() as conn:
        fixed = conn.execute(
            sa.text(
                f"UPDATE {tables.qualified_text(table)} a SET amount = 100.0, currency = 'USD', "
                "naics_code = '334111' "
                "FROM emissions.emission_errors e WHERE e.activity_type = 'spend' AND "
                "e.activity_id = a.id "
                "RETURNING a.id::text"
            )
        ).all()
    assert fixed
    third = run_pipeline(url, capsys)
    assert (third["pending"], third["total_processed"], third["errors"]) == (len(fixed),) * 2 + (0,)
    check_every_activity_once(url, engine, errors_may_remain=True)
    engine.dispose()


def test_already_computed_activities_are_skipped(
    database_url: str, engine: sa.Engine, capsys: pytest.CaptureFixture[str]
) -> None:
    seed(engine, 1000, seed_value=3)
    first = run_pipeline(url := database_url, capsys, "--activity-types", "spend")
    assert first["by_activity_type"].keys() == {"spend"}
    assert run.main(["--database-url", url, "--partitions", "3", "--progress-interval", "0"]) == 0
    out, err = capsys.readouterr()
    second = json.loads(out[out.index("{") :])
    assert second["by_activity_type"]["spend"]["skipped"] == first["total_processed"]
    assert second["by_activity_type"]["spend"]["processed"] == 0
    assert second["by_activity_type"]["spend"]["pending"] == 0
    # Only the tables with something pending are planned and read at all.
    assert "6 key ranges to read (electricity, air_travel)" in err  # --partitions 3 each
    check_every_activity_once(url, engine)


def test_radiative_forcing_off(
    database_url: str, engine: sa.Engine, capsys: pytest.CaptureFixture[str]
) -> None:
    seed(engine, 600, seed_value=5)
    run_pipeline(database_url, capsys, "--activity-types", "air_travel", "--no-radiative-forcing")
    with engine.connect() as conn:
        flags = conn.execute(
            sa.text("SELECT DISTINCT radiative_forcing FROM emissions.emission_results")
        ).all()
    assert flags == [(False,)]
    # only air travel was asked for; now the rest
    run_pipeline(database_url, capsys)
    results, _ = stored(engine)
    with_rf = sql_reference(database_url, True)
    without_rf = sql_reference(database_url, False)
    for key, kg in results.items():
        expected = without_rf[key] if key[0] == "air_travel" else with_rf[key]
        assert kg == pytest.approx(expected, rel=1e-12)


def test_bad_options_exit_with_a_clear_message(
    database_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run.main(["--database-url", database_url, "--partitions", "0"]) == 2
    assert "--partitions must be at least 1" in capsys.readouterr().err
    assert run.main(["--database-url", database_url, "--activity-types", "gas"]) == 2
    assert "--activity-types" in capsys.readouterr().err


def test_an_unreachable_database_fails_without_leaking_the_password(
    capsys: pytest.CaptureFixture[str],
) -> None:
    url = "postgresql://alice:hunter2-secret@127.0.0.1:1/nowhere"
    quick = ["--retry-attempts", "2", "--retry-base-delay", "0.1"]  # refused: retried, briefly
    assert run.main(["--database-url", url, "--progress-interval", "0", *quick]) == 1
    captured = capsys.readouterr()
    assert "hunter2-secret" not in captured.out + captured.err
    assert "failed" in captured.err
