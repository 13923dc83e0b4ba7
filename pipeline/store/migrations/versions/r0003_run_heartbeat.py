"""Runs say they are alive, and which Airflow run they belong to: a heartbeat the run writes
every few seconds while it works (a run whose heartbeat is old stopped without finishing, and
is marked ``abandoned``), the Airflow DAG and DAG run it was a task of, and its data interval.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01

Runs recorded before this revision have no heartbeat: one still ``running`` is judged by its
start time instead.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import context, op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

#: The columns added to ``calculation_runs``, all nullable (older runs have none of them).
COLUMNS = (
    ("heartbeat_at", sa.DateTime(timezone=True)),
    ("airflow_dag_id", sa.Text()),
    ("airflow_run_id", sa.Text()),
    ("data_interval_start", sa.DateTime(timezone=True)),
    ("data_interval_end", sa.DateTime(timezone=True)),
)


def upgrade() -> None:
    schema = context.config.attributes["schema"]
    for name, column_type in COLUMNS:
        op.add_column("calculation_runs", sa.Column(name, column_type), schema=schema)


def downgrade() -> None:
    raise NotImplementedError("the pipeline's schema is never downgraded: restore a backup")
