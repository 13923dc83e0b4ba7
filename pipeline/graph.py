"""Wires the composites into a pipeline. Reads no argv and no environment."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import apache_beam as beam
from apache_beam.options.pipeline_options import PortableOptions
from apache_beam.runners.portability.portable_runner import PortableRunner

from pipeline.options import RunConfig
from pipeline.ranges import KeyRange
from pipeline.store.connections import without_password
from transforms.calculate import ERRORS, CalculateEmissions, ReadFactorsFn
from transforms.follow import ReadChanges
from transforms.read import ReadPendingActivities
from transforms.write import WriteErrors, WriteResults


def build(p: beam.Pipeline, config: RunConfig, ranges: Sequence[KeyRange]) -> Any:
    """Adds the calculation to ``p``: read the pending activities of ``ranges`` (of any
    activity type) → calculate → write. Returns the calculation's outputs (``results`` tables
    and ``errors``), for tests.

    One branch for every activity type: after the ranges' ``Reshuffle`` it fuses into one
    stage, tables stream from the read to the writes, and the workers share the ranges of all
    types (one stage per type would leave a worker idle at the end of each).
    """
    config = for_workers(p, config)
    # The read takes the factor book and hands it on with each table: read → calculate →
    # write stay one operator chain on Flink too (``ReadPendingActivities._side``).
    activities = p | "ReadPending" >> ReadPendingActivities(
        config.database_url,
        ranges,
        date_from=config.date_from,
        date_to=config.date_to,
        retry_policy=config.retry_policy,
        sources=config.sources,
        schema=config.schema,
        run_id=config.run_id,
        recheck=config.recheck,
        factors=_factors(p, config),
    )
    return _calculate_and_write(activities, config, config.write_batch_size, None)


def build_follow(
    p: beam.Pipeline,
    config: RunConfig,
    poll_interval: float,
    stop_at: float,
    rows_per_window: int,
    max_windows: int,
) -> Any:
    """Adds the follow mode to ``p``: every ``poll_interval`` seconds until ``stop_at`` (a Unix
    time), the windows of new and changed activities → read → calculate → write, the same
    calculation and writes as ``build``. Each poll's results are written as soon as they are
    calculated (a write per element, not per batch): the point is their latency."""
    config = for_workers(p, config)
    activities = p | "ReadChanges" >> ReadChanges(
        config.database_url,
        config.sources,
        poll_interval,
        stop_at,
        rows_per_window,
        max_windows,
        config.retry_policy,
        config.schema,
        config.activity_types,
        config.run_id,
    )
    return _calculate_and_write(activities, config, 1, _factors(p, config))


def for_workers(p: beam.Pipeline, config: RunConfig) -> RunConfig:
    """``config`` as the job carries it to its workers: on a portable runner (Flink) whose
    workers run on the cluster's hosts, the database URL without its password (docs/flink.md:
    they read it from libpq's variables or files there). LOOPBACK workers run in this process
    and keep it; the in-process runners never ship the job."""
    env = p.options.view_as(PortableOptions).environment_type
    if not isinstance(p.runner, PortableRunner) or str(env).upper() == "LOOPBACK":
        return config
    return dataclasses.replace(config, database_url=without_password(config.database_url))


def _factors(p: beam.Pipeline, config: RunConfig) -> Any:
    """The run's factor book, read once (one element: ``calculate.pack_book``)."""
    return (
        p
        | "Factors" >> beam.Create([None])
        | "ReadFactors"
        >> beam.ParDo(
            ReadFactorsFn(
                config.database_url,
                config.retry_policy,
                dict(config.factor_pins),
                config.schema,
            )
        )
    )


def _calculate_and_write(activities: Any, config: RunConfig, batch_size: int, factors: Any) -> Any:
    """``factors``: the book as the calculation's side input, or None when the tables carry
    it."""
    calculated = activities | "Calculate" >> CalculateEmissions(
        factors, config.radiative_forcing, config.limits
    )
    calculated.results | "WriteResults" >> WriteResults(
        config.database_url,
        config.run_id,
        batch_size,
        config.retry_policy,
        config.schema,
        config.text_ids,
        config.sources,
    )
    calculated[ERRORS] | "WriteErrors" >> WriteErrors(
        config.database_url,
        config.run_id,
        batch_size,
        config.retry_policy,
        config.schema,
        config.sources,
    )
    return calculated
