"""A run's summary: the progress lines while it runs, and what it did, per activity type.

What a run wrote (results, kg CO2e, new and replaced) comes from its write log
(``pipeline.store.runs``), never from a scan of its results; errors from the runner's counters
where it reports them, else from the database.
"""

from __future__ import annotations

import datetime
import logging
import re
import threading
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from pipeline import metrics, retry
from pipeline.options import METRICS_JOB, RunConfig
from pipeline.store import runs, tables
from pipeline.store.claims import LEFT_TO

if TYPE_CHECKING:
    from apache_beam.runners.runner import PipelineResult

_LOG = logging.getLogger("pipeline.run")


class Progress:
    """Logs how many results this run has stored, every ``interval`` seconds while the pipeline
    runs, with the rate and about how long is left, and a final line when it is done.

    The count comes from the run's write log (``runs.results_written``), committed with the
    results: what has been written, on any runner (Flink reports its counters only at the
    end). Activities that become dead letters have no result, so the share can end below
    100%."""

    def __init__(
        self,
        engine: sa.Engine,
        run_id: str,
        pending: int,
        interval: float,
        schema: str = tables.DEFAULT_SCHEMA,
    ) -> None:
        self._engine = engine
        self._schema = schema
        self._run_id = run_id
        self._pending = pending
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="progress", daemon=True)
        self._started = time.monotonic()
        #: The last count and when it was read: the rate since is what the time left uses.
        self._last: tuple[float, int] = (self._started, 0)

    def __enter__(self) -> Progress:
        self._started = time.monotonic()
        self._last = (self._started, 0)
        if self._interval > 0:
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)
        if self._interval > 0 and exc[0] is None:
            self._report(final=True)

    def _loop(self) -> None:
        while not self._stop.wait(self._interval):
            self._report(final=False)

    def _report(self, final: bool) -> None:
        try:
            # From the write log: a count of the run's results would scan them all.
            done = runs.results_written(self._engine, self._run_id, self._schema)
        except Exception as e:  # noqa: BLE001 - progress is best-effort
            _LOG.warning("progress: could not count results (%s)", type(e).__name__)
            return
        now = time.monotonic()
        _LOG.info("%s", self.line(done, now, final))
        self._last = (now, done)

    def line(self, done: int, now: float, final: bool = False) -> str:
        """The progress line for ``done`` results stored at ``now`` (``time.monotonic``)."""
        elapsed = now - self._started
        share = 100.0 * done / self._pending if self._pending else 100.0
        rate = done / elapsed if elapsed > 0 else 0.0
        head = f"{done:,} of {self._pending:,} pending activities have results ({share:.1f}%)"
        if final:
            return f"progress: done: {head} in {elapsed:.1f} s, {rate:,.0f}/s"
        if done == 0:
            return f"progress: {head} after {elapsed:.0f} s: waiting for the first commits"
        then, before = self._last
        recent = (done - before) / (now - then) if now > then and done > before else rate
        left = max(self._pending - done, 0)
        eta = f", {_time_left(left / recent)}" if recent > 0 and left else ""
        return f"progress: {head}, {rate:,.0f}/s{eta}"


def _time_left(seconds: float) -> str:
    """``seconds`` left, as people say it: under 1 s, about 45 s, 3 min 20 s, 2 h 5 min."""
    whole = int(round(seconds))
    if whole < 1:
        return "under 1 s left"
    if whole < 60:
        return f"about {whole} s left"
    if whole < 3600:
        return f"about {whole // 60} min {whole % 60} s left"
    return f"about {whole // 3600} h {whole % 3600 // 60} min left"


def abandoned_line(abandoned: Sequence[runs.RunRecord]) -> str:
    """One line on the runs that stopped without finishing since the last run that succeeded
    (killed, their machine lost), for the next run to say."""
    shown = ", ".join(
        f"{r.run_id} (started {_when(r.started_at)}, last heartbeat {_when(r.heartbeat_at)})"
        for r in abandoned[:3]
    )
    more = f" and {len(abandoned) - 3} more" if len(abandoned) > 3 else ""
    some = "1 run" if len(abandoned) == 1 else f"{len(abandoned)} runs"
    return (
        f"{some} stopped without finishing since the last successful run, marked "
        f"{runs.ABANDONED} in {tables.RUNS_TABLE}: {shown}{more}; what they committed stays, "
        "and what they left is pending again"
    )


