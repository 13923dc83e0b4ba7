"""An activity corrected into input the methodology refuses loses its old result to history in
the transaction that writes the dead letter of the new input (chaos finding F1; the plain case
is ``tests/test_one_truth.py``'s): a dead letter of an input changed again since retires
nothing, and a database an older release left so is repaired by the next run."""

from __future__ import annotations

from typing import Any

import pytest
import sqlalchemy as sa

from ops.seed import seed
from pipeline.model import ErrorRecord
from pipeline.store import connections, queries, writes
from tests.test_verify import run_pipeline

BROKEN = 20


def rows(engine: sa.Engine, query: str, **params: object) -> list[tuple[Any, ...]]:
    with engine.connect() as conn:
        return [tuple(r) for r in conn.execute(sa.text(query), params)]


def broken_ids(engine: sa.Engine) -> list[int]:
    return [
        int(i)
        for (i,) in rows(
            engine,
            "SELECT activity_id FROM emissions.emission_results "
            "WHERE activity_type = 'electricity' ORDER BY activity_id LIMIT :n",
            n=BROKEN,
        )
    ]


def break_them(engine: sa.Engine, ids: list[int]) -> None:
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "UPDATE emissions.electricity_activities SET unit = 'furlongs' WHERE id = ANY(:i)"
            ),
            {"i": ids},
        )


def dead_letter(activity_id: int, version: int) -> ErrorRecord:
    return ErrorRecord(
        "electricity", activity_id, "unknown_unit", "furlongs", f"{activity_id} furlongs", version
    )


def test_a_dead_letter_of_an_input_changed_since_retires_nothing(
    database_url: str, engine: sa.Engine, capsys: pytest.CaptureFixture[str]
) -> None:
    seed(engine, 100, seed_value=9)
    run_pipeline(database_url, capsys)
    first, second = broken_ids(engine)[:2]
    version_of = "SELECT xmin::text::bigint FROM emissions.electricity_activities WHERE id = :i"
    # ``first``: its result is of its current version; a dead letter of an older version (a
    # slow writer) must not retire it.
    ((current,),) = rows(engine, version_of, i=first)
    # ``second``: broken, then changed again before its dead letter is written: the result of
    # the first version stays pending for the next run, which computes its input as it is.
    break_them(engine, [second])
    ((refused,),) = rows(engine, version_of, i=second)
    with engine.begin() as conn:
        conn.execute(
            sa.text("UPDATE emissions.electricity_activities SET unit = 'kWh' WHERE id = :i"),
            {"i": second},
        )
    stored = "SELECT activity_id, activity_version FROM emissions.emission_results "
    stored += "WHERE activity_type = 'electricity' AND activity_id IN (:a, :b) ORDER BY 1"
    kept = rows(engine, stored, a=first, b=second)
    with connections.raw_connection(engine) as conn:
        writes.write_errors(
            conn,
            [dead_letter(first, current - 1), dead_letter(second, refused)],
            "00000000-0000-4000-8000-00000000f001",
        )
    assert rows(engine, stored, a=first, b=second) == kept
    assert rows(engine, "SELECT count(*) FROM emissions.emission_results_history") == [(0,)]
    # The dead letter of the refused version is kept, as a record; the next run computes the
    # activity's input as it is now.
    rerun = run_pipeline(database_url, capsys)
    assert rerun["total_processed"] == 1
    assert rows(
        engine,
        "SELECT activity_id, reason FROM emissions.emission_results_history ORDER BY 1",
    ) == [(second, "activity_changed")]


def test_a_database_left_so_by_an_older_release_is_repaired_by_the_next_run(
    database_url: str,
    engine: sa.Engine,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    seed(engine, 200, seed_value=10)
    run_pipeline(database_url, capsys)
    ids = broken_ids(engine)
    break_them(engine, ids)
    with monkeypatch.context() as older:  # a release that wrote the dead letters alone
        older.setattr(writes, "retire_refused", lambda *_: 0)
        assert run_pipeline(database_url, capsys)["errors"] == BROKEN
    stale = "SELECT count(*) FROM emissions.emission_results WHERE activity_id = ANY(:i) "
    stale += "AND activity_type = 'electricity'"
    assert rows(engine, stale, i=ids) == [(BROKEN,)]
    counts = queries.count_activities(engine, ["electricity"], progress_interval=0)
    assert counts["electricity"]["pending"] == BROKEN

    repairing = run_pipeline(database_url, capsys)
    assert (repairing["total_processed"], repairing["errors"]) == (0, 0)  # stored already
    assert rows(engine, stale, i=ids) == [(0,)]
    assert rows(
        engine,
        "SELECT count(*) FROM emissions.emission_results_history WHERE restatement_id = :r",
        r=repairing["run_id"],
    ) == [(BROKEN,)]
    counts = queries.count_activities(engine, ["electricity"], progress_interval=0)
    assert counts["electricity"]["pending"] == 0
