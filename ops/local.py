"""The scripts' one command: set up the database, add demo data where that is wanted, run.

    python -m ops.local [--seed-demo] [pipeline.run options and Beam options]

``./run_local.sh`` and ``./run_flink.sh`` call it. The database is the one every command
resolves (``pipeline.store.connections.resolve_database_url``: --database-url, else
$EMISSIONS_DATABASE_URL, else the embedded server). It creates what is missing and loads the
shipped factors (``ops.admin init``), seeds demo activities ($SEED_COUNT, default 100,000) when
the database holds none and it is the embedded server (or --seed-demo is given: never
otherwise, so a team's own database never gets demo rows it did not ask for), then runs
``pipeline.run`` in this process with the remaining options.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from ops.seed import seed
from pipeline import cli, run
from pipeline.store import connections, queries
from pipeline.store.install import initialise

_LOG = logging.getLogger("ops.local")

DEFAULT_SEED_COUNT = 100_000


def prepare(url: str, seed_demo: bool, count: int) -> None:
    """Create the schema and load the factors; with ``seed_demo``, seed ``count`` demo
    activities into a database that holds none."""
    engine = connections.make_engine(url)
    try:
        initialise(engine)
        if not seed_demo:
            return
        existing = queries.count_activities(engine)
        if any(c["total"] for c in existing.values()):
            return
        added = seed(engine, count)
        _LOG.info("seeded %d demo activities", sum(added.values()))
    finally:
        engine.dispose()


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if "-h" in args or "--help" in args:
        print(cli.plain(__doc__))
        return run.main(["--help"])
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--seed-demo", action="store_true")
    cli.add_database_option(parser)
    own, rest = parser.parse_known_args(args)
    cli.setup_logging()
    url: str | None = None
    try:
        given = own.database_url or os.environ.get(connections.DATABASE_URL_ENV)
        url = connections.resolve_database_url(given)
        count = int(os.environ.get("SEED_COUNT", DEFAULT_SEED_COUNT))
        prepare(url, own.seed_demo or not given, count)
    except Exception as e:  # noqa: BLE001 - one line and an exit code
        cli.error(f"setting up the database failed: {e}", url)
        return cli.FAILED
    # The run resolves the same database: through the environment, never a command line.
    os.environ[connections.DATABASE_URL_ENV] = url
    return run.main(rest)


if __name__ == "__main__":
    run.exit_now(main())
