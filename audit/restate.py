"""Restatement: recompute stored results against the factor editions now chosen, keep what they
replace, and say what changed.

    python -m audit.restate [--database-url URL] [--pin SET=EDITION ...]
                               [--activity-types electricity,spend,air_travel]

Editions. ``emission_factors`` holds every edition ever loaded, side by side. By default the
newest loaded row per (set, key, year) is in force (as in ``pipeline.run``) and the year rule
picks the activity's year. ``--pin SET=EDITION`` restricts a set to one edition: for example
``--pin "desnz_air=2025 flat file"`` recomputes every flight with the DESNZ 2025 factors,
whatever its year (flagged ``year_mismatch`` where the years differ), which is how a company
restates its past air travel on the latest published factors.

What happens. Every stored result of the types asked for is recomputed (the same batch
methodology as the pipeline, the result's own radiative-forcing choice kept); a result is
restated when its recomputation uses different factor rows (emission factor, FX or CPI). Its
old row moves, whole, to ``emission_results_history`` (tagged with the restatement), and the
new one takes its place, with ``run_id`` = the restatement's id and its new fingerprints, in
the same transaction. A result whose input changed is not a restatement: ``verify``
reports it. An input the chosen editions cannot compute (a refused row) keeps its result and
is counted. The restatement, its pins, the editions in force and the diff are stored in
``restatements``: per activity type, scope and category the old and new totals and the count
changed, and the largest changes. Running it again with the same editions changes nothing.
"""

from __future__ import annotations

import argparse
import sys
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import psycopg2.extensions
import pyarrow as pa
import sqlalchemy as sa
from psycopg2 import sql
from sqlalchemy.dialects import postgresql

from pipeline import cli, editions, fingerprint, retry
from pipeline.methodology import FactorBook
from pipeline.methodology.batch import activities_table, calculate_batch
from pipeline.model import (
    ACTIVITY_CLASSES,
    ACTIVITY_TYPES,
    DEFAULT_LIMITS,
    ActivityType,
    FactorRow,
    Limits,
    activity_fields,
)
from pipeline.store import bulk, connections, install, runs, stored_sources, tables
from pipeline.store.sources import (
    VERSION_COLUMN,
    Source,
    Sources,
    default_sources,
    read_only,
    relation,
)
from pipeline.summary import failure_message

_FACTOR_ID_FIELDS = fingerprint.FACTOR_ID_FIELDS
LARGEST = 10
#: Advisory lock of restatements, with the schema's hash: one restatement per schema at a time
#: (schema creation uses the single key 7355608).
_LOCK = 7355609


class RestatementRunning(RuntimeError):
    """Another restatement holds the lock."""


@dataclass
class Outcome:
    """What a restatement did."""

    restatement_id: str
    pins: dict[str, str]
    examined: int = 0
    changed: int = 0
    refused: int = 0
    #: Activities whose input changed after the restatement read them: not restated, their
    #: new input is computed by the next run (or follow).
    left_to_next_run: int = 0
    diff: dict[str, Any] = field(default_factory=dict)
    #: The plausibility bounds applied: each result's run's, as it recorded them.
    limits: set[Limits] = field(default_factory=set)

    def as_dict(self) -> dict[str, Any]:
        return {
            "restatement_id": self.restatement_id,
            "pins": self.pins,
            "examined": self.examined,
            "changed": self.changed,
            "refused": self.refused,
            "left_to_next_run": self.left_to_next_run,
            "diff": self.diff,
        }


