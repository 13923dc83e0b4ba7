"""CalculateEmissions: the methodology applied to Arrow tables of activities, with dead letters.

Each results table leaves with the fingerprints of its inputs (``pipeline.fingerprint``).

The DoFn is a thin shell over ``pipeline.methodology.batch.calculate_batch`` (itself built on
the per-row functions); factors arrive as a side input: a ``FactorBook`` read from
``emission_factors``, pickled once into bytes (``pack_book``). The runner sizes a side input
every time it serves it from its cache, and sizing a book walks thousands of objects; bytes
are sized at once, and the process unpickles them once per book. Input the methodology
refuses becomes an ``ErrorRecord`` on the ``errors`` output, counted, and the run goes on.
"""

from __future__ import annotations

import dataclasses
import pickle
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import apache_beam as beam
import psycopg2.extensions
import pyarrow as pa
import pyarrow.compute as pc
from apache_beam import pvalue
from apache_beam.metrics import Metrics

from pipeline import editions, fingerprint, tuning
from pipeline.methodology import FactorBook
from pipeline.methodology.batch import Probes, calculate_batch
from pipeline.model import (
    ACTIVITY_TYPES,
    DEFAULT_LIMITS,
    ActivityType,
    FactorRow,
    Limits,
    activity_fields,
)
from pipeline.retry import DEFAULT_POLICY, RetryPolicy
from pipeline.store import bulk, connections, queries, tables
from transforms.read import ActivityTable
from transforms.timing import Busy

ERRORS = "errors"


def pack_book(book: FactorBook) -> bytes:
    """A factor book as the side input carries it."""
    return pickle.dumps(book, protocol=pickle.HIGHEST_PROTOCOL)


@dataclass
class _Unpacked:
    """A packed book, unpickled, with what is derived from it once per process."""

    packed: bytes
    book: FactorBook
    factor_fps: fingerprint.FactorFingerprints
    probes: dict[tuple[ActivityType, bool, Limits], Probes] = field(default_factory=dict)

    def probes_for(
        self, activity_type: ActivityType, radiative_forcing: bool, limits: Limits
    ) -> Probes:
        """The contexts' answers, kept for as long as the book is the same. Shared by the
        worker threads: an answer computed twice at the same time is the same answer."""
        key = (activity_type, radiative_forcing, limits)
        if key not in self.probes:
            with _LOCK:
                if key not in self.probes:
                    self.probes[key] = Probes(activity_type, self.book, radiative_forcing, limits)
        return self.probes[key]


_LOCK = threading.Lock()
_CURRENT: list[_Unpacked] = []  # the last book this process unpacked


def _unpacked(packed: bytes) -> _Unpacked:
    """The unpacked book of ``packed``: made once per process and book, not per DoFn (each
    worker thread has its own DoFn per activity type)."""
    with _LOCK:
        if _CURRENT and (_CURRENT[0].packed is packed or _CURRENT[0].packed == packed):
            return _CURRENT[0]
        book = pickle.loads(packed)
        current = _Unpacked(
            packed,
            book,
            fingerprint.FactorFingerprints(fingerprint.factor_fingerprints(book.rows())),
        )
        _CURRENT[:] = [current]
        return current


@beam.typehints.with_output_types(bytes)
class ReadFactorsFn(beam.DoFn):
    """Reads the factors in force from ``emission_factors`` once; emits the packed FactorBook."""

    def __init__(
        self,
        database_url: str,
        retry_policy: RetryPolicy = DEFAULT_POLICY,
        pins: dict[str, str] | None = None,
        schema: str = tables.DEFAULT_SCHEMA,
    ) -> None:
        self._database_url = database_url
        self._schema = schema
        self._retry_policy = retry_policy
        self._pins = dict(pins or {})  # factor set → the only edition of it to use

    def process(self, _: Any) -> Iterator[bytes]:
        rows = connections.with_connection(
            self._database_url, "reading emission_factors", self._read, self._retry_policy
        )
        yield pack_book(FactorBook.from_rows(rows))

    def _read(self, conn: psycopg2.extensions.connection) -> list[FactorRow]:
        if self._pins:
            rows = editions.read_all_factor_rows(conn, self._schema)
            return editions.choose_factor_rows(rows, self._pins)
        return queries.read_factor_rows(conn, self._schema)


