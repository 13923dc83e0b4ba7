"""The pipeline's health, as ``emissions status`` (``ops.status``) and the follow service's
``/status`` report it: the last runs, runs that stopped without finishing (marked abandoned
here), the pending work, and a verdict with an exit code a monitor can use.

In the core, beside the runs it reads, because ``pipeline.follow`` serves it too
(``pipeline.service``); ``ops.status`` is its command line.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from typing import Any

from pipeline import cli
from pipeline.store import claims, connections, queries, runs

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
    by: str = "ops.status",
) -> Status:
    """Marks the runs whose heartbeat is older than ``stale_after`` seconds abandoned, then
    reads the last ``last`` runs and the pending activities, and judges them; ``by`` is named on
    the runs it marks."""
    engine, schema = target.engine, target.schema
    marked = runs.mark_abandoned(engine, stale_after, schema, by=by)
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
