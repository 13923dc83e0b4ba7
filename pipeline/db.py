"""The database side: schema, parameterised queries, and bulk reads and writes.

Tables are declared once with SQLAlchemy Core (``create_schema`` is safe to run twice). The hot
paths (range reads, result writes) use psycopg2 directly: a server-side cursor to read, and
``COPY`` into a temporary staging table followed by one ``INSERT … SELECT … ON CONFLICT DO
NOTHING`` to write, one transaction per flush. Identifiers are composed with
``psycopg2.sql.Identifier``; values are always bound parameters.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import io
import json
import math
import re
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, Literal, TypeVar, cast

import psycopg2
import psycopg2.errors
import psycopg2.extensions
import sqlalchemy as sa
from psycopg2 import sql
from sqlalchemy.dialects import postgresql

from pipeline import retry
from pipeline.model import (
    ACTIVITY_TYPES,
    ActivityType,
    EmissionResult,
    ErrorRecord,
    FactorRow,
    activity_fields,
)
from pipeline.ranges import (
    KeyRange,
    plan_from_cuts,
    plan_int_ranges,
    plan_uuid_ranges,
    ranges_needed,
)

if TYPE_CHECKING:
    from pipeline.pgbinary import CopyData

IdType = Literal["bigint", "uuid"]
T = TypeVar("T")

ACTIVITY_TABLES: dict[ActivityType, str] = {
    "electricity": "electricity_activities",
    "spend": "spend_activities",
    "air_travel": "air_travel_activities",
}
RESULTS_TABLE = "emission_results"
ERRORS_TABLE = "emission_errors"
FACTORS_TABLE = "emission_factors"
RUNS_TABLE = "calculation_runs"
HISTORY_TABLE = "emission_results_history"
RESTATEMENTS_TABLE = "restatements"
#: One row per activity type and results flush of a run: what it wrote (``bulk.log_writes``).
WRITES_TABLE = "calculation_run_writes"
#: Every connection the pipeline opens carries this name (see ``pg_stat_activity``).
APPLICATION_NAME = "emissions-pipeline"

#: What a result row describes of its factor row, which ``factor_id`` points at; stored once,
#: in ``emission_factors``, and joined back by the ``emission_results_explained`` view.
FACTOR_DESCRIPTION = (
    "factor_set",
    "factor_key",
    "factor_year",
    "factor_unit",
    "factor_source",
    "factor_edition",
    "gwp_set",
)
RESULT_COLUMNS: tuple[str, ...] = tuple(
    f.name for f in dataclasses.fields(EmissionResult) if f.name not in FACTOR_DESCRIPTION
)
#: Stored beside a result's values: the fingerprints of its inputs (``pipeline.fingerprint``).
FINGERPRINT_COLUMNS: tuple[str, ...] = ("input_fingerprint", "factor_fingerprint")
EXPLAINED_VIEW = "emission_results_explained"
ERROR_COLUMNS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(ErrorRecord))

_IDENTIFIER = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


def validate_identifier(name: str) -> str:
    """Return ``name`` if it is a plain lower-case SQL identifier, else raise ``ValueError``."""
    if not _IDENTIFIER.match(name):
        raise ValueError(
            f"{name!r} is not a valid identifier: use lower-case letters, digits and underscores"
        )
    return name


def redact_url(url: str) -> str:
    """The database URL with its password masked, for logs, summaries and errors."""
    try:
        return sa.make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - an unparsable URL must still never be printed raw
        return "<unparsable database URL>"


def build_metadata(id_type: IdType = "bigint") -> sa.MetaData:
    """The schema. ``id_type`` is the key type of every activity table and of the results."""
    if id_type not in ("bigint", "uuid"):
        raise ValueError(f"id type must be 'bigint' or 'uuid', not {id_type!r}")
    md = sa.MetaData()

    def activity_id(name: str = "id", **kw: Any) -> sa.Column[Any]:
        col_type: Any = sa.BigInteger() if id_type == "bigint" else postgresql.UUID(as_uuid=False)
        return sa.Column(name, col_type, **kw)

    sa.Table(
        ACTIVITY_TABLES["electricity"],
        md,
        activity_id(primary_key=True, autoincrement=False),
        sa.Column("quantity", sa.Float(53)),
        sa.Column("unit", sa.Text),
        sa.Column("region", sa.Text),
        sa.Column("country", sa.Text),
        sa.Column("activity_date", sa.Date),
    )
    sa.Table(
        ACTIVITY_TABLES["spend"],
        md,
        activity_id(primary_key=True, autoincrement=False),
        sa.Column("amount", sa.Float(53)),
        sa.Column("currency", sa.Text),
        sa.Column("naics_code", sa.Text),
        sa.Column("activity_date", sa.Date),
    )
    sa.Table(
        ACTIVITY_TABLES["air_travel"],
        md,
        activity_id(primary_key=True, autoincrement=False),
        sa.Column("origin", sa.Text),
        sa.Column("destination", sa.Text),
        sa.Column("cabin_class", sa.Text),
        sa.Column("passengers", sa.Integer),
        sa.Column("return_trip", sa.Boolean),
        sa.Column("activity_date", sa.Date),
        sa.Column("distance_km", sa.Float(53)),
    )
    sa.Table(
        FACTORS_TABLE,
        md,
        sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
        sa.Column("factor_set", sa.Text, nullable=False),
        sa.Column("key", sa.Text, nullable=False),
        sa.Column("year", sa.Integer, nullable=False),
        sa.Column("value", sa.Float(53), nullable=False),
        sa.Column("unit", sa.Text, nullable=False),
        sa.Column("kg_co2", sa.Float(53)),
        sa.Column("kg_ch4_co2e", sa.Float(53)),
        sa.Column("kg_n2o_co2e", sa.Float(53)),
        sa.Column("basis", sa.Text),
        sa.Column("gwp_set", sa.Text),
        sa.Column("source", sa.Text, nullable=False),
        sa.Column("edition", sa.Text, nullable=False),
        sa.Column("source_ref", sa.Text, nullable=False),
        sa.Column("loaded_at", sa.DateTime(timezone=True), server_default=sa.func.now()),
        sa.UniqueConstraint("factor_set", "edition", "key", "year", name="uq_factor_identity"),
        sa.CheckConstraint("value >= 0", name="ck_factor_value_non_negative"),
    )
    result_cols: list[Any] = [
        sa.Column("activity_type", sa.Text, primary_key=True),
        activity_id("activity_id", primary_key=True),
        sa.Column("scope", sa.SmallInteger, nullable=False),
        sa.Column("category", sa.SmallInteger),
        sa.Column("kg_co2e", sa.Float(53), nullable=False),
        sa.Column("kg_co2", sa.Float(53)),
        sa.Column("kg_ch4_co2e", sa.Float(53)),
        sa.Column("kg_n2o_co2e", sa.Float(53)),
        sa.Column("method", sa.Text, nullable=False),
        sa.Column("activity_amount", sa.Float(53), nullable=False),
        sa.Column("activity_unit", sa.Text, nullable=False),
        sa.Column("factor_id", sa.BigInteger, nullable=False),
        sa.Column("factor_value", sa.Float(53), nullable=False),
        sa.Column("basis", sa.Text),
        sa.Column("region_level", sa.Text),
        sa.Column("fallback", sa.Text),
        sa.Column("year_mismatch", sa.Boolean, nullable=False),
        sa.Column("class_substituted", sa.Boolean, nullable=False),
        sa.Column("distance_km", sa.Float(53)),
        sa.Column("haul", sa.Text),
        sa.Column("cabin_class", sa.Text),
        sa.Column("radiative_forcing", sa.Boolean),
        sa.Column("exchange_rate", sa.Float(53)),
        sa.Column("fx_factor_id", sa.BigInteger),
        sa.Column("cpi_deflator", sa.Float(53)),
        sa.Column("cpi_factor_id", sa.BigInteger),
        sa.Column("cpi_base_factor_id", sa.BigInteger),
        # NULL only on results written before fingerprints were stored beside them.
        sa.Column("input_fingerprint", sa.BigInteger),
        sa.Column("factor_fingerprint", sa.BigInteger),
        sa.Column("run_id", postgresql.UUID(as_uuid=False), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now()),
    ]
    # One row per activity: the primary key is what makes every write idempotent. The factor
    # ids are not foreign keys: factor rows are never deleted (the table is append-only), and
    # four per-row constraint triggers would cost more than the rest of the insert together.
    sa.Table(RESULTS_TABLE, md, *result_cols)
    # A restatement never loses a result: the superseded row moves here, whole, first.
    sa.Table(
        HISTORY_TABLE,
        md,
        *[c._copy() for c in result_cols],
        sa.Column("restatement_id", postgresql.UUID(as_uuid=False), primary_key=True),
        sa.Column("superseded_at", sa.DateTime(timezone=True), server_default=sa.func.now()),
    )
    sa.Table(
        RESTATEMENTS_TABLE,
        md,
        sa.Column("restatement_id", postgresql.UUID(as_uuid=False), primary_key=True),
        sa.Column("status", sa.Text, nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), server_default=sa.func.now()),
        sa.Column("finished_at", sa.DateTime(timezone=True)),
        sa.Column("pins", postgresql.JSONB),
        sa.Column("factor_editions", postgresql.JSONB),
        sa.Column("code_version", sa.Text),
        sa.Column("examined", sa.BigInteger),
        sa.Column("changed", sa.BigInteger),
        sa.Column("refused", sa.BigInteger),
        sa.Column("diff", postgresql.JSONB),
        sa.Column("message", sa.Text),
    )
    sa.Table(
        ERRORS_TABLE,
        md,
        sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
        sa.Column("activity_type", sa.Text, nullable=False),
        activity_id("activity_id", nullable=False),
        sa.Column("reason_code", sa.Text, nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("input_repr", sa.Text, nullable=False),
        sa.Column("input_hash", sa.Text, nullable=False),
        # The row version (xmin) the input was read at; the same version is not read again.
        sa.Column("activity_version", sa.BigInteger),
        sa.Column("run_id", postgresql.UUID(as_uuid=False), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now()),
        # The same bad input seen again by a later run is not written again.
        sa.UniqueConstraint(
            "activity_type", "activity_id", "input_hash", name="uq_error_activity_input"
        ),
    )
    # Written in the same transaction as the results it describes: the run's coverage and
    # totals are a sum over a few rows per flush, not a scan of its results.
    sa.Table(
        WRITES_TABLE,
        md,
        sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
        sa.Column("run_id", postgresql.UUID(as_uuid=False), nullable=False, index=True),
        sa.Column("activity_type", sa.Text, nullable=False),
        sa.Column("results", sa.BigInteger, nullable=False),
        sa.Column("kg_co2e", sa.Float(53), nullable=False),
        sa.Column("levels", postgresql.JSONB, nullable=False),  # level → [results, kg CO2e]
        sa.Column("written_at", sa.DateTime(timezone=True), server_default=sa.func.now()),
    )
    sa.Table(
        RUNS_TABLE,
        md,
        sa.Column("run_id", postgresql.UUID(as_uuid=False), primary_key=True),
        sa.Column("status", sa.Text, nullable=False),
        sa.Column("runner", sa.Text),
        sa.Column("options", postgresql.JSONB),
        sa.Column("started_at", sa.DateTime(timezone=True), server_default=sa.func.now()),
        sa.Column("finished_at", sa.DateTime(timezone=True)),
        sa.Column("total_activities", sa.BigInteger),
        sa.Column("skipped", sa.BigInteger),
        sa.Column("pending", sa.BigInteger),
        sa.Column("total_processed", sa.BigInteger),
        sa.Column("errors", sa.BigInteger),
        sa.Column("total_co2e_tonnes", sa.Float(53)),
        sa.Column("by_activity_type", postgresql.JSONB),
        sa.Column("timings", postgresql.JSONB),
        sa.Column("metrics_source", sa.Text),
        sa.Column("message", sa.Text),
        sa.Column("quality", postgresql.JSONB),
        sa.Column("factor_pins", postgresql.JSONB),
        sa.Column("factor_editions", postgresql.JSONB),
        sa.Column("code_version", sa.Text),
    )
    return md


_COLUMN_TYPES = {"jsonb": sql.SQL("jsonb"), "text": sql.SQL("text"), "bigint": sql.SQL("bigint")}

#: Columns added after a table's first release: ``create_schema`` adds them to older databases.
_ADDED_COLUMNS = (
    (RUNS_TABLE, "quality", "jsonb"),
    (RUNS_TABLE, "factor_pins", "jsonb"),
    (RUNS_TABLE, "factor_editions", "jsonb"),
    (RUNS_TABLE, "code_version", "text"),
    (RESULTS_TABLE, "input_fingerprint", "bigint"),
    (RESULTS_TABLE, "factor_fingerprint", "bigint"),
    (HISTORY_TABLE, "input_fingerprint", "bigint"),
    (HISTORY_TABLE, "factor_fingerprint", "bigint"),
)


@contextlib.contextmanager
def raw_connection(engine: sa.Engine) -> Iterator[psycopg2.extensions.connection]:
    """The engine's psycopg2 connection (for COPY and cursors), returned to the pool after."""
    pooled = engine.raw_connection()
    try:
        yield cast(psycopg2.extensions.connection, pooled.driver_connection)
    finally:
        pooled.close()


