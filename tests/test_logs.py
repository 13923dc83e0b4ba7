"""Quiet, useful output: stdout holds the command's JSON and nothing else; stderr the command's
own log lines (Beam's and its job server's only at WARNING, unless ``--log-level DEBUG``);
progress lines with a rate and the time left, and a final line; and one command-line style on
every entry point (the same options and spellings, help for each, one-line errors).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator

import pytest
import sqlalchemy as sa

from audit import inventory, report, restate, verify
from ops import admin, seed, status
from pipeline import cli, options, run, summary
from tests.support import ROOT

#: A log line of the commands: time, level, logger, message.
LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (DEBUG|INFO|WARNING|ERROR) (\S+) ")


def test_the_local_run_prints_no_beam_line_and_its_summary_as_one_json_document(
    database_url: str, engine: sa.Engine
) -> None:
    """``./run_local.sh`` is ``python -m ops.local --runner=DirectRunner``, run here on a
    seeded test database."""
    seed.seed(engine, 3_000, seed_value=7)
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("PG", "EMISSIONS_"))}
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "ops.local",
            "--runner=DirectRunner",
            "--progress-interval",
            "0.5",
            "--rows-per-range",
            "200",
            "--write-batch-size",
            "100",
        ],
        cwd=ROOT,
        env={**clean, "PYTHONPATH": str(ROOT), "EMISSIONS_DATABASE_URL": database_url},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)  # the whole of stdout is one JSON document
    assert summary["status"] == "succeeded" and summary["pending"] == 3_000
    lines = done.stderr.splitlines()
    loggers = [LOG_LINE.match(line) for line in lines]
    assert all(loggers), done.stderr  # every line is a log line: no stray print
    assert {m.group(1) for m in loggers if m} == {"INFO"}
    assert {m.group(2) for m in loggers if m} <= {"pipeline.run", "pipeline.store.install"}
    assert not [line for line in lines if "apache_beam" in line]
    assert lines[0].endswith(
        f"run {summary['run_id']} on DirectRunner: 3000 pending of 3000 activities "
        "(3000 new, 0 changed); 0 deleted"
    )
    final = [line for line in lines if " progress: done: " in line]
    assert len(final) == 1, done.stderr
    processed = summary["total_processed"]
    assert re.search(
        rf" progress: done: {processed:,} of 3,000 pending activities have results "
        rf"\({100 * processed / 3000:.1f}%\) in \d+\.\d s, [\d,]+/s$",
        final[0],
    ), final[0]


@pytest.fixture
def logging_restored() -> Iterator[None]:
    """The test changes the logging of the process: it is set back after."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    levels = {name: logging.getLogger(name).level for name in cli.LIBRARY_LOGGERS}
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    for name, was in levels.items():
        logging.getLogger(name).setLevel(was)


@pytest.mark.usefixtures("logging_restored")
def test_libraries_log_warnings_only_unless_debug_is_asked_for() -> None:
    beam = logging.getLogger("apache_beam.runners.portability.portable_runner")
    job_server = logging.getLogger("apache_beam.utils.subprocess_server")
    ours = logging.getLogger("pipeline.run")
    cli.setup_logging("INFO")
    assert ours.isEnabledFor(logging.INFO)
    assert not beam.isEnabledFor(logging.INFO) and not job_server.isEnabledFor(logging.INFO)
    assert beam.isEnabledFor(logging.WARNING)
    assert not logging.getLogger("alembic.runtime.migration").isEnabledFor(logging.INFO)
    cli.setup_logging("WARNING")
    assert not ours.isEnabledFor(logging.INFO) and ours.isEnabledFor(logging.WARNING)
    cli.setup_logging("ERROR")
    assert not beam.isEnabledFor(logging.WARNING) and beam.isEnabledFor(logging.ERROR)
    cli.setup_logging("DEBUG")
    assert beam.isEnabledFor(logging.DEBUG) and job_server.isEnabledFor(logging.DEBUG)


