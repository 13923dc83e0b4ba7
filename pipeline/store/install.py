"""Bringing a database up to what the pipeline needs: its schema, migrated, and the factors.

The pipeline owns one PostgreSQL schema (``emissions`` by default) and nothing else. Its tables
are versioned with Alembic (``pipeline/store/migrations``, the version table in that schema
too): ``initialise`` creates the schema when it is missing (or uses an empty one an
administrator made for it), upgrades it to the newest revision and loads the shipped factors,
all in one transaction. It never alters or reuses an object it did not make: a schema that
holds tables of the pipeline's names without the pipeline's version table is refused, naming
them and what differs.

A database laid out by release 0.1.0 (the pipeline's tables in ``public``, recognised only
when every one of them is there with exactly that release's columns) is moved into the
pipeline's schema, with its results, dead letters, runs and history, and stamped with the
first revision.
"""

from __future__ import annotations

import functools
import logging
import re
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import psycopg2.extensions
import sqlalchemy as sa
from psycopg2 import sql

from pipeline.factors import load_shipped_factors
from pipeline.store import queries, tables

_LOG = logging.getLogger(__name__)
# Alembic says at INFO what it sets up and runs: not the user's business.
logging.getLogger("alembic").setLevel(logging.WARNING)

_MIGRATIONS = Path(__file__).resolve().parent / "migrations"
#: Serialises set-up: two runs starting together must not both create the schema.
_LOCK = 7355608
#: Where release 0.1.0 kept its tables.
LEGACY_SCHEMA = "public"
#: The revision that is release 0.1.0's layout.
FIRST_REVISION = "0001"


class SchemaError(RuntimeError):
    """The database cannot be set up as asked; the message says what is in the way and what to
    do."""


@dataclass(frozen=True)
class Revision:
    current: str | None
    head: str

    @property
    def up_to_date(self) -> bool:
        return self.current == self.head


def _alembic_config(connection: sa.Connection, schema: str, id_type: str) -> Any:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(_MIGRATIONS))
    config.attributes.update(connection=connection, schema=schema, id_type=id_type)
    return config


@functools.lru_cache(maxsize=1)
def head_revision() -> str:
    """The newest revision, read from the migration files themselves (the one no other file
    names as its ``down_revision``), without importing Alembic: a run that finds its schema
    up to date never loads it. ``tests/test_migrations.py`` holds this equal to Alembic's."""
    revisions, parents = set(), set()
    for path in (_MIGRATIONS / "versions").glob("r*.py"):
        text = path.read_text(encoding="utf-8")
        found = re.search(r'^revision = "([^"]+)"', text, re.M)
        parent = re.search(r'^down_revision = "([^"]+)"', text, re.M)
        if found:
            revisions.add(found.group(1))
        if parent:
            parents.add(parent.group(1))
    (head,) = revisions - parents
    return head


def alembic_head() -> str:
    """The newest revision as Alembic sees it."""
    from alembic.script import ScriptDirectory

    config = _alembic_config(None, tables.DEFAULT_SCHEMA, "bigint")  # type: ignore[arg-type]
    head = ScriptDirectory.from_config(config).get_current_head()
    assert head is not None, "the migrations have a head"
    return head


def revision(engine: sa.Engine, schema: str = tables.DEFAULT_SCHEMA) -> Revision:
    """The schema's revision (None when it has none yet) and the newest one."""
    with engine.connect() as conn:
        return Revision(_current_revision(conn, schema), head_revision())


def _current_revision(conn: sa.Connection, schema: str) -> str | None:
    version_table = tables.qualified_text("alembic_version", schema)
    if conn.execute(sa.text("SELECT to_regclass(:t)"), {"t": version_table}).scalar() is None:
        return None
    return conn.execute(
        sa.text(f"SELECT version_num FROM {tables.qualified_text('alembic_version', schema)}")
    ).scalar()


def _our_names(schema: str) -> list[str]:
    return [*tables.build_metadata(schema=schema).tables, f"{schema}.{tables.EXPLAINED_VIEW}"]


def _relations_in(conn: sa.Connection, schema: str) -> dict[str, str]:
    """Relations of a schema (name → kind: r table, v view, …)."""
    rows = conn.execute(
        sa.text(
            "SELECT c.relname, c.relkind FROM pg_class c JOIN pg_namespace n "
            "ON n.oid = c.relnamespace WHERE n.nspname = :s AND c.relkind IN ('r','p','v','m','f')"
        ),
        {"s": schema},
    )
    return {str(name): str(kind) for name, kind in rows}


