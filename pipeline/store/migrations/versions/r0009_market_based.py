"""Scope 2 market-based results, stored: what each kWh of electricity was taken at.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-06

- ``market_based_results``: one row per line of an electricity activity's market-based
  allocation (``pipeline.market_stage``), keyed by market boundary, reporting year, activity
  and line: what the line used (a certificate's or contract's id and its kWh, the supplier
  rate's id, the residual-mix row, or the grid factor with ``grid_fallback`` set), its kg CO2e,
  the reporter's choices it was allocated with, and digests of the inputs of its boundary.
- ``market_based_results_history``: the rows a reallocation superseded, whole, with the run
  that moved them and a reason of their own (``instruments_changed``, ``consumption_changed``,
  ``reallocated``).
- ``market_based_refused``: instruments refused by the allocation (dead letters of their own
  kind): the instrument, its boundary, why; ``retired_at`` once no longer refused.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import context, op
from sqlalchemy.dialects import postgresql

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def _line_columns() -> list[Any]:
    return [
        sa.Column("boundary", sa.Text, nullable=False),
        sa.Column("reporting_year", sa.Integer, nullable=False),
        sa.Column("activity_id", sa.Text, nullable=False),
        sa.Column("line", sa.SmallInteger, nullable=False),
        sa.Column("market", sa.Text, nullable=False),
        sa.Column("facility", sa.Text),
        sa.Column("supplier", sa.Text),
        sa.Column("basis", sa.Text, nullable=False),
        sa.Column("instrument_kind", sa.Text),
        sa.Column("instrument_id", sa.Text),
        sa.Column("factor_id", sa.BigInteger),
        sa.Column("kwh", sa.Float(53), nullable=False),
        sa.Column("kg_per_kwh", sa.Float(53), nullable=False),
        sa.Column("kg_co2e", sa.Float(53), nullable=False),
        sa.Column("grid_fallback", sa.Boolean, nullable=False),
        sa.Column("year_mismatch", sa.Boolean, nullable=False),
        sa.Column("year_start", sa.Text, nullable=False),
        sa.Column("vintage_window_years", sa.Integer, nullable=False),
        sa.Column("sharing", sa.Text, nullable=False),
        sa.Column("instruments_digest", sa.Text, nullable=False),
        sa.Column("consumption_digest", sa.Text, nullable=False),
        sa.Column("run_id", postgresql.UUID(as_uuid=False), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now()),
    ]


def upgrade() -> None:
    schema = context.config.attributes["schema"]
    op.create_table(
        "market_based_results",
        *_line_columns(),
        sa.PrimaryKeyConstraint(
            "boundary", "reporting_year", "activity_id", "line", name="market_based_results_pkey"
        ),
        schema=schema,
    )
    op.create_table(
        "market_based_results_history",
        *_line_columns(),
        sa.Column("superseded_by", postgresql.UUID(as_uuid=False), nullable=False),
        sa.Column("superseded_at", sa.DateTime(timezone=True), server_default=sa.func.now()),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("history_id", sa.BigInteger, sa.Identity(), primary_key=True),
        schema=schema,
    )
    op.create_index(
        "ix_market_based_results_history_group",
        "market_based_results_history",
        ["boundary", "reporting_year"],
        schema=schema,
    )
    op.create_table(
        "market_based_refused",
        sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
        sa.Column("instrument_kind", sa.Text, nullable=False),
        sa.Column("instrument_id", sa.Text, nullable=False),
        sa.Column("boundary", sa.Text),
        sa.Column("reason_code", sa.Text, nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("run_id", postgresql.UUID(as_uuid=False), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now()),
        sa.Column("retired_at", sa.DateTime(timezone=True)),
        schema=schema,
    )
    op.create_index(
        "ix_market_based_refused_boundary", "market_based_refused", ["boundary"], schema=schema
    )


def downgrade() -> None:
    raise NotImplementedError("the pipeline's schema is never downgraded: restore a backup")
