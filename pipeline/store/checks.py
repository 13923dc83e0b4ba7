"""Checks of the sources against the catalogue, before anything runs.

In a read-only transaction: every missing table or column, every type that cannot be read as
the methodology's, every missing ``SELECT`` privilege, every expression PostgreSQL refuses, and
keys of different types are reported at once, by name (``SourcesError``). Nothing is written.
The checked sources carry their key and version types, which the reads use.
"""

from __future__ import annotations

import dataclasses

import psycopg2
import psycopg2.extensions
from psycopg2 import sql

from pipeline.model import ActivityType
from pipeline.store.sources import (
    KeyType,
    Source,
    Sources,
    SourcesError,
    field_expression,
    field_types,
    from_clause,
)

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

#: What a ``follow_by`` column may be: a number that grows, or a timestamp.
FOLLOW_TYPES = frozenset({"int2", "int4", "int8", "timestamp", "timestamptz"})

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
    follow_type = source.follow_type
    if source.follow_by is not None:
        # A missing column matters to the follow mode only, which says so when it starts
        # (the pipeline's own tables have it from revision 0004, which may be yet to run).
        follow_type = columns.get(source.follow_by)
        if follow_type is not None and follow_type not in FOLLOW_TYPES:
            problems.append(
                f"{at}: follow_by {source.follow_by} is {follow_type}; it must be an integer "
                "(a number from a sequence) or a timestamp"
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
    resolved = dataclasses.replace(
        source,
        key_type=key_type,
        version_type=version_type or "xid",
        follow_type=follow_type,
    )
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


def common_key_type(checked: Sources) -> KeyType | None:
    """The key type the checked sources share (``check_sources`` refuses keys of different
    types), which the results are keyed by; None for no sources."""
    found = {s.key_type for s in checked.values()}
    return found.pop() if len(found) == 1 else None
