"""The follow mode on Flink: a streaming job on the local cluster, with a bounded life
(``--stop-after``: Beam 2.62's portable Flink runner grows a polling splittable DoFn's
checkpoint without bound, apache/beam#27648, so each job ends and a new one continues from the
marks). A row inserted and a row corrected while it runs get their results; the job ends on
its own, recorded, with exactly those two results."""

from __future__ import annotations

import json
import signal
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

from ops.flink_cluster import LocalFlinkCluster
from tests.support import scalar, wait_for
from tests.test_flink_scale import seeded
from tests.test_follow import execute, following, matches_reference, result_of, start_follow

pytest_plugins = ["tests.flink_fixtures"]


def test_the_follow_mode_runs_as_a_flink_streaming_job_for_a_bounded_life(
    make_database: Callable[..., str],
    local_flink: LocalFlinkCluster,
    flink_args: list[str],
    tmp_path: Path,
) -> None:
    url = seeded(make_database, 200, 11)
    finished_before = _jobs_finished(local_flink)
    proc = start_follow(url, tmp_path, *flink_args, "--stop-after", "75")
    try:
        following(url, proc)
        # Its first polls computed the 200 seeded rows (less the refused ones).
        wait_for(
            lambda: not _pending(url),
            timeout=120,
            what="the seeded rows computed on Flink",
        )
        corrected = int(
            scalar(
                url,
                "SELECT min(activity_id) FROM emissions.emission_results "
                "WHERE activity_type = 'spend'",
            )
        )
        before = result_of(url, "spend", corrected)
        assert before is not None
        started = time.monotonic()
        execute(
            url,
            "INSERT INTO emissions.spend_activities (id, amount, currency, naics_code, "
            "activity_date) VALUES (600001, 900, 'USD', '334111', '2024-04-01')",
        )
        execute(
            url,
            "UPDATE emissions.spend_activities SET amount = amount * 3 WHERE id = %s",
            (corrected,),
        )
        wait_for(
            lambda: (
                result_of(url, "spend", 600001) is not None
                and result_of(url, "spend", corrected) != before
            ),
            timeout=60,
            what="results for the inserted and the corrected rows, on Flink",
        )
        latency = time.monotonic() - started
        assert proc.wait(timeout=240) == 0, proc.stderr[-3000:]
    finally:
        proc.kill()
    summary = proc.summary()
    assert summary["runner"] == "FlinkRunner" and summary["mode"] == "follow"
    stored = scalar(url, "SELECT count(*) FROM emissions.emission_results")
    refused = scalar(url, "SELECT count(*) FROM emissions.emission_errors")
    assert stored + refused == 201
    assert summary["total_processed"] == stored + 1  # the correction is a second result
    assert _jobs_finished(local_flink) == finished_before + 1
    assert (
        scalar(
            url,
            "SELECT status FROM emissions.calculation_runs WHERE run_id = %s",
            (summary["run_id"],),
        )
        == "succeeded"
    )
    matches_reference(url)
    print(f"Flink follow: results {latency:.1f} s after the commits")


def _pending(url: str) -> bool:
    """Whether a seeded activity has neither a result nor a dead letter yet."""
    return bool(
        scalar(
            url,
            "SELECT count(*) FROM (SELECT id, 'electricity' t FROM "
            "emissions.electricity_activities UNION ALL SELECT id, 'spend' FROM "
            "emissions.spend_activities UNION ALL SELECT id, "
            "'air_travel' FROM emissions.air_travel_activities) a WHERE NOT EXISTS (SELECT 1 FROM "
            "emissions.emission_results r WHERE r.activity_type = a.t AND r.activity_id = a.id) "
            "AND NOT EXISTS (SELECT 1 FROM emissions.emission_errors e WHERE e.activity_type = a.t "
            "AND e.activity_id = a.id)",
        )
    )


def _jobs_finished(cluster: LocalFlinkCluster) -> int:
    """How many jobs the cluster has finished, from its REST API."""
    overview = cluster.overview()
    assert overview is not None, "the local Flink cluster does not answer"
    return int(str(overview["jobs-finished"]))


def test_sigterm_cancels_the_follow_job_on_flink_and_records_it_cancelled(
    make_database: Callable[..., str],
    local_flink: LocalFlinkCluster,
    flink_args: list[str],
    tmp_path: Path,
) -> None:
    url = seeded(make_database, 50, 5)
    before = _jobs(local_flink)
    proc = start_follow(url, tmp_path, *flink_args, "--stop-after", "600")
    try:
        following(url, proc)
        wait_for(
            lambda: "RUNNING" in _new_states(local_flink, before),
            timeout=60,
            what="the follow job running on Flink",
        )
        proc.proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=120) == 143, proc.stderr[-3000:]
    finally:
        proc.kill()
    assert "cancelled by SIGTERM" in proc.stderr
    wait_for(
        lambda: _new_states(local_flink, before) == ["CANCELED"],
        timeout=60,
        what=f"the follow job CANCELED on Flink (now {_new_states(local_flink, before)})",
    )
    status = scalar(url, "SELECT status FROM emissions.calculation_runs")
    assert status == "cancelled"
    overview = local_flink.overview() or {}
    assert overview.get("slots-available") == overview.get("slots-total"), overview


def _jobs(cluster: LocalFlinkCluster) -> dict[str, str]:
    """Job id → status of every job the cluster knows."""
    with urllib.request.urlopen(f"http://{cluster.master}/jobs", timeout=5) as resp:
        return {j["id"]: j["status"] for j in json.load(resp)["jobs"]}


def _new_states(cluster: LocalFlinkCluster, before: dict[str, str]) -> list[str]:
    return [s for i, s in _jobs(cluster).items() if i not in before]