def _recompute(
    activity_type: ActivityType,
    pairs: Sequence[tuple[Any, dict[str, Any], int]],
    book: FactorBook,
    factor_fps: fingerprint.FactorFingerprints,
    limits_of: Callable[[str], Limits] = lambda _: DEFAULT_LIMITS,
) -> tuple[list[pa.Table], int]:
    """New results (with fingerprints, and the version of the activity row they are computed
    from) for (activity, stored result, activity version) triples whose factor rows now
    differ; and how many inputs the editions refuse."""
    changed: list[pa.Table] = []
    refused = 0
    # The result keeps its own radiative-forcing choice (air travel; None for the others),
    # and the plausibility bounds its run recorded.
    by_choice: dict[tuple[bool, Limits], list[tuple[Any, dict[str, Any], int]]] = {}
    for activity, stored, version in pairs:
        rf = stored["radiative_forcing"]
        choice = (True if rf is None else bool(rf), limits_of(str(stored["run_id"])))
        by_choice.setdefault(choice, []).append((activity, stored, version))
    for (rf, limits), group in by_choice.items():
        table = activities_table(activity_type, [a for a, _, _ in group])
        outcome = calculate_batch(
            activity_type,
            table,
            book,
            radiative_forcing=rf,
            limits=limits,
            fields=tables.RESULT_COLUMNS,
        )
        refused += len(outcome.errors)
        results = fingerprint.with_fingerprints(
            outcome.results, table, activity_fields(activity_type), factor_fps
        )
        stored_by_id = {str(s["activity_id"]): (s, v) for _, s, v in group}
        keep: list[bool] = []
        versions: list[int] = []
        for new in results.select(["activity_id", *_FACTOR_ID_FIELDS]).to_pylist():
            old, version = stored_by_id[str(new["activity_id"])]
            keep.append(any(old[c] != new[c] for c in _FACTOR_ID_FIELDS))
            versions.append(version)
        results = results.append_column(
            tables.VERSION_COLUMN, pa.array(versions, pa.int64())
        ).filter(pa.array(keep, pa.bool_()))
        if results.num_rows:
            changed.append(results)
    return changed, refused


def _supersede(
    conn: psycopg2.extensions.connection,
    results: list[pa.Table],
    restatement_id: str,
    source: Source,
    schema: str,
    outcome: Outcome,
) -> None:
    """Store the restated ``results`` through the one supersede path: each current row moves
    to history and the new one takes its place, in one transaction, unless the activity's
    input changed since the restatement read it (then it is left to the next run)."""
    if not results:
        return
    done = bulk.supersede_results_table(
        conn,
        pa.concat_tables(results),
        restatement_id,
        "restatement",
        schema,
        tables.results_id_type(conn, schema) == "text",
        {source.activity_type: source},
        log=False,
    )
    outcome.changed += done.written
    outcome.left_to_next_run += done.stale


class _SchemaLock:
    """The session advisory lock of restatements in one schema, on a connection of its own.
    A server restart ends the session and so the lock: ``hold`` takes it again (or raises
    ``RestatementRunning`` if another restatement took it meanwhile) before each write."""

    def __init__(self, engine: sa.Engine, schema: str) -> None:
        self._engine, self._schema = engine, schema
        self._pooled: Any = None

    def _conn(self) -> psycopg2.extensions.connection:
        return cast(psycopg2.extensions.connection, self._pooled.driver_connection)

    def take(self) -> None:
        self._drop()
        self._pooled = self._engine.raw_connection()
        conn = self._conn()
        with conn.cursor() as cur:
            cur.execute("SELECT pg_try_advisory_lock(%s, hashtext(%s))", (_LOCK, self._schema))
            (locked,) = cur.fetchone()
        conn.commit()
        if not locked:
            self._drop()
            raise RestatementRunning(
                f"another restatement is running in schema {self._schema}: wait for it to finish"
            )

    def hold(self) -> None:
        """Still held (its session alive), or taken again."""
        try:
            conn = self._conn()
            with conn.cursor() as cur:
                cur.execute("SELECT 1")
            conn.commit()
        except psycopg2.Error as e:
            if not retry.is_transient(e):
                raise
            self.take()

    def release(self) -> None:
        if self._pooled is None:
            return
        try:
            conn = self._conn()
            with conn.cursor() as cur:
                cur.execute("SELECT pg_advisory_unlock(%s, hashtext(%s))", (_LOCK, self._schema))
            conn.commit()
        except psycopg2.Error as e:  # a lost session holds no lock any more
            if not retry.is_transient(e):
                raise
        finally:
            self._drop()

    def _drop(self) -> None:
        if self._pooled is not None:
            if self._conn().closed:
                self._pooled.invalidate()
            self._pooled.close()
            self._pooled = None


@dataclass
class _Resume:
    """Where a type's restatement starts again after a transient failure: after the last
    activity whose changes are committed, with the counts as they were there."""

    after: Any = None
    examined: int = 0
    refused: int = 0


