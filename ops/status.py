"""Status and health of the pipeline, for an operator or a monitor:

    python -m ops.status [--json] [--last N] [--stale-after SECONDS] [--pending-after SECONDS]

The last runs (start, end, duration, runner, counts, tonnes, the Airflow run they were a task
of); runs that stopped without finishing, found by their heartbeat (a run writes one every few
seconds while it works: a run still 'running' whose heartbeat is older than --stale-after is
reported and marked 'abandoned', by a conditional update that a live run always escapes); and
the activities pending, per type.

Exit codes, for a monitor (docs/operations.md has them in a table): 0 healthy; 1 failing
(the last finished run failed or was abandoned, or a run that stopped still holds key ranges
the runs after it left to it while activities are pending); 2 asked the wrong way (one line on
stderr, nothing on stdout); 3 behind (activities are pending and no run has succeeded for
--pending-after seconds: pending activities arrived after the start of the last run that
succeeded, so that is the longest they can have waited); 4 unknown (the status could not be
read: the database unreachable, its schema missing or older than this release).
"""

from __future__ import annotations

import argparse
import math
import sys
from typing import Any

from pipeline import cli, health
from pipeline.store import install, runs

#: The verdicts' exit codes beside ``cli.OK`` and ``cli.FAILED`` (docs/operations.md).
BEHIND, UNKNOWN = health.BEHIND, health.UNKNOWN


def _number(value: float | int | None, digits: int = 0) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def render(report: dict[str, Any]) -> str:
    """The report for a person: a verdict, the problems, what is pending, the runs."""
    lines = [
        f"{report['status'].upper()}: {report['database']}, schema {report['schema']}",
        *(f"  - {p}" for p in report["problems"]),
    ]
    if report["abandoned_now"]:
        lines.append(f"marked abandoned now: {', '.join(report['abandoned_now'])}")
    per_type = ", ".join(f"{t} {n:,}" for t, n in report["pending"].items())
    lines.append(f"pending: {report['pending_total']:,} ({per_type})")
    success = report["last_success"]
    lines.append(
        "last success: "
        + (f"{success['run_id']}, started {success['started_at']}" if success else "none")
    )
    lines.append("runs, newest first:")
    header = ("started (UTC)", "status", "runner", "duration", "processed", "errors", "tonnes")
    rows = [header]
    for r in report["runs"]:
        started = (r["started_at"] or "-")[:19].replace("T", " ")
        duration = "-" if r["duration_s"] is None else f"{r['duration_s']:,.1f} s"
        rows.append(
            (
                started,
                r["status"],
                r["runner"] or "-",
                duration,
                _number(r["processed"]),
                _number(r["errors"]),
                _number(r["co2e_tonnes"], 2),
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    for i, row in enumerate(rows):
        text = "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True))
        run = report["runs"][i - 1] if i else None
        lines.append(f"  {text}  {run['run_id'] if run else 'run id'}")
        if run is not None and run["status"] != "succeeded" and run["message"]:
            lines.append(f"      {run['message']}")
        if run is not None and run["airflow"]:
            a = run["airflow"]
            lines.append(
                f"      airflow {a['dag_id']} {a['dag_run_id']}, data interval "
                f"{a['data_interval_start']} to {a['data_interval_end']}"
            )
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    """The command's options."""
    parser = cli.parser("ops.status", __doc__)
    cli.add_database_option(parser)
    parser.add_argument(
        "--json", action="store_true", help="print the status as one JSON object, for machines"
    )
    parser.add_argument("--last", type=int, default=10, help="how many recent runs to show")
    parser.add_argument(
        "--stale-after",
        "--stale_after",
        dest="stale_after",
        type=float,
        default=runs.DEFAULT_STALE_AFTER,
        metavar="SECONDS",
        help="a run still 'running' whose last heartbeat (written every "
        f"{runs.HEARTBEAT_INTERVAL:g} s) is older than this stopped without finishing: it is "
        "reported and marked abandoned",
    )
    parser.add_argument(
        "--pending-after",
        "--pending_after",
        dest="pending_after",
        type=float,
        default=health.DEFAULT_PENDING_AFTER,
        metavar="SECONDS",
        help="exit 3 (behind) when activities are pending and no run has succeeded for this long",
    )
    cli.add_log_level_option(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.last < 1:
        parser.error("--last must be at least 1")
    for name in ("stale_after", "pending_after"):
        if not math.isfinite(getattr(args, name)) or getattr(args, name) <= 0:
            parser.error(f"--{name.replace('_', '-')} must be a number of seconds above 0")
    cli.setup_logging(args.log_level)

    read: list[health.Status] = []

    def status(target: cli.Target) -> int:
        found = install.revision(target.engine, target.schema)
        if found.current is None:
            cli.error(cli.init_first(target.schema))
            return UNKNOWN
        if not found.up_to_date:
            cli.error(
                f"the schema {target.schema} is at revision {found.current}, not {found.head}: "
                "run python -m ops.admin init (or a run) to bring it up to date"
            )
            return UNKNOWN
        result = health.check(target, args.last, args.stale_after, args.pending_after)
        read.append(result)
        if args.json:
            cli.print_json(result.report)
        else:
            print(render(result.report))
        return result.code

    code = cli.run(args, "reading the status", status, pool_size=2, max_overflow=0)
    # A failure before the status was read (the database unreachable) is not a failing run.
    return UNKNOWN if code == cli.FAILED and not read else code


if __name__ == "__main__":
    sys.exit(main())
