"""Replay: recompute stored results from their stored inputs and say which do not reproduce.

    python -m audit.verify [--database-url URL] [--sample N | --all] [--seed S]
                              [--activity-types electricity,spend,air_travel] [--show 20]

For each result examined, the activity row is read back, the result is recomputed with the
per-row methodology and the factor rows the result was computed against (the editions in
force for its run or restatement, with any row it names that has since been superseded put
back), and every stored field is compared exactly. The fingerprints stored beside the result
(``pipeline.fingerprint``), against the same fingerprints of the rows as they are now, say why
a result does not reproduce:

- ``input_changed``: the activity row differs from the one the result was computed from:
  when its version moved, the next run recomputes it (the result moves to history, reason
  ``activity_changed``); when it did not (an application that changed the row without its
  version column), only ``pipeline.run --recheck`` does;
- ``input_missing``: the activity row is gone: the next run retires the result (to history,
  reason ``activity_deleted``);
- ``factor_changed``: a factor row it names differs from the one it was computed with;
- ``code_changed``: the methodology's code version differs, and the numbers with it;
- ``factor_selection_changed``: the same inputs now select another factor row (a newer
  edition or year was loaded since): a restatement would update it;
- ``refused``: the methodology now refuses the input;
- ``not_reproduced``: same input, same factors, different numbers: the stored row was altered.

Stored Scope 2 market-based lines are replayed too, a market boundary and year at a time
(``audit.verify_market``), under ``market_based`` in the output.

Exit status 0 when every examined result reproduces, 1 when any does not, 2 for bad options.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import math
import sys
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import psycopg2.extensions
import pyarrow as pa
import sqlalchemy as sa
from psycopg2 import sql

from audit.verify_market import verify_market_based
from pipeline import cli, editions, fingerprint
from pipeline.methodology import FactorBook, calculate
from pipeline.methodology.batch import activity_schema
from pipeline.model import (
    ACTIVITY_CLASSES,
    ACTIVITY_TYPES,
    DEFAULT_LIMITS,
    ActivityType,
    FactorRow,
    InputError,
    Limits,
    activity_fields,
)
from pipeline.store import connections, install, stored_sources, tables
from pipeline.store.sources import Source, Sources, default_sources, read_only, relation

#: Stored result fields compared with the recomputation (the run and time are bookkeeping).
COMPARED = tables.RESULT_COLUMNS
_FACTOR_ID_FIELDS = fingerprint.FACTOR_ID_FIELDS


@dataclass(frozen=True)
class Mismatch:
    """One result that does not reproduce, and why."""

    activity_type: str
    activity_id: str
    status: str
    fields: dict[str, list[Any]]  # field → [stored, recomputed]
    detail: str = ""


@dataclass
class VerifyReport:
    """What ``verify`` found."""

    examined: int = 0
    reproduced: int = 0
    unsealed: int = 0  # results with no stored fingerprints (written before they were kept)
    by_status: Counter[str] = field(default_factory=Counter)
    mismatches: list[Mismatch] = field(default_factory=list)
    code_version: str = ""

    def as_dict(self, show: int = 20) -> dict[str, Any]:
        return {
            "examined": self.examined,
            "reproduced": self.reproduced,
            "not_reproduced": self.examined - self.reproduced,
            "unsealed": self.unsealed,
            "by_status": dict(sorted(self.by_status.items())),
            "code_version": self.code_version,
            "mismatches": [dataclasses.asdict(m) for m in self.mismatches[:show]],
        }


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return a == b or (math.isnan(a) and math.isnan(b))
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b or a == b
    if isinstance(a, int | float) and isinstance(b, int | float):
        return float(a) == float(b)
    return a == b


class _Books:
    """Factor books on demand: per pin set, with superseded rows a result names put back."""

    def __init__(self, rows: Sequence[FactorRow], pins_by_run: Mapping[str, dict[str, str]]):
        self._rows = list(rows)
        self._by_id = {r.id: r for r in rows}
        self._pins_by_run = pins_by_run
        self._chosen: dict[str, tuple[list[FactorRow], set[int | None]]] = {}
        self._books: dict[tuple[str, tuple[int, ...]], FactorBook] = {}
        self._keys: dict[str, str] = {}

    def for_result(self, run_id: str, factor_ids: Sequence[int | None]) -> FactorBook:
        pins = self._pins_by_run.get(run_id, {})
        pins_key = self._keys.get(run_id)
        if pins_key is None:
            pins_key = self._keys[run_id] = json.dumps(pins, sort_keys=True)
        if pins_key not in self._chosen:
            rows = editions.choose_factor_rows(self._rows, pins)
            self._chosen[pins_key] = (rows, {r.id for r in rows})
        chosen, in_force = self._chosen[pins_key]
        back = tuple(sorted(i for i in factor_ids if i is not None and i not in in_force))
        key = (pins_key, tuple(i for i in back if i in self._by_id))
        if key not in self._books:
            restored = [self._by_id[i] for i in key[1]]
            replaced = {(r.factor_set, r.key, r.year) for r in restored}
            rows = [r for r in chosen if (r.factor_set, r.key, r.year) not in replaced]
            self._books[key] = FactorBook.from_rows(rows + restored)
        return self._books[key]


def _runs(
    engine: sa.Engine, schema: str
) -> tuple[dict[str, dict[str, str]], dict[str, str | None]]:
    """Per run or restatement: the editions it was pinned to (none: the newest rows), and the
    methodology's code version it ran."""
    with engine.connect() as conn:
        rows = conn.execute(
            sa.text(
                "SELECT restatement_id, pins, code_version FROM "
                f"{tables.qualified_text(tables.RESTATEMENTS_TABLE, schema)} "
                "UNION ALL SELECT run_id, factor_pins, code_version FROM "
                f"{tables.qualified_text(tables.RUNS_TABLE, schema)}"
            )
        ).all()
    pins = {str(r[0]): dict(r[1] or {}) for r in rows if r[1] is not None}
    versions: dict[str, str | None] = {}
    for r in rows:
        versions[str(r[0])] = versions.get(str(r[0])) or r[2]
    return pins, versions


