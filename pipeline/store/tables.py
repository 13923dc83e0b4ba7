"""The pipeline's tables: their names and definitions, in the pipeline's own schema.

Every table, view and index the pipeline creates lives in one PostgreSQL schema (``--schema``,
``$EMISSIONS_SCHEMA``, default ``emissions``) and is always named schema-qualified
(``qualified``), never found through ``search_path``. The tables are created and changed by
migrations (``pipeline/store/migrations``, applied by ``pipeline.store.install``); the
definitions here describe the newest revision, for the code that reads and writes them.
"""

from __future__ import annotations

import dataclasses
import functools
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
    InstrumentKind,
)

IdType = Literal["bigint", "uuid", "text"]
ID_TYPES: tuple[IdType, ...] = ("bigint", "uuid", "text")

#: The PostgreSQL schema every table, view and index of the pipeline lives in.
DEFAULT_SCHEMA = "emissions"
SCHEMA_ENV = "EMISSIONS_SCHEMA"

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
#: The sources file the schema's results are computed from, one row per change (revision 0005).
SOURCES_TABLE = "sources_config"
#: Which run holds which key range (``pipeline.store.claims``); a claim lives with its run.
CLAIMS_TABLE = "range_claims"
#: The base year as first reported, one row per result (revision 0008, ``audit.base_year``).
BASE_YEAR_TABLE = "base_year_results"
#: Scope 2 market-based: the allocation's lines, those superseded, and the instruments
#: refused (revision 0009, ``pipeline.market_stage``).
MARKET_TABLE = "market_based_results"
MARKET_HISTORY_TABLE = "market_based_results_history"
MARKET_REFUSED_TABLE = "market_based_refused"
#: What the last complete market-based allocation was computed from (revision 0011).
MARKET_INPUTS_TABLE = "market_based_inputs"
#: The pipeline's own instrument tables (revision 0010), read when no sources file maps them.
INSTRUMENT_TABLES: dict[InstrumentKind, str] = {
    "certificates": "instrument_certificates",
    "contracts": "instrument_contracts",
    "supplier_rates": "instrument_supplier_rates",
}
#: Why a market-based line left ``market_based_results`` for its history.
MARKET_HISTORY_REASONS = ("instruments_changed", "consumption_changed", "reallocated")
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
#: Stored beside a result: the version of the activity row it was computed from.
VERSION_COLUMN = "activity_version"
#: Why a result left ``emission_results`` for its history.
HISTORY_REASONS = ("restatement", "activity_changed", "activity_deleted")
EXPLAINED_VIEW = "emission_results_explained"
#: The follow mode's marks: per activity type, how far it has come (``pipeline.follow``).
MARKS_TABLE = "follow_marks"
#: On the pipeline's own activity tables: a number from one sequence per insert and update.
CHANGE_COLUMN = "change_seq"
CHANGE_SEQUENCE = "activity_changes"
ERROR_COLUMNS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(ErrorRecord))

_IDENTIFIER = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


def validate_schema(name: str) -> str:
    """``name`` if it can name the pipeline's schema, else ``ValueError`` saying why."""
    if not _IDENTIFIER.match(name) or name.startswith("pg_") or name == "information_schema":
        raise ValueError(
            f"{name!r} cannot be the pipeline's schema: use lower-case letters, digits and "
            "underscores, not starting with pg_"
        )
    return name


def validate_identifier(name: str) -> str:
    """Return ``name`` if it is a plain lower-case SQL identifier, else raise ``ValueError``."""
    if not _IDENTIFIER.match(name):
        raise ValueError(
            f"{name!r} is not a valid identifier: use lower-case letters, digits and underscores"
        )
    return name


def build_metadata(id_type: IdType = "bigint", schema: str = DEFAULT_SCHEMA) -> sa.MetaData:
    """The tables as the newest migration leaves them (``pipeline/store/migrations``; a test
    holds the two equal), in ``schema``. ``id_type`` is the key type of the pipeline's own
    activity tables and of the results: that of the sources' keys."""
    if id_type not in ID_TYPES:
        raise ValueError(f"id type must be one of {', '.join(ID_TYPES)}, not {id_type!r}")
    md = sa.MetaData(schema=validate_schema(schema))
    # In this order: it is the order of ``md.tables``, which some callers walk.
    _activity_tables(md, id_type)
    _factors_table(md)
    _result_tables(md, id_type)
    _run_write_tables(md, id_type)
    _base_year_table(md)
    _market_tables(md)
    _instrument_tables(md)
    _marks_table(md)
    _run_tables(md)
    return md


