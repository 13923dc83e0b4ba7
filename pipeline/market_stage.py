"""The Scope 2 market-based stage of a run (docs/scope2.md): after the location-based results
are written, the sources' instruments are allocated to the electricity consumption and the
lines stored (``transforms.market.AllocateMarketBased``).

It runs (``--market-based auto``, the default) when the sources map instruments (without a
sources file: when the pipeline's own instrument tables hold a row), or when
market-based lines or refused instruments are stored (so that unmapping them empties what
they made); never with ``--market-based off``. A run with neither never imports Beam for it.
The stage runs in this process, on Beam's in-process runner, whatever the run's runner: it
handles one element per market boundary. It is skipped when the digest of everything it reads
equals that of the last complete allocation (``inputs_digest``, ``market_based_inputs``).
Two runs' stages take turns whole (``taking_turns``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from psycopg2 import sql

from pipeline import editions
from pipeline.methodology.market import RESIDUAL_MIX_SET
from pipeline.model import InstrumentKind
from pipeline.options import RunConfig
from pipeline.stopping import Leftovers, Stop, run_until_done
from pipeline.store import (
    checks,
    connections,
    market,
    market_results,
    sources,
    stored_sources,
    tables,
)

_LOG = logging.getLogger("pipeline.market_stage")
#: How often a stage waiting for another's says so.
WAIT_SAID_EVERY_S = 60.0


def instrument_sources(
    engine: sa.Engine, config: RunConfig, chosen: stored_sources.Chosen
) -> dict[InstrumentKind, sources.Source]:
    """The instruments the run's sources map (the file given, else those stored), checked
    read-only against the database (``SourcesError`` naming every problem)."""
    if chosen.path is not None:
        found = sources.load_instruments(Path(chosen.path))
    elif chosen.sha256 is None:  # the pipeline's own tables: its own instrument tables
        with connections.raw_connection(engine) as conn:
            found = market.own_instruments(conn, config.schema)
    else:
        with engine.connect() as conn:
            stored = stored_sources.current(conn, config.schema)
        if stored is None:
            return {}
        where = f"the sources stored in {config.schema}.{tables.SOURCES_TABLE}"
        found = stored_sources.parse_instruments_text(stored.text, where)
    if not found:
        return {}
    with connections.raw_connection(engine) as conn:
        return checks.check_instruments(conn, found)


def run_stage(
    engine: sa.Engine, config: RunConfig, chosen: stored_sources.Chosen, stop: Stop
) -> dict[str, Any] | None:
    """Allocates and stores the market-based lines when it should (module docstring);
    returns what it did for the run's summary, None when it did not run."""
    if config.market.mode == "off" or "electricity" not in config.sources:
        return None
    instruments = instrument_sources(engine, config, chosen)
    with taking_turns(config, stop):
        with connections.raw_connection(engine) as conn:
            stored = market_results.stored_boundaries(conn, config.schema)
        if not instruments and not stored:
            return None
        return allocate_unless_unchanged(engine, config, instruments, stored, stop)


@contextlib.contextmanager
def taking_turns(config: RunConfig, stop: Stop) -> Iterator[None]:
    """Holds the schema's stage lock (``market_results.STAGE_LOCK``) on a connection of its
    own while the stage reads and writes: two runs' stages take turns whole. Without it, a
    run that read the instruments before another run's correction could write a boundary
    after that run, and leave lines of the old inputs behind the newer digest, which every
    later run would skip by. Waits, saying so every minute (``WAIT_SAID_EVERY_S``); a stop
    signal ends the wait."""
    conn = connections.connect(config.database_url)
    try:
        conn.autocommit = True
        started = time.monotonic()
        said = started - WAIT_SAID_EVERY_S
        while not market_results.try_stage_lock(conn, config.schema):
            if time.monotonic() - said >= WAIT_SAID_EVERY_S:
                _LOG.info(
                    "waiting for another run's Scope 2 market-based allocation to end "
                    "(%.0f s so far)",
                    time.monotonic() - started,
                )
                said = time.monotonic()
            stop.check()
            time.sleep(0.2)
        yield
    finally:
        conn.close()  # and the lock with it


def allocate_unless_unchanged(
    engine: sa.Engine,
    config: RunConfig,
    instruments: dict[InstrumentKind, sources.Source],
    stored: list[str],
    stop: Stop,
) -> dict[str, Any]:
    """Allocates every boundary, unless nothing the stage reads changed since the last
    complete allocation (and ``--recheck`` was not given)."""
    started = time.monotonic()
    inputs = inputs_digest(engine, config, instruments)
    last = last_allocation(engine, config.schema)
    if last is not None and last[0] == inputs and not config.recheck:
        # Nothing it reads changed since that run allocated every boundary: the lines stored
        # are what allocating again would store (``audit.verify`` replays them).
        found = written_by(engine, config.run_id, config.schema)
        found["inputs_unchanged_since_run"] = last[1]
        found["seconds"] = round(time.monotonic() - started, 3)
        return found
    record_allocation(engine, config, None)  # a stage cut short leaves no digest behind
    allocate(config, instruments, stored, stop)
    record_allocation(engine, config, inputs)
    found = written_by(engine, config.run_id, config.schema)
    found["seconds"] = round(time.monotonic() - started, 3)
    return found


