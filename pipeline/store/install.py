"""Bringing a database up to what the pipeline needs: its tables and the shipped factors."""

from __future__ import annotations

import logging

import sqlalchemy as sa

from pipeline.factors import load_shipped_factors
from pipeline.store import queries, tables

_LOG = logging.getLogger(__name__)


def initialise(engine: sa.Engine, id_type: tables.IdType | None = None) -> dict[str, object]:
    """Create the schema and load every shipped factor row not yet present."""
    chosen = tables.create_schema(engine, id_type)
    rows = load_shipped_factors()
    added = queries.insert_factors(engine, rows)
    return {
        "id_type": chosen,
        "factor_rows_shipped": len(rows),
        "factor_rows_added": added,
    }


def ensure_initialised(engine: sa.Engine) -> None:
    """Create what is missing; load the factors when the table is empty.

    One catalogue query when everything is there already (the usual case, every night)."""
    if not tables.schema_ready(engine):
        tables.create_schema(engine)
    if not tables.factors_loaded(engine):
        _LOG.info("emission_factors is empty: loading the shipped factor files")
        queries.insert_factors(engine, load_shipped_factors())
