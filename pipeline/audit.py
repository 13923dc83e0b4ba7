"""The audit trail's building blocks: code version, factor editions, and result fingerprints.

- **Code version**: a hash of the methodology's source (``pipeline/methodology/``,
  ``pipeline/model.py``) and of the airport database's version, the only code and data
  outside ``emission_factors`` that a result depends on.
- **Factor editions**: ``choose_factor_rows`` picks the rows a calculation uses: for a set
  pinned to an edition, only that edition's rows (the year rule then chooses among its years);
  for every other set, the newest loaded row per (set, key, year), as ``pipeline.run`` does.
- **Fingerprints**: ``seal`` stores, per result, an MD5 of its input row, of its factor rows
  (the emission factor and, for spend, the FX and CPI rows) and the code version, computed in
  SQL in one set-based statement after the results are written, so the hot path pays nothing.
  ``fingerprints_now`` computes the same digests over the rows as they are now: ``verify``
  compares the two to tell a changed input or factor from a result that does not reproduce.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
from collections.abc import Iterable, Mapping, Sequence
from functools import lru_cache
from pathlib import Path

import psycopg2.extensions
import sqlalchemy as sa
from psycopg2 import sql

from pipeline import db
from pipeline.model import ACTIVITY_TYPES, ActivityType, FactorRow, activity_fields

_PACKAGE = Path(__file__).resolve().parent
_FACTOR_FIELDS = (
    "id",
    "factor_set",
    "key",
    "year",
    "value",
    "unit",
    "kg_co2",
    "kg_ch4_co2e",
    "kg_n2o_co2e",
    "edition",
)


@lru_cache(maxsize=1)
def code_version() -> str:
    """``methodology-<sha256 prefix>``: the source the results depend on, and airportsdata's
    version (airport coordinates decide flight distances)."""
    digest = hashlib.sha256()
    files = sorted((_PACKAGE / "methodology").glob("*.py")) + [_PACKAGE / "model.py"]
    for path in files:
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    try:
        airports = importlib.metadata.version("airportsdata")
    except importlib.metadata.PackageNotFoundError:
        airports = "absent"
    digest.update(f"airportsdata={airports}".encode())
    return f"methodology-{digest.hexdigest()[:16]}"


# --- Factor editions -----------------------------------------------------------------------


class EditionError(ValueError):
    """A pin names a factor set or edition that is not loaded."""


def parse_pins(values: Iterable[str]) -> dict[str, str]:
    """``["desnz_air=2025 flat file"]`` → ``{"desnz_air": "2025 flat file"}``."""
    pins: dict[str, str] = {}
    for value in values:
        factor_set, sep, edition = value.partition("=")
        if not sep or not factor_set.strip() or not edition.strip():
            raise EditionError(
                f"a pin is SET=EDITION (e.g. 'desnz_air=2025 flat file'), not {value!r}"
            )
        pins[factor_set.strip()] = edition.strip()
    return pins


def read_all_factor_rows(conn: psycopg2.extensions.connection) -> list[FactorRow]:
    """Every row of ``emission_factors``, every edition, oldest first."""
    cols = ("id",) + tuple(f for f in FactorRow.__dataclass_fields__ if f != "id")
    query = sql.SQL("SELECT {} FROM {} ORDER BY id").format(
        sql.SQL(", ").join(map(sql.Identifier, cols)), sql.Identifier(db.FACTORS_TABLE)
    )
    with conn.cursor() as cur:
        cur.execute(query)
        fetched = cur.fetchall()
    conn.commit()
    return [FactorRow(**dict(zip(cols, row, strict=True))) for row in fetched]


def choose_factor_rows(rows: Sequence[FactorRow], pins: Mapping[str, str]) -> list[FactorRow]:
    """The rows in force: a pinned set's edition only; otherwise the newest per set, key, year."""
    loaded: dict[str, set[str]] = {}
    for r in rows:
        loaded.setdefault(r.factor_set, set()).add(r.edition)
    for factor_set, edition in pins.items():
        if factor_set not in loaded:
            raise EditionError(f"no factor set {factor_set!r} is loaded")
        if edition not in loaded[factor_set]:
            known = ", ".join(repr(e) for e in sorted(loaded[factor_set]))
            raise EditionError(f"{factor_set} has no edition {edition!r}; loaded: {known}")
    newest: dict[tuple[str, str, int], FactorRow] = {}
    for r in rows:
        if r.factor_set in pins and r.edition != pins[r.factor_set]:
            continue
        identity = (r.factor_set, r.key, r.year)
        current = newest.get(identity)
        if current is None or (r.id or 0) > (current.id or 0):
            newest[identity] = r
    return sorted(newest.values(), key=lambda r: r.id or 0)


def editions_in_force(rows: Iterable[FactorRow]) -> dict[str, list[str]]:
    """Per factor set, the editions the chosen rows come from."""
    found: dict[str, set[str]] = {}
    for r in rows:
        found.setdefault(r.factor_set, set()).add(r.edition)
    return {s: sorted(e) for s, e in sorted(found.items())}


def current_editions(
    engine: sa.Engine, pins: Mapping[str, str] | None = None
) -> dict[str, list[str]]:
    """The editions in force in the database, for the run summary and the report."""
    with db.raw_connection(engine) as conn:
        rows = read_all_factor_rows(conn)
    return editions_in_force(choose_factor_rows(rows, pins or {}))


