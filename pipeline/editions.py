"""The audit trail's building blocks: the code version and the factor editions.

- **Code version**: a hash of the methodology's source (``pipeline/methodology/``,
  ``pipeline/model.py``) and of the airport database's version, the only code and data
  outside ``emission_factors`` that a result depends on.
- **Factor editions**: ``choose_factor_rows`` picks the rows a calculation uses: for a set
  pinned to an edition, only that edition's rows (the year rule then chooses among its years);
  for every other set, the newest loaded row per (set, key, year), as ``pipeline.run`` does.
  A pin may name a kind of file for all of its sets (``egrid=NAME``).
- **Loading an edition**: ``load_edition`` adds a checked file's rows in one transaction,
  and refuses a file whose rows differ from an already loaded edition of the same name (an
  edition, once loaded, never changes: a revised file is loaded under a new name).

A result's own fingerprints (of its input row and its factor rows) are computed beside it in
the batch and stored in its row: see ``pipeline.fingerprint``.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import psycopg2.extensions
import sqlalchemy as sa
from psycopg2 import sql
from sqlalchemy.dialects import postgresql

from pipeline import factors
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


def parse_pins(values: Iterable[str], what: str = "a pin") -> dict[str, str]:
    """``["desnz_air=2025 flat file"]`` → ``{"desnz_air": "2025 flat file"}``; ``what`` names
    the option in the ``EditionError`` for a value of another form."""
    pins: dict[str, str] = {}
    for value in values:
        factor_set, sep, edition = value.partition("=")
        if not sep or not factor_set.strip() or not edition.strip():
            raise EditionError(
                f"{what} is SET=EDITION (e.g. 'desnz_air=2025 flat file'), not {value!r}"
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


def resolve_pins(loaded: Mapping[str, Iterable[str]], pins: Mapping[str, str]) -> dict[str, str]:
    """Pins by factor set: a pin naming a kind of file (``egrid=NAME``, see
    ``factors.KIND_SETS``) pins each of its sets that has that edition loaded. ``EditionError``
    unless every pin names a loaded set (or kind) and one of its loaded editions."""
    resolved: dict[str, str] = {}
    for name, edition in pins.items():
        sets = [name] if name in loaded else list(factors.KIND_SETS.get(name, ()))
        if not sets:
            raise EditionError(f"no factor set {name!r} is loaded")
        having = [s for s in sets if edition in loaded.get(s, ())]
        if not having:
            known = sorted({e for s in sets for e in loaded.get(s, ())})
            raise EditionError(
                f"{name} has no edition {edition!r}; loaded: {', '.join(map(repr, known))}"
            )
        resolved.update(dict.fromkeys(having, edition))
    return resolved


def choose_factor_rows(rows: Sequence[FactorRow], pins: Mapping[str, str]) -> list[FactorRow]:
    """The rows in force: a pinned set's edition only; otherwise the newest per set, key, year."""
    loaded: dict[str, set[str]] = {}
    for r in rows:
        loaded.setdefault(r.factor_set, set()).add(r.edition)
    pins = resolve_pins(loaded, pins)
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
    pins = resolve_pins(loaded, pins)
    in_force = {s: {pins[s]} if s in pins else e for s, e in newest.items()}
    return {s: sorted(e) for s, e in sorted(in_force.items())}


# --- Loading an edition --------------------------------------------------------------------

#: What makes two rows of one edition the same factor: everything but where it was read from.
_COMPARED = ("value", "unit", "kg_co2", "kg_ch4_co2e", "kg_n2o_co2e", "basis", "gwp_set")
#: The differences an ``EditionConflict`` names.
SHOWN_DIFFERENCES = 3
#: Advisory lock key of factor loads (with the schema's hash); schema creation uses 7355608,
#: restatements 7355609, changes of the stored sources 7355610.
_LOCK = 7355611


