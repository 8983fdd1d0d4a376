#!/usr/bin/env bash
# Make sure PostgreSQL server binaries (initdb, pg_ctl, postgres, pg_basebackup) are installed,
# then print their directory on stdout (everything else goes to stderr), e.g.
#
#     PG_BIN="$(scripts/ensure-postgres.sh)"
#
# Idempotent. When no /usr/lib/postgresql/*/bin/initdb exists it installs the distribution's
# server package with apt (Debian 12 -> PostgreSQL 15) without letting the package create or
# leave running the default "main" cluster: the test suite starts its own throwaway clusters
# (testkit/pgcluster.py) on free loopback ports. Also ensures the `postgres` OS user exists,
# because server binaries are run as that user when the tests run as root.
#
# Honours COWRIE_STATS_PG_BIN (a directory containing initdb) as an override.
# Needs root (or password-less sudo) only when something must be installed.
set -euo pipefail

log() { printf 'ensure-postgres: %s\n' "$*" >&2; }
die() {
    log "error: $*"
    exit 1
}

find_bin_dir() {
    if [[ -n "${COWRIE_STATS_PG_BIN:-}" ]]; then
        if [[ -x "${COWRIE_STATS_PG_BIN}/initdb" ]]; then
            printf '%s\n' "${COWRIE_STATS_PG_BIN}"
            return 0
        fi
        die "COWRIE_STATS_PG_BIN=${COWRIE_STATS_PG_BIN} does not contain an executable initdb"
    fi
    local d best=""
    # Highest major version wins (sort -V understands 9.6 < 15 < 16).
    while IFS= read -r d; do
        [[ -x "$d/initdb" ]] && best="$d"
    done < <(find /usr/lib/postgresql -mindepth 2 -maxdepth 2 -type d -name bin 2>/dev/null | sort -V)
    [[ -n "$best" ]] || return 1
    printf '%s\n' "$best"
}

SUDO=()
if [[ "$(id -u)" -ne 0 ]]; then
    if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
        SUDO=(sudo -n)
    fi
fi

as_root() {
    if [[ "$(id -u)" -eq 0 ]]; then
        "$@"
    elif [[ ${#SUDO[@]} -gt 0 ]]; then
        "${SUDO[@]}" "$@"
    else
        die "root (or password-less sudo) is needed to run: $*"
    fi
}

online_clusters() {
    # "VERSION NAME" of every running cluster managed by postgresql-common (none if not installed).
    if command -v pg_lsclusters >/dev/null 2>&1; then
        pg_lsclusters --no-header 2>/dev/null | awk '$4 == "online" { print $1, $2 }' || true
    fi
}

install_postgres() {
    command -v apt-get >/dev/null 2>&1 || die "no PostgreSQL server binaries and no apt-get to install them"
    log "PostgreSQL server binaries not found; installing with apt-get"

    # Keep the package from creating (and auto-starting) the default cluster. postgresql-common's
    # postinst reads this file; ucf keeps our pre-existing copy (UCF_FORCE_CONFFOLD).
    as_root mkdir -p /etc/postgresql-common
    if [[ ! -e /etc/postgresql-common/createcluster.conf ]]; then
        printf '%s\n' "# written by cowrie-stats scripts/ensure-postgres.sh: the test suite runs" \
            "# its own throwaway clusters" "create_main_cluster = false" |
            as_root tee /etc/postgresql-common/createcluster.conf >/dev/null
    fi

    local before
    before="$(online_clusters)"

    local attempt
    for attempt in 1 2 3; do
        if as_root env DEBIAN_FRONTEND=noninteractive apt-get update -q >&2; then
            break
        fi
        [[ "$attempt" -lt 3 ]] || die "apt-get update failed"
        log "apt-get update failed (attempt $attempt), retrying"
        sleep 5
    done
    as_root env DEBIAN_FRONTEND=noninteractive UCF_FORCE_CONFFOLD=1 NEEDRESTART_MODE=a \
        apt-get install -y -q --no-install-recommends \
        -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold \
        postgresql </dev/null >&2

    # Belt and braces: if the package still created and started a cluster, stop it (only the
    # clusters that were not already running before we installed anything).
    local ver name
    while read -r ver name; do
        [[ -n "$ver" ]] || continue
        if ! grep -qxF "$ver $name" <<<"$before"; then
            log "stopping cluster $ver/$name started by the package install"
            as_root pg_ctlcluster "$ver" "$name" stop -m fast >&2 || true
        fi
    done < <(online_clusters)
}

ensure_postgres_user() {
    getent passwd postgres >/dev/null && return 0
    log "creating the postgres system user"
    if command -v adduser >/dev/null 2>&1; then
        as_root adduser --system --quiet --home /var/lib/postgresql --no-create-home \
            --shell /bin/bash --group --gecos "PostgreSQL administrator" postgres >&2
    else
        as_root useradd --system --user-group --home-dir /var/lib/postgresql --no-create-home \
            --shell /bin/bash postgres >&2
    fi
}

bin_dir="$(find_bin_dir || true)"
if [[ -z "$bin_dir" ]]; then
    install_postgres
    bin_dir="$(find_bin_dir || true)"
    [[ -n "$bin_dir" ]] || die "installed the postgresql package but found no /usr/lib/postgresql/*/bin/initdb"
fi
ensure_postgres_user
for tool in initdb pg_ctl postgres pg_basebackup; do
    [[ -x "$bin_dir/$tool" ]] || die "$bin_dir/$tool is missing"
done
log "using $("$bin_dir/postgres" --version) from $bin_dir"
printf '%s\n' "$bin_dir"
