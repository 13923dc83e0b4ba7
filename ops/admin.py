"""Set-up commands: create or upgrade the pipeline's schema, load the emission factors.

    python -m ops.admin init [--schema S] [--sources FILE] [--id-type bigint|uuid|text]
    python -m ops.admin set-sources --sources FILE [--schema S]
    python -m ops.admin revision [--schema S]
    python -m ops.admin check-sources --sources FILE
    python -m ops.admin load-factors --kind egrid --file PATH [--edition NAME]
    python -m ops.admin load-factors --kind residual_mix --file PATH [--edition NAME]

``init`` checks the sources (when a file is given) against the database, creates the
pipeline's schema if it is missing, migrates it to the newest revision and loads the shipped
factors; it is safe to run twice, and it never alters anything outside the schema. With a
sources file, the schema remembers it (its text and sha256): runs, follow, status, verify and
restatements without ``--sources`` read those sources, and refuse another file until
``set-sources`` changes them on purpose (recording who, when, and the sha256 it replaced).
``revision`` shows the schema's migration revision and the newest one. ``check-sources``
reports every problem of a sources file at once, writing nothing. A factor
file is checked whole before anything is written (a negative, missing or duplicate value or an
unknown unit refuses the file, naming the row), then loaded in one transaction: the factors in
force change completely or not at all. A loaded edition never changes: a file whose rows differ
from an edition of the same name (the shipped one, unless ``--edition`` names another) is
refused, naming the first rows that differ; a revised file is loaded as a new edition with
``--edition NAME``, and its rows are in force from then on (the newest loaded row per set, key
and year), unless a run or restatement pins another edition.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable
from functools import partial
from pathlib import Path

import sqlalchemy as sa

from pipeline import cli, editions, factors
from pipeline.factors import FactorFileError
from pipeline.model import ActivityType, FactorRow, InstrumentKind
from pipeline.store import checks, connections, sources, stored_sources, tables
from pipeline.store.install import initialise, revision

_LOG = logging.getLogger(__name__)


#: The factor files ``load-factors`` accepts, by kind, with the parser that checks them.
FACTOR_PARSERS = {
    "egrid": factors.parse_egrid,
    "uk_electricity": factors.parse_uk_electricity,
    "country_grid": factors.parse_country_grid,
    "sef": factors.parse_sef,
    "air": factors.parse_air,
    "cpi": factors.parse_cpi,
    "residual_mix": factors.parse_residual_mix,
}


def load_factor_file(
    engine: sa.Engine,
    kind: str,
    path: str,
    schema: str = tables.DEFAULT_SCHEMA,
    edition: str | None = None,
) -> editions.Loaded:
    """Check a whole factor file, then add its rows not loaded yet, in one transaction, as
    ``edition`` when given (else the editions the parser names: the shipped ones).

    Raises ``FactorFileError`` (naming the file and line) or ``EditionConflict`` (naming the
    rows that differ from a loaded edition of the same name) before writing anything.
    """
    parse: Callable[[Path], list[FactorRow]] = FACTOR_PARSERS[kind]
    rows = parse(Path(path))
    if edition is not None:
        rows = factors.with_edition(rows, edition)
    return editions.load_edition(engine, rows, schema)


def build_parser() -> argparse.ArgumentParser:
    """The command's options."""
    parser = cli.parser("ops.admin", __doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    def command(name: str, text: str) -> argparse.ArgumentParser:
        found = sub.add_parser(name, help=text, description=text, formatter_class=cli.Formatter)
        cli.add_database_option(found)
        cli.add_log_level_option(found)
        return found

    init = command("init", "create or upgrade the pipeline's schema, load the shipped factors")
    init.add_argument(
        "--id-type",
        "--id_type",
        dest="id_type",
        choices=tables.ID_TYPES,
        default=None,
        help="key type of the results, when they are created (default: the sources' keys; "
        "bigint for the pipeline's own tables)",
    )
    command(
        "set-sources",
        "check a sources file, then make it the schema's sources (recording the old and new)",
    )
    command("revision", "show the schema's migration revision and the newest one")
    command("check-sources", "check the sources against the database; writes nothing")
    load = command("load-factors", "check a factor file, then load it")
    load.add_argument(
        "--kind", choices=sorted(FACTOR_PARSERS), required=True, help="which published file it is"
    )
    load.add_argument(
        "--file",
        required=True,
        help="the CSV, in the shipped file's layout (residual_mix: the one of docs/scope2.md)",
    )
    load.add_argument(
        "--edition",
        default=None,
        metavar="NAME",
        help="load the file as this edition, beside those loaded (a revised file: its rows "
        "are in force from then on unless a run pins another edition); default: the "
        "shipped file's edition, which a differing file may not change",
    )
    return parser


def _init_database(args: argparse.Namespace, target: cli.Target) -> int:
    """``init``: the schema, its migrations and shipped factors, and the sources file when
    given, in one transaction."""
    id_type = args.id_type
    path = sources.resolve_path(args.sources)
    text = None if path is None else stored_sources.read_text(path)
    if text is not None:
        id_type = id_type or checks.common_key_type(cli.checked_sources(target))
        with target.engine.connect() as conn:
            found = stored_sources.current(conn, target.schema)
        if found is not None and found.sha256 != stored_sources.digest(text):
            raise stored_sources.mismatch(stored_sources.digest(text), found.sha256)
    # The sources are stored in the set-up's own transaction: all of it, or nothing.
    outcome = initialise(
        target.engine,
        id_type,
        target.schema,
        also=None if text is None else lambda c: stored_sources.remember(c, text, target.schema),
    )
    if text is not None:
        outcome["sources_sha256"] = stored_sources.digest(text)
    cli.print_json({"database": connections.redact_url(target.url), **outcome})
    return cli.OK


def _set_sources(args: argparse.Namespace, target: cli.Target) -> int:
    """``set-sources``: stores a new sources file on purpose, with who changed it and the
    sha256 it replaced."""
    path = sources.resolve_path(args.sources)
    if path is None:
        raise cli.UsageError("set-sources needs the new file: --sources FILE")
    text = stored_sources.read_text(path)
    cli.checked_sources(target)
    with target.engine.begin() as conn:
        before, now = stored_sources.replace(conn, text, target.schema)
    changed = before is None or before.sha256 != now.sha256
    if changed:
        _LOG.info(
            "the sources of %s are now %s (were %s), set by %s",
            target.schema,
            now.sha256,
            before.sha256 if before else "none stored",
            now.changed_by,
        )
    cli.print_json(
        {
            "database": connections.redact_url(target.url),
            "schema": target.schema,
            "changed": changed,
            "previous_sha256": before.sha256 if before else None,
            "sha256": now.sha256,
            "changed_by": now.changed_by,
            "changed_at": now.changed_at,
        }
    )
    return cli.OK


def _show_revision(args: argparse.Namespace, target: cli.Target) -> int:
    """``revision``: the schema's migration revision and the newest; fails (1) when behind."""
    found = revision(target.engine, target.schema)
    cli.print_json(
        {
            "database": connections.redact_url(target.url),
            "schema": target.schema,
            "revision": found.current,
            "newest": found.head,
            "up_to_date": found.up_to_date,
        }
    )
    return cli.OK if found.up_to_date else cli.FAILED


def _load_factors(args: argparse.Namespace, target: cli.Target) -> int:
    """``load-factors``: one factor file, checked whole, as a new edition (or none when
    loaded already)."""
    try:
        loaded = load_factor_file(target.engine, args.kind, args.file, target.schema, args.edition)
    except FactorFileError as e:
        cli.error(f"refused: {e}; nothing was loaded")
        return cli.FAILED
    except editions.EditionConflict as e:
        fix = (
            "choose another --edition NAME"
            if args.edition
            else "give --edition NAME to load it as a new edition"
        )
        cli.error(f"refused: {e}; {fix}; nothing was loaded")
        return cli.USAGE
    except factors.EditionNameError as e:
        raise cli.UsageError(f"--edition: {e}") from None
    if not loaded.added:
        _LOG.info(
            "%s is loaded already as %s: 0 rows added",
            args.file,
            ", ".join(repr(e) for e in loaded.editions),
        )
    cli.print_json(
        {
            "database": connections.redact_url(target.url),
            "file": args.file,
            "editions": loaded.editions,
            "factor_rows_added": loaded.added,
            "already_loaded": not loaded.added,
        }
    )
    return cli.OK


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    cli.setup_logging(args.log_level)

    def check(target: cli.Target) -> int:
        instruments = cli.target_instruments(args, target)
        problems: list[str] = []
        checked: dict[ActivityType, sources.Source] = {}
        checked_instruments: dict[InstrumentKind, sources.Source] = {}
        try:
            checked = cli.checked_sources(target)
        except sources.SourcesError as e:
            problems += e.problems
        try:
            checked_instruments = cli.checked_instruments(target, instruments)
        except sources.SourcesError as e:
            problems += e.problems
        if problems:
            raise sources.SourcesError("the sources", problems)
        both = [*checked.items(), *checked_instruments.items()]
        cli.print_json(
            {
                t: {"source": s.name, "key": s.key, "key_type": s.key_type, "version": s.version}
                for t, s in both
            }
        )
        return cli.OK

    bodies: dict[str, tuple[Callable[[cli.Target], int], str]] = {
        "init": (partial(_init_database, args), "init"),
        "set-sources": (
            partial(_set_sources, args),
            "setting the sources (nothing was changed)",
        ),
        "revision": (partial(_show_revision, args), "reading the revision"),
        "check-sources": (check, "checking the sources"),
        "load-factors": (
            partial(_load_factors, args),
            "loading the factor file (nothing was loaded)",
        ),
    }
    body, what = bodies[args.command]
    # init and set-sources take the file given as it is (they are what stores it), and so
    # does check-sources (a new file is checked before set-sources); without a file, each
    # reads the schema's sources.
    given = sources.resolve_path(args.sources) is not None
    as_given = args.command in ("init", "set-sources") or (
        args.command == "check-sources" and given
    )
    return cli.run(args, what, body, stored=not as_given)


if __name__ == "__main__":
    sys.exit(main())
