"""The schema remembers its sources, and each run what its numbers rest on.

A sources file says where the activities are; results computed from one file and retired by a
run that read another (or none: the pipeline's own, empty, tables) would be lost with exit 0.
So the file's text and its sha256 are stored in the pipeline's schema (``SOURCES_TABLE``, one
row per change, the newest in force):

- ``ops.admin init --sources FILE`` stores it (``remember``), ``ops.admin set-sources
  --sources FILE`` changes it on purpose (``replace``), recording who, when and what it
  replaced;
- every command that reads activities resolves its sources with ``resolve``: the file given
  (``--sources`` or ``$EMISSIONS_SOURCES``) when it is the stored one, the stored one when none
  is given, and ``SourcesChanged`` (one line, exit 2) when a different one is given. A schema
  that stores none (initialised before revision 0005, or without a file) reads the file given,
  or the pipeline's own tables, as before; but once a run has recorded that it read a file,
  none given is refused rather than read as the pipeline's own tables;
- every run records the sha256 of what it read and the options that change numbers
  (``calculation_options``), which ``audit.verify`` and ``audit.restate`` recompute with
  (``recorded_options``, ``recorded_limits``).
"""

from __future__ import annotations

import hashlib
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from pipeline.model import ActivityType, InstrumentKind, Limits
from pipeline.store import sources, tables

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

#: How the sources of a run were chosen.
GIVEN, STORED, OWN_TABLES = "file", "schema", "own tables"


class SourcesChanged(ValueError):
    """The sources given are not the schema's: one line that says how to change them."""


class NoStoredSources(ValueError):
    """``set-sources`` on a schema that cannot store them yet (not initialised)."""


@dataclass(frozen=True)
class Stored:
    """One row of ``SOURCES_TABLE``: a sources file as stored, and the change it was."""

    sha256: str
    text: str
    changed_at: Any
    changed_by: str
    previous_sha256: str | None


@dataclass(frozen=True)
class Chosen:
    """The sources a command reads: parsed, with their sha256 (None: the pipeline's own
    tables), where they came from (``GIVEN``, ``STORED``, ``OWN_TABLES``) and the file."""

    sources: dict[ActivityType, sources.Source]
    sha256: str | None
    origin: str
    path: str | None = None

    def describe(self) -> dict[str, Any]:
        """As recorded with a run."""
        return {"sha256": self.sha256, "from": self.origin, "file": self.path}


def digest(text: str) -> str:
    """The sha256 of a sources file's text (as UTF-8), in hex."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def short(sha256: str) -> str:
    return f"{sha256[:12]}…"


def read_text(path: Path) -> str:
    """A sources file's text (``SourcesError`` when it cannot be read)."""
    try:
        return path.read_text(encoding="utf-8")
    except OSError as e:
        raise sources.SourcesError(str(path), [f"cannot read it: {e.strerror or e}"]) from None


def _toml(text: str, where: str) -> dict[str, Any]:
    """A sources file's text as TOML (``SourcesError`` when it is not)."""
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise sources.SourcesError(where, [f"not valid TOML: {e}"]) from None


def parse_text(text: str, where: str) -> dict[ActivityType, sources.Source]:
    """The sources of a file's text (``SourcesError`` lists every problem)."""
    return sources.parse_sources(_toml(text, where), where)


def parse_instruments_text(text: str, where: str) -> dict[InstrumentKind, sources.Source]:
    """The instruments' sources of a file's text (``SourcesError`` lists every problem)."""
    return sources.parse_instruments(_toml(text, where), where)


def _table_exists(conn: sa.Connection, schema: str) -> bool:
    name = tables.qualified_text(tables.SOURCES_TABLE, schema)
    return conn.execute(sa.text("SELECT to_regclass(:t)"), {"t": name}).scalar() is not None


def current(conn: sa.Connection, schema: str = tables.DEFAULT_SCHEMA) -> Stored | None:
    """The schema's sources in force (None: it stores none, or is older than revision 0005)."""
    if not _table_exists(conn, schema):
        return None
    row = conn.execute(
        sa.text(
            "SELECT sha256, text, changed_at, changed_by, previous_sha256 FROM "
            f"{tables.qualified_text(tables.SOURCES_TABLE, schema)} ORDER BY id DESC LIMIT 1"
        )
    ).first()
    return None if row is None else Stored(*row)