def _restate_type(
    engine: sa.Engine,
    source: Source,
    book: FactorBook,
    outcome: Outcome,
    chunk: int,
    schema: str,
    limits_of: Callable[[str], Limits] = lambda _: DEFAULT_LIMITS,
    lock: _SchemaLock | None = None,
    policy: retry.RetryPolicy = retry.DEFAULT_POLICY,
) -> None:
    """Restates one type's results; a transient failure (the server restarting) is ridden
    out as a run rides it out: the connections are opened again and the restatement goes on
    after the last activity whose changes were committed (each flush is one transaction, and
    a repeated one changes nothing: a restated result is computed on the factors in force)."""
    resume = _Resume(None, outcome.examined, outcome.refused)

    def attempt() -> None:
        outcome.examined, outcome.refused = resume.examined, resume.refused
        _restate_from(engine, source, book, outcome, chunk, schema, limits_of, lock, resume)

    retry.call(attempt, what=f"restating {source.activity_type} results", policy=policy)


def _restate_from(
    engine: sa.Engine,
    source: Source,
    book: FactorBook,
    outcome: Outcome,
    chunk: int,
    schema: str,
    limits_of: Callable[[str], Limits],
    lock: _SchemaLock | None,
    resume: _Resume,
) -> None:
    """One type's results from ``resume.after`` on, computed again ``chunk`` at a time; the
    changed ones are written once ``chunk`` of them are pending (and at the end), each flush
    one transaction, after which ``resume`` says where to start again."""
    activity_type = source.activity_type
    a_cols = list(activity_fields(activity_type))
    r_cols = [*tables.RESULT_COLUMNS, "run_id"]
    query = _results_query(source, schema, a_cols, r_cols, resume.after)
    cls = ACTIVITY_CLASSES[activity_type]
    factor_fps = fingerprint.FactorFingerprints(fingerprint.factor_fingerprints(book.rows()))
    pending: list[pa.Table] = []

    def flush(conn: psycopg2.extensions.connection, upto: Any) -> None:
        if pending:
            if lock is not None:
                lock.hold()
            _supersede(conn, pending, outcome.restatement_id, source, schema, outcome)
            pending.clear()
        resume.after, resume.examined, resume.refused = upto, outcome.examined, outcome.refused

    # One connection streams the results (one snapshot) while another writes the changes;
    # each value carries the version of the activity row it is computed from, and is stored
    # only if the row is still at that version when it is written.
    with connections.raw_connection(engine) as reader, connections.raw_connection(engine) as conn:
        read_only(reader)  # the sources' SQL never runs where it could write
        with reader.cursor(name=f"restate_{activity_type}") as cur:
            cur.itersize = chunk
            cur.execute(query)
            at = len(a_cols)
            while True:
                fetched = cur.fetchmany(chunk)
                if not fetched:
                    break
                triples = [
                    (
                        cls(**dict(zip(a_cols, row[:at], strict=True))),
                        dict(zip(r_cols, row[at + 1 :], strict=True)),
                        int(row[at]),
                    )
                    for row in fetched
                ]
                outcome.examined += len(triples)
                outcome.limits.update(limits_of(str(s["run_id"])) for _, s, _ in triples)
                changed, refused = _recompute(activity_type, triples, book, factor_fps, limits_of)
                outcome.refused += refused
                pending.extend(changed)
                if not pending or sum(t.num_rows for t in pending) >= chunk:
                    flush(conn, triples[-1][1]["activity_id"])
        reader.commit()
        flush(conn, resume.after)


def _results_query(
    source: Source, schema: str, a_cols: list[str], r_cols: list[str], after: Any
) -> sql.Composed:
    """A type's results after the activity ``after`` (None: all), in activity order, each
    with its activity's fields and version: the activity's columns, the version, the result's."""
    return sql.SQL(
        "SELECT {a}, a.{v}, {r} FROM {results} r JOIN ({activities}) a ON a.id = r.activity_id "
        "WHERE r.activity_type = {t}{after} ORDER BY r.activity_id"
    ).format(
        a=sql.SQL(", ").join(sql.SQL("a.") + sql.Identifier(c) for c in a_cols),
        v=sql.Identifier(VERSION_COLUMN),
        r=sql.SQL(", ").join(sql.SQL("r.") + sql.Identifier(c) for c in r_cols),
        results=tables.qualified(tables.RESULTS_TABLE, schema),
        activities=relation(source),
        t=sql.Literal(source.activity_type),
        after=sql.SQL("")
        if after is None
        else sql.SQL(" AND r.activity_id > {}").format(sql.Literal(after)),
    )