@dataclass(frozen=True)
class Difference:
    """A row of a file that an already loaded edition of the same name holds otherwise."""

    factor_set: str
    key: str
    year: int
    field: str  # ``value``, another compared field, or ``row`` (not in the loaded edition)
    old: object
    new: object

    def __str__(self) -> str:
        what = "" if self.field in ("value", "row") else f"{self.field} "
        old = "(not in it)" if self.field == "row" else repr(self.old)
        new = repr(self.new)
        return f"{self.factor_set} {self.key} {self.year}: {what}{old} → {new}"


class EditionConflict(EditionError):
    """A file whose rows differ from those of an already loaded edition of the same name."""

    def __init__(self, editions: Sequence[str], differences: Sequence[Difference]) -> None:
        self.editions = list(editions)
        self.differences = list(differences)
        shown = "; ".join(str(d) for d in differences[:SHOWN_DIFFERENCES])
        more = len(differences) - SHOWN_DIFFERENCES
        names = ", ".join(repr(e) for e in editions)
        super().__init__(
            f"the file differs from the loaded edition {names}: {shown}"
            + (f" (and {more} more)" if more > 0 else "")
        )


def differences(loaded: Iterable[FactorRow], rows: Iterable[FactorRow]) -> list[Difference]:
    """How ``rows`` differ from the ``loaded`` rows of the same editions: a compared field of
    the same (set, edition, key, year), or a row the loaded edition does not have; in the
    file's order. (A file that holds only part of a loaded edition does not differ.)"""
    by_identity = {(r.factor_set, r.edition, r.key, r.year): r for r in loaded}
    editions_loaded = {(r.factor_set, r.edition) for r in by_identity.values()}
    found: list[Difference] = []
    for new in rows:
        if (new.factor_set, new.edition) not in editions_loaded:
            continue  # a new edition
        old = by_identity.get((new.factor_set, new.edition, new.key, new.year))
        if old is None:
            found.append(Difference(new.factor_set, new.key, new.year, "row", None, new.value))
            continue
        for name in _COMPARED:
            before, after = getattr(old, name), getattr(new, name)
            if before != after:
                found.append(Difference(new.factor_set, new.key, new.year, name, before, after))
                break
    return found


@dataclass(frozen=True)
class Loaded:
    """What ``load_edition`` did."""

    editions: list[str]  # the editions the file's rows belong to
    added: int  # rows added (0: every row was loaded already)


def load_edition(
    engine: sa.Engine, rows: Sequence[FactorRow], schema: str = tables.DEFAULT_SCHEMA
) -> Loaded:
    """Loads a checked file's rows, in one transaction: refused (``EditionConflict``, nothing
    written) when an edition of the same name is loaded and differs; otherwise the rows not
    loaded yet are added (none, for a file loaded before). Loads into one schema take turns
    (an advisory lock, which needs no privilege on the table; readers go on), so two cannot
    both pass the comparison."""
    factor_table = tables.table(tables.FACTORS_TABLE, schema)
    names = sorted({r.edition for r in rows})
    pairs = sorted({(r.factor_set, r.edition) for r in rows})
    fields = [c for c in FactorRow.__dataclass_fields__ if c != "id"]
    with engine.begin() as conn:
        conn.execute(
            sa.text("SELECT pg_advisory_xact_lock(:k, hashtext(:s))"), {"k": _LOCK, "s": schema}
        )
        loaded = [
            FactorRow(**dict(zip(fields, found, strict=True)))
            for found in conn.execute(
                sa.select(*(factor_table.c[c] for c in fields)).where(
                    sa.tuple_(factor_table.c.factor_set, factor_table.c.edition).in_(pairs)
                )
            )
        ]
        found = differences(loaded, rows)
        if found:
            raise EditionConflict(names, found)
        payload = [{c: getattr(r, c) for c in fields} for r in rows]
        stmt = postgresql.insert(factor_table).on_conflict_do_nothing(
            constraint="uq_factor_identity"
        )
        added = 0
        for start in range(0, len(payload), 5000):
            added += conn.execute(stmt, payload[start : start + 5000]).rowcount or 0
    return Loaded(names, added)
