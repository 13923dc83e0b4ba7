"""AllocateMarketBased: Scope 2 market-based, a Beam stage after the location-based results.

The electricity consumption (its stored location-based results, with facility and supplier)
and the certificates and contracts are keyed by market boundary and grouped
(``CoGroupByKey``), with the boundaries already stored, so that one whose consumption and
instruments are gone is emptied too. Each boundary is allocated whole (every reporting year of
it at once: an instrument may serve several years within the vintage window) by the pure
``pipeline.methodology.market.allocate``, and written in one transaction holding the
boundary's lock (``pipeline.store.market_results``): a year whose lines are unchanged is left
alone. Supplier rates and the residual mixes reach every boundary as side inputs; the
retirement ids claimed, over all certificates, too (an id claimed twice is refused in every
boundary but that of its first certificate). An instrument already allocated in another
boundary's stored lines, one it is still of in these inputs (its id repeated), is allocated
at most what is left of it here. The boundary's
allocation itself is ``pipeline.market_allocation``'s, which ``audit.verify`` replays.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import apache_beam as beam
import psycopg2.extensions
from apache_beam.metrics import Metrics

from pipeline.market_allocation import (
    Boundary,
    Holders,
    allocate_boundary,
    facility_markets,
    refused_rates,
    retirement_key,
    taken_elsewhere,
)
from pipeline.methodology.market import RESIDUAL_MIX_SET, boundary
from pipeline.model import Consumption, FactorRow, InstrumentKind
from pipeline.retry import DEFAULT_POLICY, RetryPolicy, call
from pipeline.store import connections, market, market_results, queries
from pipeline.store.sources import Source

_FIELDS = [f.name for f in dataclasses.fields(Consumption)]
#: Where a consumption tuple holds its market and facility.
_MARKET, _FACILITY = _FIELDS.index("market"), _FIELDS.index("facility")


def read_consumption(
    conn: psycopg2.extensions.connection, source: Source, schema: str, year_start: str
) -> list[tuple[Any, ...]]:
    """The consumption as plain tuples (``Consumption``'s fields): Beam's coder encodes them
    without pickling each element."""
    return [
        dataclasses.astuple(c) for c in market.read_consumption(conn, source, schema, year_start)
    ]


def read_kind(
    conn: psycopg2.extensions.connection, kind: InstrumentKind, source: Source
) -> list[Any]:
    return list(market.read_kind(conn, kind, source))


def read_residual_mixes(conn: psycopg2.extensions.connection, schema: str) -> list[FactorRow]:
    return [r for r in queries.read_factor_rows(conn, schema) if r.factor_set == RESIDUAL_MIX_SET]


class ReadAllFn(beam.DoFn):
    """Reads every row ``reader(conn, *args)`` returns, once (on a ``Create([None])``)."""

    def __init__(self, url: str, policy: RetryPolicy, reader: Callable[..., list[Any]], *args: Any):
        self.url, self.policy, self.reader, self.args = url, policy, reader, args

    def process(self, _: Any) -> Iterator[Any]:
        def read() -> list[Any]:
            conn = connections.connect(self.url)
            try:
                return self.reader(conn, *self.args)
            finally:
                conn.close()

        yield from call(read, what="reading the market-based inputs", policy=self.policy)


def first_claim(ids: Iterable[str]) -> str:
    return min(ids)


def holder_keys(markets: Iterable[str | None]) -> list[str]:
    """The boundaries of an instrument's markets (one, unless its id repeats)."""
    return sorted({boundary(m) for m in markets})


class AllocateBoundaryFn(beam.DoFn):
    """Allocates one boundary and writes it (module docstring); yields what it wrote."""

    def __init__(
        self,
        url: str,
        schema: str,
        run_id: str,
        choices: market_results.Choices,
        policy: RetryPolicy,
    ):
        self.url, self.schema, self.run_id = url, schema, run_id
        self.choices, self.policy = choices, policy
        self.conn: psycopg2.extensions.connection | None = None
        self.written = Metrics.counter("market_based", "lines_written")
        self.refused = Metrics.counter("market_based", "instruments_refused")

    def setup(self) -> None:
        self.conn = None

    def _connection(self) -> psycopg2.extensions.connection:
        if self.conn is None or self.conn.closed:
            self.conn = connections.connect(self.url)
        return self.conn

    def teardown(self) -> None:
        if self.conn is not None:
            self.conn.close()

    def process(
        self,
        element: tuple[str, Mapping[str, Iterable[Any]]],
        rates: Sequence[Any],
        mixes: Sequence[FactorRow],
        sites: Sequence[tuple[str, str]],
        claims: Mapping[str, str],
        of: Holders,
    ) -> Iterator[tuple[str, market_results.Written]]:
        key, groups = element
        b = Boundary(
            key,
            [Consumption(*c) for c in groups["consumption"]],
            list(groups["certificates"]),
            list(groups["contracts"]),
            rates,
            mixes,
            facility_markets(sites),
            claims,
        )

        def write() -> market_results.Written:
            conn = self._connection()
            try:
                with conn.cursor() as cur:
                    market_results.lock(cur, self.schema, key)
                    held = market_results.held_elsewhere(cur, self.schema, key, b.instruments())
                    taken = taken_elsewhere(key, held, of)
                    lines, refused = allocate_boundary(b, taken, self.choices)
                    written = market_results.write_boundary(
                        cur, self.schema, key, lines, b.digests(), self.run_id
                    )
                    market_results.write_refused(
                        cur, self.schema, key, refused, self.run_id, written
                    )
                conn.commit()
                return written
            except BaseException:
                if not conn.closed:
                    conn.rollback()
                raise

        written = call(write, what=f"writing market boundary {key!r}", policy=self.policy)
        self.written.inc(written.lines)
        self.refused.inc(written.refused)
        yield key, written


class RefuseRatesFn(beam.DoFn):
    """The supplier rates refused (they serve every boundary: kept once, boundary NULL)."""

    def __init__(self, url: str, schema: str, run_id: str, policy: RetryPolicy):
        self.url, self.schema, self.run_id, self.policy = url, schema, run_id, policy

    def process(self, _: Any, rates: Sequence[Any]) -> Iterator[tuple[str, Any]]:
        refused = refused_rates(rates)

        def write() -> market_results.Written:
            conn = connections.connect(self.url)
            try:
                with conn.cursor() as cur:
                    market_results.lock(cur, self.schema, market_results.RATES_BOUNDARY)
                    done = market_results.write_refused(
                        cur,
                        self.schema,
                        market_results.RATES_BOUNDARY,
                        refused,
                        self.run_id,
                    )
                conn.commit()
                return done
            finally:
                conn.close()

        yield "", call(write, what="writing the refused supplier rates", policy=self.policy)


class AllocateMarketBased(beam.PTransform):
    """The stage (module docstring): outputs (boundary, what its write did)."""

    def __init__(
        self,
        url: str,
        schema: str,
        run_id: str,
        electricity: Source,
        instruments: Mapping[InstrumentKind, Source],
        choices: market_results.Choices,
        stored: Sequence[str],
        policy: RetryPolicy = DEFAULT_POLICY,
    ):
        super().__init__()
        self.url, self.schema, self.run_id = url, schema, run_id
        self.electricity, self.instruments = electricity, dict(instruments)
        self.choices, self.stored, self.policy = choices, list(stored), policy

    def _read(self, p: beam.Pipeline, label: str, reader: Callable[..., Any], *args: Any) -> Any:
        return (
            p
            | f"Start{label}" >> beam.Create([None])
            | f"Read{label}" >> beam.ParDo(ReadAllFn(self.url, self.policy, reader, *args))
        )

    def _kind(self, p: beam.Pipeline, kind: InstrumentKind, label: str) -> Any:
        source = self.instruments.get(kind)
        if source is None:
            return p | f"No{label}" >> beam.Create([])
        return self._read(p, label, read_kind, kind, source)

    def expand(self, p: beam.pvalue.PBegin) -> Any:
        pipeline = p.pipeline
        consumption = self._read(
            pipeline,
            "Consumption",
            read_consumption,
            self.electricity,
            self.schema,
            self.choices.year_start,
        )
        certificates = self._kind(pipeline, "certificates", "Certificates")
        contracts = self._kind(pipeline, "contracts", "Contracts")
        rates = beam.pvalue.AsList(self._kind(pipeline, "supplier_rates", "SupplierRates"))
        mixes = self._read(pipeline, "ResidualMixes", read_residual_mixes, self.schema)
        sites = (
            consumption
            | "WithFacility" >> beam.Filter(lambda c: c[_FACILITY] is not None)
            | "FacilityMarket" >> beam.Map(lambda c: (c[_FACILITY], c[_MARKET]))
            | "DistinctSites" >> beam.Distinct()
        )
        claims = (
            certificates
            | "WithRetirement" >> beam.Filter(lambda c: retirement_key(c) != "")
            | "ByRetirement" >> beam.Map(lambda c: (retirement_key(c), str(c.id)))
            | "FirstClaim" >> beam.CombinePerKey(first_claim)  # type: ignore[arg-type]
        )
        of = (
            (
                certificates
                | "CertificateOf" >> beam.Map(lambda c: (("certificates", str(c.id)), c.market)),
                contracts
                | "ContractOf" >> beam.Map(lambda c: (("contracts", str(c.id)), c.market)),
            )
            | "Instruments" >> beam.Flatten()
            | "InstrumentMarkets" >> beam.GroupByKey()
            | "Holders" >> beam.MapTuple(lambda ident, markets: (ident, holder_keys(markets)))
        )
        grouped = {
            "consumption": consumption
            | "ConsumptionByBoundary" >> beam.Map(lambda c: (boundary(c[_MARKET]), c)),
            "certificates": certificates
            | "CertificatesByBoundary" >> beam.Map(lambda c: (boundary(c.market), c)),
            "contracts": contracts
            | "ContractsByBoundary" >> beam.Map(lambda c: (boundary(c.market), c)),
            "stored": pipeline
            | "StoredBoundaries" >> beam.Create([(b, None) for b in self.stored]),
        } | "ByBoundary" >> beam.CoGroupByKey()
        written = grouped | "AllocateAndWrite" >> beam.ParDo(
            AllocateBoundaryFn(self.url, self.schema, self.run_id, self.choices, self.policy),
            rates,
            beam.pvalue.AsList(mixes),
            beam.pvalue.AsList(sites),
            beam.pvalue.AsDict(claims),
            beam.pvalue.AsDict(of),
        )
        refused_rates = (
            pipeline
            | "StartRates" >> beam.Create([None])
            | "RefuseRates"
            >> beam.ParDo(RefuseRatesFn(self.url, self.schema, self.run_id, self.policy), rates)
        )
        return (written, refused_rates) | "Written" >> beam.Flatten()
