#!/usr/bin/env bash
# Entrypoint of the postgres service (official postgres image), run as root.
# The secrets files are mode 0600 and belong to the user of the container that logs in
# with them (`make secrets`): db_password and db_reader_password to the cowrie-stats
# uid 1001. The init script that creates the roles runs as postgres, so root copies the
# files it reads into a tmpfs only postgres can read, points the variables at the
# copies, and starts the image's entrypoint.
# Environment: COWRIE_STATS_DB_PASSWORD_FILE, COWRIE_STATS_DB_READER_PASSWORD_FILE,
# POSTGRES_REPLICATION_PASSWORD_FILE; COPIES_DIR (default /run/cowrie-stats-init).
set -euo pipefail

copies="${COPIES_DIR:-/run/cowrie-stats-init}"

if [ "$(id -u)" = "0" ]; then
    install -d -m 0700 -o postgres -g postgres "$copies"
    for variable in COWRIE_STATS_DB_PASSWORD_FILE COWRIE_STATS_DB_READER_PASSWORD_FILE \
        POSTGRES_REPLICATION_PASSWORD_FILE; do
        source="${!variable:?$variable is required}"
        target="$copies/$(basename "$source")"
        install -m 0400 -o postgres -g postgres "$source" "$target"
        export "$variable=$target"
    done
fi

exec docker-entrypoint.sh "$@"
