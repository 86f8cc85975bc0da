#!/usr/bin/env bash
# pgbench through pgbridge, side by side with a direct connection and with pgbouncer.
#
#   bench/pgbench.sh                         # 3 rounds of 15 s per workload and target
#   DURATION=5 ROUNDS=1 bench/pgbench.sh     # a quick look
#   TARGETS="direct pgbouncer" bench/pgbench.sh
#
# One run starts its own PostgreSQL (initdb in a temp dir, fsync off, a free loopback port, as the
# `postgres` user when run as root), loads `pgbench -i -s $SCALE`, starts pgbouncer (session pooling)
# and pgbridge (a release build, no rules: the relay alone) in front of it, then for every round
# and workload runs the targets one after the other, so that noise on the machine hits all of them
# alike. It ends with the median tps of each target and workload and the ratios, and the CPU each
# run cost per 1000 transactions: the proxy's process and PostgreSQL's (every backend). Everything is
# stopped and removed on exit.
#
# Settings (environment):
#   DURATION=15  seconds per pgbench run          ROUNDS=3     rounds
#   SCALE=10     pgbench scale                    CLIENTS=8    THREADS=2
#   TARGETS="direct pgbouncer pgbridge"           PGBRIDGE_BIN=path  skip the cargo build
#   PG_BIN=dir   PostgreSQL binaries (default: newest /usr/lib/postgresql/*/bin)
#   OUT=file     also write every run as CSV (round,workload,target,tps) to this file
#   PGBRIDGE_CONFIG_EXTRA="worker_threads = 1"   top-level lines added to pgbridge's config
#   KEEP=1       keep the temp dir (server logs, every pgbench output) instead of removing it
# Needs: PostgreSQL server and client binaries (Debian: postgresql-15 postgresql-client-15),
# pgbouncer, and cargo unless PGBRIDGE_BIN is given.
set -euo pipefail
export LC_ALL=C

DURATION=${DURATION:-15}
ROUNDS=${ROUNDS:-3}
SCALE=${SCALE:-10}
CLIENTS=${CLIENTS:-8}
THREADS=${THREADS:-2}
TARGETS=${TARGETS:-direct pgbouncer pgbridge}
OUT=${OUT:-}

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
WORKLOADS=(select-simple select-extended tpcb)

# shellcheck source=bench/lib.sh
. "$repo/bench/lib.sh"

# --- binaries ------------------------------------------------------------------------------------
find_postgres

# --- a private directory, and who runs the servers --------------------------------------------------
make_workdir pgbridge-bench

