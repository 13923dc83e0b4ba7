"""The benchmark: ``python -m benchmarks.run [--count N] [--scale] [--database-url URL]``.

In one run, on one database server (the embedded one unless a URL is given):

1. seeds ``--count`` activities (default 1,000,000) with the first 30% of each table already
   computed, as after earlier nightly runs;
2. times the in-database SQL baseline: one ``INSERT … SELECT … JOIN factors … WHERE NOT
   EXISTS`` statement (``benchmarks/in_database.py``) into a table of its own;
3. times the pipeline with its default options (``python -m pipeline.run``, a fresh process,
   start-up included: on the DirectRunner, two worker threads), and its peak RSS over the whole
   process tree; steps 2 and 3 alternate ``--repeat`` times (default 3, the medians count);
   then the pipeline again with one worker;
4. checks that the pipeline and the baseline produced the same rows and the same total;
5. times a rerun with nothing pending against the SQL anti-join count over the same tables
   (``--repeat`` times, the median ratio);
6. times the approach this project replaces (ORM, 100 rows a page, a commit per page) on a
   smaller dataset (``--legacy-count``), next to the pipeline on the same data;
7. measures how balanced the read ranges are on clustered integer keys and on UUID keys;
8. with ``--scale``, the pipeline at 500,000, 1,000,000 and 5,000,000 activities and
   ``--scale-top`` (e.g. 10,000,000): peak RSS flat, time linear.

Machines are noisy: every figure that matters is a ratio of two timings taken in the same run.
The figures are printed, written to ``benchmarks/results/latest.json`` and drawn in
``benchmarks/results/latest.png``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import psutil
import pyarrow as pa
import sqlalchemy as sa
from psycopg2 import sql

from benchmarks.floor import breakdown, breakdown_line, write_floor
from benchmarks.in_database import load_reference_tables, reference_query
from benchmarks.legacy import run_legacy
from ops.seed import seed
from pipeline import cli, ranges
from pipeline.methodology import FactorBook
from pipeline.methodology.batch import Probes, activity_schema, calculate_batch
from pipeline.model import ACTIVITY_TYPES
from pipeline.options import DEFAULT_ROWS_PER_RANGE
from pipeline.store import bulk, connections, install, queries, tables, writes
from pipeline.store.embedded import server_url
from pipeline.store.install import initialise

ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = ROOT / "benchmarks" / "results"
EARLIER_RUN = "00000000-0000-4000-8000-00000000e001"  # the "earlier nightly runs"


# --- Databases -----------------------------------------------------------------------------


def fresh_database(server: str, name: str) -> str:
    """Drop and create database ``name`` on ``server``; return its URL."""
    conn = connections.connect(server)
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )
            cur.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    finally:
        conn.close()
    return sa.make_url(server).set(database=name).render_as_string(hide_password=False)


def seeded(server: str, name: str, count: int, done_share: float) -> str:
    """A database with ``count`` seeded activities, the first ``done_share`` computed."""
    url = fresh_database(server, name)
    engine = connections.make_engine(url, poolclass=sa.pool.NullPool)
    try:
        initialise(engine)
        seed(engine, count, seed_value=42)
    finally:
        engine.dispose()
    if done_share > 0:
        precompute(url, done_share)
    vacuum(url)
    return url


def precompute(url: str, share: float) -> None:
    """Computes the first ``share`` of each table (by key) as an earlier run would have."""
    conn = connections.connect(url)
    try:
        book = FactorBook.from_rows(queries.read_factor_rows(conn))
        for activity_type in ACTIVITY_TYPES:
            rows = ranges.count_rows(conn, activity_type)
            if rows == 0:
                continue
            step = max(1, int(rows * share))
            cuts = ranges.keys_at(conn, activity_type, [step + 1])
            end = cuts[0] if cuts else None
            probes = Probes(activity_type, book)
            table = bulk.read_pending_table(
                conn, activity_type, None, end, activity_schema(activity_type, pa.int64())
            )
            versions = dict(
                zip(
                    table.column("id").to_pylist(),
                    table.column(queries.VERSION_COLUMN).to_pylist(),
                    strict=True,
                )
            )
            extra = [
                queries.VERSION_COLUMN,
                queries.STORED_COLUMN,
                queries.STORED_FINGERPRINT_COLUMN,
            ]
            outcome = calculate_batch(activity_type, table.drop(extra), book, probes=probes)
            # As a run stores them: with the version of the row each was computed from.
            stamped = outcome.results.append_column(
                tables.VERSION_COLUMN,
                pa.array(
                    [versions[i] for i in outcome.results.column("activity_id").to_pylist()],
                    pa.int64(),
                ),
            )
            bulk.write_results_table(conn, stamped, EARLIER_RUN)
            errors = [
                dataclasses.replace(e, activity_version=versions[e.activity_id])
                for e in outcome.errors
            ]
            writes.write_errors(conn, errors, EARLIER_RUN)
    finally:
        conn.close()


def vacuum(url: str) -> None:
    conn = connections.connect(url)
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute("VACUUM ANALYZE")
    finally:
        conn.close()


def reset(url: str, run_id: str) -> None:
    """Removes what one run wrote, so the next run starts from the same state."""
    conn = connections.connect(url)
    try:
        with conn.cursor() as cur:
            for table in (tables.RESULTS_TABLE, tables.ERRORS_TABLE):
                cur.execute(
                    sql.SQL("DELETE FROM {} WHERE run_id = %s").format(tables.qualified(table)),
                    (run_id,),
                )
        conn.commit()
    finally:
        conn.close()
    vacuum(url)


# --- Timings -------------------------------------------------------------------------------


def timed_sql(url: str, statement: str, params: dict[str, Any] | None = None) -> tuple[float, Any]:
    """Seconds one statement takes (after the session's reference tables are loaded)."""
    conn = connections.connect(url)
    try:
        load_reference_tables(conn)
        with conn.cursor() as cur:
            started = time.perf_counter()
            cur.execute(statement, params)
            found = cur.fetchall() if cur.description else cur.rowcount
            conn.commit()
            return time.perf_counter() - started, found
    finally:
        conn.close()


def timed_process(argv: Sequence[str]) -> dict[str, Any]:
    """Wall time and peak RSS (the whole process tree) of a command; its stdout."""
    started = time.perf_counter()
    proc = psutil.Popen(list(argv), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peak = 0
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            try:
                tree = [proc, *proc.children(recursive=True)]
                peak = max(peak, sum(p.memory_info().rss for p in tree if p.is_running()))
            except psutil.Error:
                pass
            time.sleep(0.05)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    out, err = proc.communicate()
    done.set()
    sampler.join()
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv[:3])} … failed ({proc.returncode}):\n{err[-3000:]}")
    summary = json.loads(out[out.index("{") :])
    return {"wall_s": wall, "peak_rss_mb": peak / 2**20, "summary": summary}


