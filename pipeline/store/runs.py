"""Run records: a run's row in ``calculation_runs``, from start to outcome, and what it wrote.

Records are append-only: a run id is taken once, and a process only ever finishes the row it
started (``finish_run`` updates a row that is still ``running``), so no later mistake can
rewrite an earlier run's outcome.

What a run wrote is summed from its write log (``WRITES_TABLE``: a few rows per flush, written
in the same transaction as the results they describe), never by a scan of its results.

A run says it is alive by its heartbeat (``Heartbeat``: ``heartbeat_at`` set every few
seconds while it works); a run still ``running`` whose heartbeat is older than a threshold has
stopped without finishing (killed, its machine lost) and is marked ``abandoned``
(``mark_abandoned``), by a conditional update that a live run's heartbeat always escapes.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import logging
import threading
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from pipeline.levels import LEVELS, Tally, describe_coverage
from pipeline.store import claims
from pipeline.store.tables import (
    DEFAULT_SCHEMA,
    ERRORS_TABLE,
    RESULTS_TABLE,
    RUNS_TABLE,
    WRITES_TABLE,
    qualified_text,
    table,
)

_LOG = logging.getLogger(__name__)

#: Seconds between two heartbeats of a run that is working.
HEARTBEAT_INTERVAL = 5.0
#: A run still ``running`` whose last heartbeat is older than this (seconds) has stopped
#: without finishing: sixty heartbeats missed, far more than a database restart (retried for
#: about 35 s) or a busy machine can explain.
DEFAULT_STALE_AFTER = 300.0
#: The status of a run that stopped without finishing (found by its old heartbeat).
ABANDONED = "abandoned"


def _runs_table(schema: str) -> sa.Table:
    return table(RUNS_TABLE, schema)


class RunIdTaken(Exception):
    """The run id is already in ``calculation_runs``: run records are append-only, so a run
    never takes over (and later rewrites) the record of another."""


def _taken(conn: sa.Connection, runs: sa.Table, run_id: str) -> RunIdTaken | None:
    row = conn.execute(
        sa.select(runs.c.status, runs.c.started_at, runs.c.finished_at).where(
            runs.c.run_id == run_id
        )
    ).first()
    if row is None:
        return None
    status, started_at, finished_at = row
    if finished_at is None:
        when = f"{status} since {started_at.isoformat(sep=' ', timespec='seconds')}"
    else:
        when = f"{status} on {finished_at.isoformat(sep=' ', timespec='seconds')}"
    return RunIdTaken(f"run id {run_id} is already recorded ({when}): choose another")


def check_new_run_id(engine: sa.Engine, run_id: str, schema: str = DEFAULT_SCHEMA) -> None:
    """Raises ``RunIdTaken`` when ``run_id`` is already recorded, before a run writes
    anything (``start_run`` refuses it too, for two runs given the same id at once)."""
    with engine.connect() as conn:
        taken = _taken(conn, _runs_table(schema), run_id)
    if taken is not None:
        raise taken


def start_run(
    engine: sa.Engine,
    run_id: str,
    runner: str,
    options: dict[str, Any],
    schema: str = DEFAULT_SCHEMA,
    **fields: Any,
) -> None:
    """Record that a run has started (``fields``: more columns known from the start).

    Raises ``RunIdTaken``, and changes nothing, when the id is already recorded: the row of
    an earlier run is an audit record and stays as it is."""
    runs = _runs_table(schema)
    with engine.begin() as conn:
        inserted = conn.execute(
            postgresql.insert(runs)
            .values(
                run_id=run_id,
                status="running",
                runner=runner,
                options=json.loads(json.dumps(options, default=str)),
                heartbeat_at=sa.func.now(),
                **fields,
            )
            .on_conflict_do_nothing(index_elements=[runs.c.run_id])
        )
        if inserted.rowcount == 0:
            raise _taken(conn, runs, run_id) or RunIdTaken(f"run id {run_id} is already recorded")


@dataclass(frozen=True)
class Outcome:
    """What a run that succeeded stores in its row: its status and its summary's figures,
    typed, stored whole by ``finish_run``."""

    status: str
    total_activities: int
    skipped: int
    pending: int
    total_processed: int
    errors: int
    total_co2e_tonnes: float
    by_activity_type: dict[str, Any]
    timings: dict[str, Any]
    metrics_source: str | None
    quality: dict[str, Any]
    factor_pins: dict[str, Any]
    factor_editions: dict[str, Any]
    code_version: str

    @classmethod
    def of(cls, summary: Mapping[str, Any], status: str) -> Outcome:
        """The figures of a run summary (``pipeline.summary``) that its row stores."""
        names = [f.name for f in fields(cls) if f.name != "status"]
        return cls(status, **{name: summary[name] for name in names})


def finish_run(
    engine: sa.Engine,
    run_id: str,
    schema: str = DEFAULT_SCHEMA,
    outcome: Outcome | None = None,
    **values: Any,
) -> bool:
    """Store the outcome of a run this process started (``outcome`` whole, and ``values``:
    the status and message of one that failed); returns whether it did.

    Only a row still ``running`` is updated: a finished run's record (the audit trail) is
    never rewritten, whatever goes wrong later in a process that happens to know its id."""
    runs = _runs_table(schema)
    stored = {**(asdict(outcome) if outcome is not None else {}), **values}
    with engine.begin() as conn:
        updated = conn.execute(
            runs.update()
            .where(runs.c.run_id == run_id, runs.c.status == "running")
            .values(finished_at=sa.func.now(), **stored)
        )
        return bool(updated.rowcount == 1)


def note_run(engine: sa.Engine, run_id: str, schema: str = DEFAULT_SCHEMA, **fields: Any) -> bool:
    """Sets ``fields`` on the row of a run this process started, while it is ``running`` (what
    it learnt after its start, such as the sources it reads); returns whether it did."""
    runs = _runs_table(schema)
    with engine.begin() as conn:
        updated = conn.execute(
            runs.update()
            .where(runs.c.run_id == run_id, runs.c.status == "running")
            .values(**fields)
        )
        return bool(updated.rowcount == 1)


def outcome(
    engine: sa.Engine, run_id: str, schema: str = DEFAULT_SCHEMA
) -> tuple[str, str | None] | None:
    """The run's status and message as recorded, or None when it has no row."""
    runs = _runs_table(schema)
    with engine.connect() as conn:
        row = conn.execute(
            sa.select(runs.c.status, runs.c.message).where(runs.c.run_id == run_id)
        ).first()
    return None if row is None else (str(row[0]), row[1])


