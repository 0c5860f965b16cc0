#!/usr/bin/env bash
# Runs once, when the PostgreSQL data directory is first initialised (the image runs every
# script in /docker-entrypoint-initdb.d). Each service gets its own database, owned by its own
# login role; CONNECT is revoked from PUBLIC, so one service's credentials open no other
# service's database. The four roles share one password, CRM_DB_PASSWORD.
set -euo pipefail

: "${CRM_DB_PASSWORD:?set CRM_DB_PASSWORD, the password of the service roles}"

for service in contacts lifecycle scoring notifications; do
  psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" \
    --set=service="$service" --set=password="$CRM_DB_PASSWORD" <<'SQL'
CREATE ROLE :"service" LOGIN PASSWORD :'password';
CREATE DATABASE :"service" OWNER :"service";
REVOKE CONNECT, TEMPORARY ON DATABASE :"service" FROM PUBLIC;
SQL
done