def _diff_from(schema: str) -> str:
    """A restatement's old rows (its history rows) beside the rows it wrote (still current, or
    superseded since by a later restatement)."""
    history = tables.qualified_text(tables.HISTORY_TABLE, schema)
    results = tables.qualified_text(tables.RESULTS_TABLE, schema)
    return (
        f"FROM {history} h JOIN (SELECT activity_type, activity_id, kg_co2e, factor_id "
        f"FROM {results} WHERE run_id = :rid UNION ALL SELECT activity_type, activity_id, "
        f"kg_co2e, factor_id FROM {history} WHERE run_id = :rid) n "
        "ON n.activity_type = h.activity_type AND n.activity_id = h.activity_id "
    )


def _diff_groups_sql(schema: str) -> str:
    return (
        "SELECT h.activity_type, h.scope, h.category, count(*), sum(h.kg_co2e), sum(n.kg_co2e) "
        f"{_diff_from(schema)} WHERE h.restatement_id = :rid GROUP BY 1, 2, 3 ORDER BY 1, 2, 3"
    )


def _diff_largest_sql(schema: str) -> str:
    factors = tables.qualified_text(tables.FACTORS_TABLE, schema)
    return (
        "SELECT h.activity_type, h.activity_id::text, h.kg_co2e, n.kg_co2e, "
        "fo.factor_set || ' ' || fo.key || ' ' || fo.year || ' (' || fo.edition || ')', "
        "fn.factor_set || ' ' || fn.key || ' ' || fn.year || ' (' || fn.edition || ')' "
        f"{_diff_from(schema)} JOIN {factors} fo ON fo.id = h.factor_id "
        f"JOIN {factors} fn ON fn.id = n.factor_id WHERE h.restatement_id = :rid "
        "ORDER BY abs(n.kg_co2e - h.kg_co2e) DESC, h.activity_type, h.activity_id LIMIT :n"
    )


def diff(
    engine: sa.Engine,
    restatement_id: str,
    largest: int = LARGEST,
    schema: str = tables.DEFAULT_SCHEMA,
) -> dict[str, Any]:
    """What a restatement changed, from the database: old rows are its history rows, new rows
    are those it wrote (still current, or superseded since by a later restatement)."""
    params = {"rid": restatement_id}
    with engine.connect() as conn:
        groups = conn.execute(sa.text(_diff_groups_sql(schema)), params).all()
        top = conn.execute(sa.text(_diff_largest_sql(schema)), {**params, "n": largest}).all()
    out_groups = [
        {
            "activity_type": t,
            "scope": int(s),
            "category": None if c is None else int(c),
            "changed": int(n),
            "old_kg": float(old),
            "new_kg": float(new),
        }
        for t, s, c, n, old, new in groups
    ]
    return {
        "changed": sum(g["changed"] for g in out_groups),
        "old_kg": sum(g["old_kg"] for g in out_groups),
        "new_kg": sum(g["new_kg"] for g in out_groups),
        "groups": out_groups,
        "largest": [
            {
                "activity_type": t,
                "activity_id": i,
                "old_kg": float(old),
                "new_kg": float(new),
                "old_factor": fo,
                "new_factor": fn,
            }
            for t, i, old, new, fo, fn in top
        ],
    }


def restate(
    engine: sa.Engine,
    pins: Mapping[str, str] | None = None,
    activity_types: Sequence[ActivityType] = ACTIVITY_TYPES,
    chunk: int = 20_000,
    schema: str = tables.DEFAULT_SCHEMA,
    sources: Sources | None = None,
    chosen: stored_sources.Chosen | None = None,
    policy: retry.RetryPolicy = retry.DEFAULT_POLICY,
) -> Outcome:
    """Restate the stored results of ``activity_types`` on the editions chosen by ``pins``,
    with each activity as its source holds it (``sources``: checked; default: the pipeline's
    own tables; ``chosen``: where they came from, recorded with the restatement). Each result
    is recomputed with the plausibility bounds its run recorded.

    One restatement per schema at a time: it reads results in one snapshot and replaces them
    afterwards, so a second one in the same schema must not interleave (a session advisory
    lock keyed by the schema; refused if held). Restatements of other schemas run beside it.

    Transient failures (the server restarting) are retried as a run retries them (``policy``):
    each step again, the lock taken again, the results restated from where their committed
    changes end.
    """
    retry.call(  # an older database gains the audit tables
        lambda: install.ensure_initialised(engine, schema),
        what="checking the schema",
        policy=policy,
    )
    sources = sources or default_sources(schema)
    lock = _SchemaLock(engine, schema)
    retry.call(lock.take, what="taking the restatement lock", policy=policy)
    try:
        return _restate(engine, pins, activity_types, chunk, schema, sources, chosen, lock, policy)
    finally:
        lock.release()


