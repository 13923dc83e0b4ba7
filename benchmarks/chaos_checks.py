"""The fault harness's invariant checkers (``benchmarks.chaos``), and the test-only log they
read.

``install_log`` puts, in the harness's own throwaway database only, a schema ``chaos`` with
two log tables and triggers on ``emission_results`` and ``emission_errors`` that record every
row stored there (by whom: the session's ``application_name`` names a run), in the same
transaction as the write: a row in the log is a row that was committed. The checkers then
compare what the pipeline says and keeps with that log and with the activities as they are.
Each returns a ``Verdict``: the invariant's name, whether it holds, and the exact rows that
break it.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import psycopg2.extensions
from psycopg2 import sql

from pipeline.model import ACTIVITY_TYPES, ActivityType
from pipeline.store.tables import (
    ACTIVITY_TABLES,
    ERRORS_TABLE,
    HISTORY_TABLE,
    RESULTS_TABLE,
    RUNS_TABLE,
    qualified,
)

LOG_SCHEMA = "chaos"
#: Rows shown per violated invariant (the count is always given whole).
SHOWN = 20

_RUN_IN_APP = re.compile(r"run ([0-9a-f-]{36})")

_LOG_DDL = """
CREATE SCHEMA {log};
CREATE TABLE {log}.stored_results (
    id bigserial PRIMARY KEY, op text NOT NULL, value_changed boolean NOT NULL,
    activity_type text NOT NULL, activity_id text NOT NULL, run_id uuid,
    kg_co2e float8, input_fingerprint bigint, factor_fingerprint bigint,
    activity_version bigint, app text, at timestamptz NOT NULL DEFAULT clock_timestamp());
CREATE TABLE {log}.stored_errors (
    id bigserial PRIMARY KEY, op text NOT NULL, version_changed boolean NOT NULL,
    activity_type text NOT NULL, activity_id text NOT NULL, input_hash text,
    activity_version bigint, run_id uuid, app text,
    at timestamptz NOT NULL DEFAULT clock_timestamp());
CREATE FUNCTION {log}.log_result() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO {log}.stored_results (op, value_changed, activity_type, activity_id, run_id,
        kg_co2e, input_fingerprint, factor_fingerprint, activity_version, app)
    VALUES (TG_OP, TG_OP = 'INSERT' OR (NEW.run_id, NEW.kg_co2e, NEW.input_fingerprint,
            NEW.factor_fingerprint) IS DISTINCT FROM (OLD.run_id, OLD.kg_co2e,
            OLD.input_fingerprint, OLD.factor_fingerprint),
        NEW.activity_type, NEW.activity_id::text, NEW.run_id, NEW.kg_co2e,
        NEW.input_fingerprint, NEW.factor_fingerprint, NEW.activity_version,
        current_setting('application_name'));
    RETURN NULL;
END $$;
CREATE FUNCTION {log}.log_error() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO {log}.stored_errors (op, version_changed, activity_type, activity_id,
        input_hash, activity_version, run_id, app)
    VALUES (TG_OP, TG_OP = 'UPDATE' AND NEW.activity_version IS DISTINCT FROM
            OLD.activity_version, NEW.activity_type, NEW.activity_id::text, NEW.input_hash,
        NEW.activity_version, NEW.run_id, current_setting('application_name'));
    RETURN NULL;
END $$;
CREATE TRIGGER chaos_log_result AFTER INSERT OR UPDATE ON {results}
    FOR EACH ROW EXECUTE FUNCTION {log}.log_result();
CREATE TRIGGER chaos_log_error AFTER INSERT OR UPDATE ON {errors}
    FOR EACH ROW EXECUTE FUNCTION {log}.log_error();