pg_started=
bouncer_pid=
bridge_pid=
cleanup() {
    local status=$?
    trap - EXIT INT TERM
    if [ -n "$bridge_pid" ] && kill -0 "$bridge_pid" 2>/dev/null; then
        kill -TERM "$bridge_pid" 2>/dev/null || true
        # pgbridge drains its sessions on SIGTERM; the benchmark's are gone already.
        for _ in $(seq 1 50); do
            kill -0 "$bridge_pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$bridge_pid" 2>/dev/null || true
    fi
    if [ -n "$bouncer_pid" ]; then
        kill -TERM "$bouncer_pid" 2>/dev/null || true
    fi
    if [ -n "$pg_started" ]; then
        "${as_server_user[@]}" "$PG_BIN/pg_ctl" -D "$work/pg/data" -m immediate -w stop \
            >/dev/null 2>&1 || true
    fi
    wait 2>/dev/null || true
    if [ -n "${KEEP:-}" ]; then
        log "kept the logs in $work"
    else
        rm -rf "$work"
    fi
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM


declare -A port=() broken=()

# --- PostgreSQL ------------------------------------------------------------------------------------
free_port "port[direct]"
server_dir pg
log "PostgreSQL from $PG_BIN on port ${port[direct]} (initdb in $work/pg)"
"${as_server_user[@]}" "$PG_BIN/initdb" -D "$work/pg/data" -U postgres -A trust -E UTF8 \
    --locale=C --no-sync >"$work/initdb.log" 2>&1 || {
    cat "$work/initdb.log" >&2
    die "initdb failed"
}
# The conventions of src/pgcluster.rs (durability off, loopback only), with buffers that hold the
# whole scale-10 data set so the runs measure the wire path, not the disk.
cat >>"$work/pg/data/postgresql.conf" <<EOF
listen_addresses = '127.0.0.1'
port = ${port[direct]}
unix_socket_directories = '$work/pg'
fsync = off
synchronous_commit = off
full_page_writes = off
max_connections = 300
shared_buffers = 256MB
logging_collector = off
log_min_messages = warning
EOF
"${as_server_user[@]}" "$PG_BIN/pg_ctl" -D "$work/pg/data" -l "$work/pg/postgres.log" -w -t 60 \
    start >/dev/null || {
    cat "$work/pg/postgres.log" >&2
    die "PostgreSQL did not start"
}
pg_started=1
"$PSQL" -X -q -h 127.0.0.1 -p "${port[direct]}" -U postgres -d postgres \
    -c 'CREATE DATABASE bench' >/dev/null
log "pgbench -i -s $SCALE"
"$PGBENCH" -i -s "$SCALE" -q -h 127.0.0.1 -p "${port[direct]}" -U postgres bench \
    >"$work/pgbench-init.log" 2>&1 || {
    cat "$work/pgbench-init.log" >&2
    die "pgbench -i failed"
}

# --- pgbouncer -------------------------------------------------------------------------------------
start_pgbouncer() {
    if ! command -v pgbouncer >/dev/null 2>&1; then
        broken[pgbouncer]="pgbouncer is not installed (apt-get install pgbouncer)"
        return
    fi
    free_port "port[pgbouncer]"
    server_dir pgbouncer
    local dir=$work/pgbouncer
    echo '"postgres" ""' >"$dir/userlist.txt"
    cat >"$dir/pgbouncer.ini" <<EOF
[databases]
bench = host=127.0.0.1 port=${port[direct]} dbname=bench

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = ${port[pgbouncer]}
unix_socket_dir =
auth_type = trust
auth_file = $dir/userlist.txt
pool_mode = session
max_client_conn = 500
default_pool_size = 100
logfile = $dir/pgbouncer.log
pidfile =
ignore_startup_parameters = extra_float_digits
EOF
    [ "${#as_server_user[@]}" -eq 0 ] || chown postgres: "$dir"/*
    log "pgbouncer $(pgbouncer --version 2>&1 | sed -n '1s/^PgBouncer //p') on port ${port[pgbouncer]}"
    "${as_server_user[@]}" pgbouncer "$dir/pgbouncer.ini" >>"$dir/stdout.log" 2>&1 &
    bouncer_pid=$!
    if ! wait_ready "${port[pgbouncer]}" 20 "$bouncer_pid"; then
        broken[pgbouncer]="did not answer within 20 s; its log: $(tail -n 5 "$dir/pgbouncer.log" "$dir/stdout.log" 2>/dev/null)"
    fi
}

# --- pgbridge --------------------------------------------------------------------------------------
start_pgbridge() {
    local bin=${PGBRIDGE_BIN:-}
    if [ -z "$bin" ]; then
        if ! command -v cargo >/dev/null 2>&1; then
            broken[pgbridge]="cargo not found (install Rust, or set PGBRIDGE_BIN)"
            return
        fi
        log "cargo build --release (pgbridge)"
        if ! (cd "$repo" && cargo build --release --bin pgbridge) >"$work/cargo.log" 2>&1; then
            broken[pgbridge]="cargo build --release failed: $(tail -n 20 "$work/cargo.log")"
            return
        fi
        bin=${CARGO_TARGET_DIR:-$repo/target}/release/pgbridge
        case "$bin" in /*) ;; *) bin=$repo/$bin ;; esac
    fi
    [ -x "$bin" ] || {
        broken[pgbridge]="no pgbridge binary at $bin"
        return
    }
    local admin_port
    free_port "port[pgbridge]"
    free_port admin_port
    local dir=$work/pgbridge
    mkdir -p "$dir/rules"
    # No rules: the benchmark measures the relay that every session goes through.
    cat >"$dir/pgbridge.toml" <<EOF
# PGBRIDGE_CONFIG_EXTRA: top-level keys to try, e.g. worker_threads = 1
${PGBRIDGE_CONFIG_EXTRA:-}
listen = "127.0.0.1:${port[pgbridge]}"
admin_listen = "127.0.0.1:$admin_port"
rules = "rules"

[primary]
url = "postgres://postgres@127.0.0.1:${port[direct]}/bench"

[mirror]
journal_dir = "journal"

[divergence]
log = "divergences.jsonl"

[limits]
max_client_connections = 500
EOF
    log "pgbridge ($bin) on port ${port[pgbridge]}"
    RUST_LOG=${RUST_LOG:-warn} "$bin" serve --config "$dir/pgbridge.toml" >"$dir/pgbridge.log" 2>&1 &
    bridge_pid=$!
    if ! wait_ready "${port[pgbridge]}" 30 "$bridge_pid"; then
        local why="did not answer a query within 30 s"
        kill -0 "$bridge_pid" 2>/dev/null || why="exited before answering a query"
        broken[pgbridge]="$why; its log: $(tail -n 10 "$dir/pgbridge.log")"
    fi
}

# direct needs no start: it is the server itself.
for target in $TARGETS; do
    case "$target" in
    direct) ;;
    pgbouncer) start_pgbouncer ;;
    pgbridge) start_pgbridge ;;
    *) die "unknown target '$target' (direct, pgbouncer, pgbridge)" ;;
    esac
done
for target in $TARGETS; do
    if [ -n "${broken[$target]:-}" ]; then
        log "$target will be skipped: ${broken[$target]}"
    fi
done

# --- the runs --------------------------------------------------------------------------------------
mkdir -p "$work/results"
workload_args() {
    case "$1" in
    select-simple) echo "-S -M simple" ;;
    select-extended) echo "-S -M extended" ;;
    tpcb) echo "-M simple" ;;
    esac
}
workload_title() {
    case "$1" in
    select-simple) echo "select-only, simple" ;;
    select-extended) echo "select-only, extended" ;;
    tpcb) echo "TPC-B-like" ;;
    esac
}

# One pgbench run; prints the tps, or nothing when the run failed (the reason goes to the log).
run_pgbench() {
    local target=$1 workload=$2 round=$3 out
    out=$work/results/$round.$workload.$target.log
    if [ "$workload" = tpcb ]; then
        # What pgbench itself does before a TPC-B-like run, done directly so that every target
        # starts from the same tables (the runs below pass -n).
        "$PSQL" -X -q -h 127.0.0.1 -p "${port[direct]}" -U postgres -d bench \
            -c 'TRUNCATE pgbench_history' -c 'VACUUM pgbench_branches, pgbench_tellers' \
            >/dev/null || log "  resetting the TPC-B tables failed"
    fi
    # shellcheck disable=SC2046 # the workload's flags are separate words
    if timeout --kill-after=10 $((DURATION + 60)) "$PGBENCH" -n -h 127.0.0.1 -p "${port[$target]}" \
        -U postgres -c "$CLIENTS" -j "$THREADS" -T "$DURATION" $(workload_args "$workload") bench \
        >"$out" 2>&1; then
        sed -n 's/^tps = \([0-9.]*\) .*/\1/p' "$out" | tail -n 1
    else
        log "  $target failed (exit $?): $(grep -v '^pgbench: warning' "$out" | tail -n 3 | tr '\n' ' ')"
    fi
}

still_running() {
    case "$1" in
    direct) "${as_server_user[@]}" "$PG_BIN/pg_ctl" -D "$work/pg/data" status >/dev/null 2>&1 ;;
    pgbouncer) kill -0 "$bouncer_pid" 2>/dev/null ;;
    pgbridge) kill -0 "$bridge_pid" 2>/dev/null ;;
    esac
}
log_of() {
    case "$1" in
    direct) echo "$work/pg/postgres.log" ;;
    pgbouncer) echo "$work/pgbouncer/pgbouncer.log" ;;
    pgbridge) echo "$work/pgbridge/pgbridge.log" ;;
    esac
}