def _restate(
    engine: sa.Engine,
    pins: Mapping[str, str] | None,
    activity_types: Sequence[ActivityType],
    chunk: int,
    schema: str,
    sources: Sources,
    chosen: stored_sources.Chosen | None = None,
    lock: _SchemaLock | None = None,
    policy: retry.RetryPolicy = retry.DEFAULT_POLICY,
) -> Outcome:
    """``restate`` under its lock: reads the factors and the runs' options, records the
    restatement's start, restates each type, and records its end (failed or succeeded)."""
    chosen_pins = dict(pins or {})
    chosen = chosen or stored_sources.Chosen(dict(sources), None, stored_sources.OWN_TABLES)

    def read_options() -> dict[str, dict[str, Any]]:
        with engine.connect() as c:
            return stored_sources.recorded_options(c, schema)

    recorded = retry.call(read_options, what="reading the runs' options", policy=policy)

    def limits_of(run_id: str) -> Limits:
        return stored_sources.recorded_limits(recorded.get(run_id)) or DEFAULT_LIMITS

    def read_factors() -> list[FactorRow]:
        with connections.raw_connection(engine) as conn:
            return editions.choose_factor_rows(
                editions.read_all_factor_rows(conn, schema), chosen_pins
            )

    rows = retry.call(read_factors, what="reading the factors", policy=policy)
    book = FactorBook.from_rows(rows)
    in_force = editions.editions_in_force(rows)
    outcome = Outcome(str(uuid.uuid4()), chosen_pins)
    _record_start(engine, outcome, in_force, chosen, schema, policy)
    try:
        # Alive while it works, as a run is: a long restatement is never marked abandoned.
        with runs.heartbeat_apart(engine, outcome.restatement_id, schema):
            for t in activity_types:
                if t in sources:
                    _restate_type(
                        engine, sources[t], book, outcome, chunk, schema, limits_of, lock, policy
                    )
            outcome.diff = retry.call(
                lambda: diff(engine, outcome.restatement_id, schema=schema),
                what="reading the restatement's diff",
                policy=policy,
            )
    except Exception as e:
        _record_failed(engine, outcome, schema, e)
        raise
    _record_succeeded(engine, outcome, in_force, chosen, schema, policy)
    return outcome


def _record_failed(engine: sa.Engine, outcome: Outcome, schema: str, e: Exception) -> None:
    """Records the restatement failed with ``e``'s one-line message (the password scrubbed)."""
    table = tables.table(tables.RESTATEMENTS_TABLE, schema)
    message = connections.scrub(failure_message(e), engine.url.render_as_string(False))
    _record_end(
        engine,
        table.update()
        .where(table.c.restatement_id == outcome.restatement_id)
        .values(status="failed", finished_at=sa.func.now(), message=message),
        outcome.restatement_id,
        schema,
        retry.RetryPolicy(attempts=2, base_delay=0.5),
        status="failed",
        message=message,
    )


