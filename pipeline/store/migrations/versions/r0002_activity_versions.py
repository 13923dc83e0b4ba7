"""Results follow their activities: each result records the version of the activity row it was
computed from; history says why a row left (restatement, activity changed, activity deleted);
dead letters of deleted activities are retired; the write log counts replaced results; the
results' primary key includes the version.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-01

Results stored before this revision have no version: the next run compares their input
fingerprints with the activities as they are, and records the version of those that did not
change (docs/guarantees.md).
"""

from __future__ import annotations

from typing import cast

import psycopg2.extensions
import sqlalchemy as sa
from alembic import context, op
from psycopg2 import sql

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    schema = context.config.attributes["schema"]
    for table in ("emission_results", "emission_results_history"):
        op.add_column(table, sa.Column("activity_version", sa.BigInteger), schema=schema)
    op.add_column(
        "emission_results_history",
        sa.Column("reason", sa.Text, nullable=False, server_default="restatement"),
        schema=schema,
    )
    op.add_column(
        "emission_errors", sa.Column("retired_at", sa.DateTime(timezone=True)), schema=schema
    )
    # The primary key carries the version, so that a run's counts (new, changed, deleted) read
    # the results' side from the index alone, as the anti-join for new ones always could.
    op.drop_constraint("emission_results_pkey", "emission_results", schema=schema)
    raw = cast(psycopg2.extensions.connection, op.get_bind().connection.dbapi_connection)
    with raw.cursor() as cur:
        cur.execute(
            sql.SQL(
                "ALTER TABLE {} ADD CONSTRAINT emission_results_pkey "
                "PRIMARY KEY (activity_type, activity_id) INCLUDE (activity_version)"
            ).format(sql.Identifier(schema, "emission_results"))
        )
    op.add_column(
        "calculation_run_writes",
        sa.Column("replaced", sa.BigInteger, nullable=False, server_default="0"),
        schema=schema,
    )


def downgrade() -> None:
    raise NotImplementedError("the pipeline's schema is never downgraded: restore a backup")
