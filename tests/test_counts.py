"""The counts a run starts with say what its reads will find: an activity refused in this very
version is not pending, one refused in an older version or whose dead letter was retired is.
(The counts find those refused in their current version from the open dead letters, instead
of looking each row up in them: issue 28.)"""

from __future__ import annotations

import pyarrow as pa
import pytest
import sqlalchemy as sa

from ops.seed import seed
from pipeline.methodology.batch import activity_schema
from pipeline.store import bulk, connections, queries
from tests.test_fixes_refused import BROKEN, break_them, broken_ids, rows
from tests.test_verify import run_pipeline


def read_pending(database_url: str) -> int:
    """Rows the read of the whole key span finds pending, as a run's ranges would."""
    conn = connections.connect(database_url)
    try:
        table = bulk.read_pending_table(
            conn, "electricity", None, None, activity_schema("electricity", pa.int64())
        )
        return int(table.num_rows)
    finally:
        conn.close()


def counted(engine: sa.Engine) -> dict[str, int]:
    return queries.count_activities(engine, ["electricity"], progress_interval=0)["electricity"]


def test_the_counts_find_what_the_read_finds_whatever_the_dead_letters(
    database_url: str, engine: sa.Engine, capsys: pytest.CaptureFixture[str]
) -> None:
    seed(engine, 300, seed_value=12)
    open_letters = "SELECT count(*) FROM emissions.emission_errors WHERE retired_at IS NULL"
    first = run_pipeline(database_url, capsys)
    assert rows(engine, open_letters) == [(first["errors"],)]
    ids = broken_ids(engine)
    break_them(engine, ids)
    assert run_pipeline(database_url, capsys)["errors"] == BROKEN
    assert rows(engine, open_letters) == [(first["errors"] + BROKEN,)]
    # Refused in this very version: nothing is pending.
    assert (counted(engine)["pending"], read_pending(database_url)) == (0, 0)

    # Two of them change again (still refused): their letters are of an older version now.
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "UPDATE emissions.electricity_activities SET unit = 'leagues' WHERE id = ANY(:i)"
            ),
            {"i": ids[:2]},
        )
    # Three letters are retired, as for deleted activities: those are read again.
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "UPDATE emissions.emission_errors SET retired_at = now() "
                "WHERE activity_type = 'electricity' AND activity_id = ANY(:i)"
            ),
            {"i": ids[2:5]},
        )
    found = counted(engine)
    assert (found["pending"], found["new"], found["changed"]) == (5, 5, 0)
    assert read_pending(database_url) == 5
    assert (
        found["total"]
        == rows(engine, "SELECT count(*) FROM emissions.electricity_activities")[0][0]
    )
