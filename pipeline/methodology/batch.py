"""The methodology over Arrow tables: many activities per call, the same results as per row.

There is one implementation of the methodology: the per-row functions. This module does not
re-implement any rule. It groups a batch's rows by *context* (everything a result depends on
except the row's own numbers: unit, region, country and year for electricity; currency, NAICS
code and year for spend; airports, class, year for flights), asks the per-row function for
each distinct context once with a probe activity of quantity 1, and then applies only the final
multiplications to whole columns with numpy, in the same order of floating-point operations
as the per-row code, so that every value is bit-for-bit the one the per-row function gives.

Rows the fast path cannot vouch for (a missing, negative or non-finite number, a context the
probe refused, a product that overflowed, a value above its plausibility bound in ``Limits``)
go through the per-row function itself, which yields the result or the exact error record it
would have produced on its own: the batch refuses nothing by itself, so its refusals cannot
drift from the per-row ones.

A dead letter stays small whatever the input: each text value in its ``input_repr`` is kept
to ``MAX_TEXT_CHARS`` characters, with the sha256 of the whole value (docs/methodology.md §6.4).
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import math
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.methodology import calculate
from pipeline.methodology.book import FactorBook
from pipeline.methodology.common import MAX_TEXT_CHARS, bounded_text, quoted
from pipeline.methodology.spend import SEF_DOLLAR_YEAR
from pipeline.model import (
    ACTIVITY_CLASSES,
    DEFAULT_LIMITS,
    Activity,
    ActivityType,
    AirTravelActivity,
    ElectricityActivity,
    EmissionResult,
    ErrorRecord,
    InputError,
    Limits,
    SpendActivity,
    activity_fields,
)

_RESULT_FIELDS = tuple(f.name for f in dataclasses.fields(EmissionResult))
_GASES = (("kg_co2", "kg_co2"), ("kg_ch4_co2e", "kg_ch4_co2e"), ("kg_n2o_co2e", "kg_n2o_co2e"))
#: The longest reason a dead letter keeps (an unexpected exception's text can hold the input).
MAX_REASON_CHARS = 1000


def _arrow_type(annotation: str) -> pa.DataType:
    if "float" in annotation:
        return pa.float64()
    if "bool" in annotation:
        return pa.bool_()
    if "int" in annotation:
        return pa.int64()
    return pa.string()


def result_schema(id_type: pa.DataType) -> pa.Schema:
    """The Arrow schema of a results table whose activity ids have ``id_type``."""
    fields = []
    for f in dataclasses.fields(EmissionResult):
        typ = id_type if f.name == "activity_id" else _arrow_type(str(f.type))
        fields.append(pa.field(f.name, typ))
    return pa.schema(fields)


def _as_row(result: EmissionResult) -> dict[str, Any]:
    """A result as a dict, shallowly (``dataclasses.asdict`` deep-copies, and is slow)."""
    return {name: getattr(result, name) for name in _RESULT_FIELDS}


def _bounded(value: object) -> object:
    """A field's value as a dead letter keeps it: a long text cut to ``bounded_text``."""
    return bounded_text(value) if isinstance(value, str) else value


def _repr_of(fields: dict[str, Any]) -> str:
    """Fields as stable JSON with every text bounded, the values JSON cannot hold (dates) as
    their bounded text. Short values are untouched: the same text as ever."""
    bounded = {name: _bounded(value) for name, value in fields.items()}
    return json.dumps(bounded, default=lambda value: _bounded(str(value)), sort_keys=True)


def input_repr(activity: Activity) -> str:
    """The activity as read, as stable JSON, for the dead-letter record.

    Its fields are plain values, so a shallow dict is what ``dataclasses.asdict`` would give
    (without its deep copies): the same text, hence the same ``input_hash``, as ever. A text
    longer than ``MAX_TEXT_CHARS`` keeps its start and the sha256 of the whole value, so that
    a 10 MB value makes a dead letter of a few hundred bytes, and two long values that differ
    anywhere still make different texts (and ``input_hash``)."""
    return _repr_of({f.name: getattr(activity, f.name) for f in dataclasses.fields(activity)})