def shape_differences(
    conn: sa.Connection, schema: str, expected: sa.MetaData, only: Sequence[str] | None = None
) -> list[str]:
    """How the tables of ``schema`` differ from ``expected`` (missing tables, missing or extra
    columns, other types), one sentence each; empty when they match."""
    found: dict[str, dict[str, str]] = {}
    for table, column, typ in conn.execute(
        sa.text(
            "SELECT c.relname, a.attname, format_type(a.atttypid, a.atttypmod) FROM pg_attribute a "
            "JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = :s AND a.attnum > 0 AND NOT a.attisdropped"
        ),
        {"s": schema},
    ):
        found.setdefault(str(table), {})[str(column)] = str(typ)
    differences: list[str] = []
    dialect = conn.dialect
    for table in expected.tables.values():
        if only is not None and table.name not in only:
            continue
        columns = found.get(table.name)
        if columns is None:
            differences.append(f"{schema}.{table.name} is missing")
            continue
        for column in table.columns:
            typ = column.type.compile(dialect=dialect).lower()
            have = columns.get(column.name)
            if have is None:
                differences.append(f"{schema}.{table.name} has no column {column.name} ({typ})")
            elif not _same_type(have, typ):
                differences.append(f"{schema}.{table.name}.{column.name} is {have}, not {typ}")
        extra = sorted(set(columns) - {c.name for c in table.columns})
        if extra:
            differences.append(
                f"{schema}.{table.name} has columns it should not: {', '.join(extra)}"
            )
    return differences


def _same_type(have: str, compiled: str) -> bool:
    aliases = {
        "float(53)": "double precision",
        "timestamp with time zone": "timestamp with time zone",
        "varchar": "character varying",
    }
    return have == aliases.get(compiled, compiled)


def _is_release_0_1_0(conn: sa.Connection) -> str | None:
    """The key type of a release-0.1.0 layout in ``public``, or None when that is not one:
    every table of it, with exactly its columns, and none of them missing."""
    present = _relations_in(conn, LEGACY_SCHEMA)
    names = _release_0_1_0_names()
    if not all(present.get(n) == "r" for n in names):
        return None
    if present.get(tables.EXPLAINED_VIEW) != "v":
        return None
    id_type = conn.execute(
        sa.text(
            "SELECT t.typname FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid "
            "WHERE a.attrelid = 'public.emission_results'::regclass AND a.attname = 'activity_id'"
        )
    ).scalar()
    key: tables.IdType = "uuid" if id_type == "uuid" else "bigint"
    if shape_differences(conn, LEGACY_SCHEMA, _release_0_1_0(key, LEGACY_SCHEMA)):
        return None
    return key


def _release_0_1_0_names() -> list[str]:
    """The tables release 0.1.0 made (later revisions add others, which it never had)."""
    return [t.name for t in _release_0_1_0("bigint", LEGACY_SCHEMA).tables.values()]


def _release_0_1_0(id_type: str, schema: str) -> sa.MetaData:
    from pipeline.store.migrations.versions import r0001_release_0_1_0 as first

    return first._metadata(id_type, schema)


def _move_release_0_1_0(conn: sa.Connection, schema: str) -> None:
    """Moves release 0.1.0's tables and view from ``public`` into ``schema`` (their data,
    indexes and sequences go with them): they were made by the pipeline, and stay its own."""
    raw = cast(psycopg2.extensions.connection, conn.connection.dbapi_connection)
    names = _release_0_1_0_names()
    with raw.cursor() as cur:
        cur.execute(
            sql.SQL("ALTER VIEW {} SET SCHEMA {}").format(
                sql.Identifier(LEGACY_SCHEMA, tables.EXPLAINED_VIEW), sql.Identifier(schema)
            )
        )
        for name in names:
            cur.execute(
                sql.SQL("ALTER TABLE {} SET SCHEMA {}").format(
                    sql.Identifier(LEGACY_SCHEMA, name), sql.Identifier(schema)
                )
            )
    _LOG.info(
        "moved the tables of release 0.1.0 from %s into %s, with their rows",
        LEGACY_SCHEMA,
        schema,
    )