def _key_column(id_type: IdType, name: str = "id", **kw: Any) -> sa.Column[Any]:
    """A column holding an activity's key, of the sources' key type."""
    col_type: Any = {"bigint": sa.BigInteger(), "uuid": postgresql.UUID(as_uuid=False)}.get(
        id_type, sa.Text()
    )
    return sa.Column(name, col_type, **kw)


def _change_seq(schema: str | None) -> sa.Column[Any]:
    # Numbers every insert (this default) and update (a trigger, migration 0004): what the
    # follow mode finds changes by, through its index.
    return sa.Column(
        CHANGE_COLUMN,
        sa.BigInteger,
        server_default=sa.Sequence(CHANGE_SEQUENCE, schema=schema).next_value(),
        index=True,
    )


def _activity_tables(md: sa.MetaData, id_type: IdType) -> None:
    """The pipeline's own activity tables (when no sources file points elsewhere)."""
    activity_id = functools.partial(_key_column, id_type)
    sa.Table(
        ACTIVITY_TABLES["electricity"],
        md,
        activity_id(primary_key=True, autoincrement=False),
        sa.Column("quantity", sa.Float(53)),
        sa.Column("unit", sa.Text),
        sa.Column("region", sa.Text),
        sa.Column("country", sa.Text),
        sa.Column("activity_date", sa.Date),
        _change_seq(md.schema),
    )
    sa.Table(
        ACTIVITY_TABLES["spend"],
        md,
        activity_id(primary_key=True, autoincrement=False),
        sa.Column("amount", sa.Float(53)),
        sa.Column("currency", sa.Text),
        sa.Column("naics_code", sa.Text),
        sa.Column("activity_date", sa.Date),
        _change_seq(md.schema),
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
        _change_seq(md.schema),
    )


def _factors_table(md: sa.MetaData) -> None:
    """The emission factors, append-only: one row per factor set, edition, key and year."""
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


def _result_columns(id_type: IdType) -> list[Any]:
    """A result's columns: the value, how it was computed, and from what."""
    return [
        sa.Column("activity_type", sa.Text, primary_key=True),
        _key_column(id_type, "activity_id", primary_key=True),
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
        # The version of the activity row it was computed from (NULL before revision 0002).
        sa.Column("activity_version", sa.BigInteger),
        sa.Column("run_id", postgresql.UUID(as_uuid=False), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now()),
    ]


def _result_tables(md: sa.MetaData, id_type: IdType) -> None:
    """The results, the results they superseded, and the restatements that moved them."""
    result_cols = _result_columns(id_type)
    # One row per activity: the primary key is what makes every write idempotent. The factor
    # ids are not foreign keys: factor rows are never deleted (the table is append-only), and
    # four per-row constraint triggers would cost more than the rest of the insert together.
    # It includes the activity's version (migration 0002): a run's counts compare versions from
    # the index alone.
    sa.Table(
        RESULTS_TABLE,
        md,
        *result_cols,
        sa.PrimaryKeyConstraint(
            "activity_type",
            "activity_id",
            name="emission_results_pkey",
            postgresql_include=["activity_version"],
        ),
    )
    # A result is never lost: a superseded or retired row moves here, whole, in the statement
    # that replaces or deletes it. ``restatement_id`` is the restatement or run that moved it;
    # ``reason`` says why; ``history_id`` (migration 0007) numbers the rows in the order they
    # were kept: one run may move several values of one activity.
    history_cols = [c._copy() for c in result_cols]
    for c in history_cols:
        c.primary_key = False
    sa.Table(
        HISTORY_TABLE,
        md,
        *history_cols,
        sa.Column("restatement_id", postgresql.UUID(as_uuid=False), nullable=False),
        sa.Column("superseded_at", sa.DateTime(timezone=True), server_default=sa.func.now()),
        sa.Column("reason", sa.Text, nullable=False, server_default="restatement"),
        sa.Column("history_id", sa.BigInteger, sa.Identity(), primary_key=True),
        sa.Index("ix_emission_results_history_activity", "activity_type", "activity_id"),
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
        # Activities whose input changed after the restatement read them (migration 0007).
        sa.Column("left_to_next_run", sa.BigInteger),
    )


