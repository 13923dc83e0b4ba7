"""Adoption: the pipeline on a database a team already has, as a least-privilege role.

Debian's PostgreSQL 15 over TCP, TLS only, scram passwords (``tests.tls_server``). The
application's schema (``examples/app_schema.sql``: its own table and column names, UUID keys,
numeric and enum columns, its own ``emission_results``) is filled with seeded activities; an
administrator runs ``examples/grants.sql``; the pipeline's role then follows docs/adoption.md's
recipe with ``examples/app_sources.toml``: check the sources, ``ops.admin init``, run. The
results must equal, row for row, those of the same data in the pipeline's own tables (another
schema of the same database), and every application table must be unchanged, rows and row
versions (``xmin``) included. No password may show in a process list, a log or the runs table.
"""

from __future__ import annotations

import datetime
import json
import os
import secrets
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psycopg2
import psycopg2.extras
import psycopg2.sql
import pytest

from ops.seed import generate
from pipeline.model import ActivityType

if TYPE_CHECKING:
    from tests.tls_server import TlsServer

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
SOURCES = EXAMPLES / "app_sources.toml"
COUNTS: dict[ActivityType, int] = {"electricity": 240, "spend": 210, "air_travel": 150}
TO_KWH = {"Wh": 0.001, "kWh": 1.0, "MWh": 1000.0, "GWh": 1e6, "MJ": 1 / 3.6, "GJ": 1000 / 3.6}
CLASSES = {
    "economy": "ECONOMY",
    "premium_economy": "PREMIUM",
    "business": "BUSINESS",
    "first": "FIRST",
    "average": "ANY",
}
APP_TABLES = (
    "app.electricity_activities",
    "app.goods_services_activities",
    "app.air_travel_activities",
    "app.emission_results",
)
#: The same data in the pipeline's own tables, mapped by hand in SQL (not through sources).
REFERENCE_SQL = """
INSERT INTO reference.electricity_activities (id, quantity, unit, region, country, activity_date)
SELECT id, consumption_kwh, 'kWh', grid_region, country_code, reading_date
FROM app.electricity_activities;
INSERT INTO reference.spend_activities (id, amount, currency, naics_code, activity_date)
SELECT id, amount, upper(currency_code), naics, purchase_date FROM app.goods_services_activities;
INSERT INTO reference.air_travel_activities
    (id, origin, destination, cabin_class, passengers, return_trip, activity_date)
SELECT id, origin_iata, destination_iata,
       CASE travel_class WHEN 'ECONOMY' THEN 'economy' WHEN 'PREMIUM' THEN 'premium_economy'
            WHEN 'BUSINESS' THEN 'business' WHEN 'FIRST' THEN 'first' WHEN 'ANY' THEN 'average'
       END,
       travellers, is_return, (departure_date AT TIME ZONE 'UTC')::date
FROM app.air_travel_activities;
"""
#: A result's values (everything but which run wrote it, and when).
COMPARED = (
    "activity_type, activity_id, scope, category, kg_co2e, kg_co2, kg_ch4_co2e, kg_n2o_co2e, "
    "method, activity_amount, activity_unit, factor_id, factor_value, basis, region_level, "
    "fallback, year_mismatch, class_substituted, distance_km, haul, cabin_class, "
    "radiative_forcing, exchange_rate, fx_factor_id, cpi_deflator, cpi_factor_id, "
    "cpi_base_factor_id, input_fingerprint, factor_fingerprint"
)


@dataclass(frozen=True)
class App:
    server: TlsServer
    database: str
    role: str
    password: str
    workdir: Path

    def url(self, user: str | None = None, password: str | None = None) -> str:
        return self.server.url(user or self.role, password or self.password, self.database)

    def admin(self) -> psycopg2.extensions.connection:
        return self.server.connect(self.database)

    def libpq_env(self) -> dict[str, str]:
        """The role's connection as libpq variables, its password in a ~/.pgpass-style file."""
        return {
            "PGHOST": self.server.host,
            "PGPORT": str(self.server.port),
            "PGUSER": self.role,
            "PGDATABASE": self.database,
            "PGSSLMODE": "verify-full",
            "PGSSLROOTCERT": str(self.server.ca_file),
            "PGPASSFILE": str(self.workdir / "pgpass"),
        }

    def service_env(self) -> dict[str, str]:
        """The role's connection as a service (a service file), its password in a pgpass."""
        return {
            "PGSERVICEFILE": str(self.workdir / "pg_service.conf"),
            "PGSERVICE": "carbon",
            "PGPASSFILE": str(self.workdir / "pgpass"),
        }