def _prepare_schema(conn: sa.Connection, schema: str, id_type: tables.IdType | None) -> str:
    """Makes sure ``schema`` can hold the pipeline's tables; returns the key type to create
    them with (or that they have). Raises ``SchemaError`` naming what is in the way."""
    exists = conn.execute(
        sa.text("SELECT has_schema_privilege(:s, 'CREATE') FROM pg_namespace WHERE nspname = :s"),
        {"s": schema},
    ).first()
    if exists is None:
        legacy = _is_release_0_1_0(conn)
        try:
            conn.execute(sa.text(f'CREATE SCHEMA "{tables.validate_schema(schema)}"'))
        except sa.exc.ProgrammingError as e:
            if "permission denied" not in str(e):
                raise
            raise SchemaError(
                f"this role may not create the schema {schema}: ask an administrator to run "
                f"CREATE SCHEMA {schema} AUTHORIZATION <the pipeline's role>"
            ) from None
        if legacy is not None:
            if id_type is not None and id_type != legacy:
                raise SchemaError(
                    f"the results of release 0.1.0 are keyed by {legacy}, not {id_type}"
                )
            _move_release_0_1_0(conn, schema)
            command_stamp(conn, schema, legacy, FIRST_REVISION)
            return legacy
        return id_type or "bigint"
    current = _current_revision(conn, schema)
    if current == head_revision():
        # Nothing to change: a role that may only read and write the tables runs here too.
        return _kept_id_type(conn, schema, id_type)
    if not exists[0]:
        raise SchemaError(
            f"this role may not create tables in the schema {schema}: ask an administrator to "
            f"run GRANT CREATE ON SCHEMA {schema} TO <the pipeline's role>, or choose another "
            "--schema"
        )
    if current is None:
        present = _relations_in(conn, schema)
        ours = {n.split(".", 1)[1] for n in _our_names(schema)} | {"alembic_version"}
        clash = sorted(set(present) & ours)
        if clash:
            first = _release_0_1_0(id_type or "bigint", schema)
            differences = shape_differences(conn, schema, first, only=clash)
            detail = "; ".join(differences) if differences else "same columns, but not made here"
            raise SchemaError(
                f"the schema {schema} already holds {', '.join(clash)}, not made by the "
                f"pipeline (no {schema}.alembic_version): {detail}. The pipeline never alters "
                "or reuses what it did not make: choose another --schema"
            )
        return id_type or "bigint"
    return _kept_id_type(conn, schema, id_type)


def _kept_id_type(conn: sa.Connection, schema: str, id_type: tables.IdType | None) -> str:
    """The key type of the stored results, which ``id_type`` (when given) must match."""
    found = _results_id_type(conn, schema)
    if id_type is not None and found is not None and found != id_type:
        raise SchemaError(
            f"{schema}.{tables.RESULTS_TABLE} is keyed by {found}; it cannot be keyed by "
            f"{id_type} now (the sources' keys must be {found}, or use another --schema)"
        )
    return found or id_type or "bigint"


def _results_id_type(conn: sa.Connection, schema: str) -> tables.IdType | None:
    typname = conn.execute(
        sa.text(
            "SELECT t.typname FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid "
            "WHERE a.attrelid = to_regclass(:t) AND a.attname = 'activity_id'"
        ),
        {"t": tables.qualified_text(tables.RESULTS_TABLE, schema)},
    ).scalar()
    if typname is None:
        return None
    return {"int8": "bigint", "uuid": "uuid"}.get(str(typname), "text")  # type: ignore[return-value]


def command_stamp(conn: sa.Connection, schema: str, id_type: str, to: str) -> None:
    from alembic import command

    command.stamp(_alembic_config(conn, schema, id_type), to)


def create_schema(
    engine: sa.Engine,
    id_type: tables.IdType | None = None,
    schema: str = tables.DEFAULT_SCHEMA,
) -> tables.IdType:
    """Creates (or upgrades) the pipeline's schema to the newest revision, in one transaction;
    returns the key type of its results. Safe to run twice."""
    with engine.begin() as conn:
        return _migrate(conn, id_type, schema)