def run_pipeline(url: str, *extra: str) -> dict[str, Any]:
    argv = [sys.executable, "-m", "pipeline.run", "--database-url", url]
    return timed_process([*argv, "--progress-interval", "0", *extra])


def two_at_once(url: str) -> dict[str, Any]:
    """Two pipeline processes started together over the same pending activities: how long
    until both have ended, and how they shared the work (each key range goes to one)."""
    argv = [sys.executable, "-m", "pipeline.run", "--database-url", url, "--progress-interval", "0"]
    started = time.perf_counter()
    procs = [
        subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    outputs = [p.communicate() for p in procs]
    wall = time.perf_counter() - started
    summaries = []
    for proc, (out, err) in zip(procs, outputs, strict=True):
        if proc.returncode != 0:
            raise RuntimeError(f"a run of the pair failed ({proc.returncode}):\n{err[-3000:]}")
        summaries.append(json.loads(out[out.index("{") :]))
    return {
        "wall_s": wall,
        "summaries": summaries,
        "results": [s["total_processed"] for s in summaries],
        "left": [s.get("ranges_left_to_another_run", 0) for s in summaries],
    }


def baseline(url: str) -> tuple[float, int]:
    """The in-database statement: compute every pending activity into ``baseline_results``."""
    conn = connections.connect(url)
    try:
        with conn.cursor() as cur:
            cur.execute(
                "DROP TABLE IF EXISTS baseline_results;"
                "CREATE TABLE baseline_results (activity_type text, activity_id bigint, "
                "kg_co2e float8, PRIMARY KEY (activity_type, activity_id))"
            )
            cur.execute("SELECT min(year), max(year) FROM emissions.emission_factors")
            first, last = cur.fetchone()
        conn.commit()
    finally:
        conn.close()
    # Hash joins throughout: with nested loops, row estimates of 1 for the computed join keys
    # make PostgreSQL's plan for this statement twice as slow.
    statement = (
        "SET enable_nestloop = off; "
        "INSERT INTO baseline_results (activity_type, activity_id, kg_co2e) "
        f"SELECT activity_type, activity_id::bigint, kg_co2e FROM ({reference_query(True)}) q"
    )
    seconds, written = timed_sql(url, statement, {"rf": "rf", "first": first, "last": last})
    return seconds, int(written)


def anti_join_count(url: str) -> float:
    """The SQL anti-join count of activities without a result, over all activity tables."""
    parts = [
        f"(SELECT count(*) FROM {tables.qualified_text(table)} a WHERE NOT EXISTS (SELECT 1 FROM "
        "emissions.emission_results r "
        f"WHERE r.activity_type = '{t}' AND r.activity_id = a.id))"
        for t, table in tables.ACTIVITY_TABLES.items()
    ]
    conn = connections.connect(url)
    try:
        with conn.cursor() as cur:
            started = time.perf_counter()
            cur.execute("SELECT " + " + ".join(parts))
            cur.fetchall()
            return time.perf_counter() - started
    finally:
        conn.close()


def compare(url: str, run_id: str) -> dict[str, Any]:
    """The pipeline's rows of one run against the baseline's: keys, values, totals."""
    conn = connections.connect(url)
    try:
        with conn.cursor() as cur:
            cur.execute(
                "SELECT count(*) FILTER (WHERE r.activity_id IS NULL), "
                "count(*) FILTER (WHERE b.activity_id IS NULL), "
                "coalesce(max(abs(r.kg_co2e - b.kg_co2e) / nullif(abs(b.kg_co2e), 0)), 0), "
                "sum(r.kg_co2e), sum(b.kg_co2e), count(*) "
                "FROM (SELECT * FROM emissions.emission_results WHERE run_id = %s) r "
                "FULL JOIN baseline_results b USING (activity_type, activity_id)",
                (run_id,),
            )
            only_baseline, only_pipeline, max_rel, total_p, total_b, rows = cur.fetchone()
    finally:
        conn.close()
    total_rel = abs(total_p - total_b) / abs(total_b) if total_b else 0.0
    return {
        "rows": rows,
        "only_in_baseline": only_baseline,
        "only_in_pipeline": only_pipeline,
        "max_row_relative_difference": max_rel,
        "total_pipeline_kg": total_p,
        "total_baseline_kg": total_b,
        "total_relative_difference": total_rel,
        "same": only_baseline == 0 and only_pipeline == 0 and total_rel <= 1e-9,
    }


# --- Range balance -------------------------------------------------------------------------


def balance(server: str, rows: int, partitions: int, rows_per_range: int) -> dict[str, Any]:
    """Largest range / mean range, in rows, for the two planners on skewed and UUID keys."""
    out: dict[str, Any] = {}
    for label, id_type, ids_sql in [
        # 90% of the rows in the first 1% of the key span, the rest spread over it all
        (
            "clustered_bigint",
            "bigint",
            f"SELECT g FROM generate_series(1, {int(rows * 0.9)}) g UNION ALL "
            f"SELECT {rows} + g * 100 FROM generate_series(1, {rows - int(rows * 0.9)}) g",
        ),
        ("random_uuid", "uuid", f"SELECT gen_random_uuid() FROM generate_series(1, {rows})"),
    ]:
        url = fresh_database(server, f"emissions_bench_{label}")
        engine = connections.make_engine(url, poolclass=sa.pool.NullPool)
        install.create_schema(engine, id_type)  # type: ignore[arg-type]
        engine.dispose()
        conn = connections.connect(url)
        try:
            with conn.cursor() as cur:
                cur.execute(
                    "INSERT INTO emissions.electricity_activities (id, quantity, unit, region, "
                    f"activity_date) SELECT i, 1, 'kWh', 'CAMX', '2023-01-01' FROM ({ids_sql}) s(i)"
                )
            conn.commit()
            by_rows = ranges.plan_ranges(conn, "electricity", partitions, rows_per_range, "rows")
            n = len(by_rows)
            by_bounds = ranges.plan_ranges(conn, "electricity", n, rows_per_range, "bounds")
            out[label] = {
                "rows": rows,
                "ranges": n,
                "rows_planner_largest_over_mean": _largest_over_mean(conn, by_rows),
                "bounds_planner_largest_over_mean": _largest_over_mean(conn, by_bounds),
            }
        finally:
            conn.close()
        fresh_database(server, f"emissions_bench_{label}")  # leave it empty
    return out


def _largest_over_mean(conn: Any, ranges: list[Any]) -> float:
    sizes = []
    with conn.cursor() as cur:
        for r in ranges:
            query, params = queries.pending_query("electricity", r.start, r.end)
            cur.execute(sql.SQL("SELECT count(*) FROM ({}) q").format(query), params)
            sizes.append(cur.fetchone()[0])
    conn.commit()
    return max(sizes) / statistics.mean(sizes)


def scale(server: str, say: Any, top: int = 5_000_000) -> dict[str, Any]:
    """The pipeline at 500,000, 1,000,000, 5,000,000 and ``top`` activities (all pending; 1M
    and 5M only when below ``top``): peak RSS, flat from 500,000 to 5,000,000 (or ``top`` if
    smaller); wall time per activity at ``top`` against 1,000,000, linear; then, at ``top``, a
    run with nothing new, changed or deleted against the SQL anti-join count."""
    sizes = sorted({500_000, top} | {n for n in (1_000_000, 5_000_000) if n <= top})
    runs: dict[int, dict[str, Any]] = {}
    for n in sizes:
        say(f"scale: seeding {n:,} …")
        scale_url = seeded(server, "emissions_bench_scale", n, 0.0)
        runs[n] = run_pipeline(scale_url)
        say(
            f"scale: {n:,} activities in {runs[n]['wall_s']:.1f} s "
            f"({n / runs[n]['wall_s']:,.0f}/s), peak RSS {runs[n]['peak_rss_mb']:.0f} MB"
        )
    vacuum(scale_url)
    reruns = []
    for _ in range(2):
        rerun = run_pipeline(scale_url)
        reruns.append(rerun["summary"]["timings"]["total_s"] / anti_join_count(scale_url))
    say(
        f"scale: nothing changed at {top:,}: run / SQL anti-join count "
        f"{min(reruns):.2f} (runs: {', '.join(f'{r:.2f}' for r in reruns)}; target ≤ 1.5)"
    )
    fresh_database(server, "emissions_bench_scale")  # leave it empty
    return _scaled(runs, top, reruns, say)


def _scaled(
    runs: dict[int, dict[str, Any]], top: int, reruns: list[float], say: Any
) -> dict[str, Any]:
    """The --scale figures from its runs, said."""
    rss = {n: r["peak_rss_mb"] for n, r in runs.items()}
    flat_top = min(top, 5_000_000)  # 5,000,000 is among the sizes when top is larger
    figures: dict[str, Any] = {
        "peak_rss_mb": {str(n): v for n, v in rss.items()},
        "wall_s": {str(n): r["wall_s"] for n, r in runs.items()},
        "ratio_5m_over_500k": rss[flat_top] / rss[500_000],
        "top": top,
        "rerun_over_count_at_top": min(reruns),
        "rerun_over_count_at_top_all": reruns,
    }
    say(f"peak RSS {flat_top:,} / 500K = {figures['ratio_5m_over_500k']:.2f} (target ≤ 1.10)")
    if top > 1_000_000:
        per = {n: runs[n]["wall_s"] / n for n in (1_000_000, top)}
        figures["time_per_activity_top_over_1m"] = per[top] / per[1_000_000]
        say(
            f"time per activity, {top:,} / 1M = {figures['time_per_activity_top_over_1m']:.2f} "
            "(linear: target ≤ 1.10)"
        )
    return figures


# --- Report --------------------------------------------------------------------------------


def chart(figures: dict[str, Any], path: Path) -> None:
    """Throughput of each approach (rows per second, log scale)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    bars = [(label, value) for label, value in figures["throughput_rows_per_s"].items() if value]
    fig, ax = plt.subplots(figsize=(8, 3.6), dpi=120)
    labels = [b[0] for b in bars]
    values = [b[1] for b in bars]
    ax.barh(labels, values, color=["#4c72b0", "#55a868", "#8172b2", "#c44e52"][: len(bars)])
    ax.set_xscale("log")
    ax.set_xlabel("activities per second (log scale)")
    ax.set_title(
        f"{figures['count']:,} activities ({figures['pending']:,} pending), 2 cores: "
        f"pipeline / SQL = {figures['ratio_pipeline_over_sql']:.2f}"
    )
    for y, v in enumerate(values):
        ax.text(v, y, f" {v:,.0f}/s", va="center", fontsize=8)
    ax.invert_yaxis()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def say(text: str) -> None:
    print(text, flush=True)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = cli.parser("benchmarks.run", __doc__)
    parser.add_argument("--count", type=int, default=1_000_000)
    parser.add_argument("--done-share", type=float, default=0.3)
    parser.add_argument("--legacy-count", type=int, default=5_000)
    parser.add_argument("--balance-rows", type=int, default=500_000)
    parser.add_argument(
        "--repeat", type=int, default=3, help="SQL and pipeline runs, alternated (median)"
    )
    parser.add_argument(
        "--scale",
        action="store_true",
        help="peak RSS and time at 500,000 up to --scale-top activities, and a rerun there",
    )
    parser.add_argument("--scale-top", type=int, default=5_000_000, help="the larger --scale size")
    parser.add_argument("--scale-only", action="store_true", help="only the --scale part")
    parser.add_argument(
        "--database-url",
        default=None,
        help="a server whose user may CREATE DATABASE (default: embedded)",
    )
    args = parser.parse_args(argv)
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    return args


def against_sql(url: str, repeat: int, figures: dict[str, Any]) -> str:
    """Steps 2 to 4: the SQL baseline and the pipeline, alternated; returns the run whose
    results are stored."""
    # Alternated, and the median of each: both see the same noise of a shared machine.
    sql_times: list[float] = []
    runs: list[dict[str, Any]] = []
    for _ in range(repeat):
        if runs:
            reset(url, runs[-1]["summary"]["run_id"])
        sql_s, sql_rows = baseline(url)
        sql_times.append(sql_s)
        say(f"in-database SQL: {sql_s:.2f} s for {sql_rows:,} results ({sql_rows / sql_s:,.0f}/s)")
        runs.append(run_pipeline(url))
        say(
            f"pipeline (defaults): {runs[-1]['wall_s']:.2f} s wall, peak RSS "
            f"{runs[-1]['peak_rss_mb']:.0f} MB"
        )
    sql_s = statistics.median(sql_times)
    one = sorted(runs, key=lambda r: r["wall_s"])[len(runs) // 2]  # the median run
    run_id: str = runs[-1]["summary"]["run_id"]  # the one whose results are stored
    check = compare(url, run_id)
    figures.update(pending=sql_rows, sql_s=sql_s, sql_s_all=sql_times)
    figures.update(pipeline=one, pipeline_wall_s_all=[r["wall_s"] for r in runs], check=check)
    ratio = one["wall_s"] / sql_s
    figures["ratio_pipeline_over_sql"] = ratio
    # Each pipeline run against the SQL run just before it: the pair saw the same machine.
    pairs = [r["wall_s"] / s for r, s in zip(runs, sql_times, strict=True)]
    figures["ratio_per_pair"] = pairs
    say(
        f"median of {repeat}: SQL {sql_s:.2f} s; pipeline {one['wall_s']:.2f} s wall, "
        f"{one['summary']['total_processed'] / one['wall_s']:,.0f}/s, peak RSS "
        f"{max(r['peak_rss_mb'] for r in runs):.0f} MB; pipeline / SQL = {ratio:.2f} "
        "(target ≤ 1.0; stretch ≤ 0.8)"
    )
    say(
        "per alternated pair: "
        + ", ".join(f"{p:.2f}" for p in pairs)
        + f" (median {statistics.median(pairs):.2f})"
    )
    return run_id


def against_write_floor(url: str, run_id: str, figures: dict[str, Any]) -> None:
    """The median run against loading its rows alone, and where its time went."""
    one = figures["pipeline"]
    floor = write_floor(url, run_id)
    figures["write_floor"] = floor
    figures["ratio_pipeline_over_write_floor"] = one["wall_s"] / floor["s"]
    figures["breakdown"] = breakdown(one["wall_s"], one["summary"]["timings"])
    say(
        f"write floor: the {floor['rows']:,} result rows of a run ({floor['bytes'] / 2**20:,.0f} "
        f"MB, binary COPY) load into an empty copy of the results table in {floor['s']:.2f} s "
        f"(median of {len(floor['s_all'])}); pipeline / write floor = "
        f"{one['wall_s'] / floor['s']:.2f} (target ≤ 2.0; stretch ≤ 1.5)"
    )
    steps = breakdown_line(figures["breakdown"])
    say(f"where the median run's {one['wall_s']:.2f} s went: {steps}")


def say_check(check: dict[str, Any]) -> None:
    say(
        f"same rows as the SQL: {check['same']} ({check['only_in_baseline']} only in SQL, "
        f"{check['only_in_pipeline']} only in the pipeline, total relative difference "
        f"{check['total_relative_difference']:.2e}, largest per row "
        f"{check['max_row_relative_difference']:.2e})"
    )


def against_anti_join(url: str, repeat: int, figures: dict[str, Any]) -> None:
    """Step 5: a rerun with nothing pending against the SQL anti-join count."""
    reruns = []
    for _ in range(repeat):
        rerun = run_pipeline(url)
        count_s = anti_join_count(url)
        reruns.append((rerun["summary"]["timings"]["total_s"] / count_s, rerun, count_s))
    ratio_rerun, rerun, count_s = sorted(reruns, key=lambda r: r[0])[len(reruns) // 2]
    own_s = rerun["summary"]["timings"]["total_s"]
    figures["rerun"] = {
        "wall_s": rerun["wall_s"],
        "run_s": own_s,
        "anti_join_count_s": count_s,
        "ratio_run_over_count": ratio_rerun,
        "ratio_run_over_count_all": [r[0] for r in reruns],
        "ratio_wall_over_count": rerun["wall_s"] / count_s,
        "pending": rerun["summary"]["pending"],
    }
    say(
        f"rerun with nothing pending (median of {repeat}): {own_s:.2f} s in the run "
        f"({rerun['wall_s']:.2f} s with interpreter start-up) vs {count_s:.2f} s for the SQL "
        f"anti-join count: {ratio_rerun:.2f}× (target ≤ 1.5)"
    )


def one_worker(url: str, figures: dict[str, Any]) -> None:
    """The pipeline again, on one worker."""
    sql_s = figures["sql_s"]
    single = run_pipeline(url, "--direct_num_workers=1")
    figures["pipeline_1_worker"] = single
    figures["ratio_1_worker_over_sql"] = single["wall_s"] / sql_s
    say(
        f"pipeline, 1 worker: {single['wall_s']:.2f} s wall, peak RSS "
        f"{single['peak_rss_mb']:.0f} MB; / SQL = {single['wall_s'] / sql_s:.2f}"
    )


def two_runs(url: str, figures: dict[str, Any]) -> None:
    """Two runs started together against one run alone; then removes what they wrote."""
    one = figures["pipeline"]
    pair = two_at_once(url)
    figures["two_runs_at_once"] = pair
    say(
        f"two runs started together: {pair['wall_s']:.2f} s until both ended, vs "
        f"{one['wall_s']:.2f} s for one run alone: {pair['wall_s'] / one['wall_s']:.2f}× "
        f"(target ≤ 1.2); results {pair['results'][0]:,} + {pair['results'][1]:,}, ranges left "
        f"to the other {pair['left'][0]} + {pair['left'][1]}"
    )
    figures["ratio_two_at_once_over_one"] = pair["wall_s"] / one["wall_s"]
    for summary in pair["summaries"]:
        reset(url, summary["run_id"])


def against_legacy(server: str, count: int, done_share: float, figures: dict[str, Any]) -> None:
    """Step 6: the approach this project replaces, next to the pipeline on the same data."""
    legacy_url = seeded(server, "emissions_bench_legacy", count, done_share)
    started = time.perf_counter()
    legacy_counts = run_legacy(legacy_url)
    legacy_s = time.perf_counter() - started
    legacy_done = legacy_counts["computed"] + legacy_counts["errors"]
    small_url = seeded(server, "emissions_bench_small", count, done_share)
    small = run_pipeline(small_url)
    figures["legacy"] = {
        "count": count,
        "pending": legacy_done,
        "legacy_s": legacy_s,
        "pipeline_s": small["wall_s"],
        "legacy_rows_per_s": legacy_done / legacy_s,
    }
    say(
        f"old approach (ORM, 100 a page, commit per page) on {count:,} activities: "
        f"{legacy_s:.1f} s ({legacy_done / legacy_s:,.0f}/s; OFFSET paging makes it "
        f"slower per row as tables grow); the pipeline on the same data: {small['wall_s']:.1f} s"
    )


def range_balance(server: str, rows: int, figures: dict[str, Any]) -> None:
    """Step 7: how balanced the read ranges are on clustered integer keys and UUID keys."""
    figures["balance"] = balance(server, rows, 8, DEFAULT_ROWS_PER_RANGE)
    for label, b in figures["balance"].items():
        say(
            f"ranges on {label} keys ({b['rows']:,} rows, {b['ranges']} ranges): largest/mean "
            f"{b['rows_planner_largest_over_mean']:.2f} by row counts (default), "
            f"{b['bounds_planner_largest_over_mean']:.2f} by key bounds (target ≤ 2)"
        )


def save(figures: dict[str, Any]) -> None:
    """Throughputs; the figures written to ``latest.json`` and drawn in ``latest.png``."""
    one, single, legacy = figures["pipeline"], figures["pipeline_1_worker"], figures["legacy"]
    figures["throughput_rows_per_s"] = {
        "in-database SQL": figures["pending"] / figures["sql_s"],
        "pipeline (2 threads, default)": one["summary"]["total_processed"] / one["wall_s"],
        "pipeline, 1 worker": single["summary"]["total_processed"] / single["wall_s"],
        "old ORM approach": legacy["pending"] / legacy["legacy_s"],
    }
    out = RESULTS_DIR / "latest.json"
    out.write_text(json.dumps(figures, indent=2, default=str))
    chart(figures, RESULTS_DIR / "latest.png")
    say(
        f"figures: {out.relative_to(ROOT)}, chart: {(RESULTS_DIR / 'latest.png').relative_to(ROOT)}"
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    server = args.database_url or server_url(ROOT / ".pgdata")
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    if args.scale_only:
        scaled = scale(server, say, args.scale_top)
        (RESULTS_DIR / "scale.json").write_text(json.dumps(scaled, indent=2))
        return 0

    figures: dict[str, Any] = {"count": args.count, "cores": os.cpu_count()}
    say(f"seeding {args.count:,} activities, {args.done_share:.0%} already computed …")
    url = seeded(server, "emissions_bench", args.count, args.done_share)
    run_id = against_sql(url, args.repeat, figures)
    against_write_floor(url, run_id, figures)
    say_check(figures["check"])
    against_anti_join(url, args.repeat, figures)
    reset(url, run_id)
    one_worker(url, figures)
    reset(url, figures["pipeline_1_worker"]["summary"]["run_id"])
    two_runs(url, figures)
    against_legacy(server, args.legacy_count, args.done_share, figures)
    range_balance(server, args.balance_rows, figures)
    if args.scale:
        figures["scale"] = scale(server, say, args.scale_top)
    save(figures)
    return 0


if __name__ == "__main__":
    sys.exit(main())