@pytest.mark.usefixtures("logging_restored")
def test_log_level_warning_leaves_stderr_empty_and_debug_shows_beam(
    database_url: str, engine: sa.Engine, capsys: pytest.CaptureFixture[str]
) -> None:
    seed.seed(engine, 300, seed_value=7)
    args = ["--database-url", database_url, "--progress-interval", "0", "--partitions", "1"]
    assert run.main([*args, "--log-level", "DEBUG"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["total_processed"] > 0
    assert re.search(r"^\S+ \S+ (DEBUG|INFO) apache_beam\.", captured.err, re.MULTILINE)
    assert run.main([*args, "--log-level", "warning"]) == 0  # any case
    captured = capsys.readouterr()
    assert captured.err == ""
    assert json.loads(captured.out)["pending"] == 0


def progress_at(pending: int) -> summary.Progress:
    engine = sa.create_engine("postgresql+psycopg2://")  # never connects: lines only
    made = summary.Progress(engine, str(uuid.uuid4()), pending, 5.0)
    made._started = 100.0
    made._last = (100.0, 0)
    return made


def test_progress_lines_say_the_rate_the_time_left_and_end_with_a_final_line() -> None:
    made = progress_at(60_000)
    assert made.line(0, 105.0) == (
        "progress: 0 of 60,000 pending activities have results (0.0%) after 5 s: "
        "waiting for the first commits"
    )
    made._last = (105.0, 0)
    # 12,000 in the last 5 s: 2,400/s, so 48,000 left take 20 s.
    assert made.line(12_000, 110.0) == (
        "progress: 12,000 of 60,000 pending activities have results (20.0%), 1,200/s, "
        "about 20 s left"
    )
    made._last = (110.0, 12_000)
    assert made.line(13_000, 115.0) == (
        "progress: 13,000 of 60,000 pending activities have results (21.7%), 867/s, "
        "about 3 min 55 s left"
    )
    made._last = (115.0, 13_000)
    assert made.line(13_010, 125.0).endswith(", 520/s, about 13 h 3 min left")
    assert made.line(59_400, 130.0, final=True) == (
        "progress: done: 59,400 of 60,000 pending activities have results (99.0%) in 30.0 s, "
        "1,980/s"
    )


def test_progress_counts_from_the_write_log_and_ends_with_one_final_line(
    database_url: str, engine: sa.Engine, caplog: pytest.LogCaptureFixture
) -> None:
    run_id = str(uuid.uuid4())

    def written(n: int) -> None:
        with engine.begin() as conn:
            conn.execute(
                sa.text(
                    "INSERT INTO emissions.calculation_run_writes (run_id, activity_type, "
                    "results, kg_co2e, levels) VALUES (:run, 'spend', :n, 1.0, '{}')"
                ),
                {"run": run_id, "n": n},
            )

    with caplog.at_level(logging.INFO, logger="pipeline.run"):
        with summary.Progress(engine, run_id, 10, 0.2):
            time.sleep(0.3)
            written(4)
            time.sleep(0.5)
            written(3)
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) >= 3, lines
    assert lines[0] == (
        "progress: 0 of 10 pending activities have results (0.0%) after 0 s: waiting for the "
        "first commits"
    )
    assert any(line.startswith("progress: 4 of 10 pending activities have results (40.0%), ")
               for line in lines)  # fmt: skip
    assert re.fullmatch(
        r"progress: done: 7 of 10 pending activities have results \(70\.0%\) in \d+\.\d s, "
        r"\d+/s",
        lines[-1],
    ), lines[-1]
    assert sum("done:" in line for line in lines) == 1


# --- One style for every entry point --------------------------------------------------------


def run_parser() -> argparse.ArgumentParser:
    parser = cli.parser("pipeline.run", run.__doc__)
    options.add_arguments(parser)
    return parser


#: Every entry point's parser (for ops.admin, each subcommand's).
PARSERS: dict[str, Callable[[], argparse.ArgumentParser]] = {
    "pipeline.run": run_parser,
    "ops.seed": seed.build_parser,
    "ops.status": status.build_parser,
    "audit.verify": verify.build_parser,
    "audit.restate": restate.build_parser,
    "audit.report": report.build_parser,
    "audit.inventory": inventory.build_parser,
    **{
        f"ops.admin {name}": (lambda name=name: admin_command(name))  # type: ignore[misc]
        for name in ("init", "set-sources", "revision", "check-sources", "load-factors")
    },
}


def admin_command(name: str) -> argparse.ArgumentParser:
    parser = admin.build_parser()
    [sub] = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    found: argparse.ArgumentParser = sub.choices[name]
    return found


def long_options(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    return [a for a in parser._actions if a.option_strings and a.dest != "help"]


@pytest.mark.parametrize("command", sorted(PARSERS))
def test_every_entry_point_has_the_shared_options_help_for_each_and_one_spelling(
    command: str,
) -> None:
    parser = PARSERS[command]()
    actions = long_options(parser)
    given = {s for a in actions for s in a.option_strings}
    shared = {"--database-url", "--database_url", "--schema", "--sources", "--log-level"}
    assert shared <= given, shared - given
    for action in actions:
        assert action.help and len(action.help) > 10, action.option_strings
        dashed = [s for s in action.option_strings if s.startswith("--")]
        # Shown with dashes; Beam's spelling with underscores is accepted too.
        assert "_" not in dashed[0], dashed
        twins = {"--" + s[2:].replace("-", "_") for s in dashed if "-" in s[2:]}
        assert twins <= set(dashed), (dashed, twins)


def test_the_shared_options_are_declared_the_same_everywhere() -> None:
    seen: dict[str, set[str]] = {}
    for make in PARSERS.values():
        for action in long_options(make()):
            if action.dest in ("log_level", "database_url", "schema", "sources"):
                seen.setdefault(action.dest, set()).add(
                    f"{action.option_strings} {action.default!r} {action.help}"
                )
    # The same declaration in every command (one helper makes each).
    assert {dest: len(found) for dest, found in seen.items()} == {
        "database_url": 1,
        "schema": 1,
        "sources": 1,
        "log_level": 1,
    }


UNREACHABLE = "postgresql://nobody@127.0.0.1:1/none"


@pytest.mark.parametrize(
    ("module", "args", "what"),
    [
        ("ops.seed", ["--count", "1"], "seeding"),
        ("ops.admin", ["revision"], "reading the revision"),
        ("ops.status", ["--json"], "reading the status"),
        ("audit.verify", [], "verify"),
        ("audit.restate", [], "restatement"),
        ("audit.report", ["--out", "/tmp/never.html"], "report"),
        ("audit.inventory", ["--year", "2024"], "inventory"),
    ],
)
def test_a_failure_is_one_line_on_stderr_and_nothing_on_stdout(
    module: str, args: list[str], what: str
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PG", "EMISSIONS_"))}
    done = subprocess.run(
        [sys.executable, "-m", module, *args, "--database-url", UNREACHABLE],
        cwd=ROOT,
        env={**env, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    # ops.status: 4, unknown (a monitor tells it from a failing pipeline, 1: issue 27).
    assert (done.returncode, done.stdout) == (4 if module == "ops.status" else 1, "")
    assert len(done.stderr.splitlines()) == 1, done.stderr
    assert done.stderr.startswith(
        f'error: {what} failed: OperationalError: connection to server at "127.0.0.1", port 1 '
        "failed: Connection refused"
    ), done.stderr


def test_a_bad_option_is_refused_by_every_command_with_exit_2(
    capsys: pytest.CaptureFixture[str],
) -> None:
    for command, make in PARSERS.items():
        with pytest.raises(SystemExit) as refused:
            make().parse_args(["--log-level", "chatty"])
        assert refused.value.code == 2, command
        # One line, not the usage page (issue 23).
        assert capsys.readouterr().err == (
            "error: --log-level: expected one of DEBUG, INFO, WARNING, ERROR, got 'CHATTY'\n"
        ), command