def history(conn: sa.Connection, schema: str = tables.DEFAULT_SCHEMA) -> list[Stored]:
    """Every change of the schema's sources, oldest first."""
    if not _table_exists(conn, schema):
        return []
    rows = conn.execute(
        sa.text(
            "SELECT sha256, text, changed_at, changed_by, previous_sha256 FROM "
            f"{tables.qualified_text(tables.SOURCES_TABLE, schema)} ORDER BY id"
        )
    )
    return [Stored(*r) for r in rows]


def _insert(conn: sa.Connection, schema: str, text: str, previous: str | None) -> Stored:
    row = conn.execute(
        sa.text(
            f"INSERT INTO {tables.qualified_text(tables.SOURCES_TABLE, schema)} "
            "(sha256, text, previous_sha256) VALUES (:sha, :text, :previous) "
            "RETURNING sha256, text, changed_at, changed_by, previous_sha256"
        ),
        {"sha": digest(text), "text": text, "previous": previous},
    ).one()
    return Stored(*row)


#: Advisory lock class of changes to a schema's sources (the schema's name is the other key).
_LOCK = 7355610


def _lock(conn: sa.Connection, schema: str) -> None:
    """One change at a time per schema, until the transaction ends: two set-sources at once
    would both name the same previous. An advisory lock needs no privilege on the table."""
    conn.execute(
        sa.text("SELECT pg_advisory_xact_lock(:k, hashtext(:s))"), {"k": _LOCK, "s": schema}
    )


def mismatch(given: str, stored: str) -> SourcesChanged:
    return SourcesChanged(
        f"the sources given (sha256 {short(given)}) differ from the schema's ({short(stored)}): "
        "run `ops.admin set-sources --sources FILE` to change them on purpose"
    )


def remember(conn: sa.Connection, text: str, schema: str = tables.DEFAULT_SCHEMA) -> bool:
    """Stores ``text`` as the schema's sources when it stores none (``init``), in the caller's
    transaction; returns whether it did. The same file again is a no-op; another file raises
    ``SourcesChanged`` (init never changes them: ``set-sources`` does)."""
    _lock(conn, schema)
    found = current(conn, schema)
    if found is not None:
        if found.sha256 != digest(text):
            raise mismatch(digest(text), found.sha256)
        return False
    _insert(conn, schema, text, None)
    return True


def replace(
    conn: sa.Connection, text: str, schema: str = tables.DEFAULT_SCHEMA
) -> tuple[Stored | None, Stored]:
    """Makes ``text`` the schema's sources (``set-sources``), in the caller's transaction;
    returns (the sources it replaced, the sources now). The same file again adds no row."""
    if not _table_exists(conn, schema):
        raise NoStoredSources(
            f"the schema {schema} cannot store sources yet: run python -m ops.admin init first"
        )
    _lock(conn, schema)
    found = current(conn, schema)
    if found is not None and found.sha256 == digest(text):
        return found, found
    return found, _insert(conn, schema, text, found.sha256 if found else None)


def resolve(
    engine: sa.Engine, schema: str = tables.DEFAULT_SCHEMA, path: Path | None = None
) -> Chosen:
    """The sources a command reads (see the module's docstring); ``path`` is the file given
    (``sources.resolve_path``). Raises ``SourcesChanged`` for a file other than the stored
    one, ``SourcesError`` for a file that cannot be used."""
    with engine.connect() as conn:
        found = current(conn, schema)
        last = _last_recorded(conn, schema) if found is None and path is None else None
    if last is not None and last[1] is not None:
        raise SourcesChanged(
            f"no sources file is given and the schema stores none, but run {last[0]} read one "
            f"(sha256 {short(last[1])}): store it with `ops.admin set-sources --sources FILE`"
        )
    if path is not None:
        text = read_text(path)
        sha = digest(text)
        if found is not None and found.sha256 != sha:
            raise mismatch(sha, found.sha256)
        return Chosen(parse_text(text, str(path)), sha, GIVEN, str(path.resolve()))
    if found is not None:
        where = f"the sources stored in {schema}.{tables.SOURCES_TABLE}"
        return Chosen(parse_text(found.text, where), found.sha256, STORED)
    return Chosen(sources.default_sources(schema), None, OWN_TABLES)


