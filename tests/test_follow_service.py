"""The follow service's HTTP face (issue 27): a real ``pipeline.follow --http-port`` process,
scraped while it runs, as a Kubernetes probe or Prometheus would (docs/follow.md)."""

from __future__ import annotations

import json
import signal
import socket
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from ops.seed import seed
from pipeline import service
from tests.support import scalar, wait_for
from tests.test_follow import start_follow


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=30) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as refused:
        return refused.code, refused.read().decode()


def metric(text: str, name: str, **labels: str) -> float:
    """The value of one sample of Prometheus text (labels: those the sample must carry)."""
    for line in text.splitlines():
        if not line.startswith(name + ("{" if labels else " ")):
            continue
        if all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"no sample {name} {labels} in:\n{text}")


def test_a_follow_run_answers_its_probes_metrics_and_status_while_it_runs(
    database_url: str, engine: sa.Engine, tmp_path: Path
) -> None:
    seed(engine, 300, seed_value=11)
    port, run_id = free_port(), str(uuid.uuid4())
    proc = start_follow(
        database_url, tmp_path, "--http-port", str(port), "--http-host", "127.0.0.1",
        "--run-id", run_id,
    )  # fmt: skip
    try:

        def ready() -> bool:
            assert proc.proc.poll() is None, proc.stderr
            try:
                return get(port, "/readyz")[0] == 200
            except OSError:
                return False  # not listening yet

        wait_for(ready, timeout=90, what="/readyz to answer 200")
        stored = "SELECT count(*) FROM emissions.emission_results WHERE run_id = %s"
        dead = "SELECT count(*) FROM emissions.emission_errors WHERE run_id = %s"
        wait_for(
            lambda: (
                scalar(database_url, stored, (run_id,)) + scalar(database_url, dead, (run_id,))
                == 300
            ),
            timeout=90,
            what="the seeded backlog computed",
        )
        code, body = get(port, "/readyz")
        assert (code, json.loads(body)) == (200, {"ready": True, "why": []})
        assert get(port, "/healthz") == (200, '{"alive": true}\n')

        code, text = get(port, "/metrics")
        assert code == 200
        assert metric(text, "emissions_run_info", run_id=run_id, status="running") == 1
        per_type = (
            "SELECT count(*) FROM emissions.emission_results WHERE run_id = %s "
            "AND activity_type = %s"
        )
        for t in ("electricity", "spend", "air_travel"):
            expected = scalar(database_url, per_type, (run_id, t))
            assert expected > 0
            assert metric(text, "emissions_run_rows_written", activity_type=t) == expected

        code, body = get(port, "/status")
        report: dict[str, Any] = json.loads(body)
        assert code == 200
        assert (report["pending_total"], report["runs"][0]["run_id"]) == (0, run_id)
        assert report["runs"][0]["status"] == "running"
        assert get(port, "/nowhere")[0] == 404

        # Readiness judges the polls' lag: none is 0 s old.
        problems = service.readiness(engine, "emissions", run_id, ["electricity"], 0.0)
        assert len(problems) == 1 and problems[0].startswith("electricity: last polled ")
    finally:
        proc.proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 143, proc.stderr
    # Ended: the port is closed, and the run is no longer ready.
    try:
        get(port, "/healthz")
        raise AssertionError("the service still answers after the run ended")
    except urllib.error.URLError:
        pass
    assert service.readiness(engine, "emissions", run_id, ["electricity"], 60.0) == [
        f"the run {run_id} is cancelled, not running"
    ]


def test_the_service_examples_command_lines_are_accepted() -> None:
    """The systemd unit's and the Kubernetes Deployment's command lines parse as follow's."""
    from pipeline.follow import add_follow_arguments
    from pipeline.options import parse_run_args
    from tests.support import ROOT

    unit = (ROOT / "examples" / "emissions-follow.service").read_text()
    (line,) = [s for s in unit.splitlines() if s.startswith("ExecStart=")]
    systemd = line.split(" follow ", 1)[1].split()
    k8s = (ROOT / "examples" / "emissions-follow.k8s.yaml").read_text()
    (args,) = [s for s in k8s.splitlines() if s.strip().startswith("args:")]
    kubernetes = json.loads(args.split(":", 1)[1])
    assert kubernetes[:2] == ["emissions", "follow"]
    for argv in (systemd, kubernetes[2:]):
        options, rest = parse_run_args(argv, add_follow_arguments, prog="pipeline.follow")
        assert (options.http_port, options.stop_after, rest) == (9464, 86400.0, [])