@beam.typehints.with_input_types(ActivityTable, bytes)
@beam.typehints.with_output_types(pa.Table)
class CalculateFn(beam.DoFn):
    """One table of activities → a results table, and dead letters on ``errors``.

    Any activity type: each ``ActivityTable`` says its own. Counted per type. ``limits``: the
    run's plausibility bounds; a value above one is a dead letter."""

    def __init__(self, radiative_forcing: bool = True, limits: Limits = DEFAULT_LIMITS) -> None:
        self._radiative_forcing = radiative_forcing
        self._limits = limits

    def setup(self) -> None:
        tuning.tune_process()
        self._computed = {t: Metrics.counter("calculate", f"{t}_computed") for t in ACTIVITY_TYPES}
        self._errors = {t: Metrics.counter("calculate", f"{t}_errors") for t in ACTIVITY_TYPES}
        self._busy = Busy("calculate")
        self._packed: bytes | None = None
        self._unpacked: _Unpacked

    def _unpack(
        self, packed: bytes, activity_type: ActivityType
    ) -> tuple[FactorBook, Probes, fingerprint.FactorFingerprints]:
        """The book, its probes and its rows' fingerprints (shared by the process's DoFns)."""
        if packed is not self._packed:
            self._unpacked = _unpacked(packed)
            self._packed = packed
        probes = self._unpacked.probes_for(activity_type, self._radiative_forcing, self._limits)
        return self._unpacked.book, probes, self._unpacked.factor_fps

    def process(self, element: ActivityTable, packed: bytes) -> Iterator[Any]:
        """``element``: a table as read (the activity columns and ``activity_version``);
        ``packed``: the side input's factor book (``pack_book``)."""
        with self._busy():
            results, refused = self._calculate(element, packed)
        if results is not None:
            yield results
        for error in refused:
            yield pvalue.TaggedOutput(ERRORS, error)

    def _calculate(
        self, element: ActivityTable, packed: bytes
    ) -> tuple[pa.Table | None, list[Any]]:
        """The results table (None when every row was refused) and the dead letters."""
        activity_type, activities = element.activity_type, element.table
        book, probes, factor_fps = self._unpack(packed, activity_type)
        # The row versions (and whether a result is to be replaced) travel beside the
        # calculation, onto the results and the dead letters.
        versions = activities.column(queries.VERSION_COLUMN)
        stored = activities.column(queries.STORED_COLUMN)
        ids = activities.column("id")
        activities = activities.drop([queries.VERSION_COLUMN, queries.STORED_COLUMN])
        outcome = calculate_batch(
            activity_type,
            activities,
            book,
            radiative_forcing=self._radiative_forcing,
            limits=self._limits,
            probes=probes,
            fields=tables.RESULT_COLUMNS,  # what is stored; not the factors' descriptions
        )
        self._computed[activity_type].inc(outcome.results.num_rows)
        self._errors[activity_type].inc(len(outcome.errors))
        results = None
        if outcome.results.num_rows:
            # Each result carries the fingerprints of its input row and factor rows, the
            # version of that row, and whether it replaces the result of an older version.
            results = fingerprint.with_fingerprints(
                outcome.results,
                activities,
                activity_fields(activity_type),
                factor_fps,
            )
            at = pc.index_in(results.column("activity_id"), value_set=ids.combine_chunks())
            results = results.append_column(
                tables.VERSION_COLUMN, versions.combine_chunks().take(at)
            ).append_column(bulk.REPLACES_COLUMN, stored.combine_chunks().take(at))
        if not outcome.errors:
            return results, []
        # The versions of the refused rows only (not the whole batch as Python objects).
        refused = pa.array([e.activity_id for e in outcome.errors], ids.type)
        at = pc.index_in(refused, value_set=ids.combine_chunks())
        return results, [
            dataclasses.replace(error, activity_version=version)
            for error, version in zip(
                outcome.errors, versions.combine_chunks().take(at).to_pylist(), strict=True
            )
        ]


@beam.typehints.with_input_types(ActivityTable)
@beam.typehints.with_output_types(pa.Table)
class CalculateCarriedFn(CalculateFn):
    """``CalculateFn`` for tables that carry the factor book (``ActivityTable.factors``)."""

    def process(self, element: ActivityTable) -> Iterator[Any]:  # type: ignore[override]
        assert element.factors is not None, "the read hands the factor book on"
        yield from super().process(element, element.factors)


class CalculateEmissions(beam.PTransform):
    """``ActivityTable`` elements → results tables (main) and dead letters (``errors``)."""

    def __init__(
        self, factors: Any, radiative_forcing: bool = True, limits: Limits = DEFAULT_LIMITS
    ) -> None:
        super().__init__()
        self._factors = factors
        self._radiative_forcing = radiative_forcing
        self._limits = limits

    def expand(self, activities: Any) -> Any:
        # factors None: each table carries the book (the read took it as its side input).
        if self._factors is None:
            fn: CalculateFn = CalculateCarriedFn(self._radiative_forcing, self._limits)
            side = []
        else:
            fn = CalculateFn(self._radiative_forcing, self._limits)
            side = [beam.pvalue.AsSingleton(self._factors)]
        return activities | "Calculate" >> beam.ParDo(fn, *side).with_outputs(
            ERRORS, main="results"
        )
