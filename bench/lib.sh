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

# --- CPU accounting -------------------------------------------------------------------------------
# Clock ticks (user + system) a process has used, its threads included; with $2 = all, also its
# reaped children's (a postmaster's exited backends). 0 when the process is gone.
proc_ticks() {
    local fields
    fields=$(sed 's/^.*) //' "/proc/$1/stat" 2>/dev/null) || {
        echo 0
        return
    }
    # After the command name: field 3 is the state; utime, stime, cutime, cstime are 14 to 17.
    awk -v all="${2:-}" '{ t = $12 + $13; if (all == "all") t += $14 + $15; print t }' <<<"$fields"
}

# Clock ticks used by PostgreSQL server $1 (started by start_pg): the postmaster, its live
# processes and the ones it has reaped, so the difference over a run counts every backend of it.
cluster_ticks() {
    local pm total child
    pm=$(head -n 1 "$work/$1/data/postmaster.pid" 2>/dev/null) || {
        echo 0
        return
    }
    total=$(proc_ticks "$pm" all)
    for child in $(cat "/proc/$pm/task/$pm/children" 2>/dev/null); do
        total=$((total + $(proc_ticks "$child")))
    done
    echo "$total"
}

# The number of live processes of PostgreSQL server $1 (its postmaster's children).
cluster_children() {
    local pm
    pm=$(head -n 1 "$work/$1/data/postmaster.pid" 2>/dev/null) || {
        echo 0
        return
    }
    wc -w <"/proc/$pm/task/$pm/children" 2>/dev/null || echo 0
}

# Waits (at most 5 s) until server $1 has no more than $2 live processes: the backends of a run's
# connections have exited and been reaped, so that cluster_ticks counts their CPU (a backend that
# is exiting is in neither the live children nor the reaped ones).
settle_cluster() {
    local _
    for _ in $(seq 1 50); do
        [ "$(cluster_children "$1")" -gt "$2" ] || return 0
        sleep 0.1
    done
}

# The number of transactions pgbench says it processed in its output file $1 (nothing when it
# says none: a failed run).
pgbench_txns() {
    sed -n 's/^number of transactions actually processed: \([0-9]*\).*/\1/p' "$1" 2>/dev/null |
        tail -n 1
}

# Milliseconds of CPU per 1000 transactions for $1 clock ticks over $2 transactions (nothing when
# none ran).
cpu_per_ktxn() {
    awk -v t="$1" -v n="$2" -v hz="$(getconf CLK_TCK)" \
        'BEGIN { if (n > 0) printf "%.0f\n", t / hz * 1000 * 1000 / n }'
}

# --- servers and pgbridge processes, for the scripts that run them --------------------------------
# They use the caller's associative arrays port, pg_started and bridge_pid, and $work.

# Stops every pgbridge and PostgreSQL the script started, removes $work (unless KEEP is set), and
# exits with the script's status; calls cleanup_hook first when the script defines one.
cleanup() {
    local status=$?
    trap - EXIT INT TERM
    if declare -F cleanup_hook >/dev/null; then cleanup_hook; fi
    local name pid
    for name in "${!bridge_pid[@]}"; do
        pid=${bridge_pid[$name]}
        kill -0 "$pid" 2>/dev/null || continue
        kill -TERM "$pid" 2>/dev/null || true
        # pgbridge drains its sessions on SIGTERM; the benchmark's are gone already.
        for _ in $(seq 1 50); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$pid" 2>/dev/null || true
    done
    for name in "${!pg_started[@]}"; do
        "${as_server_user[@]}" "$PG_BIN/pg_ctl" -D "$work/$name/data" -m immediate -w stop \
            >/dev/null 2>&1 || true
    done
    wait 2>/dev/null || true
    if [ -n "${KEEP:-}" ]; then
        log "kept the logs in $work"
    else
        rm -rf "$work"
    fi
    exit "$status"
}

# psql against a port's bench database, with timeouts, stopping at the first error.
psql_at() {
    local p=$1
    shift
    PGCONNECT_TIMEOUT=5 timeout --kill-after=5 120 "$PSQL" -X -q -v ON_ERROR_STOP=1 \
        -h 127.0.0.1 -p "$p" -U postgres -d bench "$@"
}

# Waits until psql gets an answer through host:port, or gives up after $2 seconds.
wait_ready() {
    local p=$1 seconds=$2 pid=${3:-}
    local deadline=$((SECONDS + seconds))
    while [ "$SECONDS" -lt "$deadline" ]; do
        if [ -n "$pid" ] && ! kill -0 "$pid" 2>/dev/null; then
            return 1
        fi
        if PGCONNECT_TIMEOUT=3 timeout 10 "$PSQL" -X -q -h 127.0.0.1 -p "$p" -U postgres \
            -d bench -Atc 'SELECT 1' >/dev/null 2>&1; then
            return 0
        fi
        sleep 0.2
    done
    return 1
}