def _app_rows(count_seed: int) -> dict[str, list[tuple[Any, ...]]]:
    """Seeded activities (bad ones included) in the application's layout."""
    out: dict[str, list[tuple[Any, ...]]] = {}
    rows: list[tuple[Any, ...]] = []
    for key, q, unit, region, country, day in generate(
        "electricity", COUNTS["electricity"], count_seed, 1, "uuid"
    ):
        kwh = q * TO_KWH[unit] if isinstance(q, float) and unit in TO_KWH else q
        if isinstance(kwh, float) and abs(kwh) < 1e14 and kwh == kwh:
            kwh = round(kwh, 3)
        elif isinstance(kwh, float):
            kwh = None  # beyond numeric(18, 3): the application could not have stored it
        rows.append((key, kwh, region, (country or "")[:2] or None, day))
    out["electricity"] = rows
    rows = []
    for key, amount, currency, naics, day in generate(
        "spend", COUNTS["spend"], count_seed, 1, "uuid"
    ):
        ok = isinstance(amount, float) and amount == amount and abs(amount) < 1e11
        rows.append(
            (
                key,
                round(amount, 2) if ok else None,
                currency.lower() if currency and len(currency) <= 3 else None,
                naics if naics and len(naics) <= 6 else None,
                day,
            )
        )
    out["spend"] = rows
    rows = []
    for key, origin, destination, cabin, passengers, back, day, _ in generate(
        "air_travel", COUNTS["air_travel"], count_seed, 1, "uuid"
    ):
        departure = (
            datetime.datetime.combine(day, datetime.time(9, 30), tzinfo=datetime.UTC)
            if day is not None
            else None
        )
        fits = passengers is None or -32768 <= passengers <= 32767
        rows.append(
            (
                key,
                (origin or "")[:3] or None,
                (destination or "")[:3] or None,
                CLASSES.get(cabin or ""),
                passengers if fits else None,
                back,
                departure,
            )
        )
    out["air_travel"] = rows
    return out


def _fill(conn: psycopg2.extensions.connection) -> None:
    rows = _app_rows(11)
    with conn.cursor() as cur:
        psycopg2.extras.execute_values(
            cur,
            "INSERT INTO app.electricity_activities (id, consumption_kwh, grid_region, "
            "country_code, reading_date) VALUES %s",
            rows["electricity"],
        )
        psycopg2.extras.execute_values(
            cur,
            "INSERT INTO app.goods_services_activities (id, amount, currency_code, naics, "
            "purchase_date) VALUES %s",
            rows["spend"],
        )
        psycopg2.extras.execute_values(
            cur,
            "INSERT INTO app.air_travel_activities (id, origin_iata, destination_iata, "
            "travel_class, travellers, is_return, departure_date) VALUES %s",
            rows["air_travel"],
        )
        cur.execute(
            "INSERT INTO app.emission_results VALUES (%s, %s, 'electricity', 12.5, now())",
            (str(uuid.uuid4()), rows["electricity"][0][0]),
        )


