"""Bundle retry: a write that fails after (or before) its transaction committed, and a runner
that retries the bundle: no duplicate, no gap.

The whole pipeline runs in-process on Beam's ``BundleBasedDirectRunner``, which retries a
failed bundle (up to 4 attempts), as Flink or Dataflow would. Faults are injected below the
pipeline, in the database driver: every connection the run opens is a ``FlakyConnection`` whose
``commit`` of a results write can, on a schedule, commit and then raise (the acknowledgement
was lost) or raise without committing. A non-transient fault fails the bundle, and the runner
retries it; a transient one (lost connection) is retried inside the writer on a new connection.
"""

from __future__ import annotations

import itertools
import json
import threading
from typing import Any

import psycopg2
import psycopg2.extensions
import pytest
import sqlalchemy as sa
from psycopg2 import sql

from ops.seed import seed
from pipeline import run
from pipeline.store import connections, tables
from tests.support import assert_write_log_matches_results, duplicate_counts
from tests.test_end_to_end import check_every_activity_once

# Which results-write commits fail, and how (numbered across the run from 1).
SCHEDULE = {
    2: "after",  # committed, then the bundle fails: the retried bundle rewrites nothing
    4: "before",  # the bundle fails before committing: the retried bundle writes it
    6: "transient-after",  # committed, then the connection is lost: retried in the writer
    9: "transient-before",  # lost before committing: retried in the writer
}
_commits = itertools.count(1)
_lock = threading.Lock()
injected: list[str] = []


class InjectedFault(RuntimeError):
    """Not transient: the runner has to retry the bundle."""


class MarkingCursor(psycopg2.extensions.cursor):
    def execute(self, query: Any, vars: Any = None) -> None:
        text = query.as_string(self) if isinstance(query, sql.Composable) else str(query)
        if text.startswith("INSERT INTO") and tables.RESULTS_TABLE in text:
            self.connection.writes_results = True
        super().execute(query, vars)

    def copy_expert(self, query: Any, file: Any, size: int = 8192) -> None:
        text = query.as_string(self) if isinstance(query, sql.Composable) else str(query)
        if text.startswith("COPY") and tables.RESULTS_TABLE in text and "FROM STDIN" in text:
            self.connection.writes_results = True
        super().copy_expert(query, file, size)


class FlakyConnection(psycopg2.extensions.connection):
    writes_results = False

    def cursor(self, *args: Any, **kwargs: Any) -> Any:
        kwargs.setdefault("cursor_factory", MarkingCursor)
        return super().cursor(*args, **kwargs)

    def commit(self) -> None:
        if not self.writes_results:
            return super().commit()
        self.writes_results = False
        with _lock:
            fault = SCHEDULE.get(next(_commits))
        if fault is None:
            return super().commit()
        injected.append(fault)
        if fault.endswith("after"):
            super().commit()
        if fault.startswith("transient"):
            self.close()
            raise psycopg2.OperationalError("injected: server closed the connection unexpectedly")
        raise InjectedFault(f"injected fault {fault} commit")


def test_retried_bundles_write_each_result_once(
    database_url: str,
    engine: sa.Engine,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    seed(engine, 1_500, seed_value=17)
    real_connect = connections.connect
    monkeypatch.setattr(
        connections,
        "connect",
        lambda url, **kw: real_connect(url, connection_factory=FlakyConnection),
    )
    code = run.main(
        [
            *("--database-url", database_url, "--runner", "BundleBasedDirectRunner"),
            *("--write-batch-size", "40", "--partitions", "3", "--progress-interval", "0"),
            *("--retry-base-delay", "0.05"),
        ]
    )
    out = capsys.readouterr()
    assert code == 0, out.err[-3000:]
    assert sorted(injected) == sorted(SCHEDULE.values())  # every fault happened
    summary = json.loads(out.out[out.out.index("{") :])

    results = check_every_activity_once(database_url, engine)  # no gap; values match SQL
    assert duplicate_counts(database_url) == (0, 0)  # no duplicate
    assert summary["total_processed"] == len(results)
    # The write log counts what was stored, once, however often a flush was retried.
    assert_write_log_matches_results(engine, summary["run_id"])
