#!/bin/sh
# Creates (or upgrades) Temporal's two PostgreSQL databases with temporal-sql-tool from the
# temporalio/admin-tools image. Safe to run on every `docker compose up`: an existing
# database is kept and only missing schema versions are applied.
set -eu

: "${TEMPORAL_DB_HOST:=temporal-db}"
: "${TEMPORAL_DB_PORT:=5432}"
: "${TEMPORAL_DB_USER:=temporal}"
# temporal-sql-tool reads the password from SQL_PASSWORD.
export SQL_PASSWORD="${TEMPORAL_DB_PASSWORD:?TEMPORAL_DB_PASSWORD is not set}"
SCHEMA_ROOT=/etc/temporal/schema/postgresql/v12

sql_tool() {
  temporal-sql-tool --plugin postgres12 --ep "$TEMPORAL_DB_HOST" -p "$TEMPORAL_DB_PORT" \
    -u "$TEMPORAL_DB_USER" "$@"
}

for pair in temporal:temporal temporal_visibility:visibility; do
  database=${pair%%:*}
  schema=${pair##*:}
  echo "schema job: database $database"
  sql_tool --db "$database" create 2>/dev/null || echo "schema job: $database already exists"
  sql_tool --db "$database" setup-schema -v 0.0
  sql_tool --db "$database" update-schema -d "$SCHEMA_ROOT/$schema/versioned"
done
echo "schema job: done"
