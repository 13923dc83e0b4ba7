"""Checks and helpers shared by the per-type calculations.

Every refusal is an ``InputError(code, message)``: the code is short and stable (it is counted
in the run summary), the message is a sentence that names the offending value.
"""

from __future__ import annotations

import datetime
import functools
import math
from typing import Any

from pipeline.methodology.book import FactorBook
from pipeline.model import FactorRow, InputError


def activity_year(date: datetime.date | None) -> int:
    """The activity's year; a missing date is an error, never "this year"."""
    if date is None:
        raise InputError("missing_date", "The activity has no date, so no factor year applies.")
    if not isinstance(date, datetime.date):
        # The reader passes dates Python cannot hold (BC, after 9999, ±infinity) as text.
        raise InputError(
            "invalid_date",
            f"The activity date {date!r} is outside the years 1 to 9999; no factor year applies.",
        )
    return date.year


def non_negative(value: object, what: str, code_suffix: str) -> float:
    """A present, finite, non-negative number; codes are ``missing_``/``not_finite_``/
    ``negative_`` + ``code_suffix``."""
    if value is None:
        raise InputError(f"missing_{code_suffix}", f"The {what} is missing (NULL); it is not 0.")
    # bool is an int subclass, and True kWh is a data error rather than 1 kWh.
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InputError(f"invalid_{code_suffix}", f"The {what} {value!r} is not a number.")
    number = float(value)
    if math.isnan(number) or math.isinf(number):
        raise InputError(
            f"not_finite_{code_suffix}",
            f"The {what} is {number}, which is not a finite number.",
        )
    if number < 0:
        raise InputError(f"negative_{code_suffix}", f"The {what} {number!r} is negative.")
    return number


def finite_result(*values: float | None) -> None:
    """Refuse a product that overflowed: inputs were finite but too large to multiply."""
    for value in values:
        if value is not None and not math.isfinite(value):
            raise InputError(
                "result_not_finite",
                "The result overflowed to infinity; the input quantity is too large to use.",
            )


def scaled(amount: float, factor: float | None) -> float | None:
    """``amount × factor`` for an optional per-gas factor."""
    return None if factor is None else amount * factor


def clean_code(value: str | None) -> str | None:
    """A code as typed by a person: stripped and upper-cased; None if empty."""
    if value is None:
        return None
    text = value.strip().upper()
    return text or None


@functools.lru_cache(maxsize=4096)
def country_alpha3(code: str | None) -> str | None:
    """ISO 3166 alpha-3 for an alpha-2 or alpha-3 code in any case, or None if unknown."""
    import pycountry  # imported lazily: its database is large and only needed here

    text = clean_code(code)
    if text is None or not text.isalpha():
        return None
    if len(text) == 2:
        country = pycountry.countries.get(alpha_2=text)
    elif len(text) == 3:
        country = pycountry.countries.get(alpha_3=text)
    else:
        return None
    return None if country is None else str(country.alpha_3)


def no_factor(factor_set: str, key: str) -> InputError:
    """The error for a factor that the book does not hold (an incomplete factor table)."""
    return InputError(
        "no_factor",
        f"No {factor_set} factor for {key!r} is loaded; the factor table is incomplete.",
    )


def select(book: FactorBook, factor_set: str, key: str, year: int) -> tuple[FactorRow, bool]:
    """``book.select`` with a missing factor reported as an ``InputError``."""
    try:
        return book.select(factor_set, key, year)
    except KeyError:
        raise no_factor(factor_set, key) from None


def factor_reference(row: FactorRow) -> dict[str, Any]:
    """The result fields that say which factor row produced it."""
    return {
        "factor_id": row.id,
        "factor_set": row.factor_set,
        "factor_key": row.key,
        "factor_year": row.year,
        "factor_value": row.value,
        "factor_unit": row.unit,
        "factor_source": row.source,
        "factor_edition": row.edition,
        "gwp_set": row.gwp_set,
    }