def beat(engine: sa.Engine, run_id: str, schema: str = DEFAULT_SCHEMA) -> bool:
    """Sets the run's ``heartbeat_at`` to now, if it is still ``running``; returns whether it
    is (False once it has finished, or another process has marked it abandoned)."""
    runs = _runs_table(schema)
    with engine.begin() as conn:
        updated = conn.execute(
            runs.update()
            .where(runs.c.run_id == run_id, runs.c.status == "running")
            .values(heartbeat_at=sa.func.now())
        )
        return bool(updated.rowcount == 1)


class Heartbeat:
    """While the ``with`` block runs, a daemon thread sets the run's ``heartbeat_at`` at once
    and then every ``interval`` seconds, on a connection of ``engine``'s pool for a moment
    each time. Stop it before the run records its outcome (leaving the block, or ``stop``).

    A heartbeat that cannot be written (the database restarting) is tried again at the next
    interval, said once in the log; once the row is no longer ``running`` (another process
    marked it abandoned), it says so and stops. Any long-lived process that owns a run's row
    (a run, a follow mode's cycle) keeps it alive this way."""

    def __init__(
        self,
        engine: sa.Engine,
        run_id: str,
        schema: str = DEFAULT_SCHEMA,
        interval: float = HEARTBEAT_INTERVAL,
    ) -> None:
        self._engine = engine
        self._run_id = run_id
        self._schema = schema
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="heartbeat", daemon=True)
        #: Heartbeats written; whether the row was still ``running`` at the last one.
        self.beats = 0
        self.running = True

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        """No more heartbeats (waits a moment for one being written), and the run's key-range
        claims are released: they live with its heartbeat (``claims``)."""
        if self._stop.is_set():
            return
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)
        try:
            claims.release_all(self._engine, self._run_id, self._schema)
        except Exception as e:  # noqa: BLE001 - they die with the run's record anyway
            _LOG.warning("the key ranges of run %s not released (%s)", self._run_id, e)

    def _loop(self) -> None:
        failing = False
        while not self._stop.is_set():
            try:
                self.running = beat(self._engine, self._run_id, self._schema)
            except Exception as e:  # noqa: BLE001 - tried again at the next interval
                if not failing:
                    _LOG.warning(
                        "heartbeat of run %s not recorded (%s); trying every %g s",
                        self._run_id,
                        type(e).__name__,
                        self._interval,
                    )
                failing = True
            else:
                failing = False
                if not self.running:
                    if not self._stop.is_set():
                        _LOG.warning(
                            "run %s is no longer 'running' in %s (marked by another process): "
                            "its heartbeat stops and its outcome will not be recorded",
                            self._run_id,
                            RUNS_TABLE,
                        )
                    return
                self.beats += 1
            self._stop.wait(self._interval)