def _migrate(conn: sa.Connection, id_type: tables.IdType | None, schema: str) -> tables.IdType:
    """Creates or upgrades the schema in the transaction of ``conn``, holding the set-up lock
    until it ends (a second set-up waits, then finds it done)."""
    from alembic import command

    tables.validate_schema(schema)
    conn.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": _LOCK})
    chosen = _prepare_schema(conn, schema, id_type)
    command.upgrade(_alembic_config(conn, schema, chosen), "head")
    differences = shape_differences(conn, schema, tables.build_metadata(chosen, schema))  # type: ignore[arg-type]
    if differences:
        raise SchemaError(
            f"after migrating, the schema {schema} differs from what the code expects: "
            + "; ".join(differences)
        )
    return chosen  # type: ignore[return-value]


def initialise(
    engine: sa.Engine,
    id_type: tables.IdType | None = None,
    schema: str = tables.DEFAULT_SCHEMA,
    also: Callable[[sa.Connection], object] | None = None,
) -> dict[str, object]:
    """Create or upgrade the schema and load every shipped factor row not yet present, as one
    transaction: stopped at any instant (a signal, a lost connection), it leaves the database
    as it was or wholly set up, and running it again completes it. ``also``: more set-up to
    do in that same transaction, given its connection.

    The factor files are read first: the transaction holds the set-up lock only while the
    database works."""
    rows = load_shipped_factors()
    with engine.begin() as conn:
        chosen = _migrate(conn, id_type, schema)
        added = queries.insert_factors(conn, rows, schema)
        if also is not None:
            also(conn)
    return {
        "schema": schema,
        "revision": head_revision(),
        "id_type": chosen,
        "factor_rows_shipped": len(rows),
        "factor_rows_added": added,
    }


def ensure_initialised(
    engine: sa.Engine,
    schema: str = tables.DEFAULT_SCHEMA,
    id_type: tables.IdType | None = None,
) -> None:
    """Migrate when the schema is behind; load the factors when there are none; bring stale
    statistics of the pipeline's tables up to date.

    A few catalogue queries when everything is there already (the usual case, every night)."""
    with engine.connect() as conn:
        current = _current_revision(conn, schema)
        found = _results_id_type(conn, schema) if current is not None else None
    if current != head_revision():
        rows = load_shipped_factors()
        with engine.begin() as conn:  # the schema and its factors, or nothing (``initialise``)
            _migrate(conn, id_type, schema)
            if not conn.execute(
                sa.text(
                    "SELECT EXISTS (SELECT 1 FROM "
                    f"{tables.qualified_text(tables.FACTORS_TABLE, schema)})"
                )
            ).scalar():
                queries.insert_factors(conn, rows, schema)
    elif id_type is not None and found is not None and found != id_type:
        raise SchemaError(
            f"{schema}.{tables.RESULTS_TABLE} is keyed by {found}, but the sources' keys are "
            f"{id_type}: map sources whose keys are {found}, or use another --schema"
        )
    if not tables.factors_loaded(engine, schema):
        _LOG.info("%s.%s is empty: loading the shipped factor files", schema, tables.FACTORS_TABLE)
        queries.insert_factors(engine, load_shipped_factors(), schema)
    analyze_if_stale(engine, schema)


#: The tables whose statistics the run's plans rest on, and when they are stale: more rows
#: changed since the last ANALYZE than this share of the table (or than the floor).
_ANALYZED = (tables.RESULTS_TABLE, tables.ERRORS_TABLE, tables.HISTORY_TABLE)
_STALE_SHARE, _STALE_FLOOR = 0.2, 10_000


def analyze_if_stale(engine: sa.Engine, schema: str = tables.DEFAULT_SCHEMA) -> list[str]:
    """ANALYZE the pipeline's own tables whose statistics no longer describe them (right after
    a first run, autovacuum may not have come round yet): plans made on them, such as a join
    costed for an empty table, could otherwise run for minutes. Returns the tables analysed.
    A role that does not own them (it may only read and write) skips this."""
    with engine.connect() as conn:
        stale = [
            str(name)
            for (name,) in conn.execute(
                sa.text(
                    "SELECT relname FROM pg_stat_user_tables WHERE schemaname = :s "
                    "AND relname = ANY(:t) AND n_mod_since_analyze > "
                    "greatest(:floor, :share * n_live_tup) "
                    "AND pg_has_role((SELECT relowner FROM pg_class WHERE oid = relid), 'USAGE')"
                ),
                {"s": schema, "t": list(_ANALYZED), "floor": _STALE_FLOOR, "share": _STALE_SHARE},
            )
        ]
    if stale:
        with engine.begin() as conn:
            for name in stale:
                conn.execute(sa.text(f"ANALYZE {tables.qualified_text(name, schema)}"))
        _LOG.info("analysed %s, whose statistics were stale", ", ".join(stale))
    return stale


