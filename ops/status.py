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
import datetime
import math
import sys
from dataclasses import dataclass
from typing import Any

from pipeline import cli
from pipeline.store import claims, connections, install, queries, runs

#: Pending work older than this (seconds) makes the status unhealthy (exit 3): a nightly
#: schedule, plus two hours.
DEFAULT_PENDING_AFTER = 26 * 3600.0
#: Exit codes: ``cli.OK`` (0) healthy, ``cli.FAILED`` (1) failing, ``cli.USAGE`` (2) asked the
#: wrong way, and these two; each means one thing, so a monitor can tell them apart.
BEHIND = 3
UNKNOWN = 4
#: The outcomes of a run that make the status exit 1 when it is the last.
UNHEALTHY_OUTCOMES = ("failed", runs.ABANDONED)


@dataclass(frozen=True)
class Status:
    """What the status says, and its exit code."""

    code: int
    report: dict[str, Any]


def _time(moment: datetime.datetime | None) -> str | None:
    if moment is None:
        return None
    return moment.astimezone(datetime.timezone.utc).isoformat()


def _seconds(value: float | None) -> float | None:
    return None if value is None else round(float(value), 3)


def describe_run(r: runs.RunRecord) -> dict[str, Any]:
    """A run as the status shows it (times in UTC, ISO 8601)."""
    airflow = {
        "dag_id": r.airflow_dag_id,
        "dag_run_id": r.airflow_run_id,
        "data_interval_start": _time(r.data_interval_start),
        "data_interval_end": _time(r.data_interval_end),
    }
    return {
        "run_id": r.run_id,
        "status": r.status,
        "runner": r.runner,
        "started_at": _time(r.started_at),
        "finished_at": _time(r.finished_at),
        "heartbeat_at": _time(r.heartbeat_at),
        "duration_s": _seconds(r.duration_s),
        "heartbeat_age_s": _seconds(r.heartbeat_age_s),
        "total_activities": r.total_activities,
        "pending": r.pending,
        "processed": r.total_processed,
        "errors": r.errors,
        "co2e_tonnes": r.total_co2e_tonnes,
        "message": r.message,
        "airflow": airflow if any(v is not None for v in airflow.values()) else None,
    }


def check(
    target: cli.Target,
    last: int = 10,
    stale_after: float = runs.DEFAULT_STALE_AFTER,
    pending_after: float = DEFAULT_PENDING_AFTER,
) -> Status:
    """Marks the runs whose heartbeat is older than ``stale_after`` seconds abandoned, then
    reads the last ``last`` runs and the pending activities, and judges them."""
    engine, schema = target.engine, target.schema
    marked = runs.mark_abandoned(engine, stale_after, schema, by="ops.status")
    if marked:
        # A frozen process keeps its connections, and the locks of a flush it had begun.
        with connections.raw_connection(engine) as conn:
            claims.cut_off(conn, marked)
    recent = runs.recent_runs(engine, schema, last)
    finished = [r for r in recent if r.status != "running"]
    last_run = finished[0] if finished else None
    success = runs.last_succeeded(engine, schema)
    checked = cli.checked_sources(target)
    counts = queries.count_activities(
        engine, list(checked), sources=checked, schema=schema, progress_interval=0
    )
    pending = {t: c["pending"] for t, c in counts.items()}
    total = sum(pending.values())

    problems: list[str] = []
    code = cli.OK
    if last_run is not None and last_run.status in UNHEALTHY_OUTCOMES:
        code = cli.FAILED
        problems.append(f"the last run, {last_run.run_id}, {last_run.status}: {last_run.message}")
    left = _left_to_stopped_runs(target, total, last_run)
    if left:
        code = cli.FAILED
        problems += left
    waited = None if success is None or success.started_at is None else success.started_at
    too_long = total > 0 and (
        waited is None
        or (datetime.datetime.now(datetime.timezone.utc) - waited).total_seconds() > pending_after
    )
    if too_long:
        code = code or BEHIND
        since = (
            "no run has ever succeeded"
            if waited is None
            else f"the last run that succeeded started at {_time(waited)}"
        )
        problems.append(
            f"{total:,} activities are pending and no run has succeeded in the last "
            f"{pending_after:g} s: {since}"
        )
    report = {
        "status": {cli.OK: "healthy", cli.FAILED: "failing", BEHIND: "behind"}[code],
        "exit_code": code,
        "problems": problems,
        "database": connections.redact_url(target.url),
        "schema": schema,
        "stale_after_s": stale_after,
        "pending_after_s": pending_after,
        "abandoned_now": marked,
        "last_run": describe_run(last_run) if last_run is not None else None,
        "last_success": None
        if success is None
        else {
            "run_id": success.run_id,
            "started_at": _time(success.started_at),
            "finished_at": _time(success.finished_at),
        },
        "pending": pending,
        "pending_total": total,
        "runs": [describe_run(r) for r in recent],
    }
    return Status(code, report)


def _left_to_stopped_runs(
    target: cli.Target, pending: int, last_run: runs.RunRecord | None
) -> list[str]:
    """One line per run no longer running that still holds key ranges other runs left to it
    (they found it computing them), while activities are pending: nobody computes them until
    the next run takes them over. The last run, when it is that run, is already said."""
    if not pending:
        return []
    return [
        f"run {held.run_id} ({held.status or 'not recorded'}) stopped holding {held.ranges:,} "
        f"key range(s) that runs after it left to it; {pending:,} activities are pending: "
        "the next run takes them over and computes them"
        for held in claims.left_to_stopped_runs(target.engine, target.schema)
        if last_run is None or held.run_id != last_run.run_id
    ]


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
        default=DEFAULT_PENDING_AFTER,
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

    read: list[Status] = []

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
        result = check(target, args.last, args.stale_after, args.pending_after)
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