def _run_write_tables(md: sa.MetaData, id_type: IdType) -> None:
    """What runs write beside their results: dead letters, a row per flush, range claims."""
    activity_id = functools.partial(_key_column, id_type)
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
        # Set when the activity was deleted: kept as a record, no longer an open error.
        sa.Column("retired_at", sa.DateTime(timezone=True)),
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
        # Of ``results``, those that replaced a result of a changed activity.
        sa.Column("replaced", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("written_at", sa.DateTime(timezone=True), server_default=sa.func.now()),
        # Revision 0006: the dead letters a flush stored (a row of a dead-letter flush).
        sa.Column("errors", sa.BigInteger, nullable=False, server_default="0"),
    )
    # Revision 0006: key ranges claimed by runs (``pipeline.store.claims``): a claim is held
    # while its run is ``running``; bounds as text (NULL: unbounded).
    sa.Table(
        CLAIMS_TABLE,
        md,
        sa.Column("activity_type", sa.Text, nullable=False),
        sa.Column("range_key", sa.Text, nullable=False),
        sa.Column("range_start", sa.Text),
        sa.Column("range_end", sa.Text),
        sa.Column("run_id", postgresql.UUID(as_uuid=False), nullable=False, index=True),
        sa.Column("claimed_at", sa.DateTime(timezone=True), server_default=sa.func.now()),
        sa.PrimaryKeyConstraint("activity_type", "range_key", name="range_claims_pkey"),
    )


def _base_year_table(md: sa.MetaData) -> None:
    # Revision 0008: a base year's results as first reported (``audit.base_year``); the
    # activity's key as text, whatever its type.
    sa.Table(
        BASE_YEAR_TABLE,
        md,
        sa.Column("year_start", sa.Text, nullable=False),
        sa.Column("base_year", sa.Integer, nullable=False),
        sa.Column("activity_type", sa.Text, nullable=False),
        sa.Column("activity_id", sa.Text, nullable=False),
        sa.Column("scope", sa.SmallInteger, nullable=False),
        sa.Column("category", sa.SmallInteger),
        sa.Column("kg_co2e", sa.Float(53), nullable=False),
        sa.Column("recorded_at", sa.DateTime(timezone=True), server_default=sa.func.now()),
        sa.PrimaryKeyConstraint(
            "year_start",
            "base_year",
            "activity_type",
            "activity_id",
            name="base_year_results_pkey",
        ),
    )


def _marks_table(md: sa.MetaData) -> None:
    # The follow mode's marks (docs/follow.md): ``mark``, every change up to it is computed;
    # ``scanned``, read up to there; ``pending_mark``, the next mark, once every transaction
    # older than ``pending_xmax`` has ended. Keys of the source's ``follow_by``, as text.
    sa.Table(
        MARKS_TABLE,
        md,
        sa.Column("activity_type", sa.Text, primary_key=True),
        sa.Column("source", sa.Text, nullable=False),
        sa.Column("mark", sa.Text),
        sa.Column("scanned", sa.Text),
        sa.Column("pending_xmax", sa.BigInteger),
        sa.Column("pending_mark", sa.Text),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=sa.func.now()),
    )