@contextlib.contextmanager
def heartbeat_apart(
    engine: sa.Engine, run_id: str, schema: str = DEFAULT_SCHEMA
) -> Iterator[Heartbeat]:
    """A ``Heartbeat`` on connections of its own (one for a moment each time), for a process
    whose pool its work may take whole (a restatement): its beats never wait for it."""
    apart = sa.create_engine(engine.url, poolclass=sa.pool.NullPool)
    try:
        with Heartbeat(apart, run_id, schema) as beating:
            yield beating
    finally:
        apart.dispose()


def mark_abandoned(
    engine: sa.Engine,
    stale_after: float = DEFAULT_STALE_AFTER,
    schema: str = DEFAULT_SCHEMA,
    by: str = "ops.status",
) -> list[str]:
    """Marks ``abandoned`` every run still ``running`` whose last heartbeat (or start, for a
    run recorded before heartbeats) is more than ``stale_after`` seconds old; returns their ids.

    One conditional ``UPDATE``: a row is marked only if, when its lock is had, it is still
    ``running`` and its heartbeat still old, so a live run (whose heartbeat is written every
    few seconds) is never marked, and a run that finishes meanwhile keeps its outcome."""
    runs = _runs_table(schema)
    last_sign = sa.func.coalesce(runs.c.heartbeat_at, runs.c.started_at)
    since = sa.func.to_char(sa.func.timezone("UTC", last_sign), "YYYY-MM-DD HH24:MI:SS")
    message = (
        sa.literal("stopped without finishing: no heartbeat since ", sa.Text)
        + since
        + sa.literal(f" UTC (marked by {by})", sa.Text)
    )
    with engine.begin() as conn:
        marked = conn.execute(
            runs.update()
            .where(
                runs.c.status == "running",
                last_sign < sa.func.now() - sa.func.make_interval(0, 0, 0, 0, 0, 0, stale_after),
            )
            .values(status=ABANDONED, message=message)
            .returning(runs.c.run_id)
        )
        return sorted(str(r) for r in marked.scalars())


@dataclass(frozen=True)
class RunRecord:
    """A run as ``calculation_runs`` holds it: what an operator asks of it. ``duration_s``:
    to its end; for an abandoned run, to its last heartbeat; for a running one, to now.
    ``heartbeat_age_s``: for a run still ``running``, how old its last sign of life is."""

    run_id: str
    status: str
    runner: str | None
    started_at: datetime.datetime | None
    finished_at: datetime.datetime | None
    heartbeat_at: datetime.datetime | None
    duration_s: float | None
    heartbeat_age_s: float | None
    total_activities: int | None
    pending: int | None
    total_processed: int | None
    errors: int | None
    total_co2e_tonnes: float | None
    message: str | None
    airflow_dag_id: str | None
    airflow_run_id: str | None
    data_interval_start: datetime.datetime | None
    data_interval_end: datetime.datetime | None