def _record_succeeded(
    engine: sa.Engine,
    outcome: Outcome,
    in_force: Any,
    chosen: stored_sources.Chosen,
    schema: str,
    policy: retry.RetryPolicy,
) -> None:
    """Records the restatement succeeded, with its counts, diff and the options it applied."""
    table = tables.table(tables.RESTATEMENTS_TABLE, schema)
    _record_end(
        engine,
        table.update()
        .where(table.c.restatement_id == outcome.restatement_id)
        .values(
            status="succeeded",
            finished_at=sa.func.now(),
            examined=outcome.examined,
            changed=outcome.changed,
            refused=outcome.refused,
            left_to_next_run=outcome.left_to_next_run,
            diff=outcome.diff,
        ),
        outcome.restatement_id,
        schema,
        policy,
        status="succeeded",
        total_processed=outcome.changed,
        total_co2e_tonnes=outcome.diff["new_kg"] / 1000.0,
        factor_editions=in_force,
        code_version=editions.code_version(),
        # The loosest bounds applied: every result it wrote passes them (audit.verify).
        calculation_options=stored_sources.calculation_options(
            None, stored_sources.loosest(sorted(outcome.limits, key=repr)), outcome.pins, chosen
        ),
        message=f"restatement: {outcome.changed} of {outcome.examined} results restated"
        + (
            f"; {outcome.left_to_next_run} left to the next run (their input changed meanwhile)"
            if outcome.left_to_next_run
            else ""
        ),
    )


def _record_start(
    engine: sa.Engine,
    outcome: Outcome,
    in_force: Any,
    chosen: stored_sources.Chosen,
    schema: str,
    policy: retry.RetryPolicy,
) -> None:
    """The restatement's row and its run's row, each written once however often tried (a
    retry may follow a commit whose reply was lost)."""
    table = tables.table(tables.RESTATEMENTS_TABLE, schema)

    def insert() -> None:
        with engine.begin() as c:
            c.execute(
                postgresql.insert(table)
                .values(
                    restatement_id=outcome.restatement_id,
                    status="running",
                    pins=outcome.pins,
                    factor_editions=in_force,
                    code_version=editions.code_version(),
                )
                .on_conflict_do_nothing(index_elements=[table.c.restatement_id])
            )

    retry.call(insert, what="recording the restatement", policy=policy)
    attempts: list[int] = []

    def start() -> None:
        attempts.append(1)
        try:
            runs.start_run(
                engine,
                outcome.restatement_id,
                "restatement",
                {"pins": outcome.pins, "sources": chosen.path},
                schema,
                code_version=editions.code_version(),
                sources_sha256=chosen.sha256,
                calculation_options=stored_sources.calculation_options(
                    None, None, outcome.pins, chosen
                ),
            )
        except runs.RunIdTaken:
            if len(attempts) == 1:
                raise  # a retry finds the row its first attempt committed

    retry.call(start, what="recording the restatement", policy=policy)


def _record_end(
    engine: sa.Engine,
    update: Any,
    restatement_id: str,
    schema: str,
    policy: retry.RetryPolicy,
    **fields: Any,
) -> None:
    """The restatement's outcome (``update`` of its row) and its run's (``fields``)."""

    def store() -> None:
        with engine.begin() as c:
            c.execute(update)

    retry.call(store, what="recording the restatement's outcome", policy=policy)
    retry.call(
        lambda: runs.finish_run(engine, restatement_id, schema, **fields),
        what="recording the restatement's outcome",
        policy=policy,
    )


def build_parser() -> argparse.ArgumentParser:
    """The command's options."""
    parser = cli.parser("audit.restate", __doc__)
    cli.add_database_option(parser)
    parser.add_argument(
        "--pin",
        action="append",
        default=[],
        metavar="SET=EDITION",
        help="use only this edition of a factor set (repeatable)",
    )
    cli.add_activity_types_option(parser, "restate")
    cli.add_log_level_option(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    cli.setup_logging(args.log_level)
    types = cli.split_activity_types(args.activity_types)
    try:
        pins = editions.parse_pins(args.pin)
        unknown = [t for t in types if t not in ACTIVITY_TYPES]
        if unknown:
            raise editions.EditionError(f"unknown activity types {unknown}: {ACTIVITY_TYPES}")
    except editions.EditionError as e:
        cli.error(str(e))
        return cli.USAGE

    def restate_results(target: cli.Target) -> int:
        try:
            outcome = restate(
                target.engine,
                pins,
                [t for t in ACTIVITY_TYPES if t in types],
                schema=target.schema,
                sources=retry.call(
                    lambda: cli.checked_sources(target), what="checking the sources"
                ),
                chosen=target.chosen,
            )
        except editions.EditionError as e:
            raise cli.UsageError(str(e)) from None
        cli.print_json(outcome.as_dict())
        return cli.OK

    # Three connections: the lock, the reader and the writer.
    return cli.run(args, "restatement", restate_results, pool_size=3, max_overflow=0)


if __name__ == "__main__":
    sys.exit(main())
