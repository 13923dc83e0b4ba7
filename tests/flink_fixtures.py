"""The local Flink cluster, its job server jar and a Beam worker pool, for every test module
that needs them (``pytest_plugins = ["tests.flink_fixtures"]``): one cluster per session,
however many modules ask for it.

The cluster is started once for the session (see ``ops/flink_cluster.py``) and always stopped.
What it needs is fetched into ``.cache/flink`` the first time (PyPI and Maven Central, a few
minutes); any failure there fails the tests with the reason: they never skip.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from ops import flink_cluster
from ops.flink_cluster import FlinkSetupError, LocalFlinkCluster


@pytest.fixture(scope="session")
def flink_job_server_jar() -> Path:
    try:
        return flink_cluster.fetch_job_server()
    except FlinkSetupError as e:
        pytest.fail(f"could not build the Beam Flink job server jar: {e}", pytrace=False)


@pytest.fixture(scope="session")
def flink_home() -> Path:
    try:
        return flink_cluster.fetch_flink()
    except FlinkSetupError as e:
        pytest.fail(f"could not assemble Flink {flink_cluster.FLINK_VERSION}: {e}", pytrace=False)


@pytest.fixture(scope="session")
def local_flink(
    tmp_path_factory: pytest.TempPathFactory, flink_home: Path, flink_job_server_jar: Path
) -> Iterator[LocalFlinkCluster]:
    """A Flink session cluster on 127.0.0.1 for the whole session: two TaskManagers of one task
    slot each, as two hosts would be, each starting its own Python workers (PROCESS)."""
    cluster = LocalFlinkCluster.create(
        flink_home, tmp_path_factory.mktemp("flink"), slots=1, taskmanagers=2
    )
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
    """The Beam options that submit to the session cluster: parallelism 2, the Python workers
    beside each TaskManager (PROCESS, one per slot)."""
    return flink_cluster.beam_args(
        local_flink.master, flink_job_server_jar, parallelism=2, worker_parallelism=1
    )
