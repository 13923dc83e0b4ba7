"""The factor book: every factor row, indexed for the calculations, and the year rule.

A ``FactorBook`` is built once per run from the ``emission_factors`` rows (or the shipped
files) and handed to every calculation. It holds plain dicts of frozen dataclasses, so it
pickles cheaply and can travel as a side input.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from pipeline.model import FactorRow


def select_year(available: Iterable[int], year: int) -> int:
    """The factor year for an activity year, per docs/methodology.md §4.

    The same year if published; otherwise the nearest earlier year; otherwise the earliest
    later year. ``available`` must not be empty.
    """
    years = sorted(set(available))
    if not years:
        raise ValueError("no factor years to choose from")
    if year in years:
        return year
    earlier = [y for y in years if y < year]
    return earlier[-1] if earlier else years[0]


class FactorBook:
    """Factor rows by set, key and year, with the haul table air travel needs."""

    def __init__(
        self,
        index: Mapping[str, Mapping[str, Mapping[int, FactorRow]]],
        haul_definitions: Mapping[str, str] | None = None,
    ) -> None:
        self._index = {s: {k: dict(y) for k, y in keys.items()} for s, keys in index.items()}
        #: ISO3 territory → DESNZ haul band; None means "use the shipped table".
        self.haul_definitions = None if haul_definitions is None else dict(haul_definitions)

    @classmethod
    def from_rows(
        cls,
        rows: Iterable[FactorRow],
        *,
        haul_definitions: Mapping[str, str] | None = None,
    ) -> FactorBook:
        """Index ``rows``; two rows for the same set, key and year are refused as ambiguous."""
        index: dict[str, dict[str, dict[int, FactorRow]]] = {}
        for row in rows:
            by_year = index.setdefault(row.factor_set, {}).setdefault(row.key, {})
            if row.year in by_year:
                raise ValueError(
                    f"two factor rows for {row.factor_set} {row.key} {row.year}: "
                    f"{by_year[row.year].source_ref!r} and {row.source_ref!r}"
                )
            by_year[row.year] = row
        return cls(index, haul_definitions)

    def __len__(self) -> int:
        return sum(len(years) for keys in self._index.values() for years in keys.values())

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, FactorBook):
            return NotImplemented
        return self._index == other._index and self.haul_definitions == other.haul_definitions

    __hash__ = None  # type: ignore[assignment]  # mutable-looking container; not hashable

    def rows(self) -> list[FactorRow]:
        """Every factor row in the book."""
        return [
            r for keys in self._index.values() for years in keys.values() for r in years.values()
        ]

    def sets(self) -> frozenset[str]:
        """The factor set names present."""
        return frozenset(self._index)

    def keys(self, factor_set: str) -> frozenset[str]:
        """The keys present in ``factor_set`` (empty if the set is absent)."""
        return frozenset(self._index.get(factor_set, {}))

    def has(self, factor_set: str, key: str) -> bool:
        """Whether any year of ``factor_set``/``key`` is present."""
        return key in self._index.get(factor_set, {})

    def years(self, factor_set: str, key: str) -> tuple[int, ...]:
        """The years present for ``factor_set``/``key``, ascending."""
        return tuple(sorted(self._index.get(factor_set, {}).get(key, {})))

    def get(self, factor_set: str, key: str, year: int) -> FactorRow | None:
        """The row for exactly that year, or None."""
        return self._index.get(factor_set, {}).get(key, {}).get(year)

    def select(self, factor_set: str, key: str, year: int) -> tuple[FactorRow, bool]:
        """The row by the year rule, and whether its year differs from ``year``.

        Raises ``KeyError`` if the set has no row at all for ``key``.
        """
        by_year = self._index.get(factor_set, {}).get(key)
        if not by_year:
            raise KeyError((factor_set, key))
        chosen = select_year(by_year, year)
        return by_year[chosen], chosen != year