def make_engine(url: str, **kw: Any) -> sa.Engine:
    """An engine for set-up and bookkeeping (not for the hot path), always on psycopg2."""
    parsed = sa.make_url(url)
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg2")
    kw.setdefault("connect_args", {}).setdefault("application_name", APPLICATION_NAME)
    return sa.create_engine(parsed, pool_pre_ping=True, **kw)


def detect_id_type(engine: sa.Engine) -> IdType | None:
    """The key type of an existing schema, or None when there is no schema yet."""
    with engine.connect() as conn:
        found = conn.execute(
            sa.text(
                "SELECT data_type FROM information_schema.columns "
                "WHERE table_schema = current_schema() AND table_name = :t AND column_name = 'id'"
            ),
            {"t": ACTIVITY_TABLES["electricity"]},
        ).scalar()
    if found is None:
        return None
    return "uuid" if found == "uuid" else "bigint"


def detect_id_type_of(conn: psycopg2.extensions.connection, activity_type: ActivityType) -> IdType:
    """The key type of one activity table."""
    with conn.cursor() as cur:
        cur.execute(
            "SELECT data_type FROM information_schema.columns WHERE table_schema = "
            "current_schema() AND table_name = %s AND column_name = 'id'",
            (ACTIVITY_TABLES[activity_type],),
        )
        found = cur.fetchone()
    conn.commit()
    return "uuid" if found is not None and found[0] == "uuid" else "bigint"


