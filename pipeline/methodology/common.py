"""Checks and helpers shared by the per-type calculations.

Every refusal is an ``InputError(code, message)``: the code is short and stable (it is counted
in the run summary), the message is a sentence that names the offending value, quoted short
(``quoted``): a message names a 10 MB value, it need not hold it.
"""

from __future__ import annotations

import datetime
import functools
import hashlib
import math
from collections.abc import Callable
from typing import Any

from pipeline.methodology.book import FactorBook
from pipeline.model import FactorRow, InputError

#: The longest text a dead letter's ``input_repr`` keeps whole (docs/methodology.md §6.4).
MAX_TEXT_CHARS = 200
#: The longest text a refusal's message quotes.
MAX_QUOTED_CHARS = 80
#: Characters hashed at a time: a huge value is never encoded whole.
_HASH_CHUNK = 1 << 20
#: Longer than any code the methodology looks up (NAICS 6, eGRID 4, IATA, ISO, units, classes).
#: A longer text is unknown as it is: it is not case-folded first, which for a 10 MB text
#: would cost many times its size (CPython folds non-ASCII text through a 12-byte-per-character
#: buffer).
LONGEST_CODE = 64


def text_digest(text: str) -> str:
    """The sha256 of the whole ``text`` in UTF-8, encoded a slice at a time, so that hashing a
    huge value costs no second copy of it (lone surrogates pass through, never fail)."""
    digest = hashlib.sha256()
    for start in range(0, len(text), _HASH_CHUNK):
        digest.update(text[start : start + _HASH_CHUNK].encode("utf-8", "surrogatepass"))
    return digest.hexdigest()


def bounded_text(text: str, limit: int = MAX_TEXT_CHARS) -> str:
    """``text`` itself when at most ``limit`` characters; else its first ``limit``, how many
    more there were and the sha256 of the whole, so that a dead letter stays small whatever
    the input while two long values that differ anywhere still read (and hash) differently."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}…[+{len(text) - limit} chars, sha256 {text_digest(text)}]"


def quoted(value: object) -> str:
    """``repr(value)`` for a message, a long text cut short: the message names the value, the
    dead letter's ``input_repr`` keeps (a bounded form of) the rest."""
    if isinstance(value, str) and len(value) > MAX_QUOTED_CHARS:
        return f"{value[:MAX_QUOTED_CHARS]!r}…[+{len(value) - MAX_QUOTED_CHARS} chars]"
    return repr(value)


def shown(number: float) -> str:
    """A number as a message shows it, exactly: thousands separated when whole (and below
    1e16, where every whole float is still exact), else ``repr``."""
    if math.isfinite(number) and float(number).is_integer() and abs(number) < 1e16:
        return f"{int(number):,}"
    return repr(float(number))


def at_most(value: float, bound: float, code: str, message: Callable[[], str]) -> None:
    """Refuse a value above its plausibility bound (``pipeline.model.Limits``) with ``code``
    and the sentence ``message()`` (made only for a refusal: most rows pass).

    NaN and infinity (which only an overflowing conversion can give here) are above every
    bound: the comparison is written so that they fail it."""
    if not value <= bound:
        raise InputError(code, message())


def activity_year(date: datetime.date | None) -> int:
    """The activity's year; a missing date is an error, never "this year"."""
    if date is None:
        raise InputError("missing_date", "The activity has no date, so no factor year applies.")
    if not isinstance(date, datetime.date):
        # The reader passes dates Python cannot hold (BC, after 9999, ±infinity) as text.
        raise InputError(
            "invalid_date",
            f"The activity date {quoted(date)} is outside the years 1 to 9999; "
            "no factor year applies.",
        )
    return date.year


def non_negative(value: object, what: str, code_suffix: str) -> float:
    """A present, finite, non-negative number; codes are ``missing_``/``not_finite_``/
    ``negative_`` + ``code_suffix``."""
    if value is None:
        raise InputError(f"missing_{code_suffix}", f"The {what} is missing (NULL); it is not 0.")
    # bool is an int subclass, and True kWh is a data error rather than 1 kWh.
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InputError(f"invalid_{code_suffix}", f"The {what} {quoted(value)} is not a number.")
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


def amount_times_factor(amount: float, unit: str, row: FactorRow) -> dict[str, Any]:
    """The result fields of ``amount`` (in ``unit``, the factor's) × ``row``: kg CO2e, kg per
    gas where the row gives them, the amount and the factor's reference. Refuses a product
    that overflowed (``finite_result``)."""
    kg = amount * row.value
    kg_co2 = scaled(amount, row.kg_co2)
    kg_ch4 = scaled(amount, row.kg_ch4_co2e)
    kg_n2o = scaled(amount, row.kg_n2o_co2e)
    finite_result(amount, kg, kg_co2, kg_ch4, kg_n2o)
    return {
        "kg_co2e": kg,
        "kg_co2": kg_co2,
        "kg_ch4_co2e": kg_ch4,
        "kg_n2o_co2e": kg_n2o,
        "activity_amount": amount,
        "activity_unit": unit,
        **factor_reference(row),
    }


def clean_code(value: str | None) -> str | None:
    """A code as typed by a person: stripped and upper-cased; None if empty. A text longer than
    ``LONGEST_CODE`` is only stripped: it matches no code either way."""
    if value is None:
        return None
    text = value.strip()
    if len(text) > LONGEST_CODE:
        return text
    return text.upper() or None


def country_alpha3(code: str | None) -> str | None:
    """ISO 3166 alpha-3 for an alpha-2 or alpha-3 code in any case, or None if unknown."""
    text = clean_code(code)
    if text is None or len(text) > 3:
        return None
    return _alpha3(text)  # cached by the cleaned code: a huge value is never kept


@functools.lru_cache(maxsize=4096)
def _alpha3(text: str) -> str | None:
    """``country_alpha3`` of a cleaned code of at most three characters."""
    import pycountry  # imported lazily: its database is large and only needed here

    if not text.isalpha():
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
