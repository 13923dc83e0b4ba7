"""The run's figures for Prometheus: a textfile for node-exporter's collector, and a push to a
Pushgateway, each parsed back with ``prometheus_client``'s own parser and checked against the
run's summary. The Pushgateway is a small HTTP server in the test: a real HTTP exchange.
"""

from __future__ import annotations

import http.server
import json
import os
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from prometheus_client.parser import text_string_to_metric_families

from ops.seed import seed
from pipeline import metrics, run

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def samples(text: str) -> Samples:
    """Every sample of a Prometheus text exposition: (name, sorted labels) → value."""
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def expected(summary: dict[str, Any], schema: str = "emissions") -> Samples:
    """What a succeeded run's figures must be, from its summary (times left out)."""
    found: Samples = {
        (
            "emissions_run_info",
            (
                ("run_id", summary["run_id"]),
                ("runner", "DirectRunner"),
                ("schema", schema),
                ("status", "succeeded"),
            ),
        ): 1.0,
        ("emissions_run_success", ()): 1.0,
    }
    for phase in ("setup", "pipeline", "total"):
        found[("emissions_run_duration_seconds", (("phase", phase),))] = summary["timings"][
            f"{phase}_s"
        ]
    names = {
        "activities": "total_activities",
        "rows_read": "pending",
        "rows_skipped": "skipped",
        "rows_written": "processed",
        "rows_changed": "changed",
        "dead_letters": "errors",
        "co2e_tonnes": "co2e_tonnes",
    }
    for t, figures in summary["by_activity_type"].items():
        for name, key in names.items():
            found[(f"emissions_run_{name}", (("activity_type", t),))] = float(figures[key])
    seconds = summary["timings"]["pipeline_s"]
    read = sum(float(f["pending"]) for f in summary["by_activity_type"].values())
    written = sum(float(f["processed"]) for f in summary["by_activity_type"].values())
    found[("emissions_run_rows_read_per_second", ())] = read / seconds
    found[("emissions_run_rows_written_per_second", ())] = written / seconds
    return found


TIMES = ("emissions_run_start_time_seconds", "emissions_run_end_time_seconds")


def without_times(found: Samples) -> Samples:
    return {k: v for k, v in found.items() if not k[0].endswith("_time_seconds")}


class Gateway(http.server.BaseHTTPRequestHandler):
    """A Pushgateway's push API, as far as a push needs it: records what it was sent."""

    received: list[tuple[str, str, str, bytes]] = []

    def do_PUT(self) -> None:  # noqa: N802 - http.server's name
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.received.append((self.command, self.path, self.headers["Content-Type"], body))
        self.send_response(200)
        self.end_headers()

    do_POST = do_PUT  # noqa: N815

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def gateway() -> Iterator[tuple[str, list[tuple[str, str, str, bytes]]]]:
    received: list[tuple[str, str, str, bytes]] = []
    handler = type("Recording", (Gateway,), {"received": received})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", received
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def run_json(url: str, capsys: pytest.CaptureFixture[str], *extra: str) -> dict[str, Any]:
    assert run.main(["--database-url", url, "--progress-interval", "0", *extra]) == 0
    summary: dict[str, Any] = json.loads(capsys.readouterr().out)
    return summary


def test_the_textfile_and_the_push_carry_the_runs_figures(
    database_url: str,
    engine: sa.Engine,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    gateway: tuple[str, list[tuple[str, str, str, bytes]]],
) -> None:
    seed(engine, 900, seed_value=5)
    url, received = gateway
    path = tmp_path / "emissions.prom"
    summary = run_json(database_url, capsys, "--metrics-file", str(path), "--pushgateway", url)
    written = samples(path.read_text())
    assert without_times(written) == expected(summary)
    start, end = (written[(name, ())] for name in TIMES)
    assert 0 < end - start < 600
    # The last success, as recorded: this run's end in its row (just before the export).
    with engine.connect() as conn:
        finished = conn.execute(
            sa.text("SELECT finished_at FROM emissions.calculation_runs WHERE run_id = :r"),
            {"r": summary["run_id"]},
        ).scalar_one()
    last_success = written[("emissions_run_last_success_time_seconds", ())]
    assert start < last_success == finished.timestamp() <= end
    assert os.listdir(tmp_path) == ["emissions.prom"]  # written atomically: no temporary left
    # The push: one PUT of the same figures, to the job's group for the schema.
    assert len(received) == 1
    method, where, content_type, body = received[0]
    assert (method, where) == ("PUT", "/metrics/job/emissions_pipeline/schema/emissions")
    assert content_type.startswith("text/plain; version=0.0.4")
    assert samples(body.decode()) == written
    # The run's record keeps the options as given.
    assert summary["total_processed"] + summary["errors"] == 900