def allocate(
    config: RunConfig,
    instruments: dict[InstrumentKind, sources.Source],
    stored: list[str],
    stop: Stop,
) -> None:
    """Allocates every boundary (``transforms.market.AllocateMarketBased``), in this process."""
    import apache_beam as beam
    from apache_beam.options.pipeline_options import PipelineOptions
    from apache_beam.runners.portability.fn_api_runner import FnApiRunner

    from transforms.market import AllocateMarketBased

    choices = market_results.Choices(
        config.market.year_start, config.market.vintage_window_years, config.market.sharing
    )
    with Leftovers() as leftovers:
        p = beam.Pipeline(runner=FnApiRunner(), options=PipelineOptions([]))
        leftovers.watch(p.runner)
        _ = p | "MarketBased" >> AllocateMarketBased(
            config.database_url,
            config.schema,
            config.run_id,
            config.sources["electricity"],
            instruments,
            choices,
            stored,
            config.retry_policy,
        )
        run_until_done(p, stop, in_process=True)


def inputs_digest(
    engine: sa.Engine, config: RunConfig, instruments: dict[InstrumentKind, sources.Source]
) -> str:
    """What an allocation depends on, as one digest: the database's inputs
    (``market.inputs_digest``), the reporter's choices, where the instruments are read and
    the code that allocates. Taken before the stage reads anything, so that a change made
    while it runs makes the next run's digest differ."""
    with connections.raw_connection(engine) as conn:
        stored = market.inputs_digest(
            conn, config.sources["electricity"], instruments, config.schema, RESIDUAL_MIX_SET
        )
    given = [
        stored,
        repr(dataclasses.astuple(config.market)),
        repr(sorted((k, repr(v)) for k, v in instruments.items())),
        editions.code_version(),
    ]
    return hashlib.sha256("\n".join(given).encode()).hexdigest()


def last_allocation(engine: sa.Engine, schema: str) -> tuple[str, str] | None:
    """The digest of the last complete allocation's inputs, and its run; None if none."""
    with connections.raw_connection(engine) as conn:
        with conn.cursor() as cur:
            cur.execute(
                sql.SQL("SELECT inputs_digest, run_id FROM {} WHERE id = 1").format(
                    tables.qualified(tables.MARKET_INPUTS_TABLE, schema)
                )
            )
            row = cur.fetchone()
        conn.rollback()
    return (row[0], str(row[1])) if row else None


def record_allocation(engine: sa.Engine, config: RunConfig, inputs: str | None) -> None:
    """Every boundary allocated from ``inputs``: the next run with the same skips the stage.
    None: an allocation is starting, and until it ends no digest stands (one cut short wrote
    some boundaries only, whatever the inputs are by the next run)."""
    table = tables.qualified(tables.MARKET_INPUTS_TABLE, config.schema)
    with connections.raw_connection(engine) as conn:
        with conn.cursor() as cur:
            if inputs is None:
                cur.execute(sql.SQL("DELETE FROM {}").format(table))
                conn.commit()
                return
            cur.execute(
                sql.SQL(
                    "INSERT INTO {} (id, inputs_digest, run_id) VALUES (1, %s, %s) "
                    "ON CONFLICT (id) DO UPDATE SET inputs_digest = EXCLUDED.inputs_digest, "
                    "run_id = EXCLUDED.run_id, allocated_at = now()"
                ).format(table),
                (inputs, config.run_id),
            )
        conn.commit()


def written_by(engine: sa.Engine, run_id: str, schema: str) -> dict[str, Any]:
    """What a run's market-based stage wrote: lines, lines moved to history (by reason), and
    instruments refused; with the stored lines' total kg CO2e and the open refusals."""
    q = {
        "lines": "SELECT count(*) FROM {m} WHERE run_id = %(r)s",
        "moved": "SELECT coalesce(jsonb_object_agg(reason, n), '{{}}') FROM (SELECT reason, "
        "count(*) n FROM {h} WHERE superseded_by = %(r)s GROUP BY reason) x",
        "refused": "SELECT count(*) FROM {f} WHERE run_id = %(r)s",
        "refused_open": "SELECT count(*) FROM {f} WHERE retired_at IS NULL",
        "kg_co2e": "SELECT coalesce(sum(kg_co2e), 0) FROM {m}",
        "grid_fallback_kwh": "SELECT coalesce(sum(kwh), 0) FROM {m} WHERE grid_fallback",
    }
    names = {
        "m": tables.qualified(tables.MARKET_TABLE, schema),
        "h": tables.qualified(tables.MARKET_HISTORY_TABLE, schema),
        "f": tables.qualified(tables.MARKET_REFUSED_TABLE, schema),
    }
    found: dict[str, Any] = {}
    with connections.raw_connection(engine) as conn:
        with conn.cursor() as cur:
            for name, text in q.items():
                cur.execute(sql.SQL(text).format(**names), {"r": run_id})
                row = cur.fetchone()
                found[name] = row[0] if row else None
        conn.rollback()
    found["kg_co2e"] = float(found["kg_co2e"])
    found["grid_fallback_kwh"] = float(found["grid_fallback_kwh"])
    return found
