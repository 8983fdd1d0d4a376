#!/usr/bin/env bash
# Runs once, from /docker-entrypoint-initdb.d of the official postgres image, when the
# primary's data directory is initialised. Creates:
#   - role cowrie_stats (LOGIN, owner of database $POSTGRES_DB) for api, migrate and ingest
#   - role replicator (REPLICATION) for the streaming replica (pg_basebackup -R)
# Passwords are read from files (Docker / Kubernetes secrets), never from the environment.
# Used verbatim by docker-compose.yml and by deploy/k8s/base/postgres-scripts.yaml.
set -euo pipefail

app_password="$(cat "${COWRIE_STATS_DB_PASSWORD_FILE:?COWRIE_STATS_DB_PASSWORD_FILE is required}")"
replication_password="$(cat "${POSTGRES_REPLICATION_PASSWORD_FILE:?POSTGRES_REPLICATION_PASSWORD_FILE is required}")"

psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" \
    --set=app_password="$app_password" \
    --set=replication_password="$replication_password" \
    --set=dbname="$POSTGRES_DB" <<'EOSQL'
CREATE ROLE cowrie_stats WITH LOGIN PASSWORD :'app_password';
CREATE ROLE replicator WITH REPLICATION LOGIN PASSWORD :'replication_password';
ALTER DATABASE :"dbname" OWNER TO cowrie_stats;
ALTER SCHEMA public OWNER TO cowrie_stats;
REVOKE ALL ON DATABASE :"dbname" FROM PUBLIC;
GRANT CONNECT ON DATABASE :"dbname" TO cowrie_stats;
EOSQL

# Physical replication connections need their own pg_hba.conf line.
echo "host replication replicator all scram-sha-256" >> "$PGDATA/pg_hba.conf"
