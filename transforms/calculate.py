"""CalculateEmissions: the methodology applied to each activity, with dead letters.

The DoFn is a thin shell over ``pipeline.methodology.calculate``; factors arrive as a side
input (a ``FactorBook`` read from ``emission_factors``). Input the methodology refuses becomes
an ``ErrorRecord`` on the ``errors`` output, counted, and the run goes on.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from typing import Any

import apache_beam as beam
from apache_beam import pvalue
from apache_beam.metrics import Metrics

from pipeline import db
from pipeline.methodology import FactorBook, calculate
from pipeline.model import Activity, ActivityType, ErrorRecord, InputError
from pipeline.retry import DEFAULT_POLICY, RetryPolicy

ERRORS = "errors"


def input_repr(activity: Activity) -> str:
    """The activity as read, as stable JSON, for the dead-letter record."""
    return json.dumps(dataclasses.asdict(activity), default=str, sort_keys=True)


def to_error(
    activity_type: ActivityType, activity: Activity, code: str, reason: str
) -> ErrorRecord:
    return ErrorRecord(activity_type, activity.id, code, reason, input_repr(activity))


class ReadFactorsFn(beam.DoFn):
    """Reads ``emission_factors`` once and emits the FactorBook the calculation uses."""

    def __init__(self, database_url: str, retry_policy: RetryPolicy = DEFAULT_POLICY) -> None:
        self._database_url = database_url
        self._retry_policy = retry_policy

    def process(self, _: Any) -> Iterator[FactorBook]:
        rows = db.with_connection(
            self._database_url, "reading emission_factors", db.read_factor_rows, self._retry_policy
        )
        yield FactorBook.from_rows(rows)


class CalculateFn(beam.DoFn):
    """Computes one activity type; refused input goes to the ``errors`` output."""

    def __init__(self, activity_type: ActivityType, radiative_forcing: bool = True) -> None:
        self._activity_type = activity_type
        self._radiative_forcing = radiative_forcing

    def setup(self) -> None:
        self._computed = Metrics.counter("calculate", f"{self._activity_type}_computed")
        self._errors = Metrics.counter("calculate", f"{self._activity_type}_errors")

    def process(self, activity: Activity, book: FactorBook) -> Iterator[Any]:
        try:
            result = calculate(activity, book, radiative_forcing=self._radiative_forcing)
        except InputError as e:
            self._errors.inc()
            yield pvalue.TaggedOutput(
                ERRORS, to_error(self._activity_type, activity, e.code, e.message)
            )
            return
        except Exception as e:  # noqa: BLE001 - one bad row must not stop the run
            self._errors.inc()
            reason = f"the calculation failed unexpectedly: {type(e).__name__}: {e}"
            yield pvalue.TaggedOutput(
                ERRORS,
                to_error(self._activity_type, activity, "calculation_failed", reason),
            )
            return
        self._computed.inc()
        yield result


class CalculateEmissions(beam.PTransform):
    """Activities of one type → results (main output) and dead letters (``errors``)."""

    def __init__(
        self, activity_type: ActivityType, factors: Any, radiative_forcing: bool = True
    ) -> None:
        super().__init__()
        self._activity_type = activity_type
        self._factors = factors
        self._radiative_forcing = radiative_forcing

    def expand(self, activities: Any) -> Any:
        return activities | "Calculate" >> beam.ParDo(
            CalculateFn(self._activity_type, self._radiative_forcing),
            beam.pvalue.AsSingleton(self._factors),
        ).with_outputs(ERRORS, main="results")
