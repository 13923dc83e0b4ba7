"""Set-up commands: create the schema and load the shipped emission factors.

    python -m ops.admin init [--database-url URL] [--id-type bigint|uuid]
    python -m ops.admin load-factors --kind egrid --file PATH [--database-url URL]

Safe to run twice: missing tables are created, factor rows already present are kept. A factor
file is checked whole before anything is written (a negative, missing or duplicate value or an
unknown unit refuses the file, naming the row), then loaded in one transaction: the factors in
force change completely or not at all.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from pathlib import Path

import sqlalchemy as sa

from pipeline import cli, factors
from pipeline.factors import FactorFileError
from pipeline.model import FactorRow
from pipeline.store import connections, queries
from pipeline.store.install import initialise

_LOG = logging.getLogger(__name__)


#: The factor files ``load-factors`` accepts, by kind, with the parser that checks them.
FACTOR_PARSERS = {
    "egrid": factors.parse_egrid,
    "uk_electricity": factors.parse_uk_electricity,
    "country_grid": factors.parse_country_grid,
    "sef": factors.parse_sef,
    "air": factors.parse_air,
    "cpi": factors.parse_cpi,
}


def load_factor_file(engine: sa.Engine, kind: str, path: str) -> int:
    """Check a whole factor file, then insert its new rows in one transaction; rows added.

    Raises ``FactorFileError`` (naming the file and line) before writing anything.
    """
    parse: Callable[[Path], list[FactorRow]] = FACTOR_PARSERS[kind]
    rows = parse(Path(path))
    return queries.insert_factors(engine, rows)


def main(argv: list[str] | None = None) -> int:
    parser = cli.parser("ops.admin", __doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    init = sub.add_parser(
        "init", help="create the schema and load the shipped factors", formatter_class=cli.Formatter
    )
    cli.add_database_option(init)
    init.add_argument(
        "--id-type",
        choices=["bigint", "uuid"],
        default=None,
        help="key type of the activity tables, when they are created (default: bigint)",
    )
    load = sub.add_parser(
        "load-factors", help="check a factor file, then load it", formatter_class=cli.Formatter
    )
    cli.add_database_option(load)
    load.add_argument("--kind", choices=sorted(FACTOR_PARSERS), required=True)
    load.add_argument("--file", required=True, help="the CSV, in the shipped file's layout")
    args = parser.parse_args(argv)
    cli.setup_logging()

    def init_database(url: str, engine: sa.Engine) -> int:
        outcome = initialise(engine, args.id_type)
        cli.print_json({"database": connections.redact_url(url), **outcome})
        return cli.OK

    def load_factors(url: str, engine: sa.Engine) -> int:
        try:
            added = load_factor_file(engine, args.kind, args.file)
        except FactorFileError as e:
            cli.error(f"refused: {e}; nothing was loaded")
            return cli.FAILED
        cli.print_json(
            {"database": connections.redact_url(url), "file": args.file, "factor_rows_added": added}
        )
        return cli.OK

    if args.command == "load-factors":
        return cli.run(args, "loading the factor file (nothing was loaded)", load_factors)
    return cli.run(args, "init", init_database)


if __name__ == "__main__":
    sys.exit(main())
