"""Set-up commands: create the schema and load the shipped emission factors.

    python -m pipeline.admin init [--database-url URL] [--id-type bigint|uuid]
    python -m pipeline.admin load-factors --kind egrid --file PATH [--database-url URL]

Safe to run twice: missing tables are created, factor rows already present are kept. A factor
file is checked whole before anything is written (a negative, missing or duplicate value or an
unknown unit refuses the file, naming the row), then loaded in one transaction: the factors in
force change completely or not at all.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable
from pathlib import Path

import sqlalchemy as sa

from pipeline import db, factors
from pipeline.embedded import resolve_database_url
from pipeline.factors import FactorFileError, load_shipped_factors
from pipeline.model import FactorRow

_LOG = logging.getLogger(__name__)


def initialise(engine: sa.Engine, id_type: db.IdType | None = None) -> dict[str, object]:
    """Create the schema and load every shipped factor row not yet present."""
    chosen = db.create_schema(engine, id_type)
    rows = load_shipped_factors()
    added = db.insert_factors(engine, rows)
    return {
        "id_type": chosen,
        "factor_rows_shipped": len(rows),
        "factor_rows_added": added,
    }


def ensure_initialised(engine: sa.Engine) -> None:
    """Create what is missing; load the factors when the table is empty.

    One catalogue query when everything is there already (the usual case, every night)."""
    if not db.schema_ready(engine):
        db.create_schema(engine)
    if not db.factors_loaded(engine):
        _LOG.info("emission_factors is empty: loading the shipped factor files")
        db.insert_factors(engine, load_shipped_factors())


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
    return db.insert_factors(engine, rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline.admin",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)
    init = sub.add_parser("init", help="create the schema and load the shipped factors")
    init.add_argument("--database-url", default=None)
    init.add_argument(
        "--id-type",
        choices=["bigint", "uuid"],
        default=None,
        help="key type of the activity tables (only when creating them)",
    )
    load = sub.add_parser("load-factors", help="check a factor file, then load it")
    load.add_argument("--database-url", default=None)
    load.add_argument("--kind", choices=sorted(FACTOR_PARSERS), required=True)
    load.add_argument("--file", required=True, help="the CSV, in the shipped file's layout")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", force=True
    )
    url = resolve_database_url(args.database_url)
    engine = db.make_engine(url)
    if args.command == "load-factors":
        try:
            added = load_factor_file(engine, args.kind, args.file)
        except FactorFileError as e:
            print(f"refused: {e}; nothing was loaded", file=sys.stderr)
            return 1
        except Exception as e:  # noqa: BLE001 - reported, then a non-zero exit
            print(
                f"load failed on {db.redact_url(url)}; nothing was loaded: "
                f"{db.scrub(f'{type(e).__name__}: {e}', url)}",
                file=sys.stderr,
            )
            return 1
        finally:
            engine.dispose()
        print(f"loaded {args.file} into {db.redact_url(url)}: {added} new factor rows")
        return 0
    try:
        outcome = initialise(engine, args.id_type)
    except Exception as e:  # noqa: BLE001 - reported, then a non-zero exit
        print(
            f"init failed on {db.redact_url(url)}: {type(e).__name__}: {e}",
            file=sys.stderr,
        )
        return 1
    finally:
        engine.dispose()
    print(f"initialised {db.redact_url(url)}: {outcome}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
