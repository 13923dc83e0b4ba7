"""What every command line of the project shares, so that each ``main`` reads as what it does.

- ``parser``: help that shows defaults, and descriptions without reST markup;
- ``add_database_option``: ``--database-url`` spelled (and explained) the same everywhere;
- ``add_log_level_option`` and ``setup_logging``: ``--log-level``, and the libraries beneath
  (Beam, its job server, Alembic) kept to their warnings unless it says ``DEBUG``;
- ``run``: the tail every command repeated: resolve the database, make an engine, call the
  command's body, dispose of the engine, and turn an exception into one line on stderr and an
  exit code (2: bad usage, 1: the command failed), with the database password scrubbed.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TextIO

import sqlalchemy as sa

from pipeline import retry
from pipeline.model import ACTIVITY_TYPES, ActivityType
from pipeline.store import checks, connections, sources, stored_sources, tables

#: Exit codes: the command did what it was asked / it failed / it was asked the wrong way.
OK, FAILED, USAGE = 0, 1, 2


class UsageError(ValueError):
    """The command was asked for something it cannot do; the message says what to fix."""


class Formatter(argparse.RawDescriptionHelpFormatter):
    """Descriptions as written, and an option's default after its help (unless the help says
    it, or there is none to show)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        shown = action.default not in (None, False, True, argparse.SUPPRESS, [])
        if shown and "default" not in text.lower() and action.option_strings:
            text += " (default: %(default)s)"
        return text


def plain(text: str | None) -> str:
    """A docstring as help text: ``code`` markup becomes plain code."""
    return re.sub(r"``([^`]+)``", r"\1", text or "").strip()


def parser(prog: str, doc: str | None, **kw: Any) -> argparse.ArgumentParser:
    """An argument parser for ``python -m PROG``, described by the module's docstring."""
    return argparse.ArgumentParser(
        prog=f"python -m {prog}", description=plain(doc), formatter_class=Formatter, **kw
    )


def add_database_option(parser: argparse.ArgumentParser) -> None:
    """``--database-url`` (also ``--database_url``, Beam's spelling), ``--schema`` and
    ``--sources``: which database, which schema of it is the pipeline's, where the activities
    are."""
    parser.add_argument(
        "--database-url",
        "--database_url",
        dest="database_url",
        default=None,
        metavar="URL",
        help="PostgreSQL URL (postgresql://user@host:5432/db?sslmode=verify-full). Default: $"
        + connections.DATABASE_URL_ENV
        + ", else an embedded PostgreSQL kept under ./.pgdata. A password here shows in the "
        "process list: keep it in $" + connections.DATABASE_URL_ENV + " or ~/.pgpass instead.",
    )
    parser.add_argument(
        "--schema",
        default=os.environ.get(tables.SCHEMA_ENV) or tables.DEFAULT_SCHEMA,
        help="the PostgreSQL schema that holds everything the pipeline creates ($"
        + tables.SCHEMA_ENV
        + ")",
    )
    parser.add_argument(
        "--sources",
        default=None,
        metavar="FILE",
        help="TOML file mapping each activity type to your own table or query and columns "
        "(docs/adoption.md). Default: $" + sources.SOURCES_ENV + ", else the file stored in "
        "the schema by ops.admin init --sources (or set-sources), else the pipeline's own "
        "activity tables in its schema. A file other than the stored one is refused.",
    )


@dataclass(frozen=True)
class Target:
    """What a command works on: the database (its URL and an engine), the pipeline's schema
    in it, and the activity sources (the file given or the schema's stored one, not yet
    checked against the database; ``chosen`` says which, with its sha256)."""

    url: str
    engine: sa.Engine
    schema: str
    sources: dict[ActivityType, sources.Source]
    chosen: stored_sources.Chosen | None = None


def checked_sources(target: Target) -> dict[ActivityType, sources.Source]:
    """The target's sources, checked against its database (``SourcesError`` lists every
    problem; nothing is written)."""
    with connections.raw_connection(target.engine) as conn:
        return checks.check_sources(conn, target.sources)


def target_sources(args: argparse.Namespace) -> dict[ActivityType, sources.Source]:
    """The sources the file of the arguments names, without a database (``UsageError`` when
    the file cannot be used); the pipeline's own tables without one."""
    try:
        schema = tables.validate_schema(args.schema)
        return sources.load_sources(sources.resolve_path(args.sources), schema)
    except (sources.SourcesError, ValueError) as e:
        raise UsageError(str(e)) from None


