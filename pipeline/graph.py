"""Wires the composites into a pipeline. Reads no argv and no environment."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import apache_beam as beam

from pipeline.options import RunConfig
from pipeline.ranges import KeyRange
from transforms.calculate import ERRORS, CalculateEmissions, ReadFactorsFn
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
    factors = (
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
    activities = p | "ReadPending" >> ReadPendingActivities(
        config.database_url,
        ranges,
        date_from=config.date_from,
        date_to=config.date_to,
        retry_policy=config.retry_policy,
        sources=config.sources,
        schema=config.schema,
        run_id=config.run_id,
    )
    calculated = activities | "Calculate" >> CalculateEmissions(
        factors, config.radiative_forcing, config.limits
    )
    calculated.results | "WriteResults" >> WriteResults(
        config.database_url,
        config.run_id,
        config.write_batch_size,
        config.retry_policy,
        config.schema,
        config.text_ids,
    )
    calculated[ERRORS] | "WriteErrors" >> WriteErrors(
        config.database_url,
        config.run_id,
        config.write_batch_size,
        config.retry_policy,
        config.schema,
    )
    return calculated
