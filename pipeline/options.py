"""The pipeline's options, and the checks run before anything is built.

The options are declared once, in ``add_arguments``: ``pipeline.run`` parses them with plain
argparse (so that a run with nothing to do never imports Beam), and
``pipeline.beam_options.EmissionsOptions`` registers the same ones with Beam.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import math
import os
import urllib.parse
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

from pipeline import cli, editions
from pipeline.methodology.market import Sharing
from pipeline.model import ACTIVITY_TYPES, DEFAULT_LIMITS, ActivityType, Limits
from pipeline.ranges import MIN_ROWS_PER_RANGE
from pipeline.retry import DEFAULT_POLICY, RetryPolicy
from pipeline.store.connections import DATABASE_URL_ENV, for_run, with_timeouts
from pipeline.store.sources import (
    Source,
    SourcesError,
    default_sources,
    load_sources,
    resolve_path,
)
from pipeline.store.tables import DEFAULT_SCHEMA, validate_schema

#: Rows per read range: small enough that a worker's batch is a few tens of megabytes (peak
#: memory then stays flat as tables grow), large enough that per-range costs do not show.
DEFAULT_ROWS_PER_RANGE = 20_000
#: Statements and lock waits are bounded, so that a run never hangs silently: the longest
#: statement of a run (the counts) takes seconds per 10 million activities.
DEFAULT_STATEMENT_TIMEOUT = 1800.0
DEFAULT_LOCK_TIMEOUT = 300.0
#: One range's results per write: a worker never holds two ranges' results at once.
DEFAULT_WRITE_BATCH_SIZE = DEFAULT_ROWS_PER_RANGE
#: The largest share of a type's results a run retires unasked (``--max-retire-share``).
DEFAULT_MAX_RETIRE_SHARE = 0.1
#: The Pushgateway job the run's figures are pushed under (``--pushgateway``).
METRICS_JOB = "emissions_pipeline"
#: What Airflow puts in a task's environment (and so in the pipeline's, which the Beam
#: operator starts with it): the DAG and the DAG run the task belongs to.
AIRFLOW_DAG_ID_ENV = "AIRFLOW_CTX_DAG_ID"
AIRFLOW_RUN_ID_ENV = "AIRFLOW_CTX_DAG_RUN_ID"
#: The plausibility options: flag, ``Limits`` field, and what it bounds (for --help).
_LIMIT_OPTIONS = (
    ("max-kwh", "max_kwh", "electricity in kWh, after unit conversion"),
    ("max-spend-usd", "max_spend_usd", "spend in 2022 USD, after currency conversion"),
    ("max-passengers", "max_passengers", "number of passengers on one booking"),
    ("max-distance-km", "max_distance_km", "given one-way flight distance in km"),
)


def parse_run_args(
    args: Sequence[str],
    *more: Callable[[argparse.ArgumentParser], None],
    prog: str = "pipeline.run",
    known: Iterable[str] = (),
) -> tuple[argparse.Namespace, list[str]]:
    """The calculation's options (and those ``more`` declares) from ``args``, and the rest,
    which must all be registered Beam options (checked by Beam's registry, which is imported
    only when there is a rest). Anything else, or a value an option cannot take, is refused
    in one line with exit 2 (``SystemExit``); ``known`` adds spellings to suggest."""
    parser = cli.parser(prog, None, add_help=False)
    for add in more:
        add(parser)
    add_arguments(parser)
    options, rest = parser.parse_known_args(list(args))
    if rest:
        from pipeline.beam_options import check_beam_args

        check_beam_args(rest, [*known, *cli.option_strings(parser)])
    return options, rest


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Declares the calculation's options (Beam's own are accepted alongside)."""
    cli.add_database_option(parser)
    cli.add_option(
        parser,
        "run_id",
        default=None,
        help="UUID identifying this run (default: a new random one).",
    )
    cli.add_activity_types_option(parser, "calculate")
    _add_range_arguments(parser)
    _add_selection_arguments(parser)
    _add_retry_arguments(parser)
    _add_calculation_arguments(parser)
    _add_timeout_arguments(parser)
    _add_change_arguments(parser)
    _add_reporting_arguments(parser)
    _add_market_arguments(parser)


