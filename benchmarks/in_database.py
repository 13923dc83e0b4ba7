"""The methodology written a second time, in SQL, computed inside PostgreSQL.

Two uses: the end-to-end tests compare the pipeline's stored results with it (an independent
computation over the same data), and the benchmark times it as the in-database baseline. It
shares only reference *data* with the Python code (factor rows, airports, countries, the haul
table), none of its logic.
"""

from __future__ import annotations

from typing import Any

import psycopg2.extensions
from psycopg2.extras import execute_values

#: (activity_type, activity_id as text, kg CO2e) for every activity the methodology accepts.
#: ``{pending}`` is replaced by a filter that keeps only activities with no stored result.
_SQL = """
WITH
elec AS (
  SELECT a.id, a.quantity * u.kwh AS kwh, extract(year FROM a.activity_date)::int AS y,
         sr.key AS subregion, coalesce(rc.alpha3, cc.alpha3) AS iso3
  FROM emissions.electricity_activities a
  JOIN ref_units u ON u.unit = lower(trim(a.unit))
  LEFT JOIN (SELECT DISTINCT key FROM ref_factor_year WHERE factor_set = 'egrid_subregion') sr
         ON sr.key = upper(trim(a.region))
  LEFT JOIN ref_countries rc ON rc.code = upper(trim(a.region))
  LEFT JOIN ref_countries cc ON cc.code = upper(trim(a.country))
  WHERE a.quantity >= 0 AND a.quantity < 'Infinity' AND a.activity_date IS NOT NULL {pending_e}
),
elec_keyed AS (
  SELECT id, kwh, y,
         CASE WHEN subregion IS NOT NULL THEN 'egrid_subregion'
              WHEN iso3 = 'GBR' THEN 'desnz_uk_electricity'
              WHEN iso3 = 'USA' THEN 'egrid_us'
              ELSE 'country_grid' END AS fset,
         coalesce(subregion, iso3) AS fkey
  FROM elec WHERE subregion IS NOT NULL OR iso3 IS NOT NULL
),
spend AS (
  SELECT a.id, a.amount, upper(trim(a.currency)) AS currency, trim(a.naics_code) AS naics,
         extract(year FROM a.activity_date)::int AS y
  FROM emissions.spend_activities a
  WHERE a.amount >= 0 AND a.amount < 'Infinity' AND a.activity_date IS NOT NULL {pending_s}
),
air AS (
  SELECT a.id, a.passengers, a.return_trip, extract(year FROM a.activity_date)::int AS y,
         replace(replace(lower(trim(a.cabin_class)), ' ', '_'), '-', '_') AS cabin,
         coalesce(a.distance_km,
           2 * 6371.0088 * asin(least(1.0, sqrt(
             power(sin((radians(d.lat) - radians(o.lat)) / 2), 2)
             + cos(radians(o.lat)) * cos(radians(d.lat))
               * power(sin(radians(d.lon - o.lon) / 2), 2))))) AS distance,
         CASE WHEN o.uk AND d.uk THEN 'domestic'
              WHEN NOT o.uk AND NOT d.uk THEN 'international'
              WHEN o.uk THEN nullif(hd.haul, 'domestic')
              ELSE nullif(ho.haul, 'domestic') END AS haul
  FROM emissions.air_travel_activities a
  JOIN ref_airports o ON o.iata = upper(trim(a.origin))
  JOIN ref_airports d ON d.iata = upper(trim(a.destination))
  LEFT JOIN ref_hauls ho ON ho.iso3 = o.iso3
  LEFT JOIN ref_hauls hd ON hd.iso3 = d.iso3
  WHERE a.passengers >= 0 AND a.return_trip IS NOT NULL AND a.activity_date IS NOT NULL
    AND (a.distance_km IS NULL OR (a.distance_km >= 0 AND a.distance_km < 'Infinity'))
    {pending_a}
)
SELECT 'electricity' AS activity_type, e.id::text AS activity_id, e.kwh * f.value AS kg_co2e
FROM elec_keyed e
JOIN ref_factor_year f ON f.factor_set = e.fset AND f.key = e.fkey AND f.year = {year_e}
UNION ALL
SELECT 'spend', s.id::text, s.amount * fx.value * (base.value / cpi.value) * sef.value
FROM spend s
JOIN ref_factor_year sef ON sef.factor_set = 'epa_sef' AND sef.key = s.naics AND sef.year = 2022
JOIN ref_factor_year base
  ON base.factor_set = 'cpi_u' AND base.key = 'CUUR0000SA0' AND base.year = 2022
JOIN ref_factor_year fx ON fx.factor_set = 'fx_usd' AND fx.key = s.currency AND fx.year = {year_s}
JOIN ref_factor_year cpi
  ON cpi.factor_set = 'cpi_u' AND cpi.key = 'CUUR0000SA0' AND cpi.year = {year_s}
UNION ALL
SELECT 'air_travel', t.id::text,
       t.distance * t.passengers * (CASE WHEN t.return_trip THEN 2 ELSE 1 END) * f.value
FROM air t
JOIN ref_air_keys k ON k.haul = t.haul AND k.cabin = t.cabin AND k.rf = %(rf)s
JOIN ref_factor_year f ON f.factor_set = 'desnz_air' AND f.key = k.key AND f.year = {year_a}
"""

#: Activity years are clamped to the span of the published factor years before the lookup:
#: beyond it, the year rule picks the first or last year anyway.
_YEAR_SPAN = "SELECT min(year), max(year) FROM emissions.emission_factors"