def _has_recorded_options(conn: sa.Connection, schema: str) -> bool:
    return (
        conn.execute(
            sa.text(
                "SELECT 1 FROM pg_attribute WHERE attrelid = to_regclass(:t) "
                "AND attname = 'calculation_options' AND NOT attisdropped"
            ),
            {"t": tables.qualified_text(tables.RUNS_TABLE, schema)},
        ).first()
        is not None
    )


def _last_recorded(conn: sa.Connection, schema: str) -> tuple[str, str | None] | None:
    """The last run that recorded its sources, and their sha256 (None: the pipeline's own
    tables): a schema that stores none must not fall back to its own tables after a run that
    read a file."""
    if not _has_recorded_options(conn, schema):
        return None
    row = conn.execute(
        sa.text(
            "SELECT run_id, sources_sha256 FROM "
            f"{tables.qualified_text(tables.RUNS_TABLE, schema)} "
            "WHERE calculation_options IS NOT NULL ORDER BY started_at DESC LIMIT 1"
        )
    ).first()
    return None if row is None else (str(row[0]), row[1])


def calculation_options(
    radiative_forcing: bool | None,
    limits: Limits | None,
    pins: Mapping[str, str],
    chosen: Chosen,
) -> dict[str, Any]:
    """What a run records of the options that change numbers (``calculation_runs``'s
    ``calculation_options``). ``radiative_forcing`` and ``limits`` are None for a restatement
    that keeps each result's own."""
    return {
        "radiative_forcing": radiative_forcing,
        "limits": None if limits is None else _limits_dict(limits),
        "factor_pins": dict(sorted(pins.items())),
        "sources": chosen.describe(),
        # The time zone a source's timestamptz activity_date is read in, where it says one.
        "time_zones": {
            t: zone
            for t, s in sorted(chosen.sources.items())
            if (zone := getattr(s, "time_zone", None)) is not None
        },
    }


def _limits_dict(limits: Limits) -> dict[str, float]:
    return {
        "max_kwh": limits.max_kwh,
        "max_spend_usd": limits.max_spend_usd,
        "max_passengers": limits.max_passengers,
        "max_distance_km": limits.max_distance_km,
    }


def recorded_limits(options: Mapping[str, Any] | None) -> Limits | None:
    """The plausibility limits a run recorded (None: it recorded none)."""
    found = (options or {}).get("limits")
    if not found:
        return None
    return Limits(
        max_kwh=float(found["max_kwh"]),
        max_spend_usd=float(found["max_spend_usd"]),
        max_passengers=int(found["max_passengers"]),
        max_distance_km=float(found["max_distance_km"]),
    )


def loosest(found: list[Limits]) -> Limits | None:
    """The largest of each bound: what lets through every result computed within any of
    them (None when there are none)."""
    if not found:
        return None
    return Limits(
        max_kwh=max(x.max_kwh for x in found),
        max_spend_usd=max(x.max_spend_usd for x in found),
        max_passengers=max(x.max_passengers for x in found),
        max_distance_km=max(x.max_distance_km for x in found),
    )


def recorded_options(
    conn: sa.Connection, schema: str = tables.DEFAULT_SCHEMA
) -> dict[str, dict[str, Any]]:
    """Per run (restatements included): the options it recorded that change numbers; runs
    recorded before revision 0005 have none."""
    if not _has_recorded_options(conn, schema):
        return {}
    rows = conn.execute(
        sa.text(
            "SELECT run_id, calculation_options FROM "
            f"{tables.qualified_text(tables.RUNS_TABLE, schema)} "
            "WHERE calculation_options IS NOT NULL"
        )
    )
    return {str(run_id): dict(options) for run_id, options in rows}
