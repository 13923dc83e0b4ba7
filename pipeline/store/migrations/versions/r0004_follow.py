"""Following changes: the pipeline's own activity tables number every insert and update, and
the follow mode keeps its marks.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01

- ``change_seq`` on the pipeline's activity tables: a number from one sequence, given by the
  column's default on insert and by a trigger on update, indexed. The follow mode
  (``python -m pipeline.follow``, docs/follow.md) finds what is new or changed since its mark
  through that index. Rows stored before this revision have none: a batch run covers them.
- ``follow_marks``: per activity type, how far the follow mode has come (docs/follow.md says
  how the marks stay safe against transactions that commit out of order).

Only the pipeline's own tables change; a source a sources file maps is never altered (it names
its own ``follow_by`` column, docs/adoption.md).
"""

from __future__ import annotations

from typing import cast

import psycopg2.extensions
import sqlalchemy as sa
from alembic import context, op
from psycopg2 import sql

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

_ACTIVITY_TABLES = ("electricity_activities", "spend_activities", "air_travel_activities")


def upgrade() -> None:
    schema = context.config.attributes["schema"]
    raw = cast(psycopg2.extensions.connection, op.get_bind().connection.dbapi_connection)
    sequence = sql.Identifier(schema, "activity_changes")
    function = sql.Identifier(schema, "stamp_activity_change")
    # nextval() takes the sequence's name as text: its quoted, schema-qualified name.
    sequence_name = sql.Literal(sequence.as_string(raw))
    with raw.cursor() as cur:
        cur.execute(sql.SQL("CREATE SEQUENCE {}").format(sequence))
        cur.execute(
            sql.SQL(
                "CREATE FUNCTION {f}() RETURNS trigger LANGUAGE plpgsql "
                "SET search_path = pg_catalog AS $$ BEGIN "
                "NEW.change_seq := nextval({s}::regclass); RETURN NEW; END $$"
            ).format(f=function, s=sequence_name)
        )
        for table in _ACTIVITY_TABLES:
            name = sql.Identifier(schema, table)
            # No value for the rows already there (that would rewrite the table): a batch run
            # covers them; every row inserted or updated from now on gets one.
            cur.execute(sql.SQL("ALTER TABLE {} ADD COLUMN change_seq bigint").format(name))
            cur.execute(
                sql.SQL("ALTER TABLE {} ALTER COLUMN change_seq SET DEFAULT nextval({})").format(
                    name, sequence_name
                )
            )
            cur.execute(
                sql.SQL("CREATE INDEX {} ON {} (change_seq)").format(
                    sql.Identifier("_".join(("ix", table, "change_seq"))), name
                )
            )
            cur.execute(
                sql.SQL(
                    "CREATE TRIGGER stamp_change BEFORE UPDATE ON {} "
                    "FOR EACH ROW EXECUTE FUNCTION {}()"
                ).format(name, function)
            )
    op.create_table(
        "follow_marks",
        sa.Column("activity_type", sa.Text, primary_key=True),
        sa.Column("source", sa.Text, nullable=False),
        sa.Column("mark", sa.Text),
        sa.Column("scanned", sa.Text),
        sa.Column("pending_xmax", sa.BigInteger),
        sa.Column("pending_mark", sa.Text),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=sa.func.now()),
        schema=schema,
    )


def downgrade() -> None:
    raise NotImplementedError("the pipeline's schema is never downgraded: restore a backup")
