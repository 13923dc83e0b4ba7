"""Claims die with their run: key-range claims as rows, and no write from a run that has stopped.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-06

- ``range_claims``: which run holds which key range (``pipeline.store.claims``). A claim lives
  as long as its run does: a run that is no longer ``running`` (finished, failed, marked
  ``abandoned``) holds nothing, and a run whose heartbeat is older than the lease is marked
  ``abandoned`` by the run that takes its ranges over. (Session advisory locks, before this
  revision, lived as long as the run's connections: a frozen process kept them for ever.)
- ``calculation_run_writes.errors``: a dead-letter flush logs what it stored, as a results
  flush does, in the same transaction; a run's summary counts what it stored, not what it
  computed.
- A deferred constraint trigger on ``calculation_run_writes``: a flush, of results or dead
  letters, commits only while its run is still ``running``. A run that resumes after it was
  declared stopped (a frozen process, one cut off from the database) writes nothing.
"""

from __future__ import annotations

from typing import cast

import psycopg2.extensions
import sqlalchemy as sa
from alembic import context, op
from psycopg2 import sql
from sqlalchemy.dialects import postgresql

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

#: The SQLSTATE of a write refused because its run is no longer running (``claims.STOPPED``).
STOPPED = "EM001"


def upgrade() -> None:
    schema = context.config.attributes["schema"]
    op.create_table(
        "range_claims",
        sa.Column("activity_type", sa.Text, nullable=False),
        sa.Column("range_key", sa.Text, nullable=False),
        sa.Column("range_start", sa.Text),
        sa.Column("range_end", sa.Text),
        sa.Column("run_id", postgresql.UUID(as_uuid=False), nullable=False),
        sa.Column("claimed_at", sa.DateTime(timezone=True), server_default=sa.func.now()),
        sa.PrimaryKeyConstraint("activity_type", "range_key", name="range_claims_pkey"),
        schema=schema,
    )
    op.create_index("ix_range_claims_run_id", "range_claims", ["run_id"], schema=schema)
    op.add_column(
        "calculation_run_writes",
        sa.Column("errors", sa.BigInteger, nullable=False, server_default="0"),
        schema=schema,
    )
    raw = cast(psycopg2.extensions.connection, op.get_bind().connection.dbapi_connection)
    function = sql.Identifier(schema, "refuse_writes_of_stopped_runs")
    with raw.cursor() as cur:
        cur.execute(
            sql.SQL(
                "CREATE FUNCTION {f}() RETURNS trigger LANGUAGE plpgsql "
                "SET search_path = pg_catalog AS $$ DECLARE found text; BEGIN "
                "SELECT r.status INTO found FROM {runs} r WHERE r.run_id = NEW.run_id; "
                "IF found IS NOT NULL AND found <> 'running' THEN RAISE EXCEPTION "
                "'run % is %, no longer running: its flush is dropped', NEW.run_id, found "
                "USING ERRCODE = {code}; END IF; RETURN NULL; END $$"
            ).format(
                f=function,
                runs=sql.Identifier(schema, "calculation_runs"),
                code=sql.Literal(STOPPED),
            )
        )
        # Deferred: checked at the commit, after everything else the flush did.
        cur.execute(
            sql.SQL(
                "CREATE CONSTRAINT TRIGGER writer_still_running AFTER INSERT ON {t} "
                "DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION {f}()"
            ).format(t=sql.Identifier(schema, "calculation_run_writes"), f=function)
        )


def downgrade() -> None:
    raise NotImplementedError("the pipeline's schema is never downgraded: restore a backup")