def _when(moment: datetime.datetime | None) -> str:
    if moment is None:
        return "never"
    return moment.astimezone(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def counted(counts: dict[str, dict[str, int]]) -> dict[str, dict[str, int]]:
    """Per activity type, what a run had counted before it failed (the summary's keys)."""
    return {
        t: {
            "total_activities": c["total"],
            "skipped": c["total"] - c["pending"],
            "pending": c["pending"],
        }
        for t, c in counts.items()
    }


def export_metrics(
    engine: sa.Engine, config: RunConfig, summary: dict[str, Any], started_at: float
) -> None:
    """The run's figures to the Prometheus textfile and Pushgateway its options name (if any);
    a failed export is said in one warning and changes nothing else. ``started_at``: Unix time.
    """
    if not (config.metrics_file or config.pushgateway):
        return
    finished_at = time.time()
    try:  # as recorded: a run that failed keeps the last success's time
        last_success = runs.last_success_time(engine, config.schema)
    except Exception:  # noqa: BLE001 - the database may be what failed
        last_success = None
    if last_success is None and summary.get("status") == "succeeded":
        last_success = finished_at
    figures = metrics.registry(summary, config.schema, started_at, finished_at, last_success)
    for problem in metrics.export(
        figures, config.metrics_file, config.pushgateway, METRICS_JOB, config.schema
    ):
        _LOG.warning("%s", problem)


def counters(result: PipelineResult) -> dict[str, int] | None:
    """Beam counters by name, or None when the runner does not report them."""
    try:
        queried = result.metrics().query()
    except Exception:  # noqa: BLE001 - some runners have no metrics API
        return None
    found: dict[str, int] = {}
    for c in queried.get("counters", []):
        value = c.committed if c.committed is not None else c.attempted
        found[c.key.metric.name] = found.get(c.key.metric.name, 0) + int(value or 0)
    return found or None


def summarise(
    engine: sa.Engine,
    config: RunConfig,
    counts: dict[str, dict[str, int]],
    metrics: dict[str, int] | None,
    coverage: dict[str, Any],
    retired: dict[str, tuple[int, int]] | None = None,
) -> dict[str, Any]:
    """The run summary: what the old service reported, plus skipped, run id and sources; per
    type, how many results were new, replaced those of changed activities, or were retired
    with their deleted activities.

    What the run wrote (results, kg CO2e) comes from its coverage (``runs.run_coverage``:
    the run's write log)."""
    written = coverage["by_activity_type"]
    replaced = runs.replaced_results(engine, config.run_id, config.schema)
    stored_errors = errors_stored(engine, config.run_id, config.schema)
    retired = retired or {}
    by_type: dict[str, Any] = {}
    for t in config.activity_types:
        c = counts[t]
        processed = int(written.get(t, {}).get("results", 0))
        kg = float(written.get(t, {}).get("kg_co2e", 0.0))
        errors = stored_errors.get(t, 0)
        by_type[t] = {
            "total_activities": c["total"],
            "skipped": c["total"] - c["pending"],
            "pending": c["pending"],
            "processed": processed,
            "new": processed - replaced.get(t, 0),
            "changed": replaced.get(t, 0),
            "retired": retired.get(t, (0, 0))[0],
            "errors_retired": retired.get(t, (0, 0))[1],
            "errors": errors,
            "co2e_tonnes": kg / 1000.0,
        }
    return {
        "run_id": config.run_id,
        "total_activities": sum(v["total_activities"] for v in by_type.values()),
        "skipped": sum(v["skipped"] for v in by_type.values()),
        "pending": sum(v["pending"] for v in by_type.values()),
        "total_processed": sum(v["processed"] for v in by_type.values()),
        "new": sum(v["new"] for v in by_type.values()),
        "changed": sum(v["changed"] for v in by_type.values()),
        "retired": sum(v["retired"] for v in by_type.values()),
        "errors": sum(v["errors"] for v in by_type.values()),
        "total_co2e_tonnes": sum(v["co2e_tonnes"] for v in by_type.values()),
        "by_activity_type": by_type,
        # Key ranges another run was computing when this one came to them (each is its own),
        # and which runs those were.
        "ranges_left_to_another_run": (metrics or {}).get("ranges_skipped", 0),
        "ranges_left_to_runs": {
            name.removeprefix(LEFT_TO): n
            for name, n in sorted((metrics or {}).items())
            if name.startswith(LEFT_TO) and n
        },
        "metrics_source": "beam_counters" if metrics is not None else "database",
    }


def errors_stored(engine: sa.Engine, run_id: str, schema: str) -> dict[str, int]:
    """Per activity type, the dead letters a run stored (new, or given their activity's new
    version), from its write log: logged by each flush in its own transaction, so a flush
    that was refused or rolled back counts nothing."""
    with engine.connect() as conn:
        rows = conn.execute(
            sa.text(
                "SELECT activity_type, sum(errors) FROM "
                f"{tables.qualified_text(tables.WRITES_TABLE, schema)} "
                "WHERE run_id = CAST(:run_id AS uuid) AND errors > 0 GROUP BY activity_type"
            ),
            {"run_id": run_id},
        ).all()
    return {str(t): int(n) for t, n in rows}


TRACEBACK = "Traceback (most recent call last):"
#: The longest message a failed run stores and prints.
MESSAGE_LIMIT = 300


def failure_message(error: BaseException) -> str:
    """One clear line for a failed run, of at most ``MESSAGE_LIMIT`` characters (the full
    traceback goes to the log at DEBUG).

    A runner reports a worker's exception as text inside its own (with the worker's
    traceback): when the database was unavailable, that line is the one worth reading;
    otherwise the exception the traceback ends with (``worker_error``).
    """
    current: BaseException | None = error
    while current is not None:
        if isinstance(current, retry.DatabaseUnavailable):
            return one_line(str(current))
        current = current.__cause__ or current.__context__
    text = str(error)
    marker = "the database is unavailable:"
    if marker in text:
        line = text[text.index(marker) :].splitlines()[0]
        return one_line(line.rstrip(" '\""))
    if TRACEBACK in text:
        return one_line(worker_error(text))
    return one_line(retry.describe(error))


def worker_error(text: str) -> str:
    """The exception a traceback's text ends with, as ``Type: first line of its message``,
    and the step it failed in when Beam says (``[while running 'Step']``).

    In Python's format the exception line is the first unindented line after the frames of
    the last ``Traceback`` block (that of the exception raised last, when chained); the
    lines after it (PostgreSQL's DETAIL with a whole row, CONTEXT) are left out."""
    lines = text.splitlines()
    last = max((i for i, ln in enumerate(lines) if ln.strip().endswith(TRACEBACK)), default=-1)
    found = next((ln for ln in lines[last + 1 :] if ln.strip() and not ln[0].isspace()), "")
    name, sep, message = found.partition(": ")
    found = f"{name.rsplit('.', 1)[-1]}{sep}{message}" if " " not in name else found
    step = re.findall(r"\[while running '([^']+)'\]", text)
    if step and step[-1] not in found:
        found = f"{found} (while running {step[-1]})"
    return found or "the pipeline failed (no message)"


def one_line(text: str) -> str:
    """``text`` on one line, cut to ``MESSAGE_LIMIT`` characters."""
    flat = " ".join(text.split())
    return flat if len(flat) <= MESSAGE_LIMIT else f"{flat[: MESSAGE_LIMIT - 1]}…"


#: The stages whose working time the run's breakdown gives (``transforms.timing.Busy``).
BUSY_STAGES = ("read", "calculate", "write")


def busy_seconds(counters: dict[str, int] | None) -> dict[str, float]:
    """``<stage>_busy_s`` for each stage the counters saw (``<stage>_ms``): the seconds its
    workers spent on it, summed over them (with 2 workers, up to twice the wall time)."""
    found = counters or {}
    return {
        f"{stage}_busy_s": round(found[f"{stage}_ms"] / 1000, 3)
        for stage in BUSY_STAGES
        if f"{stage}_ms" in found
    }
