"""Sources: where each activity type is read from, the pipeline's own tables or a team's.

A sources file (TOML; ``--sources FILE`` or ``$EMISSIONS_SOURCES``) maps each activity type
to a table (schema-qualified) or a ``SELECT``, and each field the methodology needs to a
column, an SQL expression, a constant, or a column (or expression) with a value map; with the
key column and the row-version column. See docs/adoption.md for the format.

- ``load`` reads a file and checks its shape (no database);
- ``check`` checks the sources against the catalogue, in a read-only transaction, and reports
  every problem at once, by name: a missing table or column, a type that cannot work, a
  missing privilege, an expression PostgreSQL refuses. It writes nothing;
- ``relation`` is the SQL that reads a source: one row per activity, with the columns the
  methodology names (``id``, its fields, ``activity_version``), cast to the types it expects.

Identifiers are quoted with ``psycopg2.sql.Identifier``; constants and value maps are
``psycopg2.sql.Literal`` (the driver's own quoting: a ``COPY`` cannot take bind parameters).
SQL expressions and queries are the file's author's own SQL, checked before anything runs.
"""

from __future__ import annotations

import dataclasses
import os
import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import psycopg2
import psycopg2.extensions
from psycopg2 import sql

from pipeline.model import ACTIVITY_TYPES, ActivityType, activity_fields
from pipeline.store.tables import ACTIVITY_TABLES, DEFAULT_SCHEMA

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

#: The sources file, when ``--sources`` is not given.
SOURCES_ENV = "EMISSIONS_SOURCES"

KeyType = Literal["bigint", "uuid", "text"]

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

#: Column types (``pg_type.typname``) that can be read as each wanted type.
_ACCEPTED: dict[str, frozenset[str]] = {
    "double precision": frozenset({"int2", "int4", "int8", "numeric", "float4", "float8"}),
    "text": frozenset({"text", "varchar", "bpchar", "name", "citext"}),
    "integer": frozenset({"int2", "int4", "int8"}),
    "boolean": frozenset({"bool"}),
    "date": frozenset({"date", "timestamp", "timestamptz"}),
}
_KEY_TYPES: dict[str, KeyType] = {
    "int2": "bigint",
    "int4": "bigint",
    "int8": "bigint",
    "uuid": "uuid",
    "text": "text",
    "varchar": "text",
    "bpchar": "text",
}
#: Row versions: PostgreSQL's ``xmin`` of a table, or a column that changes with the row.
_VERSION_TYPES = {
    "xid": "xid",
    "xid8": "xid",
    "int2": "integer",
    "int4": "integer",
    "int8": "integer",
    "timestamp": "timestamp",
    "timestamptz": "timestamp",
}
_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_$]{0,62}$")


class SourcesError(ValueError):
    """The sources cannot be used; the message lists every problem found."""

    def __init__(self, where: str, problems: Sequence[str]) -> None:
        self.problems = list(problems)
        count = f"{len(problems)} problem{'s' if len(problems) != 1 else ''}"
        super().__init__(f"{where}: {count}:\n" + "\n".join(f"  - {p}" for p in problems))


def field_types(activity_type: ActivityType) -> dict[str, str]:
    """The methodology's fields of an activity type (not ``id``), with the SQL type each is
    read as."""
    from pipeline.model import ACTIVITY_CLASSES

    hints = {f.name: str(f.type) for f in dataclasses.fields(ACTIVITY_CLASSES[activity_type])}
    out: dict[str, str] = {}
    for name in activity_fields(activity_type)[1:]:
        base = hints[name].replace(" | None", "").replace("datetime.", "").strip()
        out[name] = _WANTED[base]
    return out


@dataclass(frozen=True)
class Field:
    """How one field is read: a column, an SQL expression or a constant; a column or an
    expression may have a value map (values not in it pass through unchanged)."""

    column: str | None = None
    expression: str | None = None
    value: str | int | float | bool | None = None
    mapping: tuple[tuple[str, str], ...] = ()

    def describe(self) -> str:
        if self.column is not None:
            return f"column {self.column}"
        if self.expression is not None:
            return f"expression {self.expression!r}"
        return f"constant {self.value!r}"


@dataclass(frozen=True)
class Source:
    """Where one activity type is read from. ``key_type`` and ``version_type`` are filled in
    by ``check`` from the catalogue."""

    activity_type: ActivityType
    table: tuple[str, str] | None = None
    query: str | None = None
    key: str = "id"
    version: str = "xmin"
    fields: tuple[tuple[str, Field], ...] = ()
    key_type: KeyType | None = None
    version_type: str | None = None

    @property
    def name(self) -> str:
        """How messages name it: ``schema.table``, or ``query`` for a SELECT."""
        return ".".join(self.table) if self.table else f"the {self.activity_type} query"

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
        )
        for t in ACTIVITY_TYPES
    }


