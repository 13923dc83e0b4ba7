"""``pipeline.run --recheck``: for an application that changes a row without its version
column, a run compares every stored result's input fingerprint with its activity as it is now
and recomputes exactly those that differ; ``audit.verify`` says which of the two will catch a
change (issue 23, item 4)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from audit import verify
from pipeline import follow, run
from tests.support import execute, scalar

ROWS = 60
MAPPING = """[electricity]
table = "app.power"
version = "row_version"
[electricity.fields]
quantity = "kwh"
unit = { value = "kWh" }
region = "region"
activity_date = "used_on"
"""


def run_on(url: str, mapping: Path, capsys: pytest.CaptureFixture[str], *extra: str) -> dict:
    argv = ["--database-url", url, "--sources", str(mapping), "--activity-types", "electricity"]
    code = run.main([*argv, "--partitions", "2", "--progress-interval", "0", *extra])
    out = capsys.readouterr().out
    assert code == 0, out
    return json.loads(out[out.index("{") :])


def kg(url: str, activity_id: int) -> float:
    return float(
        scalar(
            url,
            "SELECT kg_co2e FROM emissions.emission_results WHERE activity_id = %s",
            (activity_id,),
        )
    )


def mismatches(
    url: str, mapping: Path, capsys: pytest.CaptureFixture[str]
) -> dict[str, tuple[str, str]]:
    """``audit.verify --all``'s mismatches: activity id → (status, detail)."""
    argv = ["--database-url", url, "--sources", str(mapping), "--all"]
    code = verify.main([*argv, "--activity-types", "electricity"])
    report = json.loads(capsys.readouterr().out)
    assert code == (1 if report["mismatches"] else 0)
    return {m["activity_id"]: (m["status"], m["detail"]) for m in report["mismatches"]}


def test_a_change_that_left_the_version_column_alone_is_found_by_recheck_only(
    make_database: Callable[..., str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = make_database("bigint")
    execute(
        url,
        "CREATE SCHEMA app; CREATE TABLE app.power (id bigint PRIMARY KEY, kwh float8, "
        "region text, used_on date, row_version bigint NOT NULL DEFAULT 1); "
        "INSERT INTO app.power (id, kwh, region, used_on) SELECT g, 500 + g * 3.5, "
        f"(ARRAY['CAMX', 'ERCT', 'NYCW'])[g % 3 + 1], date '2024-03-01' + g "
        f"FROM generate_series(1, {ROWS}) g",
    )
    mapping = tmp_path / "sources.toml"
    mapping.write_text(MAPPING)
    first = run_on(url, mapping, capsys)
    assert first["total_processed"] == ROWS
    before = kg(url, 7), kg(url, 8)

    # The application doubles row 7 without its version column, and row 8 with it.
    execute(url, "UPDATE app.power SET kwh = kwh * 2 WHERE id = 7")
    execute(url, "UPDATE app.power SET kwh = kwh * 2, row_version = row_version + 1 WHERE id = 8")
    assert mismatches(url, mapping, capsys) == {
        "7": (
            "input_changed",
            "the activity row changed since, but not its version: run pipeline.run --recheck "
            "to recompute it",
        ),
        "8": ("input_changed", "the activity row changed since: the next run recomputes it"),
    }

    # A run sees the new version only.
    normal = run_on(url, mapping, capsys)
    assert (normal["pending"], normal["total_processed"], normal["changed"]) == (1, 1, 1)
    assert kg(url, 8) == 2 * before[1]
    assert kg(url, 7) == before[0]
    again = run_on(url, mapping, capsys)
    assert (again["pending"], again["total_processed"]) == (0, 0)
    assert kg(url, 7) == before[0]

    # --recheck compares every result's input fingerprint (all 60 are pending: to compare):
    # exactly row 7 is recomputed.
    rechecked = run_on(url, mapping, capsys, "--recheck")
    assert (rechecked["pending"], rechecked["skipped"]) == (ROWS, 0)
    assert (rechecked["total_processed"], rechecked["changed"], rechecked["new"]) == (1, 1, 0)
    assert kg(url, 7) == 2 * before[0]
    history = scalar(
        url,
        "SELECT json_agg(json_build_array(activity_id, kg_co2e, reason) ORDER BY activity_id) "
        "FROM emissions.emission_results_history",
    )
    assert history == [[7, before[0], "activity_changed"], [8, before[1], "activity_changed"]]
    assert mismatches(url, mapping, capsys) == {}
    # Nothing differs any more: a second recheck writes nothing.
    assert run_on(url, mapping, capsys, "--recheck")["total_processed"] == 0
    assert scalar(url, "SELECT count(*) FROM emissions.emission_results") == ROWS


def test_follow_refuses_recheck_in_one_line(
    database_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert follow.main(["--database-url", database_url, "--recheck"]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "error: --recheck is pipeline.run's: follow computes the rows its follow_by column says "
        "changed; run python -m pipeline.run --recheck for the others"
    ]
    assert scalar(database_url, "SELECT count(*) FROM emissions.calculation_runs") == 0