def _add_market_arguments(parser: argparse.ArgumentParser) -> None:
    """The Scope 2 market-based stage (docs/scope2.md) and the reporter's choices."""
    cli.add_option(
        parser,
        "market_based",
        choices=MARKET_MODES,
        default="auto",
        help="Allocate the sources' instruments to electricity after the location-based "
        "results (auto: when the sources map instruments or market-based results are "
        "stored; off: never). Default: auto.",
    )
    cli.add_option(
        parser,
        "vintage_window_years",
        type=int,
        default=0,
        help="Years after a certificate's vintage (or a contract's delivery) ends that it may "
        "still serve (0: it must overlap the reporting year; default: 0).",
    )
    parser.add_argument(
        "--sharing",
        choices=get_args(Sharing),
        default="facility_first",
        help="How instruments not retired for a facility are shared among a market's "
        "consumption: in activity order (facility_first) or pro_rata. Default: facility_first.",
    )
    cli.add_option(
        parser,
        "year_start",
        default="01-01",
        metavar="MM-DD",
        help="First day of each reporting year the market-based allocation is made for "
        "(04-01: fiscal years from 1 April, named by the year they begin in). Default: 01-01.",
    )


def _add_range_arguments(parser: argparse.ArgumentParser) -> None:
    """How the activities are split into read ranges, and the results into writes."""
    parser.add_argument(
        "--partitions",
        type=int,
        default=8,
        help="Fewest key ranges per activity table (default: 8); more when the table "
        "holds more than --partitions × --rows-per-range rows.",
    )
    cli.add_option(
        parser,
        "rows_per_range",
        type=int,
        default=DEFAULT_ROWS_PER_RANGE,
        help="Most rows one read range holds; bounds memory per worker (default: 20000).",
    )
    cli.add_option(
        parser,
        "range_planner",
        choices=["rows", "bounds"],
        default="rows",
        help="rows: equal row counts per range, however keys are spread (default); "
        "bounds: --partitions equal slices of the key span.",
    )
    cli.add_option(
        parser,
        "write_batch_size",
        type=int,
        default=DEFAULT_WRITE_BATCH_SIZE,
        help="Rows per bulk write transaction (default: 20000, one range's results).",
    )


def _add_selection_arguments(parser: argparse.ArgumentParser) -> None:
    """Which factors apply and which activities are calculated, by date."""
    parser.add_argument(
        "--no-radiative-forcing",
        "--no_radiative_forcing",
        dest="radiative_forcing",
        action="store_false",
        default=True,
        help="Use DESNZ air factors without radiative forcing (default: with RF).",
    )
    cli.add_option(
        parser,
        "date_from",
        default=None,
        help="Only activities dated on or after this day (YYYY-MM-DD).",
    )
    cli.add_option(
        parser,
        "date_to",
        default=None,
        help="Only activities dated before this day (YYYY-MM-DD).",
    )


def _add_retry_arguments(parser: argparse.ArgumentParser) -> None:
    """How transient database failures are retried, and the connections a run may hold."""
    cli.add_option(
        parser,
        "retry_attempts",
        type=int,
        default=8,
        help=(
            "Tries of a database operation that fails transiently (lost connection, server "
            "restart, serialization failure, deadlock) before the run fails (default: 8)."
        ),
    )
    cli.add_option(
        parser,
        "retry_base_delay",
        type=float,
        default=0.5,
        help=(
            "Seconds before the first retry; the wait doubles each time, up to 10 s "
            "(default: 0.5, so 8 tries wait at most about 35 s)."
        ),
    )
    cli.add_option(
        parser,
        "max_connections",
        type=int,
        default=None,
        help=(
            "Refuse to start when the run could hold more database connections than this "
            "at once: 2 for the driver, plus 4 per worker (a range reader, two writers and "
            "a short-lived factor read), so 10 on the default 2 local workers and at least 6 "
            "for any run. Default: no limit."
        ),
    )