def as_source(source: Source | ActivityType, schema: str = DEFAULT_SCHEMA) -> Source:
    """A source, or the pipeline's own table of an activity type."""
    return default_sources(schema)[source] if isinstance(source, str) else source


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
    """Sources from a parsed sources document; ``SourcesError`` lists every problem."""
    problems: list[str] = []
    sources: dict[ActivityType, Source] = {}
    for name in document:
        if name not in ACTIVITY_TYPES:
            problems.append(f"[{name}]: not an activity type ({', '.join(ACTIVITY_TYPES)})")
    for activity_type in ACTIVITY_TYPES:
        section = document.get(activity_type)
        if section is None:
            continue
        if not isinstance(section, Mapping):
            problems.append(f"[{activity_type}] must be a table of settings")
            continue
        found = _parse_source(activity_type, section, problems)
        if found is not None:
            sources[activity_type] = found
    if not sources and not problems:
        problems.append(f"no activity type is mapped: add [{'], ['.join(ACTIVITY_TYPES)}]")
    if problems:
        raise SourcesError(where, problems)
    return sources


def _parse_source(
    activity_type: ActivityType, section: Mapping[str, Any], problems: list[str]
) -> Source | None:
    at = f"[{activity_type}]"
    before = len(problems)
    known = {"table", "query", "key", "version", "fields"}
    for key in section:
        if key not in known:
            problems.append(f"{at} {key}: unknown setting ({', '.join(sorted(known))})")
    table, query = section.get("table"), section.get("query")
    parsed_table: tuple[str, str] | None = None
    if (table is None) == (query is None):
        problems.append(f'{at} needs exactly one of table = "schema.name" or query = "SELECT …"')
    elif table is not None:
        parts = str(table).split(".")
        if len(parts) != 2 or not all(_IDENT.match(p) for p in parts):
            problems.append(f"{at} table = {table!r}: write it schema-qualified, as schema.name")
        else:
            parsed_table = (parts[0], parts[1])
    elif not isinstance(query, str) or not query.strip():
        problems.append(f"{at} query must be a SELECT statement")
    key = section.get("key", "id")
    if not isinstance(key, str) or not _IDENT.match(key):
        problems.append(f"{at} key = {key!r}: name a column")
    version = section.get("version", "xmin" if table is not None else None)
    if version is None:
        problems.append(
            f"{at} version: a query has no xmin; name a column that changes whenever the row "
            "does (an updated_at timestamp or a version number)"
        )
    elif not isinstance(version, str) or not _IDENT.match(version):
        problems.append(f"{at} version = {version!r}: name a column (or xmin)")
    raw_fields = section.get("fields", {})
    if not isinstance(raw_fields, Mapping):
        problems.append(f'{at} fields must be a table: field = "column" or {{ … }}')
        raw_fields = {}
    wanted = field_types(activity_type)
    for name in raw_fields:
        if name not in wanted:
            problems.append(
                f"{at}.fields.{name}: not a field of {activity_type} ({', '.join(wanted)})"
            )
    fields: list[tuple[str, Field]] = []
    for name in wanted:
        spec = raw_fields.get(name)
        if spec is None:
            if name in OPTIONAL_FIELDS:
                fields.append((name, Field(value=None)))
            else:
                problems.append(f"{at}.fields.{name}: missing (the methodology needs it)")
            continue
        parsed = _parse_field(f"{at}.fields.{name}", spec, problems)
        if parsed is not None:
            fields.append((name, parsed))
    if len(problems) > before:
        return None
    return Source(
        activity_type=activity_type,
        table=parsed_table,
        query=str(query) if query is not None else None,
        key=str(key),
        version=str(version),
        fields=tuple(fields),
    )


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
        if not isinstance(column, str) or not _IDENT.match(column):
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


def field_expression(field: Field, wanted: str) -> sql.Composable:
    """One field as read, cast to the type the methodology expects (a no-op when it is)."""
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


def relation(source: Source) -> sql.Composed:
    """``SELECT id, fields…, activity_version FROM source``: the activities as the methodology
    names them. PostgreSQL flattens it into the queries around it, so a range on ``id`` uses
    the source's own index on its key."""
    wanted = field_types(source.activity_type)
    columns: list[sql.Composable] = [sql.SQL("{} AS id").format(key_column(source))]
    for name, field in source.fields:
        columns.append(
            sql.SQL("{} AS {}").format(field_expression(field, wanted[name]), sql.Identifier(name))
        )
    columns.append(
        sql.SQL("{} AS {}").format(version_expression(source), sql.Identifier(VERSION_COLUMN))
    )
    return sql.SQL("SELECT {} FROM {}").format(sql.SQL(", ").join(columns), from_clause(source))


# --- Checks against the catalogue ----------------------------------------------------------


def check_sources(
    conn: psycopg2.extensions.connection, sources: Sources
) -> dict[ActivityType, Source]:
    """The sources with their key and version types from the catalogue; ``SourcesError``
    naming every missing table, column, privilege or unusable type, every expression
    PostgreSQL refuses, and keys of different types. Read-only: it writes nothing."""
    problems: list[str] = []
    resolved: dict[ActivityType, Source] = {}
    conn.rollback()
    previous = conn.readonly
    conn.readonly = True
    try:
        for activity_type, source in sources.items():
            found = _check_source(conn, source, problems)
            if found is not None:
                resolved[activity_type] = found
    finally:
        conn.rollback()
        conn.readonly = previous
    key_types = {s.key_type for s in resolved.values()}
    if len(key_types) > 1:
        listed = ", ".join(f"{t} {s.key_type}" for t, s in resolved.items())
        problems.append(
            f"the keys are of different types ({listed}): results are keyed by one type; "
            "cast the keys to text in queries, or map tables whose keys agree"
        )
    if problems:
        raise SourcesError("the sources", problems)
    return resolved