"""


@dataclass
class Verdict:
    """One invariant's verdict on one schedule."""

    name: str
    rows: list[dict[str, Any]] = field(default_factory=list)
    count: int = 0  # failing rows in all (``rows`` shows at most ``SHOWN``)
    note: str = ""

    @property
    def ok(self) -> bool:
        return self.count == 0

    def add(self, row: dict[str, Any]) -> None:
        self.count += 1
        if len(self.rows) < SHOWN:
            self.rows.append(row)

    def as_dict(self) -> dict[str, Any]:
        return {
            "invariant": self.name,
            "ok": self.ok,
            "violations": self.count,
            "rows": self.rows,
            "note": self.note,
        }


def install_log(conn: psycopg2.extensions.connection, schema: str) -> None:
    """The test-only log of every stored result and dead letter (see the module's doc)."""
    ddl = sql.SQL(_LOG_DDL).format(
        log=sql.Identifier(LOG_SCHEMA),
        results=qualified(RESULTS_TABLE, schema),
        errors=qualified(ERRORS_TABLE, schema),
    )
    with conn.cursor() as cur:
        cur.execute(ddl)
    conn.commit()


def run_of(app: str | None) -> str | None:
    """The run id a session's ``application_name`` names (``connections.for_run``)."""
    found = _RUN_IN_APP.search(app or "")
    return found.group(1) if found else None


def _rows(
    conn: psycopg2.extensions.connection, query: sql.Composable, params: Any = None
) -> list[dict[str, Any]]:
    with conn.cursor() as cur:
        cur.execute(query, params)
        names = [d[0] for d in cur.description or ()]
        found = [dict(zip(names, row, strict=True)) for row in cur.fetchall()]
    conn.commit()
    return found


def _current(activity_type: ActivityType, schema: str) -> sql.Composed:
    """Every activity of one type as it is now: its id as text and its version (``xmin``)."""
    return sql.SQL(
        "SELECT {t}::text AS activity_type, id::text AS activity_id, "
        "xmin::text::bigint AS version FROM {a}"
    ).format(t=sql.Literal(activity_type), a=qualified(ACTIVITY_TABLES[activity_type], schema))


def _all_current(schema: str) -> sql.Composed:
    return sql.SQL(" UNION ALL ").join(_current(t, schema) for t in ACTIVITY_TYPES)


def outcomes(conn: psycopg2.extensions.connection, schema: str) -> list[dict[str, Any]]:
    """Each activity that has not exactly one outcome for its current version: ``missing``
    (no result, no open dead letter of its version), ``stale`` (only a result of an older
    version: pending), ``stale_beside_dead_letter`` (a result of an older version, counted in
    the totals, beside the open dead letter of its current version), ``both`` (a result and an
    open dead letter of its current version)."""
    query = sql.SQL(
        "WITH a AS ({current}), o AS (SELECT a.activity_type, a.activity_id, a.version, "
        "r.activity_version AS result_version, r.run_id::text AS result_run, "
        "(SELECT count(*) FROM {e} e WHERE e.activity_type = a.activity_type "
        "AND e.activity_id::text = a.activity_id AND e.retired_at IS NULL "
        "AND e.activity_version = a.version) AS open_errors "
        "FROM a LEFT JOIN {r} r ON r.activity_type = a.activity_type "
        "AND r.activity_id::text = a.activity_id), "
        "p AS (SELECT CASE WHEN result_version IS NULL AND open_errors = 0 THEN 'missing' "
        "WHEN result_version = version AND open_errors > 0 THEN 'both' "
        "WHEN result_version IS DISTINCT FROM version AND result_version IS NOT NULL THEN "
        "CASE WHEN open_errors > 0 THEN 'stale_beside_dead_letter' ELSE 'stale' END "
        "END AS problem, * FROM o) "
        "SELECT * FROM p WHERE problem IS NOT NULL ORDER BY activity_type, activity_id"
    ).format(
        current=_all_current(schema),
        r=qualified(RESULTS_TABLE, schema),
        e=qualified(ERRORS_TABLE, schema),
    )
    return _rows(conn, query)


