"""Mass retirement is a decision: a run that would retire more than a set share of a type's
results refuses before retiring anything; a dead letter retired with its activity reopens
when the activity reappears; every existing activity ends with one result or one open dead
letter (issue 23, item 3).

The application's table is ``app.power`` (200 rows, 10 of them refused: an unknown grid
region); the wrong mapping points at ``app.power_archive``, an empty table of the same layout,
as a forgotten or mistaken sources file would.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from pipeline import run
from tests.support import execute, scalar

ROWS, REFUSED = 200, 10
MAPPING = """[electricity]
table = "{table}"
[electricity.fields]
quantity = "kwh"
unit = {{ value = "kWh" }}
region = "region"
activity_date = "used_on"
"""


def application(url: str, tmp_path: Path) -> tuple[Path, Path]:
    """The application's tables, and the right and the wrong sources files."""
    execute(
        url,
        "CREATE SCHEMA app; "
        "CREATE TABLE app.power (id bigint PRIMARY KEY, kwh float8, region text, used_on date); "
        "CREATE TABLE app.power_archive (LIKE app.power INCLUDING ALL); "
        "INSERT INTO app.power SELECT g, 1000 + g * 7.25, "
        f"CASE WHEN g % {ROWS // REFUSED} = 0 THEN 'NOWHERE' ELSE "
        "(ARRAY['CAMX', 'ERCT', 'NYCW', 'RFCW'])[g % 4 + 1] END, "
        f"date '2024-01-01' + g FROM generate_series(1, {ROWS}) g",
    )
    right, wrong = tmp_path / "right.toml", tmp_path / "wrong.toml"
    right.write_text(MAPPING.format(table="app.power"))
    wrong.write_text(MAPPING.format(table="app.power_archive"))
    return right, wrong


def run_on(
    url: str, sources: Path, capsys: pytest.CaptureFixture[str], *extra: str
) -> tuple[int, dict | None, str]:
    """A run of the electricity activities: exit code, summary (when it succeeded), stderr."""
    argv = ["--database-url", url, "--sources", str(sources), "--activity-types", "electricity"]
    code = run.main([*argv, "--partitions", "2", "--progress-interval", "0", *extra])
    out, err = capsys.readouterr()
    return code, (json.loads(out[out.index("{") :]) if code == 0 else None), err


def results(url: str) -> dict[int, float]:
    conn_rows = scalar(
        url,
        "SELECT coalesce(json_object_agg(activity_id, kg_co2e), '{}') "
        "FROM emissions.emission_results",
    )
    return {int(k): v for k, v in conn_rows.items()}


def open_dead_letters(url: str) -> int:
    return int(
        scalar(url, "SELECT count(*) FROM emissions.emission_errors WHERE retired_at IS NULL")
    )


#: Existing activities that do not end with exactly one result or (without one) exactly one
#: open dead letter for their current version.
BROKEN_INVARIANT = """
SELECT count(*) FROM app.power a WHERE
  (SELECT count(*) FROM emissions.emission_results r
   WHERE r.activity_type = 'electricity' AND r.activity_id = a.id)
  + (SELECT count(*) FROM emissions.emission_errors e
     WHERE e.activity_type = 'electricity' AND e.activity_id = a.id
     AND e.retired_at IS NULL AND e.activity_version = a.xmin::text::bigint
     AND NOT EXISTS (SELECT 1 FROM emissions.emission_results r
                     WHERE r.activity_type = 'electricity' AND r.activity_id = a.id)) <> 1
"""


