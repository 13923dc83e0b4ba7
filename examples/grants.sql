-- What the pipeline needs, for a role of its own (here "carbon"), run once by an administrator:
-- a schema it owns, and SELECT on the application's tables. Nothing more: it creates nothing
-- outside its schema and writes nothing outside it (docs/adoption.md).
CREATE ROLE carbon LOGIN;          -- then give it a password: \password carbon
CREATE SCHEMA emissions AUTHORIZATION carbon;
GRANT USAGE ON SCHEMA app TO carbon;
GRANT SELECT ON app.electricity_activities, app.goods_services_activities,
    app.air_travel_activities TO carbon;
