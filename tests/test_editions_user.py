"""Factor editions a user loads: a revised file becomes a new edition beside the one it
revises, an edition once loaded never changes, and a restatement pinned to the new edition
keeps every value it replaces (issue 23, item 5)."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest
import sqlalchemy as sa

from audit import restate, verify
from ops import admin
from ops.seed import seed
from pipeline import editions, factors
from pipeline.model import FactorRow
from pipeline.store import tables
from tests.test_end_to_end import run_pipeline

REVISED = "eGRID2023 rev2, CAMX corrected"
#: The shipped CAMX total output rate (lb CO2e/MWh), and the revised files' values.
CAMX_SHIPPED = "429.983"
CAMX_REVISED = "451.250"
CAMX_OTHER = "460.000"


def revised_egrid(tmp_path: Path, camx: str, name: str = "egrid_revised.csv") -> Path:
    """The shipped eGRID file with CAMX's CO2e rate changed, every other byte the same."""
    lines = factors.EGRID_FILE.read_text(encoding="utf-8").splitlines(keepends=True)
    (at,) = [i for i, line in enumerate(lines) if line.startswith("subregion,CAMX,")]
    assert f",{CAMX_SHIPPED}," in lines[at]
    lines[at] = lines[at].replace(f",{CAMX_SHIPPED},", f",{camx},", 1)
    out = tmp_path / name
    out.write_text("".join(lines), encoding="utf-8")
    return out


def rows(engine: sa.Engine, query: str, **params: object) -> list[tuple]:
    with engine.connect() as conn:
        return [tuple(r) for r in conn.execute(sa.text(query), params)]


def factor_count(engine: sa.Engine) -> int:
    return int(rows(engine, "SELECT count(*) FROM emissions.emission_factors")[0][0])


def load(url: str, path: Path, *extra: str) -> list[str]:
    return ["load-factors", "--database-url", url, "--kind", "egrid", "--file", str(path), *extra]


