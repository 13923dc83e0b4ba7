"""The per-TaskManager deployment (issue 26): two TaskManagers of one slot each, every one
starting its own Python workers (Beam's PROCESS environment, ``flink/worker-boot``), a batch
job and a follow job at once, again and again (the follow job stopped by SIGTERM, which
cancels it on Flink), results equal to the DirectRunner's, nothing left behind; and workers
that refuse a job from other code.

``EMISSIONS_FLINK_REPEAT`` sets how many rounds (2 by default, to keep CI short; the issue's
closing note gives a run of 10).
"""

from __future__ import annotations

import os
import re
import signal
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import sqlalchemy as sa

from ops import flink_cluster, flink_worker
from ops.flink_cluster import LocalFlinkCluster
from ops.seed import seed
from pipeline import run
from pipeline.store import connections, tables
from tests.support import RunProcess, scalar, wait_for
from tests.test_flink import RUN_TIMEOUT_S, run_pipeline, table_rows
from tests.test_follow import matches_reference, start_follow

pytest_plugins = ["tests.flink_fixtures"]

REPEAT = int(os.environ.get("EMISSIONS_FLINK_REPEAT", "2"))
BATCH_COUNT = 600
FOLLOW_COUNT = 150


def seeded(make_database: Callable[..., str], count: int, seed_value: int) -> str:
    url = make_database("bigint")
    engine = connections.make_engine(url, poolclass=sa.pool.NullPool)
    try:
        seed(engine, count, seed_value=seed_value)
    finally:
        engine.dispose()
    return url


def polling(url: str, proc: RunProcess) -> None:
    """Waits until the follow run's job polls on Flink (its job server's start and the
    workers' included: minutes on a loaded 2-core machine)."""

    def ready() -> bool:
        assert proc.proc.poll() is None, proc.stderr[-3000:]
        return bool(
            scalar(url, "SELECT count(*) FROM emissions.follow_marks WHERE scanned IS NOT NULL")
        )

    wait_for(ready, timeout=RUN_TIMEOUT_S, what="the follow job's first poll on Flink")


def computed(url: str) -> int:
    """Activities with a result or a dead letter."""
    return int(
        scalar(
            url,
            "SELECT (SELECT count(*) FROM emissions.emission_results) "
            "+ (SELECT count(*) FROM emissions.emission_errors)",
        )
    )


def jobs(cluster: LocalFlinkCluster) -> dict[str, int]:
    overview = cluster.overview()
    assert overview is not None, "the local Flink cluster does not answer"
    return {k: int(str(overview[f"jobs-{k}"])) for k in ("finished", "failed", "cancelled")}


def worker_processes(cluster: LocalFlinkCluster) -> list[int]:
    """Live Python workers the cluster's TaskManagers started (``ops.flink_worker``)."""
    found = []
    for pid in flink_cluster.children_of(cluster._alive_pids()):
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"ops.flink_worker" in argv:
            found.append(pid)
    return found


def job_blobs(cluster: LocalFlinkCluster) -> list[Path]:
    """The jobs' blob folders (the job server jar each job uploads) in the cluster's stores."""
    return sorted((cluster.workdir / "tmp").glob("*/blobStorage/job_*")) + sorted(
        (cluster.workdir / "tmp").glob("blobStore-*/job_*")
    )


def run_temp_folders(pids: list[int]) -> list[str]:
    """The temp folders of the runs of ``pids`` (``emissions-run-<pid>-…``) still there."""
    prefixes = tuple(f"emissions-run-{pid}-" for pid in pids)
    return [n for n in os.listdir(tempfile.gettempdir()) if n.startswith(prefixes)]


