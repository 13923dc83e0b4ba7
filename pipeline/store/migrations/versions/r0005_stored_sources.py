"""The schema remembers its sources, and every run says what its numbers rest on.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-06

- ``sources_config``: the sources file the schema's results are computed from (its text and
  sha256), one row per change, the newest in force: who changed it (the role), when, and the
  sha256 it replaced. ``ops.admin init --sources FILE`` writes the first row,
  ``ops.admin set-sources --sources FILE`` the next ones; a run, follow, status, verify and
  restatement without a sources file read the newest, and one given another file refuses.
- ``calculation_runs.sources_sha256``: the sources a run read (NULL: the pipeline's own
  tables, or a run recorded before this revision);
- ``calculation_runs.calculation_options``: every option of the run that changes numbers
  (radiative forcing, plausibility limits, factor pins, where the sources came from), which
  ``audit.verify`` and ``audit.restate`` recompute its results with.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import context, op
from sqlalchemy.dialects import postgresql

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    schema = context.config.attributes["schema"]
    op.create_table(
        "sources_config",
        sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
        sa.Column("sha256", sa.Text, nullable=False),
        sa.Column("text", sa.Text, nullable=False),
        sa.Column("changed_at", sa.DateTime(timezone=True), server_default=sa.func.now()),
        sa.Column("changed_by", sa.Text, nullable=False, server_default=sa.text("CURRENT_USER")),
        sa.Column("previous_sha256", sa.Text),
        schema=schema,
    )
    op.add_column("calculation_runs", sa.Column("sources_sha256", sa.Text), schema=schema)
    op.add_column(
        "calculation_runs", sa.Column("calculation_options", postgresql.JSONB), schema=schema
    )


def downgrade() -> None:
    raise NotImplementedError("the pipeline's schema is never downgraded: restore a backup")