def _query(source: Source, sample: int | None, seed: str, schema: str) -> sql.Composed:
    """Results of one type with their activity row as it is now (NULLs when it is gone)."""
    activity_type = source.activity_type
    columns = [sql.SQL("a.id IS NULL")]
    columns += [sql.SQL("a.{}").format(sql.Identifier(c)) for c in activity_fields(activity_type)]
    columns += [sql.SQL("r.{}").format(sql.Identifier(c)) for c in _READ]
    columns.append(sql.SQL("a.activity_version IS DISTINCT FROM r.activity_version"))
    if sample is None:
        tail = sql.SQL("")
    else:
        tail = sql.SQL("ORDER BY md5(r.activity_id::text || {}) LIMIT {}").format(
            sql.Literal(seed), sql.Literal(sample)
        )
    return sql.SQL(
        "SELECT {columns} FROM {results} r LEFT JOIN ({activities}) a ON a.id = r.activity_id "
        "WHERE r.activity_type = {t} {tail}"
    ).format(
        columns=sql.SQL(", ").join(columns),
        results=tables.qualified(tables.RESULTS_TABLE, schema),
        activities=relation(source),
        t=sql.Literal(activity_type),
        tail=tail,
    )


#: What is read of a stored result: the compared fields, its fingerprints and its run.
_READ = (*COMPARED, *tables.FINGERPRINT_COLUMNS, "run_id")


@dataclass(frozen=True)
class _Context:
    """What every row's check needs besides the row."""

    books: _Books
    factor_fps: fingerprint.FactorFingerprints  # of the factor rows as they are now
    code_versions: Mapping[str, str | None]  # run or restatement → its code version
    version: str  # the code version now
    #: run or restatement → the options it recorded that change numbers (revision 0005)
    options: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)

    def limits(self, run_id: str) -> Limits:
        """The plausibility bounds the run computed with (the defaults if it recorded none)."""
        return stored_sources.recorded_limits(self.options.get(run_id)) or DEFAULT_LIMITS

    def radiative_forcing(self, run_id: str, stored: bool | None) -> bool:
        """The result's own choice; else the run's; else with (air travel only has one)."""
        if stored is not None:
            return bool(stored)
        recorded = self.options.get(run_id, {}).get("radiative_forcing")
        return True if recorded is None else bool(recorded)