def schema_ready(engine: sa.Engine) -> bool:
    """Whether every table, the view and every column added since exist (one catalogue query)."""
    names = [*build_metadata().tables, EXPLAINED_VIEW]
    with engine.connect() as conn:
        found, added = conn.execute(
            sa.text(
                "SELECT (SELECT count(to_regclass(n)) FROM unnest(CAST(:names AS text[])) n), "
                "(SELECT count(*) FROM unnest(CAST(:tables AS text[]), CAST(:columns AS text[])) "
                "x(t, c) WHERE EXISTS (SELECT 1 FROM pg_attribute "
                "WHERE attrelid = to_regclass(x.t) AND attname = x.c AND NOT attisdropped))"
            ),
            {
                "names": names,
                "tables": [t for t, _, _ in _ADDED_COLUMNS],
                "columns": [c for _, c, _ in _ADDED_COLUMNS],
            },
        ).one()
    return found == len(names) and added == len(_ADDED_COLUMNS)


def factors_loaded(engine: sa.Engine) -> bool:
    """Whether ``emission_factors`` holds any row."""
    with engine.connect() as conn:
        return bool(
            conn.execute(sa.text(f"SELECT EXISTS (SELECT 1 FROM {FACTORS_TABLE})")).scalar()
        )


def create_schema(engine: sa.Engine, id_type: IdType | None = None) -> IdType:
    """Create every table that is missing; safe to run twice. Returns the schema's id type."""
    existing = detect_id_type(engine)
    if existing is not None and id_type is not None and existing != id_type:
        raise ValueError(
            f"the schema already uses {existing} activity ids; it cannot be changed to {id_type}"
        )
    chosen: IdType = existing or id_type or "bigint"
    md = build_metadata(chosen)
    with engine.begin() as conn:
        # One creator at a time: two runs starting together must not race on CREATE TABLE.
        conn.execute(sa.text("SELECT pg_advisory_xact_lock(7355608)"))
        md.create_all(conn, checkfirst=True)
        # Columns added since a table was first made: only when missing, since ALTER TABLE
        # needs the table's owner, and a run may use a role that can only read and write.
        for table, column, col_type in _ADDED_COLUMNS:
            found = conn.execute(
                sa.text(
                    "SELECT 1 FROM information_schema.columns WHERE table_schema = "
                    "current_schema() AND table_name = :t AND column_name = :c"
                ),
                {"t": table, "c": column},
            ).scalar()
            if found is None:
                with conn.connection.dbapi_connection.cursor() as cur:  # type: ignore[union-attr]
                    cur.execute(
                        sql.SQL("ALTER TABLE {} ADD COLUMN {} {}").format(
                            sql.Identifier(table), sql.Identifier(column), _COLUMN_TYPES[col_type]
                        )
                    )
        # Only when missing, like the tables: replacing a view needs its owner, and a run may
        # use a role that can only read and write the tables.
        if conn.execute(sa.text("SELECT to_regclass(:v)"), {"v": EXPLAINED_VIEW}).scalar() is None:
            conn.execute(sa.text(_EXPLAINED_VIEW_SQL))
    return chosen


