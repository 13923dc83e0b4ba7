"""Helpers for the robustness tests: runs of ``python -m pipeline.run`` as real processes.

A run started here is its own process group (``start_new_session``), so a test can SIGKILL it
and everything it started without touching anything else.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg2

from benchmarks.in_database import load_reference_tables, reference_results
from pipeline.levels import LEVELS
from pipeline.store import connections, runs

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class RunProcess:
    """A ``pipeline.run`` subprocess with its output going to files."""

    proc: subprocess.Popen[bytes]
    out: Path
    err: Path

    def wait(self, timeout: float = 180) -> int:
        return self.proc.wait(timeout=timeout)

    def kill(self) -> None:
        """SIGKILL the run and anything it started (its own process group)."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)

    @property
    def stdout(self) -> str:
        return self.out.read_text()

    @property
    def stderr(self) -> str:
        return self.err.read_text()

    def summary(self) -> dict[str, Any]:
        text = self.stdout
        return json.loads(text[text.index("{") :])


def start_run(
    url: str, workdir: Path, *extra: str, name: str = "run", module: str = "pipeline.run"
) -> RunProcess:
    out, err = workdir / f"{name}.out", workdir / f"{name}.err"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("EMISSIONS_DATABASE_URL", None)
    with open(out, "wb") as o, open(err, "wb") as e:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                module,
                "--database-url",
                url,
                "--progress-interval",
                "0",
                *extra,
            ],
            cwd=ROOT,
            env=env,
            stdout=o,
            stderr=e,
            start_new_session=True,
        )
    return RunProcess(proc, out, err)


def scalar(url: str, query: str, params: tuple[Any, ...] = ()) -> Any:
    """One value from a fresh connection (closed at once)."""
    conn = connections.connect(url)
    try:
        with conn.cursor() as cur:
            cur.execute(query, params)
            row = cur.fetchone()
        conn.commit()
        return None if row is None else row[0]
    finally:
        conn.close()


def execute(url: str, statement: str, params: tuple[Any, ...] = ()) -> None:
    """One statement on a fresh connection, committed (the connection closed at once); without
    params it runs as written (a % in it is no placeholder)."""
    conn = connections.connect(url)
    try:
        with conn.cursor() as cur:
            cur.execute(statement, params or None)
        conn.commit()
    finally:
        conn.close()


def try_scalar(url: str, query: str) -> Any:
    """Like ``scalar`` but None while the server is unreachable."""
    try:
        return scalar(url, query)
    except psycopg2.OperationalError:
        return None


def wait_for(
    condition: Callable[[], bool], timeout: float, interval: float = 0.05, what: str = ""
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what or condition}")


def results_count(url: str) -> int:
    return int(scalar(url, "SELECT count(*) FROM emissions.emission_results"))


def duplicate_counts(url: str) -> tuple[int, int]:
    """(activities with more than one result, (activity, input) pairs with more than one error)."""
    dup_results = scalar(
        url,
        "SELECT count(*) FROM (SELECT 1 FROM emissions.emission_results "
        "GROUP BY activity_type, activity_id HAVING count(*) > 1) d",
    )
    dup_errors = scalar(
        url,
        "SELECT count(*) FROM (SELECT 1 FROM emissions.emission_errors "
        "GROUP BY activity_type, activity_id, input_hash HAVING count(*) > 1) d",
    )
    return int(dup_results), int(dup_errors)


def assert_write_log_matches_results(engine: Any, run_id: str) -> None:
    """The run's write log (``runs.run_coverage``) says exactly what its stored results do
    (``coverage.coverage``, a scan): the same counts per type and level, the same kg CO2e to
    floating-point rounding."""
    import pytest

    from audit import coverage

    logged = runs.run_coverage(engine, run_id)
    scanned = coverage.coverage(engine, run_id)
    assert logged["by_activity_type"].keys() == scanned["by_activity_type"].keys()
    for part in [logged["overall"], *logged["by_activity_type"].values()]:
        assert part["results"] > 0
    pairs = [(logged["overall"], scanned["overall"])] + [
        (logged["by_activity_type"][t], scanned["by_activity_type"][t])
        for t in scanned["by_activity_type"]
    ]
    for got, want in pairs:
        assert (got["records"], got["results"]) == (want["records"], want["results"])
        assert got["kg_co2e"] == pytest.approx(want["kg_co2e"], rel=1e-12)
        assert got["errors"] == want["errors"]
        for level in LEVELS:
            assert got[level]["records"] == want[level]["records"], level
            assert got[level]["kg_co2e"] == pytest.approx(want[level]["kg_co2e"], rel=1e-12)


def sql_reference(url: str, radiative_forcing: bool = True) -> dict[tuple[str, str], float]:
    """kg CO2e per activity as the independent in-database SQL computes it
    (``benchmarks/in_database.py``), from the activities as they are now."""
    conn = connections.connect(url)
    try:
        load_reference_tables(conn)
        return reference_results(conn, radiative_forcing=radiative_forcing)
    finally:
        conn.close()
