"""A run's figures for a monitoring system, in Prometheus' text format: written to a file for
node-exporter's textfile collector (``--metrics-file``, atomically: a whole file or the one
before) and/or pushed to a Pushgateway (``--pushgateway``).

A run is a batch job, so every figure is a gauge describing the last run (rows read, written,
skipped, dead letters, tonnes, per activity type; rates; durations; when it started, ended and
last succeeded), not a counter that grows. ``prometheus_client`` is imported here only, when a
run exports: the workers never need it.
"""

from __future__ import annotations

import logging
import urllib.parse
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

_LOG = logging.getLogger("pipeline.run")

#: Every metric's name starts with this.
PREFIX = "emissions_run"
#: Per activity type: the metric (after ``PREFIX``), the summary's key, and its help.
PER_TYPE = (
    ("activities", "total_activities", "Activities in the run's scope"),
    ("rows_read", "pending", "Activities the run had to compute (new or changed), and read"),
    ("rows_skipped", "skipped", "Activities already computed, not read again"),
    ("rows_written", "processed", "Results the run stored"),
    ("rows_changed", "changed", "Of the results stored, those that replaced an older one"),
    ("dead_letters", "errors", "Activities the run refused, stored as dead letters"),
    ("co2e_tonnes", "co2e_tonnes", "Tonnes of CO2e of the results the run stored"),
)
#: Durations of the run's phases (the summary's timings), in seconds.
PHASES = ("setup", "pipeline", "total")


def registry(
    summary: Mapping[str, Any],
    schema: str,
    started_at: float,
    finished_at: float,
    last_success_at: float | None,
) -> CollectorRegistry:
    """The run's figures as a registry of gauges. ``summary``: the run summary (or, for a run
    that failed, what is known of it: ``run_id``, ``runner``, ``status``, ``timings``, and
    ``by_activity_type`` if counted); times are Unix timestamps."""
    from prometheus_client import CollectorRegistry, Gauge

    found = CollectorRegistry(auto_describe=True)

    def gauge(name: str, text: str, labels: tuple[str, ...] = ()) -> Gauge:
        return Gauge(f"{PREFIX}_{name}", text, labels, registry=found)

    status = str(summary.get("status", "unknown"))
    gauge(
        "info",
        "The last run: its id, runner, schema and outcome",
        ("run_id", "runner", "schema", "status"),
    ).labels(str(summary.get("run_id", "")), str(summary.get("runner", "")), schema, status).set(1)
    gauge("success", "1 when the last run succeeded, else 0").set(1 if status == "succeeded" else 0)
    gauge("start_time_seconds", "When the last run started (Unix time)").set(started_at)
    gauge("end_time_seconds", "When the last run ended (Unix time)").set(finished_at)
    if last_success_at is not None:
        gauge(
            "last_success_time_seconds", "When the last run that succeeded ended (Unix time)"
        ).set(last_success_at)
    timings = summary.get("timings") or {}
    durations = gauge("duration_seconds", "How long the last run took, by phase", ("phase",))
    for phase in PHASES:
        if f"{phase}_s" in timings:
            durations.labels(phase).set(float(timings[f"{phase}_s"]))
    by_type: Mapping[str, Mapping[str, Any]] = summary.get("by_activity_type") or {}
    if by_type:
        for name, key, text in PER_TYPE:
            per_type = gauge(name, f"{text}, in the last run", ("activity_type",))
            for activity_type, figures in by_type.items():
                if key in figures:  # a failed run knows only what it had counted
                    per_type.labels(activity_type).set(float(figures[key]))
    pipeline_s = float(timings.get("pipeline_s", 0.0))
    read = sum(float(f.get("pending", 0)) for f in by_type.values())
    written = sum(float(f.get("processed", 0)) for f in by_type.values())
    gauge("rows_read_per_second", "Activities read per second while the pipeline ran").set(
        read / pipeline_s if pipeline_s > 0 else 0.0
    )
    gauge("rows_written_per_second", "Results stored per second while the pipeline ran").set(
        written / pipeline_s if pipeline_s > 0 else 0.0
    )
    return found


def redact(url: str) -> str:
    """A URL with its password (if any) masked, for the run's record and messages."""
    parts = urllib.parse.urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port else ""
    netloc = f"{parts.username or ''}:***@{host}{port}"
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))


def export(
    figures: CollectorRegistry,
    metrics_file: str | None,
    pushgateway: str | None,
    job: str,
    schema: str,
    timeout: float = 10.0,
) -> list[str]:
    """Writes ``figures`` to ``metrics_file`` (atomically: a temporary file renamed over it)
    and pushes them to ``pushgateway`` (replacing the group ``job``/``schema``); returns a
    sentence per export that failed (the run's outcome stands whatever these say)."""
    from prometheus_client import push_to_gateway, write_to_textfile

    problems = []
    if metrics_file:
        try:
            write_to_textfile(metrics_file, figures)
        except OSError as e:
            problems.append(f"could not write the metrics to {metrics_file}: {e.strerror or e}")
    if pushgateway:
        try:
            push_to_gateway(
                pushgateway,
                job=job,
                registry=figures,
                grouping_key={"schema": schema},
                timeout=timeout,
            )
        except Exception as e:  # noqa: BLE001 - said in one line; the run's outcome stands
            said = " ".join(str(e).split()).replace(pushgateway, redact(pushgateway))
            problems.append(
                f"could not push the metrics to {redact(pushgateway)}: {type(e).__name__}: {said}"
            )
    return problems