def _add_calculation_arguments(parser: argparse.ArgumentParser) -> None:
    """Pinned factor editions, progress lines, and the plausibility bounds."""
    cli.add_option(
        parser,
        "factor_edition",
        action="append",
        default=None,
        metavar="SET=EDITION",
        help="Use only this edition of a factor set, e.g. 'desnz_air=2025 flat file' "
        "(repeatable; default: the newest loaded row per set, key and year).",
    )
    cli.add_option(
        parser,
        "progress_interval",
        type=float,
        default=5.0,
        help="Seconds between progress lines while the pipeline runs (0: none).",
    )
    # Plausibility bounds (pipeline.model.Limits says why each default): a larger value in one
    # activity is refused as a data error instead of swamping the totals.
    for flag, dest, what in _LIMIT_OPTIONS:
        parser.add_argument(
            f"--{flag}",
            f"--{dest}",
            dest=dest,
            type=float,
            default=getattr(DEFAULT_LIMITS, dest),
            help=f"Refuse an activity with more than this {what} "
            f"(default: {getattr(DEFAULT_LIMITS, dest):g}).",
        )


def _add_timeout_arguments(parser: argparse.ArgumentParser) -> None:
    """How long a statement may run, or wait for a lock, before the run fails."""
    cli.add_option(
        parser,
        "statement_timeout",
        type=float,
        default=DEFAULT_STATEMENT_TIMEOUT,
        help="Seconds any one statement may run before PostgreSQL cancels it and the run "
        "fails saying so (0: no limit); the longest are the counts, seconds per 10 million "
        "activities.",
    )
    cli.add_option(
        parser,
        "lock_timeout",
        type=float,
        default=DEFAULT_LOCK_TIMEOUT,
        help="Seconds a statement may wait for a lock another session holds before the run "
        "fails saying so (0: no limit).",
    )


def _add_change_arguments(parser: argparse.ArgumentParser) -> None:
    """Changed and deleted activities: the recheck, and the guard on mass retirement."""
    parser.add_argument(
        "--recheck",
        action="store_true",
        default=False,
        help="Also compare every activity that has a result with the input it was computed "
        "from (its input fingerprint) and compute again those that differ: for an application "
        "that may change a row without changing its version column. Reads every activity in "
        "scope. Also allocates Scope 2 market-based again when its inputs seem unchanged.",
    )
    cli.add_option(
        parser,
        "max_retire_share",
        type=float,
        default=DEFAULT_MAX_RETIRE_SHARE,
        metavar="SHARE",
        help="Refuse, before retiring anything, a run that would retire more than this share "
        "of an activity type's results as deleted (0 to 1; default: 0.1): a wrong sources "
        "mapping looks like every activity deleted. 1 allows any share.",
    )
    cli.add_option(
        parser,
        "allow_retire",
        action="store_true",
        default=False,
        help="Retire the results of deleted activities whatever their share (as "
        "--max-retire-share 1): for activities that really were deleted in bulk.",
    )


def _add_reporting_arguments(parser: argparse.ArgumentParser) -> None:
    """Where the run's figures go, the scheduler's data interval, and the log level."""
    cli.add_option(
        parser,
        "metrics_file",
        default=None,
        metavar="PATH",
        help="Write the run's figures (rows read and written, dead letters, rates, durations) "
        "to this file in Prometheus' text format, atomically, for node-exporter's textfile "
        "collector (the name must end in .prom). Default: none.",
    )
    parser.add_argument(
        "--pushgateway",
        default=None,
        metavar="URL",
        help="Push the same figures to this Prometheus Pushgateway (http://host:9091), job "
        f"{METRICS_JOB!r}, grouped by schema. Default: none.",
    )
    cli.add_option(
        parser,
        "data_interval_start",
        default=None,
        metavar="TIMESTAMP",
        help="The scheduler's data interval this run is for (ISO 8601), recorded with the "
        "run. Default: under Airflow ($AIRFLOW_CTX_DAG_RUN_ID set), --date-from.",
    )
    cli.add_option(
        parser,
        "data_interval_end",
        default=None,
        metavar="TIMESTAMP",
        help="The end of that data interval. Default: under Airflow, --date-to.",
    )
    cli.add_log_level_option(parser)