def _changed(version_moved: bool) -> str:
    """What will recompute a result whose activity row changed: a run sees a new version;
    a change that left the version as it was is seen only by ``--recheck``."""
    if version_moved:
        return "the activity row changed since: the next run recomputes it"
    return (
        "the activity row changed since, but not its version: run pipeline.run --recheck "
        "to recompute it"
    )


def _check_row(
    activity_type: ActivityType,
    missing: bool,
    activity: dict[str, Any],
    stored: dict[str, Any],
    now: tuple[int, int],
    ctx: _Context,
    version_moved: bool = True,
) -> Mismatch | None:
    ident = str(stored["activity_id"])
    if missing:
        return Mismatch(
            activity_type,
            ident,
            "input_missing",
            {},
            "the activity row is gone since: the next run retires this result",
        )
    sealed = stored["input_fingerprint"] is not None
    if sealed and now[0] != stored["input_fingerprint"]:
        return Mismatch(activity_type, ident, "input_changed", {}, _changed(version_moved))
    if sealed and now[1] != stored["factor_fingerprint"]:
        return Mismatch(activity_type, ident, "factor_changed", {}, "a factor row it names changed")
    run_id = str(stored["run_id"])
    book = ctx.books.for_result(run_id, [stored[c] for c in _FACTOR_ID_FIELDS])
    try:
        again = calculate(
            ACTIVITY_CLASSES[activity_type](**activity),
            book,
            radiative_forcing=ctx.radiative_forcing(run_id, stored["radiative_forcing"]),
            limits=ctx.limits(run_id),
        )
    except InputError as e:
        return Mismatch(activity_type, ident, "refused", {}, f"{e.code}: {e.message}")
    differ: dict[str, list[Any]] = {}
    for c in COMPARED:
        value = getattr(again, c)
        if stored[c] != value and not _same(stored[c], value):
            differ[c] = [stored[c], value]
    if not differ:
        return None
    ran = ctx.code_versions.get(run_id)
    if any(c in differ for c in _FACTOR_ID_FIELDS):
        status = "factor_selection_changed"
    elif ran is not None and ran != ctx.version:
        status = "code_changed"
    else:
        status = "not_reproduced"
    return Mismatch(activity_type, ident, status, differ)


def _fingerprints_now(
    activity_type: ActivityType,
    activities: list[dict[str, Any]],
    stored: list[dict[str, Any]],
    factor_fps: fingerprint.FactorFingerprints,
) -> list[tuple[int, int]]:
    """(input, factor) fingerprints of a chunk's activity rows and factor rows as they are now."""
    id_type = pa.int64() if isinstance(stored[0]["activity_id"], int) else pa.string()
    columns: dict[str, list[Any]] = {c: [] for c in activity_fields(activity_type)}
    for a in activities:
        for c, v in a.items():
            columns[c].append(v.isoformat() if isinstance(v, datetime.date) else v)
    if id_type == pa.string():
        columns["id"] = [None if v is None else str(v) for v in columns["id"]]
    table = pa.table(columns, schema=activity_schema(activity_type, id_type))
    inputs = fingerprint.input_fingerprints(table, activity_fields(activity_type)).to_pylist()
    ids = pa.table({c: pa.array([s[c] for s in stored], pa.int64()) for c in _FACTOR_ID_FIELDS})
    factors = factor_fps.of_results(ids).to_pylist()
    return list(zip(inputs, factors, strict=True))


