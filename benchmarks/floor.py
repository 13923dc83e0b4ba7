"""The physical floor of a run's writing, and where a run's wall time goes.

``write_floor``: the result rows one run stored, in PostgreSQL's binary COPY format, loaded
into an empty copy of the results table (the same columns, keys and indexes) — what writing
those rows costs the database itself, with nothing else of a run around it. ``breakdown``: a
run's wall time by step, from the timings the run measured itself (its summary).
"""

from __future__ import annotations

import statistics
import tempfile
import time
from typing import IO, Any

from psycopg2 import sql

from pipeline.store import connections, tables

#: Where the copy of the results table lives while the floor is measured (then dropped).
FLOOR_SCHEMA = "benchmark_write_floor"


def write_floor(url: str, run_id: str, repeat: int = 3) -> dict[str, Any]:
    """Loads the run's result rows (binary COPY) into an empty copy of the results table
    ``repeat`` times; the median seconds, the rows and the bytes."""
    conn = connections.connect(url)
    try:
        with tempfile.TemporaryFile() as rows, conn.cursor() as cur:
            query = sql.SQL("SELECT * FROM {} WHERE run_id = {}").format(
                tables.qualified(tables.RESULTS_TABLE), sql.Literal(run_id)
            )
            cur.copy_expert(sql.SQL("COPY ({}) TO STDOUT (FORMAT binary)").format(query), rows)
            size = rows.tell()
            _create_copy(cur)
            conn.commit()
            seconds = [_load(conn, rows) for _ in range(repeat)]
            cur.execute(sql.SQL("SELECT count(*) FROM {}").format(_copy()))
            loaded = cur.fetchone()[0]
            cur.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(FLOOR_SCHEMA)))
            conn.commit()
    finally:
        conn.close()
    return {"rows": loaded, "bytes": size, "s": statistics.median(seconds), "s_all": seconds}


def _copy() -> sql.Composed:
    return sql.SQL("{}.{}").format(
        sql.Identifier(FLOOR_SCHEMA), sql.Identifier(tables.RESULTS_TABLE)
    )


def _create_copy(cur: Any) -> None:
    """An empty table like the results table, with its keys and indexes."""
    cur.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(FLOOR_SCHEMA)))
    cur.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(FLOOR_SCHEMA)))
    cur.execute(
        sql.SQL("CREATE TABLE {} (LIKE {} INCLUDING ALL)").format(
            _copy(), tables.qualified(tables.RESULTS_TABLE)
        )
    )


def _load(conn: Any, rows: IO[bytes]) -> float:
    """One load into the emptied copy, committed; its seconds."""
    copy = _copy()
    with conn.cursor() as cur:
        cur.execute(sql.SQL("TRUNCATE {}").format(copy))
        conn.commit()
        rows.seek(0)
        started = time.perf_counter()
        cur.copy_expert(sql.SQL("COPY {} FROM STDIN (FORMAT binary)").format(copy), rows)
        conn.commit()
        return time.perf_counter() - started


def breakdown(wall_s: float, timings: dict[str, float]) -> dict[str, float]:
    """A run's wall time by step, from its summary's ``timings``: start-up (the interpreter
    and imports, before the run's clock starts), set-up (connections, the run's record, the
    checks), the counts, planning, the pipeline (reading, calculating and writing at once:
    ``*_busy_s`` say how the workers' time divides), summarising and recording, settling."""
    setup = timings["setup_s"]
    pipeline = timings.get("pipeline_s", 0.0)
    total = timings["total_s"]
    settle = timings.get("settle_s", 0.0)
    steps = {
        "start_up_s": wall_s - total - settle,
        "set_up_s": setup - timings.get("counts_s", 0.0),
        "counts_s": timings.get("counts_s", 0.0),
        "plan_s": timings.get("plan_s", 0.0),
        "pipeline_s": pipeline - timings.get("plan_s", 0.0),
        "summarise_s": total - setup - pipeline,
        "settle_s": settle,
    }
    busy = {k: v for k, v in timings.items() if k.endswith("_busy_s")}
    return {k: round(v, 3) for k, v in {**steps, **busy}.items()}


def breakdown_line(steps: dict[str, float]) -> str:
    """One line: each step's seconds, the stages' busy seconds in brackets."""
    shown = ", ".join(
        f"{k.removesuffix('_s').replace('_', '-')} {v:.2f}"
        for k, v in steps.items()
        if not k.endswith("_busy_s")
    )
    busy = ", ".join(
        f"{k.removesuffix('_busy_s')} {v:.2f}" for k, v in steps.items() if k.endswith("_busy_s")
    )
    return f"{shown} s" + (f" (workers busy: {busy} s)" if busy else "")
