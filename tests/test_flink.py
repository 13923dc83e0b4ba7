"""The pipeline on a real Apache Flink session cluster, against a DirectRunner run.

The local Flink cluster, its job server jar and the worker pool come from
``tests/flink_fixtures.py``: started once for the session, always stopped, never skipped.
"""

from __future__ import annotations

import base64
import bz2
import json
import os
import re
import shlex
import shutil
import subprocess
import threading
import urllib.request
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import apache_beam as beam
import pytest
import sqlalchemy as sa

from ops import flink_cluster, flink_fetch, flink_worker
from ops.flink_cluster import LocalFlinkCluster
from ops.seed import seed
from pipeline import graph, run
from pipeline.beam_options import EmissionsOptions
from pipeline.options import validate
from pipeline.ranges import plan_int_ranges
from pipeline.store import connections, tables
from tests.support import wait_for

pytest_plugins = ["tests.flink_fixtures"]

SEED_COUNT = 3000
# A Flink run here takes about half a minute; past this the jobs are cancelled so a hang fails.
RUN_TIMEOUT_S = 300.0
# activity_version is the activity row's xmin: it differs between two databases.
VOLATILE = {"id", "run_id", "created_at", "activity_version"}


def run_pipeline(
    capsys: pytest.CaptureFixture[str],
    url: str,
    runner_args: list[str],
    cluster: LocalFlinkCluster | None = None,
) -> dict[str, Any]:
    """``pipeline.run.main`` on ``url``; its JSON summary. Fails the test on a non-zero exit."""
    args = ["--database-url", url, "--partitions", "4", "--progress-interval", "0"]
    watchdog = None
    if cluster is not None:
        watchdog = threading.Timer(RUN_TIMEOUT_S, cluster.cancel_jobs)
        watchdog.start()
    try:
        code = run.main(args + runner_args)
    finally:
        if watchdog is not None:
            watchdog.cancel()
    out = capsys.readouterr().out
    assert code == 0, f"pipeline.run exited {code}; stdout:\n{out[-3000:]}"
    lines = out.splitlines()
    start = max(i for i, line in enumerate(lines) if line == "{")
    summary: dict[str, Any] = json.loads("\n".join(lines[start:]))
    return summary