#: ``--market-based``: when the market-based stage runs.
MARKET_MODES = ("auto", "off")
#: The most years a vintage window may span (the Guidance speaks of the reporting year).
MAX_VINTAGE_WINDOW_YEARS = 10


@dataclass(frozen=True)
class MarketOptions:
    """The market-based stage's options (docs/scope2.md), with their defaults."""

    mode: Literal["auto", "off"] = "auto"
    vintage_window_years: int = 0
    sharing: Sharing = "facility_first"
    #: MM-DD, the first day of each reporting year.
    year_start: str = "01-01"


@dataclass(frozen=True)
class Orchestration:
    """Which scheduler's run this one is, recorded with it: the Airflow DAG and DAG run (from
    the task's environment) and the data interval it was for."""

    dag_id: str | None = None
    dag_run_id: str | None = None
    data_interval_start: datetime.datetime | None = None
    data_interval_end: datetime.datetime | None = None

    def columns(self) -> dict[str, Any]:
        """As the columns of ``calculation_runs``."""
        return {
            "airflow_dag_id": self.dag_id,
            "airflow_run_id": self.dag_run_id,
            "data_interval_start": self.data_interval_start,
            "data_interval_end": self.data_interval_end,
        }


@dataclass(frozen=True)
class RunConfig:
    """Validated, plain values the graph is built from."""

    database_url: str
    run_id: str
    activity_types: tuple[ActivityType, ...]
    partitions: int
    rows_per_range: int
    range_planner: Literal["rows", "bounds"]
    write_batch_size: int
    radiative_forcing: bool
    date_from: str | None
    date_to: str | None
    progress_interval: float
    max_connections: int | None = None
    retry_policy: RetryPolicy = DEFAULT_POLICY
    #: (factor set, edition) pairs: only that edition of the set is used.
    factor_pins: tuple[tuple[str, str], ...] = ()
    #: The PostgreSQL schema of the pipeline's own tables.
    schema: str = DEFAULT_SCHEMA
    #: Where each activity type is read from (checked against the catalogue before a run).
    sources: Mapping[ActivityType, Source] = field(default_factory=default_sources)
    #: Plausibility bounds: a value above one is a dead letter, not a result.
    limits: Limits = DEFAULT_LIMITS
    #: Where the run's figures go for Prometheus: a textfile collector's file, a Pushgateway.
    metrics_file: str | None = None
    pushgateway: str | None = None
    #: The scheduler's run this one is a task of (recorded with the run).
    orchestration: Orchestration = field(default_factory=Orchestration)
    #: The largest share of a type's results the run may retire (1: any).
    max_retire_share: float = DEFAULT_MAX_RETIRE_SHARE
    #: Compare every stored result's input fingerprint with its activity as it is now.
    recheck: bool = False
    #: The Scope 2 market-based stage's options.
    market: MarketOptions = field(default_factory=MarketOptions)

    @property
    def text_ids(self) -> bool:
        """Whether the results are keyed by text (the sources' keys are text)."""
        return any(s.key_type == "text" for s in self.sources.values())


class OptionsError(ValueError):
    """An option has a value the pipeline cannot use; the message says what to fix."""


def _check_date(name: str, value: str | None) -> str | None:
    if value is None:
        return None
    try:
        return datetime.date.fromisoformat(value).isoformat()
    except ValueError:
        raise OptionsError(f"--{name} must be a date like 2025-01-31, not {value!r}") from None


