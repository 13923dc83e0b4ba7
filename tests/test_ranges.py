"""The range planner's exact output and edge cases."""

from __future__ import annotations

import argparse
import uuid

import pytest

from pipeline.options import OptionsError, add_arguments, validate
from pipeline.ranges import (
    UUID_SPACE,
    KeyRange,
    plan_int_ranges,
    plan_uuid_ranges,
    ranges_needed,
)


def test_int_ranges_split_evenly_and_leave_both_ends_open() -> None:
    assert plan_int_ranges("spend", 1, 100, 4) == [
        KeyRange("spend", None, 26),
        KeyRange("spend", 26, 51),
        KeyRange("spend", 51, 76),
        KeyRange("spend", 76, None),
    ]


def test_int_ranges_spread_the_remainder() -> None:
    # 10 keys in 3 ranges: sizes 3, 3, 4 (cuts at 1 + 10*1//3 = 4 and 1 + 10*2//3 = 7).
    assert plan_int_ranges("electricity", 1, 10, 3) == [
        KeyRange("electricity", None, 4),
        KeyRange("electricity", 4, 7),
        KeyRange("electricity", 7, None),
    ]


def test_empty_table_has_no_range() -> None:
    assert plan_int_ranges("spend", None, None, 8) == []


def test_one_row_gives_one_unbounded_range() -> None:
    assert plan_int_ranges("spend", 42, 42, 8) == [KeyRange("spend", None, None)]


def test_more_partitions_than_keys_gives_one_range_per_key() -> None:
    assert plan_int_ranges("air_travel", 5, 7, 10) == [
        KeyRange("air_travel", None, 6),
        KeyRange("air_travel", 6, 7),
        KeyRange("air_travel", 7, None),
    ]


def test_negative_and_huge_bigint_keys() -> None:
    lo, hi = -(2**63), 2**63 - 1
    ranges = plan_int_ranges("spend", lo, hi, 2)
    assert ranges == [KeyRange("spend", None, 0), KeyRange("spend", 0, None)]


@pytest.mark.parametrize("partitions", [0, -1])
def test_partitions_must_be_positive(partitions: int) -> None:
    with pytest.raises(ValueError, match="at least 1"):
        plan_int_ranges("spend", 1, 10, partitions)
    with pytest.raises(ValueError, match="at least 1"):
        plan_uuid_ranges("spend", partitions)


def test_uuid_ranges_split_the_128_bit_space() -> None:
    assert plan_uuid_ranges("air_travel", 4) == [
        KeyRange("air_travel", None, "40000000-0000-0000-0000-000000000000"),
        KeyRange(
            "air_travel",
            "40000000-0000-0000-0000-000000000000",
            "80000000-0000-0000-0000-000000000000",
        ),
        KeyRange(
            "air_travel",
            "80000000-0000-0000-0000-000000000000",
            "c0000000-0000-0000-0000-000000000000",
        ),
        KeyRange("air_travel", "c0000000-0000-0000-0000-000000000000", None),
    ]


def test_uuid_ranges_are_contiguous_and_equal() -> None:
    ranges = plan_uuid_ranges("spend", 7)
    assert len(ranges) == 7
    bounds = [0] + [uuid.UUID(str(r.end)).int for r in ranges[:-1]] + [UUID_SPACE]
    sizes = [b - a for a, b in zip(bounds, bounds[1:], strict=False)]
    assert max(sizes) - min(sizes) <= 1
    for before, after in zip(ranges, ranges[1:], strict=False):
        assert before.end == after.start


def test_one_uuid_partition_is_everything() -> None:
    assert plan_uuid_ranges("spend", 1) == [KeyRange("spend", None, None)]


@pytest.mark.parametrize(
    ("rows", "rows_per_range", "partitions", "ranges"),
    [
        (0, 20_000, 8, 0),  # empty: nothing to read
        (1, 2, 8, 1),  # one row: one range
        (5, 2, 8, 2),  # more partitions than rows allow: ranges of at least 2 rows
        (7, 2, 1, 3),  # 2 rows a range wanted, 3 ranges of at least 2 rows allowed
        (100, 20_000, 8, 8),  # small table: the partitions
        (1_000, 10, 1, 100),  # large table: enough ranges that none holds more than 10
        (1_000_000, 20_000, 8, 50),
    ],
)
def test_how_many_ranges_a_table_is_read_in(
    rows: int, rows_per_range: int, partitions: int, ranges: int
) -> None:
    assert ranges_needed(rows, rows_per_range, partitions) == ranges


def test_a_range_of_one_row_is_refused() -> None:
    with pytest.raises(ValueError, match="at least 2"):
        ranges_needed(10, 1, 1)


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("--rows-per-range", "1"),
        ("--retry-base-delay", "nan"),
        ("--retry-base-delay", "inf"),
        ("--progress-interval", "nan"),
        ("--progress-interval", "inf"),
        ("--progress-interval", "-1"),
    ],
)
def test_options_at_the_edges_are_refused(option: str, value: str) -> None:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    options = parser.parse_args([option, value])
    with pytest.raises(OptionsError, match=option):
        validate(options, "postgresql://u@h/d")