def table_rows(url: str, table: str) -> list[dict[str, Any]]:
    """All rows of ``table`` without ids, run ids and timestamps, in a stable order."""
    engine = connections.make_engine(url, poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as conn:
            rows = conn.execute(sa.text(f"SELECT * FROM {tables.qualified_text(table)}")).mappings()
            kept = [{k: v for k, v in r.items() if k not in VOLATILE} for r in rows]
    finally:
        engine.dispose()
    return sorted(kept, key=lambda r: (r["activity_type"], str(r["activity_id"]), repr(r)))


def raw_rows(url: str, table: str) -> list[tuple[Any, ...]]:
    """All rows of ``table`` as stored, ids and run ids included, in column order."""
    engine = connections.make_engine(url, poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as conn:
            query = sa.text(f"SELECT * FROM {tables.qualified_text(table)} t ORDER BY t::text")
            return [tuple(r) for r in conn.execute(query)]
    finally:
        engine.dispose()


def last_job_vertices(cluster: LocalFlinkCluster) -> list[str]:
    """The operator (vertex) names of the job the cluster started last."""
    with urllib.request.urlopen(f"http://{cluster.master}/jobs/overview", timeout=10) as resp:
        last = max(json.load(resp)["jobs"], key=lambda j: j["start-time"])
    with urllib.request.urlopen(f"http://{cluster.master}/jobs/{last['jid']}", timeout=10) as resp:
        return [str(v["name"]) for v in json.load(resp)["vertices"]]


def seeded(make_database: Callable[..., str]) -> str:
    url = make_database("bigint")
    engine = connections.make_engine(url, poolclass=sa.pool.NullPool)
    try:
        seed(engine, SEED_COUNT, seed_value=7)
    finally:
        engine.dispose()
    return url


def test_flink_run_equals_direct_run_and_rerun_writes_nothing(
    make_database: Callable[..., str],
    local_flink: LocalFlinkCluster,
    flink_args: list[str],
    flink_job_server_jar: Path,
    worker_pool: tuple[str, Path],
    capsys: pytest.CaptureFixture[str],
) -> None:
    direct_url = seeded(make_database)
    flink_url = seeded(make_database)

    direct = run_pipeline(capsys, direct_url, ["--runner=DirectRunner"])
    flink = run_pipeline(capsys, flink_url, flink_args, local_flink)

    # It really ran on the cluster, in parallel, and finished there.
    overview = local_flink.overview() or {}
    assert int(overview.get("jobs-finished", 0)) >= 1, overview  # type: ignore[call-overload]
    assert flink["runner"] == "FlinkRunner"
    assert flink["pending"] == SEED_COUNT
    # Read → calculate → write ran as one operator chain, as on the DirectRunner: no tables
    # encoded and handed over between a read operator and a calculate operator.
    chained = [v for v in last_job_vertices(local_flink) if "Calculate" in v]
    assert len(chained) == 1, chained
    assert all(step in chained[0] for step in ("ReadPending", "WriteResults", "WriteErrors"))

    results = table_rows(flink_url, tables.RESULTS_TABLE)
    assert results == table_rows(direct_url, tables.RESULTS_TABLE)
    assert table_rows(flink_url, tables.ERRORS_TABLE) == table_rows(direct_url, tables.ERRORS_TABLE)
    assert len(results) + flink["errors"] == SEED_COUNT
    assert flink["errors"] > 0  # the seed has bad rows: the dead-letter path ran on Flink too

    # The Flink run's Beam counters reached the summary and agree with the database.
    assert flink["metrics_source"] == "beam_counters"
    for key in ("total_processed", "errors", "total_co2e_tonnes"):
        assert flink[key] == pytest.approx(direct[key]), key
    for activity_type, numbers in flink["by_activity_type"].items():
        assert numbers["errors"] == direct["by_activity_type"][activity_type]["errors"]

    # A rerun on Flink, after some refused rows were corrected, computes exactly those and
    # rewrites nothing: rows already stored are skipped, unchanged refused rows are not read
    # again. It runs the Python code in an EXTERNAL worker pool, at parallelism 1: two
    # TaskManagers sharing one pool give both workers the id "1-1", and the first environment
    # to close kills the other's worker (docs/flink.md; PROCESS, the default, has no pool).
    results_before = raw_rows(flink_url, tables.RESULTS_TABLE)
    errors_before = raw_rows(flink_url, tables.ERRORS_TABLE)
    engine = connections.make_engine(flink_url, poolclass=sa.pool.NullPool)
    try:
        with engine.begin() as conn:
            corrected = conn.execute(
                sa.text(
                    "UPDATE emissions.spend_activities a SET amount = 100.0, currency = 'USD', "
                    "naics_code = '334111' FROM emissions.emission_errors e "
                    "WHERE e.activity_type = 'spend' AND e.activity_id = a.id"
                )
            ).rowcount
    finally:
        engine.dispose()
    assert corrected > 0
    pool_address, pool_log = worker_pool
    external_args = flink_cluster.beam_args(
        local_flink.master, flink_job_server_jar, 1, "EXTERNAL", pool_address
    )
    again = run_pipeline(capsys, flink_url, external_args, local_flink)
    assert "Starting worker" in pool_log.read_text(), "the worker pool ran no SDK worker"
    assert (again["pending"], again["total_processed"], again["errors"]) == (
        corrected,
        corrected,
        0,
    )
    results_after = raw_rows(flink_url, tables.RESULTS_TABLE)
    assert set(results_before) <= set(results_after)  # nothing rewritten
    assert len(results_after) == len(results_before) + corrected
    assert raw_rows(flink_url, tables.ERRORS_TABLE) == errors_before  # kept, as history

    # And with nothing pending, a run writes nothing at all.
    last = run_pipeline(capsys, flink_url, external_args, local_flink)
    assert (last["pending"], last["total_processed"]) == (0, 0)
    assert raw_rows(flink_url, tables.RESULTS_TABLE) == results_after


def test_beam_args_submit_to_the_given_cluster(tmp_path: Path) -> None:
    args = flink_cluster.beam_args("flink-jm:8081", tmp_path / "js.jar", parallelism=4)
    assert "--runner=FlinkRunner" in args
    assert "--flink_master=flink-jm:8081" in args
    assert f"--flink_version={flink_cluster.FLINK_MINOR}" in args
    assert "--parallelism=4" in args
    # The workers start beside each TaskManager, one per slot, and check the submitter's code;
    # nothing is staged (they run what is installed there).
    assert "--environment_type=PROCESS" in args
    boot = flink_cluster.PROJECT_ROOT / "flink" / "worker-boot"
    assert f"--environment_options=process_command={boot}" in args
    assert os.access(boot, os.X_OK)
    assert "--sdk_worker_parallelism=1" in args
    assert f"--experiments=emissions_code={flink_worker.code_identity()}" in args
    assert not any(a.startswith("--setup_file") for a in args)
    four = flink_cluster.beam_args("m:1", "j.jar", 8, worker_parallelism=4)
    assert "--sdk_worker_parallelism=4" in four
    external = flink_cluster.beam_args("m:1", "j.jar", 2, "EXTERNAL", "127.0.0.1:50000")
    assert "--environment_type=EXTERNAL" in external
    assert "--environment_config=127.0.0.1:50000" in external
    assert not any("process_command" in a or "sdk_worker" in a for a in external)


def test_pom_builds_the_pinned_job_server() -> None:
    pom = flink_cluster.POM.read_text()
    assert f"<beam.version>{flink_cluster.BEAM_JOB_SERVER_VERSION}</beam.version>" in pom
    assert f"<flink.minor>{flink_cluster.FLINK_MINOR}</flink.minor>" in pom
    assert flink_cluster.FLINK_VERSION.startswith(flink_cluster.FLINK_MINOR + ".")


def test_config_binds_everything_to_loopback(tmp_path: Path) -> None:
    text = flink_cluster.config_yaml(18081, 16123, 2, tmp_path)
    assert "numberOfTaskSlots: 2" in text
    assert "port: 18081" in text and "port: 16123" in text
    assert "localhost" not in text and "0.0.0.0" not in text
    assert text.count("127.0.0.1") == 6
    assert f"dir: {tmp_path}" in text  # pid files stay with this cluster
    assert f"interval: {flink_cluster.BLOB_CLEANUP_S}\n" in text  # a job's blobs do not linger


def script(
    env: dict[str, str], *args: str, timeout: float = RUN_TIMEOUT_S
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["./run_flink.sh", *args],
        cwd=flink_cluster.PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def documented(section: str) -> list[list[str]]:
    """The commands of the first bash block under ``section`` in docs/flink.md, as words
    (comments dropped)."""
    text = (flink_cluster.PROJECT_ROOT / "docs" / "flink.md").read_text()
    block = text.split(section, 1)[1].split("```bash\n", 1)[1].split("```", 1)[0]
    return [shlex.split(line.split("#", 1)[0]) for line in block.splitlines() if line.strip()]


def running(pid: int) -> bool:
    """Whether ``pid`` is a live process (not gone, not a zombie waiting to be reaped)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_run_flink_sh_works_as_documented(
    make_database: Callable[..., str],
    flink_job_server_jar: Path,
    flink_home: Path,
    tmp_path: Path,
) -> None:
    """The commands of docs/flink.md's "A local cluster, one command", as written, on a
    cluster of their own (in a cache of their own that reuses the fetched Flink and jar) and
    a seeded database; then nothing is left running."""
    commands = documented("### A local cluster, one command")
    assert commands == [
        ["./run_flink.sh"],
        ["./run_flink.sh", "--no-radiative-forcing"],
        ["./run_flink.sh", "status"],
        ["./run_flink.sh", "stop"],
    ]
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / flink_home.name).symlink_to(flink_home)
    (cache / flink_job_server_jar.name).symlink_to(flink_job_server_jar)
    url = seeded(make_database)
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("PG", "EMISSIONS_"))},
        "EMISSIONS_FLINK_CACHE": str(cache),
        "EMISSIONS_DATABASE_URL": url,
    }
    assert script(env, "status").returncode == 1  # no cluster yet

    first = script(env, *commands[1][1:], "--progress-interval", "0")
    assert first.returncode == 0, first.stderr[-3000:]
    assert "running: --flink_master=127.0.0.1:" in first.stderr
    summary = json.loads(first.stdout)  # stdout is the run's summary, and only that
    assert (summary["runner"], summary["pending"]) == ("FlinkRunner", SEED_COUNT)
    assert summary["total_processed"] + summary["errors"] == SEED_COUNT
    assert "nothing was pending" not in first.stderr

    # Run again (as after ./run_local.sh): nothing pending, and it says so and what to do.
    again = script(env, *commands[0][1:], "--progress-interval", "0")
    assert again.returncode == 0, again.stderr[-3000:]
    note = again.stderr.strip().splitlines()[-1]
    assert note.startswith(f"note: nothing was pending: all {SEED_COUNT:,} activities"), note
    assert "this run on FlinkRunner computed nothing" in note
    assert "--schema emissions_2" in note

    status = script(env, *commands[2][1:])
    assert status.returncode == 0, status.stderr
    overview = json.loads(status.stdout)
    assert (overview["taskmanagers"], overview["slots-total"]) == (1, 2)
    cluster = LocalFlinkCluster.load(cache / "cluster" / "cluster.json")
    daemons = cluster._alive_pids()
    assert len(daemons) == 2
    assert flink_cluster.job_servers_of(cluster.master) == []  # the runs stopped theirs

    stop = script(env, *commands[3][1:])
    assert stop.returncode == 0, stop.stderr
    assert stop.stdout.strip() == "stopped: the local Flink cluster (2 daemon(s))"
    assert not any(running(pid) for pid in daemons)
    assert script(env, "status").returncode == 1


def test_stop_also_stops_a_job_server_a_killed_run_left(
    flink_job_server_jar: Path, flink_home: Path, tmp_path: Path
) -> None:
    """A run killed outright (SIGKILL) cannot stop its job server: ``stop`` does."""
    cluster = LocalFlinkCluster.create(flink_home, tmp_path / "cluster", slots=1)
    cluster.start()
    try:
        # The job server as Beam starts it for a run on this cluster, its run then gone.
        orphan = subprocess.Popen(
            ["java", "-jar", str(flink_job_server_jar), "--flink-master"]
            + [f"http://{cluster.master}", "--job-port", str(flink_cluster.free_port())],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        # Found once the forked child has become the JVM (its command line is Java's).
        wait_for(
            lambda: flink_cluster.job_servers_of(cluster.master) == [orphan.pid],
            timeout=10,
            what="the orphan job server to be found by its command line",
        )
    finally:
        daemons, servers = cluster.stop()
    assert (daemons, servers) == (2, 1)
    assert orphan.wait(timeout=10) is not None
    assert flink_cluster.job_servers_of(cluster.master) == []


def test_a_long_fetch_says_how_it_is_going(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(flink_fetch, "PROGRESS_INTERVAL_S", 0.2)
    flink_cluster._run(
        ["sleep", "0.7"], "waiting", tmp_path / "log", progress=lambda: ", 12 MB so far"
    )
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) >= 2
    assert all(
        line.startswith("  ... waiting: ") and line.endswith(" s, 12 MB so far") for line in lines
    )


def test_maven_downloads_are_counted_from_its_log(tmp_path: Path) -> None:
    log = tmp_path / "mvn.log"
    log.write_text(
        "[INFO] Downloading from central: https://repo/a.jar\n"
        "[INFO] Downloaded from central: https://repo/a.jar (1.5 MB at 2.0 MB/s)\n"
        "[INFO] Downloaded from central: https://repo/b.pom (2.5 kB at 10 kB/s)\n"
        "[INFO] Downloaded from central: https://repo/c.jar (1,024 kB at 1 MB/s)\n"
    )
    count, mb = flink_cluster.maven_downloads(log)
    assert count == 3
    assert mb == pytest.approx(1.5 + 0.0025 + 1.024)


def test_the_scripting_steps_work_as_documented(
    make_database: Callable[..., str],
    flink_job_server_jar: Path,
    flink_home: Path,
    tmp_path: Path,
) -> None:
    """docs/flink.md's "steps underneath, for scripting", run as written by bash (``[options]``
    left out), on a cluster of their own: the run computes everything and stop stops it all."""
    block = documented("The steps underneath, for scripting:")
    assert [words[:4] for words in block] == [
        [".venv/bin/python", "-m", "ops.flink_cluster", "fetch"],
        [".venv/bin/python", "-m", "ops.flink_cluster", "start"],
        [".venv/bin/python", "-m", "ops.flink_cluster", "args"],
        [".venv/bin/python", "-m", "pipeline.run", "$(.venv/bin/python"],
        [".venv/bin/python", "-m", "ops.flink_cluster", "stop"],
    ]
    text = (flink_cluster.PROJECT_ROOT / "docs" / "flink.md").read_text()
    lines = text.split("The steps underneath, for scripting:", 1)[1]
    lines = lines.split("```bash\n", 1)[1].split("```", 1)[0]
    commands = "\n".join(
        line.split("#", 1)[0].replace("[options]", "--progress-interval 0")
        for line in lines.splitlines()
    )
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / flink_home.name).symlink_to(flink_home)
    (cache / flink_job_server_jar.name).symlink_to(flink_job_server_jar)
    url = seeded(make_database)
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("PG", "EMISSIONS_"))},
        "EMISSIONS_FLINK_CACHE": str(cache),
        "EMISSIONS_DATABASE_URL": url,
    }
    proc = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", commands],
        cwd=flink_cluster.PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S * 2,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    assert f"job server jar: {cache / flink_job_server_jar.name}" in out
    master = out.split("--flink_master=", 1)[1].split()[0]
    assert f"--runner=FlinkRunner --flink_master={master} --flink_version=" in out
    summary = json.loads(out[out.index("\n{") : out.rindex("}") + 1])
    assert (summary["runner"], summary["pending"]) == ("FlinkRunner", SEED_COUNT)
    assert summary["total_processed"] + summary["errors"] == SEED_COUNT
    assert out.rstrip().endswith("stopped: the local Flink cluster (2 daemon(s))")
    assert flink_cluster.job_servers_of(master) == []
    assert not (cache / "cluster" / "cluster.json").exists()


def unpacked(serialized: bytes) -> Iterator[bytes]:
    """The pickled objects inside a serialized pipeline (the DoFns, which Beam's pickler
    stores as base64 of bz2 or zlib inside the transforms' payloads), unpacked."""
    for chunk in re.findall(rb"[A-Za-z0-9+/]{40,}={0,2}", serialized):
        try:
            packed = base64.b64decode(chunk)
        except ValueError:
            continue
        for unpack in (bz2.decompress, zlib.decompress):
            try:
                yield unpack(packed)
            except (OSError, ValueError, zlib.error):
                pass


def test_the_job_sent_to_flink_carries_no_password(tmp_path: Path) -> None:
    """What a Flink submission ships (the pipeline proto with its pickled DoFns, and the
    options) holds no password: the workers read it from libpq's variables or files on their
    hosts. With LOOPBACK (the workers in this process) it stays, which shows the check sees it."""
    secret = "s3cr3t-Pa55"
    url = f"postgresql://emissions:{secret}@db.example:5432/emissions?password={secret}"

    def shipped(environment: str, follow: bool) -> bytes:
        argv = [
            *flink_cluster.beam_args(
                "127.0.0.1:1",
                tmp_path / "js.jar",
                2,
                environment,
                "127.0.0.1:2" if environment == "EXTERNAL" else None,
            ),
            "--partitions=4",
            "--database-url",
            url,
            f"--database_url={url}",
        ]
        options = run.runner_options(argv)  # as the run makes them
        config = validate(options.view_as(EmissionsOptions), url)
        assert secret in config.database_url
        p = beam.Pipeline(options=options)
        if follow:
            graph.build_follow(p, config, 1.0, 2.0**40, 1000, 4)
        else:
            graph.build(p, config, plan_int_ranges("spend", 1, 1000, 4))
        proto = p.to_runner_api()
        # Its temp folder, which only running the pipeline removes: this test's own.
        shutil.rmtree(p.local_tempdir, ignore_errors=True)
        serialized = proto.SerializeToString()
        blob = b"".join(unpacked(serialized)) + serialized
        return blob + json.dumps(options.get_all_options(), default=str).encode()

    for follow in (False, True):
        assert secret.encode() not in shipped("PROCESS", follow)
        assert secret.encode() not in shipped("EXTERNAL", follow)
        assert secret.encode() in shipped("LOOPBACK", follow)
    assert connections.without_password(url) == ("postgresql://emissions@db.example:5432/emissions")
    assert connections.without_password("postgresql:///x?host=/s") == "postgresql:///x?host=/s"


def test_only_database_urls_lose_their_password_in_the_options() -> None:
    """Other values that start like a URL's scheme (a schema or file named ``postgres…``)
    pass as given: the run must not fail parsing them as URLs."""
    given = [
        "--schema",
        "postgres_emissions",
        "--sources=postgres.toml",
        "--database-url",
        "postgresql://u:pw@db.example/x",
        "--database_url=postgres://u:pw@db.example/x?sslmode=require",
    ]
    assert run.shipped_args(given) == [
        "--schema",
        "postgres_emissions",
        "--sources=postgres.toml",
        "--database-url",
        "postgresql://u@db.example/x",
        "--database_url=postgres://u@db.example/x?sslmode=require",
    ]