def _run_tables(md: sa.MetaData) -> None:
    """One row per run, and the schema's sources file, one row per change."""
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
        # Revision 0003: written every few seconds while the run works (``runs.Heartbeat``); a
        # run whose heartbeat is old stopped without finishing (``runs.mark_abandoned``).
        sa.Column("heartbeat_at", sa.DateTime(timezone=True)),
        # The Airflow DAG run the run was a task of, and the data interval it was for.
        sa.Column("airflow_dag_id", sa.Text),
        sa.Column("airflow_run_id", sa.Text),
        sa.Column("data_interval_start", sa.DateTime(timezone=True)),
        sa.Column("data_interval_end", sa.DateTime(timezone=True)),
        # Revision 0005: the sources it read (NULL: the pipeline's own tables) and every
        # option that changes numbers (``audit.verify`` recomputes its results with them).
        sa.Column("sources_sha256", sa.Text),
        sa.Column("calculation_options", postgresql.JSONB),
    )
    # Revision 0005: the schema's sources file, one row per change, the newest in force.
    sa.Table(
        SOURCES_TABLE,
        md,
        sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
        sa.Column("sha256", sa.Text, nullable=False),
        sa.Column("text", sa.Text, nullable=False),
        sa.Column("changed_at", sa.DateTime(timezone=True), server_default=sa.func.now()),
        sa.Column("changed_by", sa.Text, nullable=False, server_default=sa.text("CURRENT_USER")),
        sa.Column("previous_sha256", sa.Text),
    )


def _market_line_columns() -> list[sa.Column[Any]]:
    """A market-based line (revision 0009): what it was taken at, and with which choices."""
    return [
        sa.Column("boundary", sa.Text, nullable=False),
        sa.Column("reporting_year", sa.Integer, nullable=False),
        sa.Column("activity_id", sa.Text, nullable=False),
        sa.Column("line", sa.SmallInteger, nullable=False),
        sa.Column("market", sa.Text, nullable=False),
        sa.Column("facility", sa.Text),
        sa.Column("supplier", sa.Text),
        sa.Column("basis", sa.Text, nullable=False),
        sa.Column("instrument_kind", sa.Text),
        sa.Column("instrument_id", sa.Text),
        sa.Column("factor_id", sa.BigInteger),
        sa.Column("kwh", sa.Float(53), nullable=False),
        sa.Column("kg_per_kwh", sa.Float(53), nullable=False),
        sa.Column("kg_co2e", sa.Float(53), nullable=False),
        sa.Column("grid_fallback", sa.Boolean, nullable=False),
        sa.Column("year_mismatch", sa.Boolean, nullable=False),
        sa.Column("year_start", sa.Text, nullable=False),
        sa.Column("vintage_window_years", sa.Integer, nullable=False),
        sa.Column("sharing", sa.Text, nullable=False),
        sa.Column("instruments_digest", sa.Text, nullable=False),
        sa.Column("consumption_digest", sa.Text, nullable=False),
        sa.Column("run_id", postgresql.UUID(as_uuid=False), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now()),
    ]


def _instrument_tables(md: sa.MetaData) -> None:
    """Revision 0010: the pipeline's own instrument tables, a column per field."""
    sa.Table(
        INSTRUMENT_TABLES["certificates"],
        md,
        sa.Column("id", sa.Text, primary_key=True),
        sa.Column("mwh", sa.Float(53)),
        sa.Column("energy_source", sa.Text),
        sa.Column("vintage_start", sa.Date),
        sa.Column("vintage_end", sa.Date),
        sa.Column("market", sa.Text),
        sa.Column("retirement_id", sa.Text),
        sa.Column("facility", sa.Text),
        sa.Column("emission_rate", sa.Float(53)),
    )
    sa.Table(
        INSTRUMENT_TABLES["contracts"],
        md,
        sa.Column("id", sa.Text, primary_key=True),
        sa.Column("mwh", sa.Float(53)),
        sa.Column("period_start", sa.Date),
        sa.Column("period_end", sa.Date),
        sa.Column("emission_rate", sa.Float(53)),
        sa.Column("market", sa.Text),
        sa.Column("facility", sa.Text),
    )
    sa.Table(
        INSTRUMENT_TABLES["supplier_rates"],
        md,
        sa.Column("id", sa.Text, primary_key=True),
        sa.Column("supplier", sa.Text),
        sa.Column("year", sa.Integer),
        sa.Column("kg_co2e_per_kwh", sa.Float(53)),
        sa.Column("accounts_for_sold_instruments", sa.Boolean),
    )


