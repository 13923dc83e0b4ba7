"""Planning key ranges for partitioned reads. Pure functions: no Beam, no SQL.

A range is half-open, ``start <= id < end``; ``None`` means unbounded. The first range of a
plan starts at ``None`` and the last ends at ``None``, so a plan always covers the whole key
space: a row inserted after the bounds were read is still read exactly once.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from pipeline.model import ActivityType

Key = int | str | None

UUID_SPACE = 1 << 128


@dataclass(frozen=True)
class KeyRange:
    """One partition of an activity table: ``start <= id < end`` (``None``: unbounded)."""

    activity_type: ActivityType
    start: Key
    end: Key


def plan_int_ranges(
    activity_type: ActivityType, lo: int | None, hi: int | None, partitions: int
) -> list[KeyRange]:
    """Split the integer keys ``lo..hi`` (inclusive) into at most ``partitions`` ranges.

    An empty table (``lo`` is None) gives no range; a span smaller than ``partitions`` gives
    one range per key value.
    """
    if partitions < 1:
        raise ValueError(f"partitions must be at least 1, not {partitions}")
    if lo is None or hi is None:
        return []
    span = hi - lo + 1
    n = min(partitions, span)
    # Boundaries at lo + span*i/n (integer division) spread the remainder over the ranges.
    cuts = [lo + (span * i) // n for i in range(1, n)]
    starts: list[Key] = [None, *cuts]
    ends: list[Key] = [*cuts, None]
    return [KeyRange(activity_type, s, e) for s, e in zip(starts, ends, strict=True)]


def plan_uuid_ranges(activity_type: ActivityType, partitions: int) -> list[KeyRange]:
    """Split the 128-bit UUID space into ``partitions`` equal ranges.

    PostgreSQL orders ``uuid`` values bytewise, which is the order of their 128-bit integers,
    so equal slices of that integer space are equal slices of random (v4) keys.
    """
    if partitions < 1:
        raise ValueError(f"partitions must be at least 1, not {partitions}")
    cuts = [str(uuid.UUID(int=(UUID_SPACE * i) // partitions)) for i in range(1, partitions)]
    starts: list[Key] = [None, *cuts]
    ends: list[Key] = [*cuts, None]
    return [KeyRange(activity_type, s, e) for s, e in zip(starts, ends, strict=True)]


def ranges_needed(rows: int, rows_per_range: int, partitions: int) -> int:
    """How many ranges a table of ``rows`` rows is read in: at least ``partitions``, and enough
    that none holds more than ``rows_per_range`` (so memory does not grow with the table), but
    never more than there are rows."""
    if rows_per_range < 1 or partitions < 1:
        raise ValueError("rows_per_range and partitions must be at least 1")
    if rows <= 0:
        return 0
    return min(rows, max(partitions, -(-rows // rows_per_range)))


def plan_from_cuts(activity_type: ActivityType, cuts: list[Key]) -> list[KeyRange]:
    """Ranges between sorted, distinct cut points (ids from the table in key order)."""
    starts: list[Key] = [None, *cuts]
    ends: list[Key] = [*cuts, None]
    return [KeyRange(activity_type, s, e) for s, e in zip(starts, ends, strict=True)]
