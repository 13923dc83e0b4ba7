"""The Flink row of the benchmark, and the figures of docs/flink.md's capacity model:
``python -m benchmarks.flink [--count N] [--database-url URL]``.

In one run, on one database server (the embedded one unless a URL is given), over ``--count``
seeded activities (default 1,000,000), none computed yet:

1. the pipeline on the DirectRunner with its defaults (two worker threads): its per-worker
   throughput, activities a second per worker;
2. a local Flink cluster of two TaskManagers with one slot each, the Python workers started by
   each TaskManager (PROCESS, ``flink/worker-boot``), and the pipeline on it at parallelism 1
   and 2: per-slot throughput from the run's wall time (a job server's start and the job's
   submission included) and from the Flink job's own duration; and the ratio to the
   DirectRunner's per-worker throughput;
3. what PostgreSQL itself absorbs: the result rows written again by binary COPY into an empty
   table of the same shape, rows a second.

Each run starts from the same state (the previous run's rows removed). The figures are printed
and written to ``benchmarks/results/flink.json``.
"""

from __future__ import annotations

import io
import json
import os
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from psycopg2 import sql

from benchmarks.run import RESULTS_DIR, reset, run_pipeline, seeded
from ops import flink_cluster
from ops.flink_cluster import LocalFlinkCluster
from pipeline import cli
from pipeline.store import connections, tables
from pipeline.store.embedded import server_url

ROOT = Path(__file__).resolve().parent.parent


def flink_job_seconds(cluster: LocalFlinkCluster, before: set[str]) -> float:
    """The duration Flink gives for the one job that finished since ``before`` (its ids)."""
    with urllib.request.urlopen(f"http://{cluster.master}/jobs/overview", timeout=10) as resp:
        found = [j for j in json.load(resp)["jobs"] if j["jid"] not in before]
    assert len(found) == 1 and found[0]["state"] == "FINISHED", found
    return float(found[0]["duration"]) / 1000


def job_ids(cluster: LocalFlinkCluster) -> set[str]:
    with urllib.request.urlopen(f"http://{cluster.master}/jobs", timeout=10) as resp:
        return {j["id"] for j in json.load(resp)["jobs"]}


def copy_rate(url: str) -> dict[str, float]:
    """Rows a second PostgreSQL takes by binary COPY: the stored result rows, read out once,
    then written into an empty copy of the table (same columns, same indexes)."""
    conn = connections.connect(url)
    try:
        with conn.cursor() as cur:
            results = tables.qualified(tables.RESULTS_TABLE)
            buffer = io.BytesIO()
            cur.copy_expert(
                sql.SQL("COPY {} TO STDOUT (FORMAT binary)").format(results).as_string(conn),
                buffer,
            )
            cur.execute(sql.SQL("SELECT count(*) FROM {}").format(results))
            rows = int(cur.fetchone()[0])
            target = sql.Identifier("emissions", "copy_rate_probe")
            cur.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(target))
            cur.execute(sql.SQL("CREATE TABLE {} (LIKE {} INCLUDING ALL)").format(target, results))
            conn.commit()
            buffer.seek(0)
            started = time.perf_counter()
            cur.copy_expert(
                sql.SQL("COPY {} FROM STDIN (FORMAT binary)").format(target).as_string(conn),
                buffer,
            )
            conn.commit()
            seconds = time.perf_counter() - started
            cur.execute(sql.SQL("DROP TABLE {}").format(target))
            conn.commit()
    finally:
        conn.close()
    return {
        "rows": rows,
        "seconds": seconds,
        "rows_per_s": rows / seconds,
        "mb": len(buffer.getvalue()) / 1e6,
    }


def main(argv: list[str] | None = None) -> int:
    parser = cli.parser("benchmarks.flink", __doc__)
    parser.add_argument("--count", type=int, default=1_000_000)
    parser.add_argument(
        "--database-url", default=None, help="a server whose user may CREATE DATABASE"
    )
    args = parser.parse_args(argv)
    server = args.database_url or server_url(ROOT / ".pgdata")
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    say = lambda text: print(text, flush=True)  # noqa: E731
    say(f"seeding {args.count:,} activities …")
    url = seeded(server, "emissions_bench_flink", args.count, 0.0)
    figures: dict[str, Any] = {"count": args.count, "cores": os.cpu_count()}

    direct = run_pipeline(url)
    workers = 2
    figures["direct"] = {
        "wall_s": direct["wall_s"],
        "workers": workers,
        "per_worker_per_s": args.count / direct["wall_s"] / workers,
    }
    per_worker = figures["direct"]["per_worker_per_s"]
    say(f"DirectRunner: {direct['wall_s']:.1f} s, {per_worker:,.0f}/s a worker")
    figures["copy"] = copy_rate(url)
    copied = figures["copy"]
    say(f"binary COPY of {copied['rows']:,} result rows: {copied['rows_per_s']:,.0f} rows/s")
    reset(url, direct["summary"]["run_id"])

    home, jar = flink_cluster.fetch()
    with tempfile.TemporaryDirectory(prefix="bench-flink-") as workdir:
        cluster = LocalFlinkCluster.create(home, Path(workdir), slots=1, taskmanagers=2)
        with cluster:
            for parallelism in (1, 2):
                before = job_ids(cluster)
                run = run_pipeline(url, *flink_cluster.beam_args(cluster.master, jar, parallelism))
                job_s = flink_job_seconds(cluster, before)
                row = {
                    "wall_s": run["wall_s"],
                    "job_s": job_s,
                    "per_slot_per_s_wall": args.count / run["wall_s"] / parallelism,
                    "per_slot_per_s_job": args.count / job_s / parallelism,
                }
                row["ratio_wall"] = (
                    row["per_slot_per_s_wall"] / figures["direct"]["per_worker_per_s"]
                )
                row["ratio_job"] = row["per_slot_per_s_job"] / figures["direct"]["per_worker_per_s"]
                figures[f"flink_p{parallelism}"] = row
                say(
                    f"Flink PROCESS, 2 TaskManagers x 1 slot, parallelism {parallelism}: "
                    f"{run['wall_s']:.1f} s wall ({job_s:.1f} s the job), "
                    f"{row['per_slot_per_s_wall']:,.0f}/s a slot ({row['per_slot_per_s_job']:,.0f} "
                    f"in the job), ratio to a DirectRunner worker {row['ratio_wall']:.2f} "
                    f"({row['ratio_job']:.2f})"
                )
                reset(url, run["summary"]["run_id"])
    # A slot with a core of its own writes at most what one slot did alone (parallelism 1);
    # the slots of this crowded machine (parallelism 2) wrote less each.
    rate = figures["copy"]["rows_per_s"]
    feeds = {f"p{n}": rate / figures[f"flink_p{n}"]["per_slot_per_s_job"] for n in (1, 2)}
    figures["slots_a_server_feeds"] = feeds
    say(
        f"slots this server's COPY rate feeds: {feeds['p1']:.1f} at one slot's rate alone, "
        f"{feeds['p2']:.1f} at the rate of two slots sharing this machine"
    )
    (RESULTS_DIR / "flink.json").write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