def _check_timestamp(name: str, value: str | None) -> datetime.datetime | None:
    """An ISO 8601 date or timestamp, in UTC when it names no zone."""
    if not value:
        return None
    try:
        found = datetime.datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        raise OptionsError(
            f"--{name} must be an ISO 8601 timestamp like 2025-01-31T00:00:00+00:00, not {value!r}"
        ) from None
    return found if found.tzinfo else found.replace(tzinfo=datetime.timezone.utc)


def orchestration(
    options: Any, date_from: str | None, date_to: str | None, environ: Mapping[str, str]
) -> Orchestration:
    """The Airflow DAG run this run is a task of (Airflow sets ``AIRFLOW_CTX_*`` in the task's
    environment) and its data interval: the options', else, under Airflow, the dates the DAG
    passes as ``--date-from``/``--date-to`` (its data interval's days)."""
    dag_id = environ.get(AIRFLOW_DAG_ID_ENV) or None
    dag_run_id = environ.get(AIRFLOW_RUN_ID_ENV) or None
    start = _check_timestamp("data-interval-start", getattr(options, "data_interval_start", None))
    end = _check_timestamp("data-interval-end", getattr(options, "data_interval_end", None))
    if dag_run_id and start is None and end is None:
        start = _check_timestamp("date-from", date_from)
        end = _check_timestamp("date-to", date_to)
    if start is not None and end is not None and start >= end:
        raise OptionsError(
            f"--data-interval-start ({start.isoformat()}) must be before --data-interval-end "
            f"({end.isoformat()})"
        )
    return Orchestration(dag_id, dag_run_id, start, end)


def _check_metrics_file(value: str | None) -> str | None:
    if not value:
        return None
    path = Path(value).expanduser()
    if path.suffix != ".prom":
        raise OptionsError(
            f"--metrics-file must end in .prom (node-exporter's textfile collector reads only "
            f"those), not {value!r}"
        )
    if not path.parent.is_dir():
        raise OptionsError(f"--metrics-file: the directory {str(path.parent)!r} does not exist")
    return str(path)


def _check_pushgateway(value: str | None) -> str | None:
    if not value:
        return None
    url = value if "://" in value else f"http://{value}"
    parsed = urllib.parse.urlsplit(url)
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise OptionsError(
            f"--pushgateway must be an http(s) URL like http://host:9091, not {value!r}"
        )
    return url


def _check_limits(options: Any) -> Limits:
    """The plausibility bounds: each a finite number above 0 (a bound of NaN or infinity would
    refuse or let through everything), and a whole number of passengers."""
    values: dict[str, float] = {}
    for flag, dest, _ in _LIMIT_OPTIONS:
        value = getattr(options, dest, None)
        value = getattr(DEFAULT_LIMITS, dest) if value is None else float(value)
        if not math.isfinite(value) or value <= 0:
            raise OptionsError(f"--{flag} must be a finite number above 0, not {value}")
        values[dest] = value
    if not values["max_passengers"].is_integer():
        raise OptionsError(
            f"--max-passengers must be a whole number, not {values['max_passengers']}"
        )
    return Limits(
        max_kwh=values["max_kwh"],
        max_spend_usd=values["max_spend_usd"],
        max_passengers=int(values["max_passengers"]),
        max_distance_km=values["max_distance_km"],
    )


def _check_retire_share(options: Any) -> float:
    """``--max-retire-share`` as a number from 0 to 1; 1 with ``--allow-retire``."""
    if getattr(options, "allow_retire", False):
        return 1.0
    value = getattr(options, "max_retire_share", None)
    share = DEFAULT_MAX_RETIRE_SHARE if value is None else float(value)
    if not 0 <= share <= 1:  # NaN too
        raise OptionsError(f"--max-retire-share must be a share from 0 to 1, not {value}")
    return share


