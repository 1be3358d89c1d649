-- Run once by the postgres image when its data volume is first initialised
-- (docker-entrypoint-initdb.d). scripts/services also creates any of these that are missing.
-- One database per service, as in the checkout application.
CREATE DATABASE orders;
CREATE DATABASE inventory;
CREATE DATABASE payments;
CREATE DATABASE orchestrator;
