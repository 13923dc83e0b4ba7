"""What every command line of the project shares, so that each ``main`` reads as what it does.

- ``parser``: help that shows defaults, and descriptions without reST markup; a ``Parser``
  that takes no abbreviations and says what is wrong with a command line in one line (an
  unknown option with the closest known spelling, a bad value with what was expected), exit 2;
- ``add_database_option``: ``--database-url`` spelled (and explained) the same everywhere;
- ``add_log_level_option`` and ``setup_logging``: ``--log-level``, and the libraries beneath
  (Beam, its job server, Alembic) kept to their warnings unless it says ``DEBUG``;
- ``run``: the tail every command repeated: resolve the database, make an engine, call the
  command's body, dispose of the engine, and turn an exception into one line on stderr and an
  exit code (2: bad usage, 1: the command failed), with the database password scrubbed.
"""

from __future__ import annotations

import argparse
import difflib
import json
import logging
import os
import re
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NoReturn, TextIO

import sqlalchemy as sa

from pipeline import retry
from pipeline.model import ACTIVITY_TYPES, ActivityType, InstrumentKind
from pipeline.store import (
    checks,
    connections,
    install,
    market,
    sources,
    stored_sources,
    tables,
)

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


def refuse(message: str) -> NoReturn:
    """Ends the command: ``error: MESSAGE`` on stderr, one line, and exit code 2."""
    print(f"error: {' '.join(message.split())}", file=sys.stderr)
    raise SystemExit(USAGE)


#: argparse's complaints about a value, and how they read here (first match).
_VALUE_COMPLAINTS = (
    (re.compile(r"invalid int value: (.+)"), "expected an integer, got {0}"),
    (re.compile(r"invalid float value: (.+)"), "expected a number, got {0}"),
    (re.compile(r"invalid choice: (.+?) \(choose from (.+)\)"), "expected one of {1}, got {0}"),
    (re.compile(r"expected one argument"), "expected a value"),
    (re.compile(r"ignored explicit argument (.+)"), "takes no value, got {0}"),
    (re.compile(r"invalid \S+ value: (.+)"), "invalid value {0}"),
)


def readable(message: str) -> str:
    """argparse's error message as one line that says what was expected:
    ``argument --partitions: invalid int value: 'x'`` → ``--partitions: expected an
    integer, got 'x'``."""
    found = re.fullmatch(r"argument (\S+?)(?:/\S+)?: (.+)", message, re.DOTALL)
    if found is None:
        required = re.fullmatch(r"the following arguments are required: (.+)", message)
        return f"missing {required.group(1)} (see --help)" if required else message
    name, what = found.groups()
    for pattern, text in _VALUE_COMPLAINTS:
        matched = pattern.fullmatch(what)
        if matched is None:
            continue
        values = [v.replace("'", "") if i else v for i, v in enumerate(matched.groups())]
        what = text.format(*values)
        if "choose from" in pattern.pattern:
            choices = [c.strip(" '") for c in matched.group(2).split(",")]
            close = difflib.get_close_matches(matched.group(1).strip("'"), choices, n=1)
            what += f" (did you mean {close[0]}?)" if close else ""
        break
    return f"{name}: {what}"


def unknown_message(extra: Sequence[str], known: Iterable[str]) -> str:
    """What to say of arguments no parser took: each unknown option, with the closest known
    spelling (the option it abbreviates, else ``difflib``'s), or the first stray value."""
    names = list(dict.fromkeys(a.split("=", 1)[0] for a in extra if a.startswith("-")))
    if not names:
        return f"unexpected argument {extra[0]!r} (see --help)"
    spellings = sorted(set(known))
    said = []
    for name in names:
        # An abbreviation: the option it begins; else the most similar spelling.
        close = sorted((s for s in spellings if s.startswith(name)), key=len)[:1]
        close = close or difflib.get_close_matches(name, spellings, n=1)
        said.append(f"{name} (did you mean {close[0]}?)" if close else f"{name} (see --help)")
    return f"unknown option{'s' if len(said) > 1 else ''} {', '.join(said)}"


def option_strings(parser: argparse.ArgumentParser, chosen: Any = None) -> list[str]:
    """The long option strings ``parser`` knows, with those of the subcommand that the parsed
    namespace ``chosen`` names."""
    found = []
    for action in parser._actions:
        found += [s for s in action.option_strings if s.startswith("--")]
        if isinstance(action, argparse._SubParsersAction) and chosen is not None:
            sub = action.choices.get(str(getattr(chosen, action.dest, "")))
            found += option_strings(sub, chosen) if sub is not None else []
    return found


class Parser(argparse.ArgumentParser):
    """argparse, strict: no abbreviations (a prefix of an option is a typo, not a spelling),
    and a command line it cannot use is refused in one line with exit 2 (``refuse``): an
    unknown option named with the closest known spelling, a bad value with what was expected,
    never the usage page."""

    def __init__(self, *args: Any, **kw: Any) -> None:
        kw.setdefault("allow_abbrev", False)
        super().__init__(*args, **kw)

    def parse_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> argparse.Namespace:
        found, extra = self.parse_known_args(args, namespace)
        if extra:
            refuse(unknown_message(extra, option_strings(self, found)))
        return found

    def error(self, message: str) -> NoReturn:
        refuse(readable(message))


