#!/usr/bin/env bash
# Runs once, from /docker-entrypoint-initdb.d of the official postgres image, when the
# primary's data directory is initialised. Creates:
#   - role cowrie_stats (LOGIN, owner of database $POSTGRES_DB and of schema public) for
#     migrate and ingest: the only role that writes or changes the schema
#   - role cowrie_stats_reader (LOGIN) for the api: CONNECT, USAGE on schema public and
#     SELECT on its tables, including the tables later migrations create (default
#     privileges of cowrie_stats), nothing else; its sessions are read-only by default
#   - role replicator (REPLICATION) for the streaming replica (pg_basebackup -R)
# The replica is a physical copy of the primary, so it has the same roles and GRANTs.
# Passwords are read from files (Docker / Kubernetes secrets), never from the environment.
# Used verbatim by docker-compose.yml and by deploy/k8s/base/postgres-scripts.yaml.
set -euo pipefail

app_password="$(cat "${COWRIE_STATS_DB_PASSWORD_FILE:?COWRIE_STATS_DB_PASSWORD_FILE is required}")"
reader_password="$(cat "${COWRIE_STATS_DB_READER_PASSWORD_FILE:?COWRIE_STATS_DB_READER_PASSWORD_FILE is required}")"
replication_password="$(cat "${POSTGRES_REPLICATION_PASSWORD_FILE:?POSTGRES_REPLICATION_PASSWORD_FILE is required}")"

psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" \
    --set=app_password="$app_password" \
    --set=reader_password="$reader_password" \
    --set=replication_password="$replication_password" \
    --set=dbname="$POSTGRES_DB" <<'EOSQL'
CREATE ROLE cowrie_stats WITH LOGIN PASSWORD :'app_password';
CREATE ROLE cowrie_stats_reader WITH LOGIN PASSWORD :'reader_password';
CREATE ROLE replicator WITH REPLICATION LOGIN PASSWORD :'replication_password';
ALTER DATABASE :"dbname" OWNER TO cowrie_stats;
ALTER SCHEMA public OWNER TO cowrie_stats;
REVOKE ALL ON DATABASE :"dbname" FROM PUBLIC;
REVOKE CREATE ON SCHEMA public FROM PUBLIC;
GRANT CONNECT ON DATABASE :"dbname" TO cowrie_stats;
-- The api's role: read only.
ALTER ROLE cowrie_stats_reader SET default_transaction_read_only = on;
GRANT CONNECT ON DATABASE :"dbname" TO cowrie_stats_reader;
GRANT USAGE ON SCHEMA public TO cowrie_stats_reader;
GRANT SELECT ON ALL TABLES IN SCHEMA public TO cowrie_stats_reader;
ALTER DEFAULT PRIVILEGES FOR ROLE cowrie_stats IN SCHEMA public GRANT SELECT ON TABLES TO cowrie_stats_reader;
EOSQL

# Physical replication connections need their own pg_hba.conf line.
echo "host replication replicator all scram-sha-256" >> "$PGDATA/pg_hba.conf"