def _records(
    conn: sa.Connection, runs: sa.Table, *where: Any, limit: int | None = None
) -> list[RunRecord]:
    c = runs.c
    end = sa.case(
        (c.finished_at.is_not(None), c.finished_at),
        (c.status == "running", sa.func.now()),
        else_=c.heartbeat_at,
    )
    duration = sa.cast(sa.func.extract("epoch", end - c.started_at), sa.Float).label("duration_s")
    age = sa.case(
        (
            c.status == "running",
            sa.cast(
                sa.func.extract(
                    "epoch", sa.func.now() - sa.func.coalesce(c.heartbeat_at, c.started_at)
                ),
                sa.Float,
            ),
        ),
        else_=None,
    ).label("heartbeat_age_s")
    query = (
        sa.select(
            c.run_id,
            c.status,
            c.runner,
            c.started_at,
            c.finished_at,
            c.heartbeat_at,
            duration,
            age,
            c.total_activities,
            c.pending,
            c.total_processed,
            c.errors,
            c.total_co2e_tonnes,
            c.message,
            c.airflow_dag_id,
            c.airflow_run_id,
            c.data_interval_start,
            c.data_interval_end,
        )
        .where(*where)
        .order_by(c.started_at.desc().nulls_last(), c.run_id)
        .limit(limit)
    )
    return [RunRecord(**{**r._asdict(), "run_id": str(r.run_id)}) for r in conn.execute(query)]


def recent_runs(
    engine: sa.Engine, schema: str = DEFAULT_SCHEMA, limit: int = 10
) -> list[RunRecord]:
    """The ``limit`` runs started last, newest first."""
    with engine.connect() as conn:
        return _records(conn, _runs_table(schema), limit=limit)


def last_succeeded(engine: sa.Engine, schema: str = DEFAULT_SCHEMA) -> RunRecord | None:
    """The run that succeeded last (by its start), or None."""
    runs = _runs_table(schema)
    with engine.connect() as conn:
        found = _records(conn, runs, runs.c.status == "succeeded", limit=1)
    return found[0] if found else None


def last_success_time(engine: sa.Engine, schema: str = DEFAULT_SCHEMA) -> float | None:
    """When the run that succeeded last (by its start) ended, as a Unix time; None if none
    has."""
    found = last_succeeded(engine, schema)
    ended = found.finished_at if found is not None else None
    return ended.timestamp() if ended is not None else None


def abandoned_since_success(engine: sa.Engine, schema: str = DEFAULT_SCHEMA) -> list[RunRecord]:
    """Runs marked abandoned that started after the last run that succeeded (every one, when
    none has), newest first: the ones an operator has not yet seen followed by a success."""
    runs = _runs_table(schema)
    succeeded = (
        sa.select(sa.func.max(runs.c.started_at))
        .where(runs.c.status == "succeeded")
        .scalar_subquery()
    )
    with engine.connect() as conn:
        return _records(
            conn,
            runs,
            runs.c.status == ABANDONED,
            runs.c.started_at
            > sa.func.coalesce(succeeded, sa.literal("-infinity").cast(sa.DateTime(timezone=True))),
        )


def hold_commits(engine: sa.Engine, schema: str, wait_s: float) -> sa.Connection | None:
    """Keeps every flush, of any run, from committing from now on, until the connection this
    returns closes (a stopped run lets it close with the process); None when the lock could
    not be had within ``wait_s`` seconds.

    A results flush writes its row of the write log last, just before its commit; a
    dead-letter flush writes its dead letters, then its row of the write log. A SHARE lock on
    both tables waits for the flushes that have already written there (they commit) and makes
    every other one wait there; when the process ends, their connections close and they roll
    back. What the run has committed is then fixed: counted while the lock is held, it is what
    stays stored.

    The dead letters' table is locked first, in the order every flush writes them: locked
    the other way round, a dead-letter flush between its dead letters and its log row waited
    for the write log this held while this waited for it, a deadlock PostgreSQL broke by
    failing the lock, and the flush committed beside a count taken without it (F9 of the
    fault harness: a stopped follow run recorded 82 dead letters of the 83 it stored)."""
    conn = engine.connect()
    try:
        conn.execute(
            sa.text("SELECT set_config('lock_timeout', :ms, true)"),
            {"ms": str(max(1, int(wait_s * 1000)))},
        )
        conn.execute(
            sa.text(
                f"LOCK TABLE {qualified_text(ERRORS_TABLE, schema)}, "
                f"{qualified_text(WRITES_TABLE, schema)} IN SHARE MODE"
            )
        )
    except sa.exc.DBAPIError:  # without the lock, what is counted is a lower bound
        with contextlib.suppress(Exception):
            conn.close()
        return None
    return conn


