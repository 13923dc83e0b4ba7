"""Wires the composites into a pipeline. Reads no argv and no environment."""

from __future__ import annotations

from typing import Any

import apache_beam as beam

from pipeline.options import RunConfig
from transforms.calculate import ERRORS, CalculateEmissions, ReadFactorsFn
from transforms.read import ReadPendingActivities
from transforms.write import WriteErrors, WriteResults


def build(p: beam.Pipeline, config: RunConfig) -> dict[str, Any]:
    """Adds the calculation to ``p``: per activity type, read pending → calculate → write.

    Returns each type's calculation outputs (``results`` tables and ``errors``), for tests.
    """
    factors = (
        p
        | "Factors" >> beam.Create([None])
        | "ReadFactors"
        >> beam.ParDo(
            ReadFactorsFn(config.database_url, config.retry_policy, dict(config.factor_pins))
        )
    )
    outputs: dict[str, Any] = {}
    # One branch per type, each ending in its own writes: a branch fuses into one stage after
    # its Reshuffle, so tables stream from the read to the write instead of being collected.
    for activity_type in config.activity_types:
        label = "".join(part.title() for part in activity_type.split("_"))
        activities = p | f"ReadPending{label}" >> ReadPendingActivities(
            config.database_url,
            activity_type,
            partitions=config.partitions,
            rows_per_range=config.rows_per_range,
            planner=config.range_planner,
            date_from=config.date_from,
            date_to=config.date_to,
            retry_policy=config.retry_policy,
        )
        calculated = activities | f"Calculate{label}" >> CalculateEmissions(
            activity_type, factors, config.radiative_forcing
        )
        calculated.results | f"WriteResults{label}" >> WriteResults(
            config.database_url, config.run_id, config.write_batch_size, config.retry_policy
        )
        calculated[ERRORS] | f"WriteErrors{label}" >> WriteErrors(
            config.database_url, config.run_id, config.write_batch_size, config.retry_policy
        )
        outputs[activity_type] = calculated
    return outputs
