"""A run leaves nothing behind: no process it started, no Beam temp folder.

Each run here is ``python -m pipeline.run`` in a process of its own, with a marker in its
environment that every process it starts inherits (Beam's job server JVM, SDK worker
processes), and a temp folder of its own. While it runs, every process carrying the marker
is noted with its command line, so each test first proves that the run did start the
processes it should not leave (the job server, the worker processes); once it has exited,
none of them may be alive, and its temp folder must be empty.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from ops.flink_cluster import LocalFlinkCluster
from ops.seed import seed
from pipeline.stopping import Leftovers
from pipeline.store import connections

pytest_plugins = ["tests.flink_fixtures"]

ROOT = Path(__file__).resolve().parent.parent
MARK = "EMISSIONS_TEST_PROCESS_MARK"
RUN_TIMEOUT_S = 300.0


def marked_processes(mark: str) -> dict[int, str]:
    """pid → command line of every live process whose environment carries ``mark``."""
    needle = f"{MARK}={mark}".encode()
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if needle not in (entry / "environ").read_bytes().split(b"\0"):
                continue
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue  # gone meanwhile, or not ours to read
        if state != "Z":  # a zombie has ended; its parent has yet to reap it
            found[int(entry.name)] = cmdline
    return found


@dataclass
class Tracked:
    """What a tracked run did: its exit code and output, what it started, what outlived it."""

    code: int
    stdout: str
    stderr: str
    started: dict[int, str] = field(default_factory=dict)
    left: dict[int, str] = field(default_factory=dict)
    temp_left: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        lines = self.stdout.splitlines()
        begin = max(i for i, line in enumerate(lines) if line == "{")
        summary: dict[str, Any] = json.loads("\n".join(lines[begin:]))
        return summary


def run_env(url: str, temp: Path) -> dict[str, str]:
    """A run's environment: this one without libpq's and the pipeline's variables, the
    database ``url``, and ``temp`` as its temp folder."""
    return {
        **{k: v for k, v in os.environ.items() if not k.startswith(("PG", "EMISSIONS_"))},
        "EMISSIONS_DATABASE_URL": url,
        "TMPDIR": str(temp),
    }


def run_tracked(
    url: str,
    args: list[str],
    tmp_path: Path,
    signal_when: Callable[[], bool] | None = None,
) -> Tracked:
    """``python -m pipeline.run ARGS`` on ``url``, watched; with ``signal_when``, SIGTERM is sent
    as soon as it returns true."""
    mark = uuid.uuid4().hex
    temp = tmp_path / "tmp"
    temp.mkdir(exist_ok=True)
    out, err = tmp_path / "stdout", tmp_path / "stderr"
    env = {**run_env(url, temp), MARK: mark}
    started: dict[int, str] = {}
    with out.open("w") as stdout, err.open("w") as stderr:
        proc = subprocess.Popen(
            [sys.executable, "-m", "pipeline.run", "--progress-interval", "0", *args],
            cwd=ROOT,
            env=env,
            stdout=stdout,
            stderr=stderr,
        )
        deadline = time.monotonic() + RUN_TIMEOUT_S
        signalled = False
        try:
            while proc.poll() is None:
                assert time.monotonic() < deadline, "the run did not end in time"
                started.update(marked_processes(mark))
                if signal_when is not None and not signalled and signal_when():
                    proc.send_signal(signal.SIGTERM)
                    signalled = True
                time.sleep(0.2)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    started.pop(proc.pid, None)
    time.sleep(0.5)  # what it left behind has had every chance to go by itself
    left = marked_processes(mark)
    tracked = Tracked(
        proc.returncode,
        out.read_text(),
        err.read_text(),
        started,
        left,
        sorted(p.name for p in temp.iterdir()),
    )
    for pid in left:  # do not leave them to the next test either
        os.kill(pid, signal.SIGKILL)
    return tracked


def seeded(make_database: Callable[..., str], count: int) -> str:
    url = make_database("bigint")
    engine = connections.make_engine(url, poolclass=sa.pool.NullPool)
    try:
        seed(engine, count, seed_value=11)
    finally:
        engine.dispose()
    return url


def job_servers(processes: dict[int, str]) -> dict[int, str]:
    return {pid: cmd for pid, cmd in processes.items() if "java" in cmd and "job-server" in cmd}


def test_a_flink_run_leaves_no_job_server_behind(
    make_database: Callable[..., str],
    flink_args: list[str],
    tmp_path: Path,
) -> None:
    url = seeded(make_database, 500)
    run = run_tracked(url, [*flink_args, "--partitions", "2"], tmp_path)
    assert run.code == 0, run.stderr[-3000:]
    assert run.summary()["total_processed"] == 500 - run.summary()["errors"]
    # The run did start Beam's job server (a JVM), as a process of its own...
    assert job_servers(run.started), run.started
    # ...and nothing it started, job server included, outlived it; nor did Beam's temp folder.
    assert run.left == {}
    assert run.temp_left == []


def flink_jobs(cluster: LocalFlinkCluster) -> dict[str, str]:
    """Job id → status of every job the cluster knows."""
    with urllib.request.urlopen(f"http://{cluster.master}/jobs", timeout=5) as resp:
        return {j["id"]: j["status"] for j in json.load(resp)["jobs"]}


def test_a_flink_run_stopped_by_sigterm_leaves_nothing_running(
    make_database: Callable[..., str],
    local_flink: LocalFlinkCluster,
    flink_args: list[str],
    tmp_path: Path,
) -> None:
    url = seeded(make_database, 20_000)
    before = flink_jobs(local_flink)

    def job_running() -> bool:
        return any(s == "RUNNING" for i, s in flink_jobs(local_flink).items() if i not in before)

    run = run_tracked(url, [*flink_args, "--partitions", "8"], tmp_path, signal_when=job_running)
    assert run.code == 143, run.stderr[-3000:]
    assert "cancelled by SIGTERM" in run.stderr
    assert job_servers(run.started), run.started
    assert run.left == {}
    assert run.temp_left == []
    # Its job does not go on without it: cancelled through the job server, it ends on the
    # cluster (CANCELED, or FAILED when the run's own SDK harness went first: Beam's job server
    # cancels its invocation, not always the Flink job), and frees its slots.
    deadline = time.monotonic() + 60
    while True:
        jobs = {i: s for i, s in flink_jobs(local_flink).items() if i not in before}
        ended = set(jobs.values()) <= {"CANCELED", "FAILED"}
        if ended or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert len(jobs) == 1 and ended, jobs
    overview = local_flink.overview() or {}
    assert overview.get("slots-available") == overview.get("slots-total"), overview


@pytest.mark.parametrize(
    "mode", [[], ["--direct_running_mode=multi_processing", "--direct_num_workers=2"]]
)
def test_a_direct_run_leaves_nothing_behind(
    make_database: Callable[..., str], tmp_path: Path, mode: list[str]
) -> None:
    url = seeded(make_database, 500)
    run = run_tracked(url, ["--runner=DirectRunner", *mode], tmp_path)
    assert run.code == 0, run.stderr[-3000:]
    assert run.summary()["pending"] == 500
    if mode:  # worker processes, each an SDK harness of its own
        workers = [c for c in run.started.values() if "sdk_worker_main" in c]
        assert len(workers) >= 2, run.started
    else:  # worker threads: nothing else to start
        assert run.started == {}
    assert run.left == {}
    assert run.temp_left == []


def test_a_killed_runs_temp_folder_is_removed_by_the_next_run(
    make_database: Callable[..., str], tmp_path: Path
) -> None:
    url = seeded(make_database, 20_000)
    temp = tmp_path / "tmp"
    temp.mkdir()
    env = run_env(url, temp)
    # A run killed outright (SIGKILL) while it works cannot remove its temp folder.
    killed = subprocess.Popen(
        [sys.executable, "-m", "pipeline.run"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + RUN_TIMEOUT_S
    prefix = f"emissions-run-{killed.pid}-"
    while not any(p.name.startswith(prefix) for p in temp.iterdir()):
        assert killed.poll() is None, "the run ended before its temp folder was seen"
        assert time.monotonic() < deadline, "the run made no temp folder"
        time.sleep(0.02)
    killed.kill()
    killed.wait()
    (left_by_kill,) = [p.name for p in temp.iterdir() if p.name.startswith(prefix)]
    # Beside it: the folder of a run still alive (this process), and one named otherwise.
    alive = temp / f"emissions-run-{os.getpid()}-alive"
    alive.mkdir()
    unnamed = temp / "emissions-run-nopid"
    unnamed.mkdir()

    run = run_tracked(url, ["--runner=DirectRunner"], tmp_path)
    assert run.code == 0, run.stderr[-3000:]
    assert f"removed the temp folders of runs that were killed: {left_by_kill}" in run.stderr
    assert run.temp_left == sorted([alive.name, unnamed.name])


def test_two_overlapping_runs_of_one_process_leave_a_temp_folder_that_exists() -> None:
    """Two runs in one process (threads), the first ending first: Python's temp folder must not
    be left on the first run's folder, removed with it (every later run then failed with
    FileNotFoundError in mkdtemp)."""
    before = tempfile.tempdir
    first = Leftovers()
    second = Leftovers()  # finds the first's folder in force
    first.stop()
    second.stop()
    try:
        assert tempfile.tempdir == before or tempfile.tempdir is None
        assert os.path.isdir(tempfile.gettempdir())
        third = Leftovers()
        assert os.path.isdir(third.temp)
        third.stop()
        assert not os.path.exists(first.temp) and not os.path.exists(second.temp)
    finally:
        tempfile.tempdir = before
