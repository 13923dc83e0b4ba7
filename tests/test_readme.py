"""The README is a first page (issue 27): short, an index of every document, every command in
it run by a test, and its examples (and the reference's summary) those of a real run."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import uuid
from typing import Any

import pytest
import sqlalchemy as sa

from ops.seed import seed
from pipeline import run
from tests.support import ROOT

README = (ROOT / "README.md").read_text()

#: Every command of the README's shell blocks, and what runs it.
RUN_BY = {
    # What the script execs, after making .venv: python -m ops.local --runner=DirectRunner.
    "./run_local.sh": "tests/test_logs.py::test_the_local_run_prints_no_beam_line",
    "./run_tests.sh": ".ci/run::exec ./run_tests.sh",  # CI runs exactly it
    "pip install .": "tests/test_package.py::test_installed_command_runs_from_any_folder",
    "emissions --help": "tests/test_package.py::test_installed_command_runs_from_any_folder",
    "emissions init": "tests/test_package.py::test_installed_command_runs_from_any_folder",
    "emissions run": "tests/test_package.py::test_installed_command_runs_from_any_folder",
    "emissions status": "tests/test_package.py::test_installed_command_runs_from_any_folder",
    ".venv/bin/python -m ops.embedded url": "tests/test_readme.py::test_the_embedded_server",
    ".venv/bin/python -m ops.embedded psql": "tests/test_readme.py::test_the_embedded_server",
    ".venv/bin/python -m ops.embedded stop": "tests/test_readme.py::test_the_embedded_server",
}


def blocks(text: str, info: str) -> list[str]:
    """The fenced code blocks of ``text`` whose info string is ``info`` ("" for none)."""
    return re.findall(rf"^```{info}\n(.*?)^```$", text, re.DOTALL | re.MULTILINE)


def test_the_readme_is_a_first_page_with_an_index_of_every_document() -> None:
    assert len(README.splitlines()) <= 150
    for doc in sorted((ROOT / "docs").glob("*.md")):
        assert f"| [docs/{doc.name}](docs/{doc.name}) |" in README, doc.name
    assert "| [CHANGELOG.md](CHANGELOG.md) |" in README


def test_every_command_in_the_readme_is_run_by_a_test() -> None:
    commands = [
        line.split("#", 1)[0].strip()
        for block in blocks(README, "bash")
        for line in block.splitlines()
        if line.strip()
    ]
    assert sorted(commands) == sorted(RUN_BY)
    for where in set(RUN_BY.values()):
        path, name = where.split("::")
        assert name in (ROOT / path).read_text(), where


def test_the_embedded_server_commands_work_as_the_readme_says() -> None:
    """url, psql and stop on a server of its own (a folder under the checkout: as root the
    server runs as the OS user pgserver, who cannot enter pytest's temporary folders)."""
    folder = ROOT / f".pgdata-readme-{uuid.uuid4().hex[:8]}"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PG", "EMISSIONS_"))}
    env.update(EMISSIONS_PGDATA=str(folder), PYTHONPATH=str(ROOT))

    def embedded(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "ops.embedded", *args],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )

    try:
        url = embedded("url")
        assert url.returncode == 0, url.stderr
        assert url.stdout.startswith("postgresql://postgres:@/emissions?host=")
        asked = embedded("psql", "-tA", "-c", "SELECT current_user || ' ' || current_database()")
        assert (asked.returncode, asked.stdout) == (0, "postgres emissions\n"), asked.stderr
        if shutil.which("psql"):  # any psql, given the URL
            given = subprocess.run(
                ["psql", url.stdout.strip(), "-tA", "-c", "SELECT 1"],
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert (given.returncode, given.stdout) == (0, "1\n"), given.stderr
        stopped = embedded("stop")
        assert (stopped.returncode, stopped.stdout) == (
            0,
            f"stopped the embedded server of {folder}\n",
        ), stopped.stderr
        assert not (folder / "postmaster.pid").exists()
        again = embedded("stop")
        assert again.stdout == f"no embedded server runs on {folder}\n"
    finally:
        embedded("stop")
        shutil.rmtree(folder, ignore_errors=True)


def same_shape(shown: Any, real: Any, where: str = "summary") -> None:
    """Every field ``shown`` has is in ``real``, with a value of the same type."""
    if isinstance(shown, dict):
        assert isinstance(real, dict), where
        for key, value in shown.items():
            assert key in real, f"{where}.{key} is not in a real run's summary"
            same_shape(value, real[key], f"{where}.{key}")
    else:
        assert type(shown) is type(real) or (shown is None or real is None), (where, shown, real)


def test_the_summaries_shown_are_a_real_runs(
    database_url: str, engine: sa.Engine, capsys: pytest.CaptureFixture[str]
) -> None:
    seed(engine, 300, seed_value=27)
    assert run.main(["--database-url", database_url, "--progress-interval", "0"]) == 0
    printed = capsys.readouterr().out
    real = json.loads(printed)
    # The README shows the summary's first lines as printed, then "…".
    (shown,) = [b for b in blocks(README, "") if b.startswith("{\n")]
    head = shown.splitlines()[:-1]
    assert shown.splitlines()[-1].strip() == "…"
    keys = [line.split('"')[1] for line in head[1:]]
    printed_keys = [line.split('"')[1] for line in printed.splitlines()[1 : len(head)]]
    assert keys == printed_keys
    same_shape(json.loads("\n".join(head).rstrip(",") + "}"), real)
    # The reference shows it whole, shortened where it repeats itself.
    reference = (ROOT / "docs" / "reference.md").read_text()
    summary = reference.split("### The run summary", 1)[1]
    same_shape(json.loads(blocks(summary, "json")[0]), real)
    assert real["total_processed"] + real["errors"] == real["pending"] == 300


#: The report behind docs/operations.md's example: a nightly Flink run killed, found by
#: ``emissions status`` after its heartbeat went stale.
STATUS_EXAMPLE: dict[str, Any] = {
    "status": "failing",
    "database": "postgresql://carbon:***@db/carbon",
    "schema": "emissions",
    "problems": [
        "the last run, 6f1c2a0e-3b7d-4c55-9a43-8f0d2e6b1c7a, abandoned: stopped without "
        "finishing: no heartbeat since 2026-12-01 02:14:05 UTC (marked by ops.status)"
    ],
    "abandoned_now": ["6f1c2a0e-3b7d-4c55-9a43-8f0d2e6b1c7a"],
    "pending": {"electricity": 16492, "spend": 14430, "air_travel": 10308},
    "pending_total": 41230,
    "last_success": {
        "run_id": "0b1297cc-5d2e-4f8a-b0a1-3c9e7d4f2a61",
        "started_at": "2026-11-30T02:00:03+00:00",
        "finished_at": "2026-11-30T02:13:51+00:00",
    },
    "runs": [
        {
            "run_id": "6f1c2a0e-3b7d-4c55-9a43-8f0d2e6b1c7a",
            "status": "abandoned",
            "runner": "FlinkRunner",
            "started_at": "2026-12-01T02:00:02+00:00",
            "duration_s": 843.2,
            "processed": None,
            "errors": None,
            "co2e_tonnes": None,
            "message": "stopped without finishing: no heartbeat since 2026-12-01 02:14:05 UTC "
            "(marked by ops.status)",
            "airflow": {
                "dag_id": "emissions_nightly",
                "dag_run_id": "scheduled__2026-11-30T02:00:00+00:00",
                "data_interval_start": "2026-11-30T02:00:00+00:00",
                "data_interval_end": "2026-12-01T02:00:00+00:00",
            },
        },
        {
            "run_id": "0b1297cc-5d2e-4f8a-b0a1-3c9e7d4f2a61",
            "status": "succeeded",
            "runner": "FlinkRunner",
            "started_at": "2026-11-30T02:00:03+00:00",
            "duration_s": 828.4,
            "processed": 40913,
            "errors": 412,
            "co2e_tonnes": 289764.18,
            "message": None,
            "airflow": None,
        },
    ],
}


def test_the_status_example_is_what_status_prints() -> None:
    from ops import status

    text = (ROOT / "docs" / "operations.md").read_text()
    (shown,) = [b for b in blocks(text, "") if b.startswith("$ emissions status\n")]
    assert shown == "$ emissions status\n" + status.render(STATUS_EXAMPLE) + "\n"
