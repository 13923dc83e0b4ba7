"""Data-quality levels of a result, defined once for SQL and for Arrow tables.

The levels are flags, so a result can be at more than one (a country fallback with a year
mismatch); ``exact`` is a result with none of them. ``audit.coverage`` explains each and
reports them; ``LEVEL_SQL`` counts them over stored rows, ``tally`` over a results table
before it is written (the run's write log, ``tables.WRITES_TABLE``). A test holds the two equal.

numpy and Arrow are imported where the tables are tallied: the driver uses the SQL definitions
without loading them.

Every kg CO2e sum here is checked finite (``finite_kg``): a sum that overflowed is no total,
and the write log (double precision and JSON) cannot store it. The plausibility bounds
(``pipeline.model.Limits``) keep every real sum many orders of magnitude below that.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np
    import pyarrow as pa

LEVELS = ("exact", "country_fallback", "year_mismatch", "class_substituted", "lifecycle_basis")

LEVEL_SQL = {
    "exact": "fallback IS NULL AND NOT year_mismatch AND NOT class_substituted "
    "AND coalesce(basis, '') <> 'lifecycle'",
    "country_fallback": "fallback = 'country'",
    "year_mismatch": "year_mismatch",
    "class_substituted": "class_substituted",
    "lifecycle_basis": "basis = 'lifecycle'",
}


def finite_kg(kg: float, what: str) -> float:
    """``kg``, or an ``OverflowError`` naming ``what`` when the sum is not finite."""
    if not math.isfinite(kg):
        raise OverflowError(
            f"the kg CO2e of {what} sum to {kg}, beyond what a double holds: results above "
            "the plausibility bounds (--max-kwh, --max-spend-usd, …) must have been computed"
        )
    return kg


@dataclass
class Tally:
    """Results and kg CO2e, and per level its results and kg CO2e."""

    results: int = 0
    kg_co2e: float = 0.0
    levels: dict[str, tuple[int, float]] = field(
        default_factory=lambda: {name: (0, 0.0) for name in LEVELS}
    )

    def add(self, other: Tally) -> None:
        self.results += other.results
        self.kg_co2e = finite_kg(self.kg_co2e + other.kg_co2e, "the results added up")
        for name in LEVELS:
            n, kg = self.levels[name]
            m, more = other.levels[name]
            self.levels[name] = (n + m, finite_kg(kg + more, f"the {name} results added up"))


def _bools(values: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """A boolean column as numpy, NULL as false (as SQL has it in a filter)."""
    import numpy as np
    import pyarrow.compute as pc

    return np.asarray(pc.fill_null(values, False).to_numpy(zero_copy_only=False), dtype=bool)


def masks(table: pa.Table) -> dict[str, np.ndarray]:
    """Each level's rows of a results table: ``LEVEL_SQL``, row for row."""
    import pyarrow.compute as pc

    no_fallback = _bools(pc.is_null(table.column("fallback")))
    country = _bools(pc.equal(table.column("fallback"), "country"))
    year = _bools(table.column("year_mismatch"))
    substituted = _bools(table.column("class_substituted"))
    lifecycle = _bools(pc.equal(table.column("basis"), "lifecycle"))
    return {
        "exact": no_fallback & ~year & ~substituted & ~lifecycle,
        "country_fallback": country,
        "year_mismatch": year,
        "class_substituted": substituted,
        "lifecycle_basis": lifecycle,
    }


def tally(table: pa.Table) -> dict[str, Tally]:
    """Per activity type, the ``Tally`` of a results table."""
    import numpy as np
    import pyarrow.compute as pc

    if table.num_rows == 0:
        return {}
    types = pc.dictionary_encode(table.column("activity_type")).combine_chunks()
    codes = types.indices.to_numpy(zero_copy_only=False)
    kg = np.asarray(table.column("kg_co2e").to_numpy(), dtype=np.float64)
    level_rows = masks(table)
    out: dict[str, Tally] = {}
    for code, activity_type in enumerate(types.dictionary.to_pylist()):
        mine = codes == code
        what = f"one flush's {activity_type} results"
        with np.errstate(over="ignore"):  # an overflow is reported by ``finite_kg``
            out[activity_type] = Tally(
                int(mine.sum()),
                finite_kg(float(kg[mine].sum()), what),
                {
                    name: (
                        int((rows & mine).sum()),
                        finite_kg(float(kg[rows & mine].sum()), f"{what} ({name})"),
                    )
                    for name, rows in level_rows.items()
                },
            )
    return out


def _share(part: float, whole: float) -> float:
    return part / whole if whole else 0.0


def describe_coverage(
    raw: dict[str, tuple[int, float, dict[str, tuple[int, float]]]], errors: dict[str, int]
) -> dict[str, Any]:
    per_type: dict[str, dict[str, Any]] = {}
    for t in sorted(set(raw) | set(errors)):
        results, kg, levels = raw.get(t, (0, 0.0, {n: (0, 0.0) for n in LEVELS}))
        per_type[t] = _describe(results, kg, levels, int(errors.get(t, 0)))
    total_levels = {
        n: (
            sum(raw[t][2][n][0] for t in raw),
            sum(raw[t][2][n][1] for t in raw),
        )
        for n in LEVELS
    }
    overall = _describe(
        sum(v[0] for v in raw.values()),
        sum(v[1] for v in raw.values()),
        total_levels,
        sum(errors.values(), 0),
    )
    return {"overall": overall, "by_activity_type": per_type}


def _describe(
    results: int, kg: float, levels: dict[str, tuple[int, float]], errors: int
) -> dict[str, Any]:
    records = results + errors
    out: dict[str, Any] = {"records": records, "results": results, "kg_co2e": kg}
    for name in LEVELS:
        n, level_kg = levels[name]
        out[name] = {
            "records": n,
            "kg_co2e": level_kg,
            "share_of_records": _share(n, records),
            "share_of_kg": _share(level_kg, kg),
        }
    out["errors"] = {"records": errors, "share_of_records": _share(errors, records)}
    return out
