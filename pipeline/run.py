"""Entry point: ``python -m pipeline.run [options]``: parse → validate → build → run → summarise.

Without ``--database-url`` (or ``$EMISSIONS_DATABASE_URL``) it uses the embedded PostgreSQL.
Prints a JSON run summary and stores it in ``calculation_runs``; exits non-zero on failure.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import logging
import os
import sys
import threading
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, NoReturn

import sqlalchemy as sa

from pipeline import cli, editions, retry, tuning
from pipeline import summary as summaries
from pipeline.model import ActivityType
from pipeline.options import OptionsError, RunConfig, add_arguments, validate
from pipeline.ranges import KeyRange, plan_ranges
from pipeline.store import checks, connections, queries, runs, tables, writes
from pipeline.store.install import ensure_initialised
from pipeline.store.sources import Source, SourcesError

if TYPE_CHECKING:
    import apache_beam as beam
    from apache_beam.options.pipeline_options import PipelineOptions

_LOG = logging.getLogger("pipeline.run")

#: Beam loggers whose INFO lines say nothing to someone running the pipeline: one line per
#: type hint it cannot use, and the BigQuery connector that is not installed.
_CHATTY_LOGGERS = (
    "apache_beam.typehints.native_type_compatibility",
    "apache_beam.io.gcp.bigquery",
)


def make_pipeline(options: PipelineOptions) -> beam.Pipeline:
    """The pipeline on the runner the options name.

    ``DirectRunner`` first tries Beam's Prism runner, which downloads a binary from the network;
    a local run must never do that, so it goes straight to the FnApiRunner, the in-process
    runner that DirectRunner itself falls back to for batch pipelines.
    """
    import apache_beam as beam
    from apache_beam.options.pipeline_options import StandardOptions

    runner = options.view_as(StandardOptions).runner
    if runner in (None, "DirectRunner", "direct"):
        from apache_beam.runners.portability.fn_api_runner import FnApiRunner

        return beam.Pipeline(runner=FnApiRunner(), options=options)
    return beam.Pipeline(options=options)


def with_local_defaults(argv: list[str]) -> list[str]:
    """On the DirectRunner, unless told otherwise: two worker threads (or one on one core).

    The work is half database, half Python, and both the database driver and Arrow release
    the GIL, so two threads keep both busy; threads rather than processes, because worker
    processes each import Beam and build their own copy of everything (slower and twice the
    memory, measured by the benchmark).
    """
    if runner_name(argv) not in ("DirectRunner", "direct"):
        return argv
    given = " ".join(argv)
    extra = []
    if "direct_num_workers" not in given:
        extra.append(f"--direct_num_workers={min(2, os.cpu_count() or 1)}")
    if "direct_running_mode" not in given:
        extra.append("--direct_running_mode=multi_threading")
    return [*argv, *extra]


def warm_up_beam() -> None:
    """Starts importing Beam, Arrow and numpy (most of a second) in the background, once some
    activity is known to be pending, while the remaining counts and the range planning run in
    the database."""

    def load() -> None:
        try:
            importlib.import_module("apache_beam")
            importlib.import_module("pipeline.graph")
        except Exception:  # noqa: BLE001 - execute() imports them again and reports it
            pass

    thread = threading.Thread(target=load, name="import-beam", daemon=True)
    _WARM_UP.append(thread)
    thread.start()


_WARM_UP: list[threading.Thread] = []


def execute(
    argv: list[str], config: RunConfig, ranges: Sequence[KeyRange]
) -> dict[str, int] | None:
    """Builds and runs the Beam pipeline over ``ranges``; returns its counters (None if the
    runner has none).

    Beam is imported here, and only here: a run with nothing pending never pays for it.
    """
    # Beam's modules import each other in cycles: two threads importing them at once can see
    # each other's half-made modules. Let the warm-up finish first.
    for thread in _WARM_UP:
        thread.join()
    from apache_beam.options.pipeline_options import PipelineOptions

    from pipeline import beam_options, graph

    options = PipelineOptions(with_local_defaults(argv))
    options.view_as(beam_options.EmissionsOptions)  # registers the calculation's options
    p = make_pipeline(options)
    graph.build(p, config, ranges)
    result = p.run()
    result.wait_until_finish()
    return summaries.counters(result)


def check_sources(engine: sa.Engine, config: RunConfig) -> dict[ActivityType, Source]:
    """The run's sources, checked against the catalogue (``SourcesError`` names every
    problem); their key and version types come from there."""
    wanted = {t: config.sources[t] for t in config.activity_types}
    with connections.raw_connection(engine) as conn:
        return checks.check_sources(conn, wanted)


def plan(engine: sa.Engine, config: RunConfig, counts: dict[str, dict[str, int]]) -> list[KeyRange]:
    """The key ranges (``pipeline.ranges.plan_ranges``) of the tables with pending activities,
    on one connection. Without a date window, the counts already say how many rows each table
    has."""
    whole_tables = config.date_from is None and config.date_to is None
    types = [t for t in config.activity_types if counts[t]["pending"]]
    with connections.raw_connection(engine) as conn:
        planned = [
            r
            for t in types
            for r in plan_ranges(
                conn,
                config.sources[t],
                config.partitions,
                config.rows_per_range,
                config.range_planner,
                rows=counts[t]["total"] if whole_tables else None,
            )
        ]
    _LOG.info("%d key ranges to read (%s)", len(planned), ", ".join(types))
    return planned


def retire(
    engine: sa.Engine, config: RunConfig, counts: dict[str, dict[str, int]]
) -> dict[str, tuple[int, int]]:
    """Retires the results and dead letters of deleted activities, range by range (the
    ranges of the activity table: the first and last are unbounded, so every key is in one).
    Per type: (results retired, dead letters retired)."""
    retired: dict[str, tuple[int, int]] = {}
    for t in config.activity_types:
        if not counts[t]["deleted"] and not counts[t].get("deleted_errors"):
            continue
        source = config.sources[t]
        with connections.raw_connection(engine) as conn:
            planned = plan_ranges(
                conn, source, config.partitions, config.rows_per_range, config.range_planner
            ) or [KeyRange(t, None, None)]
            done = [
                writes.retire_deleted(conn, source, r.start, r.end, config.run_id, config.schema)
                for r in planned
            ]
        retired[t] = (sum(d[0] for d in done), sum(d[1] for d in done))
        _LOG.info(
            "retired %d results and %d dead letters of deleted %s activities",
            *retired[t],
            t,
        )
    return retired


def runner_name(argv: list[str]) -> str:
    """The ``--runner`` given (Beam's option), without importing Beam."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--runner", default="DirectRunner")
    known, _ = parser.parse_known_args(argv)
    return str(known.runner)


def beam_workers(argv: list[str]) -> int:
    """Workers of the in-process runner (``--direct_num_workers``; 0 means one per core)."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--direct_num_workers", type=int, default=1)
    known, _ = parser.parse_known_args(argv)
    return int(known.direct_num_workers) or (os.cpu_count() or 1)


def check_connection_budget(config: RunConfig, runner: str, beam_args: list[str]) -> int:
    """The most connections this run can hold at once; ``OptionsError`` above the maximum."""
    local = runner in ("DirectRunner", "direct")
    workers = beam_workers(with_local_defaults(beam_args)) if local else 1
    bound = connections.connection_bound(workers)
    if config.max_connections is not None and bound > config.max_connections:
        raise OptionsError(
            f"this run could hold up to {bound} database connections at once ({workers} "
            f"worker(s)), more than --max-connections {config.max_connections}: use fewer "
            "workers"
        )
    return bound


def failure_message(error: BaseException) -> str:
    """One clear line for a failed run.

    A runner reports a worker's exception as text inside its own (with the worker's
    traceback); when the database was unavailable, that line is the one worth reading.
    """
    current: BaseException | None = error
    while current is not None:
        if isinstance(current, retry.DatabaseUnavailable):
            return str(current)
        current = current.__cause__ or current.__context__
    text = str(error)
    marker = "the database is unavailable:"
    if marker in text:
        line = text[text.index(marker) :].splitlines()[0]
        return line.rstrip(" '\"")
    return retry.describe(error) if len(text) < 2000 else f"{type(error).__name__}: {text[:2000]}…"


def safe_options(options: argparse.Namespace, beam_args: list[str]) -> dict[str, Any]:
    """The options as given, without the database URL's password."""
    shown: dict[str, Any] = dict(vars(options))
    if shown.get("database_url"):
        shown["database_url"] = connections.redact_url(shown["database_url"])
    if beam_args:
        shown["beam_args"] = beam_args
    return shown