def dead_letter(
    activity: Activity, activity_type: ActivityType, code: str, reason: str
) -> ErrorRecord:
    """The dead letter of ``activity``; its reason is cut to ``MAX_REASON_CHARS``."""
    if len(reason) > MAX_REASON_CHARS:
        reason = f"{reason[:MAX_REASON_CHARS]}…[+{len(reason) - MAX_REASON_CHARS} chars]"
    return ErrorRecord(activity_type, activity.id, code, reason, input_repr(activity))


def calculate_one(
    activity: Activity,
    activity_type: ActivityType,
    book: FactorBook,
    radiative_forcing: bool,
    limits: Limits = DEFAULT_LIMITS,
) -> EmissionResult | ErrorRecord:
    """The per-row function, with refusals and unexpected failures turned into dead letters."""
    try:
        return calculate(activity, book, radiative_forcing=radiative_forcing, limits=limits)
    except InputError as e:
        return dead_letter(activity, activity_type, e.code, e.message)
    except Exception as e:  # noqa: BLE001 - one bad row must not stop the run
        reason = f"the calculation failed unexpectedly: {type(e).__name__}: {e}"
        return dead_letter(activity, activity_type, "calculation_failed", reason)


@dataclass
class BatchOutcome:
    """What a batch became: a results table and the dead letters."""

    results: pa.Table
    errors: list[ErrorRecord]


def _iso_date(text: str) -> datetime.date | None:
    """A plain ISO date, or None (a year beyond 1–9999, a BC date: not computable here)."""
    try:
        return datetime.date.fromisoformat(text)
    except ValueError:
        return None


def _floats(table: pa.Table, name: str) -> tuple[np.ndarray, np.ndarray]:
    """A numeric column as float64 values, and a mask of the rows that are present."""
    column = table.column(name)
    present = pc.is_valid(column).to_numpy(zero_copy_only=False)
    values = pc.fill_null(pc.cast(column, pa.float64()), 0.0).to_numpy(zero_copy_only=False)
    return values, present


