-- Run by PostgreSQL's entrypoint on the first start (an empty data directory) only.
CREATE DATABASE hapi;
CREATE DATABASE keycloak;
