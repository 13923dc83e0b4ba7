"""The follow service's HTTP face, for a service manager's probes and for Prometheus: off
unless ``pipeline.follow --http-port PORT`` asks for it (docs/follow.md).

    GET /healthz   liveness: 200 while the follow loop runs in this process and its run is
                   'running' (503 once it is not: the process is ending)
    GET /readyz    readiness: 200 when the database answers, the run is 'running' and every
                   followed type was polled within --ready-max-lag seconds (its marks stored);
                   else 503, with the reasons
    GET /metrics   the run's figures so far in Prometheus' text format: the names the
                   textfile and Pushgateway exports use (``pipeline.metrics``)
    GET /status    the JSON of ``emissions status --json`` (``pipeline.health``)

The standard library's ``ThreadingHTTPServer``, in a daemon thread: each request is answered
on a thread of its own, with a database connection of its own (opened and closed per request),
so a probe never waits for the pipeline's connections, nor the pipeline for a probe. A probe
that fails answers 503 with one line (the password scrubbed), never a traceback.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import sqlalchemy as sa

from pipeline import cli
from pipeline.options import RunConfig
from pipeline.store import connections, runs, tables

_LOG = logging.getLogger("pipeline.service")

#: Where the service listens unless ``--http-host`` says otherwise: every interface, as a
#: container's probes and a Prometheus server elsewhere need.
DEFAULT_HOST = "0.0.0.0"
#: The content type of Prometheus' text exposition format.
PROMETHEUS_TEXT = "text/plain; version=0.0.4; charset=utf-8"


@dataclass(frozen=True)
class Probes:
    """What the endpoints answer, each read when asked: ``alive`` (liveness), ``not_ready``
    (the reasons the service is not ready; none: ready), ``metrics`` (Prometheus text) and
    ``status`` (the status report)."""

    alive: Callable[[], bool]
    not_ready: Callable[[], list[str]]
    metrics: Callable[[], bytes]
    status: Callable[[], dict[str, Any]]


def poll_lags(engine: sa.Engine, schema: str, activity_types: list[str]) -> dict[str, float]:
    """Seconds since each followed type's last poll stored its marks (``follow_marks``: every
    poll stores them, whether they moved or not); a type never polled is absent."""
    with engine.connect() as conn:
        rows = conn.execute(
            sa.text(
                "SELECT activity_type, extract(epoch FROM clock_timestamp() - updated_at) "
                f"FROM {tables.qualified_text(tables.MARKS_TABLE, schema)} "
                "WHERE activity_type = ANY(:types)"
            ),
            {"types": activity_types},
        ).all()
    return {str(t): float(age) for t, age in rows}


def run_status(engine: sa.Engine, schema: str, run_id: str) -> str | None:
    """The run's recorded status (None: no such run)."""
    with engine.connect() as conn:
        found = conn.execute(
            sa.text(
                f"SELECT status FROM {tables.qualified_text(tables.RUNS_TABLE, schema)} "
                "WHERE run_id = CAST(:run_id AS uuid)"
            ),
            {"run_id": run_id},
        ).scalar()
    return None if found is None else str(found)


def readiness(
    engine: sa.Engine, schema: str, run_id: str, activity_types: list[str], max_lag: float
) -> list[str]:
    """Why the follow run is not ready (empty: it is): the database does not answer, the run
    is not 'running', or a followed type was not polled within ``max_lag`` seconds."""
    status = run_status(engine, schema, run_id)
    if status != "running":
        return [f"the run {run_id} is {status or 'not recorded'}, not running"]
    lags = poll_lags(engine, schema, activity_types)
    problems = []
    for t in activity_types:
        if t not in lags:
            problems.append(f"{t}: not polled yet")
        elif lags[t] > max_lag:
            problems.append(f"{t}: last polled {lags[t]:.1f} s ago, more than {max_lag:g} s")
    return problems


class Service:
    """The HTTP server, listening from ``__enter__`` to ``__exit__`` (``port`` 0: a free one,
    then ``port`` says which)."""

    def __init__(self, host: str, port: int, probes: Probes, database_url: str) -> None:
        self._probes, self._url = probes, database_url
        self._server = ThreadingHTTPServer((host, port), self._handler())
        self._server.daemon_threads = True
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="follow-http", daemon=True
        )

    def __enter__(self) -> Service:
        self._thread.start()
        _LOG.info("serving /healthz, /readyz, /metrics and /status on port %d", self.port)
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def answer(self, path: str) -> tuple[int, str, bytes]:
        """The status code, content type and body for a GET of ``path``."""
        probes = self._probes
        try:
            if path == "/healthz":
                alive = probes.alive()
                return _json(200 if alive else 503, {"alive": alive})
            if path == "/readyz":
                problems = probes.not_ready()
                return _json(503 if problems else 200, {"ready": not problems, "why": problems})
            if path == "/metrics":
                return 200, PROMETHEUS_TEXT, probes.metrics()
            if path == "/status":
                return _json(200, probes.status())
        except Exception as e:  # noqa: BLE001 - a probe that fails is a 503, in one line
            said = connections.scrub(f"{type(e).__name__}: {e}", self._url)
            return _json(503, {"error": " ".join(said.split())})
        known = "/healthz, /readyz, /metrics, /status"
        return _json(404, {"error": f"no such endpoint {path}: {known}"})

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        service = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                code, content_type, body = service.answer(self.path.split("?", 1)[0])
                self.send_response(code)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                _LOG.debug("http: " + format, *args)

        return Handler


def _json(code: int, body: dict[str, Any]) -> tuple[int, str, bytes]:
    return code, "application/json", (json.dumps(body, default=str) + "\n").encode()


def follow_service(
    port: int | None,
    host: str,
    config: RunConfig,
    max_lag: float,
    alive: Callable[[], bool],
    summary: Callable[[sa.Engine], dict[str, Any]],
    started_at: float,
) -> contextlib.AbstractContextManager[Any]:
    """The service of a follow run (nothing when ``port`` is None): its probes read the run's
    record, its marks and its write log; ``summary(engine)`` is what it has stored so far."""
    if port is None:
        return contextlib.nullcontext()
    from pipeline import health, metrics

    engine = connections.make_engine(config.database_url, poolclass=sa.pool.NullPool)
    types = [str(t) for t in config.activity_types]

    def figures() -> bytes:
        from prometheus_client import generate_latest

        last_success = runs.last_success_time(engine, config.schema)
        found = metrics.registry(
            summary(engine), config.schema, started_at, time.time(), last_success
        )
        return bytes(generate_latest(found))

    def status() -> dict[str, Any]:
        target = cli.Target(config.database_url, engine, config.schema, dict(config.sources))
        return health.check(target, by="pipeline.follow").report

    probes = Probes(
        alive=alive,
        not_ready=lambda: readiness(engine, config.schema, config.run_id, types, max_lag),
        metrics=figures,
        status=status,
    )
    stack = contextlib.ExitStack()
    stack.callback(engine.dispose)
    stack.enter_context(Service(host, port, probes, config.database_url))
    return stack
