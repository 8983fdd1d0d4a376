#!/usr/bin/env bash
# `make secrets`: create the Docker secrets files of docker-compose.yml that do not exist
# yet, each a random password of letters and digits, mode 0600, owned by the user id of
# the container that reads it (Compose bind-mounts the file with its host owner and mode):
#   postgres_password, replication_password   999   postgres (image postgres:16, Debian)
#   db_password, db_reader_password            1001  cowrie-stats (migrate, ingest; api)
#   grafana_admin_password                     472   grafana
# An existing file is never overwritten or changed. Run as root, ownership is given with
# chown; otherwise by a throwaway container (`docker run` of POSTGRES_IMAGE), so the
# user needs docker access, as for `docker compose up`. A file is put in place only once
# it has its owner: a failed run leaves nothing half-made, and running again is safe.
# Environment: SECRETS_DIR (default deploy/compose/secrets), POSTGRES_IMAGE.
set -euo pipefail

dir="${SECRETS_DIR:-deploy/compose/secrets}"
image="${POSTGRES_IMAGE:-postgres:16}"
owners=(
    "postgres_password:999"
    "replication_password:999"
    "db_password:1001"
    "db_reader_password:1001"
    "grafana_admin_password:472"
)

give() {  # give FILE UID: make UID the owner of FILE (in $dir)
    if [ "$(id -u)" = "0" ]; then
        chown "$2:$2" "$dir/$1"
    else
        docker run --rm --network none --user 0:0 --entrypoint chown \
            --volume "$(cd "$dir" && pwd):/secrets" "$image" "$2:$2" "/secrets/$1"
    fi
}

umask 077
mkdir -p "$dir"
for entry in "${owners[@]}"; do
    name="${entry%%:*}"
    uid="${entry##*:}"
    if [ -e "$dir/$name" ]; then
        echo "kept     $dir/$name (exists)"
        continue
    fi
    draft=".$name.new"
    rm -f "$dir/$draft"
    # 48 letters and digits (about 285 bits): nothing a database URL would need escaped.
    # (LC_ALL=C: tr counts bytes; head closes the pipe, so tr's SIGPIPE is expected.)
    (LC_ALL=C tr -dc 'A-Za-z0-9' < /dev/urandom || true) | head -c 48 > "$dir/$draft"
    if ! give "$draft" "$uid"; then
        rm -f "$dir/$draft"
        echo "make secrets: cannot give $dir/$name to uid $uid: run it as root, or as a" \
            "user who may run docker" >&2
        exit 1
    fi
    mv --no-clobber "$dir/$draft" "$dir/$name"
    echo "created  $dir/$name (mode 0600, owner uid $uid)"
done