def print_help() -> None:
    """``--help``: this pipeline's options (Beam's own, such as ``--runner``, also apply)."""
    parser = cli.parser(
        "pipeline.run",
        __doc__,
        epilog="Apache Beam's options are accepted too, e.g. --runner=DirectRunner "
        "(default), --runner=FlinkRunner --flink_master=HOST:PORT, --direct_num_workers=2.",
    )
    add_arguments(parser)
    parser.print_help()


def main(argv: list[str] | None = None) -> int:
    args = argv if argv is not None else sys.argv[1:]
    if "-h" in args or "--help" in args:
        print_help()
        return 0
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s", force=True
    )
    for chatty in _CHATTY_LOGGERS:
        logging.getLogger(chatty).setLevel(logging.WARNING)
    tuning.tune_process()
    started = time.monotonic()
    parser = argparse.ArgumentParser(add_help=False)
    add_arguments(parser)
    try:
        options, beam_args = parser.parse_known_args(args)
    except SystemExit:
        return 2  # argparse has said what is wrong
    url = None
    try:
        url = connections.resolve_database_url(options.database_url)
        config = validate(options, url)
        check_connection_budget(config, runner_name(beam_args), beam_args)
    except OptionsError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except Exception as e:  # noqa: BLE001 - reported, then a non-zero exit
        print(
            f"error: could not reach the database: {connections.scrub(str(e), url)}",
            file=sys.stderr,
        )
        return 1
    runner = runner_name(beam_args)
    engine = connections.make_engine(config.database_url, pool_size=2, max_overflow=0)
    policy = config.retry_policy
    try:
        try:
            checked = retry.call(
                lambda: check_sources(engine, config), what="checking the sources", policy=policy
            )
        except SourcesError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        config = dataclasses.replace(config, sources=checked)
        id_type = next(iter({s.key_type for s in checked.values()}))
        retry.call(
            lambda: ensure_initialised(engine, config.schema, id_type),
            what="checking the schema",
            policy=policy,
        )
        pins = dict(config.factor_pins)
        try:
            in_force = retry.call(
                lambda: editions.current_editions(engine, pins, config.schema),
                what="reading the factor editions",
                policy=policy,
            )
        except editions.EditionError as e:
            print(f"error: --factor-edition: {e}", file=sys.stderr)
            return 2
        counts = retry.call(
            lambda: queries.count_activities(
                engine,
                config.activity_types,
                config.date_from,
                config.date_to,
                on_pending=warm_up_beam,
                sources=config.sources,
                schema=config.schema,
            ),
            what="counting pending activities",
            policy=policy,
        )
        pending = sum(c["pending"] for c in counts.values())
        retry.call(
            lambda: runs.start_run(
                engine,
                config.run_id,
                runner,
                safe_options(options, beam_args),
                config.schema,
                code_version=editions.code_version(),
            ),
            what="recording the run",
            policy=policy,
        )
        setup_s = time.monotonic() - started
        _LOG.info(
            "run %s on %s: %d pending of %d activities (%d new, %d changed); %d deleted",
            config.run_id,
            runner,
            pending,
            sum(c["total"] for c in counts.values()),
            sum(c["new"] for c in counts.values()),
            sum(c["changed"] for c in counts.values()),
            sum(c["deleted"] for c in counts.values()),
        )
        retired = retry.call(
            lambda: retire(engine, config, counts),
            what="retiring the results of deleted activities",
            policy=policy,
        )
        metrics: dict[str, int] | None
        if pending == 0:
            metrics = {}  # nothing to do: no pipeline, nothing written
        else:
            # Planned here while Beam is still being imported (warm_up_beam): only the types
            # with something pending are read at all.
            ranges = retry.call(
                lambda: plan(engine, config, counts),
                what="planning the key ranges",
                policy=policy,
            )
            with summaries.Progress(
                engine, config.run_id, pending, config.progress_interval, config.schema
            ):
                metrics = execute(args, config, ranges)
        pipeline_s = time.monotonic() - started - setup_s
        coverage = retry.call(
            lambda: (
                runs.run_coverage(engine, config.run_id, config.schema)
                if pending
                else runs.nothing_written()
            ),
            what="measuring data-quality coverage",
            policy=policy,
        )
        summary = retry.call(
            lambda: summaries.summarise(engine, config, counts, metrics, coverage, retired),
            what="summarising the run",
            policy=policy,
        )
        summary["quality"] = coverage
        summary["factor_pins"] = pins
        summary["factor_editions"] = in_force
        summary["code_version"] = editions.code_version()
        summary["status"] = "succeeded"
        summary["runner"] = runner
        summary["database"] = connections.redact_url(config.database_url)
        summary["schema"] = config.schema
        summary["sources"] = {t: s.name for t, s in config.sources.items()}
        summary["timings"] = {
            "setup_s": round(setup_s, 3),
            "pipeline_s": round(pipeline_s, 3),
            "total_s": round(time.monotonic() - started, 3),
        }
        retry.call(
            lambda: runs.finish_run(
                engine,
                config.run_id,
                config.schema,
                status="succeeded",
                total_activities=summary["total_activities"],
                skipped=summary["skipped"],
                pending=summary["pending"],
                total_processed=summary["total_processed"],
                errors=summary["errors"],
                total_co2e_tonnes=summary["total_co2e_tonnes"],
                by_activity_type=summary["by_activity_type"],
                timings=summary["timings"],
                metrics_source=summary["metrics_source"],
                quality=summary["quality"],
                factor_pins=summary["factor_pins"],
                factor_editions=summary["factor_editions"],
                code_version=summary["code_version"],
            ),
            what="recording the run's outcome",
            policy=policy,
        )
        print(json.dumps(summary, indent=2))
        return 0
    except Exception as e:  # noqa: BLE001 - recorded on the run, then a non-zero exit
        message = connections.scrub(failure_message(e), config.database_url)
        _LOG.error("run %s failed: %s", config.run_id, message)
        try:
            # Briefly: the database may be what failed, and the run must still end.
            retry.call(
                lambda: runs.finish_run(
                    engine, config.run_id, config.schema, status="failed", message=message
                ),
                what="recording the failure",
                policy=retry.RetryPolicy(attempts=2, base_delay=0.5),
            )
        except Exception as again:  # noqa: BLE001
            _LOG.error(
                "run %s could not be marked failed in %s (%s); it stays 'running' there",
                config.run_id,
                tables.RUNS_TABLE,
                connections.scrub(retry.describe(again), config.database_url),
            )
        print(f"error: run {config.run_id} failed: {message}", file=sys.stderr)
        return 1
    finally:
        engine.dispose()


def exit_now(code: int) -> NoReturn:
    """Ends the process once the run is recorded and its summary printed.

    The interpreter's own shutdown joins the runner's idle threads and frees every object one
    by one: half a second after a large run, for nothing, since everything that matters is
    committed and flushed by then."""
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    exit_now(main())