def _errors_sql(schema: str) -> str:
    """Per activity type: activities with a dead letter (of the run, or any) and no result."""
    return (
        "SELECT e.activity_type, count(DISTINCT e.activity_id) "
        f"FROM {qualified_text(ERRORS_TABLE, schema)} e WHERE NOT EXISTS (SELECT 1 FROM "
        f"{qualified_text(RESULTS_TABLE, schema)} r "
        "WHERE r.activity_type = e.activity_type AND r.activity_id = e.activity_id) "
        "AND e.retired_at IS NULL "
        "AND (CAST(:run_id AS uuid) IS NULL OR e.run_id = CAST(:run_id AS uuid)) "
        "GROUP BY e.activity_type"
    )


def run_coverage(engine: sa.Engine, run_id: str, schema: str = DEFAULT_SCHEMA) -> dict[str, Any]:
    """``coverage(engine, run_id)`` from the run's write log (``WRITES_TABLE``: a few rows
    per flush, written with the results they describe) instead of a scan of its results.

    The same counts; the kg CO2e are the same sums, added in another order (they agree to
    floating-point rounding, about 1e-15 relative)."""
    tallies: dict[str, Tally] = {}
    with engine.connect() as conn:
        logged = conn.execute(
            sa.text(
                "SELECT activity_type, results, kg_co2e, levels FROM "
                f"{qualified_text(WRITES_TABLE, schema)} "
                "WHERE run_id = CAST(:run_id AS uuid) AND results > 0 ORDER BY id"
            ),
            {"run_id": run_id},
        ).all()
        errors = errors_without_result(conn, run_id, schema)
    for activity_type, results, kg, by_level in logged:
        flush = Tally(
            int(results),
            float(kg),
            {name: (int(by_level[name][0]), float(by_level[name][1])) for name in LEVELS},
        )
        tallies.setdefault(activity_type, Tally()).add(flush)
    raw = {t: (c.results, c.kg_co2e, c.levels) for t, c in tallies.items()}
    return describe_coverage(raw, errors)


def errors_without_result(
    conn: sa.Connection, run_id: str | None, schema: str = DEFAULT_SCHEMA
) -> dict[str, int]:
    """Per activity type, the run's (or all) dead-lettered activities that have no result.
    Each is looked up in the results' primary key (see ``coverage``), never by a scan."""
    conn.execute(sa.text("SET LOCAL enable_seqscan = off"))
    found = conn.execute(sa.text(_errors_sql(schema)), {"run_id": run_id}).all()
    return {r[0]: int(r[1]) for r in found}


def results_written(engine: sa.Engine, run_id: str, schema: str = DEFAULT_SCHEMA) -> int:
    """How many results a run has committed so far, from its write log (no scan)."""
    with engine.connect() as conn:
        return int(
            conn.execute(
                sa.text(
                    "SELECT coalesce(sum(results), 0) FROM "
                    f"{qualified_text(WRITES_TABLE, schema)} "
                    "WHERE run_id = CAST(:run_id AS uuid)"
                ),
                {"run_id": run_id},
            ).scalar()
            or 0
        )


def nothing_written() -> dict[str, Any]:
    """The coverage of a run that wrote nothing (it had nothing pending)."""
    return describe_coverage({}, {})


def replaced_results(
    engine: sa.Engine, run_id: str, schema: str = DEFAULT_SCHEMA
) -> dict[str, int]:
    """Per activity type, how many of a run's results replaced those of changed activities
    (from its write log)."""
    with engine.connect() as conn:
        rows = conn.execute(
            sa.text(
                "SELECT activity_type, sum(replaced) FROM "
                f"{qualified_text(WRITES_TABLE, schema)} WHERE run_id = CAST(:run_id AS uuid) "
                "GROUP BY activity_type"
            ),
            {"run_id": run_id},
        ).all()
    return {str(t): int(n) for t, n in rows}