#: Results with their factor's description, and the source and edition of every series used.
_EXPLAINED_VIEW_SQL = f"""
CREATE OR REPLACE VIEW {EXPLAINED_VIEW} AS
SELECT r.*,
       f.factor_set, f.key AS factor_key, f.year AS factor_year, f.unit AS factor_unit,
       f.source AS factor_source, f.edition AS factor_edition, f.gwp_set,
       fx.source AS fx_source, fx.edition AS fx_edition, fx.year AS fx_year,
       cpi.year AS cpi_year, cpi.value AS cpi_value, base.value AS cpi_base_value
FROM {RESULTS_TABLE} r
JOIN {FACTORS_TABLE} f ON f.id = r.factor_id
LEFT JOIN {FACTORS_TABLE} fx ON fx.id = r.fx_factor_id
LEFT JOIN {FACTORS_TABLE} cpi ON cpi.id = r.cpi_factor_id
LEFT JOIN {FACTORS_TABLE} base ON base.id = r.cpi_base_factor_id
"""


# --- Factors -------------------------------------------------------------------------------

_FACTOR_COLUMNS = tuple(f.name for f in dataclasses.fields(FactorRow) if f.name != "id")


def insert_factors(engine: sa.Engine, rows: Iterable[FactorRow]) -> int:
    """Insert factor rows not already present (by set, edition, key, year). Returns rows added."""
    table = build_metadata().tables[FACTORS_TABLE]
    payload = [{c: getattr(r, c) for c in _FACTOR_COLUMNS} for r in rows]
    if not payload:
        return 0
    stmt = postgresql.insert(table).on_conflict_do_nothing(constraint="uq_factor_identity")
    added = 0
    with engine.begin() as conn:
        for start in range(0, len(payload), 5000):
            added += conn.execute(stmt, payload[start : start + 5000]).rowcount or 0
    return added


def read_factor_rows(conn: psycopg2.extensions.connection) -> list[FactorRow]:
    """The factor rows in force, with their database ids.

    Where several editions hold a value for the same set, key and year (a re-published file
    loaded next to the old one), the one loaded last is in force.
    """
    cols = ("id",) + _FACTOR_COLUMNS
    query = sql.SQL(
        "SELECT DISTINCT ON (factor_set, key, year) {} FROM {} "
        "ORDER BY factor_set, key, year, id DESC"
    ).format(sql.SQL(", ").join(map(sql.Identifier, cols)), sql.Identifier(FACTORS_TABLE))
    with conn.cursor() as cur:
        cur.execute(query)
        fetched = cur.fetchall()
    conn.commit()
    return [FactorRow(**dict(zip(cols, row, strict=True))) for row in fetched]