#: The problems of ``outcomes`` that leave an activity pending (no outcome for its version).
PENDING = ("missing", "stale")


def pending_truth(conn: psycopg2.extensions.connection, schema: str) -> list[dict[str, Any]]:
    """The activities with neither a result nor an open dead letter of their current version."""
    return [row for row in outcomes(conn, schema) if row["problem"] in PENDING]


def one_truth(
    conn: psycopg2.extensions.connection, schema: str, mismatches: Sequence[dict[str, Any]]
) -> Verdict:
    """Every existing activity has exactly one current result or one open dead letter, and
    every result reproduces from its current input (``mismatches``: ``audit.verify --all``)."""
    verdict = Verdict("one_truth")
    for row in outcomes(conn, schema):
        verdict.add(row)
    for m in mismatches:
        verdict.add({"problem": "not_reproduced", **m})
    return verdict


def deleted(conn: psycopg2.extensions.connection, schema: str) -> Verdict:
    """No result and no open dead letter of an activity that no longer exists."""
    query = sql.SQL(
        "WITH a AS ({current}) "
        "SELECT 'result' AS kind, r.activity_type, r.activity_id::text, r.run_id::text, "
        "r.kg_co2e FROM {r} r WHERE NOT EXISTS (SELECT 1 FROM a WHERE a.activity_type = "
        "r.activity_type AND a.activity_id = r.activity_id::text) "
        "UNION ALL SELECT 'open dead letter', e.activity_type, e.activity_id::text, "
        "e.run_id::text, NULL FROM {e} e WHERE e.retired_at IS NULL AND NOT EXISTS "
        "(SELECT 1 FROM a WHERE a.activity_type = e.activity_type "
        "AND a.activity_id = e.activity_id::text) ORDER BY 2, 3"
    ).format(
        current=_all_current(schema),
        r=qualified(RESULTS_TABLE, schema),
        e=qualified(ERRORS_TABLE, schema),
    )
    verdict = Verdict("deleted")
    for row in _rows(conn, query):
        verdict.add(row)
    return verdict


def history(conn: psycopg2.extensions.connection, schema: str) -> Verdict:
    """Every value ever stored (the log) is current or in history, exactly once: per value
    (activity, run, kg CO2e, fingerprints), times stored = times current + times in
    history."""
    value = sql.SQL(
        "activity_type, activity_id::text AS activity_id, run_id::text AS run_id, kg_co2e, "
        "input_fingerprint, factor_fingerprint"
    )
    keys = sql.SQL(
        "activity_type, activity_id, run_id, kg_co2e, input_fingerprint, factor_fingerprint"
    )
    query = sql.SQL(
        "WITH stored AS (SELECT {keys}, count(*) AS stored FROM (SELECT {value} FROM "
        "{log}.stored_results WHERE value_changed) s GROUP BY {keys}), "
        "kept AS (SELECT {keys}, count(*) AS kept FROM (SELECT {value} FROM {r} "
        "UNION ALL SELECT {value} FROM {h}) k GROUP BY {keys}) "
        "SELECT {keys}, coalesce(stored, 0) AS stored, coalesce(kept, 0) AS kept_or_current "
        "FROM stored FULL JOIN kept USING (activity_type, activity_id, run_id, kg_co2e, "
        "input_fingerprint, factor_fingerprint) "
        "WHERE coalesce(stored, 0) <> coalesce(kept, 0) ORDER BY activity_type, activity_id"
    ).format(
        keys=keys,
        value=value,
        log=sql.Identifier(LOG_SCHEMA),
        r=qualified(RESULTS_TABLE, schema),
        h=qualified(HISTORY_TABLE, schema),
    )
    verdict = Verdict("history")
    for row in _rows(conn, query):
        row["problem"] = "lost" if row["stored"] > row["kept_or_current"] else "extra"
        verdict.add(row)
    return verdict


