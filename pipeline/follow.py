"""The follow mode: compute new and changed activities within seconds of their commit, until
stopped.

    python -m pipeline.follow [--poll-interval 2] [--stop-after SECONDS] [run options]

The same read → calculate → write steps as ``pipeline.run``, in a pipeline that keeps running:
every ``--poll-interval`` seconds it reads what is new or changed since its marks, through the
index on each source's ``follow_by`` column (``pipeline.store.marks``), so a poll costs what
has changed, not the size of the table. Deleted activities are retired by batch runs, which
can run beside it: the writes are idempotent, so nothing is doubled.

It records itself in ``calculation_runs`` with a heartbeat, logs at a calm rate, and ends
cleanly on SIGTERM or SIGINT: writes that reached their commit stay, the others roll back, and
the next start continues from the marks. ``--stop-after`` bounds its life (a service manager
or scheduler starts it again): see docs/follow.md.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import logging
import sys
import threading
import time
from typing import Any, NoReturn

import sqlalchemy as sa

from pipeline import cli, editions, retry, service, tuning
from pipeline import summary as summaries
from pipeline.options import (
    OptionsError,
    RunConfig,
    add_arguments,
    parse_run_args,
    validate,
    with_sources,
)
from pipeline.planning import check_sources
from pipeline.run import (
    Record,
    execute,
    record_engine,
    recorded_options,
    resolve_sources,
    runner_name,
    safe_options,
    workers_in_process,
)
from pipeline.stopping import (
    Cancelled,
    Overtaken,
    Stop,
    TracebacksAtDebug,
    cancel_job,
    end_cancelled,
    exit_now,
    real_stderr,
    stoppable,
)
from pipeline.store import checks, connections, marks, runs, stored_sources
from pipeline.store.install import ensure_initialised
from pipeline.store.sources import Sources, SourcesError
from pipeline.summary import failure_message, one_line

_LOG = logging.getLogger("pipeline.follow")

#: A window of changes holds at most this many rows: the most a read holds in memory.
ROWS_PER_WINDOW = 20_000
#: Windows handed out per poll and type, at most: a backlog is worked through over polls.
MAX_WINDOWS = 10


class NotFollowable(ValueError):
    """A source the follow mode cannot read by its changes; the message says what to add."""


def add_follow_arguments(parser: argparse.ArgumentParser) -> None:
    cli.add_option(
        parser,
        "poll_interval",
        type=float,
        default=2.0,
        help="seconds between two looks for new and changed activities",
    )
    cli.add_option(
        parser,
        "stop_after",
        type=float,
        default=None,
        help="end after this many seconds (default: run until SIGTERM or SIGINT)",
    )
    cli.add_option(
        parser,
        "rows_per_window",
        type=int,
        default=ROWS_PER_WINDOW,
        help="the most rows read at once (a backlog is read in windows of this size)",
    )
    cli.add_option(
        parser,
        "http_port",
        type=int,
        default=None,
        help="serve /healthz, /readyz, /metrics and /status on this port (default: no "
        "server; docs/follow.md)",
    )
    cli.add_option(
        parser,
        "http_host",
        default=service.DEFAULT_HOST,
        help="the address the --http-port server listens on",
    )
    cli.add_option(
        parser,
        "ready_max_lag",
        type=float,
        default=None,
        help="/readyz answers 503 when a followed type was last polled longer ago than this "
        "many seconds (default: 10 poll intervals, at least 30)",
    )


def followable(engine: sa.Engine, sources: Sources) -> None:
    """``NotFollowable`` unless every source has a usable ``follow_by`` column that its polls
    read through an index: a table's own, or that of the table under a view or query (else
    every poll would read the whole table; ``marks.unindexed``)."""
    problems = []
    with connections.raw_connection(engine) as conn:
        for activity_type, source in sources.items():
            if source.follow_by is None or source.follow_type is None:
                problems.append(
                    f"{activity_type}: {source.name} has no follow_by column: name an indexed "
                    "column that grows with every insert and update (a number from a sequence, "
                    "an updated_at timestamp) as follow_by in the sources file (docs/follow.md)"
                )
            elif (problem := marks.unindexed(conn, source)) is not None:
                problems.append(f"{activity_type}: {problem}")
    if problems:
        raise NotFollowable("; ".join(problems))


class Activity:
    """Logs, at most every ``interval`` seconds and only when something was stored, what the
    follow run has stored since the last line and in all (from the write log)."""

    def __init__(self, engine: sa.Engine, run_id: str, schema: str, interval: float) -> None:
        self._engine, self._run_id, self._schema = engine, run_id, schema
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="follow-activity", daemon=True)

    def __enter__(self) -> Activity:
        if self._interval > 0:
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)

    def _loop(self) -> None:
        before, since = 0, time.monotonic()
        while not self._stop.wait(self._interval):
            try:
                stored = runs.results_written(self._engine, self._run_id, self._schema)
            except Exception as e:  # noqa: BLE001 - best effort
                _LOG.warning("could not count results (%s)", type(e).__name__)
                continue
            if stored != before:
                now = time.monotonic()
                _LOG.info(
                    "following: %d results stored in the last %.0f s, %d in all",
                    stored - before,
                    now - since,
                    stored,
                )
                before, since = stored, now


def main(argv: list[str] | None = None) -> int:
    """The command; returns its exit code (a signal ends the process itself, with 128 + the
    signal's number, once the run is recorded: see ``end_cancelled``)."""
    args = argv if argv is not None else sys.argv[1:]
    if "-h" in args or "--help" in args:
        parser = cli.parser("pipeline.follow", __doc__)
        add_follow_arguments(parser)
        add_arguments(parser)
        parser.print_help()
        return 0
    return stoppable(follow, args)


def follow(args: list[str], stop: Stop) -> int:
    """Parse → check → record → follow until stopped → summarise, each failure recorded."""
    tuning.tune_process()
    started = time.monotonic()
    prepared = _prepare(args)
    if isinstance(prepared, int):
        return prepared
    options, beam_args, config, url = prepared
    runner = runner_name(beam_args)
    engine = connections.make_engine(config.database_url, pool_size=2, max_overflow=0)
    shown = safe_options(options, beam_args)
    shown["follow"] = True
    record = Record(record_engine(url, config.run_id), config, runner, shown, {})
    try:
        begun = _begin(engine, record, options, config)
        if isinstance(begun, int):
            return begun
        config, sources = begun
        return _follow_until_stopped(
            engine, record, options, beam_args, config, sources, stop, started
        )
    except runs.RunIdTaken as e:
        cli.error(str(e))
        return 2
    except Cancelled as stopped:
        record.stop_beating()
        exact = workers_in_process(beam_args)
        end_cancelled(engine, config, stopped, record.started, {}, started, exact)
    except Overtaken as overtaken:
        end_overtaken(engine, config, record, runner, overtaken, started)
    except Exception as e:  # noqa: BLE001 - recorded on the run, then a non-zero exit
        message = connections.scrub(failure_message(e), config.database_url)
        record.stop_beating()
        record.fail(message)
        unrecorded = f" ({record.unready})" if record.unready else ""
        cli.error(f"run {config.run_id} failed: {message}{unrecorded}")
        return 1
    finally:
        record.stop_beating()
        engine.dispose()
        record.engine.dispose()


def _prepare(args: list[str]) -> tuple[Any, list[str], RunConfig, str] | int:
    """The options, Beam's arguments, the run's configuration and the database URL; or the
    exit code, said in one line (2: a bad option; 1: the database could not be reached)."""
    try:
        options, beam_args = parse_run_args(args, add_follow_arguments, prog="pipeline.follow")
    except SystemExit:
        return 2  # said in one line: an unknown option (not even Beam's), or a bad value
    cli.setup_logging(options.log_level, stream=real_stderr())
    for handler in logging.getLogger().handlers:
        handler.addFilter(TracebacksAtDebug())
    url = None
    try:
        if options.poll_interval <= 0 or options.rows_per_window < 1:
            raise OptionsError("--poll-interval and --rows-per-window must be positive")
        if getattr(options, "recheck", False):
            raise OptionsError(
                "--recheck is pipeline.run's: follow computes the rows its follow_by column "
                "says changed; run python -m pipeline.run --recheck for the others"
            )
        url = connections.resolve_database_url(options.database_url)
        return options, beam_args, validate(options, url), url
    except (OptionsError, connections.UrlError) as e:
        cli.error(str(e))
        return 2
    except Exception as e:  # noqa: BLE001 - one line, then a non-zero exit
        cli.error(f"could not reach the database: {retry.describe(e)}", url)
        return 1


def _begin(
    engine: sa.Engine, record: Record, options: Any, config: RunConfig
) -> tuple[RunConfig, Sources] | int:
    """The run's row (first: whatever fails from here on is recorded), its sources checked
    and followable; the configuration with them and the sources followed, or the exit code
    of a refusal (recorded)."""
    policy = config.retry_policy
    if not record.start_if_ready():
        missing = retry.call(
            lambda: cli.not_initialised(record.engine, config.schema),
            what="checking the schema",
            policy=policy,
        )
        if missing:  # never creates the schema: a mistyped --schema would follow nothing
            cli.error(missing)
            return 2
    try:
        chosen = resolve_sources(engine, options, config)
        config = with_sources(config, options, chosen.sources)
    except (stored_sources.SourcesChanged, SourcesError, OptionsError) as e:
        return record.refuse(e, f"error: {connections.scrub(str(e), config.database_url)}")
    record.note(chosen.path, **recorded_options(config, chosen))
    try:
        checked = _checked_sources(engine, config)
        sources = {t: checked[t] for t in config.activity_types if t in checked}
        id_type = checks.common_key_type(checked)
        retry.call(
            lambda: ensure_initialised(engine, config.schema, id_type),
            what="checking the schema",
            policy=policy,
        )
        if not any(s.follow_type for s in sources.values()):
            # The pipeline's own tables get their follow_by column from revision 0004,
            # which ensure_initialised may have just applied: look again.
            checked = _checked_sources(engine, config)
            sources = {t: checked[t] for t in config.activity_types if t in checked}
        if not record.started:  # the schema has just been set up or brought up to date
            record.start()
            record.note(chosen.path, **recorded_options(config, chosen))
        retry.call(
            lambda: followable(engine, sources),
            what="checking the sources' indexes",
            policy=policy,
        )
    except (SourcesError, NotFollowable) as e:
        return record.refuse(e, f"error: {connections.scrub(str(e), config.database_url)}")
    return _with_sources(config, checked), sources


def _follow_until_stopped(
    engine: sa.Engine,
    record: Record,
    options: Any,
    beam_args: list[str],
    config: RunConfig,
    sources: Sources,
    stop: Stop,
    started: float,
) -> int:
    """Follows the sources until ``--stop-after`` (or a signal: ``Cancelled``), then records
    the run's outcome and prints its summary."""
    runner = runner_name(beam_args)
    stop_at = time.time() + options.stop_after if options.stop_after else 2.0**40
    _LOG.info(
        "run %s follows %s on %s, every %g s%s",
        config.run_id,
        ", ".join(s.name for s in sources.values()),
        runner,
        options.poll_interval,
        f", for {options.stop_after:g} s" if options.stop_after else ", until stopped",
    )
    record.beat(engine)  # within the run's pool from here, as the pipeline's connections
    # Marked abandoned while it was frozen: it stops at once (its writes are refused).
    stop.watch_record(record.no_longer_running)
    with (
        Activity(engine, config.run_id, config.schema, max(config.progress_interval, 30.0)),
        _service(options, config, record, stop, runner, started),
    ):
        metrics = _execute(beam_args, config, options, stop_at, stop)
    coverage = runs.run_coverage(engine, config.run_id, config.schema)
    summary = _summary(engine, config, runner, coverage, metrics, started)
    record.stop_beating()  # the outcome is recorded next: no heartbeat after it
    finished = record.finish(
        status="succeeded",
        total_processed=summary["total_processed"],
        errors=summary["errors"],
        total_co2e_tonnes=summary["total_co2e_tonnes"],
        quality=coverage,
        timings=summary["timings"],
        metrics_source="database",
        code_version=editions.code_version(),
    )
    if not finished:
        return record.overtaken(summary, time.time() - (time.monotonic() - started))
    cli.print_json(summary)
    return 0


def _summary(
    engine: sa.Engine,
    config: RunConfig,
    runner: str,
    coverage: dict[str, Any],
    metrics: dict[str, int] | None,
    started: float,
) -> dict[str, Any]:
    """What the follow run stored, from its write log: results, and the dead letters it stored
    whatever became of them since (``errors_stored``)."""
    return {
        "run_id": config.run_id,
        "status": "succeeded",
        "mode": "follow",
        "runner": runner,
        "database": connections.redact_url(config.database_url),
        "schema": config.schema,
        "total_processed": int(coverage["overall"]["results"]),
        "errors": sum(summaries.errors_stored(engine, config.run_id, config.schema).values()),
        "total_co2e_tonnes": float(coverage["overall"]["kg_co2e"]) / 1000.0,
        "polls": (metrics or {}).get("polls"),
        "timings": {"total_s": round(time.monotonic() - started, 3)},
    }


def _service(
    options: argparse.Namespace,
    config: RunConfig,
    record: Record,
    stop: Stop,
    runner: str,
    started: float,
) -> contextlib.AbstractContextManager[Any]:
    """The HTTP face of ``--http-port`` (``pipeline.service``; nothing without it)."""
    lag = options.ready_max_lag or max(30.0, 10 * options.poll_interval)

    def so_far(engine: sa.Engine) -> dict[str, Any]:
        coverage = runs.run_coverage(engine, config.run_id, config.schema)
        errors = summaries.errors_stored(engine, config.run_id, config.schema)
        found = {**_summary(engine, config, runner, coverage, None, started), "status": "running"}
        found["by_activity_type"] = {
            t: {
                "processed": int(c.get("results", 0)),
                "errors": errors.get(t, 0),
                "co2e_tonnes": float(c.get("kg_co2e", 0.0)) / 1000.0,
            }
            for t, c in coverage["by_activity_type"].items()
        }
        return found

    return service.follow_service(
        options.http_port,
        options.http_host,
        config,
        lag,
        lambda: stop.signum is None and not record.no_longer_running(),
        so_far,
        time.time() - (time.monotonic() - started),
    )


def end_overtaken(
    engine: sa.Engine,
    config: RunConfig,
    record: Record,
    runner: str,
    overtaken: Overtaken,
    started: float,
) -> NoReturn:
    """Ends a follow run whose record another process finished while it worked (marked
    abandoned while the process was frozen): what it stored before stays, its record as that
    process left it; one line on stderr, its figures exported with that outcome, exit 1. The
    process ends at once (``exit_now``): the pipeline's threads, still polling, have nothing
    to store (a flush of a run no longer running is refused, and its polls move no mark)."""
    record.stop_beating()
    cancel_job(overtaken.job)
    logging.disable(logging.CRITICAL)  # from here, its one line only
    threading.excepthook = lambda _: None
    try:
        coverage = runs.run_coverage(engine, config.run_id, config.schema)
        summary = _summary(engine, config, runner, coverage, None, started)
        code = record.overtaken(summary, record.started_at)
    except Exception as e:  # noqa: BLE001 - it must still end, and say why
        why = connections.scrub(retry.describe(e), config.database_url)
        cli.error(
            f"run {config.run_id} was recorded as no longer running by another process while "
            f"it worked; its figures could not be read ({one_line(why)})"
        )
        code = 1
    exit_now(code)


def _checked_sources(engine: sa.Engine, config: RunConfig) -> Sources:
    """``check_sources``, tried again after a transient failure (a restart at start-up)."""
    return retry.call(
        lambda: check_sources(engine, config),
        what="checking the sources",
        policy=config.retry_policy,
    )


def _with_sources(config: RunConfig, checked: Sources) -> RunConfig:
    return dataclasses.replace(config, sources=checked)


def _execute(
    beam_args: list[str],
    config: RunConfig,
    options: argparse.Namespace,
    stop_at: float,
    stop: Stop,
) -> dict[str, int] | None:
    from pipeline import graph

    def build(p: Any) -> None:
        graph.build_follow(
            p, config, options.poll_interval, stop_at, options.rows_per_window, MAX_WINDOWS
        )

    _consolidate_metrics_eagerly()
    # One worker, in memory: the in-process runner's multi-threaded mode ends a pipeline of
    # ticks after the first of them; each poll's work is small.
    given = " ".join(beam_args)
    local = [] if "direct_num_workers" in given else ["--direct_num_workers=1"]
    if "direct_running_mode" not in given:
        local.append("--direct_running_mode=in_memory")
    return execute([*beam_args, *local], config, [], stop, build=build)


def _consolidate_metrics_eagerly() -> None:
    """Makes the in-process runner merge each bundle's metrics into its running totals at once.

    Beam's ``FnApiRunner`` (2.62) keeps, per stage, ``consolidate(chain(this bundle's metrics,
    the totals so far))``, and ``consolidate`` is a generator: nothing is merged until the
    pipeline ends, so every bundle adds a layer of generators holding its metrics. A batch run
    has a few bundles per stage; the follow mode has one per poll, forever: the process grew by
    about 1 MB a minute, and the layers are unwound by recursion when the pipeline ends. The
    same function, its result made a list, keeps one merged total per stage. Nothing else
    changes: the same metrics, merged the same way, only sooner."""
    from apache_beam.runners.portability.fn_api_runner import fn_runner

    lazy = fn_runner.consolidate_monitoring_infos
    if getattr(lazy, "eager", False):
        return

    def eager(infos: Any, *key: Any) -> list[Any]:
        return list(lazy(infos, *key))

    eager.eager = True  # type: ignore[attr-defined]
    fn_runner.consolidate_monitoring_infos = eager


if __name__ == "__main__":
    sys.exit(main())