# --- Connections ---------------------------------------------------------------------------


def connect(url: str, **driver_options: Any) -> psycopg2.extensions.connection:
    """A raw psycopg2 connection for the hot paths, from a SQLAlchemy-style URL.

    ``driver_options`` go to ``psycopg2.connect`` (e.g. ``connection_factory``).
    """
    u = sa.make_url(url)
    params: dict[str, Any] = {
        "dbname": u.database,
        "user": u.username,
        "password": u.password,
        "host": u.host,
        "port": u.port,
        "application_name": APPLICATION_NAME,
    }
    params.update(u.query)  # e.g. host=/path/to/socket for the embedded server
    params = {k: v for k, v in params.items() if v is not None}
    return psycopg2.connect(**params, **driver_options)


class ResilientConnection:
    """One psycopg2 connection for a DoFn, reopened and retried after transient failures.

    ``run(what, fn)`` calls ``fn(connection)``; when that fails transiently (the connection was
    lost, the server restarted, a serialization failure or deadlock), the connection is dropped
    and ``fn`` runs again on a fresh one, with backoff, up to the policy's attempts. ``fn`` must
    therefore be one whole transaction that is safe to repeat: every write here is idempotent.
    """

    def __init__(self, url: str, policy: retry.RetryPolicy = retry.DEFAULT_POLICY) -> None:
        self._url = url
        self._policy = policy
        self._conn: psycopg2.extensions.connection | None = None

    def open(self) -> None:
        """Connect now (retrying), so that a database that is down fails in ``setup``."""
        retry.call(self._ensure, what="connecting to the database", policy=self._policy)

    def _ensure(self) -> psycopg2.extensions.connection:
        if self._conn is None or self._conn.closed:
            self._conn = connect(self._url)
        return self._conn

    def _drop(self, _: BaseException | None = None) -> None:
        if self._conn is not None:
            with contextlib.suppress(Exception):
                self._conn.close()
        self._conn = None

    def run(self, what: str, fn: Callable[[psycopg2.extensions.connection], T]) -> T:
        def attempt() -> T:
            conn = self._ensure()
            try:
                return fn(conn)
            except Exception as e:
                if not retry.is_transient(e) and not conn.closed:
                    with contextlib.suppress(Exception):
                        conn.rollback()
                raise

        return retry.call(attempt, what=what, policy=self._policy, on_retry=self._drop)

    def close(self) -> None:
        self._drop()


def with_connection(
    url: str,
    what: str,
    fn: Callable[[psycopg2.extensions.connection], T],
    policy: retry.RetryPolicy = retry.DEFAULT_POLICY,
) -> T:
    """``fn`` on a short-lived connection, retried after transient failures, closed after."""
    resilient = ResilientConnection(url, policy)
    try:
        return resilient.run(what, fn)
    finally:
        resilient.close()


# --- Range reads ---------------------------------------------------------------------------


def key_bounds(
    conn: psycopg2.extensions.connection, activity_type: ActivityType
) -> tuple[Any, Any, str]:
    """(lowest id, highest id, id type) of an activity table; ids are None when it is empty.

    Two index lookups (``min()`` is not defined for ``uuid``).
    """
    table = sql.Identifier(ACTIVITY_TABLES[activity_type])
    with conn.cursor() as cur:
        cur.execute(
            sql.SQL("SELECT id, pg_typeof(id)::text FROM {} ORDER BY id LIMIT 1").format(table)
        )
        first = cur.fetchone()
        cur.execute(sql.SQL("SELECT id FROM {} ORDER BY id DESC LIMIT 1").format(table))
        last = cur.fetchone()
    conn.commit()
    if first is None or last is None:
        return None, None, ""
    return first[0], last[0], first[1]


def _key_cast(key: Any) -> sql.SQL:
    return sql.SQL("::uuid" if isinstance(key, str) else "::bigint")


#: The column the range reads add: the row version (PostgreSQL ``xmin``) the input was read at.
VERSION_COLUMN = "activity_version"

#: Pending: no result, and no dead letter for this very version of the row. A refused row is
#: not read again until it changes (a corrected row gets a new version, and is computed).
_PENDING = sql.SQL(
    "NOT EXISTS (SELECT 1 FROM {r} r WHERE r.activity_type = %(activity_type)s "
    "AND r.activity_id = a.id{r_range}) "
    "AND NOT EXISTS (SELECT 1 FROM {e} e WHERE e.activity_type = %(activity_type)s "
    "AND e.activity_id = a.id{e_range} AND e.activity_version = a.xmin::text::bigint)"
)


