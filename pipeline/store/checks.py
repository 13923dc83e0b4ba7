"""Checks of the sources against the catalogue, before anything runs.

In a read-only transaction: every missing table or column, every type that cannot be read as
the methodology's, every missing ``SELECT`` privilege, every expression PostgreSQL refuses, and
keys of different types are reported at once, by name (``SourcesError``). Nothing is written.
The checked sources carry their key and version types, which the reads use.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import TypeVar

import psycopg2
import psycopg2.errors
import psycopg2.extensions
from psycopg2 import sql

from pipeline.model import ActivityType, InstrumentKind
from pipeline.store.sources import (
    Field,
    KeyType,
    Source,
    Sources,
    SourcesError,
    field_expression,
    field_types,
    from_clause,
    quote_name,
    relation,
)

#: Column types (``pg_type.typname``) that can be read as each wanted type.
_ACCEPTED: dict[str, frozenset[str]] = {
    "double precision": frozenset({"int2", "int4", "int8", "numeric", "float4", "float8"}),
    "text": frozenset({"text", "varchar", "bpchar", "name", "citext"}),
    "integer": frozenset({"int2", "int4", "int8"}),
    "boolean": frozenset({"bool"}),
    "date": frozenset({"date", "timestamp", "timestamptz"}),
}

K = TypeVar("K", bound=str)

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
    resolved = _check_each(conn, sources, problems)
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


def check_instruments(
    conn: psycopg2.extensions.connection, instruments: Mapping[InstrumentKind, Source]
) -> dict[InstrumentKind, Source]:
    """The instruments' sources with their key and version types (``SourcesError`` naming
    every problem, as ``check_sources``); their keys are their own, of any key type.
    Read-only: it writes nothing."""
    problems: list[str] = []
    resolved = _check_each(conn, instruments, problems)
    if problems:
        raise SourcesError("the instruments' sources", problems)
    return resolved


def _check_each(
    conn: psycopg2.extensions.connection, sources: Mapping[K, Source], problems: list[str]
) -> dict[K, Source]:
    """Each source checked in one read-only transaction, rolled back."""
    resolved: dict[K, Source] = {}
    conn.rollback()
    previous = conn.readonly
    conn.readonly = True
    try:
        for name, source in sources.items():
            found = _check_source(conn, source, problems)
            if found is not None:
                resolved[name] = found
    finally:
        conn.rollback()
        conn.readonly = previous
    return resolved


def _wanted(source: Source) -> dict[str, str]:
    """The type each field of ``source`` is read as (its market fields as text)."""
    return {**field_types(source.kind), **{n: "text" for n, _ in source.market_fields}}


def _columns(
    conn: psycopg2.extensions.connection, source: Source, problems: list[str]
) -> tuple[dict[str, str], str] | None:
    """(column → type name, relation kind) of a source, or None after noting why not."""
    at = f"{source.kind}: {source.name}"
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
                problems.append(f"{at} does not exist{_spelled_otherwise(cur, source.table)}")
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
            # Over real rows: a query that writes (a function with a side effect) says so here.
            cur.execute(
                sql.SQL("SELECT * FROM {} LIMIT {}").format(
                    from_clause(source), sql.Literal(SAMPLE_ROWS)
                )
            )
        except psycopg2.Error as e:
            conn.rollback()
            problems.append(f"{at}: {_refusal('', e)}")
            return None
        # The description is the query's: read it before the type names' lookup replaces it.
        described = [(d.name, d.type_code) for d in cur.description or ()]
        names = _type_names(cur, [oid for _, oid in described])
        return {name: names.get(oid, "?") for name, oid in described}, "q"


def _type_names(cur: psycopg2.extensions.cursor, oids: list[int]) -> dict[int, str]:
    """Type oid → ``pg_type.typname`` (an enum counts as text)."""
    cur.execute("SELECT oid, typname, typtype FROM pg_type WHERE oid = ANY(%s)", (oids,))
    return {o: ("text" if typtype == "e" else n) for o, n, typtype in cur.fetchall()}


def _spelled_otherwise(cur: psycopg2.extensions.cursor, table: tuple[str, str]) -> str:
    """What to say after "does not exist": a table of the same name in other capitals, or
    that the role may not see it."""
    cur.execute(
        "SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n "
        "ON n.oid = c.relnamespace WHERE lower(n.nspname) = lower(%s) "
        "AND lower(c.relname) = lower(%s) ORDER BY 1, 2 LIMIT 1",
        table,
    )
    found = cur.fetchone()
    if found is None:
        return " (or this role cannot see its schema)"
    written = ".".join(quote_name(p) for p in found)
    return (
        f": did you mean {written}? (a name with capitals or spaces is written in double "
        f"quotes: table = '{written}')"
    )


def _check_source(
    conn: psycopg2.extensions.connection, source: Source, problems: list[str]
) -> Source | None:
    """The source resolved (its key, version and follow kinds, its fields' expressions), or
    None with each reason appended to ``problems``."""
    before = len(problems)
    at = f"{source.kind}: {source.name}"
    described = _columns(conn, source, problems)
    if described is None:
        return None
    columns, kind = described
    key_type, version_type = _key_and_version_types(at, source, columns, kind, problems)
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
    wanted = _wanted(source)
    for name, field in (*source.fields, *source.market_fields):
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
    _check_time_zone(conn, source, problems)
    if len(problems) > before:
        return None
    fields = _evaluated_fields(conn, source, columns, problems, source.fields)
    market_fields = _evaluated_fields(conn, source, columns, problems, source.market_fields)
    if fields is None or market_fields is None:
        return None
    resolved = dataclasses.replace(
        source,
        key_type=key_type,
        version_type=version_type or "xid",
        follow_type=follow_type,
        fields=fields,
        market_fields=market_fields,
    )
    return resolved if _reads_sample(conn, resolved, at, problems) else None


def _key_and_version_types(
    at: str, source: Source, columns: dict[str, str], kind: str, problems: list[str]
) -> tuple[KeyType | None, str | None]:
    """The kinds of the source's key and version; None where one is missing or of a type the
    pipeline cannot use, with the problem appended to ``problems``."""
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
    return key_type, version_type


def _reads_sample(
    conn: psycopg2.extensions.connection, resolved: Source, at: str, problems: list[str]
) -> bool:
    """Whether the whole relation reads over real rows (a query's own side effects, a cast
    of a version fail here, appended to ``problems``)."""
    try:
        with conn.cursor() as cur:
            cur.execute(
                sql.SQL("SELECT * FROM ({}) r LIMIT {}").format(
                    relation(resolved), sql.Literal(SAMPLE_ROWS)
                )
            )
    except psycopg2.Error as e:
        conn.rollback()
        problems.append(f"{at}: {_refusal('when read', e)}")
        return False
    return True


#: Rows each expression (and each source as a whole) is evaluated over by the check: enough to
#: meet a side effect or a value that cannot be cast, few enough for a large table.
SAMPLE_ROWS = 100


def _evaluated_fields(
    conn: psycopg2.extensions.connection,
    source: Source,
    columns: dict[str, str],
    problems: list[str],
    given: tuple[tuple[str, Field], ...],
) -> tuple[tuple[str, Field], ...] | None:
    """The ``given`` fields with their types, each expression, mapped column and constant
    evaluated over real rows (read-only: one that writes is refused); None after noting a
    problem."""
    at = f"{source.kind}: {source.name}"
    wanted = _wanted(source)
    out: list[tuple[str, Field]] = []
    failed = False
    with conn.cursor() as cur:
        for name, field in given:
            if field.column is not None:
                field = dataclasses.replace(field, sql_type=columns.get(field.column))
            if field.expression is not None:
                typed = _expression_type(conn, cur, source, field.expression)
                field = dataclasses.replace(field, sql_type=typed)
            if field.column is None or field.mapping:
                try:
                    cur.execute(
                        sql.SQL("SELECT {} FROM {} LIMIT {}").format(
                            field_expression(field, wanted[name], source.time_zone),
                            from_clause(source),
                            sql.Literal(SAMPLE_ROWS),
                        )
                    )
                except psycopg2.Error as e:
                    conn.rollback()
                    problems.append(
                        f"{at}: {name} = {field.describe()} " + _refusal(f"as {wanted[name]}", e)
                    )
                    failed = True
            out.append((name, field))
    return None if failed else tuple(out)


def _expression_type(
    conn: psycopg2.extensions.connection,
    cur: psycopg2.extensions.cursor,
    source: Source,
    expression: str,
) -> str | None:
    """The type of an expression over the source (None when PostgreSQL refuses it: the
    evaluation says why)."""
    try:
        cur.execute(
            sql.SQL("SELECT ({}) FROM {} LIMIT 0").format(
                sql.SQL(expression.replace("%", "%%")), from_clause(source)
            )
        )
    except psycopg2.Error:
        conn.rollback()
        return None
    oid = cur.description[0].type_code if cur.description else 0
    return _type_names(cur, [oid]).get(oid)


def _refusal(doing: str, error: psycopg2.Error) -> str:
    """Why PostgreSQL refused a source's SQL (``doing``: "as date", "when read"; empty for the
    query itself), in one line: SQL that tried to write says so."""
    if isinstance(error, psycopg2.errors.ReadOnlySqlTransaction):
        return (
            f"writes to the database ({_first_line(error)}): the sources' SQL must only "
            "read; remove what writes (a function that inserts, updates or takes a sequence "
            "value)"
        )
    if not doing:
        return f"PostgreSQL refuses it: {_first_line(error)}"
    return f"does not work {doing}: {_first_line(error)}"


def _check_time_zone(
    conn: psycopg2.extensions.connection, source: Source, problems: list[str]
) -> None:
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT now() AT TIME ZONE %s", (source.time_zone,))
    except psycopg2.Error:
        conn.rollback()
        problems.append(
            f"{source.kind}: time_zone = {source.time_zone!r} is not a time zone "
            "PostgreSQL knows (see pg_timezone_names: UTC, Europe/Berlin, …)"
        )


def _first_line(error: psycopg2.Error) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


def common_key_type(checked: Sources) -> KeyType | None:
    """The key type the checked sources share (``check_sources`` refuses keys of different
    types), which the results are keyed by; None for no sources."""
    found = {s.key_type for s in checked.values()}
    return found.pop() if len(found) == 1 else None
