"""The pipeline's tables: their names, definitions and creation.

Tables are declared once with SQLAlchemy Core; ``create_schema`` creates what is missing and is
safe to run twice. Every other module names a table through the constants here.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Literal

import psycopg2
import psycopg2.errors
import psycopg2.extensions
import sqlalchemy as sa
from psycopg2 import sql
from sqlalchemy.dialects import postgresql

from pipeline.model import (
    ActivityType,
    EmissionResult,
    ErrorRecord,
)

IdType = Literal["bigint", "uuid"]

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