def schema_sources(
    args: argparse.Namespace, engine: sa.Engine
) -> tuple[dict[ActivityType, sources.Source], stored_sources.Chosen]:
    """The sources a command reads: the file given when it is the schema's stored one, the
    stored one when none is given, else the pipeline's own tables (``UsageError`` for a file
    other than the stored one, or one that cannot be used)."""
    try:
        path = sources.resolve_path(args.sources)
        chosen = stored_sources.resolve(engine, args.schema, path)
    except (stored_sources.SourcesChanged, sources.SourcesError) as e:
        raise UsageError(str(e)) from None
    return chosen.sources, chosen


#: The levels ``--log-level`` takes.
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
#: Loggers of the libraries beneath the commands: Beam (its runners, its SDK workers, and the
#: output of the job server it starts, which Beam logs line by line), Alembic, the HTTP
#: clients. Their INFO lines say nothing to someone running a command (28 of 32 lines of a
#: local run, 850 of 864 on Flink): they show at WARNING and above, unless ``--log-level
#: DEBUG`` asks for everything.
LIBRARY_LOGGERS = ("apache_beam", "alembic", "absl", "urllib3", "py4j", "sqlalchemy")
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"


def add_activity_types_option(parser: argparse.ArgumentParser, verb: str) -> None:
    """``--activity-types`` (also ``--activity_types``): which activity types to ``verb``."""
    parser.add_argument(
        "--activity-types",
        "--activity_types",
        dest="activity_types",
        default=",".join(ACTIVITY_TYPES),
        help=f"Comma-separated activity types to {verb} (default: all).",
    )


def add_log_level_option(parser: argparse.ArgumentParser) -> None:
    """``--log-level`` (also ``--log_level``): how much the command logs on stderr."""
    parser.add_argument(
        "--log-level",
        "--log_level",
        dest="log_level",
        type=str.upper,
        choices=LOG_LEVELS,
        default="INFO",
        help="how much to log on stderr: the command's own lines at this level and above; "
        "Beam's, its job server's and Alembic's only at WARNING and above, unless DEBUG",
    )


def setup_logging(level: int | str = logging.INFO, stream: TextIO | None = None) -> None:
    """Log records on ``stream`` (stderr) as ``time LEVEL logger message``: the command's own
    at ``level`` and above, the libraries' (``LIBRARY_LOGGERS``) at WARNING and above unless
    ``level`` is DEBUG. Stdout is left to the command's JSON."""
    number = logging.getLevelName(level) if isinstance(level, str) else level
    logging.basicConfig(level=number, format=LOG_FORMAT, stream=stream or sys.stderr, force=True)
    libraries = number if number <= logging.DEBUG else max(number, logging.WARNING)
    for name in LIBRARY_LOGGERS:
        logging.getLogger(name).setLevel(libraries)


def print_json(value: Any) -> None:
    """A command's outcome on stdout, as JSON (machine-readable, one object)."""
    print(json.dumps(value, indent=2, default=str))


def error(message: str, url: str | None = None) -> None:
    """One line on stderr, with the database password scrubbed."""
    print(f"error: {connections.scrub(message, url)}", file=sys.stderr)


def run(
    args: argparse.Namespace,
    what: str,
    body: Callable[[Target], int],
    stored: bool = True,
    **engine_options: Any,
) -> int:
    """``body(target)`` on the database the arguments name; its exit code, or the exit code of
    what it raised (``UsageError``, ``SourcesError``: 2, anything else: 1, said in one line).
    The target's sources are the schema's (``schema_sources``) unless ``stored`` is False (the
    commands that store them): then the file given, as it is."""
    url: str | None = None
    try:
        found = target_sources(args)
        url = connections.resolve_database_url(args.database_url)
        engine = connections.make_engine(url, **engine_options)
        try:
            chosen = None
            if stored:
                found, chosen = schema_sources(args, engine)
            return body(Target(url, engine, args.schema, found, chosen))
        finally:
            engine.dispose()
    except sources.SourcesError as e:
        error(str(e), url)
        return USAGE
    except (UsageError, stored_sources.SourcesChanged, stored_sources.NoStoredSources) as e:
        error(str(e), url)
        return USAGE
    except Exception as e:  # noqa: BLE001 - one line and an exit code, never a traceback
        error(f"{what} failed: {retry.describe(e)}", url)
        return FAILED
