"""Fingerprints: the column-wise implementation against the definition written out by hand, and
the stored fingerprints of a real run against the activity and factor rows they describe."""

from __future__ import annotations

import hashlib
import json
import math
import struct
from typing import Any

import pyarrow as pa
import pytest
import sqlalchemy as sa
from hypothesis import given, settings
from hypothesis import strategies as st

from ops.seed import seed
from pipeline import fingerprint, run
from pipeline.model import FactorRow, activity_fields

MASK = (1 << 64) - 1


def by_hand(values: list[Any]) -> int:
    """The docstring's definition, one value at a time, in plain Python."""
    words = []
    presence = 0
    for i, v in enumerate(values):
        if v is None:
            words.append(0)
            continue
        presence |= 1 << i
        if isinstance(v, float):
            bits = (
                0x7FF8000000000000
                if math.isnan(v)
                else struct.unpack("<Q", struct.pack("<d", v))[0]
            )
            words.append(bits)
        elif isinstance(v, bool | int):
            words.append(int(v) & MASK)
        else:
            words.append(int.from_bytes(hashlib.md5(v.encode()).digest()[:8], "little"))
    h = 0xCBF29CE484222325
    for word in [*words, presence]:
        for byte in word.to_bytes(8, "little"):
            h = ((h ^ byte) * 0x100000001B3) & MASK
    return h - (1 << 64) if h >= 1 << 63 else h  # stored as a signed bigint


rows_strategy = st.lists(
    st.tuples(
        st.one_of(st.none(), st.floats(allow_nan=True, allow_infinity=True)),
        st.one_of(st.none(), st.integers(-(2**63), 2**63 - 1)),
        st.one_of(st.none(), st.booleans()),
        st.one_of(st.none(), st.text(max_size=12)),
    ),
    min_size=1,
    max_size=40,
)


@settings(max_examples=200, deadline=None)
@given(rows_strategy)
def test_the_columnar_fingerprints_are_the_definition(rows: list[tuple[Any, ...]]) -> None:
    table = pa.table(
        {
            "f": pa.array([r[0] for r in rows], pa.float64()),
            "i": pa.array([r[1] for r in rows], pa.int64()),
            "b": pa.array([r[2] for r in rows], pa.bool_()),
            "t": pa.array([r[3] for r in rows], pa.string()),
        }
    )
    got = fingerprint.input_fingerprints(table, ["f", "i", "b", "t"]).to_pylist()
    assert got == [by_hand(list(r)) for r in rows]


def test_null_zero_and_empty_text_all_differ_and_one_field_changes_it() -> None:
    table = pa.table(
        {
            "a": pa.array([None, 0.0, -0.0, 1.0, 1.0], pa.float64()),
            "t": pa.array(["", "", "", "", None], pa.string()),
        }
    )
    fps = fingerprint.input_fingerprints(table, ["a", "t"]).to_pylist()
    assert len(set(fps)) == 5


def test_factor_fingerprints_are_the_definition_over_the_factor_rows() -> None:
    rows = [
        FactorRow(
            id=7, factor_set="egrid", key="CAMX", year=2023, value=0.2, unit="kg/kWh",
            kg_co2=0.19, kg_ch4_co2e=None, kg_n2o_co2e=0.01, basis="combustion",
            gwp_set="AR5", source="EPA", edition="eGRID2023", source_ref="x",
        ),
        FactorRow(
            id=9, factor_set="fx", key="EUR", year=2023, value=1.08, unit="USD/EUR",
            kg_co2=None, kg_ch4_co2e=None, kg_n2o_co2e=None, basis=None, gwp_set=None,
            source="BIS", edition="2024", source_ref="y",
        ),
    ]  # fmt: skip
    by_id = fingerprint.factor_fingerprints(rows)
    for r in rows:
        expected = by_hand([getattr(r, f) for f in fingerprint.FACTOR_FIELDS])
        assert by_id[r.id or 0] == expected & MASK  # factor_fingerprints keeps them unsigned
    results = pa.table(
        {
            "factor_id": pa.array([7, 9, 7, 12345], pa.int64()),
            "fx_factor_id": pa.array([None, None, 9, None], pa.int64()),
            "cpi_factor_id": pa.array([None, None, None, None], pa.int64()),
            "cpi_base_factor_id": pa.array([None, None, None, None], pa.int64()),
        }
    )
    got = fingerprint.FactorFingerprints(by_id).of_results(results).to_pylist()
    assert got == [
        by_hand([by_id[7], None, None, None]),
        by_hand([by_id[9], None, None, None]),
        by_hand([by_id[7], by_id[9], None, None]),
        by_hand([0, None, None, None]),  # an id with no row: word 0, but present
    ]


def test_a_run_stores_the_fingerprints_of_the_rows_it_read(
    database_url: str, engine: sa.Engine, capsys: pytest.CaptureFixture[str]
) -> None:
    seed(engine, 300, seed_value=5)
    assert run.main(["--database-url", database_url, "--progress-interval", "0"]) == 0
    out = capsys.readouterr().out
    assert json.loads(out[out.index("{") :])["total_processed"] > 250
    checked = 0
    with engine.connect() as conn:
        factors = {
            r.id: by_hand([getattr(r, f) for f in fingerprint.FACTOR_FIELDS])
            for r in (
                FactorRow(**row._asdict())
                for row in conn.execute(
                    sa.text(
                        "SELECT id, factor_set, key, year, value, unit, kg_co2, kg_ch4_co2e, "
                        "kg_n2o_co2e, basis, gwp_set, source, edition, source_ref "
                        "FROM emissions.emission_factors"
                    )
                )
            )
        }
        for activity_type, table in (
            ("electricity", "electricity_activities"),
            ("spend", "spend_activities"),
            ("air_travel", "air_travel_activities"),
        ):
            fields = activity_fields(activity_type)  # type: ignore[arg-type]
            found = conn.execute(
                sa.text(
                    f"SELECT {', '.join('a.' + f for f in fields)}, r.input_fingerprint, "
                    "r.factor_fingerprint, r.factor_id, r.fx_factor_id, r.cpi_factor_id, "
                    "r.cpi_base_factor_id FROM emissions.emission_results r JOIN "
                    f"emissions.{table} a "
                    "ON a.id = r.activity_id WHERE r.activity_type = :t"
                ),
                {"t": activity_type},
            ).all()
            assert found
            for row in found:
                values = [
                    v.isoformat() if hasattr(v, "isoformat") else v for v in row[: len(fields)]
                ]
                input_fp, factor_fp, *ids = row[len(fields) :]
                assert input_fp == by_hand(values)
                named = [None if i is None else factors[i] & MASK for i in ids]
                assert factor_fp == by_hand(named)
                checked += 1
    assert checked > 250