#: For every factor set, key and year in YEARS, the row the year rule picks: the same year,
#: else the nearest earlier, else the earliest later; the newest edition where several exist.
_FACTOR_YEARS = """
CREATE TEMP TABLE ref_factor_year AS
WITH f AS (
  SELECT DISTINCT ON (factor_set, key, year) factor_set, key, year, value
  FROM emissions.emission_factors ORDER BY factor_set, key, year, id DESC
)
SELECT DISTINCT ON (k.factor_set, k.key, y.year) k.factor_set, k.key, y.year, f.value
FROM (SELECT DISTINCT factor_set, key FROM f) k
CROSS JOIN generate_series(%(first)s, %(last)s) AS y(year)
JOIN f ON f.factor_set = k.factor_set AND f.key = k.key
ORDER BY k.factor_set, k.key, y.year,
         CASE WHEN f.year = y.year THEN 0 WHEN f.year < y.year THEN 1 ELSE 2 END,
         abs(f.year - y.year);
CREATE INDEX ON ref_factor_year (factor_set, key, year);
ANALYZE ref_factor_year;
"""

#: DESNZ air keys per haul, cabin class and RF: the class's own row where DESNZ publishes it,
#: else the haul's average row.
_AIR_KEYS = """
CREATE TEMP TABLE ref_air_keys AS
SELECT h.haul, c.cabin, r.rf,
       CASE WHEN EXISTS (SELECT 1 FROM ref_factor_year f WHERE f.factor_set = 'desnz_air'
                         AND f.key = h.haul || '|' || c.cabin || '|' || r.rf)
            THEN h.haul || '|' || c.cabin || '|' || r.rf
            ELSE h.haul || '|average|' || r.rf END AS key
FROM (VALUES ('domestic'), ('short-haul'), ('long-haul'), ('international')) h(haul)
CROSS JOIN (VALUES ('average'), ('economy'), ('premium_economy'), ('business'), ('first')) c(cabin)
CROSS JOIN (VALUES ('rf'), ('no_rf')) r(rf);
"""

_PENDING = (
    "AND NOT EXISTS (SELECT 1 FROM emissions.emission_results r "
    "WHERE r.activity_type = '{t}' AND r.activity_id = a.id)"
)


def _clamped(alias: str) -> str:
    return f"greatest(%(first)s, least(%(last)s, {alias}.y))"


def reference_query(pending_only: bool = False) -> str:
    """The SELECT; with ``pending_only``, activities that already have a result are left out."""
    fill = {
        "year_e": _clamped("e"),
        "year_s": _clamped("s"),
        "year_a": _clamped("t"),
        "pending_e": _PENDING.format(t="electricity") if pending_only else "",
        "pending_s": _PENDING.format(t="spend") if pending_only else "",
        "pending_a": _PENDING.format(t="air_travel") if pending_only else "",
    }
    return _SQL.format(**fill)


def load_reference_tables(conn: psycopg2.extensions.connection) -> None:
    """Temporary reference tables for this session: units, countries, airports, hauls, and
    the factor row in force for every set, key and year."""
    import airportsdata
    import pycountry

    from pipeline.factors import load_haul_definitions

    countries: list[tuple[str, str]] = []
    for c in pycountry.countries:
        countries += [(c.alpha_2, c.alpha_3), (c.alpha_3, c.alpha_3)]
    countries.append(("XK", "XKX"))  # Kosovo: user-assigned code, as in the DESNZ table
    alpha3 = dict(countries)
    uk = {"GB", "GG", "IM", "JE"}
    airports = [
        (code, float(a["lat"]), float(a["lon"]), a["country"] in uk, alpha3.get(a["country"]))
        for code, a in airportsdata.load("IATA").items()
    ]
    units = [("wh", 1e-3), ("kwh", 1.0), ("mwh", 1e3), ("gwh", 1e6), ("mj", 1 / 3.6)]
    units.append(("gj", 1e3 / 3.6))
    with conn.cursor() as cur:
        cur.execute(
            "CREATE TEMP TABLE ref_units (unit text PRIMARY KEY, kwh float8);"
            "CREATE TEMP TABLE ref_countries (code text PRIMARY KEY, alpha3 text);"
            "CREATE TEMP TABLE ref_airports (iata text PRIMARY KEY, lat float8, lon float8, "
            "uk boolean, iso3 text);"
            "CREATE TEMP TABLE ref_hauls (iso3 text PRIMARY KEY, haul text);"
        )
        execute_values(cur, "INSERT INTO ref_units VALUES %s", units)
        execute_values(cur, "INSERT INTO ref_countries VALUES %s", list(set(countries)))
        execute_values(cur, "INSERT INTO ref_airports VALUES %s", airports)
        execute_values(
            cur, "INSERT INTO ref_hauls VALUES %s", list(load_haul_definitions().items())
        )
        cur.execute(_FACTOR_YEARS, _year_span(cur))
        cur.execute(_AIR_KEYS)
        cur.execute("ANALYZE ref_units; ANALYZE ref_countries; ANALYZE ref_airports;")
    conn.commit()


def _year_span(cur: psycopg2.extensions.cursor) -> dict[str, int]:
    cur.execute(_YEAR_SPAN)
    first, last = cur.fetchone()
    return {"first": int(first), "last": int(last)}


def reference_results(
    conn: psycopg2.extensions.connection, radiative_forcing: bool = True
) -> dict[tuple[str, str], float]:
    """(activity_type, activity_id) → kg CO2e, computed in the database."""
    with conn.cursor() as cur:
        params: dict[str, Any] = {"rf": "rf" if radiative_forcing else "no_rf", **_year_span(cur)}
        cur.execute(reference_query(), params)
        rows = cur.fetchall()
    conn.commit()
    return {(t, i): kg for t, i, kg in rows}
