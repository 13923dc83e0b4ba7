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

    Returns the PCollections of results and errors (useful to tests).
    """
    factors = (
        p
        | "Factors" >> beam.Create([None])
        | "ReadFactors" >> beam.ParDo(ReadFactorsFn(config.database_url, config.retry_policy))
    )
    results = []
    errors = []
    for activity_type in config.activity_types:
        label = "".join(part.title() for part in activity_type.split("_"))
        activities = p | f"ReadPending{label}" >> ReadPendingActivities(
            config.database_url,
            activity_type,
            config.partitions,
            config.date_from,
            config.date_to,
            config.retry_policy,
        )
        outputs = activities | f"Calculate{label}" >> CalculateEmissions(
            activity_type, factors, config.radiative_forcing
        )
        results.append(outputs.results)
        errors.append(outputs[ERRORS])
    all_results = results | "FlattenResults" >> beam.Flatten()
    all_errors = errors | "FlattenErrors" >> beam.Flatten()
    all_results | "WriteResults" >> WriteResults(
        config.database_url, config.run_id, config.write_batch_size, config.retry_policy
    )
    all_errors | "WriteErrors" >> WriteErrors(
        config.database_url, config.run_id, config.write_batch_size, config.retry_policy
    )
    return {"results": all_results, "errors": all_errors}