def _finite_non_negative(values: np.ndarray, present: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore"):
        return present & np.isfinite(values) & (values >= 0)


# A result depends on a row's own numbers and on its *context*. A type's context is split
# into axes, each probed on its own: the first axis gives every field the others do not.
Context = tuple[Any, ...]

#: What the money axis of spend gives: the conversion to 2022 USD and its year flag.
_MONEY_FIELDS = (
    "exchange_rate",
    "fx_factor_id",
    "cpi_deflator",
    "cpi_factor_id",
    "cpi_base_factor_id",
    "year_mismatch",
)


def _first_of_year(year: int) -> datetime.date:
    return datetime.date(year, 1, 1)


@dataclass(frozen=True)
class _Axis:
    name: str
    columns: Callable[[pa.Table, pa.Array], list[pa.Array]]  # (table, years) → context columns
    probe: Callable[[Context, Probes], Activity | None]  # None: the axis cannot be probed
    fields: tuple[str, ...] = ()  # the result fields it gives; () for the first axis: the rest


@dataclass(frozen=True)
class _Kind:
    axes: tuple[_Axis, ...]
    usable: Callable[[pa.Table], np.ndarray]  # rows whose own numbers the fast path can use


def _electricity_probe(ctx: Context, _: Probes) -> Activity | None:
    year, unit, region, country = ctx
    if year is None:
        return None
    return ElectricityActivity(0, 1.0, unit, region, country, _first_of_year(year))


def _spend_sector_probe(ctx: Context, _: Probes) -> Activity | None:
    (naics,) = ctx
    return SpendActivity(0, 1.0, "USD", naics, _first_of_year(SEF_DOLLAR_YEAR))


def _spend_money_probe(ctx: Context, probes: Probes) -> Activity | None:
    year, currency = ctx
    if year is None or probes.reference_naics is None:
        return None
    return SpendActivity(0, 1.0, currency, probes.reference_naics, _first_of_year(year))


def _air_probe(ctx: Context, _: Probes) -> Activity | None:
    year, origin, destination, cabin, given = ctx
    if year is None:
        return None
    distance = 1.0 if given else None
    return AirTravelActivity(
        0, origin, destination, cabin, 1, False, _first_of_year(year), distance
    )


def _air_usable(table: pa.Table) -> np.ndarray:
    passengers, present = _floats(table, "passengers")
    ok = _finite_non_negative(passengers, present)
    ok &= pc.is_valid(table.column("return_trip")).to_numpy(zero_copy_only=False)
    distance, given = _floats(table, "distance_km")
    ok &= ~given | _finite_non_negative(distance, given)
    return ok


def _col(table: pa.Table, name: str) -> pa.Array:
    return table.column(name).combine_chunks()


def _given(table: pa.Table) -> pa.Array:
    return pc.is_valid(_col(table, "distance_km"))


_KINDS: dict[ActivityType, _Kind] = {
    "electricity": _Kind(
        axes=(
            _Axis(
                "grid",
                lambda t, y: [y, _col(t, "unit"), _col(t, "region"), _col(t, "country")],
                _electricity_probe,
            ),
        ),
        usable=lambda t: _finite_non_negative(*_floats(t, "quantity")),
    ),
    # Currency × year × NAICS code makes too many contexts to probe whole: the sector (the EPA
    # factor, probed in 2022 USD) and the money (exchange rate and CPI deflator for a currency
    # and year, probed with a known NAICS code) are probed apart.
    "spend": _Kind(
        axes=(
            _Axis("sector", lambda t, y: [_col(t, "naics_code")], _spend_sector_probe),
            _Axis(
                "money",
                lambda t, y: [y, _col(t, "currency")],
                _spend_money_probe,
                _MONEY_FIELDS,
            ),
        ),
        usable=lambda t: _finite_non_negative(*_floats(t, "amount")),
    ),
    "air_travel": _Kind(
        axes=(
            _Axis(
                "flight",
                lambda t, y: [
                    y,
                    _col(t, "origin"),
                    _col(t, "destination"),
                    _col(t, "cabin_class"),
                    _given(t),
                ],
                _air_probe,
            ),
        ),
        usable=_air_usable,
    ),
}


def _contexts(columns: list[pa.Array]) -> tuple[np.ndarray, list[Context]]:
    """Each row's context number, and the distinct contexts (as tuples of Python values)."""
    n = len(columns[0])
    key: np.ndarray = np.zeros(n, dtype=np.int64)
    for column in columns:
        encoded = pc.dictionary_encode(column)
        codes = pc.fill_null(encoded.indices, -1).to_numpy(zero_copy_only=False) + 1
        size = len(encoded.dictionary) + 1
        if int(key.max(initial=0)) >= (1 << 62) // size:  # keep the mixed-radix key in range
            key = np.unique(key, return_inverse=True)[1].astype(np.int64)
        key = key * size + codes
    _, first, inverse = np.unique(key, return_index=True, return_inverse=True)
    taken = [_without_long_text(column.take(pa.array(first))).to_pylist() for column in columns]
    return inverse.astype(np.int64), list(zip(*taken, strict=True))


#: Stands for a text longer than any valid code in a context: such a context is never probed
#: (``Probes.get``), so a huge value need not become a Python string here.
_TOO_LONG = "\x00" * (MAX_TEXT_CHARS + 1)


def _without_long_text(values: pa.Array) -> pa.Array:
    """``values`` with each text longer than ``MAX_TEXT_CHARS`` replaced by ``_TOO_LONG``
    (the contexts' identities come from the full values, before this)."""
    if not pa.types.is_string(values.type) and not pa.types.is_large_string(values.type):
        return values
    long = pc.fill_null(pc.greater(pc.utf8_length(values), MAX_TEXT_CHARS), False)
    if not pc.any(long).as_py():
        return values
    return pc.if_else(long, pa.scalar(_TOO_LONG, values.type), values)


@dataclass
class _Answer:
    """One context's probe: its result, and its factor's per-gas values."""

    result: EmissionResult
    gases: tuple[float, float, float]  # NaN where not published


class Probes:
    """The per-row function's answer for each context of each axis, kept across batches.

    One per worker and run (the factors and options do not change within a run). A refused
    probe is kept as None: its rows take the per-row path, which names the exact error.
    """

    def __init__(
        self,
        activity_type: ActivityType,
        book: FactorBook,
        radiative_forcing: bool = True,
        limits: Limits = DEFAULT_LIMITS,
    ) -> None:
        self.activity_type = activity_type
        self.book = book
        self.radiative_forcing = radiative_forcing
        self.limits = limits
        self._answers: dict[tuple[str, Context], _Answer | None] = {}
        sectors = sorted(book.keys("epa_sef"))
        self.reference_naics = sectors[0] if sectors else None

    def get(self, axis: _Axis, ctx: Context) -> _Answer | None:
        """The answer for ``ctx``; None, neither probed nor kept, for a context with a text
        longer than any valid code: its rows take the per-row path, and a run of huge bad
        values does not pile up in this cache."""
        if any(isinstance(v, str) and len(v) > MAX_TEXT_CHARS for v in ctx):
            return None
        key = (axis.name, ctx)
        if key not in self._answers:
            self._answers[key] = self._probe(axis, ctx)
        return self._answers[key]

    def _probe(self, axis: _Axis, ctx: Context) -> _Answer | None:
        activity = axis.probe(ctx, self)
        if activity is None:
            return None
        outcome = calculate_one(
            activity, self.activity_type, self.book, self.radiative_forcing, self.limits
        )
        if not isinstance(outcome, EmissionResult):
            return None
        factor = self.book.get(outcome.factor_set, outcome.factor_key, outcome.factor_year)
        gases = tuple(
            math.nan if factor is None or getattr(factor, g) is None else float(getattr(factor, g))
            for _, g in _GASES
        )
        return _Answer(outcome, gases)  # type: ignore[arg-type]


def _amounts(
    activity_type: ActivityType,
    table: pa.Table,
    rows: np.ndarray,
    per_context: Callable[[str], np.ndarray],
) -> tuple[np.ndarray, np.ndarray | None]:
    """The activity amount in the factor's unit for ``rows`` (and the given distances, for
    flights), with exactly the per-row functions' floating-point operations."""
    if activity_type == "electricity":
        quantity, _ = _floats(table, "quantity")
        return quantity[rows] * per_context("activity_amount"), None  # probe: 1.0 × kWh/unit
    if activity_type == "spend":
        amount, _ = _floats(table, "amount")
        return (amount[rows] * per_context("exchange_rate")) * per_context("cpi_deflator"), None
    passengers, _ = _floats(table, "passengers")
    given_distance, given = _floats(table, "distance_km")
    distance = np.where(given[rows], given_distance[rows], per_context("distance_km"))
    returns = pc.fill_null(table.column("return_trip"), False).to_numpy(zero_copy_only=False)
    trips = np.where(returns[rows], 2.0, 1.0)
    return (distance * passengers[rows]) * trips, np.where(given[rows], distance, np.nan)


def _plausible(
    activity_type: ActivityType,
    table: pa.Table,
    rows: np.ndarray,
    amount: np.ndarray,
    limits: Limits,
) -> np.ndarray:
    """Which of ``rows`` are within ``limits``, compared on exactly the values the per-row
    functions compare (kWh and 2022 USD are ``amount``, computed in their order); NaN fails,
    as it does there. The rest take the per-row path, which names the bound they broke."""
    with np.errstate(invalid="ignore"):
        if activity_type == "electricity":
            return amount <= limits.max_kwh
        if activity_type == "spend":
            return amount <= limits.max_spend_usd
        passengers, _ = _floats(table, "passengers")
        distance, given = _floats(table, "distance_km")
        within = passengers[rows] <= float(limits.max_passengers)
        return within & (~given[rows] | (distance[rows] <= limits.max_distance_km))


def _nullable(values: np.ndarray, present: np.ndarray) -> pa.Array:
    return pa.array(values, type=pa.float64(), mask=~present)


def calculate_batch(
    activity_type: ActivityType,
    table: pa.Table,
    book: FactorBook,
    *,
    radiative_forcing: bool = True,
    limits: Limits = DEFAULT_LIMITS,
    probes: Probes | None = None,
    fields: Sequence[str] | None = None,
) -> BatchOutcome:
    """Results and dead letters for a table of activities of one type.

    ``table`` has the activity's columns (``activity_fields``), with ``activity_date`` as ISO
    text. The results table follows ``result_schema`` with the input's id type, or has only
    ``fields`` of it (the pipeline leaves out what it does not store: a column of repeated
    factor descriptions is megabytes per batch). Pass the same ``probes`` to every call of a
    run to reuse the contexts' answers; they must have been made for the same ``limits``.
    """
    if probes is None:
        probes = Probes(activity_type, book, radiative_forcing, limits)
    elif probes.limits != limits:
        raise ValueError(f"the probes were made for {probes.limits}, not for {limits}")
    schema = result_schema(table.schema.field("id").type)
    if fields is not None:
        schema = pa.schema([schema.field(f) for f in schema.names if f in set(fields)])
    if table.num_rows == 0:
        return BatchOutcome(schema.empty_table(), [])
    results, slow = _fast_path(activity_type, table, probes, limits, schema)
    # The per-row path: whatever the fast path could not vouch for.
    slow_results, errors = _per_row(
        activity_type, table, np.flatnonzero(slow), book, radiative_forcing, limits
    )
    if slow_results:
        extra = pa.Table.from_pylist([_as_row(r) for r in slow_results], schema=schema)
        results = pa.concat_tables([results, extra])
    return BatchOutcome(results, errors)


@dataclass
class _Probed:
    """The rows whose every context was answered (``rows``) and, per axis, each row's index
    into that axis' answers (``axis_rows``) and the answers (``axis_answers``)."""

    rows: np.ndarray
    axis_rows: list[np.ndarray]
    axis_answers: list[list[_Answer | None]]


def _probe(kind: _Kind, table: pa.Table, probes: Probes) -> _Probed:
    """Per axis: each row's context, probed once per distinct context."""
    date_text = _col(table, "activity_date")
    parsed = pc.strptime(date_text, format="%Y-%m-%d", unit="s", error_is_null=True)
    years = pc.year(parsed)
    bad_date = pc.is_valid(date_text).to_numpy(zero_copy_only=False) & ~pc.is_valid(
        parsed
    ).to_numpy(zero_copy_only=False)
    fast = kind.usable(table) & ~bad_date
    axis_rows: list[np.ndarray] = []
    axis_answers: list[list[_Answer | None]] = []
    for axis in kind.axes:
        row_ctx, distinct = _contexts(axis.columns(table, years))
        answers = [probes.get(axis, ctx) for ctx in distinct]
        fast &= np.array([a is not None for a in answers], dtype=bool)[row_ctx]
        axis_rows.append(row_ctx)
        axis_answers.append(answers)
    return _Probed(np.flatnonzero(fast), axis_rows, axis_answers)


def _fast_path(
    activity_type: ActivityType,
    table: pa.Table,
    probes: Probes,
    limits: Limits,
    schema: pa.Schema,
) -> tuple[pa.Table, np.ndarray]:
    """The results of the rows the probes vouch for, computed as columns; and a mask of the
    rows left to the per-row path."""
    kind = _KINDS[activity_type]
    probed = _probe(kind, table, probes)
    rows = probed.rows

    def per_context(field: str, values: Callable[[_Answer], float] | None = None) -> np.ndarray:
        """A field of each fast row's context, from the axis that gives it."""
        a = _axis_of(kind, field)
        pick = values or (lambda ans: getattr(ans.result, field))
        table_ = np.array(
            [math.nan if ans is None else pick(ans) for ans in probed.axis_answers[a]],
            dtype=np.float64,
        )
        return table_[probed.axis_rows[a][rows]]

    with np.errstate(over="ignore", invalid="ignore"):
        amount, given_distance = _amounts(activity_type, table, rows, per_context)
        kg = amount * per_context("factor_value")
        gases = {}
        for i, (field, _) in enumerate(_GASES):
            per_unit = per_context("factor_value", _gas_of(i))
            gases[field] = (amount * np.nan_to_num(per_unit), ~np.isnan(per_unit))
    finite = np.isfinite(amount) & np.isfinite(kg)
    finite &= _plausible(activity_type, table, rows, amount, limits)
    for values, present in gases.values():
        finite &= ~present | np.isfinite(values)
    keep = np.flatnonzero(finite)
    slow = np.ones(table.num_rows, dtype=bool)
    slow[rows[keep]] = False
    if not len(keep):
        return schema.empty_table(), slow
    columns = _context_columns(kind, probed, rows[keep], schema)
    columns["activity_id"] = table.column("id").take(pa.array(rows[keep])).combine_chunks()
    columns["kg_co2e"] = pa.array(kg[keep], type=pa.float64())
    columns["activity_amount"] = pa.array(amount[keep], type=pa.float64())
    for field, (values, present) in gases.items():
        columns[field] = _nullable(values[keep], present[keep])
    if given_distance is not None:
        probe_distance = columns["distance_km"].to_numpy(zero_copy_only=False)
        given_kept = given_distance[keep]
        chosen = np.where(np.isnan(given_kept), probe_distance, given_kept)
        columns["distance_km"] = pa.array(chosen, type=pa.float64())
    results = pa.Table.from_arrays([columns[n] for n in schema.names], schema=schema)
    return results, slow


def _context_columns(
    kind: _Kind, probed: _Probed, kept_rows: np.ndarray, schema: pa.Schema
) -> dict[str, pa.Array]:
    """The result columns each axis' answers give, for ``kept_rows``."""
    columns: dict[str, pa.Array] = {}
    for a, axis in enumerate(kind.axes):
        row_contexts = probed.axis_rows[a][kept_rows]
        used, take = np.unique(row_contexts, return_inverse=True)
        given = [
            n for n in (axis.fields or schema.names) if n in schema.names and n != "activity_id"
        ]
        # Columns are built per batch, for the contexts it uses (kept across a run, they
        # would be the cache's largest part), a column at a time: no dict per context.
        used_results = [_answered(probed.axis_answers[a][c]).result for c in used.tolist()]
        indices = pa.array(take.reshape(-1))
        for name in given:
            values = [getattr(r, name) for r in used_results]
            columns[name] = pa.array(values, schema.field(name).type).take(indices)
    return columns


def _per_row(
    activity_type: ActivityType,
    table: pa.Table,
    slow_rows: np.ndarray,
    book: FactorBook,
    radiative_forcing: bool,
    limits: Limits,
) -> tuple[list[EmissionResult], list[ErrorRecord]]:
    """Results and dead letters of ``slow_rows``, one row at a time (``calculate_one``)."""
    slow_results: list[EmissionResult] = []
    errors: list[ErrorRecord] = []
    if not len(slow_rows):
        return slow_results, errors
    cls = ACTIVITY_CLASSES[activity_type]
    for values in table.take(pa.array(slow_rows)).to_pylist():
        text = values["activity_date"]
        date = None if text is None else _iso_date(text)
        if text is not None and date is None:
            errors.append(
                ErrorRecord(
                    activity_type,
                    values["id"],
                    "invalid_date",
                    f"The activity date {quoted(text)} is not a calendar date in the years 1 to "
                    "9999.",
                    _repr_of(values),
                )
            )
            continue
        activity = cls(**{**values, "activity_date": date})
        outcome = calculate_one(activity, activity_type, book, radiative_forcing, limits)
        if isinstance(outcome, EmissionResult):
            slow_results.append(outcome)
        else:
            errors.append(outcome)
    return slow_results, errors


def _answered(answer: _Answer | None) -> _Answer:
    assert answer is not None, "only rows whose every context was answered are fast"
    return answer


def _gas_of(i: int) -> Callable[[_Answer], float]:
    """Reads the ``i``-th per-gas factor of an answer."""
    return lambda answer: answer.gases[i]


def _axis_of(kind: _Kind, field: str) -> int:
    """The index of the axis that gives ``field``."""
    for a, axis in enumerate(kind.axes):
        if field in axis.fields:
            return a
    return 0


def results_from_table(table: pa.Table) -> list[EmissionResult]:
    """A results table back as records (for tests and small tables); other columns, such as
    the fingerprints, are left out."""
    return [EmissionResult(**{f: row[f] for f in _RESULT_FIELDS}) for row in table.to_pylist()]


def activities_table(activity_type: ActivityType, activities: Sequence[Activity]) -> pa.Table:
    """Activities as the table ``calculate_batch`` takes (dates as ISO text)."""
    names = activity_fields(activity_type)
    data: dict[str, list[Any]] = {n: [] for n in names}
    for a in activities:
        for n in names:
            v = getattr(a, n)
            data[n].append(v.isoformat() if isinstance(v, datetime.date) else v)
    return pa.table(data, schema=activity_schema(activity_type, _id_type(activities)))


def _id_type(activities: Sequence[Activity]) -> pa.DataType:
    return pa.string() if activities and isinstance(activities[0].id, str) else pa.int64()


def activity_schema(activity_type: ActivityType, id_type: pa.DataType) -> pa.Schema:
    """Arrow types of an activity table's columns as read (dates as text)."""
    cls = ACTIVITY_CLASSES[activity_type]
    hints = typing.get_type_hints(cls)
    fields = []
    for name in activity_fields(activity_type):
        if name == "id":
            fields.append(pa.field(name, id_type))
        elif name == "activity_date":
            fields.append(pa.field(name, pa.string()))
        else:
            fields.append(pa.field(name, _arrow_type(str(hints[name]))))
    return pa.schema(fields)