def settle_after_writes(
    engine: sa.Engine,
    changed: int,
    schema: str = tables.DEFAULT_SCHEMA,
    stopped: Callable[[], str | None] | None = None,
) -> bool:
    """``VACUUM (ANALYZE)`` the results table after a run that changed a large share of it
    (``changed`` rows written, superseded or retired: more than the stale share of the table
    as last measured, and more than the floor). Autovacuum would do the same a minute or so
    later; until then the next run, which may start straight away, reads every new result
    through the heap to learn that it is visible, and plans on statistics of a table a
    fraction of its size: a run with nothing to do took 1.6–2.1× its time on a vacuumed table.

    Housekeeping only: skipped for a role that does not own the table, skipped when another
    session holds it (``SKIP_LOCKED``), and a failure is a warning, never the run's. While it
    works, ``stopped`` is asked every tenth of a second what stop signal has arrived (its name,
    or None): then the vacuum is cancelled, and left to autovacuum. Returns whether it
    vacuumed."""
    name = tables.qualified_text(tables.RESULTS_TABLE, schema)
    with engine.connect() as conn:
        measured, owned = conn.execute(
            sa.text(
                "SELECT greatest(reltuples, 0), pg_has_role(relowner, 'USAGE') FROM pg_class "
                "WHERE oid = to_regclass(:name)"
            ),
            {"name": name},
        ).one()
    if not owned or changed <= max(_STALE_FLOOR, _STALE_SHARE * float(measured)):
        return False
    started = time.monotonic()
    try:
        with engine.connect() as conn:
            conn = conn.execution_options(isolation_level="AUTOCOMMIT")
            # On the driver's cursor: SQLAlchemy's would log and clear the server's notices,
            # one of which says whether the table was skipped.
            raw = cast(psycopg2.extensions.connection, conn.connection.dbapi_connection)
            seen = len(raw.notices)
            signal = _vacuum(raw, schema, stopped or (lambda: None))
            skipped = any("skipping" in n for n in raw.notices[seen:])
    except (sa.exc.DBAPIError, psycopg2.Error) as e:
        cause = e.orig if isinstance(e, sa.exc.DBAPIError) else e
        _LOG.warning("could not vacuum %s after this run's writes (%s)", name, type(cause).__name__)
        return False
    if signal is not None:
        _LOG.warning(
            "stopped vacuuming %s after this run's writes (%s): autovacuum will do it", name, signal
        )
        return False
    if skipped:  # another session (autovacuum, a backup) holds the table: it is left to them
        _LOG.info("did not vacuum %s after this run's writes: another session holds it", name)
        return False
    _LOG.info(
        "vacuumed and analysed %s after %d changed rows (%.1f s)",
        name,
        changed,
        time.monotonic() - started,
    )
    return True


def _vacuum(
    raw: psycopg2.extensions.connection, schema: str, stopped: Callable[[], str | None]
) -> str | None:
    """Vacuums the results table on ``raw`` in a thread of its own, while this one (the main
    thread, where signal handlers run) watches ``stopped``; on a stop signal the statement is
    cancelled, and its name returned. Raises what the vacuum raised."""
    vacuum = f"VACUUM (ANALYZE, SKIP_LOCKED) {tables.qualified_text(tables.RESULTS_TABLE, schema)}"
    failed: list[BaseException] = []

    def work() -> None:
        try:
            with raw.cursor() as cur:
                cur.execute(vacuum)
        except BaseException as e:  # noqa: BLE001 - raised again in the caller's thread
            failed.append(e)

    worker = threading.Thread(target=work, name="vacuum", daemon=True)
    worker.start()
    while worker.is_alive():
        worker.join(timeout=0.1)
        signal = stopped()
        if signal is not None and worker.is_alive():
            raw.cancel()
            worker.join(timeout=10)
            return signal
    if failed:
        raise failed[0]
    return None
