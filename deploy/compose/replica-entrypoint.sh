#!/usr/bin/env bash
# Entrypoint of the postgres-replica service (official postgres image).
# On first start (empty data directory) clone the primary with `pg_basebackup -R`, which
# writes standby.signal and primary_conninfo; afterwards start postgres as a hot standby
# through the image's normal entrypoint.
# Environment: PRIMARY_HOST, PRIMARY_PORT, REPLICATION_USER, REPLICATION_PASSWORD_FILE, PGDATA.
set -euo pipefail

: "${PGDATA:?PGDATA is required}"
: "${PRIMARY_HOST:?PRIMARY_HOST is required}"
PRIMARY_PORT="${PRIMARY_PORT:-5432}"
REPLICATION_USER="${REPLICATION_USER:-replicator}"
: "${REPLICATION_PASSWORD_FILE:?REPLICATION_PASSWORD_FILE is required}"

run_as_postgres() {
    if [ "$(id -u)" = "0" ]; then
        gosu postgres "$@"
    else
        "$@"
    fi
}

if [ ! -s "$PGDATA/PG_VERSION" ]; then
    echo "replica: empty data directory, cloning ${PRIMARY_HOST}:${PRIMARY_PORT} with pg_basebackup -R"
    mkdir -p "$PGDATA"
    if [ "$(id -u)" = "0" ]; then
        chown postgres:postgres "$PGDATA"
    fi
    chmod 0700 "$PGDATA"
    until run_as_postgres pg_isready -h "$PRIMARY_HOST" -p "$PRIMARY_PORT" -q; do
        echo "replica: waiting for the primary"
        sleep 2
    done
    PGPASSWORD="$(cat "$REPLICATION_PASSWORD_FILE")"
    export PGPASSWORD
    run_as_postgres pg_basebackup \
        --host="$PRIMARY_HOST" --port="$PRIMARY_PORT" --username="$REPLICATION_USER" \
        --pgdata="$PGDATA" --wal-method=stream --write-recovery-conf \
        --checkpoint=fast --no-password --progress
    unset PGPASSWORD
fi

exec docker-entrypoint.sh "$@"