def test_a_wrong_mapping_is_refused_before_anything_is_retired(
    make_database: Callable[..., str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = make_database("bigint")
    right, wrong = application(url, tmp_path)
    code, first, _ = run_on(url, right, capsys)
    assert code == 0 and first is not None
    assert (first["total_processed"], first["errors"]) == (ROWS - REFUSED, REFUSED)
    stored = results(url)

    code, _, err = run_on(url, wrong, capsys)
    assert code == 2
    assert err.strip().splitlines()[-1] == (
        f"error: this run would retire {ROWS - REFUSED} of {ROWS - REFUSED} electricity results "
        "(100.0%) as deleted, more than --max-retire-share 0.1: check the sources mapping; if "
        "those activities really were deleted, run again with --allow-retire; nothing was "
        "retired"
    )
    assert results(url) == stored
    assert open_dead_letters(url) == REFUSED
    assert scalar(url, "SELECT count(*) FROM emissions.emission_results_history") == 0
    assert scalar(url, BROKEN_INVARIANT) == 0
    # The refused run is recorded, failed, with the same line.
    last = scalar(
        url,
        "SELECT json_build_array(status, message) FROM emissions.calculation_runs "
        "ORDER BY started_at DESC LIMIT 1",
    )
    assert last == ["failed", err.strip().splitlines()[-1].removeprefix("error: ")]


def test_a_share_under_the_bound_is_retired_and_one_over_it_needs_leave(
    make_database: Callable[..., str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = make_database("bigint")
    right, _ = application(url, tmp_path)
    assert run_on(url, right, capsys)[0] == 0
    # 18 of 190 results (9.5%): retired as usual.
    execute(
        url,
        "DELETE FROM app.power WHERE id IN (SELECT id FROM app.power "
        "WHERE region <> 'NOWHERE' ORDER BY id LIMIT 18)",
    )
    code, summary, _ = run_on(url, right, capsys)
    assert code == 0 and summary is not None and summary["retired"] == 18
    # 20 of the 172 left (11.6%): refused, then allowed by a larger share.
    execute(
        url,
        "DELETE FROM app.power WHERE id IN (SELECT id FROM app.power "
        "WHERE region <> 'NOWHERE' ORDER BY id LIMIT 20)",
    )
    code, _, err = run_on(url, right, capsys)
    assert code == 2 and "would retire 20 of 172 electricity results (11.6%)" in err
    assert len(results(url)) == 172
    code, summary, _ = run_on(url, right, capsys, "--max-retire-share", "0.12")
    assert code == 0 and summary is not None and summary["retired"] == 20
    assert len(results(url)) == 152
    assert scalar(url, BROKEN_INVARIANT) == 0
    # Not a share: refused as an option.
    code, _, err = run_on(url, right, capsys, "--max-retire-share", "1.5")
    assert code == 2
    assert err.strip().splitlines()[-1] == (
        "error: --max-retire-share must be a share from 0 to 1, not 1.5"
    )


def test_after_a_wrong_mapping_was_allowed_the_right_one_brings_every_activity_back(
    make_database: Callable[..., str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = make_database("bigint")
    right, wrong = application(url, tmp_path)
    assert run_on(url, right, capsys)[0] == 0
    stored = results(url)

    # The mistake, allowed: every result retired, every dead letter closed.
    code, summary, _ = run_on(url, wrong, capsys, "--allow-retire")
    assert code == 0 and summary is not None
    assert summary["retired"] == ROWS - REFUSED
    assert summary["by_activity_type"]["electricity"]["errors_retired"] == REFUSED
    assert results(url) == {} and open_dead_letters(url) == 0

    # The right mapping again: every result back (the same kg), every refused activity with
    # its dead letter open again, and the retired values kept in history.
    code, summary, _ = run_on(url, right, capsys)
    assert code == 0 and summary is not None
    assert (summary["new"], summary["errors"]) == (ROWS - REFUSED, REFUSED)
    assert results(url) == stored
    assert open_dead_letters(url) == REFUSED
    assert scalar(url, "SELECT count(*) FROM emissions.emission_errors") == REFUSED
    assert scalar(url, BROKEN_INVARIANT) == 0
    history = scalar(
        url,
        "SELECT json_object_agg(activity_id, kg_co2e) FROM emissions.emission_results_history "
        "WHERE reason = 'activity_deleted'",
    )
    assert {int(k): v for k, v in history.items()} == stored
    # And nothing is left to do.
    code, summary, _ = run_on(url, right, capsys)
    assert code == 0 and summary is not None and summary["pending"] == 0
