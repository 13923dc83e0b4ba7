"""Alembic's environment: migrations run on the connection ``pipeline.store.install`` gives,
in the pipeline's own schema, with Alembic's version table in that schema too."""

from __future__ import annotations

from alembic import context

config = context.config
connection = config.attributes["connection"]
schema = config.attributes["schema"]

context.configure(
    connection=connection,
    version_table_schema=schema,
    # The caller's transaction: the whole upgrade commits or rolls back as one.
    transactional_ddl=True,
)
with context.begin_transaction():
    context.run_migrations()