def _columns(
    conn: psycopg2.extensions.connection, source: Source, problems: list[str]
) -> tuple[dict[str, str], str] | None:
    """(column → type name, relation kind) of a source, or None after noting why not."""
    at = f"{source.activity_type}: {source.name}"
    with conn.cursor() as cur:
        if source.table is not None:
            cur.execute(
                "SELECT c.oid, c.relkind, has_table_privilege(c.oid, 'SELECT') FROM pg_class c "
                "JOIN pg_namespace n ON n.oid = c.relnamespace "
                "WHERE n.nspname = %s AND c.relname = %s",
                source.table,
            )
            row = cur.fetchone()
            if row is None:
                problems.append(f"{at} does not exist (or this role cannot see its schema)")
                return None
            oid, kind, may_select = row
            if not may_select:
                problems.append(
                    f"{at}: this role may not read it: GRANT SELECT ON {source.name} TO "
                    "the pipeline's role"
                )
                return None
            cur.execute(
                "SELECT a.attname, t.typname, t.typtype FROM pg_attribute a "
                "JOIN pg_type t ON t.oid = a.atttypid "
                "WHERE a.attrelid = %s AND (a.attnum > 0 OR a.attname = 'xmin') "
                "AND NOT a.attisdropped",
                (oid,),
            )
            columns = {n: ("text" if typtype == "e" else typ) for n, typ, typtype in cur.fetchall()}
            return columns, str(kind)
        try:
            cur.execute(sql.SQL("SELECT * FROM {} LIMIT 0").format(from_clause(source)))
        except psycopg2.Error as e:
            conn.rollback()
            problems.append(f"{at}: PostgreSQL refuses it: {_first_line(e)}")
            return None
        oids = [d.type_code for d in cur.description or ()]
        cur.execute("SELECT oid, typname, typtype FROM pg_type WHERE oid = ANY(%s)", (oids,))
        names = {o: ("text" if typtype == "e" else n) for o, n, typtype in cur.fetchall()}
        return {d.name: names.get(d.type_code, "?") for d in cur.description or ()}, "q"


def _check_source(
    conn: psycopg2.extensions.connection, source: Source, problems: list[str]
) -> Source | None:
    before = len(problems)
    at = f"{source.activity_type}: {source.name}"
    described = _columns(conn, source, problems)
    if described is None:
        return None
    columns, kind = described
    key_type = _KEY_TYPES.get(columns.get(source.key, ""))
    if source.key not in columns:
        problems.append(f"{at}: no key column {source.key}")
    elif key_type is None:
        problems.append(
            f"{at}: key {source.key} is {columns[source.key]}; a key must be bigint, integer, "
            "uuid or text"
        )
    version_type: str | None = None
    if source.version == "xmin" and kind not in ("r", "p", "m"):
        problems.append(
            f"{at}: a view or query has no xmin: set version to a column that changes with "
            "the row (an updated_at timestamp or a version number)"
        )
    elif source.version not in columns:
        problems.append(f"{at}: no version column {source.version}")
    else:
        version_type = _VERSION_TYPES.get(columns[source.version])
        if version_type is None:
            problems.append(
                f"{at}: version {source.version} is {columns[source.version]}; a version must "
                "be xmin, an integer or a timestamp"
            )
    wanted = field_types(source.activity_type)
    for name, field in source.fields:
        if field.column is None:
            continue
        typ = columns.get(field.column)
        if typ is None:
            problems.append(f"{at}: {name} reads column {field.column}, which it does not have")
        elif field.mapping and typ not in _ACCEPTED["text"]:
            problems.append(f"{at}: {name} maps values of {field.column}, which is {typ}, not text")
        elif not field.mapping and typ not in _ACCEPTED[wanted[name]]:
            accepted = ", ".join(sorted(_ACCEPTED[wanted[name]]))
            problems.append(
                f"{at}: {name} reads {field.column}, which is {typ}; it needs one of {accepted}"
            )
    if len(problems) > before:
        return None
    resolved = dataclasses.replace(source, key_type=key_type, version_type=version_type or "xid")
    # Expressions and constants: PostgreSQL itself says whether they work, one at a time.
    with conn.cursor() as cur:
        for name, field in source.fields:
            if field.column is not None and not field.mapping:
                continue
            try:
                cur.execute(
                    sql.SQL("SELECT {} FROM {} LIMIT 0").format(
                        field_expression(field, wanted[name]), from_clause(source)
                    )
                )
            except psycopg2.Error as e:
                conn.rollback()
                problems.append(
                    f"{at}: {name} = {field.describe()} does not work as {wanted[name]}: "
                    f"{_first_line(e)}"
                )
    return resolved if len(problems) == before else None


def _first_line(error: psycopg2.Error) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0]
