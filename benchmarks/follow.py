"""The follow mode's benchmark: ``python -m benchmarks.follow [--count N] [--rate R]
[--seconds S] [--database-url URL] [-- follow options…]``.

1. seeds ``--count`` activities (default 1,000,000), all computed, as after a nightly run;
2. starts ``python -m pipeline.follow`` (its defaults: a poll every 2 s, the DirectRunner) and
   waits until it has read the seeded table (its first start reads it once, in windows: the
   time this takes is printed);
3. inserts ``--rate`` activities a second (default 200, spread over the three types, one
   transaction each) for ``--seconds`` (default 600), noting when each committed;
4. watches the results table every 0.1 s and notes when each activity's result appeared;
5. prints the latency from commit to stored result (p50, p95, max), the follow process's RSS
   a minute into the inserts and at their end, and checks that at the end every inserted
   activity has exactly one result and nothing is doubled; the latencies are also given for
   the activities committed after the first minute (the steady state, without the runner's
   start), and the follow run's log is kept in a temporary file named at the end.

Targets (issue "Results within seconds"): p95 ≤ 5 s; RSS end / start ≤ 1.1; none missing or
doubled. The figures are written to ``benchmarks/results/follow.json`` (``--results-file``).
Options it does not know go to ``pipeline.follow``: on the local Flink cluster,
``python -m benchmarks.follow --seconds 240 --results-file follow_flink.json
$(python -m ops.flink_cluster args) --stop-after 900``.
"""

from __future__ import annotations

import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import psutil
import psycopg2

from benchmarks.run import RESULTS_DIR, ROOT, seeded
from pipeline import cli
from pipeline.follow import add_follow_arguments
from pipeline.model import ACTIVITY_TYPES
from pipeline.options import parse_run_args
from pipeline.store import connections
from pipeline.store.embedded import server_url
from pipeline.store.tables import ACTIVITY_TABLES, CHANGE_COLUMN

#: Latencies are also given for the activities committed this long after the inserts began.
WARM_UP_S = 60.0
#: True once every type's mark has reached the newest seeded row: the follow run has read the
#: whole seeded table and knows it computed (``pipeline.store.marks``).
CAUGHT_UP = (
    "SELECT coalesce(bool_and(m.mark IS NOT NULL AND m.mark::bigint >= t.top), false) FROM "
    "(VALUES "
    + ", ".join(
        f"('{t}', (SELECT max({CHANGE_COLUMN}) FROM emissions.{ACTIVITY_TABLES[t]}))"
        for t in ACTIVITY_TYPES
    )
    + ") AS t (activity_type, top) LEFT JOIN emissions.follow_marks m USING (activity_type)"
)
#: True once each type has been polled.
FIRST_POLL = (
    f"SELECT count(*) = {len(ACTIVITY_TYPES)} FROM emissions.follow_marks WHERE scanned IS NOT NULL"
)
#: Ids of the inserted activities start here (the seeded ones are below).
BASE_ID = 50_000_000
#: (activity type, INSERT statement) in turn: valid rows, so each gets a result.
INSERTS = (
    (
        "electricity",
        "INSERT INTO emissions.electricity_activities (id, quantity, unit, region, country, "
        "activity_date) VALUES (%s, 1500, 'kWh', 'CAMX', 'USA', '2024-05-01')",
    ),
    (
        "spend",
        "INSERT INTO emissions.spend_activities (id, amount, currency, naics_code, "
        "activity_date) VALUES (%s, 2500, 'USD', '334111', '2024-05-01')",
    ),
    (
        "air_travel",
        "INSERT INTO emissions.air_travel_activities (id, origin, destination, cabin_class, "
        "passengers, return_trip, activity_date) VALUES (%s, 'LHR', 'JFK', 'economy', 1, "
        "false, '2024-05-01')",
    ),
)


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


class Inserter(threading.Thread):
    """``rate`` single-row transactions a second, at an even pace, until stopped."""

    def __init__(self, url: str, rate: float) -> None:
        super().__init__(name="inserter", daemon=True)
        self.url, self.rate = url, rate
        self.committed: dict[tuple[str, int], float] = {}
        self.stop = threading.Event()

    def run(self) -> None:
        conn = psycopg2.connect(self.url)
        conn.autocommit = True
        started, n = time.monotonic(), 0
        try:
            with conn.cursor() as cur:
                while not self.stop.is_set():
                    activity_type, statement = INSERTS[n % len(INSERTS)]
                    activity_id = BASE_ID + n
                    cur.execute(statement, (activity_id,))
                    self.committed[(activity_type, activity_id)] = time.monotonic()
                    n += 1
                    wait = started + n / self.rate - time.monotonic()
                    if wait > 0:
                        time.sleep(wait)
        finally:
            conn.close()