def stored_by_run(conn: psycopg2.extensions.connection) -> dict[str, dict[str, int]]:
    """Per run id: results stored (per type and ``total``), from the log."""
    query = sql.SQL(
        "SELECT run_id::text, activity_type, count(*) FROM {log}.stored_results "
        "WHERE value_changed GROUP BY 1, 2"
    ).format(log=sql.Identifier(LOG_SCHEMA))
    found: dict[str, dict[str, int]] = {}
    with conn.cursor() as cur:
        cur.execute(query)
        for run_id, activity_type, n in cur.fetchall():
            per = found.setdefault(run_id, {"total": 0})
            per[activity_type] = int(n)
            per["total"] += int(n)
    conn.commit()
    return found


def dead_letters_by_run(conn: psycopg2.extensions.connection) -> dict[str, tuple[int, int]]:
    """Per run id, from the log: (dead letters it inserted, dead letters whose version it
    brought up to date: the same refused input seen again at a new row version)."""
    query = sql.SQL(
        "SELECT run_id::text, count(*), 0 FROM {log}.stored_errors WHERE op = 'INSERT' "
        "GROUP BY 1 UNION ALL SELECT app, 0, count(*) FROM {log}.stored_errors "
        "WHERE version_changed GROUP BY 1"
    ).format(log=sql.Identifier(LOG_SCHEMA))
    found: dict[str, tuple[int, int]] = {}
    with conn.cursor() as cur:
        cur.execute(query)
        for who, inserted, refreshed in cur.fetchall():
            run_id = who if inserted else run_of(who)
            if run_id is not None:
                a, b = found.get(run_id, (0, 0))
                found[run_id] = (a + int(inserted), b + int(refreshed))
    conn.commit()
    return found


def run_records(conn: psycopg2.extensions.connection, schema: str) -> dict[str, dict[str, Any]]:
    """Every row of ``calculation_runs``, by run id."""
    query = sql.SQL(
        "SELECT run_id::text, status, runner, total_processed, errors, by_activity_type, "
        "message FROM {} ORDER BY started_at"
    ).format(qualified(RUNS_TABLE, schema))
    return {row["run_id"]: row for row in _rows(conn, query)}


def counts(conn: psycopg2.extensions.connection, schema: str) -> Verdict:
    """Each finished run's summary counts equal the rows it stored (the log): results in all
    and per activity type, and dead letters."""
    verdict = Verdict("counts")
    stored = stored_by_run(conn)
    refused = dead_letters_by_run(conn)
    for run_id, rec in run_records(conn, schema).items():
        if rec["total_processed"] is None:
            continue  # killed, abandoned: no summary
        inserted, refreshed = refused.get(run_id, (0, 0))
        # Whether a dead letter seen again (its version brought up to date) counts is the
        # run's to say; one stored by another run never does.
        if rec["errors"] is not None and rec["errors"] not in (inserted, inserted + refreshed):
            verdict.add(
                {
                    "run_id": run_id,
                    "status": rec["status"],
                    "runner": rec["runner"],
                    "summary_errors": rec["errors"],
                    "dead_letters_inserted": inserted,
                    "dead_letters_seen_again": refreshed,
                }
            )
        mine = stored.get(run_id, {"total": 0})
        if rec["total_processed"] != mine["total"]:
            verdict.add(
                {
                    "run_id": run_id,
                    "status": rec["status"],
                    "runner": rec["runner"],
                    "summary_processed": rec["total_processed"],
                    "stored": mine["total"],
                    "message": rec["message"],
                }
            )
            continue
        for activity_type, part in (rec["by_activity_type"] or {}).items():
            said = part.get("processed")
            if said is not None and said != mine.get(activity_type, 0):
                verdict.add(
                    {
                        "run_id": run_id,
                        "status": rec["status"],
                        "activity_type": activity_type,
                        "summary_processed": said,
                        "stored": mine.get(activity_type, 0),
                    }
                )
    return verdict
