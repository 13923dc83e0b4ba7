"""What the last complete Scope 2 market-based allocation was computed from.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-06

- ``market_based_inputs``: one row (``id`` 1), the digest of the stage's inputs (the
  electricity consumption with its location-based results, the instruments, the residual
  mixes, the reporter's choices and the code) when a run last allocated every boundary, and
  that run. A run whose inputs have the same digest has nothing to reallocate and skips the
  stage (``pipeline.market_stage``).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import context, op
from sqlalchemy.dialects import postgresql

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "market_based_inputs",
        sa.Column("id", sa.SmallInteger, primary_key=True, autoincrement=False),
        sa.Column("inputs_digest", sa.Text, nullable=False),
        sa.Column("run_id", postgresql.UUID(as_uuid=False), nullable=False),
        sa.Column("allocated_at", sa.DateTime(timezone=True), server_default=sa.func.now()),
        schema=context.config.attributes["schema"],
    )


def downgrade() -> None:
    raise NotImplementedError("the pipeline's schema is never downgraded: restore a backup")
