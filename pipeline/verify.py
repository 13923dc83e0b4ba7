"""Replay: recompute stored results from their stored inputs and say which do not reproduce.

    python -m pipeline.verify [--database-url URL] [--sample N | --all] [--seed S]
                              [--activity-types electricity,spend,air_travel] [--show 20]

For each result examined, the activity row is read back, the result is recomputed with the
per-row methodology and the factor rows the result was computed against (the editions in
force for its run or restatement, with any row it names that has since been superseded put
back), and every stored field is compared exactly. The stored fingerprints (``pipeline.audit``)
say why a result does not reproduce:

- ``input_changed``: the activity row differs from the one the result was computed from;
- ``input_missing``: the activity row is gone;
- ``factor_changed``: a factor row it names differs from the one it was computed with;
- ``code_changed``: the methodology's code version differs, and the numbers with it;
- ``factor_selection_changed``: the same inputs now select another factor row (a newer
  edition or year was loaded since): a restatement would update it;
- ``refused``: the methodology now refuses the input;
- ``not_reproduced``: same input, same factors, different numbers: the stored row was altered.

Exit status 0 when every examined result reproduces, 1 when any does not, 2 for bad options.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import psycopg2.extensions
import sqlalchemy as sa
from psycopg2 import sql

from pipeline import audit, db
from pipeline.embedded import resolve_database_url
from pipeline.methodology import FactorBook, calculate
from pipeline.model import (
    ACTIVITY_CLASSES,
    ACTIVITY_TYPES,
    ActivityType,
    FactorRow,
    InputError,
    activity_fields,
)

#: Stored result fields compared with the recomputation (the run and time are bookkeeping).
COMPARED = db.RESULT_COLUMNS
_FACTOR_ID_FIELDS = ("factor_id", "fx_factor_id", "cpi_factor_id", "cpi_base_factor_id")
_STORED = ("input_fingerprint", "factor_fingerprint", "code_version", "fingerprint")


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
    unsealed: int = 0  # results with no stored fingerprint (written before sealing existed)
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
            rows = audit.choose_factor_rows(self._rows, pins)
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


def _pins_by_run(engine: sa.Engine) -> dict[str, dict[str, str]]:
    """The editions each run or restatement was pinned to (none: the newest rows)."""
    with engine.connect() as conn:
        rows = conn.execute(
            sa.text(
                f"SELECT restatement_id, pins FROM {db.RESTATEMENTS_TABLE} UNION ALL "
                f"SELECT run_id, factor_pins FROM {db.RUNS_TABLE} WHERE factor_pins IS NOT NULL"
            )
        ).all()
    return {str(r[0]): dict(r[1] or {}) for r in rows}


def _query(
    activity_type: ActivityType, sample: int | None, seed: str
) -> tuple[sql.Composed, list[str], list[str]]:
    a_cols = list(activity_fields(activity_type))
    r_cols = list(COMPARED)
    extra: list[sql.Composable] = [
        sql.SQL("a.{} AS {}").format(sql.Identifier(c), sql.Identifier(f"a__{c}")) for c in a_cols
    ]
    extra += [
        sql.SQL("r.{} AS {}").format(sql.Identifier(c), sql.Identifier(f"r__{c}")) for c in r_cols
    ]
    extra += [sql.SQL("fp.{}").format(sql.Identifier(c)) for c in _STORED]
    if sample is None:
        tail = sql.SQL("")
    else:
        tail = sql.SQL("ORDER BY md5(r.activity_id::text || {}) LIMIT {}").format(
            sql.Literal(seed), sql.Literal(sample)
        )
    return audit.fingerprint_query(activity_type, sql.SQL("TRUE"), extra, tail), a_cols, r_cols


def _check_row(
    activity_type: ActivityType,
    row: dict[str, Any],
    a_cols: list[str],
    r_cols: list[str],
    books: _Books,
    version: str,
) -> Mismatch | None:
    stored = {c: row[f"r__{c}"] for c in r_cols}
    ident = str(stored["activity_id"])
    if row["input_fp"] is None:
        return Mismatch(activity_type, ident, "input_missing", {}, "the activity row is gone")
    sealed = row["fingerprint"] is not None
    if sealed and row["input_fp"] != row["input_fingerprint"]:
        return Mismatch(activity_type, ident, "input_changed", {}, "the activity row changed since")
    if sealed and row["factor_fp"] != row["factor_fingerprint"]:
        return Mismatch(activity_type, ident, "factor_changed", {}, "a factor row it names changed")
    activity = ACTIVITY_CLASSES[activity_type](**{c: row[f"a__{c}"] for c in a_cols})
    book = books.for_result(str(row["run_id"]), [stored[c] for c in _FACTOR_ID_FIELDS])
    rf = stored["radiative_forcing"]
    try:
        again = calculate(activity, book, radiative_forcing=True if rf is None else bool(rf))
    except InputError as e:
        return Mismatch(activity_type, ident, "refused", {}, f"{e.code}: {e.message}")
    differ: dict[str, list[Any]] = {}
    for c in r_cols:
        value = getattr(again, c)
        if stored[c] != value and not _same(stored[c], value):
            differ[c] = [stored[c], value]
    if not differ:
        return None
    if any(c in differ for c in _FACTOR_ID_FIELDS):
        status = "factor_selection_changed"
    elif sealed and row["code_version"] != version:
        status = "code_changed"
    else:
        status = "not_reproduced"
    return Mismatch(activity_type, ident, status, differ)


def verify(
    engine: sa.Engine,
    activity_types: Sequence[ActivityType] = ACTIVITY_TYPES,
    sample: int | None = 1000,
    seed: str = "0",
    batch: int = 10_000,
) -> VerifyReport:
    """Recompute ``sample`` results per type (all when None) and compare them exactly."""
    db.create_schema(engine)  # an older database gains the audit tables and columns
    version = audit.code_version()
    report = VerifyReport(code_version=version)
    pins = _pins_by_run(engine)
    with db.raw_connection(engine) as conn:
        books = _Books(audit.read_all_factor_rows(conn), pins)
        for t in activity_types:
            _verify_type(conn, t, sample, seed, batch, books, version, report)
    return report


def _verify_type(
    conn: psycopg2.extensions.connection,
    activity_type: ActivityType,
    sample: int | None,
    seed: str,
    batch: int,
    books: _Books,
    version: str,
    report: VerifyReport,
) -> None:
    query, a_cols, r_cols = _query(activity_type, sample, seed)
    with conn.cursor() as settings:
        audit.stable_text(settings)  # for this transaction, which the named cursor runs in
    with conn.cursor(name=f"verify_{activity_type}") as cur:
        cur.itersize = batch
        cur.execute(query)
        names: list[str] | None = None
        for values in cur:
            if names is None:
                names = ["activity_id", "input_fp", "factor_fp", "run_id", "radiative_forcing"]
                names += [f"a__{c}" for c in a_cols] + [f"r__{c}" for c in r_cols]
                names += list(_STORED)
            row = dict(zip(names, values, strict=True))
            report.examined += 1
            if row["fingerprint"] is None:
                report.unsealed += 1
            found = _check_row(activity_type, row, a_cols, r_cols, books, version)
            if found is None:
                report.reproduced += 1
            else:
                report.by_status[found.status] += 1
                report.mismatches.append(found)
    conn.commit()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline.verify",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--database-url", default=None)
    how = parser.add_mutually_exclusive_group()
    how.add_argument("--sample", type=int, default=1000, help="results per activity type")
    how.add_argument("--all", action="store_true", help="every result")
    parser.add_argument("--seed", default="0", help="chooses the sample (deterministic)")
    parser.add_argument("--activity-types", default=",".join(ACTIVITY_TYPES))
    parser.add_argument("--show", type=int, default=20, help="mismatches listed in the output")
    args = parser.parse_args(argv)
    types = [t.strip() for t in args.activity_types.split(",") if t.strip()]
    unknown = [t for t in types if t not in ACTIVITY_TYPES]
    if unknown or (not args.all and args.sample < 1):
        print(
            f"error: activity types are {', '.join(ACTIVITY_TYPES)}; --sample must be ≥ 1",
            file=sys.stderr,
        )
        return 2
    url = resolve_database_url(args.database_url)
    engine = db.make_engine(url, pool_size=1, max_overflow=0)
    try:
        report = verify(
            engine,
            [t for t in ACTIVITY_TYPES if t in types],
            sample=None if args.all else args.sample,
            seed=args.seed,
        )
    except Exception as e:  # noqa: BLE001 - reported, then a non-zero exit
        print(f"error: verify failed: {db.scrub(f'{type(e).__name__}: {e}', url)}", file=sys.stderr)
        return 1
    finally:
        engine.dispose()
    print(json.dumps(report.as_dict(args.show), indent=2, default=str))
    return 0 if report.reproduced == report.examined else 1


if __name__ == "__main__":
    sys.exit(main())
