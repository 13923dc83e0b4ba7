"""The audit trail's building blocks: the code version and the factor editions.

- **Code version**: a hash of the methodology's source (``pipeline/methodology/``,
  ``pipeline/model.py``) and of the airport database's version, the only code and data
  outside ``emission_factors`` that a result depends on.
- **Factor editions**: ``choose_factor_rows`` picks the rows a calculation uses: for a set
  pinned to an edition, only that edition's rows (the year rule then chooses among its years);
  for every other set, the newest loaded row per (set, key, year), as ``pipeline.run`` does.

A result's own fingerprints (of its input row and its factor rows) are computed beside it in
the batch and stored in its row: see ``pipeline.fingerprint``.
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

from pipeline.model import FactorRow
from pipeline.store import connections, tables

_PACKAGE = Path(__file__).resolve().parent


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


def read_all_factor_rows(
    conn: psycopg2.extensions.connection, schema: str = tables.DEFAULT_SCHEMA
) -> list[FactorRow]:
    """Every row of ``emission_factors``, every edition, oldest first."""
    cols = ("id",) + tuple(f for f in FactorRow.__dataclass_fields__ if f != "id")
    query = sql.SQL("SELECT {} FROM {} ORDER BY id").format(
        sql.SQL(", ").join(map(sql.Identifier, cols)),
        tables.qualified(tables.FACTORS_TABLE, schema),
    )
    with conn.cursor() as cur:
        cur.execute(query)
        fetched = cur.fetchall()
    conn.commit()
    return [FactorRow(**dict(zip(cols, row, strict=True))) for row in fetched]


def check_pins(loaded: Mapping[str, Iterable[str]], pins: Mapping[str, str]) -> None:
    """``EditionError`` unless every pin names a loaded set and one of its loaded editions."""
    for factor_set, edition in pins.items():
        if factor_set not in loaded:
            raise EditionError(f"no factor set {factor_set!r} is loaded")
        if edition not in loaded[factor_set]:
            known = ", ".join(repr(e) for e in sorted(loaded[factor_set]))
            raise EditionError(f"{factor_set} has no edition {edition!r}; loaded: {known}")


def choose_factor_rows(rows: Sequence[FactorRow], pins: Mapping[str, str]) -> list[FactorRow]:
    """The rows in force: a pinned set's edition only; otherwise the newest per set, key, year."""
    loaded: dict[str, set[str]] = {}
    for r in rows:
        loaded.setdefault(r.factor_set, set()).add(r.edition)
    check_pins(loaded, pins)
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
    engine: sa.Engine, pins: Mapping[str, str] | None = None, schema: str = tables.DEFAULT_SCHEMA
) -> dict[str, list[str]]:
    """The editions in force in the database, for the run summary and the report: what
    ``editions_in_force(choose_factor_rows(every row, pins))`` gives, worked out by the
    database (every run asks, and reading every factor row costs a tenth of a second)."""
    pins = pins or {}
    query = sql.SQL(
        "SELECT true, factor_set, edition FROM {f} GROUP BY factor_set, edition "
        "UNION ALL SELECT DISTINCT false, factor_set, edition FROM ("
        "SELECT DISTINCT ON (factor_set, key, year) factor_set, edition FROM {f} "
        "ORDER BY factor_set, key, year, id DESC) newest"
    ).format(f=tables.qualified(tables.FACTORS_TABLE, schema))
    with connections.raw_connection(engine) as conn:
        with conn.cursor() as cur:
            cur.execute(query)
            found = cur.fetchall()
        conn.commit()
    loaded: dict[str, set[str]] = {}
    newest: dict[str, set[str]] = {}
    for is_loaded, factor_set, edition in found:
        (loaded if is_loaded else newest).setdefault(factor_set, set()).add(edition)
    check_pins(loaded, pins)
    in_force = {s: {pins[s]} if s in pins else e for s, e in newest.items()}
    return {s: sorted(e) for s, e in sorted(in_force.items())}
