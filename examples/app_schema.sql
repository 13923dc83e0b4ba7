-- An application's own schema, like the service the pipeline replaces: its own table and
-- column names and types, UUID keys, and its own emission_results (not the pipeline's).
-- tests/test_adoption.py fills it and runs the pipeline on it through app_sources.toml.
CREATE SCHEMA app;

CREATE TABLE app.electricity_activities (
    id uuid PRIMARY KEY,
    consumption_kwh numeric(18, 3),
    grid_region varchar(16),
    country_code char(2),
    reading_date date,
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE app.goods_services_activities (
    id uuid PRIMARY KEY,
    amount numeric(14, 2),
    currency_code varchar(3),
    naics varchar(6),
    purchase_date date
);

CREATE TYPE app.travel_class AS ENUM ('ECONOMY', 'PREMIUM', 'BUSINESS', 'FIRST', 'ANY');

CREATE TABLE app.air_travel_activities (
    id uuid PRIMARY KEY,
    origin_iata char(3),
    destination_iata char(3),
    travel_class app.travel_class,
    travellers smallint,
    is_return boolean,
    departure_date timestamptz
);

-- The application's results table, with the same name as the pipeline's: never touched.
CREATE TABLE app.emission_results (
    id uuid PRIMARY KEY,
    activity_id uuid,
    activity_type text,
    co2e_kg double precision,
    calculated_at timestamptz
);