# Starts a throwaway PostgreSQL server $1 with a database bench; with $2 = durable it fsyncs its
# commits as a production server does (else durability is off).
start_pg() {
    local name=$1 durable=off
    [ "${2:-}" != durable ] || durable=on
    free_port "port[$name]"
    server_dir "$name"
    log "PostgreSQL $name from $PG_BIN on port ${port[$name]}"
    "${as_server_user[@]}" "$PG_BIN/initdb" -D "$work/$name/data" -U postgres -A trust -E UTF8 \
        --locale=C --no-sync >"$work/$name/initdb.log" 2>&1 || {
        cat "$work/$name/initdb.log" >&2
        die "initdb ($name) failed"
    }
    # The conventions of src/pgcluster.rs (durability off unless asked for, loopback only).
    cat >>"$work/$name/data/postgresql.conf" <<EOF
listen_addresses = '127.0.0.1'
port = ${port[$name]}
unix_socket_directories = '$work/$name'
fsync = $durable
synchronous_commit = $durable
full_page_writes = $durable
max_connections = 300
shared_buffers = 128MB
logging_collector = off
log_min_messages = warning
EOF
    "${as_server_user[@]}" "$PG_BIN/pg_ctl" -D "$work/$name/data" -l "$work/$name/postgres.log" \
        -w -t 60 start >/dev/null || {
        cat "$work/$name/postgres.log" >&2
        die "PostgreSQL ($name) did not start"
    }
    pg_started[$name]=1
    PGCONNECT_TIMEOUT=5 timeout 60 "$PSQL" -X -q -h 127.0.0.1 -p "${port[$name]}" -U postgres \
        -d postgres -c 'CREATE DATABASE bench' >/dev/null || die "CREATE DATABASE bench ($name) failed"
}

# Prints the pgbridge binary: $PGBRIDGE_BIN, or a release build (CARGO_TARGET_DIR honoured).
build_pgbridge() {
    local bin=${PGBRIDGE_BIN:-}
    if [ -z "$bin" ]; then
        command -v cargo >/dev/null 2>&1 || die "cargo not found (install Rust, or set PGBRIDGE_BIN)"
        log "cargo build --release (pgbridge)"
        if ! (cd "$repo" && timeout 3600 cargo build --release --bin pgbridge) >"$work/cargo.log" 2>&1; then
            tail -n 30 "$work/cargo.log" >&2
            die "cargo build --release failed"
        fi
        bin=${CARGO_TARGET_DIR:-$repo/target}/release/pgbridge
        case "$bin" in /*) ;; *) bin=$repo/$bin ;; esac
    fi
    [ -x "$bin" ] || die "no pgbridge binary at $bin"
    echo "$bin"
}

# Starts the primary and the secondary with the DXY schemas (docker/*-init.sql) in their bench
# databases.
start_dxy_servers() {
    start_pg primary ${PRIMARY_DURABLE:+durable}
    start_pg secondary
    psql_at "${port[primary]}" -f "$repo/docker/primary-init.sql" >/dev/null ||
        die "loading docker/primary-init.sql failed"
    psql_at "${port[secondary]}" -f "$repo/docker/secondary-init.sql" >/dev/null ||
        die "loading docker/secondary-init.sql failed"
}

# Runs pgbridge $1 (binary $bin) with the config $2/pgbridge.toml, listening on port[$1], until
# it answers a query; dies with its config and log when it does not. A port taken between
# free_port and the start (another process got it first) is picked again, up to three times.
launch_pgbridge() {
    local name=$1 dir=$2 attempt
    for attempt in 1 2 3; do
        log "pgbridge $name ($bin) on port ${port[$name]}, admin ${admin_port[$name]}"
        RUST_LOG=${RUST_LOG:-warn} "$bin" serve --config "$dir/pgbridge.toml" >"$dir/pgbridge.log" 2>&1 &
        bridge_pid[$name]=$!
        if wait_ready "${port[$name]}" 30 "${bridge_pid[$name]}"; then
            return 0
        fi
        if [ "$attempt" -lt 3 ] && ! kill -0 "${bridge_pid[$name]}" 2>/dev/null &&
            grep -q 'Address already in use' "$dir/pgbridge.log"; then
            local old_port=${port[$name]} old_admin=${admin_port[$name]}
            free_port "port[$name]"
            free_port "admin_port[$name]"
            sed -i -e "s/^listen = \"127.0.0.1:$old_port\"/listen = \"127.0.0.1:${port[$name]}\"/" \
                -e "s/^admin_listen = \"127.0.0.1:$old_admin\"/admin_listen = \"127.0.0.1:${admin_port[$name]}\"/" \
                "$dir/pgbridge.toml"
            log "pgbridge $name: a port was taken; trying others"
            continue
        fi
        break
    done
    local why="did not answer a query within 30 s"
    kill -0 "${bridge_pid[$name]}" 2>/dev/null || why="exited before answering a query"
    log "pgbridge $name: its config:"
    cat "$dir/pgbridge.toml" >&2
    log "pgbridge $name: its log:"
    tail -n 40 "$dir/pgbridge.log" >&2
    die "pgbridge $name $why"
}
