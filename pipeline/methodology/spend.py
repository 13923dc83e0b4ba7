"""Purchased goods and services, spend-based, Scope 3 category 1 (docs/methodology.md §2).

amount (currency, activity year) → USD at the ``fx_usd`` annual average of the activity year
→ 2022 USD with the CPI-U deflator CPI(2022) / CPI(year) → × the EPA SEF v1.3.0 factor (kg
CO2e per 2022 USD, purchaser price, with margins). Both the exchange rate and the CPI follow
the year rule; either one taken from another year flags ``year_mismatch``. The SEF factors
are all in 2022 USD, so their year is not a mismatch: the deflator is what bridges it.

Refunds: a negative amount is refused (``negative_amount``), not netted. A refund usually
belongs to a purchase in another period or category, and subtracting it from whatever else was
bought would silently move emissions between categories; a refund has to be matched to its
purchase and corrected there by whoever owns the data.

Plausibility: more than ``Limits.max_spend_usd`` 2022 USD in one activity is a data error
(``implausible_amount``). The bound is on the 2022 USD, after conversion, not on the amount in
its own currency: one bound then means the same money whatever the currency (a bound on the
amount as typed would allow some 20,000 times more money in pounds than in rupiah), and the
amount in 2022 USD is what multiplies the factor.
"""

from __future__ import annotations

from pipeline.methodology.book import FactorBook
from pipeline.methodology.common import (
    activity_year,
    amount_times_factor,
    at_most,
    clean_code,
    non_negative,
    quoted,
    select,
    shown,
)
from pipeline.model import DEFAULT_LIMITS, EmissionResult, InputError, Limits, SpendActivity

METHOD = "spend_based_eeio"
SEF_SET = "epa_sef"
SEF_DOLLAR_YEAR = 2022
CPI_SET = "cpi_u"
CPI_KEY = "CUUR0000SA0"
FX_SET = "fx_usd"


def _amount(value: object) -> float:
    try:
        return non_negative(value, "spend amount", "amount")
    except InputError as error:
        if error.code != "negative_amount":
            raise
        raise InputError(
            "negative_amount",
            f"The spend amount {quoted(value)} is negative; refunds are not netted automatically: "
            "correct or remove the original purchase instead.",
        ) from None


def _naics(code: str | None, book: FactorBook) -> str:
    if code is None or not code.strip():
        raise InputError("missing_naics", "The spend has no NAICS code.")
    text = code.strip()
    if book.has(SEF_SET, text):
        return text
    if text.startswith("2211"):
        raise InputError(
            "unknown_naics",
            f"NAICS {quoted(text)} (electric power) is not in the EPA SEF data: purchased "
            "electricity belongs in Scope 2, as an electricity activity.",
        )
    raise InputError(
        "unknown_naics",
        f"NAICS {quoted(text)} is not a 6-digit NAICS 2017 code in the EPA SEF v1.3.0 data.",
    )


def calculate_spend(
    activity: SpendActivity, book: FactorBook, *, limits: Limits = DEFAULT_LIMITS
) -> EmissionResult:
    """kg CO2e of a purchase = amount × USD rate × CPI deflator × SEF factor; Scope 3 cat 1."""
    amount = _amount(activity.amount)
    currency = clean_code(activity.currency)
    if currency is None:
        raise InputError("missing_currency", "The spend has no currency.")
    naics = _naics(activity.naics_code, book)
    year = activity_year(activity.activity_date)

    if not book.has(FX_SET, currency):
        raise InputError(
            "unknown_currency",
            f"The currency {quoted(activity.currency)} has no ECB reference rate "
            "(it is not an ISO 4217 code the ECB publishes).",
        )
    fx, fx_mismatch = select(book, FX_SET, currency, year)
    cpi_year, cpi_mismatch = select(book, CPI_SET, CPI_KEY, year)
    cpi_base = book.get(CPI_SET, CPI_KEY, SEF_DOLLAR_YEAR)
    if cpi_base is None:
        raise InputError(
            "no_factor",
            f"No CPI-U value for {SEF_DOLLAR_YEAR} is loaded; cannot deflate.",
        )
    sef, _ = select(book, SEF_SET, naics, SEF_DOLLAR_YEAR)

    deflator = cpi_base.value / cpi_year.value
    usd = amount * fx.value
    usd_2022 = usd * deflator
    at_most(
        usd_2022,
        limits.max_spend_usd,
        "implausible_amount",
        lambda: (
            f"The spend amount {amount!r} {currency} is {shown(usd_2022)} 2022 USD, above "
            f"the plausibility bound of {shown(limits.max_spend_usd)} 2022 USD for one activity "
            "(--max-spend-usd)."
        ),
    )
    return EmissionResult(
        activity_type="spend",
        activity_id=activity.id,
        scope=3,
        category=1,
        method=METHOD,
        **amount_times_factor(usd_2022, f"{SEF_DOLLAR_YEAR} USD", sef),
        year_mismatch=fx_mismatch or cpi_mismatch,
        exchange_rate=fx.value,
        fx_factor_id=fx.id,
        cpi_deflator=deflator,
        cpi_factor_id=cpi_year.id,
        cpi_base_factor_id=cpi_base.id,
    )