def test_a_batch_and_a_follow_job_at_once_on_two_taskmanagers_again_and_again(
    make_database: Callable[..., str],
    local_flink: LocalFlinkCluster,
    flink_job_server_jar: Path,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    assert (local_flink.taskmanagers, local_flink.slots) == (2, 1)
    reference = seeded(make_database, BATCH_COUNT, 7)
    run_pipeline(capsys, reference, ["--runner=DirectRunner"])
    expected = [table_rows(reference, t) for t in (tables.RESULTS_TABLE, tables.ERRORS_TABLE)]
    # One slot each: the two jobs at once take both TaskManagers.
    args = flink_cluster.beam_args(local_flink.master, flink_job_server_jar, 1)
    before = jobs(local_flink)
    runs = [os.getpid()]
    started = time.monotonic()
    for round_ in range(REPEAT):
        follow_url = seeded(make_database, FOLLOW_COUNT, 11)
        batch_url = seeded(make_database, BATCH_COUNT, 7)
        workdir = tmp_path / f"round-{round_}"
        workdir.mkdir()
        follow = start_follow(follow_url, workdir, *args, "--stop-after", "900")
        runs.append(follow.proc.pid)
        try:
            polling(follow_url, follow)
            batch = run_pipeline(capsys, batch_url, args, local_flink)
            assert follow.proc.poll() is None, "the follow job ended before the batch job"
            wait_for(
                lambda u=follow_url: computed(u) == FOLLOW_COUNT,  # type: ignore[misc]
                timeout=RUN_TIMEOUT_S,
                what="the follow job to compute the seeded rows",
            )
            # Stopped as a scheduler stops it: SIGTERM cancels its Flink job.
            follow.proc.send_signal(signal.SIGTERM)
            assert follow.wait(timeout=RUN_TIMEOUT_S) == 143, follow.stderr[-3000:]
        finally:
            follow.kill()
        status = scalar(follow_url, "SELECT status FROM emissions.calculation_runs")
        assert status == "cancelled", follow.stderr[-3000:]
        assert (batch["runner"], batch["pending"]) == ("FlinkRunner", BATCH_COUNT)
        got = [table_rows(batch_url, t) for t in (tables.RESULTS_TABLE, tables.ERRORS_TABLE)]
        assert got == expected, f"round {round_}: the batch job's rows differ from DirectRunner's"
        matches_reference(follow_url)
    minutes = (time.monotonic() - started) / 60
    wait_for(
        lambda: (
            jobs(local_flink)
            == {
                **before,
                "finished": before["finished"] + REPEAT,
                "cancelled": before["cancelled"] + REPEAT,
            }
        ),
        timeout=60,
        what=f"each batch job FINISHED and each follow job CANCELED (before: {before})",
    )
    # Nothing left: no job server, no worker, no job's blobs, no run's temp folder.
    assert flink_cluster.job_servers_of(local_flink.master) == []
    wait_for(
        lambda: worker_processes(local_flink) == [], timeout=30, what="the Python workers to end"
    )
    wait_for(
        lambda: job_blobs(local_flink) == [],
        timeout=4 * flink_cluster.BLOB_CLEANUP_S + 30,
        what="the jobs' blobs to be removed",
    )
    assert run_temp_folders(runs) == []
    print(f"{REPEAT} rounds of a batch and a follow job at once: {minutes:.1f} min")


def test_a_worker_refuses_a_job_from_other_code_in_one_line(
    make_database: Callable[..., str],
    local_flink: LocalFlinkCluster,
    flink_job_server_jar: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    url = seeded(make_database, 30, 3)
    here = flink_worker.code_identity()
    other = "0.0.9+0123456789abcdef"
    args = [
        a
        if not a.startswith("--experiments=")
        else f"--experiments={flink_worker.EXPERIMENT}{other}"
        for a in flink_cluster.beam_args(local_flink.master, flink_job_server_jar, 1)
    ]
    failed_before = jobs(local_flink)["failed"]
    code = run.main(["--database-url", url, "--progress-interval", "0", *args])
    out = capsys.readouterr()
    assert code != 0, out.out[-2000:]
    wait_for(
        lambda: jobs(local_flink)["failed"] == failed_before + 1,
        timeout=30,
        what="the job to be counted failed",
    )
    assert scalar(url, "SELECT count(*) FROM emissions.emission_results") == 0
    logs = "".join(
        p.read_text(errors="replace")
        for p in (local_flink.workdir / "log").glob("*taskexecutor*.log")
    )
    line = (
        f"refused: the job was submitted from {flink_worker.DISTRIBUTION} {other}, this worker "
        f"runs {here}; install the same code on the submitting machine and every TaskManager "
        f"host (this one's: {flink_worker.PROJECT_ROOT})"
    )
    assert line in logs
    # The submitter reads it too, in its one error line (not "Process died with exit code 3").
    said = [ln for ln in out.err.splitlines() if ln.startswith("error: run ")]
    assert len(said) == 1, out.err[-3000:]
    assert re.search(r"failed: JobRefused: worker [\w-]+ refused: the job was submitted", said[0])
    assert line[: line.index(" (this one's")] in said[0]
    assert (
        scalar(
            url, "SELECT status FROM emissions.calculation_runs ORDER BY started_at DESC LIMIT 1"
        )
        == "failed"
    )


def test_the_code_identity_changes_with_any_file_the_workers_run(tmp_path: Path) -> None:
    for package in flink_worker.CODE_PACKAGES:
        (tmp_path / package / "sub").mkdir(parents=True)
        (tmp_path / package / "sub" / "a.py").write_text("x = 1\n")
    (tmp_path / "pipeline" / "__pycache__").mkdir()
    first = flink_worker.code_fingerprint(tmp_path)
    assert len(first) == 16
    (tmp_path / "pipeline" / "__pycache__" / "a.cpython-311.pyc").write_bytes(b"\0")
    (tmp_path / "ops.py").write_text("not shipped\n")
    assert flink_worker.code_fingerprint(tmp_path) == first  # caches and tools do not count
    (tmp_path / "transforms" / "sub" / "a.py").write_text("x = 2\n")
    assert flink_worker.code_fingerprint(tmp_path) != first
    # The version is the installed distribution's, the one setup.py says.
    setup = (flink_worker.PROJECT_ROOT / "setup.py").read_text()
    shipped = re.search(r'^VERSION = "(.+)"$', setup, re.M)
    assert shipped is not None
    assert flink_worker.code_identity().startswith(f"{shipped[1]}+")


def test_a_worker_takes_only_a_job_of_its_own_code() -> None:
    here = "0.1.0+aaaaaaaaaaaaaaaa"
    mine = [f"{flink_worker.EXPERIMENT}{here}", "beam_fn_api"]
    assert flink_worker.refusal(mine, here) is None
    other = flink_worker.refusal([f"{flink_worker.EXPERIMENT}0.1.0+bbbbbbbbbbbbbbbb"], here)
    assert other is not None and "\n" not in other
    assert "0.1.0+bbbbbbbbbbbbbbbb" in other and here in other
    unsaid = flink_worker.refusal(["beam_fn_api"], here)
    assert unsaid is not None and "ops.flink_cluster args" in unsaid
    options = '{"beam:option:experiments:v1": ["beam_fn_api", "emissions_code=1+2"]}'
    assert flink_worker.experiments_of(options) == ["beam_fn_api", "emissions_code=1+2"]
    assert flink_worker.experiments_of('{"options": {"experiments": ["x"]}}') == ["x"]
