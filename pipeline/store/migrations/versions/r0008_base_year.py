"""The base year as first reported: what each of its results was when the team named it.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-06

- ``base_year_results``: one row per result of a base year (its reporting year's first day,
  ``year_start``, and the year), written once, when ``audit.inventory --base-year`` first
  names it: the activity, its kg CO2e then, and when. The base year as recalculated is the
  stored results now; the history (``emission_results_history``) says what changed each one
  since (``docs/inventory.md``). Results carry no activity date, and a deleted activity's row
  is gone from its source: without this record, a deletion could not be placed in a year.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import context, op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    schema = context.config.attributes["schema"]
    op.create_table(
        "base_year_results",
        sa.Column("year_start", sa.Text, nullable=False),
        sa.Column("base_year", sa.Integer, nullable=False),
        sa.Column("activity_type", sa.Text, nullable=False),
        sa.Column("activity_id", sa.Text, nullable=False),
        sa.Column("scope", sa.SmallInteger, nullable=False),
        sa.Column("category", sa.SmallInteger),
        sa.Column("kg_co2e", sa.Float(53), nullable=False),
        sa.Column("recorded_at", sa.DateTime(timezone=True), server_default=sa.func.now()),
        sa.PrimaryKeyConstraint(
            "year_start",
            "base_year",
            "activity_type",
            "activity_id",
            name="base_year_results_pkey",
        ),
        schema=schema,
    )


def downgrade() -> None:
    raise NotImplementedError("the pipeline's schema is never downgraded: restore a backup")