# --- Fingerprints --------------------------------------------------------------------------


def _factor_columns(alias: str) -> list[sql.Composable]:
    return [
        sql.SQL("{}.{}").format(sql.Identifier(alias), sql.Identifier(c)) for c in _FACTOR_FIELDS
    ]


def fingerprint_query(
    activity_type: ActivityType,
    where: sql.Composable,
    extra: Sequence[sql.Composable] = (),
    tail: sql.Composable | None = None,
) -> sql.Composed:
    """``activity_id, input_fp, factor_fp, run_id, radiative_forcing`` (then ``extra``) of the
    results of one type matching ``where`` (aliases: ``r`` result, ``a`` activity, ``fp``
    stored fingerprint).

    The input digest is over the activity's columns in declaration order (NULL when the
    activity is gone), the factor digest over the emission factor row and the FX and CPI rows
    (NULL fields for the types without them).
    """
    input_cols = sql.SQL(", ").join(
        sql.SQL("a.{}").format(sql.Identifier(c)) for c in activity_fields(activity_type)
    )
    factor_cols = sql.SQL(", ").join(
        [c for alias in ("f", "fx", "cpi", "base") for c in _factor_columns(alias)]
    )
    columns = [
        sql.SQL("r.activity_id"),
        sql.SQL("CASE WHEN a.id IS NULL THEN NULL ELSE md5(ROW({})::text) END").format(input_cols),
        sql.SQL("md5(ROW({})::text)").format(factor_cols),
        sql.SQL("r.run_id"),
        sql.SQL("r.radiative_forcing"),
        *extra,
    ]
    return sql.SQL(
        "SELECT {columns} "
        "FROM {results} r LEFT JOIN {activities} a ON a.id = r.activity_id "
        "LEFT JOIN {factors} f ON f.id = r.factor_id "
        "LEFT JOIN {factors} fx ON fx.id = r.fx_factor_id "
        "LEFT JOIN {factors} cpi ON cpi.id = r.cpi_factor_id "
        "LEFT JOIN {factors} base ON base.id = r.cpi_base_factor_id "
        "LEFT JOIN {fingerprints} fp ON fp.activity_type = r.activity_type "
        "AND fp.activity_id = r.activity_id "
        "WHERE r.activity_type = {t} AND {where} {tail}"
    ).format(
        columns=sql.SQL(", ").join(columns),
        results=sql.Identifier(db.RESULTS_TABLE),
        activities=sql.Identifier(db.ACTIVITY_TABLES[activity_type]),
        factors=sql.Identifier(db.FACTORS_TABLE),
        fingerprints=sql.Identifier(db.FINGERPRINTS_TABLE),
        t=sql.Literal(activity_type),
        where=where,
        tail=tail if tail is not None else sql.SQL(""),
    )


def stable_text(cur: psycopg2.extensions.cursor) -> None:
    """Text forms that do not depend on the session: ISO dates, shortest exact floats."""
    cur.execute("SET LOCAL DateStyle = 'ISO, YMD'")
    cur.execute("SET LOCAL extra_float_digits = 1")


def seal(
    engine: sa.Engine,
    run_id: str,
    activity_types: Sequence[ActivityType] = ACTIVITY_TYPES,
) -> int:
    """Store the fingerprints of the results written by ``run_id`` (a run or a restatement).

    One ``INSERT … SELECT`` per type, in one transaction; a result sealed before (by an
    earlier restatement) gets its new fingerprint. Returns the number of results sealed.
    """
    version = code_version()
    sealed = 0
    with db.raw_connection(engine) as conn:
        with conn.cursor() as cur:
            stable_text(cur)
            # Right after a run, the statistics still describe the tables before it: PostgreSQL
            # would expect a handful of results and join them row by row. It is a bulk join.
            cur.execute("SET LOCAL enable_nestloop = off")
            for t in activity_types:
                select = fingerprint_query(
                    t, sql.SQL("r.run_id = {} AND a.id IS NOT NULL").format(sql.Literal(run_id))
                )
                cur.execute(
                    sql.SQL(
                        "INSERT INTO {fp} (activity_type, activity_id, input_fingerprint, "
                        "factor_fingerprint, code_version, fingerprint, run_id) "
                        "SELECT {t}, s.activity_id, s.input_fp, s.factor_fp, {v}, "
                        "md5(s.input_fp || ':' || s.factor_fp || ':' || {v} || ':' || "
                        "coalesce(s.radiative_forcing::text, '')), s.run_id "
                        "FROM ({select}) s(activity_id, input_fp, factor_fp, run_id, "
                        "radiative_forcing) "
                        "ON CONFLICT (activity_type, activity_id) DO UPDATE SET "
                        "input_fingerprint = EXCLUDED.input_fingerprint, "
                        "factor_fingerprint = EXCLUDED.factor_fingerprint, "
                        "code_version = EXCLUDED.code_version, "
                        "fingerprint = EXCLUDED.fingerprint, run_id = EXCLUDED.run_id, "
                        "sealed_at = now()"
                    ).format(
                        fp=sql.Identifier(db.FINGERPRINTS_TABLE),
                        t=sql.Literal(t),
                        v=sql.Literal(version),
                        select=select,
                    )
                )
                sealed += cur.rowcount
        conn.commit()
    return sealed
