"""The benchmark's write floor and breakdown (issue 28), on a small run: the floor loads
exactly the rows the run stored into a copy of the results table, then removes the copy; the
breakdown's steps add up to the run's wall time."""

from __future__ import annotations

import json
from typing import Any

import pytest
import sqlalchemy as sa

from benchmarks.floor import FLOOR_SCHEMA, breakdown, breakdown_line, write_floor
from ops.seed import seed
from pipeline import run


def test_the_floor_loads_the_runs_rows_and_leaves_nothing(
    database_url: str, engine: sa.Engine, capsys: pytest.CaptureFixture[str]
) -> None:
    seed(engine, 1200, seed_value=3)
    assert run.main(["--database-url", database_url, "--progress-interval", "0"]) == 0
    summary: dict[str, Any] = json.loads(capsys.readouterr().out)
    floor = write_floor(database_url, summary["run_id"], repeat=2)
    assert floor["rows"] == summary["total_processed"] > 1000
    assert len(floor["s_all"]) == 2 and floor["s"] > 0
    assert floor["bytes"] > floor["rows"] * 100  # 30 columns a row, in binary
    with engine.connect() as conn:
        left = conn.execute(
            sa.text("SELECT count(*) FROM pg_namespace WHERE nspname = :s"), {"s": FLOOR_SCHEMA}
        ).scalar_one()
    assert left == 0


def test_the_breakdown_adds_up_to_the_wall_time() -> None:
    timings = {
        "setup_s": 0.5,
        "counts_s": 0.2,
        "plan_s": 0.1,
        "pipeline_s": 3.0,
        "read_busy_s": 1.5,
        "calculate_busy_s": 2.0,
        "write_busy_s": 2.4,
        "total_s": 3.75,
        "settle_s": 0.25,
    }
    steps = breakdown(6.0, timings)
    assert steps == {
        "start_up_s": 2.0,
        "set_up_s": 0.3,
        "counts_s": 0.2,
        "plan_s": 0.1,
        "pipeline_s": 2.9,
        "summarise_s": 0.25,
        "settle_s": 0.25,
        "read_busy_s": 1.5,
        "calculate_busy_s": 2.0,
        "write_busy_s": 2.4,
    }
    assert sum(v for k, v in steps.items() if not k.endswith("_busy_s")) == pytest.approx(6.0)
    assert breakdown_line(steps).endswith("(workers busy: read 1.50, calculate 2.00, write 2.40 s)")
