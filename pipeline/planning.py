"""Before the pipeline: the sources checked, deleted activities retired (unless too many for a
decision nobody took), key ranges planned."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import sqlalchemy as sa

from pipeline.model import ActivityType
from pipeline.options import OptionsError, RunConfig
from pipeline.ranges import KeyRange, plan_ranges
from pipeline.store import checks, connections, retirement, writes
from pipeline.store.sources import Source

if TYPE_CHECKING:
    pass

_LOG = logging.getLogger("pipeline.run")


def check_sources(engine: sa.Engine, config: RunConfig) -> dict[ActivityType, Source]:
    """The run's sources, checked against the catalogue (``SourcesError`` names every
    problem); their key and version types come from there."""
    wanted = {t: config.sources[t] for t in config.activity_types}
    with connections.raw_connection(engine) as conn:
        return checks.check_sources(conn, wanted)


def plan(engine: sa.Engine, config: RunConfig, counts: dict[str, dict[str, int]]) -> list[KeyRange]:
    """The key ranges (``pipeline.ranges.plan_ranges``) of the tables with pending activities
    (``--recheck``: with any activity in scope), on one connection. Without a date window, the
    counts already say how many rows each table has."""
    whole_tables = config.date_from is None and config.date_to is None
    types = [t for t in config.activity_types if to_read(config, counts[t])]
    with connections.raw_connection(engine) as conn:
        planned = [
            r
            for t in types
            for r in plan_ranges(
                conn,
                config.sources[t],
                config.partitions,
                config.rows_per_range,
                config.range_planner,
                rows=counts[t]["total"] if whole_tables else None,
            )
        ]
    _LOG.info("%d key ranges to read (%s)", len(planned), ", ".join(types))
    return planned


def to_read(config: RunConfig, counts: dict[str, int]) -> bool:
    """Whether a type's table is read at all: it has pending activities, or (``--recheck``)
    any activity in scope, whose fingerprint the read compares with its result's."""
    return bool(counts["pending"] or (config.recheck and counts["total"]))


class MassRetirement(OptionsError):
    """A run would retire more of a type's results than it may (``--max-retire-share``)."""


def check_retirement(
    engine: sa.Engine, config: RunConfig, counts: dict[str, dict[str, int]]
) -> None:
    """``MassRetirement`` when a type would lose more than ``config.max_retire_share`` of its
    results as deleted (``counts``: the run's counts, taken before anything is retired),
    saying how many and how to allow it."""
    retiring: dict[str, int] = {
        t: counts[t]["deleted"] for t in config.activity_types if counts[t]["deleted"]
    }
    if not retiring or config.max_retire_share >= 1:
        return
    with connections.raw_connection(engine) as conn:
        stored = retirement.stored_results(conn, sorted(retiring), config.schema)
    found = retirement.over_share(retiring, stored, config.max_retire_share)
    if found:
        raise MassRetirement(
            f"this run would retire {'; '.join(map(str, found))} as deleted, more than "
            f"--max-retire-share {config.max_retire_share:g}: check the sources mapping; if "
            "those activities really were deleted, run again with --allow-retire; nothing "
            "was retired"
        )


def retire(
    engine: sa.Engine, config: RunConfig, counts: dict[str, dict[str, int]]
) -> dict[str, tuple[int, int]]:
    """Retires the results and dead letters of deleted activities, range by range (the
    ranges of the activity table: the first and last are unbounded, so every key is in one).
    Per type: (results retired, dead letters retired)."""
    retired: dict[str, tuple[int, int]] = {}
    for t in config.activity_types:
        if not counts[t]["deleted"] and not counts[t].get("deleted_errors"):
            continue
        source = config.sources[t]
        with connections.raw_connection(engine) as conn:
            planned = plan_ranges(
                conn, source, config.partitions, config.rows_per_range, config.range_planner
            ) or [KeyRange(t, None, None)]
            done = [
                writes.retire_deleted(conn, source, r.start, r.end, config.run_id, config.schema)
                for r in planned
            ]
        retired[t] = (sum(d[0] for d in done), sum(d[1] for d in done))
        _LOG.info(
            "retired %d results and %d dead letters of deleted %s activities",
            *retired[t],
            t,
        )
    return retired
