"""The pipeline's own instrument tables: where the market-based method reads certificates,
contracts and supplier rates when no sources file maps them (as the pipeline's own activity
tables are read when no sources file maps activities).

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-06

- ``instrument_certificates``, ``instrument_contracts``, ``instrument_supplier_rates``: one
  column per field of the instrument (docs/scope2.md), keyed by text ids. Empty unless a team
  (or ``ops.seed``, the demo) fills them; the run reads them only when they hold a row.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import context, op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    schema = context.config.attributes["schema"]
    op.create_table(
        "instrument_certificates",
        sa.Column("id", sa.Text, primary_key=True),
        sa.Column("mwh", sa.Float(53)),
        sa.Column("energy_source", sa.Text),
        sa.Column("vintage_start", sa.Date),
        sa.Column("vintage_end", sa.Date),
        sa.Column("market", sa.Text),
        sa.Column("retirement_id", sa.Text),
        sa.Column("facility", sa.Text),
        sa.Column("emission_rate", sa.Float(53)),
        schema=schema,
    )
    op.create_table(
        "instrument_contracts",
        sa.Column("id", sa.Text, primary_key=True),
        sa.Column("mwh", sa.Float(53)),
        sa.Column("period_start", sa.Date),
        sa.Column("period_end", sa.Date),
        sa.Column("emission_rate", sa.Float(53)),
        sa.Column("market", sa.Text),
        sa.Column("facility", sa.Text),
        schema=schema,
    )
    op.create_table(
        "instrument_supplier_rates",
        sa.Column("id", sa.Text, primary_key=True),
        sa.Column("supplier", sa.Text),
        sa.Column("year", sa.Integer),
        sa.Column("kg_co2e_per_kwh", sa.Float(53)),
        sa.Column("accounts_for_sold_instruments", sa.Boolean),
        schema=schema,
    )


def downgrade() -> None:
    raise NotImplementedError("the pipeline's schema is never downgraded: restore a backup")
