"""Data-quality coverage equals what SQL counts, per run and overall; the schema upgrade adds
the new run columns to an older database."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from audit import coverage
from ops.seed import seed
from pipeline.levels import LEVELS
from pipeline.store import runs
from tests.support import assert_write_log_matches_results
from tests.test_verify import run_pipeline


def one(engine: sa.Engine, query: str, **params: object) -> tuple:
    with engine.connect() as conn:
        return tuple(conn.execute(sa.text(query), params).one())


def test_coverage_counts_each_level_as_the_database_does(
    database_url: str, engine: sa.Engine, capsys: pytest.CaptureFixture[str]
) -> None:
    seed(engine, 1200, seed_value=41)
    summary = run_pipeline(database_url, capsys)
    cov = summary["quality"]
    overall = cov["overall"]
    results, kg = one(engine, "SELECT count(*), sum(kg_co2e) FROM emissions.emission_results")
    errors = summary["errors"]
    assert overall["results"] == results and overall["records"] == results + errors
    assert overall["kg_co2e"] == pytest.approx(kg, rel=1e-12)
    assert overall["errors"]["records"] == errors > 0
    assert overall["errors"]["share_of_records"] == errors / (results + errors)

    checks = {
        "country_fallback": "fallback = 'country'",
        "year_mismatch": "year_mismatch",
        "class_substituted": "class_substituted",
        "lifecycle_basis": "basis = 'lifecycle'",
        "exact": "fallback IS NULL AND NOT year_mismatch AND NOT class_substituted "
        "AND basis IS DISTINCT FROM 'lifecycle'",
    }
    for level, condition in checks.items():
        n, level_kg = one(
            engine,
            "SELECT count(*), coalesce(sum(kg_co2e), 0) FROM emissions.emission_results WHERE "
            f"{condition}",
        )
        assert overall[level]["records"] == n, level
        assert overall[level]["kg_co2e"] == pytest.approx(level_kg, rel=1e-12), level
        assert overall[level]["share_of_records"] == pytest.approx(n / (results + errors))
        assert overall[level]["share_of_kg"] == pytest.approx(level_kg / kg)
    # The seed has every kind: fallbacks and lifecycle for electricity, substitutions for air.
    by_type = cov["by_activity_type"]
    assert by_type["electricity"]["country_fallback"]["records"] > 0
    assert by_type["electricity"]["lifecycle_basis"]["records"] > 0
    assert by_type["air_travel"]["class_substituted"]["records"] > 0
    assert by_type["spend"]["class_substituted"]["records"] == 0
    # Over everything stored, after one run, it is the run's coverage (up to summation order).
    everything = coverage.coverage(engine)["overall"]
    for level in LEVELS:
        assert everything[level]["records"] == overall[level]["records"]
        assert everything[level]["kg_co2e"] == pytest.approx(overall[level]["kg_co2e"], rel=1e-12)
    assert everything["errors"] == overall["errors"]
    # The summary's coverage came from the run's write log; a scan of its results agrees.
    assert_write_log_matches_results(engine, summary["run_id"])
    # Progress lines read the same log: every stored result, counted once.
    assert runs.results_written(engine, summary["run_id"]) == results
    assert runs.results_written(engine, "00000000-0000-4000-8000-000000000000") == 0