# Clock ticks of the proxy a target goes through (0 for direct, which has none).
proxy_ticks() {
    case "$1" in
    pgbouncer) proc_ticks "$bouncer_pid" ;;
    pgbridge) proc_ticks "$bridge_pid" ;;
    *) echo 0 ;;
    esac
}

failures=0
read -r -a targets <<<"$TARGETS"
runs=$((ROUNDS * ${#WORKLOADS[@]} * ${#targets[@]}))
log "$runs runs of ${DURATION}s: scale $SCALE, $CLIENTS clients, $THREADS threads"
[ -z "$OUT" ] || echo "round,workload,target,tps" >"$OUT"
for round in $(seq 1 "$ROUNDS"); do
    for workload in "${WORKLOADS[@]}"; do
        # Rotate the order from round to round so no target always runs first.
        n=${#targets[@]}
        for i in $(seq 0 $((n - 1))); do
            target=${targets[$(((i + round - 1) % n))]}
            if [ -n "${broken[$target]:-}" ]; then
                continue
            fi
            children=$(cluster_children pg)
            ticks0=("$(cluster_ticks pg)" "$(proxy_ticks "$target")")
            tps=$(run_pgbench "$target" "$workload" "$round")
            # pgbouncer keeps its server connections between runs: only the others' backends exit.
            [ "$target" = pgbouncer ] || settle_cluster pg "$children"
            ticks1=("$(cluster_ticks pg)" "$(proxy_ticks "$target")")
            txns=$(pgbench_txns "$work/results/$round.$workload.$target.log")
            for k in 0 1; do
                [ -z "$txns" ] || cpu_per_ktxn $((ticks1[k] - ticks0[k])) "$txns" \
                    >>"$work/results/$workload.$target.cpu$k"
            done
            if [ -z "$tps" ]; then
                tps=FAIL
                failures=$((failures + 1))
                # A target that died is not run again: each further run would only time out.
                if ! still_running "$target"; then
                    broken[$target]="exited during the runs; its log: $(tail -n 10 "$(log_of "$target")" 2>/dev/null)"
                    log "  $target is gone; its remaining runs are skipped"
                fi
            else
                echo "$tps" >>"$work/results/$workload.$target"
            fi
            unit=" tps"
            [ "$tps" != FAIL ] || unit=""
            log "round $round/$ROUNDS  $(printf '%-22s %-10s' "$(workload_title "$workload")" "$target") $tps$unit"
            [ -z "$OUT" ] || echo "$round,$workload,$target,$tps" >>"$OUT"
        done
    done
done

# --- the table -------------------------------------------------------------------------------------
declare -A med=()
for workload in "${WORKLOADS[@]}"; do
    for target in "${targets[@]}"; do
        med[$workload.$target]=$(median "$work/results/$workload.$target")
    done
done

echo
echo "pgbench, scale $SCALE, $CLIENTS clients, $THREADS threads, ${DURATION}s x $ROUNDS rounds: median tps"
printf '%-22s' "workload"
for target in "${targets[@]}"; do printf '%12s' "$target"; done
has() { case " $TARGETS " in *" $1 "*) return 0 ;; *) return 1 ;; esac }
has pgbouncer && has direct && printf '%18s' "pgbouncer/direct"
has pgbridge && has direct && printf '%17s' "pgbridge/direct"
has pgbridge && has pgbouncer && printf '%19s' "pgbridge/pgbouncer"
echo
for workload in "${WORKLOADS[@]}"; do
    printf '%-22s' "$(workload_title "$workload")"
    for target in "${targets[@]}"; do
        v=${med[$workload.$target]}
        if [ -n "$v" ]; then
            printf '%12.0f' "$v"
        else
            printf '%12s' "FAIL"
        fi
    done
    has pgbouncer && has direct &&
        printf '%18s' "$(ratio "${med[$workload.pgbouncer]}" "${med[$workload.direct]}")"
    has pgbridge && has direct &&
        printf '%17s' "$(ratio "${med[$workload.pgbridge]}" "${med[$workload.direct]}")"
    has pgbridge && has pgbouncer &&
        printf '%19s' "$(ratio "${med[$workload.pgbridge]}" "${med[$workload.pgbouncer]}")"
    echo
done
echo
echo "CPU per 1000 transactions, ms (medians): the proxy's process, PostgreSQL's (every backend), and both"
printf '%-22s%-11s%8s%12s%8s\n' workload target proxy postgres total
for workload in "${WORKLOADS[@]}"; do
    for target in "${targets[@]}"; do
        c0=$(median "$work/results/$workload.$target.cpu0" 2>/dev/null)
        c1=$(median "$work/results/$workload.$target.cpu1" 2>/dev/null)
        [ -n "$c0" ] || continue
        printf '%-22s%-11s%8s%12s%8s\n' "$(workload_title "$workload")" "$target" "$c1" "$c0" \
            "$(awk -v a="$c0" -v b="${c1:-0}" 'BEGIN { print a + b }')"
    done
done
status=0
if [ "$failures" -gt 0 ]; then
    echo
    echo "$failures run(s) failed; rerun with KEEP=1 to keep every pgbench output and server log."
    status=1
fi
for target in "${targets[@]}"; do
    if [ -n "${broken[$target]:-}" ]; then
        echo
        echo "$target: ${broken[$target]}"
        status=1
    fi
done
exit "$status"