def test_a_revised_egrid_file_is_a_new_edition_and_restating_onto_it_keeps_the_old_values(
    database_url: str, engine: sa.Engine, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    seed(engine, 1500, seed_value=23)
    run_pipeline(database_url, capsys, "--activity-types", "electricity")
    camx = {
        i: (kwh, kg)
        for i, kwh, kg in rows(
            engine,
            "SELECT r.activity_id, r.activity_amount, r.kg_co2e FROM emissions.emission_results r "
            "JOIN emissions.emission_factors f ON f.id = r.factor_id "
            "WHERE f.factor_set = 'egrid_subregion' AND f.key = 'CAMX'",
        )
    }
    others = dict(
        rows(
            engine,
            "SELECT r.activity_id, r.kg_co2e FROM emissions.emission_results r "
            "JOIN emissions.emission_factors f ON f.id = r.factor_id "
            "WHERE NOT (f.factor_set = 'egrid_subregion' AND f.key = 'CAMX')",
        )
    )
    assert len(camx) >= 10 and len(others) > 300
    old_value = next(r.value for r in factors.parse_egrid() if r.key == "CAMX")
    revised = revised_egrid(tmp_path, CAMX_REVISED)
    new_value = next(r.value for r in factors.parse_egrid(revised) if r.key == "CAMX")
    loaded_before = factor_count(engine)

    # Without --edition, the revised file would change the shipped edition: refused.
    assert admin.main(load(database_url, revised)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        "error: refused: the file differs from the loaded edition 'eGRID2023 rev2': "
        f"egrid_subregion CAMX 2023: {old_value!r} → {new_value!r}; give --edition NAME to "
        "load it as a new edition; nothing was loaded"
    ]
    assert factor_count(engine) == loaded_before

    # As a new edition: every row of the file, beside the shipped ones.
    assert admin.main(load(database_url, revised, "--edition", REVISED)) == 0
    out = json.loads(capsys.readouterr().out)
    file_rows = len(factors.parse_egrid(revised))
    assert (out["editions"], out["factor_rows_added"], out["already_loaded"]) == (
        [REVISED],
        file_rows,
        False,
    )
    assert factor_count(engine) == loaded_before + file_rows
    # The newest loaded row per set, key and year is in force by default.
    assert editions.current_editions(engine)["egrid_subregion"] == [REVISED]

    # The same file again adds nothing, and says so.
    assert admin.main(load(database_url, revised, "--edition", REVISED)) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["factor_rows_added"] == 0
    assert json.loads(captured.out)["already_loaded"] is True
    assert f"is loaded already as {REVISED!r}: 0 rows added" in captured.err

    # Another revision under the same name: refused, naming the row and both values.
    other = revised_egrid(tmp_path, CAMX_OTHER, "egrid_other.csv")
    other_value = next(r.value for r in factors.parse_egrid(other) if r.key == "CAMX")
    assert admin.main(load(database_url, other, "--edition", REVISED)) == 2
    other_err = capsys.readouterr().err
    assert (
        f"differs from the loaded edition {REVISED!r}: egrid_subregion CAMX 2023: "
        f"{new_value!r} → {other_value!r}; choose another --edition NAME; nothing was loaded"
    ) in other_err
    assert factor_count(engine) == loaded_before + file_rows

    # Restated onto the new edition, by the kind's name: every CAMX result changes, its old
    # value kept in history; the others keep their values.
    pin = ["--pin", f"egrid={REVISED}", "--activity-types", "electricity"]
    assert restate.main(["--database-url", database_url, *pin]) == 0
    outcome = json.loads(capsys.readouterr().out)
    rid = outcome["restatement_id"]
    history = dict(
        rows(
            engine,
            "SELECT activity_id, kg_co2e FROM emissions.emission_results_history "
            "WHERE restatement_id = :rid AND reason = 'restatement'",
            rid=rid,
        )
    )
    current = dict(
        rows(
            engine,
            "SELECT r.activity_id, r.kg_co2e FROM emissions.emission_results r "
            "WHERE r.activity_type = 'electricity'",
        )
    )
    for activity_id, (kwh, kg) in camx.items():
        assert kg == kwh * old_value
        assert history[activity_id] == kg
        assert current[activity_id] == kwh * new_value
        assert current[activity_id] > kg
    for activity_id, kg in others.items():
        assert current[activity_id] == kg
    # Every result now names a row of the edition in force (eGRID ones the new edition's).
    assert rows(
        engine,
        "SELECT DISTINCT f.edition FROM emissions.emission_results r JOIN "
        "emissions.emission_factors f ON f.id = r.factor_id WHERE f.factor_set LIKE 'egrid%'",
    ) == [(REVISED,)]
    kg_before = sum(kg for _, kg in camx.values())
    kg_after = sum(current[i] for i in camx)
    assert outcome["diff"]["new_kg"] - outcome["diff"]["old_kg"] == pytest.approx(
        kg_after - kg_before, rel=1e-9
    )
    assert verify.verify(engine, ["electricity"], sample=None).by_status == {}


def test_a_bad_edition_name_is_refused_and_nothing_is_loaded(
    database_url: str, engine: sa.Engine, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = factor_count(engine)
    assert admin.main(load(database_url, factors.EGRID_FILE, "--edition", "  ")) == 2
    assert "--edition: an edition name is 1 to 200 printable characters" in capsys.readouterr().err
    assert factor_count(engine) == before


def test_a_pin_may_name_a_kind_of_file_for_all_of_its_sets() -> None:
    loaded = {
        "egrid_subregion": {"eGRID2023 rev2", "X"},
        "egrid_us": {"eGRID2023 rev2", "X"},
        "desnz_air": {"2025 flat file"},
    }
    assert editions.resolve_pins(loaded, {"egrid": "X"}) == {
        "egrid_subregion": "X",
        "egrid_us": "X",
    }
    # A set named exactly is pinned alone; a kind pins only its sets that have the edition.
    assert editions.resolve_pins(loaded, {"egrid_us": "X"}) == {"egrid_us": "X"}
    assert editions.resolve_pins({**loaded, "egrid_us": {"eGRID2023 rev2"}}, {"egrid": "X"}) == {
        "egrid_subregion": "X"
    }
    with pytest.raises(editions.EditionError, match="egrid has no edition 'Y'"):
        editions.resolve_pins(loaded, {"egrid": "Y"})
    with pytest.raises(editions.EditionError, match="no factor set 'nope' is loaded"):
        editions.resolve_pins(loaded, {"nope": "X"})


def test_a_file_differs_by_a_changed_field_or_an_added_row_not_by_a_missing_one() -> None:
    shipped = [
        FactorRow("s", "A", 2023, 1.0, "u", "src", "E", "ref 1"),
        FactorRow("s", "B", 2023, 2.0, "u", "src", "E", "ref 2"),
    ]
    same_file_elsewhere = [
        FactorRow("s", "A", 2023, 1.0, "u", "src", "E", "other.csv line 2"),
    ]
    assert editions.differences(shipped, same_file_elsewhere) == []
    changed = [
        FactorRow("s", "A", 2023, 1.0, "u", "src", "E", "r", kg_co2=0.5),
        FactorRow("s", "B", 2023, 2.5, "u", "src", "E", "r"),
        FactorRow("s", "C", 2023, 3.0, "u", "src", "E", "r"),
        FactorRow("s", "C", 2023, 3.0, "u", "src", "new edition", "r"),
    ]
    found = [str(d) for d in editions.differences(shipped, changed)]
    assert found == [
        "s A 2023: kg_co2 None → 0.5",
        "s B 2023: 2.0 → 2.5",
        "s C 2023: (not in it) → 3.0",
    ]


def test_two_loads_of_one_edition_name_take_turns(
    database_url: str, engine: sa.Engine, tmp_path: Path
) -> None:
    """A load waits for one in progress, then compares with what that one stored: of two
    different files loaded under one name at once, the second is refused."""
    first = factors.with_edition(factors.parse_egrid(revised_egrid(tmp_path, CAMX_REVISED)), "E")
    second = factors.with_edition(
        factors.parse_egrid(revised_egrid(tmp_path, CAMX_OTHER, "other.csv")), "E"
    )
    outcome: list[object] = []
    holder = engine.connect()
    try:
        with holder.begin():
            holder.execute(
                sa.text("SELECT pg_advisory_xact_lock(:k, hashtext('emissions'))"),
                {"k": editions._LOCK},
            )
            waiting = threading.Thread(
                target=lambda: outcome.append(_load_or_conflict(engine, second))
            )
            waiting.start()
            time.sleep(1.0)
            assert waiting.is_alive()  # it waits for the load in progress
            # That load: the first file, stored under the same name, committed with the lock.
            holder.execute(
                sa.insert(tables.table(tables.FACTORS_TABLE)),
                [
                    {c: getattr(r, c) for c in FactorRow.__dataclass_fields__ if c != "id"}
                    for r in first
                ],
            )
        waiting.join(timeout=30)
    finally:
        holder.close()
    (refused,) = outcome
    assert isinstance(refused, editions.EditionConflict)
    camx = [next(r.value for r in rows if r.key == "CAMX") for rows in (first, second)]
    assert [str(d) for d in refused.differences] == [
        f"egrid_subregion CAMX 2023: {camx[0]!r} → {camx[1]!r}"
    ]


def _load_or_conflict(engine: sa.Engine, rows: list[FactorRow]) -> object:
    try:
        return editions.load_edition(engine, rows)
    except editions.EditionConflict as e:
        return e
