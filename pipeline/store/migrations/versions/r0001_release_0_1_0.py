"""The pipeline's tables as release 0.1.0 laid them out, now in the pipeline's own schema.

Revision ID: 0001
Revises:
Create Date: 2026-12-01

A database laid out by release 0.1.0 (tables in ``public``) is moved into the pipeline's schema
by ``pipeline.store.install`` and stamped with this revision; a new database gets these tables
here. The definitions are frozen copies: later revisions change them, this one never does.
"""

from __future__ import annotations

from typing import Any, cast

import psycopg2.extensions
import sqlalchemy as sa
from alembic import context, op
from psycopg2 import sql
from sqlalchemy.dialects import postgresql

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def _metadata(id_type: str, schema: str) -> sa.MetaData:
    """The tables as release 0.1.0 made them (in ``public`` then), frozen here."""
    md = sa.MetaData(schema=schema)

    def activity_id(name: str = "id", **kw: Any) -> sa.Column[Any]:
        col_type: Any = {"bigint": sa.BigInteger(), "uuid": postgresql.UUID(as_uuid=False)}.get(
            id_type, sa.Text()
        )
        return sa.Column(name, col_type, **kw)

    sa.Table(
        "electricity_activities",
        md,
        activity_id(primary_key=True, autoincrement=False),
        sa.Column("quantity", sa.Float(53)),
        sa.Column("unit", sa.Text),
        sa.Column("region", sa.Text),
        sa.Column("country", sa.Text),
        sa.Column("activity_date", sa.Date),
    )
    sa.Table(
        "spend_activities",
        md,
        activity_id(primary_key=True, autoincrement=False),
        sa.Column("amount", sa.Float(53)),
        sa.Column("currency", sa.Text),
        sa.Column("naics_code", sa.Text),
        sa.Column("activity_date", sa.Date),
    )
    sa.Table(
        "air_travel_activities",
        md,
        activity_id(primary_key=True, autoincrement=False),
        sa.Column("origin", sa.Text),
        sa.Column("destination", sa.Text),
        sa.Column("cabin_class", sa.Text),
        sa.Column("passengers", sa.Integer),
        sa.Column("return_trip", sa.Boolean),
        sa.Column("activity_date", sa.Date),
        sa.Column("distance_km", sa.Float(53)),
    )
    sa.Table(
        "emission_factors",
        md,
        sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
        sa.Column("factor_set", sa.Text, nullable=False),
        sa.Column("key", sa.Text, nullable=False),
        sa.Column("year", sa.Integer, nullable=False),
        sa.Column("value", sa.Float(53), nullable=False),
        sa.Column("unit", sa.Text, nullable=False),
        sa.Column("kg_co2", sa.Float(53)),
        sa.Column("kg_ch4_co2e", sa.Float(53)),
        sa.Column("kg_n2o_co2e", sa.Float(53)),
        sa.Column("basis", sa.Text),
        sa.Column("gwp_set", sa.Text),
        sa.Column("source", sa.Text, nullable=False),
        sa.Column("edition", sa.Text, nullable=False),
        sa.Column("source_ref", sa.Text, nullable=False),
        sa.Column("loaded_at", sa.DateTime(timezone=True), server_default=sa.func.now()),
        sa.UniqueConstraint("factor_set", "edition", "key", "year", name="uq_factor_identity"),
        sa.CheckConstraint("value >= 0", name="ck_factor_value_non_negative"),
    )
    result_cols: list[Any] = [
        sa.Column("activity_type", sa.Text, primary_key=True),
        activity_id("activity_id", primary_key=True),
        sa.Column("scope", sa.SmallInteger, nullable=False),
        sa.Column("category", sa.SmallInteger),
        sa.Column("kg_co2e", sa.Float(53), nullable=False),
        sa.Column("kg_co2", sa.Float(53)),
        sa.Column("kg_ch4_co2e", sa.Float(53)),
        sa.Column("kg_n2o_co2e", sa.Float(53)),
        sa.Column("method", sa.Text, nullable=False),
        sa.Column("activity_amount", sa.Float(53), nullable=False),
        sa.Column("activity_unit", sa.Text, nullable=False),
        sa.Column("factor_id", sa.BigInteger, nullable=False),
        sa.Column("factor_value", sa.Float(53), nullable=False),
        sa.Column("basis", sa.Text),
        sa.Column("region_level", sa.Text),
        sa.Column("fallback", sa.Text),
        sa.Column("year_mismatch", sa.Boolean, nullable=False),
        sa.Column("class_substituted", sa.Boolean, nullable=False),
        sa.Column("distance_km", sa.Float(53)),
        sa.Column("haul", sa.Text),
        sa.Column("cabin_class", sa.Text),
        sa.Column("radiative_forcing", sa.Boolean),
        sa.Column("exchange_rate", sa.Float(53)),
        sa.Column("fx_factor_id", sa.BigInteger),
        sa.Column("cpi_deflator", sa.Float(53)),
        sa.Column("cpi_factor_id", sa.BigInteger),
        sa.Column("cpi_base_factor_id", sa.BigInteger),
        # NULL only on results written before fingerprints were stored beside them.
        sa.Column("input_fingerprint", sa.BigInteger),
        sa.Column("factor_fingerprint", sa.BigInteger),
        sa.Column("run_id", postgresql.UUID(as_uuid=False), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now()),
    ]
    # One row per activity: the primary key is what makes every write idempotent. The factor
    # ids are not foreign keys: factor rows are never deleted (the table is append-only), and
    # four per-row constraint triggers would cost more than the rest of the insert together.
    sa.Table("emission_results", md, *result_cols)
    # A restatement never loses a result: the superseded row moves here, whole, first.
    sa.Table(
        "emission_results_history",
        md,
        *[c._copy() for c in result_cols],
        sa.Column("restatement_id", postgresql.UUID(as_uuid=False), primary_key=True),
        sa.Column("superseded_at", sa.DateTime(timezone=True), server_default=sa.func.now()),
    )
    sa.Table(
        "restatements",
        md,
        sa.Column("restatement_id", postgresql.UUID(as_uuid=False), primary_key=True),
        sa.Column("status", sa.Text, nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), server_default=sa.func.now()),
        sa.Column("finished_at", sa.DateTime(timezone=True)),
        sa.Column("pins", postgresql.JSONB),
        sa.Column("factor_editions", postgresql.JSONB),
        sa.Column("code_version", sa.Text),
        sa.Column("examined", sa.BigInteger),
        sa.Column("changed", sa.BigInteger),
        sa.Column("refused", sa.BigInteger),
        sa.Column("diff", postgresql.JSONB),
        sa.Column("message", sa.Text),
    )
    sa.Table(
        "emission_errors",
        md,
        sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
        sa.Column("activity_type", sa.Text, nullable=False),
        activity_id("activity_id", nullable=False),
        sa.Column("reason_code", sa.Text, nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("input_repr", sa.Text, nullable=False),
        sa.Column("input_hash", sa.Text, nullable=False),
        # The row version (xmin) the input was read at; the same version is not read again.
        sa.Column("activity_version", sa.BigInteger),
        sa.Column("run_id", postgresql.UUID(as_uuid=False), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now()),
        # The same bad input seen again by a later run is not written again.
        sa.UniqueConstraint(
            "activity_type", "activity_id", "input_hash", name="uq_error_activity_input"
        ),
    )
    # Written in the same transaction as the results it describes: the run's coverage and
    # totals are a sum over a few rows per flush, not a scan of its results.
    sa.Table(
        "calculation_run_writes",
        md,
        sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
        sa.Column("run_id", postgresql.UUID(as_uuid=False), nullable=False, index=True),
        sa.Column("activity_type", sa.Text, nullable=False),
        sa.Column("results", sa.BigInteger, nullable=False),
        sa.Column("kg_co2e", sa.Float(53), nullable=False),
        sa.Column("levels", postgresql.JSONB, nullable=False),  # level → [results, kg CO2e]
        sa.Column("written_at", sa.DateTime(timezone=True), server_default=sa.func.now()),
    )
    sa.Table(
        "calculation_runs",
        md,
        sa.Column("run_id", postgresql.UUID(as_uuid=False), primary_key=True),
        sa.Column("status", sa.Text, nullable=False),
        sa.Column("runner", sa.Text),
        sa.Column("options", postgresql.JSONB),
        sa.Column("started_at", sa.DateTime(timezone=True), server_default=sa.func.now()),
        sa.Column("finished_at", sa.DateTime(timezone=True)),
        sa.Column("total_activities", sa.BigInteger),
        sa.Column("skipped", sa.BigInteger),
        sa.Column("pending", sa.BigInteger),
        sa.Column("total_processed", sa.BigInteger),
        sa.Column("errors", sa.BigInteger),
        sa.Column("total_co2e_tonnes", sa.Float(53)),
        sa.Column("by_activity_type", postgresql.JSONB),
        sa.Column("timings", postgresql.JSONB),
        sa.Column("metrics_source", sa.Text),
        sa.Column("message", sa.Text),
        sa.Column("quality", postgresql.JSONB),
        sa.Column("factor_pins", postgresql.JSONB),
        sa.Column("factor_editions", postgresql.JSONB),
        sa.Column("code_version", sa.Text),
    )
    return md


#: Results with their factor's description, and the source and edition of every series used.
EXPLAINED_VIEW = """
CREATE VIEW {view} AS
SELECT r.*,
       f.factor_set, f.key AS factor_key, f.year AS factor_year, f.unit AS factor_unit,
       f.source AS factor_source, f.edition AS factor_edition, f.gwp_set,
       fx.source AS fx_source, fx.edition AS fx_edition, fx.year AS fx_year,
       cpi.year AS cpi_year, cpi.value AS cpi_value, base.value AS cpi_base_value
FROM {results} r
JOIN {factors} f ON f.id = r.factor_id
LEFT JOIN {factors} fx ON fx.id = r.fx_factor_id
LEFT JOIN {factors} cpi ON cpi.id = r.cpi_factor_id
LEFT JOIN {factors} base ON base.id = r.cpi_base_factor_id
"""


def upgrade() -> None:
    schema = context.config.attributes["schema"]
    id_type = context.config.attributes["id_type"]
    bind = op.get_bind()
    _metadata(id_type, schema).create_all(bind)
    view = sql.SQL(EXPLAINED_VIEW).format(
        view=sql.Identifier(schema, "emission_results_explained"),
        results=sql.Identifier(schema, "emission_results"),
        factors=sql.Identifier(schema, "emission_factors"),
    )
    raw = cast(psycopg2.extensions.connection, bind.connection.dbapi_connection)
    with raw.cursor() as cur:
        cur.execute(view)


def downgrade() -> None:
    raise NotImplementedError("the pipeline's schema is never downgraded: restore a backup")