@pytest.fixture(scope="module")
def app(tls_server: TlsServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[App]:
    """The application's database, filled, with the pipeline's role set up by grants.sql."""
    suffix = uuid.uuid4().hex[:8]
    database, role = f"app_{suffix}", f"carbon_{suffix}"
    password = "pw-" + secrets.token_urlsafe(12)
    tls_server.create_database(database, tls_server.superuser)
    workdir = tmp_path_factory.mktemp("adoption")
    found = App(tls_server, database, role, password, workdir)
    conn = found.admin()
    try:
        with conn.cursor() as cur:
            cur.execute((EXAMPLES / "app_schema.sql").read_text())
            _fill(conn)
            cur.execute((EXAMPLES / "grants.sql").read_text().replace("carbon", role))
            cur.execute(
                psycopg2.sql.SQL("ALTER ROLE {} PASSWORD {}").format(
                    psycopg2.sql.Identifier(role), psycopg2.sql.Literal(password)
                )
            )
    finally:
        conn.close()
    tls_server.write_client_files(workdir, "carbon", database, role, password)
    yield found


def _command(
    args: list[str], env: dict[str, str], timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    """``python -m …`` as a user would run it, with only the given environment (no PG* of
    the test process)."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("PG", "EMISSIONS_"))}
    return subprocess.run(
        [sys.executable, "-m", *args],
        cwd=ROOT,
        env={**clean, "PYTHONPATH": str(ROOT), **env},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _watched_run(args: list[str], env: dict[str, str], password: str) -> tuple[int, str, str]:
    """Runs ``python -m …`` and reads every process's command line while it runs: the
    password must never be in one. Returns (exit code, stdout, stderr)."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("PG", "EMISSIONS_"))}
    proc = subprocess.Popen(
        [sys.executable, "-m", *args],
        cwd=ROOT,
        env={**clean, "PYTHONPATH": str(ROOT), **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    looked = 0
    deadline = time.monotonic() + 300
    while proc.poll() is None and time.monotonic() < deadline:
        for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
            try:
                text = cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            assert password not in text, f"a password in a command line: {cmdline}"
            looked += 1
        time.sleep(0.05)
    out, err = proc.communicate(timeout=60)
    assert looked > 0
    return proc.returncode, out, err


def _checksums(conn: psycopg2.extensions.connection) -> dict[str, str]:
    """Per application table: its columns, and every row with its version (xmin)."""
    found = {}
    with conn.cursor() as cur:
        for table in APP_TABLES:
            cur.execute(
                "SELECT string_agg(attname || ' ' || format_type(atttypid, atttypmod), ', ' "
                "ORDER BY attnum) FROM pg_attribute WHERE attrelid = %s::regclass "
                "AND attnum > 0 AND NOT attisdropped",
                (table,),
            )
            (columns,) = cur.fetchone()
            cur.execute(
                psycopg2.sql.SQL(
                    "SELECT count(*), md5(coalesce(string_agg(t.xmin::text || ':' || t::text, "
                    "'|' ORDER BY t::text), '')) FROM {} t"
                ).format(psycopg2.sql.Identifier(*table.split(".")))
            )
            count, digest = cur.fetchone()
            found[table] = f"{columns} / {count} rows / {digest}"
    return found


def test_a_broken_sources_file_is_refused_whole_and_nothing_is_written(
    app: App, tmp_path: Path
) -> None:
    broken = tmp_path / "broken.toml"
    broken.write_text(
        SOURCES.read_text()
        .replace('"app.goods_services_activities"', '"app.no_such_table"')
        .replace('quantity = "consumption_kwh"', 'quantity = "grid_region"')
        .replace('passengers = "travellers"', 'passengers = "nobody"')
        .replace("[air_travel.fields]", '[air_travel.fields]\nsneaky = "x"')
    )
    done = _command(["ops.admin", "init", "--sources", str(broken)], app.libpq_env())
    assert done.returncode == 2, done.stderr
    # Every problem at once, by name; the shape problem (an unknown field) comes first, alone,
    # since the file is not read against the database until its shape is right.
    assert "sneaky" in done.stderr
    broken.write_text(broken.read_text().replace('sneaky = "x"\n', ""))
    done = _command(["ops.admin", "init", "--sources", str(broken)], app.libpq_env())
    assert done.returncode == 2, done.stderr
    assert "3 problems" in done.stderr, done.stderr
    assert "app.no_such_table does not exist" in done.stderr
    assert "quantity reads grid_region, which is varchar" in done.stderr
    assert "passengers reads column nobody, which it does not have" in done.stderr
    conn = app.admin()
    try:
        with conn.cursor() as cur:
            cur.execute(
                "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                "WHERE n.nspname = 'emissions'"
            )
            assert cur.fetchone() == (0,)  # the schema the DBA made for it: still empty
    finally:
        conn.close()


def test_adoption_recipe_as_a_least_privilege_role(app: App) -> None:
    admin = app.admin()
    before = _checksums(admin)
    # The same data in the pipeline's own tables, in another schema, run by the superuser.
    reference_env = {"EMISSIONS_DATABASE_URL": app.server.superuser_url(app.database)}
    done = _command(
        ["ops.admin", "init", "--schema", "reference", "--id-type", "uuid"], reference_env
    )
    assert done.returncode == 0, done.stderr
    with admin.cursor() as cur:
        cur.execute(REFERENCE_SQL)
    code, out, err = _watched_run(
        ["pipeline.run", "--schema", "reference", "--progress-interval", "0"],
        reference_env,
        app.server.superuser_password,
    )
    assert code == 0, err[-3000:]
    reference = json.loads(out)

    # The recipe: check the sources, init, run; as the pipeline's role, by a service file.
    env = {**app.service_env(), "EMISSIONS_SOURCES": str(SOURCES)}
    checked = _command(["ops.admin", "check-sources"], env)
    assert checked.returncode == 0, checked.stderr
    assert json.loads(checked.stdout)["air_travel"]["key_type"] == "uuid"
    init = _command(["ops.admin", "init"], env)
    assert init.returncode == 0, init.stderr
    assert json.loads(init.stdout)["id_type"] == "uuid"
    code, out, err = _watched_run(["pipeline.run", "--progress-interval", "1"], env, app.password)
    assert code == 0, err[-3000:]
    summary = json.loads(out)
    assert summary["database"] == "postgresql:// (service carbon)"
    assert summary["sources"]["air_travel"] == "app.air_travel_activities"
    total = sum(COUNTS.values())
    assert summary["total_activities"] == reference["total_activities"] == total
    assert summary["total_processed"] == reference["total_processed"]
    assert summary["errors"] == reference["errors"]
    assert summary["total_processed"] + summary["errors"] == total
    # The same results, summed in whatever order the flushes ran: equal to rounding.
    assert summary["total_co2e_tonnes"] == pytest.approx(reference["total_co2e_tonnes"], rel=1e-12)
    for text in (init.stdout, init.stderr, out, err):
        assert app.password not in text

    with admin.cursor() as cur:
        # Row for row: every result equal, none missing on either side.
        for mine, theirs in (("emissions", "reference"), ("reference", "emissions")):
            cur.execute(
                f"SELECT count(*) FROM (SELECT {COMPARED} FROM {mine}.emission_results "
                f"EXCEPT ALL SELECT {COMPARED} FROM {theirs}.emission_results) d"
            )
            assert cur.fetchone() == (0,), (mine, theirs)
            cur.execute(
                "SELECT count(*) FROM (SELECT activity_type, activity_id, reason_code, reason, "
                f"input_repr, input_hash FROM {mine}.emission_errors EXCEPT ALL SELECT "
                "activity_type, activity_id, reason_code, reason, input_repr, input_hash "
                f"FROM {theirs}.emission_errors) d"
            )
            assert cur.fetchone() == (0,), (mine, theirs)
        cur.execute("SELECT count(*) FROM emissions.emission_results")
        assert cur.fetchone() == (summary["total_processed"],)
        cur.execute(
            "SELECT count(*) FROM emissions.emission_results r JOIN app.emission_results a "
            "ON a.activity_id = r.activity_id"
        )
        assert cur.fetchone() == (1,)  # the application's own row, beside (not in) ours
        cur.execute("SELECT t::text FROM emissions.calculation_runs t")
        assert all(app.password not in row for (row,) in cur.fetchall())
        # Everything the pipeline made is in its schema, owned by its role.
        cur.execute(
            "SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n "
            "ON n.oid = c.relnamespace WHERE pg_get_userbyid(c.relowner) = %s",
            (app.role,),
        )
        owned = cur.fetchall()  # (TOAST tables belong to the tables whose values they hold)
        assert owned and {n for n, _ in owned} - {"pg_toast"} == {"emissions"}
    assert _checksums(admin) == before  # the application's tables: not a row, not a version

    # libpq's variables and a pgpass, no URL: a second run has nothing to do.
    again = _command(
        ["pipeline.run", "--progress-interval", "0"],
        {**app.libpq_env(), "EMISSIONS_SOURCES": str(SOURCES)},
    )
    assert again.returncode == 0, again.stderr
    rerun = json.loads(again.stdout)
    assert rerun["pending"] == 0 and rerun["total_processed"] == 0
    assert rerun["database"] == (
        f"postgresql://{app.role}@{app.server.host}:{app.server.port}/{app.database}"
    )
    assert _checksums(admin) == before
    admin.close()
