"""Set-up commands: create the schema and load the shipped emission factors.

    python -m pipeline.admin init [--database-url URL] [--id-type bigint|uuid]

Safe to run twice: missing tables are created, factor rows already present are kept.
"""

from __future__ import annotations

import argparse
import logging
import sys

import sqlalchemy as sa

from pipeline import db
from pipeline.embedded import resolve_database_url
from pipeline.factors import load_shipped_factors

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
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", force=True
    )
    url = resolve_database_url(args.database_url)
    engine = db.make_engine(url)
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
