"""The Scope 2 market-based stage of a run (docs/scope2.md): after the location-based results
are written, the sources' instruments are allocated to the electricity consumption and the
lines stored (``transforms.market.AllocateMarketBased``).

It runs (``--market-based auto``, the default) when the sources map instruments (without a
sources file: when the pipeline's own instrument tables hold a row), or when
market-based lines or refused instruments are stored (so that unmapping them empties what
they made); never with ``--market-based off``. A run with neither never imports Beam for it.
The stage runs in this process, on Beam's in-process runner, whatever the run's runner: it
handles one element per market boundary.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from psycopg2 import sql

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
    with connections.raw_connection(engine) as conn:
        stored = market_results.stored_boundaries(conn, config.schema)
    if not instruments and not stored:
        return None
    import apache_beam as beam
    from apache_beam.options.pipeline_options import PipelineOptions
    from apache_beam.runners.portability.fn_api_runner import FnApiRunner

    from transforms.market import AllocateMarketBased

    started = time.monotonic()
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
    found = written_by(engine, config.run_id, config.schema)
    found["seconds"] = round(time.monotonic() - started, 3)
    return found


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