def _check_url(url: str | None) -> str:
    """The database URL given (option or environment), refused when absent or not PostgreSQL's."""
    if not url:
        raise OptionsError("no database URL: pass --database-url or set " + DATABASE_URL_ENV)
    if not url.startswith(("postgresql://", "postgresql+psycopg2://", "postgres://")):
        raise OptionsError("--database-url must be a postgresql:// URL")
    return url


def _check_run_id(given: str | None) -> str:
    """``--run-id`` in canonical form, or a new random UUID."""
    run_id = given or str(uuid.uuid4())
    try:
        return str(uuid.UUID(run_id))
    except ValueError:
        raise OptionsError(f"--run-id must be a UUID, not {run_id!r}") from None


def _check_sizes(options: Any) -> None:
    """``--partitions``, ``--rows-per-range`` and ``--write-batch-size`` within their bounds."""
    if options.partitions < 1:
        raise OptionsError(f"--partitions must be at least 1, not {options.partitions}")
    if options.rows_per_range < MIN_ROWS_PER_RANGE:
        raise OptionsError(
            f"--rows-per-range must be at least {MIN_ROWS_PER_RANGE}, not {options.rows_per_range}"
        )
    if options.write_batch_size < 1:
        raise OptionsError(f"--write-batch-size must be at least 1, not {options.write_batch_size}")


def _check_market(options: Any) -> MarketOptions:
    """The market-based options within their bounds (``--year-start`` a real MM-DD)."""
    window = getattr(options, "vintage_window_years", 0)
    if not 0 <= window <= MAX_VINTAGE_WINDOW_YEARS:
        raise OptionsError(
            f"--vintage-window-years must be between 0 and {MAX_VINTAGE_WINDOW_YEARS}, not {window}"
        )
    year_start = getattr(options, "year_start", "01-01")
    try:
        first = datetime.date.fromisoformat(f"2001-{year_start}")
    except (TypeError, ValueError):
        first = None
    if first is None or len(year_start) != 5:
        raise OptionsError(f"--year-start must be MM-DD (01-01, 04-01), not {year_start!r}")
    return MarketOptions(
        mode=getattr(options, "market_based", "auto"),
        vintage_window_years=window,
        sharing=getattr(options, "sharing", "facility_first"),
        year_start=year_start,
    )


def _check_pins(values: Sequence[str]) -> dict[str, str]:
    """``--factor-edition SET=EDITION`` (repeatable) as {set: edition}."""
    try:
        return editions.parse_pins(values, "--factor-edition")
    except editions.EditionError as e:
        raise OptionsError(str(e)) from None


def _check_seconds_and_retries(options: Any) -> None:
    """The options in seconds finite and ≥ 0; the connection budget and tries at least 1."""
    for name, value in (
        ("progress-interval", options.progress_interval),
        ("retry-base-delay", options.retry_base_delay),
        ("statement-timeout", getattr(options, "statement_timeout", 0.0)),
        ("lock-timeout", getattr(options, "lock_timeout", 0.0)),
    ):
        if not math.isfinite(value) or value < 0:
            raise OptionsError(f"--{name} must be a finite number of seconds ≥ 0, not {value}")
    if options.max_connections is not None and options.max_connections < 1:
        raise OptionsError(f"--max-connections must be at least 1, not {options.max_connections}")
    if options.retry_attempts < 1:
        raise OptionsError(f"--retry-attempts must be at least 1, not {options.retry_attempts}")


def _check_schema_and_sources(options: Any) -> tuple[str, dict[ActivityType, Source]]:
    """``--schema`` validated, and the sources file read and parsed (not yet checked against
    the database)."""
    schema = getattr(options, "schema", None) or DEFAULT_SCHEMA
    try:
        validate_schema(schema)
        return schema, load_sources(resolve_path(getattr(options, "sources", None)), schema)
    except SourcesError as e:
        raise OptionsError(str(e)) from None
    except ValueError as e:
        raise OptionsError(f"--schema: {e}") from None