def _pending(start: Any = None, end: Any = None) -> sql.Composed:
    """The pending condition; within a key range, results and dead letters are looked up in
    that range only.

    The bounds on ``r.activity_id`` follow from ``r.activity_id = a.id``, but PostgreSQL does
    not carry inequalities across a join: without them, every range read would scan all the
    results of its type, and a run's reads would grow with ranges × results."""

    def bounds(alias: str) -> sql.Composed:
        found: list[sql.Composable] = []
        column = sql.SQL(" AND {}.activity_id").format(sql.Identifier(alias))
        if start is not None:
            found.append(column + sql.SQL(" >= %(start)s") + _key_cast(start))
        if end is not None:
            found.append(column + sql.SQL(" < %(end)s") + _key_cast(end))
        return sql.Composed(found)

    return _PENDING.format(
        r=sql.Identifier(RESULTS_TABLE),
        e=sql.Identifier(ERRORS_TABLE),
        r_range=bounds("r"),
        e_range=bounds("e"),
    )


def _in_scope(
    activity_type: ActivityType,
    start: Any = None,
    end: Any = None,
    date_from: str | None = None,
    date_to: str | None = None,
) -> tuple[list[sql.Composable], dict[str, Any]]:
    """Conditions (and their parameters) for a key range and an activity-date window.

    Integer bounds are compared as ``bigint``, text bounds as ``uuid``."""
    conditions: list[sql.Composable] = [sql.SQL("true")]
    params: dict[str, Any] = {"activity_type": activity_type}
    if start is not None:
        conditions.append(sql.SQL("a.id >= %(start)s") + _key_cast(start))
        params["start"] = str(start)
    if end is not None:
        conditions.append(sql.SQL("a.id < %(end)s") + _key_cast(end))
        params["end"] = str(end)
    if date_from is not None:
        conditions.append(sql.SQL("a.activity_date >= %(date_from)s::date"))
        params["date_from"] = date_from
    if date_to is not None:
        conditions.append(sql.SQL("a.activity_date < %(date_to)s::date"))
        params["date_to"] = date_to
    return conditions, params


def pending_query(
    activity_type: ActivityType,
    start: Any,
    end: Any,
    date_from: str | None = None,
    date_to: str | None = None,
) -> tuple[sql.Composed, dict[str, Any]]:
    """The anti-join that reads one key range of pending activities, with their row version."""
    conditions, params = _in_scope(activity_type, start, end, date_from, date_to)
    select = sql.SQL(", ").join(
        [sql.SQL("a.") + sql.Identifier(c) for c in activity_fields(activity_type)]
        + [sql.SQL("a.xmin::text::bigint AS {}").format(sql.Identifier(VERSION_COLUMN))]
    )
    query = sql.SQL("SELECT {select} FROM {table} a WHERE {where} AND {pending}").format(
        select=select,
        table=sql.Identifier(ACTIVITY_TABLES[activity_type]),
        where=sql.SQL(" AND ").join(conditions),
        pending=_pending(start, end),
    )
    return query, params


def count_query(
    activity_type: ActivityType,
    date_from: str | None = None,
    date_to: str | None = None,
    pending_only: bool = False,
) -> tuple[sql.Composed, dict[str, Any]]:
    """The number of activities in scope, or of pending ones (an anti-join, not a per-row
    filter: PostgreSQL plans ``WHERE NOT EXISTS`` as one hash anti-join)."""
    conditions, params = _in_scope(activity_type, None, None, date_from, date_to)
    if pending_only:
        conditions.append(_pending())
    query = sql.SQL("SELECT count(*) FROM {table} a WHERE {where}").format(
        table=sql.Identifier(ACTIVITY_TABLES[activity_type]),
        where=sql.SQL(" AND ").join(conditions),
    )
    return query, params


def count_rows(conn: psycopg2.extensions.connection, activity_type: ActivityType) -> int:
    """The number of rows in an activity table."""
    with conn.cursor() as cur:
        cur.execute(
            sql.SQL("SELECT count(*) FROM {}").format(
                sql.Identifier(ACTIVITY_TABLES[activity_type])
            )
        )
        (count,) = cur.fetchone()
    conn.commit()
    return int(count)


def key_cuts(
    conn: psycopg2.extensions.connection, activity_type: ActivityType, step: int
) -> list[Any]:
    """Every ``step``-th id in key order after the first, from one ordered index scan: ranges
    between consecutive cuts hold ``step`` rows however the keys are spread."""
    table = sql.Identifier(ACTIVITY_TABLES[activity_type])
    with conn.cursor() as cur:
        cur.execute(
            sql.SQL(
                "SELECT id FROM (SELECT id, row_number() OVER (ORDER BY id) AS rn FROM {}) s "
                "WHERE rn > 1 AND rn %% %s = 1 ORDER BY rn"
            ).format(table),
            (step,),
        )
        cuts = [row[0] for row in cur.fetchall()]
    conn.commit()
    return cuts


Planner = Literal["rows", "bounds"]
PLANNERS: tuple[Planner, ...] = ("rows", "bounds")


