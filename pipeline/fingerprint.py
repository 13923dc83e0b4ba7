"""Fingerprints of a result's inputs, computed column-wise beside the calculation.

Every result stores two 64-bit fingerprints (``bigint`` columns of ``emission_results``):

- ``input_fingerprint``: the activity row it was computed from;
- ``factor_fingerprint``: the factor rows it used (the emission factor and, for spend, the FX
  row and both CPI rows).

``audit.verify`` computes the same digests over the rows as they are now, with these
functions, to tell a changed input or factor row from a result that does not reproduce. They
detect change; they are not signatures (whoever can rewrite a row can rewrite its fingerprint).

The definition, which anyone can recompute by hand:

1. A row becomes a sequence of 64-bit words, one per field in the documented order, then one
   word whose bit *i* is set when field *i* is present (not NULL):

   - a float: its IEEE-754 binary64 bits (every NaN as ``0x7ff8000000000000``);
   - an integer or a boolean: its two's-complement value (``true`` = 1);
   - text (and a UUID, and a date as ``YYYY-MM-DD``): the first 8 bytes of the MD5 of its
     UTF-8 encoding, read little-endian;
   - NULL: 0 (the presence word tells it from a zero).

2. The words are written little-endian, 8 bytes each, and hashed with 64-bit FNV-1a
   (offset basis ``0xcbf29ce484222325``, prime ``0x100000001b3``). Any change to a single
   field changes the fingerprint; an unrelated change collides with probability 2^-64.

Fields: an activity's are its columns in declaration order (``pipeline/model.py``); a factor
row's are ``id, factor_set, key, year, value, unit, kg_co2, kg_ch4_co2e, kg_n2o_co2e,
edition``; a result's factor fingerprint is taken over the fingerprints of the rows named by
``factor_id, fx_factor_id, cpi_factor_id, cpi_base_factor_id`` (NULL where a type has none).
Fingerprints are stored as signed ``bigint`` (the same 64 bits).

Computed with numpy over whole Arrow columns: the run pays about a tenth of a second per
100,000 rows, and the database nothing beyond two more columns.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.model import FactorRow

FNV_OFFSET = np.uint64(0xCBF29CE484222325)
FNV_PRIME = np.uint64(0x100000001B3)
_CANONICAL_NAN = np.uint64(0x7FF8000000000000)

#: The factor row fields a factor fingerprint covers, in order.
FACTOR_FIELDS = (
    "id",
    "factor_set",
    "key",
    "year",
    "value",
    "unit",
    "kg_co2",
    "kg_ch4_co2e",
    "kg_n2o_co2e",
    "edition",
)
#: A result's factor row ids, in the order its factor fingerprint covers them.
FACTOR_ID_FIELDS = ("factor_id", "fx_factor_id", "cpi_factor_id", "cpi_base_factor_id")


@functools.lru_cache(maxsize=1 << 15)
def text_word(value: str) -> int:
    """The word of a text value: the first 8 bytes of its MD5, little-endian. (Units, regions,
    currencies, dates and airports repeat from batch to batch: each is hashed once.)"""
    return int.from_bytes(hashlib.md5(value.encode()).digest()[:8], "little")


def _words(column: pa.Array | pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray]:
    """(words, present) of one column: uint64 words, 0 where NULL."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    present = ~np.asarray(column.is_null().to_numpy(zero_copy_only=False), dtype=bool)
    typ = column.type
    if pa.types.is_floating(typ):
        values = np.asarray(column.fill_null(0.0).to_numpy(zero_copy_only=False), np.float64)
        words = values.view(np.uint64).copy()
        words[np.isnan(values)] = _CANONICAL_NAN
    elif pa.types.is_integer(typ) or pa.types.is_boolean(typ):
        filled = column.cast(pa.int64()).fill_null(0)
        words = np.asarray(filled.to_numpy(zero_copy_only=False), np.int64).view(np.uint64)
    elif pa.types.is_string(typ) or pa.types.is_large_string(typ):
        encoded = column.dictionary_encode()
        uniques = np.array(
            [text_word(v) for v in encoded.dictionary.to_pylist()] or [0], dtype=np.uint64
        )
        indices = np.asarray(encoded.indices.fill_null(0).to_numpy(zero_copy_only=False))
        words = uniques[indices.astype(np.intp)]
    else:
        raise TypeError(f"no fingerprint word for Arrow type {typ}")
    return np.where(present, words, np.uint64(0)).astype(np.uint64), present


def fnv1a(words: Sequence[np.ndarray], length: int) -> np.ndarray:
    """64-bit FNV-1a over each row's words (8 bytes each, little-endian)."""
    h = np.full(length, FNV_OFFSET, dtype=np.uint64)
    with np.errstate(over="ignore"):
        for word in words:
            # Row i's bytes, least significant first, as column i of 8 rows (one per byte).
            octets = np.ascontiguousarray(word, dtype="<u8").view(np.uint8).reshape(length, 8)
            for byte in octets.T.astype(np.uint64):
                np.bitwise_xor(h, byte, out=h)
                np.multiply(h, FNV_PRIME, out=h)
    return h