def validate(options: Any, database_url: str | None) -> RunConfig:
    """Check every option and return the plain configuration, or raise ``OptionsError``.

    ``options`` holds the parsed values: an argparse namespace, or Beam's options viewed as
    ``EmissionsOptions``."""
    url = _check_url(database_url or options.database_url or os.environ.get(DATABASE_URL_ENV))
    run_id = _check_run_id(options.run_id)
    types = tuple(t.strip() for t in options.activity_types.split(",") if t.strip())
    unknown = [t for t in types if t not in ACTIVITY_TYPES]
    if unknown or not types:
        raise OptionsError(
            f"--activity-types must be a comma-separated subset of {', '.join(ACTIVITY_TYPES)}; "
            f"got {options.activity_types!r}"
        )
    _check_sizes(options)
    date_from = _check_date("date-from", options.date_from)
    date_to = _check_date("date-to", options.date_to)
    if date_from and date_to and date_from >= date_to:
        raise OptionsError(f"--date-from ({date_from}) must be before --date-to ({date_to})")
    pins = _check_pins(getattr(options, "factor_edition", None) or [])
    _check_seconds_and_retries(options)
    limits = _check_limits(options)
    market = _check_market(options)
    max_retire_share = _check_retire_share(options)
    schema, found = _check_schema_and_sources(options)
    missing = [t for t in types if t not in found]
    if missing and options.activity_types != ",".join(ACTIVITY_TYPES):
        raise OptionsError(
            f"--activity-types asks for {', '.join(missing)}, which the sources file does not map"
        )
    types = tuple(t for t in types if t in found)  # by default, every type that is mapped
    metrics_file = _check_metrics_file(getattr(options, "metrics_file", None))
    pushgateway = _check_pushgateway(getattr(options, "pushgateway", None))
    scheduled = orchestration(options, date_from, date_to, os.environ)
    return RunConfig(
        database_url=for_run(
            with_timeouts(
                url,
                getattr(options, "statement_timeout", DEFAULT_STATEMENT_TIMEOUT),
                getattr(options, "lock_timeout", DEFAULT_LOCK_TIMEOUT),
            ),
            run_id,
        ),
        run_id=run_id,
        activity_types=types,
        partitions=options.partitions,
        rows_per_range=options.rows_per_range,
        range_planner=options.range_planner,
        write_batch_size=options.write_batch_size,
        radiative_forcing=options.radiative_forcing,
        date_from=date_from,
        date_to=date_to,
        progress_interval=options.progress_interval,
        max_connections=options.max_connections,
        retry_policy=RetryPolicy(
            attempts=options.retry_attempts,
            base_delay=options.retry_base_delay,
            max_delay=max(10.0, options.retry_base_delay),
        ),
        factor_pins=tuple(sorted(pins.items())),
        schema=schema,
        sources=found,
        limits=limits,
        metrics_file=metrics_file,
        pushgateway=pushgateway,
        orchestration=scheduled,
        max_retire_share=max_retire_share,
        recheck=bool(getattr(options, "recheck", False)),
        market=market,
    )


def with_sources(
    config: RunConfig, options: Any, found: Mapping[ActivityType, Source]
) -> RunConfig:
    """``config`` reading ``found`` (the schema's stored sources, resolved once the database
    is reached): its activity types those of ``--activity-types`` that they map (all that
    they map by default); ``OptionsError`` when the option names one they do not map."""
    asked = tuple(t.strip() for t in options.activity_types.split(",") if t.strip())
    missing = [t for t in asked if t not in found]
    if missing and options.activity_types != ",".join(ACTIVITY_TYPES):
        raise OptionsError(
            f"--activity-types asks for {', '.join(missing)}, which the sources do not map"
        )
    types = tuple(t for t in asked if t in found)
    return dataclasses.replace(config, sources=dict(found), activity_types=types)
