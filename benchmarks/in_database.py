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
factor AS (
  SELECT DISTINCT ON (factor_set, key, year) factor_set, key, year, value
  FROM emission_factors ORDER BY factor_set, key, year, id DESC
),
elec AS (
  SELECT a.id, a.quantity * u.kwh AS kwh, extract(year FROM a.activity_date)::int AS y,
         sr.key AS subregion, coalesce(rc.alpha3, cc.alpha3) AS iso3
  FROM electricity_activities a
  JOIN ref_units u ON u.unit = lower(trim(a.unit))
  LEFT JOIN (SELECT DISTINCT key FROM factor WHERE factor_set = 'egrid_subregion') sr
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
  FROM spend_activities a
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
              ELSE (SELECT h.haul FROM ref_hauls h
                    WHERE h.iso3 = CASE WHEN o.uk THEN d.iso3 ELSE o.iso3 END
                      AND h.haul <> 'domestic') END AS haul
  FROM air_travel_activities a
  JOIN ref_airports o ON o.iata = upper(trim(a.origin))
  JOIN ref_airports d ON d.iata = upper(trim(a.destination))
  WHERE a.passengers >= 0 AND a.return_trip IS NOT NULL AND a.activity_date IS NOT NULL
    AND (a.distance_km IS NULL OR (a.distance_km >= 0 AND a.distance_km < 'Infinity'))
    {pending_a}
)
SELECT 'electricity' AS activity_type, e.id::text AS activity_id, e.kwh * f.value AS kg_co2e
FROM elec_keyed e
JOIN LATERAL (
  SELECT value FROM factor f WHERE f.factor_set = e.fset AND f.key = e.fkey
  ORDER BY CASE WHEN f.year = e.y THEN 0 WHEN f.year < e.y THEN 1 ELSE 2 END, abs(f.year - e.y)
  LIMIT 1) f ON true
UNION ALL
SELECT 'spend', s.id::text, s.amount * fx.value * (base.value / cpi.value) * sef.value
FROM spend s
JOIN factor sef ON sef.factor_set = 'epa_sef' AND sef.key = s.naics AND sef.year = 2022
JOIN factor base ON base.factor_set = 'cpi_u' AND base.key = 'CUUR0000SA0' AND base.year = 2022
JOIN LATERAL (
  SELECT value FROM factor f WHERE f.factor_set = 'fx_usd' AND f.key = s.currency
  ORDER BY CASE WHEN f.year = s.y THEN 0 WHEN f.year < s.y THEN 1 ELSE 2 END, abs(f.year - s.y)
  LIMIT 1) fx ON true
JOIN LATERAL (
  SELECT value FROM factor f WHERE f.factor_set = 'cpi_u' AND f.key = 'CUUR0000SA0'
  ORDER BY CASE WHEN f.year = s.y THEN 0 WHEN f.year < s.y THEN 1 ELSE 2 END, abs(f.year - s.y)
  LIMIT 1) cpi ON true
UNION ALL
SELECT 'air_travel', t.id::text,
       t.distance * t.passengers * (CASE WHEN t.return_trip THEN 2 ELSE 1 END) * f.value
FROM air t
JOIN LATERAL (
  SELECT value FROM factor f
  WHERE f.factor_set = 'desnz_air'
    AND f.key IN (t.haul || '|' || t.cabin || '|' || %(rf)s, t.haul || '|average|' || %(rf)s)
  ORDER BY f.key = t.haul || '|' || t.cabin || '|' || %(rf)s DESC,
           CASE WHEN f.year = t.y THEN 0 WHEN f.year < t.y THEN 1 ELSE 2 END, abs(f.year - t.y)
  LIMIT 1) f ON true
WHERE t.haul IS NOT NULL
  AND t.cabin IN ('average', 'economy', 'premium_economy', 'business', 'first')
"""

_PENDING = (
    "AND NOT EXISTS (SELECT 1 FROM emission_results r "
    "WHERE r.activity_type = '{t}' AND r.activity_id = a.id)"
)


def reference_query(pending_only: bool = False) -> str:
    """The SELECT; with ``pending_only``, activities that already have a result are left out."""
    fill = {
        "pending_e": _PENDING.format(t="electricity") if pending_only else "",
        "pending_s": _PENDING.format(t="spend") if pending_only else "",
        "pending_a": _PENDING.format(t="air_travel") if pending_only else "",
    }
    return _SQL.format(**fill)


def load_reference_tables(conn: psycopg2.extensions.connection) -> None:
    """Temporary tables of units, countries, airports and hauls for this session."""
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
        cur.execute("ANALYZE ref_units; ANALYZE ref_countries; ANALYZE ref_airports;")
    conn.commit()


def reference_results(
    conn: psycopg2.extensions.connection, radiative_forcing: bool = True
) -> dict[tuple[str, str], float]:
    """(activity_type, activity_id) → kg CO2e, computed in the database."""
    params: dict[str, Any] = {"rf": "rf" if radiative_forcing else "no_rf"}
    with conn.cursor() as cur:
        cur.execute(reference_query(), params)
        rows = cur.fetchall()
    conn.commit()
    return {(t, i): kg for t, i, kg in rows}
