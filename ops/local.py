"""The scripts' one command: set up the database, add demo data where that is wanted, run.

    python -m ops.local [--seed-demo] [pipeline.run options and Beam options]

``./run_local.sh`` and ``./run_flink.sh`` call it. The database is the one every command
resolves (``pipeline.store.connections.resolve_database_url``: --database-url, else
$EMISSIONS_DATABASE_URL, else the embedded server). It creates what is missing and loads the
shipped factors (``ops.admin init``; a sources file given is stored as the schema's, as init
stores it), seeds demo activities ($SEED_COUNT, default 100,000) when
the database holds none and it is the embedded server (or --seed-demo is given: never
otherwise, so a team's own database, named by a URL or by libpq's variables, never gets demo
rows it did not ask for), then runs
``pipeline.run`` in this process with the remaining options. A run that found nothing pending
(every activity already done, by ``./run_local.sh`` say) adds a note on stderr that says so,
and how to start afresh (a schema of its own: ``--schema NAME``).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import uuid
from pathlib import Path

import sqlalchemy as sa

from ops.seed import seed, seed_instruments
from pipeline import cli, options, run, stopping
from pipeline.store import checks, connections, queries, sources, stored_sources, tables
from pipeline.store.install import initialise

_LOG = logging.getLogger("ops.local")

DEFAULT_SEED_COUNT = 100_000


def prepare(target: cli.Target, seed_demo: bool, count: int, with_sources: bool) -> None:
    """Check the sources (when a file names them), create or upgrade the schema and load the
    factors; with ``seed_demo``, seed ``count`` demo activities into the pipeline's own
    activity tables when they hold none."""
    engine, schema = target.engine, target.schema
    id_type = None
    if with_sources:
        with connections.raw_connection(engine) as conn:
            checked = checks.check_sources(conn, target.sources)
        id_type = checks.common_key_type(checked)
    chosen = target.chosen
    text = None
    if chosen is not None and chosen.origin == stored_sources.GIVEN and chosen.path:
        text = stored_sources.read_text(Path(chosen.path))
    # As ops.admin init --sources: the schema remembers them (a no-op when it does), in the
    # set-up's own transaction.
    initialise(
        engine,
        id_type,
        schema,
        also=None if text is None else lambda c: stored_sources.remember(c, text, schema),
    )
    if not seed_demo or with_sources:
        return
    existing = queries.count_activities(engine, schema=schema)
    if any(c["total"] for c in existing.values()):
        return
    added = seed(engine, count, schema=schema)
    _LOG.info("seeded %d demo activities into %s", sum(added.values()), schema)
    instruments = seed_instruments(engine, schema)
    _LOG.info("seeded demo Scope 2 instruments into %s: %s", schema, instruments)


def _add_seed_demo(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--seed-demo",
        "--seed_demo",
        dest="seed_demo",
        action="store_true",
        help="seed demo activities into an empty database of your own (the embedded one is "
        "seeded anyway)",
    )


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if "-h" in args or "--help" in args:
        shown = cli.parser("ops.local", __doc__, epilog=run.BEAM_EPILOG)
        _add_seed_demo(shown)
        options.add_arguments(shown)
        shown.print_help()
        return cli.OK
    # Every option checked before anything is set up: a typo must not cost a seeding first.
    options.parse_run_args(args, _add_seed_demo, prog="ops.local")
    parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    _add_seed_demo(parser)
    cli.add_database_option(parser)
    own, rest = parser.parse_known_args(args)
    cli.setup_logging()
    given = own.database_url or os.environ.get(connections.DATABASE_URL_ENV)
    # Demo rows only ever go to the embedded server (unless asked for): decided before the
    # database is resolved, since resolving the embedded one clears libpq's variables.
    embedded = given == connections.EMBEDDED or (not given and not connections.libpq_environment())
    with_sources = sources.resolve_path(own.sources) is not None
    count = int(os.environ.get("SEED_COUNT", DEFAULT_SEED_COUNT))
    resolved: list[str] = []

    def set_up(target: cli.Target) -> int:
        resolved.append(target.url)
        # Sources the schema stores count as given: no demo rows beside them.
        stored = target.chosen is not None and target.chosen.origin == stored_sources.STORED
        prepare(target, own.seed_demo or embedded, count, with_sources or stored)
        return cli.OK

    code = cli.run(own, "setting up the database", set_up)
    if code != cli.OK:
        return code
    # The run resolves the same database, schema and sources: through the environment,
    # never a command line (a password there shows in the process list).
    os.environ[connections.DATABASE_URL_ENV] = resolved[0]
    os.environ[tables.SCHEMA_ENV] = own.schema
    if own.sources:
        os.environ[sources.SOURCES_ENV] = own.sources
    ids = argparse.ArgumentParser(add_help=False)
    ids.add_argument("--run-id", "--run_id", dest="run_id", default=None)
    run_id = ids.parse_known_args(rest)[0].run_id
    if run_id is None:  # named here, so that its record can be read once it has run
        run_id = str(uuid.uuid4())
        rest = [*rest, "--run-id", run_id]
    code = run.main(rest)
    if code == cli.OK:
        seeds = (embedded or own.seed_demo) and not with_sources
        note = nothing_done_note(resolved[0], own.schema, run_id, seeds)
        if note:
            print(note, file=sys.stderr)
    return code


def nothing_done_note(url: str, schema: str, run_id: str, seeds: bool) -> str | None:
    """What to say when the run found nothing to compute (its record says so): a run that
    "succeeded" having done nothing must not pass for one that did the work."""
    runs_table = tables.table(tables.RUNS_TABLE, schema)
    engine = connections.make_engine(url, poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as conn:
            record = conn.execute(
                sa.select(
                    runs_table.c.total_activities, runs_table.c.pending, runs_table.c.runner
                ).where(runs_table.c.run_id == run_id)
            ).first()
    except sa.exc.SQLAlchemyError:
        return None  # the summary has been printed; this note is only a courtesy
    finally:
        engine.dispose()
    if record is None or record.pending:
        return None
    fresh = "--schema emissions_2" if schema != "emissions_2" else "--schema emissions_3"
    if not record.total_activities:
        more = "" if seeds else " (add --seed-demo for demo activities)"
        return f"note: schema {schema} has no activities, so the run computed nothing{more}"
    again = (
        f"give the run a schema of its own ({fresh}): it gets its own tables and "
        f"{os.environ.get('SEED_COUNT', DEFAULT_SEED_COUNT)} demo activities"
        if seeds
        else f"give the run a schema of its own ({fresh}) with --seed-demo for demo activities"
    )
    return (
        f"note: nothing was pending: all {record.total_activities:,} activities in schema "
        f"{schema} already have a result or a dead letter (from an earlier run), so this run "
        f"on {record.runner} computed nothing. To compute everything again on a fresh "
        f"database, {again}."
    )


if __name__ == "__main__":
    stopping.exit_now(main())
