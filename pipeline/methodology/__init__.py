"""The emission calculations: pure functions from an activity and a factor book to a result.

Nothing here knows about Beam or SQL. Each activity type has its module; ``calculate``
dispatches by type. Input that cannot or must not be calculated raises
``pipeline.model.InputError`` with a stable code; callers turn it into a dead letter.
"""

from __future__ import annotations

from pipeline.methodology.air import calculate_air_travel, haversine_km
from pipeline.methodology.book import FactorBook, select_year
from pipeline.methodology.electricity import calculate_electricity
from pipeline.methodology.spend import calculate_spend
from pipeline.model import (
    DEFAULT_LIMITS,
    Activity,
    AirTravelActivity,
    ElectricityActivity,
    EmissionResult,
    Limits,
    SpendActivity,
)

__all__ = [
    "FactorBook",
    "calculate",
    "calculate_air_travel",
    "calculate_electricity",
    "calculate_spend",
    "haversine_km",
    "select_year",
]


def calculate(
    activity: Activity,
    book: FactorBook,
    *,
    radiative_forcing: bool = True,
    limits: Limits = DEFAULT_LIMITS,
) -> EmissionResult:
    """The result for any activity; ``radiative_forcing`` applies to air travel only, and
    ``limits`` are the plausibility bounds (the defaults unless a run sets its own)."""
    if isinstance(activity, ElectricityActivity):
        return calculate_electricity(activity, book, limits=limits)
    if isinstance(activity, SpendActivity):
        return calculate_spend(activity, book, limits=limits)
    if isinstance(activity, AirTravelActivity):
        return calculate_air_travel(
            activity, book, radiative_forcing=radiative_forcing, limits=limits
        )
    raise TypeError(f"not an activity: {type(activity).__name__}")