def test_a_failed_run_exports_what_it_knew_and_a_failed_export_is_one_warning(
    database_url: str,
    engine: sa.Engine,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    seed(engine, 600, seed_value=5)
    with engine.begin() as conn:  # the database refuses every result (not transient)
        conn.execute(
            sa.text(
                "ALTER TABLE emissions.emission_results "
                "ADD CONSTRAINT refuse_all CHECK (kg_co2e < 0) NOT VALID"
            )
        )
    path = tmp_path / "emissions.prom"
    args = ["--database-url", database_url, "--progress-interval", "0", "--partitions", "2"]
    assert run.main([*args, "--metrics-file", str(path)]) == 1
    capsys.readouterr()
    found = samples(path.read_text())
    assert found[("emissions_run_success", ())] == 0.0
    [info] = [labels for name, labels in found if name == "emissions_run_info"]
    assert dict(info)["status"] == "failed"
    read = {dict(k[1])["activity_type"]: v for k, v in found.items() if k[0].endswith("rows_read")}
    assert read == {"electricity": 240.0, "spend": 210.0, "air_travel": 150.0}
    # What it did not count is left out, not given as 0; no run has ever succeeded.
    assert not any(
        name.endswith(("rows_written", "last_success_time_seconds")) for name, _ in found
    )

    # A Pushgateway that does not answer: the run's outcome stands, one warning says so.
    with engine.begin() as conn:
        conn.execute(sa.text("ALTER TABLE emissions.emission_results DROP CONSTRAINT refuse_all"))
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    assert run.main([*args, "--pushgateway", f"127.0.0.1:{port}"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["status"] == "succeeded"
    warned = [line for line in captured.err.splitlines() if " WARNING " in line]
    assert len(warned) == 1, captured.err
    assert (
        warned[0]
        .split(" WARNING pipeline.run ")[1]
        .startswith(f"could not push the metrics to http://127.0.0.1:{port}: URLError: ")
    )


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        (
            "--metrics-file",
            "metrics.txt",
            "--metrics-file must end in .prom (node-exporter's textfile collector reads only "
            "those), not 'metrics.txt'",
        ),
        (
            "--metrics-file",
            "/no/such/dir/run.prom",
            "--metrics-file: the directory '/no/such/dir' does not exist",
        ),
        (
            "--pushgateway",
            "ftp://gateway:9091",
            "--pushgateway must be an http(s) URL like http://host:9091, not 'ftp://gateway:9091'",
        ),
    ],
)
def test_metrics_options_are_checked_before_anything_runs(
    option: str, value: str, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    url = "postgresql://nobody@127.0.0.1:1/none"  # never reached: the options are refused first
    assert run.main(["--database-url", url, option, value]) == 2
    assert capsys.readouterr().err.splitlines() == [f"error: {message}"]


def test_a_pushgateway_password_is_never_shown() -> None:
    assert metrics.redact("https://ops:s3cret@push.example:9091/x") == (
        "https://ops:***@push.example:9091/x"
    )
    assert metrics.redact("http://push.example:9091") == "http://push.example:9091"


def test_a_runs_timings_break_its_wall_time_down_by_step_and_stage(
    database_url: str, engine: sa.Engine, capsys: pytest.CaptureFixture[str]
) -> None:
    """What the benchmark's breakdown reads: the steps before the pipeline (counts, planning)
    inside the set-up, and each stage's working seconds (summed over its workers) from the
    run's own counters; stored with the run as printed."""
    seed(engine, 900, seed_value=5)
    summary = run_json(database_url, capsys)
    timings = summary["timings"]
    assert 0 < timings["counts_s"] <= timings["setup_s"]
    assert 0 < timings["plan_s"] <= timings["pipeline_s"]
    assert timings["setup_s"] + timings["pipeline_s"] <= timings["total_s"]
    # The stages worked, and no longer than the pipeline's wall time on each of 2 workers.
    for stage in ("read", "calculate", "write"):
        assert 0 < timings[f"{stage}_busy_s"] <= 2 * timings["pipeline_s"], stage
    with engine.connect() as conn:
        stored = conn.execute(
            sa.text("SELECT timings FROM emissions.calculation_runs WHERE run_id = :r"),
            {"r": summary["run_id"]},
        ).scalar_one()
    assert timings["settle_s"] >= 0  # after the run's row is stored: printed only
    assert stored == {k: v for k, v in timings.items() if k != "settle_s"}

    # Nothing pending: no pipeline, no stage at work, nothing planned.
    again = run_json(database_url, capsys)["timings"]
    assert again["plan_s"] == 0
    assert not {"read_busy_s", "calculate_busy_s", "write_busy_s"} & set(again)
