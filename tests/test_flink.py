"""The pipeline on a real Apache Flink session cluster, against a DirectRunner run.

A local Flink cluster (see ``pipeline/flink_cluster.py``) is started once for the session and
always stopped. What it needs is fetched into ``.cache/flink`` the first time (PyPI and Maven
Central, a few minutes); any failure there fails these tests with the reason: they never skip.
"""

from __future__ import annotations

import json
import subprocess
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from ops import flink_cluster
from ops.flink_cluster import FlinkSetupError, LocalFlinkCluster
from ops.seed import seed
from pipeline import run
from pipeline.store import connections, tables

SEED_COUNT = 3000
# A Flink run here takes about half a minute; past this the jobs are cancelled so a hang fails.
RUN_TIMEOUT_S = 300.0
# activity_version is the activity row's xmin: it differs between two databases.
VOLATILE = {"id", "run_id", "created_at", "activity_version"}


@pytest.fixture(scope="session")
def flink_job_server_jar() -> Path:
    try:
        return flink_cluster.fetch_job_server()
    except FlinkSetupError as e:
        pytest.fail(f"could not build the Beam Flink job server jar: {e}", pytrace=False)


@pytest.fixture(scope="session")
def local_flink(
    tmp_path_factory: pytest.TempPathFactory, flink_job_server_jar: Path
) -> Iterator[LocalFlinkCluster]:
    """A Flink session cluster on 127.0.0.1 with two task slots, for the whole session."""
    try:
        home = flink_cluster.fetch_flink()
    except FlinkSetupError as e:
        pytest.fail(f"could not assemble Flink {flink_cluster.FLINK_VERSION}: {e}", pytrace=False)
    cluster = LocalFlinkCluster.create(home, tmp_path_factory.mktemp("flink"), slots=2)
    try:
        cluster.start()
    except FlinkSetupError as e:
        pytest.fail(f"could not start the Flink cluster: {e}", pytrace=False)
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="session")
def worker_pool(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """A Beam SDK worker pool, as a deployment runs beside each TaskManager: (address, log)."""
    port = flink_cluster.free_port()
    log = tmp_path_factory.mktemp("worker-pool") / "worker_pool.log"
    try:
        pool = flink_cluster.start_worker_pool(port, log)
    except FlinkSetupError as e:
        pytest.fail(f"could not start the Beam worker pool: {e}", pytrace=False)
    try:
        yield f"127.0.0.1:{port}", log
    finally:
        pool.terminate()
        try:
            pool.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pool.kill()


@pytest.fixture
def flink_args(local_flink: LocalFlinkCluster, flink_job_server_jar: Path) -> list[str]:
    return flink_cluster.beam_args(local_flink.master, flink_job_server_jar, parallelism=2)


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
    # again. It runs the Python code in an EXTERNAL worker pool, as a multi-host deployment does.
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
        local_flink.master, flink_job_server_jar, 2, "EXTERNAL", pool_address
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
    assert any(a.startswith("--setup_file=") and a.endswith("setup.py") for a in args)
    external = flink_cluster.beam_args("m:1", "j.jar", 2, "EXTERNAL", "127.0.0.1:50000")
    assert "--environment_type=EXTERNAL" in external
    assert "--environment_config=127.0.0.1:50000" in external


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
