# Helpers shared by the benchmark scripts (sourced, not run): logging, the PostgreSQL binaries, a
# private work directory and the user servers run as, free ports, medians and ratios.
# shellcheck shell=bash

log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() {
    log "error: $*"
    exit 1
}

# Sets PG_BIN (unless given), PGBENCH and PSQL, or dies saying what to install.
find_postgres() {
    if [ -z "${PG_BIN:-}" ]; then
        PG_BIN=$(find /usr/lib/postgresql -mindepth 2 -maxdepth 2 -name bin -type d 2>/dev/null |
            sort -V | tail -n 1 || true)
        if [ -z "$PG_BIN" ] && command -v pg_config >/dev/null 2>&1; then
            PG_BIN=$(pg_config --bindir)
        fi
    fi
    for tool in initdb pg_ctl postgres; do
        [ -x "${PG_BIN:-/nonexistent}/$tool" ] ||
            die "$tool not found in '${PG_BIN:-}': install the PostgreSQL server (apt-get install postgresql-15) or set PG_BIN"
    done
    PGBENCH=$PG_BIN/pgbench
    PSQL=$PG_BIN/psql
    [ -x "$PGBENCH" ] || PGBENCH=$(command -v pgbench || true)
    [ -x "$PSQL" ] || PSQL=$(command -v psql || true)
    [ -n "$PGBENCH" ] && [ -n "$PSQL" ] ||
        die "pgbench and psql are needed: apt-get install postgresql-client-15"
}

# Creates the private directory $work (prefix $1) and, as root, sets as_server_user to run
# PostgreSQL and pgbouncer as `postgres`: both refuse to run as root.
make_workdir() {
    work=$(mktemp -d "${TMPDIR:-/tmp}/$1.XXXXXX")
    as_server_user=()
    if [ "$(id -u)" -eq 0 ]; then
        id postgres >/dev/null 2>&1 ||
            die "running as root needs a 'postgres' user to run the servers as (the postgresql package creates it)"
        as_server_user=(setpriv --reuid=postgres --regid=postgres --init-groups)
        chmod 0755 "$work"
    fi
}

# A directory under $work that the servers' user owns.
server_dir() {
    mkdir -p "$work/$1"
    [ "${#as_server_user[@]}" -eq 0 ] || chown postgres: "$work/$1"
}

# Sets variable $1 to a loopback port nothing listens on (and not handed out already in this run;
# not a command substitution, whose subshell would forget the ports handed out).
used_ports=" "
free_port() {
    local p
    for _ in $(seq 1 200); do
        p=$((20000 + RANDOM % 40000))
        case "$used_ports" in *" $p "*) continue ;; esac
        if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
            used_ports+="$p "
            printf -v "$1" '%s' "$p"
            return 0
        fi
    done
    die "no free loopback port found"
}

# The median of the numbers in file $1 (one a line); nothing for an empty file.
median() {
    [ -s "$1" ] || return 0
    sort -g "$1" | awk '{ v[NR] = $1 } END { if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}

# $1 / $2 to two decimals, or "-" when either is missing.
ratio() {
    if [ -n "$1" ] && [ -n "$2" ]; then
        awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'
    else
        echo "-"
    fi
}
