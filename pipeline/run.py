"""Entry point: ``python -m pipeline.run [options]``: parse → validate → build → run → summarise.

Without ``--database-url`` (or ``$EMISSIONS_DATABASE_URL``) it uses the embedded PostgreSQL.
Prints a JSON run summary and stores it in ``calculation_runs``; exits non-zero on failure.
SIGTERM and SIGINT stop a run cleanly: it is recorded as ``cancelled`` with what it committed,
and exits 143 or 130.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib
import json
import logging
import os
import sys
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from pipeline import cli, editions, market_stage, retry, tuning
from pipeline import summary as summaries
from pipeline.metrics import redact as redact_push_url
from pipeline.options import (
    OptionsError,
    RunConfig,
    add_arguments,
    parse_run_args,
    validate,
    with_sources,
)
from pipeline.planning import (
    MassRetirement,
    check_retirement,
    check_sources,
    plan,
    retire,
    to_read,
)
from pipeline.ranges import KeyRange
from pipeline.stopping import (
    Cancelled,
    Leftovers,
    Stop,
    TracebacksAtDebug,
    WorkerStderr,
    end_cancelled,
    exit_now,
    real_stderr,
    run_until_done,
    stoppable,
)
from pipeline.store import (
    checks,
    claims,
    connections,
    install,
    queries,
    runs,
    sources,
    stored_sources,
    tables,
)
from pipeline.store.install import ensure_initialised, settle_after_writes
from pipeline.store.sources import SourcesError
from pipeline.summary import failure_message, one_line

if TYPE_CHECKING:
    import apache_beam as beam
    from apache_beam.options.pipeline_options import PipelineOptions

_LOG = logging.getLogger("pipeline.run")

#: Beam loggers whose INFO lines say nothing to someone running the pipeline: one line per
#: type hint it cannot use, the BigQuery connector that is not installed, and the in-process
#: runner's ports, channels and caches (a score of lines per run).
_CHATTY_LOGGERS = (
    "apache_beam.typehints.native_type_compatibility",
    "apache_beam.io.gcp.bigquery",
    "apache_beam.runners.portability.fn_api_runner.worker_handlers",
    "apache_beam.runners.worker",
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
    argv: list[str],
    config: RunConfig,
    ranges: Sequence[KeyRange],
    stop: Stop | None = None,
    build: Callable[[Any], Any] | None = None,
) -> dict[str, int] | None:
    """Builds and runs the Beam pipeline over ``ranges`` (or the one ``build(p)`` adds, the
    follow mode's: then streaming on a runner elsewhere); returns its counters (None if the
    runner has none). Raises ``Cancelled`` when ``stop`` sees a stop signal meanwhile.
    Whatever the runner started outside this process (Flink's job server) is stopped, and
    Beam's temp folders removed, when the pipeline ends (``Leftovers``).

    Beam is imported here, and only here: a run with nothing pending never pays for it.
    """
    # Beam's modules import each other in cycles: two threads importing them at once can see
    # each other's half-made modules. Let the warm-up finish first.
    for thread in _WARM_UP:
        thread.join()
    from pipeline import beam_options, graph

    options = runner_options(argv)
    os.environ[beam_options.PACKAGE_ENV] = "core"  # --setup_file's sdist: the core (setup.py)
    elsewhere = runner_name(argv) in REMOTE_RUNNERS
    if build is not None and elsewhere:
        from apache_beam.options.pipeline_options import StandardOptions

        options.view_as(StandardOptions).streaming = True
    with Leftovers() as leftovers:  # from here, Beam's temp folders are the run's own
        p = make_pipeline(options)
        leftovers.watch(p.runner)
        if build is None:
            graph.build(p, config, ranges)
        else:
            build(p)
        return run_until_done(p, stop or Stop(), in_process=not elsewhere)


def runner_options(argv: list[str]) -> PipelineOptions:
    """The pipeline's options from the run's arguments (``shipped_args``), the calculation's
    own registered."""
    from apache_beam.options.pipeline_options import PipelineOptions

    from pipeline import beam_options

    options = PipelineOptions(with_local_defaults(shipped_args(argv)))
    options.view_as(beam_options.EmissionsOptions)
    return options


def shipped_args(argv: list[str]) -> list[str]:
    """``argv`` as the pipeline's options carry it: to the runner, and on Flink or Dataflow
    in the job, to every worker. A database URL given (``--database-url``, however spelled)
    goes without its password: the DoFns carry their own URL (``RunConfig``), and workers
    elsewhere read the password on their host."""
    shipped = []
    for arg in argv:
        name, eq, value = arg.partition("=")
        if _database_url(arg):
            arg = connections.without_password(arg)
        elif eq and name.startswith("--") and _database_url(value):
            arg = f"{name}={connections.without_password(value)}"
        shipped.append(arg)
    return shipped


def _database_url(value: str) -> bool:
    """Whether ``value`` is a PostgreSQL URL (``postgresql://``, ``postgres://``,
    ``postgresql+driver://``), not merely a name that starts like one."""
    scheme, sep, _ = value.partition("://")
    return bool(sep) and scheme.split("+")[0] in ("postgresql", "postgres")


#: Runners that run the job elsewhere, submitted by ``p.run()`` (whose job server takes the
#: signals, which only the main thread may do) and watched until done.
REMOTE_RUNNERS = frozenset(
    {"FlinkRunner", "PortableRunner", "DataflowRunner", "SparkRunner", "SamzaRunner"}
)


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


def workers_in_process(argv: list[str]) -> bool:
    """Whether every worker runs in this process (the DirectRunner on threads): then nothing
    of the run can commit once the process has ended."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--direct_running_mode", default="multi_threading")
    known, _ = parser.parse_known_args(with_local_defaults(argv))
    local = runner_name(argv) in ("DirectRunner", "direct")
    return local and known.direct_running_mode != "multi_processing"


def check_connection_budget(config: RunConfig, runner: str, beam_args: list[str]) -> int:
    """The most connections this run can hold at once; ``OptionsError`` above the maximum."""
    local = runner in ("DirectRunner", "direct")
    workers = beam_workers(with_local_defaults(beam_args)) if local else 1
    bound = connections.connection_bound(workers)
    limit = config.max_connections
    if limit is None or bound <= limit:
        return bound
    fewest = connections.connection_bound(1)
    if limit < fewest:
        raise OptionsError(
            f"--max-connections {limit} is fewer than any run needs: {fewest} at once "
            f"({connections.DRIVER_CONNECTIONS} for the run itself, "
            f"{connections.WORKER_CONNECTIONS} for one worker); allow at least {fewest}"
        )
    fits = (limit - connections.DRIVER_CONNECTIONS) // connections.WORKER_CONNECTIONS
    raise OptionsError(
        f"this run could hold up to {bound} database connections at once ({workers} workers), "
        f"more than --max-connections {limit}: run {fits} worker{'s' if fits > 1 else ''} "
        f"(--direct_num_workers={fits}), or allow {bound}"
    )


def safe_options(options: argparse.Namespace, beam_args: list[str]) -> dict[str, Any]:
    """The options as given, without the database URL's password."""
    shown: dict[str, Any] = dict(vars(options))
    if shown.get("database_url"):
        shown["database_url"] = connections.redact_url(shown["database_url"])
    if beam_args:
        shown["beam_args"] = beam_args
    return shown


def resolve_sources(
    engine: sa.Engine, options: argparse.Namespace, config: RunConfig
) -> stored_sources.Chosen:
    """The run's sources: the file given (``--sources``, ``$EMISSIONS_SOURCES``) when it is
    the one the schema stores, the stored one when none is given, else the pipeline's own
    tables; ``SourcesChanged`` for a file the schema does not store."""
    path = sources.resolve_path(options.sources)
    return retry.call(
        lambda: stored_sources.resolve(engine, config.schema, path),
        what="checking the sources",
        policy=config.retry_policy,
    )


def recorded_options(config: RunConfig, chosen: stored_sources.Chosen) -> dict[str, Any]:
    """The columns of the run's record that say what its numbers rest on: the sources'
    sha256, and every option that changes numbers (``audit.verify`` recomputes with them)."""
    return {
        "sources_sha256": chosen.sha256,
        "calculation_options": stored_sources.calculation_options(
            config.radiative_forcing, config.limits, dict(config.factor_pins), chosen
        ),
    }


#: A bound on each statement of a run's own record (its row's start and outcome): the run's
#: ``--statement-timeout`` may be what failed it, and its failure must still be recorded.
RECORD_TIMEOUT_S = 30.0


def record_engine(url: str, run_id: str) -> sa.Engine:
    """An engine for the run's row alone: a connection only while a statement of the record
    runs (none while the pipeline holds its own), each statement and lock wait bounded by
    ``RECORD_TIMEOUT_S`` whatever the run's own timeouts."""
    bounded = connections.with_timeouts(url, RECORD_TIMEOUT_S, RECORD_TIMEOUT_S)
    return connections.make_engine(connections.for_run(bounded, run_id), poolclass=sa.pool.NullPool)


@dataclasses.dataclass
class Record:
    """The run's row in ``calculation_runs``, started by the run's first statement once the
    database is reachable (on a schema an older release made, as soon as ``ensure_initialised``
    has migrated it; a schema with no pipeline yet is refused: ``cli.init_first``), so that
    whatever fails after it (the sources check, the counts, the planning, a timeout, a
    refusal) is recorded ``failed`` with its line. Only the process that started the row
    finishes it (``runs.finish_run``)."""

    engine: sa.Engine
    config: RunConfig
    runner: str
    options: dict[str, Any]
    fields: dict[str, Any]
    started: bool = False
    #: Why the run could not be recorded yet (its schema is missing or behind), when known.
    unready: str | None = None
    _heartbeat: contextlib.ExitStack = dataclasses.field(default_factory=contextlib.ExitStack)
    _beating: runs.Heartbeat | None = None
    #: When the run started (Unix time), for its figures.
    started_at: float = dataclasses.field(default_factory=time.time)

    def start_if_ready(self) -> bool:
        """Starts the row if the schema is at the newest revision; returns whether it did."""
        schema = self.config.schema
        found = retry.call(
            lambda: install.revision(self.engine, schema),
            what="recording the run",
            policy=self.config.retry_policy,
        )
        if found.up_to_date:
            self.start()
        else:
            behind = f"at revision {found.current}" if found.current else "not set up yet"
            self.unready = f"not recorded: the schema {schema} is {behind}"
        return self.started

    def start(self) -> None:
        """Starts the row (``runs.RunIdTaken`` when the id is already recorded)."""
        attempts: list[int] = []

        def insert() -> None:
            attempts.append(1)
            try:
                runs.start_run(
                    self.engine,
                    self.config.run_id,
                    self.runner,
                    self.options,
                    self.config.schema,
                    code_version=editions.code_version(),
                    **self.fields,
                )
            except runs.RunIdTaken:
                if len(attempts) == 1:
                    raise
                # A retry: the first insert committed, and only its reply was lost.

        retry.call(insert, what="recording the run", policy=self.config.retry_policy)
        self.started, self.unready = True, None
        self.beat(self.engine)

    def beat(self, engine: sa.Engine) -> None:
        """Keeps the row's heartbeat going on ``engine`` from now on. It starts on the record's
        own engine, a connection for a moment each time, beside the counts, which take the whole
        pool of the run's engine (and may wait for a lock); the pipeline's connections leave
        room in that pool, and the run's connections stay within their bound."""
        self.stop_beating()
        self._beating = self._heartbeat.enter_context(
            runs.Heartbeat(engine, self.config.run_id, self.config.schema)
        )

    def no_longer_running(self) -> bool:
        """Whether its heartbeat found the row no longer ``running`` (another process marked
        it abandoned while this one was frozen or cut off)."""
        return self._beating is not None and not self._beating.running

    def stop_beating(self) -> None:
        """No more heartbeats: the outcome is recorded next."""
        self._heartbeat.close()

    def note(self, sources_path: str | None, **fields: Any) -> None:
        """Adds to the running row what the run learnt since it started: the sources it reads
        (the file, as ``options['sources']``) and the columns ``fields``."""
        self.options["sources"] = sources_path
        if not self.started:
            return
        retry.call(
            lambda: runs.note_run(
                self.engine,
                self.config.run_id,
                self.config.schema,
                options=json.loads(json.dumps(self.options, default=str)),
                **fields,
            ),
            what="recording the run",
            policy=self.config.retry_policy,
        )

    def finish(self, **fields: Any) -> bool:
        """Stores the outcome; whether the row was still ``running`` (see ``finish_run``)."""
        return bool(
            retry.call(
                lambda: runs.finish_run(
                    self.engine, self.config.run_id, self.config.schema, **fields
                ),
                what="recording the run's outcome",
                policy=self.config.retry_policy,
            )
        )

    def overtaken(self, summary: dict[str, Any], started_at: float) -> int:
        """A run whose row another process finished while it worked (marked abandoned: its
        heartbeat stopped, the process frozen): the record stays as that process left it,
        append-only, and the run says so and exits 1, its figures exported with that outcome
        (a scheduler must not see a success the record does not hold)."""
        found = retry.call(
            lambda: runs.outcome(self.engine, self.config.run_id, self.config.schema),
            what="reading the run's record",
            policy=self.config.retry_policy,
        )
        status, why = found or ("missing", None)
        summary["status"] = status
        summaries.export_metrics(self.engine, self.config, summary, started_at)
        said = f" ({why})" if why else ""
        print(
            f"error: run {self.config.run_id} was recorded {status} by another process while "
            f"it worked{said}: its outcome was not recorded",
            file=sys.stderr,
        )
        return 1

    def fail(self, message: str) -> None:
        """Records the run ``failed`` with ``message`` (one line), briefly: the database may be
        what failed, and the run must still end. Said in the log when it cannot be."""
        if not self.started:
            return
        try:
            retry.call(
                lambda: runs.finish_run(
                    self.engine,
                    self.config.run_id,
                    self.config.schema,
                    status="failed",
                    message=message,
                ),
                what="recording the failure",
                policy=retry.RetryPolicy(attempts=2, base_delay=0.5),
            )
        except Exception as again:  # noqa: BLE001
            _LOG.error(
                "run %s could not be marked failed in %s (%s); it stays 'running' there until "
                "its heartbeat is %g s old, when ops.status or the next run marks it abandoned",
                self.config.run_id,
                tables.RUNS_TABLE,
                connections.scrub(retry.describe(again), self.config.database_url),
                runs.DEFAULT_STALE_AFTER,
            )

    def refuse(self, error: Exception, said: str) -> int:
        """A run refused for what it was given (its sources, an edition): recorded failed with
        the reason when its row exists, its figures exported as failed, ``said`` on stderr;
        exit code 2."""
        self.fail(one_line(connections.scrub(str(error), self.config.database_url)))
        refused = {"run_id": self.config.run_id, "runner": self.runner, "status": "failed"}
        summaries.export_metrics(self.engine, self.config, refused, self.started_at)
        print(said, file=sys.stderr)
        return 2


#: What ``--help`` says of Beam's options.
BEAM_EPILOG = (
    "Apache Beam's registered options are accepted too, e.g. --runner=DirectRunner (default),\n"
    "--runner=FlinkRunner --flink_master=HOST:PORT, --direct_num_workers=2; any other option\n"
    "is refused."
)


def print_help() -> None:
    """``--help``: this pipeline's options (Beam's own, such as ``--runner``, also apply)."""
    parser = cli.parser("pipeline.run", __doc__, epilog=BEAM_EPILOG)
    add_arguments(parser)
    parser.print_help()


def main(argv: list[str] | None = None) -> int:
    """The command; returns its exit code (a stopped run ends the process itself, see
    ``end_cancelled``). The stop signals are handled from the start, and stderr is a
    ``WorkerStderr`` (``stoppable``)."""
    args = argv if argv is not None else sys.argv[1:]
    if "-h" in args or "--help" in args:
        print_help()
        return 0
    return stoppable(calculate, args)


def calculate(args: list[str], stop: Stop) -> int:
    """Parse → validate → build → run → summarise, looking at ``stop`` between the steps:
    ``prepare`` (before the run has a row), then ``RunSteps``, whose ``run`` reads as the
    run's life: record, count and retire, execute, settle and finish, and the failure paths."""
    tuning.tune_process()
    prepared = prepare(args)
    if isinstance(prepared, int):
        return prepared
    return RunSteps(prepared, args, stop).run()


@dataclasses.dataclass(frozen=True)
class Prepared:
    """A command line parsed and checked, with the database it names: all a run needs before
    its row is written."""

    options: argparse.Namespace
    beam_args: list[str]
    config: RunConfig
    url: str
    started: float
    started_at: float


def prepare(args: list[str]) -> Prepared | int:
    """Parses and validates the command line and sets up the logs; an exit code when the run
    cannot begin (2: asked the wrong way, said in one line; 1: the database is unreachable)."""
    started, started_at = time.monotonic(), time.time()
    try:
        options, beam_args = parse_run_args(args)
    except SystemExit:
        return 2  # said in one line: an unknown option (not even Beam's), or a bad value
    # The run's own lines at --log-level; Beam's and its job server's at WARNING unless DEBUG.
    cli.setup_logging(options.log_level, stream=real_stderr())
    for chatty in _CHATTY_LOGGERS:
        logging.getLogger(chatty).setLevel(logging.WARNING)
    for handler in logging.getLogger().handlers:
        handler.addFilter(TracebacksAtDebug())
    url = None
    try:
        url = connections.resolve_database_url(options.database_url)
        config = validate(options, url)
        check_connection_budget(config, runner_name(beam_args), beam_args)
    except (OptionsError, connections.UrlError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except Exception as e:  # noqa: BLE001 - reported, then a non-zero exit
        print(
            f"error: could not reach the database: {connections.scrub(str(e), url)}",
            file=sys.stderr,
        )
        return 1
    return Prepared(options, beam_args, config, url, started, started_at)


class Refused(Exception):
    """A run refused for what it was given (its sources, an edition, a mass retirement):
    recorded failed with ``error``, ``said`` on stderr, exit 2 (``Record.refuse``)."""

    def __init__(self, error: Exception, said: str) -> None:
        super().__init__(said)
        self.error, self.said = error, said


class RunSteps:
    """A run's life, one step a method, sharing what the steps learn (the config as it is
    completed, the counts, the timings): ``run`` calls them in order."""

    def __init__(self, prepared: Prepared, args: list[str], stop: Stop) -> None:
        self.args, self.stop, self.options = args, stop, prepared.options
        self.beam_args, self.config = prepared.beam_args, prepared.config
        self.started, self.started_at = prepared.started, prepared.started_at
        self.runner = runner_name(prepared.beam_args)
        self.engine = connections.make_engine(self.config.database_url, pool_size=2, max_overflow=0)
        self.policy = self.config.retry_policy
        shown = safe_options(prepared.options, prepared.beam_args)
        if shown.get("pushgateway"):
            shown["pushgateway"] = redact_push_url(shown["pushgateway"])
        self.record = Record(
            record_engine(prepared.url, self.config.run_id),
            self.config,
            self.runner,
            shown,
            self.config.orchestration.columns(),
        )
        self.counts: dict[str, dict[str, int]] = {}
        self.pending = 0
        self.timings: dict[str, float] = {}

    def run(self) -> int:
        """The steps in order; a refusal, a stop signal and a failure each end it their way."""
        try:
            if (code := self.record_run()) is not None:
                return code
            self.sweep_earlier_runs()
            in_force = self.editions_in_force()
            self.pending, retired = self.count_and_retire()
            metrics, reading = self.execute_pipeline(self.pending)
            market_based = market_stage.run_stage(self.engine, self.config, self.chosen, self.stop)
            self.stop.check()  # after this, every write is committed: the run records its outcome
            self.timings["pipeline_s"] = time.monotonic() - self.started - self.timings["setup_s"]
            return self.settle_and_finish(metrics, reading, retired, in_force, market_based)
        except Refused as refused:
            return self.record.refuse(refused.error, refused.said)
        except runs.RunIdTaken as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        except Cancelled as stopped:
            self.record.stop_beating()
            exact = workers_in_process(self.beam_args)
            end_cancelled(
                self.engine, self.config, stopped, self.record.started, self.counts,
                self.started, exact,
            )  # fmt: skip
        except Exception as e:  # noqa: BLE001 - recorded on the run, then a non-zero exit
            return self.failed(e)
        finally:
            self.record.stop_beating()
            self.engine.dispose()
            self.record.engine.dispose()

    def call(self, what: str, step: Callable[[], Any]) -> Any:
        """``step``, retried with the run's policy on transient database errors."""
        return retry.call(step, what=what, policy=self.policy)

    def record_run(self) -> int | None:
        """The run's row first, so that whatever fails from here on is recorded; then the
        sources (the file given or the schema's, checked against the database) and the schema
        (migrated when an older release made it). An exit code when the run cannot go on."""
        config, record = self.config, self.record
        if not record.start_if_ready():
            missing = self.call(
                "checking the schema", lambda: cli.not_initialised(record.engine, config.schema)
            )
            if missing:  # a run never creates the schema: a mistyped --schema would "succeed"
                print(f"error: {missing}", file=sys.stderr)
                return 2
        try:
            self.chosen = resolve_sources(self.engine, self.options, config)
            config = with_sources(config, self.options, self.chosen.sources)
        except (stored_sources.SourcesChanged, SourcesError, OptionsError) as e:
            raise Refused(e, f"error: {e}") from None
        record.note(self.chosen.path, **recorded_options(config, self.chosen))
        try:
            checked = self.call("checking the sources", lambda: check_sources(self.engine, config))
        except SourcesError as e:
            raise Refused(e, f"error: {e}") from None
        config = self.config = dataclasses.replace(config, sources=checked)
        id_type = checks.common_key_type(checked)
        self.call(
            "checking the schema", lambda: ensure_initialised(self.engine, config.schema, id_type)
        )
        if not record.started:  # the schema has just been set up or brought up to date
            record.start()
            record.note(self.chosen.path, **recorded_options(config, self.chosen))
        return None

    def sweep_earlier_runs(self) -> None:
        """Runs whose heartbeat stopped long ago were killed: marked abandoned, their sessions
        ended and the claims of runs no longer running dropped; the abandoned ones since the
        last success said in one warning."""
        engine, schema, run_id = self.engine, self.config.schema, self.config.run_id
        what = "checking earlier runs"
        marked = self.call(
            what,
            lambda: runs.mark_abandoned(
                engine, runs.DEFAULT_STALE_AFTER, schema, by=f"run {run_id}"
            ),
        )
        self.call(what, lambda: claims.sweep(engine, marked, schema))
        abandoned = self.call(what, lambda: runs.abandoned_since_success(engine, schema))
        if abandoned:
            _LOG.warning("%s", summaries.abandoned_line(abandoned))

    def editions_in_force(self) -> Any:
        """The factor editions the run uses (``Refused`` for a pin naming none)."""
        pins = dict(self.config.factor_pins)
        try:
            return self.call(
                "reading the factor editions",
                lambda: editions.current_editions(self.engine, pins, self.config.schema),
            )
        except editions.EditionError as e:
            raise Refused(e, f"error: --factor-edition: {e}") from None

    def count_and_retire(self) -> tuple[int, dict[str, tuple[int, int]]]:
        """Counts what is pending (new, changed) and deleted per type, refuses a mass
        retirement, and retires the results of deleted activities; the pending count and what
        was retired."""
        config, engine = self.config, self.engine
        counting = time.monotonic()
        self.counts = counts = self.call(
            "counting pending activities",
            lambda: queries.count_activities(
                engine,
                config.activity_types,
                config.date_from,
                config.date_to,
                on_pending=warm_up_beam,
                sources=config.sources,
                schema=config.schema,
                progress_interval=config.progress_interval,
                recheck=config.recheck,
            ),
        )
        pending = sum(c["pending"] for c in counts.values())
        self.timings["counts_s"] = time.monotonic() - counting
        self.record.beat(engine)  # the counts are done: room in the pool
        try:
            self.call(
                "counting the results to retire", lambda: check_retirement(engine, config, counts)
            )
        except MassRetirement as e:
            raise Refused(e, f"error: {e}") from None
        self.stop.check()
        self.timings["setup_s"] = time.monotonic() - self.started
        _LOG.info(
            "run %s on %s: %d pending of %d activities (%d new, %d changed); %d deleted",
            config.run_id,
            self.runner,
            pending,
            *(sum(c[k] for c in counts.values()) for k in ("total", "new", "changed", "deleted")),
        )
        retired = self.call(
            "retiring the results of deleted activities", lambda: retire(engine, config, counts)
        )
        self.stop.check()
        return pending, retired

    def execute_pipeline(self, pending: int) -> tuple[dict[str, int] | None, bool]:
        """Plans the key ranges and runs the pipeline over them, when anything is to be read
        (else no pipeline at all); its counters, and whether it read."""
        self.timings["plan_s"] = 0.0
        reading = any(to_read(self.config, c) for c in self.counts.values())
        if not reading:
            return {}, False  # nothing to do: no pipeline, nothing written
        # Planned here while Beam is still being imported (warm_up_beam): only the types
        # with something pending are read at all.
        planning = time.monotonic()
        ranges = self.call(
            "planning the key ranges", lambda: plan(self.engine, self.config, self.counts)
        )
        self.timings["plan_s"] = time.monotonic() - planning
        config = self.config
        with summaries.Progress(
            self.engine, config.run_id, pending, config.progress_interval, config.schema
        ):
            return execute(self.args, config, ranges, self.stop), True

    def settle_and_finish(
        self,
        metrics: dict[str, int] | None,
        reading: bool,
        retired: dict[str, tuple[int, int]],
        in_force: Any,
        market_based: Any,
    ) -> int:
        """The summary, built once and stored whole as the run's outcome; then housekeeping (a
        run that changed a large share of the results leaves them vacuumed, so the next run
        may start straight away; a stop signal meanwhile cancels the vacuum only), the
        figures exported and the summary printed."""
        config, engine = self.config, self.engine
        summary = summarise_run(
            engine, config, self.runner, self.counts, metrics, retired, in_force, reading
        )
        summary["sources_sha256"] = self.chosen.sha256
        if market_based is not None:
            summary["market_based"] = market_based
        summary["timings"] = {
            **{k: round(self.timings[k], 3) for k in ("setup_s", "counts_s", "plan_s")},
            "pipeline_s": round(self.timings["pipeline_s"], 3),
            **summaries.busy_seconds(metrics),
            "total_s": round(time.monotonic() - self.started, 3),
        }
        self.record.stop_beating()  # the outcome is recorded next: no heartbeat after it
        if not self.record.finish(outcome=runs.Outcome.of(summary, status="succeeded")):
            return self.record.overtaken(summary, self.started_at)
        changed = self.pending + sum(results for results, _ in retired.values())
        settling = time.monotonic()
        settle_after_writes(
            engine,
            changed,
            config.schema,
            stopped=lambda: (
                None if self.stop.signum is None else Cancelled(self.stop.signum).signal_name
            ),
        )
        # Printed, not stored: the run's row was recorded before.
        summary["timings"]["settle_s"] = round(time.monotonic() - settling, 3)
        summaries.export_metrics(self.record.engine, config, summary, self.started_at)
        print(json.dumps(summary, indent=2))
        return 0

    def failed(self, e: Exception) -> int:
        """A run that failed: recorded ``failed`` with its one line, its figures exported as
        failed, the line said once on stderr; exit 1."""
        config, record = self.config, self.record
        message = connections.scrub(failure_message(e), config.database_url)
        # Said once, by the error line below (a log line too would print it twice).
        _LOG.debug(
            "run %s failed:\n%s",
            config.run_id,
            connections.scrub("".join(traceback.format_exception(e)), config.database_url),
        )
        record.stop_beating()
        record.fail(message)
        failed = {
            "run_id": config.run_id,
            "runner": self.runner,
            "status": "failed",
            "timings": {"total_s": round(time.monotonic() - self.started, 3)},
            "by_activity_type": summaries.counted(self.counts),
        }
        summaries.export_metrics(record.engine, config, failed, self.started_at)
        unrecorded = f" ({record.unready})" if record.unready else ""
        print(f"error: run {config.run_id} failed: {message}{unrecorded}", file=sys.stderr)
        return 1


def summarise_run(
    engine: sa.Engine,
    config: RunConfig,
    runner: str,
    counts: dict[str, dict[str, int]],
    metrics: dict[str, int] | None,
    retired: dict[str, tuple[int, int]],
    in_force: Any,
    reading: bool,
) -> dict[str, Any]:
    """The summary of a run whose writes are all committed: what it wrote (from its write
    log), its data-quality coverage, and what it ran with."""
    policy = config.retry_policy
    coverage = retry.call(
        lambda: (
            runs.run_coverage(engine, config.run_id, config.schema)
            if reading
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
    summary["factor_pins"] = dict(config.factor_pins)
    summary["factor_editions"] = in_force
    summary["code_version"] = editions.code_version()
    summary["status"] = "succeeded"
    summary["runner"] = runner
    summary["database"] = connections.redact_url(config.database_url)
    summary["schema"] = config.schema
    summary["sources"] = {t: s.name for t, s in config.sources.items()}
    return summary


if __name__ == "__main__":
    # For the life of the process: a worker thread may still print as it ends (see main).
    sys.stderr = WorkerStderr(sys.stderr)
    exit_now(main())