def plan_ranges(
    conn: psycopg2.extensions.connection,
    activity_type: ActivityType,
    partitions: int,
    rows_per_range: int,
    planner: Planner = "rows",
    rows: int | None = None,
) -> list[KeyRange]:
    """The key ranges an activity table is read in (``rows``: its row count, if known).

    ``rows`` (default): cut points every N rows in key order (``key_cuts``), so ranges hold
    equal numbers of rows however the keys are spread, and there are more ranges as the table
    grows (``ranges_needed``). ``bounds``: ``partitions`` equal slices of the key span
    (integers between the lowest and highest id; the 128-bit space for UUIDs): two index
    lookups, balanced only when keys are spread evenly.
    """
    if planner == "bounds":
        lo, hi, typ = key_bounds(conn, activity_type)
        if lo is None:
            return []
        if typ == "uuid":
            return plan_uuid_ranges(activity_type, partitions)
        return plan_int_ranges(activity_type, int(lo), int(hi), partitions)
    if rows is None:
        rows = count_rows(conn, activity_type)
    n = ranges_needed(rows, rows_per_range, partitions)
    if n == 0:
        return []
    cuts = key_cuts(conn, activity_type, -(-rows // n)) if n > 1 else []
    return plan_from_cuts(activity_type, [c if isinstance(c, int) else str(c) for c in cuts])


# --- Bulk writes ---------------------------------------------------------------------------


def _copy_field(value: Any) -> str:
    """One value in PostgreSQL's CSV COPY format: NULL is an empty unquoted field."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "t" if value else "f"
    if isinstance(value, float):
        if math.isnan(value):
            return "NaN"
        if math.isinf(value):
            return "Infinity" if value > 0 else "-Infinity"
        return repr(value)  # shortest text that round-trips the double exactly
    if isinstance(value, int):
        return str(value)
    text = str(value)
    return '"' + text.replace('"', '""') + '"'


def copy_buffer(rows: Iterable[Sequence[Any]]) -> io.StringIO:
    """Rows as a CSV text buffer for ``COPY … FROM STDIN``."""
    buf = io.StringIO()
    for row in rows:
        buf.write(",".join(_copy_field(v) for v in row))
        buf.write("\n")
    buf.seek(0)
    return buf


def _staged_insert(
    conn: psycopg2.extensions.connection,
    table: str,
    columns: Sequence[str],
    rows: Sequence[Sequence[Any]],
    conflict: sql.Composable,
) -> int:
    """COPY rows into a temporary staging table, then insert what is new; one transaction."""
    return staged_copy(conn, table, columns, copy_buffer(rows), conflict)


_COPY_CHUNK = 1 << 20  # bytes handed to the server per read of the COPY data


def staged_copy(
    conn: psycopg2.extensions.connection,
    table: str,
    columns: Sequence[str],
    csv_data: io.StringIO | io.BytesIO | CopyData,
    conflict: sql.Composable,
    fmt: Literal["csv", "binary"] = "csv",
    after: Callable[[psycopg2.extensions.cursor, list[tuple[str, str]] | None], None] | None = None,
) -> int:
    """Insert the rows that are new (CSV or binary COPY data), in one transaction; returns how
    many were written.

    First, optimistically, one ``COPY`` straight into the table: when every row is new (the
    usual case: rows were read as pending just before) that is all. If a row already exists
    (a retried bundle, a concurrent run), the unique key refuses the whole COPY, nothing of it
    is kept, and the rows go through a staging table and ``INSERT … ON CONFLICT DO NOTHING``.

    ``after`` runs in the same transaction, before the commit, with ``None`` when every row
    was written, or else the keys (``activity_type``, ``activity_id`` as text) of those that
    were.
    """
    cols = sql.SQL(", ").join(map(sql.Identifier, columns))
    try:
        with conn.cursor() as cur:
            cur.copy_expert(
                sql.SQL("COPY {t} ({c}) FROM STDIN WITH (FORMAT {f})").format(
                    t=sql.Identifier(table), c=cols, f=sql.SQL(fmt)
                ),
                csv_data,
                size=_COPY_CHUNK,
            )
            written = cur.rowcount
            if after is not None:
                after(cur, None)
        conn.commit()
        return written
    except psycopg2.errors.UniqueViolation:
        conn.rollback()
    csv_data.seek(0)
    staging = sql.Identifier(f"staging_{table}")
    with conn.cursor() as cur:
        cur.execute(
            sql.SQL(
                "CREATE TEMP TABLE IF NOT EXISTS {s} ON COMMIT DELETE ROWS "
                "AS SELECT * FROM {t} WITH NO DATA"
            ).format(s=staging, t=sql.Identifier(table))
        )
        cur.copy_expert(
            sql.SQL("COPY {s} ({c}) FROM STDIN WITH (FORMAT {f})").format(
                s=staging, c=cols, f=sql.SQL(fmt)
            ),
            csv_data,
            size=_COPY_CHUNK,
        )
        insert = sql.SQL(
            "INSERT INTO {t} ({c}) SELECT {c} FROM {s} ON CONFLICT {k} DO NOTHING"
        ).format(t=sql.Identifier(table), c=cols, s=staging, k=conflict)
        if after is not None:
            insert += sql.SQL(" RETURNING activity_type, activity_id::text")
        cur.execute(insert)
        written = cur.rowcount
        if after is not None:
            after(cur, [(t, k) for t, k in cur.fetchall()])
    conn.commit()
    return written


def write_results(
    conn: psycopg2.extensions.connection, results: Sequence[EmissionResult], run_id: str
) -> int:
    """Insert results not already stored (unique per activity). Returns rows written."""
    columns = RESULT_COLUMNS + ("run_id",)
    rows = [tuple(getattr(r, c) for c in RESULT_COLUMNS) + (run_id,) for r in results]
    conflict = sql.SQL("(activity_type, activity_id)")
    return _staged_insert(conn, RESULTS_TABLE, columns, rows, conflict)


def error_hash(error: ErrorRecord) -> str:
    """A stable fingerprint of the bad input, so the same bad row is recorded once."""
    import hashlib

    return hashlib.sha256(error.input_repr.encode()).hexdigest()


def write_errors(
    conn: psycopg2.extensions.connection, errors: Sequence[ErrorRecord], run_id: str
) -> int:
    """Insert dead letters not already recorded for the same input. Returns rows written."""
    columns = ERROR_COLUMNS + ("input_hash", "run_id")
    rows = [dataclasses.astuple(e) + (error_hash(e), run_id) for e in errors]
    conflict = sql.SQL("(activity_type, activity_id, input_hash)")
    return _staged_insert(conn, ERRORS_TABLE, columns, rows, conflict)


# --- Bookkeeping ---------------------------------------------------------------------------


def count_activities(
    engine: sa.Engine,
    activity_types: Sequence[ActivityType] = ACTIVITY_TYPES,
    date_from: str | None = None,
    date_to: str | None = None,
    workers: int = 2,
    on_pending: Callable[[], None] | None = None,
) -> dict[str, dict[str, int]]:
    """Per activity type: all activities in scope, and those still pending.

    The counts are independent scans: they run on up to ``workers`` connections at once (the
    engine's pool must allow as many). ``on_pending`` is called once, as soon as a count
    finds pending activities."""
    announced: list[bool] = []
    lock = threading.Lock()
    queries = [
        (t, key, count_query(t, date_from, date_to, pending_only=key == "pending"))
        for t in activity_types
        for key in ("pending", "total")  # the anti-joins, the longer ones, first
    ]

    def count(item: tuple[str, str, tuple[sql.Composed, dict[str, Any]]]) -> int:
        _, key, query = item
        with raw_connection(engine) as raw:
            with raw.cursor() as cur:
                cur.execute(*query)
                (n,) = cur.fetchone()
            raw.commit()
        if key == "pending" and n and on_pending is not None:
            with lock:
                first, announced[:] = not announced, [True]
            if first:
                on_pending()
        return int(n)

    with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
        found = list(pool.map(count, queries))
    out: dict[str, dict[str, int]] = {t: {} for t in activity_types}
    for (t, key, _), n in zip(queries, found, strict=True):
        out[t][key] = n
    return {t: {"total": c["total"], "pending": c["pending"]} for t, c in out.items()}


def outstanding_errors(engine: sa.Engine) -> dict[str, int]:
    """Activities with a dead letter and still no result, per activity type."""
    with engine.connect() as conn:
        rows = conn.execute(
            sa.text(
                f"SELECT e.activity_type, count(DISTINCT e.activity_id) FROM {ERRORS_TABLE} e "
                f"WHERE NOT EXISTS (SELECT 1 FROM {RESULTS_TABLE} r "
                "WHERE r.activity_type = e.activity_type AND r.activity_id = e.activity_id) "
                "GROUP BY e.activity_type"
            )
        )
        return {r[0]: int(r[1]) for r in rows}


def start_run(
    engine: sa.Engine, run_id: str, runner: str, options: dict[str, Any], **fields: Any
) -> None:
    """Record that a run has started (``fields``: more columns known from the start)."""
    table = build_metadata().tables[RUNS_TABLE]
    with engine.begin() as conn:
        conn.execute(
            table.insert().values(
                run_id=run_id,
                status="running",
                runner=runner,
                options=json.loads(json.dumps(options, default=str)),
                **fields,
            )
        )


def finish_run(engine: sa.Engine, run_id: str, **fields: Any) -> None:
    """Store a run's outcome and summary."""
    table = build_metadata().tables[RUNS_TABLE]
    with engine.begin() as conn:
        conn.execute(
            table.update()
            .where(table.c.run_id == run_id)
            .values(finished_at=sa.func.now(), **fields)
        )


def scrub(text: str, url: str | None) -> str:
    """``text`` with the URL's password (and the raw URL) replaced, for errors and logs."""
    if not url:
        return text
    text = text.replace(url, redact_url(url))
    try:
        password = sa.make_url(url).password
    except Exception:  # noqa: BLE001
        return text
    if password:
        text = text.replace(str(password), "***")
    return text


# --- Connection budget ---------------------------------------------------------------------

#: The run's own engine (bookkeeping and progress lines): ``pool_size=2, max_overflow=0``.
DRIVER_CONNECTIONS = 2


def connection_bound(workers: int = 1) -> int:
    """The most connections one run holds at once.

    The driver's pool (bookkeeping, planning the key ranges, progress), and per worker: one
    range reader and two writers (results, errors), each its own DoFn, however many activity
    types the run reads (one DoFn serves them all); plus one short-lived connection that reads
    the factors. Every DoFn opens its connection in ``setup`` and closes it in ``teardown``;
    none opens one per element or per bundle.
    """
    return DRIVER_CONNECTIONS + workers * 4