def _market_tables(md: sa.MetaData) -> None:
    """Revision 0009: the market-based lines (keyed by boundary, year, activity as text and
    line), those a reallocation superseded, and the instruments refused."""
    sa.Table(
        MARKET_TABLE,
        md,
        *_market_line_columns(),
        sa.PrimaryKeyConstraint(
            "boundary", "reporting_year", "activity_id", "line", name="market_based_results_pkey"
        ),
    )
    sa.Table(
        MARKET_HISTORY_TABLE,
        md,
        *_market_line_columns(),
        sa.Column("superseded_by", postgresql.UUID(as_uuid=False), nullable=False),
        sa.Column("superseded_at", sa.DateTime(timezone=True), server_default=sa.func.now()),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("history_id", sa.BigInteger, sa.Identity(), primary_key=True),
        sa.Index("ix_market_based_results_history_group", "boundary", "reporting_year"),
    )
    sa.Table(
        MARKET_REFUSED_TABLE,
        md,
        sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
        sa.Column("instrument_kind", sa.Text, nullable=False),
        sa.Column("instrument_id", sa.Text, nullable=False),
        sa.Column("boundary", sa.Text),
        sa.Column("reason_code", sa.Text, nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("run_id", postgresql.UUID(as_uuid=False), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now()),
        sa.Column("retired_at", sa.DateTime(timezone=True)),
        sa.Index("ix_market_based_refused_boundary", "boundary"),
    )
    sa.Table(
        MARKET_INPUTS_TABLE,
        md,
        sa.Column("id", sa.SmallInteger, primary_key=True, autoincrement=False),
        sa.Column("inputs_digest", sa.Text, nullable=False),
        sa.Column("run_id", postgresql.UUID(as_uuid=False), nullable=False),
        sa.Column("allocated_at", sa.DateTime(timezone=True), server_default=sa.func.now()),
    )


@functools.lru_cache(maxsize=64)
def table(name: str, schema: str = DEFAULT_SCHEMA, id_type: IdType = "bigint") -> sa.Table:
    """One table's SQLAlchemy definition, in ``schema``: the same object each time.

    Made once per (name, schema, key type): a new one per call would make every statement on
    it new to SQLAlchemy's compiled-statement cache, which keeps 500 of them, each holding a
    whole ``MetaData``; a heartbeat every 5 s made a long follow run grow by some 5 MB a
    minute that way."""
    return build_metadata(id_type, schema).tables[f"{schema}.{name}"]


def qualified(name: str, schema: str = DEFAULT_SCHEMA) -> sql.Identifier:
    """``schema.name``, quoted: every table of the pipeline is named this way, never found
    through ``search_path``."""
    return sql.Identifier(schema, name)


def qualified_text(name: str, schema: str = DEFAULT_SCHEMA) -> str:
    """``"schema"."name"`` as text, for SQL written as text (SQLAlchemy ``text()``)."""
    validate_schema(schema)
    return f'"{schema}"."{validate_identifier(name)}"'


def results_id_type(
    conn: psycopg2.extensions.connection, schema: str = DEFAULT_SCHEMA
) -> IdType | None:
    """The key type of the stored results (None before the tables exist)."""
    with conn.cursor() as cur:
        cur.execute(
            "SELECT t.typname FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid "
            "WHERE a.attrelid = to_regclass(%s) AND a.attname = 'activity_id'",
            (qualified_text(RESULTS_TABLE, schema),),
        )
        found = cur.fetchone()
    conn.commit()
    if found is None:
        return None
    return {"int8": "bigint", "uuid": "uuid"}.get(found[0], "text")  # type: ignore[return-value]


def factors_loaded(engine: sa.Engine, schema: str = DEFAULT_SCHEMA) -> bool:
    """Whether ``emission_factors`` holds any row."""
    with engine.connect() as conn:
        return bool(
            conn.execute(
                sa.text(f"SELECT EXISTS (SELECT 1 FROM {qualified_text(FACTORS_TABLE, schema)})")
            ).scalar()
        )


#: Every column of ``emission_results``, in order (the first of ``emission_results_history``).
STORED_RESULT_COLUMNS: tuple[str, ...] = tuple(c.name for c in table(RESULTS_TABLE).columns)