def verify(
    engine: sa.Engine,
    activity_types: Sequence[ActivityType] = ACTIVITY_TYPES,
    sample: int | None = 1000,
    seed: str = "0",
    batch: int = 10_000,
    schema: str = tables.DEFAULT_SCHEMA,
    sources: Sources | None = None,
) -> VerifyReport:
    """Recompute ``sample`` results per type (all when None) and compare them exactly, with
    each activity as its source holds it now (``sources``: checked; default: the pipeline's
    own tables)."""
    install.ensure_initialised(engine, schema)  # an older database gains the audit columns
    sources = sources or default_sources(schema)
    version = editions.code_version()
    report = VerifyReport(code_version=version)
    pins, versions = _runs(engine, schema)
    with engine.connect() as c:
        recorded = stored_sources.recorded_options(c, schema)
    with connections.raw_connection(engine) as conn:
        factor_rows = editions.read_all_factor_rows(conn, schema)
        ctx = _Context(
            _Books(factor_rows, pins),
            fingerprint.FactorFingerprints(fingerprint.factor_fingerprints(factor_rows)),
            versions,
            version,
            recorded,
        )
        for t in activity_types:
            if t in sources:
                _verify_type(conn, sources[t], sample, seed, batch, ctx, report, schema)
    return report


def _verify_type(
    conn: psycopg2.extensions.connection,
    source: Source,
    sample: int | None,
    seed: str,
    batch: int,
    ctx: _Context,
    report: VerifyReport,
    schema: str,
) -> None:
    activity_type = source.activity_type
    a_cols = activity_fields(activity_type)
    read_only(conn)  # the sources' SQL never runs where it could write
    with conn.cursor(name=f"verify_{activity_type}") as cur:
        cur.itersize = batch
        cur.execute(_query(source, sample, seed, schema))
        while chunk := cur.fetchmany(batch):
            missing = [bool(row[0]) for row in chunk]
            activities = [dict(zip(a_cols, row[1 : 1 + len(a_cols)], strict=True)) for row in chunk]
            stored = [dict(zip(_READ, row[1 + len(a_cols) : -1], strict=True)) for row in chunk]
            now = _fingerprints_now(activity_type, activities, stored, ctx.factor_fps)
            for i in range(len(chunk)):
                report.examined += 1
                if stored[i]["input_fingerprint"] is None:
                    report.unsealed += 1
                moved = bool(chunk[i][-1])
                found = _check_row(
                    activity_type, missing[i], activities[i], stored[i], now[i], ctx, moved
                )
                if found is None:
                    report.reproduced += 1
                else:
                    report.by_status[found.status] += 1
                    report.mismatches.append(found)
    conn.commit()


def build_parser() -> argparse.ArgumentParser:
    """The command's options."""
    parser = cli.parser("audit.verify", __doc__)
    cli.add_database_option(parser)
    how = parser.add_mutually_exclusive_group()
    how.add_argument("--sample", type=int, default=1000, help="results per activity type")
    how.add_argument("--all", action="store_true", help="every result")
    parser.add_argument("--seed", default="0", help="chooses the sample (deterministic)")
    cli.add_activity_types_option(parser, "verify")
    parser.add_argument("--show", type=int, default=20, help="mismatches listed in the output")
    cli.add_log_level_option(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    cli.setup_logging(args.log_level)
    types = cli.split_activity_types(args.activity_types)
    unknown = [t for t in types if t not in ACTIVITY_TYPES]
    if unknown or (not args.all and args.sample < 1):
        cli.error(f"activity types are {', '.join(ACTIVITY_TYPES)}; --sample must be ≥ 1")
        return cli.USAGE

    def check(target: cli.Target) -> int:
        checked = cli.checked_sources(target)
        report = verify(
            target.engine,
            [t for t in ACTIVITY_TYPES if t in types],
            sample=None if args.all else args.sample,
            seed=args.seed,
            schema=target.schema,
            sources=checked,
        )
        found = report.as_dict(args.show)
        instruments = cli.checked_instruments(target, cli.target_instruments(args, target))
        with connections.raw_connection(target.engine) as conn:
            market = verify_market_based(
                conn, target.schema, checked.get("electricity"), instruments, args.show
            )
        ok = report.reproduced == report.examined
        if market is not None:  # Scope 2 market-based lines are stored: replayed too
            found["market_based"] = market
            ok = ok and market["reproduced"] == market["years"] and not market["over_allocated"]
        cli.print_json(found)
        return cli.OK if ok else cli.FAILED

    return cli.run(args, "verify", check, pool_size=1, max_overflow=0)


if __name__ == "__main__":
    sys.exit(main())