def row_fingerprints(columns: Sequence[pa.Array | pa.ChunkedArray], length: int) -> np.ndarray:
    """Fingerprints (uint64) of the rows of ``columns``: their words, then the presence word."""
    words: list[np.ndarray] = []
    presence = np.zeros(length, dtype=np.uint64)
    for i, column in enumerate(columns):
        w, present = _words(column)
        words.append(w)
        presence |= present.astype(np.uint64) << np.uint64(i)
    return fnv1a([*words, presence], length)


def as_bigint(fingerprints: np.ndarray) -> pa.Array:
    """uint64 fingerprints as the signed 64-bit values stored in ``bigint`` columns."""
    return pa.array(fingerprints.view(np.int64), type=pa.int64())


def input_fingerprints(activities: pa.Table, fields: Sequence[str]) -> pa.Array:
    """The input fingerprint of every activity row (``fields``: its columns in order)."""
    return as_bigint(row_fingerprints([activities.column(f) for f in fields], activities.num_rows))


def factor_fingerprints(rows: Iterable[FactorRow]) -> dict[int, int]:
    """Factor row id → its fingerprint (uint64 as a Python int)."""
    rows = [r for r in rows if r.id is not None]
    if not rows:
        return {}
    table = pa.table(
        {
            "id": pa.array([r.id for r in rows], pa.int64()),
            "factor_set": pa.array([r.factor_set for r in rows], pa.string()),
            "key": pa.array([r.key for r in rows], pa.string()),
            "year": pa.array([r.year for r in rows], pa.int64()),
            "value": pa.array([r.value for r in rows], pa.float64()),
            "unit": pa.array([r.unit for r in rows], pa.string()),
            "kg_co2": pa.array([r.kg_co2 for r in rows], pa.float64()),
            "kg_ch4_co2e": pa.array([r.kg_ch4_co2e for r in rows], pa.float64()),
            "kg_n2o_co2e": pa.array([r.kg_n2o_co2e for r in rows], pa.float64()),
            "edition": pa.array([r.edition for r in rows], pa.string()),
        }
    )
    fps = row_fingerprints([table.column(f) for f in FACTOR_FIELDS], table.num_rows)
    return {int(i): int(fp) for i, fp in zip(table.column("id").to_pylist(), fps, strict=True)}


class FactorFingerprints:
    """Factor fingerprints of results, looked up column-wise from the factor rows' own."""

    def __init__(self, by_id: Mapping[int, int]) -> None:
        self._ids = np.array(sorted(by_id), dtype=np.int64)
        self._fps = np.array([by_id[i] for i in sorted(by_id)], dtype=np.uint64)

    def _lookup(self, column: pa.Array | pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray]:
        """(fingerprint words, present) of a factor id column; an unknown id gives word 0."""
        if isinstance(column, pa.ChunkedArray):
            column = column.combine_chunks()
        present = ~np.asarray(column.is_null().to_numpy(zero_copy_only=False), dtype=bool)
        ids = np.asarray(
            column.cast(pa.int64()).fill_null(0).to_numpy(zero_copy_only=False), np.int64
        )
        words = np.zeros(len(ids), dtype=np.uint64)
        if len(self._ids):
            at = np.clip(np.searchsorted(self._ids, ids), 0, len(self._ids) - 1)
            known = present & (self._ids[at] == ids)
            words[known] = self._fps[at[known]]
        return words, present

    def of_results(self, results: pa.Table) -> pa.Array:
        """The factor fingerprint of every result row."""
        n = results.num_rows
        words: list[np.ndarray] = []
        presence = np.zeros(n, dtype=np.uint64)
        for i, name in enumerate(FACTOR_ID_FIELDS):
            if name in results.column_names:
                w, present = self._lookup(results.column(name))
            else:
                w, present = np.zeros(n, np.uint64), np.zeros(n, bool)
            words.append(w)
            presence |= present.astype(np.uint64) << np.uint64(i)
        return as_bigint(fnv1a([*words, presence], n))


def with_fingerprints(
    results: pa.Table,
    activities: pa.Table,
    fields: Sequence[str],
    factors: FactorFingerprints,
) -> pa.Table:
    """``results`` with ``input_fingerprint`` and ``factor_fingerprint`` appended.

    ``activities`` is the table the results were computed from (any row order; each result's
    ``activity_id`` is looked up in its ``id`` column).
    """
    inputs = input_fingerprints(activities, fields)
    at = pc.index_in(results.column("activity_id"), value_set=activities.column("id"))
    if at.null_count:
        raise ValueError("a result names an activity that is not in the table it came from")
    return results.append_column("input_fingerprint", inputs.take(at)).append_column(
        "factor_fingerprint", factors.of_results(results)
    )
