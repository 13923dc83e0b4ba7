"""Sources: where each activity type is read from, the pipeline's own tables or a team's.

A sources file (TOML; ``--sources FILE`` or ``$EMISSIONS_SOURCES``) maps each activity type
to a table (schema-qualified) or a ``SELECT``, and each field the methodology needs to a
column, an SQL expression, a constant, or a column (or expression) with a value map; with the
key column and the row-version column. See docs/adoption.md for the format.

- ``load_sources`` reads a file and checks its shape (no database);
- ``pipeline.store.checks.check_sources`` checks the sources against the catalogue, in a
  read-only transaction, and reports every problem at once, by name. It writes nothing;
- ``relation`` is the SQL that reads a source: one row per activity, with the columns the
  methodology names (``id``, its fields, ``activity_version``), cast to the types it expects.

Identifiers are quoted with ``psycopg2.sql.Identifier``; constants and value maps are
``psycopg2.sql.Literal`` (the driver's own quoting: a ``COPY`` cannot take bind parameters).
SQL expressions and queries are the file's author's own SQL, checked before anything runs.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import psycopg2.extensions
from psycopg2 import sql

from pipeline.model import (
    ACTIVITY_CLASSES,
    ACTIVITY_TYPES,
    INSTRUMENT_CLASSES,
    INSTRUMENT_KINDS,
    MARKET_FIELDS,
    OPTIONAL_INSTRUMENT_FIELDS,
    ActivityType,
    InstrumentKind,
)
from pipeline.store.tables import ACTIVITY_TABLES, CHANGE_COLUMN, DEFAULT_SCHEMA

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

#: The sources file, when ``--sources`` is not given.
SOURCES_ENV = "EMISSIONS_SOURCES"

KeyType = Literal["bigint", "uuid", "text"]
#: What a source holds: activities, or the market-based method's instruments.
SourceKind = ActivityType | InstrumentKind

#: The type each field is read as (the methodology's record types).
_WANTED = {
    "float": "double precision",
    "str": "text",
    "int": "integer",
    "bool": "boolean",
    "date": "date",
}
#: Fields that may be left out of a mapping: they are then NULL (see docs/methodology.md).
OPTIONAL_FIELDS = frozenset({"country", "distance_km"})

_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_$]{0,62}$")
#: One part of a name, as PostgreSQL reads it: ``"Quoted ""as is"""`` or unquoted (folded to
#: lower case).
_NAME_PART = re.compile(r'"((?:[^"]|"")+)"|([A-Za-z_][A-Za-z0-9_$]*)')
#: The time zone a timestamptz ``activity_date`` is converted in, unless the file says another.
DEFAULT_TIME_ZONE = "UTC"
#: Settings of the file itself, beside its ``[activity_type]`` tables.
_TOP_SETTINGS = frozenset({"time_zone"})


class SourcesError(ValueError):
    """The sources cannot be used; the message lists every problem found."""

    def __init__(self, where: str, problems: Sequence[str]) -> None:
        self.problems = list(problems)
        count = f"{len(problems)} problem{'s' if len(problems) != 1 else ''}"
        super().__init__(f"{where}: {count}:\n" + "\n".join(f"  - {p}" for p in problems))


def field_types(kind: SourceKind) -> dict[str, str]:
    """The methodology's fields of an activity type or instrument kind (not ``id``), with the
    SQL type each is read as."""
    record = next((ACTIVITY_CLASSES[t] for t in ACTIVITY_TYPES if t == kind), None)
    if record is None:
        record = next(INSTRUMENT_CLASSES[k] for k in INSTRUMENT_KINDS if k == kind)
    out: dict[str, str] = {}
    for f in dataclasses.fields(record)[1:]:
        base = str(f.type).replace(" | None", "").replace("datetime.", "").strip()
        out[f.name] = _WANTED[base]
    return out


def optional_fields(kind: SourceKind) -> frozenset[str]:
    """The fields a mapping of ``kind`` may leave out (they are then NULL)."""
    found = next((k for k in INSTRUMENT_KINDS if k == kind), None)
    return OPTIONAL_FIELDS if found is None else OPTIONAL_INSTRUMENT_FIELDS[found]


@dataclass(frozen=True)
class Field:
    """How one field is read: a column, an SQL expression or a constant; a column or an
    expression may have a value map (values not in it pass through unchanged)."""

    column: str | None = None
    expression: str | None = None
    value: str | int | float | bool | None = None
    mapping: tuple[tuple[str, str], ...] = ()
    #: The type (``pg_type.typname``) of the column or expression, filled in by ``check``: a
    #: ``timestamptz`` read as a date is converted in the source's time zone.
    sql_type: str | None = None

    def describe(self) -> str:
        if self.column is not None:
            return f"column {self.column}"
        if self.expression is not None:
            return f"expression {self.expression!r}"
        return f"constant {self.value!r}"


@dataclass(frozen=True)
class Source:
    """Where one activity type (or one kind of instrument) is read from. ``key_type`` and
    ``version_type`` are filled in by ``check`` from the catalogue. An instrument's source
    (``instrument`` set) belongs to electricity, the activity its instruments are allocated to.
    """

    activity_type: ActivityType
    table: tuple[str, str] | None = None
    query: str | None = None
    key: str = "id"
    version: str = "xmin"
    fields: tuple[tuple[str, Field], ...] = ()
    key_type: KeyType | None = None
    version_type: str | None = None
    #: An indexed column that grows with every insert and update (a number from a sequence,
    #: an ``updated_at`` timestamp): what the follow mode finds changes by. Its PostgreSQL
    #: type is filled in by ``check``.
    follow_by: str | None = None
    follow_type: str | None = None
    #: Where a ``timestamptz`` becomes a date: the same day whatever the session's TimeZone.
    time_zone: str = DEFAULT_TIME_ZONE
    #: The kind of instrument it holds, for a source of the market-based method's instruments.
    instrument: InstrumentKind | None = None
    #: Electricity's optional fields for the market-based method (``facility``, ``supplier``),
    #: read beside the methodology's fields, never as its input (docs/scope2.md).
    market_fields: tuple[tuple[str, Field], ...] = ()

    @property
    def kind(self) -> SourceKind:
        """What it holds: its instrument kind, else its activity type."""
        return self.instrument or self.activity_type

    @property
    def name(self) -> str:
        """How messages name it: ``schema.table`` (quoted where SQL needs it), or ``query``
        for a SELECT."""
        if self.table is None:
            return f"the {self.kind} query"
        return ".".join(quote_name(p) for p in self.table)

    def field(self, name: str) -> Field | None:
        return dict(self.fields).get(name)


Sources = Mapping[ActivityType, Source]


def default_sources(schema: str = DEFAULT_SCHEMA) -> dict[ActivityType, Source]:
    """The pipeline's own activity tables, in its schema: used when no sources file is given."""
    return {
        t: Source(
            activity_type=t,
            table=(schema, ACTIVITY_TABLES[t]),
            fields=tuple((f, Field(column=f)) for f in field_types(t)),
            follow_by=CHANGE_COLUMN,
            follow_type="int8",
        )
        for t in ACTIVITY_TYPES
    }


def as_source(source: Source | ActivityType, schema: str = DEFAULT_SCHEMA) -> Source:
    """A source, or the pipeline's own table of an activity type."""
    return default_sources(schema)[source] if isinstance(source, str) else source


def quote_name(name: str) -> str:
    """A name as SQL writes it: bare when PostgreSQL would read it back unchanged, else in
    double quotes (``"Ops Data"``)."""
    if re.fullmatch(r"[a-z_][a-z0-9_$]*", name):
        return name
    return '"' + name.replace('"', '""') + '"'


def parse_table_name(text: str) -> tuple[str, str] | None:
    """``schema.name`` as PostgreSQL reads it: unquoted parts folded to lower case, quoted
    ones (``"Ops Data"."MeterReadings"``, ``""`` for a quote) as written; None unless it is
    exactly two parts of at most 63 bytes."""
    parts: list[str] = []
    pos = 0
    while True:
        found = _NAME_PART.match(text, pos)
        if found is None:
            return None
        quoted, bare = found.groups()
        parts.append(quoted.replace('""', '"') if quoted is not None else bare.lower())
        pos = found.end()
        if pos == len(text):
            break
        if text[pos] != ".":
            return None
        pos += 1
    if len(parts) != 2 or any(len(p.encode()) > 63 or "\0" in p for p in parts):
        return None
    return parts[0], parts[1]


def resolve_path(given: str | None) -> Path | None:
    """The sources file: the one given, else ``$EMISSIONS_SOURCES``, else none."""
    chosen = given or os.environ.get(SOURCES_ENV) or None
    return Path(chosen) if chosen else None


def load_sources(path: Path | None, schema: str = DEFAULT_SCHEMA) -> dict[ActivityType, Source]:
    """The sources of a file (``default_sources`` without one). Checks the file's shape, not
    the database: ``SourcesError`` lists every problem."""
    if path is None:
        return default_sources(schema)
    try:
        document = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise SourcesError(str(path), [f"cannot read it: {e.strerror or e}"]) from None
    except tomllib.TOMLDecodeError as e:
        raise SourcesError(str(path), [f"not valid TOML: {e}"]) from None
    return parse_sources(document, str(path))


def parse_sources(document: Mapping[str, Any], where: str) -> dict[ActivityType, Source]:
    """Sources from a parsed sources document; ``SourcesError`` lists every problem (of its
    instruments' sections too)."""
    return _parse_document(document, where)[0]


def parse_instruments(document: Mapping[str, Any], where: str) -> dict[InstrumentKind, Source]:
    """The instruments' sources of a parsed sources document (``[certificates]``,
    ``[contracts]``, ``[supplier_rates]``; none mapped: empty); ``SourcesError`` lists every
    problem of the document."""
    return _parse_document(document, where)[1]


def load_instruments(path: Path | None) -> dict[InstrumentKind, Source]:
    """The instruments' sources of a sources file (none without one)."""
    if path is None:
        return {}
    try:
        document = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise SourcesError(str(path), [f"cannot read it: {e.strerror or e}"]) from None
    except tomllib.TOMLDecodeError as e:
        raise SourcesError(str(path), [f"not valid TOML: {e}"]) from None
    return parse_instruments(document, str(path))


def _parse_document(
    document: Mapping[str, Any], where: str
) -> tuple[dict[ActivityType, Source], dict[InstrumentKind, Source]]:
    problems: list[str] = []
    sources: dict[ActivityType, Source] = {}
    instruments: dict[InstrumentKind, Source] = {}
    for name in document:
        if name not in (*ACTIVITY_TYPES, *INSTRUMENT_KINDS) and name not in _TOP_SETTINGS:
            problems.append(
                f"[{name}]: not an activity type ({', '.join(ACTIVITY_TYPES)}) or a kind of "
                f"instrument ({', '.join(INSTRUMENT_KINDS)})"
            )
    default_zone = _time_zone("", document.get("time_zone", DEFAULT_TIME_ZONE), problems)
    for kind in (*ACTIVITY_TYPES, *INSTRUMENT_KINDS):
        section = document.get(kind)
        if section is None:
            continue
        if not isinstance(section, Mapping):
            problems.append(f"[{kind}] must be a table of settings")
            continue
        found = _parse_source(kind, section, problems)
        if found is None:
            continue
        zone = _time_zone(f"[{kind}] ", section.get("time_zone"), problems)
        found = dataclasses.replace(found, time_zone=zone or default_zone)
        if found.instrument is not None:
            instruments[found.instrument] = found
        else:
            sources[found.activity_type] = found
    if not sources and not problems:
        problems.append(f"no activity type is mapped: add [{'], ['.join(ACTIVITY_TYPES)}]")
    if problems:
        raise SourcesError(where, problems)
    return sources, instruments


def _parse_source(
    kind: SourceKind, section: Mapping[str, Any], problems: list[str]
) -> Source | None:
    at = f"[{kind}]"
    before = len(problems)
    known = {"table", "query", "key", "version", "fields", "follow_by", "time_zone"}
    for key in section:
        if key not in known:
            problems.append(f"{at} {key}: unknown setting ({', '.join(sorted(known))})")
    table, query = section.get("table"), section.get("query")
    parsed_table: tuple[str, str] | None = None
    if (table is None) == (query is None):
        problems.append(f'{at} needs exactly one of table = "schema.name" or query = "SELECT …"')
    elif table is not None:
        parsed_table = parse_table_name(str(table))
        if parsed_table is None:
            problems.append(
                f"{at} table = {table!r}: write it schema-qualified, as schema.name "
                "(in double quotes where a name has capitals or spaces: '\"Ops Data\".readings')"
            )
    elif not isinstance(query, str) or not query.strip():
        problems.append(f"{at} query must be a SELECT statement")
    key = section.get("key", "id")
    if not _is_name(key):
        problems.append(f"{at} key = {key!r}: name a column")
    version = section.get("version", "xmin" if table is not None else None)
    if version is None:
        problems.append(
            f"{at} version: a query has no xmin; name a column that changes whenever the row "
            "does (an updated_at timestamp or a version number)"
        )
    elif not _is_name(version):
        problems.append(f"{at} version = {version!r}: name a column (or xmin)")
    follow_by = section.get("follow_by")
    if follow_by is not None and not _is_name(follow_by):
        problems.append(f"{at} follow_by = {follow_by!r}: name an indexed column")
    raw_fields = section.get("fields", {})
    if not isinstance(raw_fields, Mapping):
        problems.append(f'{at} fields must be a table: field = "column" or {{ … }}')
        raw_fields = {}
    wanted = field_types(kind)
    extra = MARKET_FIELDS if kind == "electricity" else ()
    for name in raw_fields:
        if name not in wanted and name not in extra:
            problems.append(
                f"{at}.fields.{name}: not a field of {kind} ({', '.join((*wanted, *extra))})"
            )
    fields: list[tuple[str, Field]] = []
    for name in wanted:
        spec = raw_fields.get(name)
        if spec is None:
            if name in optional_fields(kind):
                fields.append((name, Field(value=None)))
            else:
                problems.append(f"{at}.fields.{name}: missing (the methodology needs it)")
            continue
        parsed = _parse_field(f"{at}.fields.{name}", spec, problems)
        if parsed is not None:
            fields.append((name, parsed))
    market_fields: list[tuple[str, Field]] = []
    for name in extra:
        if name in raw_fields:
            parsed = _parse_field(f"{at}.fields.{name}", raw_fields[name], problems)
            if parsed is not None:
                market_fields.append((name, parsed))
    if len(problems) > before:
        return None
    instrument = next((k for k in INSTRUMENT_KINDS if k == kind), None)
    return Source(
        activity_type=next((t for t in ACTIVITY_TYPES if t == kind), "electricity"),
        instrument=instrument,
        market_fields=tuple(market_fields),
        table=parsed_table,
        query=str(query) if query is not None else None,
        key=str(key),
        version=str(version),
        fields=tuple(fields),
        follow_by=str(follow_by) if follow_by is not None else None,
    )


def _is_name(name: Any) -> bool:
    """A column's name as it is (capitals and spaces included: it is always quoted)."""
    return isinstance(name, str) and 0 < len(name.encode()) <= 63 and "\0" not in name


def _time_zone(at: str, zone: Any, problems: list[str]) -> str:
    """A ``time_zone`` setting (``""`` when not given); the database checks that it knows it."""
    if zone is None:
        return ""
    if not isinstance(zone, str) or not zone.strip() or len(zone) > 64:
        problems.append(f'{at}time_zone = {zone!r}: name a time zone, as time_zone = "UTC"')
        return ""
    return zone


def _parse_field(at: str, spec: Any, problems: list[str]) -> Field | None:
    if isinstance(spec, str):
        if not _IDENT.match(spec):
            problems.append(
                f"{at} = {spec!r}: a plain string names a column; write an expression as "
                f"{{ sql = {spec!r} }} and a constant as {{ value = … }}"
            )
            return None
        return Field(column=spec)
    if not isinstance(spec, Mapping):
        problems.append(f"{at}: a column name, or {{ column | sql | value = … [, map = {{…}}] }}")
        return None
    unknown = set(spec) - {"column", "sql", "value", "map"}
    if unknown:
        problems.append(f"{at}: unknown keys {sorted(unknown)} (column, sql, value, map)")
        return None
    given = [k for k in ("column", "sql", "value") if k in spec]
    if len(given) != 1:
        problems.append(f"{at}: give exactly one of column, sql or value")
        return None
    mapping: tuple[tuple[str, str], ...] = ()
    if "map" in spec:
        raw = spec["map"]
        if "value" in spec or not isinstance(raw, Mapping):
            problems.append(f'{at}: map goes with a column or sql, as map = {{ FROM = "to" }}')
            return None
        if not all(isinstance(v, str) for v in raw.values()):
            problems.append(f"{at}: the values of map must be strings")
            return None
        mapping = tuple((str(k), str(v)) for k, v in raw.items())
    if "column" in spec:
        column = spec["column"]
        if not _is_name(column):
            problems.append(f"{at}: column = {column!r} is not a column name")
            return None
        return Field(column=column, mapping=mapping)
    if "sql" in spec:
        expression = spec["sql"]
        if not isinstance(expression, str) or not expression.strip():
            problems.append(f"{at}: sql must be an SQL expression")
            return None
        return Field(expression=expression, mapping=mapping)
    value = spec["value"]
    if not isinstance(value, str | int | float | bool):
        problems.append(f"{at}: value must be a string, number or boolean")
        return None
    return Field(value=value)


# --- SQL -----------------------------------------------------------------------------------


def read_only(conn: psycopg2.extensions.connection) -> None:
    """Makes the connection's transaction read-only, from here to its end. Every transaction
    that evaluates a source (a table's expressions, a query) is: the sources' SQL is a team's
    own, and whatever it would write (a function that inserts, a sequence) fails instead."""
    with conn.cursor() as cur:
        cur.execute("SET TRANSACTION READ ONLY")


@contextlib.contextmanager
def read_only_within(cur: psycopg2.extensions.cursor) -> Iterator[None]:
    """Inside a transaction that writes, a read-only part: a savepoint with
    ``transaction_read_only`` on, rolled back at the end (which turns it off again; SQL cannot
    turn it off itself). For a source's SQL that must be read under the locks of the writes it
    decides (a compare-and-swap on the source's current version): fetch what it reads inside;
    anything done inside is undone, and SQL that writes fails there."""
    cur.execute("SAVEPOINT user_sql")
    try:
        cur.execute("SET LOCAL transaction_read_only = on")
        yield
    finally:
        cur.execute("ROLLBACK TO SAVEPOINT user_sql")
        cur.execute("RELEASE SAVEPOINT user_sql")


def _user_sql(text: str) -> sql.SQL:
    """The file author's SQL, with ``%`` doubled: the composed query is later formatted with
    parameters, and a ``LIKE 'a%'`` must stay as written."""
    return sql.SQL(text.replace("%", "%%"))


def from_clause(source: Source) -> sql.Composed:
    """``schema.table s`` or ``(SELECT …) s``."""
    if source.table is not None:
        return sql.SQL("{} s").format(sql.Identifier(*source.table))
    assert source.query is not None
    return sql.SQL("({}) s").format(_user_sql(source.query))


def key_column(source: Source) -> sql.Composed:
    return sql.SQL("s.{}").format(sql.Identifier(source.key))


def field_expression(
    field: Field, wanted: str, time_zone: str = DEFAULT_TIME_ZONE
) -> sql.Composable:
    """One field as read, cast to the type the methodology expects (a no-op when it is). A
    ``timestamptz`` read as a date is converted in ``time_zone`` first: the cast alone would
    take the session's TimeZone, and the day would depend on who runs it."""
    if field.column is None and field.expression is None:
        return sql.SQL("CAST({} AS {})").format(sql.Literal(field.value), sql.SQL(wanted))
    base: sql.Composable = (
        sql.SQL("s.{}").format(sql.Identifier(field.column))
        if field.column is not None
        else sql.SQL("({})").format(_user_sql(field.expression or ""))
    )
    if field.mapping:
        whens = sql.SQL(" ").join(
            sql.SQL("WHEN {} THEN {}").format(sql.Literal(k), sql.Literal(v))
            for k, v in field.mapping
        )
        base = sql.SQL("CASE CAST({b} AS text) {w} ELSE CAST({b} AS text) END").format(
            b=base, w=whens
        )
    elif wanted == "date" and field.sql_type == "timestamptz":
        base = sql.SQL("({} AT TIME ZONE {})").format(base, sql.Literal(time_zone))
    return sql.SQL("CAST({} AS {})").format(base, sql.SQL(wanted))


def version_expression(source: Source) -> sql.Composed:
    """The row version as a bigint: ``xmin``, an integer column, or a timestamp in
    microseconds since the epoch."""
    column = sql.SQL("s.{}").format(sql.Identifier(source.version))
    if source.version == "xmin" or source.version_type == "xid":
        return sql.SQL("{}::text::bigint").format(column)
    if source.version_type == "timestamp":
        return sql.SQL("(extract(epoch FROM {}) * 1000000)::bigint").format(column)
    return sql.SQL("{}::bigint").format(column)


#: The column the reads add: the row version the input was read at.
VERSION_COLUMN = "activity_version"
#: The column the relation adds for a source with ``follow_by``: that column, as it is.
FOLLOW_COLUMN = "follow_key"


def relation(source: Source) -> sql.Composed:
    """``SELECT id, fields…, activity_version FROM source``: the activities as the methodology
    names them. PostgreSQL flattens it into the queries around it, so a range on ``id`` uses
    the source's own index on its key."""
    wanted = field_types(source.kind)
    columns: list[sql.Composable] = [sql.SQL("{} AS id").format(key_column(source))]
    for name, field in source.fields:
        columns.append(
            sql.SQL("{} AS {}").format(
                field_expression(field, wanted[name], source.time_zone), sql.Identifier(name)
            )
        )
    columns.append(
        sql.SQL("{} AS {}").format(version_expression(source), sql.Identifier(VERSION_COLUMN))
    )
    if source.follow_by is not None:
        columns.append(
            sql.SQL("s.{} AS {}").format(
                sql.Identifier(source.follow_by), sql.Identifier(FOLLOW_COLUMN)
            )
        )
    return sql.SQL("SELECT {} FROM {}").format(sql.SQL(", ").join(columns), from_clause(source))


def market_relation(source: Source) -> sql.Composed:
    """``SELECT id, facility, supplier FROM source``: electricity's fields for the market-based
    method (NULL where the mapping leaves them out), beside ``relation``, never in it."""
    given = dict(source.market_fields)
    columns: list[sql.Composable] = [sql.SQL("{} AS id").format(key_column(source))]
    for name in MARKET_FIELDS:
        field = given.get(name, Field(value=None))
        columns.append(
            sql.SQL("{} AS {}").format(
                field_expression(field, "text", source.time_zone), sql.Identifier(name)
            )
        )
    return sql.SQL("SELECT {} FROM {}").format(sql.SQL(", ").join(columns), from_clause(source))