#: What a module's command is called on its usage line when not ``python -m MODULE``: the
#: ``emissions`` command names its subcommands here (``emissions run``) before calling them.
COMMAND_NAMES: dict[str, str] = {}


def parser(prog: str, doc: str | None, **kw: Any) -> Parser:
    """An argument parser for ``python -m PROG`` (or what ``COMMAND_NAMES`` calls it),
    described by the module's docstring."""
    shown = COMMAND_NAMES.get(prog, f"python -m {prog}")
    return Parser(prog=shown, description=plain(doc), formatter_class=Formatter, **kw)


def add_option(parser: argparse.ArgumentParser, name: str, **kw: Any) -> None:
    """Option ``name`` (its ``dest``) as ``--name-with-dashes`` and, as Beam spells its own,
    ``--name_with_underscores``."""
    parser.add_argument("--" + name.replace("_", "-"), f"--{name}", dest=name, **kw)


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
        + ", else libpq's PG* variables, else an embedded PostgreSQL kept in the checkout's "
        ".pgdata ($EMISSIONS_PGDATA). A password here shows in the process list: keep it in $"
        + connections.DATABASE_URL_ENV
        + " or ~/.pgpass instead (percent-encoded in a URL: @ is %%40, : is %%3A).",
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


def target_instruments(
    args: argparse.Namespace, target: Target
) -> dict[InstrumentKind, sources.Source]:
    """The instruments' sources of the file given, else of the schema's stored sources (none
    mapped, or no sources stored: empty); not yet checked against the database."""
    path = sources.resolve_path(args.sources)
    if path is not None:
        return sources.load_instruments(path)
    with target.engine.connect() as conn:
        found = stored_sources.current(conn, target.schema)
    if found is None:  # the pipeline's own tables: its own instrument tables holding a row
        with connections.raw_connection(target.engine) as raw:
            return market.own_instruments(raw, target.schema)
    where = f"the sources stored in {target.schema}.{tables.SOURCES_TABLE}"
    return stored_sources.parse_instruments_text(found.text, where)


def checked_instruments(
    target: Target, instruments: Mapping[InstrumentKind, sources.Source]
) -> dict[InstrumentKind, sources.Source]:
    """The instruments' sources, checked against the target's database (``SourcesError``
    lists every problem; nothing is written)."""
    if not instruments:
        return {}
    with connections.raw_connection(target.engine) as conn:
        return checks.check_instruments(conn, instruments)


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
        # Not retried: a command whose database cannot be reached says so in one line at once
        # (a run and a restatement retry the steps after it with their own policy).
        chosen = stored_sources.resolve(engine, args.schema, path)
    except (stored_sources.SourcesChanged, sources.SourcesError) as e:
        raise UsageError(str(e)) from None
    return chosen.sources, chosen


def init_first(schema: str) -> str:
    """What to say of a schema that holds no pipeline yet: ``ops.admin init`` makes it (a run
    migrates a schema an older release made, but never creates one: a mistyped ``--schema``
    would otherwise "succeed" on a new, empty schema)."""
    named = "" if schema == tables.DEFAULT_SCHEMA else f" --schema {schema}"
    return (
        f"the schema {schema} holds no pipeline yet: run python -m ops.admin init{named} first "
        "(with --sources FILE to compute your own tables)"
    )


def not_initialised(engine: sa.Engine, schema: str) -> str | None:
    """``init_first``'s message when ``schema`` has no pipeline in it (no revision), else
    None."""
    return init_first(schema) if install.revision(engine, schema).current is None else None


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


def split_activity_types(text: str) -> list[str]:
    """The names ``--activity-types`` lists, in its order, blanks dropped (not yet checked)."""
    return [t.strip() for t in text.split(",") if t.strip()]


def add_threshold_option(parser: argparse.ArgumentParser, of_what: str) -> None:
    """``--threshold``: the share of a change to ``of_what`` that is significant (5%)."""
    parser.add_argument(
        "--threshold",
        type=float,
        default=0.05,
        help=f"significance threshold of a change to {of_what} (0.05: 5%%)",
    )


def checked_threshold(parser: argparse.ArgumentParser, threshold: float) -> None:
    """Exits with usage when ``--threshold`` is not a share strictly between 0 and 1."""
    if not 0 < threshold < 1:
        parser.error(f"--threshold: expected a share between 0 and 1, got {threshold}")


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
    except (sources.SourcesError, connections.UrlError) as e:
        error(str(e), url)
        return USAGE
    except (UsageError, stored_sources.SourcesChanged, stored_sources.NoStoredSources) as e:
        error(str(e), url)
        return USAGE
    except Exception as e:  # noqa: BLE001 - one line and an exit code, never a traceback
        error(f"{what} failed: {retry.describe(e)}", url)
        return FAILED