class Watcher(threading.Thread):
    """Notes when each inserted activity's result appears, looking every 0.1 s (from the
    lowest id per type not yet seen, through the results' primary key)."""

    def __init__(self, url: str) -> None:
        super().__init__(name="watcher", daemon=True)
        self.url = url
        self.seen: dict[tuple[str, int], float] = {}
        self.stop = threading.Event()

    def run(self) -> None:
        conn = psycopg2.connect(self.url)
        conn.autocommit = True
        lowest = {t: BASE_ID for t, _ in INSERTS}
        try:
            with conn.cursor() as cur:
                while not self.stop.is_set():
                    for activity_type in lowest:
                        cur.execute(
                            "SELECT activity_id FROM emissions.emission_results "
                            "WHERE activity_type = %s AND activity_id >= %s",
                            (activity_type, lowest[activity_type]),
                        )
                        now = time.monotonic()
                        for (activity_id,) in cur.fetchall():
                            self.seen.setdefault((activity_type, int(activity_id)), now)
                        while (activity_type, lowest[activity_type]) in self.seen:
                            lowest[activity_type] += len(INSERTS)
                        # ids of a type are BASE_ID + k*3 + offset: start at the right one
                        offset = [t for t, _ in INSERTS].index(activity_type)
                        if (lowest[activity_type] - BASE_ID) % len(INSERTS) != offset:
                            lowest[activity_type] = (
                                BASE_ID
                                + offset
                                + len(INSERTS) * ((lowest[activity_type] - BASE_ID) // len(INSERTS))
                            )
                    time.sleep(0.1)
        finally:
            conn.close()


def rss_mb(proc: psutil.Process) -> float:
    tree = [proc, *proc.children(recursive=True)]
    return sum(p.memory_info().rss for p in tree if p.is_running()) / 2**20


def scalar(url: str, query: str) -> Any:
    conn = connections.connect(url)
    try:
        with conn.cursor() as cur:
            cur.execute(query)
            return cur.fetchone()[0]
    finally:
        conn.close()


def main(argv: list[str] | None = None) -> int:
    parser = cli.parser("benchmarks.follow", __doc__.split("\n")[0])
    parser.add_argument("--count", type=int, default=1_000_000)
    parser.add_argument("--rate", type=float, default=200.0)
    parser.add_argument("--seconds", type=float, default=600.0)
    parser.add_argument(
        "--database-url", default=None, help="a server whose user may CREATE DATABASE"
    )
    parser.add_argument(
        "--results-file",
        default="follow.json",
        help="under benchmarks/results/ (e.g. follow_flink.json for a Flink run)",
    )
    parser.add_argument(
        "--insert-from-first-poll",
        action="store_true",
        help="begin the inserts at the follow run's first poll, while it still reads the "
        "seeded table (as after a long stop), instead of once it has caught up",
    )
    args, follow_args = parser.parse_known_args(argv)
    # The rest goes to pipeline.follow: checked here, before a million rows are seeded.
    parse_run_args(
        follow_args, add_follow_arguments, prog="pipeline.follow", known=cli.option_strings(parser)
    )
    server = args.database_url or server_url(ROOT / ".pgdata")
    say = lambda text: print(text, flush=True)  # noqa: E731
    say(f"seeding {args.count:,} activities, all computed …")
    url = seeded(server, "emissions_follow", args.count, 1.0)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "EMISSIONS_DATABASE_URL": url}
    # The follow run's output goes to a file, not a pipe nobody reads while it runs (a full
    # pipe would stall it); the file is kept, and named at the end.
    log_fd, log_path = tempfile.mkstemp(prefix="emissions-follow-benchmark-", suffix=".log")
    launched = time.monotonic()
    follow = psutil.Popen(
        [sys.executable, "-m", "pipeline.follow", *follow_args],
        cwd=ROOT,
        env=env,
        stdout=log_fd,
        stderr=subprocess.STDOUT,
    )
    os.close(log_fd)
    watcher, inserter = Watcher(url), Inserter(url, args.rate)
    figures: dict[str, Any] = {"count": args.count, "rate": args.rate, "seconds": args.seconds}
    try:
        # Inserts begin once the follow run is running and has caught up: every seeded
        # activity below its marks. Its first start reads the whole seeded table once, in
        # windows (docs/follow.md); that time is a figure of its own.
        deadline = time.monotonic() + 600
        ready = FIRST_POLL if args.insert_from_first_poll else CAUGHT_UP
        while not scalar(url, ready):
            if follow.poll() is not None or time.monotonic() > deadline:
                tail = Path(log_path).read_text(errors="replace")[-3000:]
                raise RuntimeError(f"the follow run did not start and catch up:\n{tail}")
            time.sleep(0.2)
        if args.insert_from_first_poll:
            figures["first_poll_s"] = time.monotonic() - launched
            say(f"the follow run polled first {figures['first_poll_s']:.1f} s after its start")
        else:
            figures["caught_up_s"] = time.monotonic() - launched
            say(
                f"the follow run started and read the {args.count:,} seeded activities in "
                f"{figures['caught_up_s']:.1f} s"
            )
        say(f"following; inserting {args.rate:g} activities a second for {args.seconds:g} s …")
        watcher.start()
        inserter.start()
        started = time.monotonic()
        rss_start = None
        while time.monotonic() - started < args.seconds:
            time.sleep(1)
            elapsed = time.monotonic() - started
            if rss_start is None and elapsed >= min(60.0, args.seconds / 2):
                rss_start = rss_mb(follow)
            if int(elapsed) % 60 == 0:
                inserted, computed = len(inserter.committed), len(watcher.seen)
                say(f"  {elapsed:.0f} s: {inserted:,} inserted, {computed:,} computed")
        inserter.stop.set()
        inserter.join()
        rss_end = rss_mb(follow)
        committed = dict(inserter.committed)
        deadline = time.monotonic() + 60
        while len(watcher.seen.keys() & committed.keys()) < len(committed):
            if time.monotonic() > deadline:
                break
            time.sleep(0.2)
        watcher.stop.set()
        watcher.join()
    finally:
        inserter.stop.set()
        if follow.poll() is None:
            follow.send_signal(signal.SIGTERM)
        try:
            follow.wait(timeout=60)
        except subprocess.TimeoutExpired:
            follow.kill()
    latencies = [watcher.seen[k] - t for k, t in committed.items() if k in watcher.seen]
    # The same, for the activities committed after the first minute: the steady state, without
    # the runner's start (on Flink, the job's first polls; see docs/follow.md).
    steady = [
        watcher.seen[k] - t
        for k, t in committed.items()
        if k in watcher.seen and t - started >= WARM_UP_S
    ]
    missing = len(committed) - len(latencies)
    doubled = scalar(
        url,
        "SELECT count(*) FROM (SELECT 1 FROM emissions.emission_results GROUP BY activity_type, "
        "activity_id HAVING count(*) > 1) d",
    )
    stored = scalar(
        url, f"SELECT count(*) FROM emissions.emission_results WHERE activity_id >= {BASE_ID}"
    )
    figures.update(
        inserted=len(committed),
        stored=int(stored),
        missing=missing,
        doubled=int(doubled),
        latency_p50_s=percentile(latencies, 0.5),
        latency_p95_s=percentile(latencies, 0.95),
        latency_max_s=max(latencies),
        latency_mean_s=statistics.fmean(latencies),
        after_first_minute_p50_s=percentile(steady, 0.5) if steady else None,
        after_first_minute_p95_s=percentile(steady, 0.95) if steady else None,
        after_first_minute_max_s=max(steady) if steady else None,
        rss_start_mb=rss_start,
        rss_end_mb=rss_end,
        rss_end_over_start=rss_end / rss_start if rss_start else None,
    )
    say(
        f"latency from commit to stored result: p50 {figures['latency_p50_s']:.2f} s, "
        f"p95 {figures['latency_p95_s']:.2f} s, max {figures['latency_max_s']:.2f} s "
        "(target p95 ≤ 5 s)"
    )
    if steady:
        say(
            f"  committed after the first minute: p50 {figures['after_first_minute_p50_s']:.2f} s, "
            f"p95 {figures['after_first_minute_p95_s']:.2f} s, "
            f"max {figures['after_first_minute_max_s']:.2f} s"
        )
    say(
        f"follow process RSS: {rss_start:.0f} MB after a minute, {rss_end:.0f} MB at the end: "
        f"{figures['rss_end_over_start']:.2f} (target ≤ 1.1)"
    )
    say(
        f"{len(committed):,} inserted, {int(stored):,} stored, {missing} missing, "
        f"{int(doubled)} doubled"
    )
    say(f"the follow run's log: {log_path}")
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    (RESULTS_DIR / args.results_file).write_text(json.dumps(figures, indent=2))
    return 0 if missing == 0 and doubled == 0 and stored == len(committed) else 1


if __name__ == "__main__":
    sys.exit(main())
