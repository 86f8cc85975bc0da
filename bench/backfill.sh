#!/usr/bin/env bash
# The backfill's speed and its cost to the applications: rows per second of a backfill of rows
# the mirror never saw, on an idle system and while bench/mirror.sh's write load runs through
# pgbridge, and the load's throughput during the backfill against the same load without one.
#
#   bench/backfill.sh                          # 3 rounds, 200,000 rows, 15 s load runs
#   DURATION=8 ROUNDS=1 bench/backfill.sh      # a quick look
#
# One run starts two throwaway PostgreSQL servers (as bench/mirror.sh does: docker/*-init.sql in
# a database `bench`) and one pgbridge (a release build) with rules/dxy.toml mirroring to the
# secondary. Each round:
#   idle     for each chunk size of CHUNKS: ROWS DXY bars written straight to the primary (the
#            mirror never sees them), the target emptied, then POST /api/tables/.../backfill
#            {"chunk_rows": size} and GET /api/jobs/ID until done: rows_done / seconds; after the
#            default size's, a verify of those rows (POST /api/verify): rows / seconds
#   loaded   the same backfill at the default chunk size and rate, started 2 s into a pgbench
#            run of bench/mirror-workload.sql (CLIENTS clients, MODE) through pgbridge: the
#            backfill's rows per second, and pgbench's tps over the seconds the backfill ran
#            (pgbench -P 1) against the tps of a run of the same load with no backfill
# At the end the secondary's data_bars must equal the rule's mapping of the primary's DXY rows.
# It prints the medians of the rounds.
#
# Settings (environment):
#   ROWS=200000   rows to backfill          CHUNKS="1000 5000 20000"   chunk sizes (idle)
#   DURATION=15   seconds per pgbench run   ROUNDS=3   rounds
#   CLIENTS=8  THREADS=2  MODE=prepared     the load (pgbench -c, -j, -M)
#   MAX_ROWS_PER_SEC=    the loaded backfill's rate (empty: the default, 5000; 0: unthrottled);
#                        the idle ones run unthrottled
#   PGBRIDGE_BIN=path  skip the cargo build (else cargo build --release; CARGO_TARGET_DIR honoured)
#   PG_BIN=dir   PostgreSQL binaries        KEEP=1   keep the temp dir (logs)
# Needs: PostgreSQL server and client binaries, curl, and cargo unless PGBRIDGE_BIN is given.
set -euo pipefail
export LC_ALL=C

ROWS=${ROWS:-200000}
CHUNKS=${CHUNKS:-1000 5000 20000}
DURATION=${DURATION:-15}
ROUNDS=${ROUNDS:-3}
CLIENTS=${CLIENTS:-8}
THREADS=${THREADS:-2}
MODE=${MODE:-prepared}
MAX_ROWS_PER_SEC=${MAX_ROWS_PER_SEC:-}
TOKEN=bench-token

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=bench/lib.sh
. "$repo/bench/lib.sh"
now() { date +%s.%N; }

find_postgres
command -v curl >/dev/null 2>&1 || die "curl is needed (apt-get install curl)"
make_workdir pgbridge-backfill-bench
declare -A port=() admin_port=() bridge_pid=() pg_started=()
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

start_dxy_servers
bin=$(build_pgbridge) || exit 1
dir=$work/bridge
mkdir -p "$dir/rules" "$work/results"
cp "$repo/rules/dxy.toml" "$dir/rules/"
free_port "port[bridge]"
free_port "admin_port[bridge]"
cat >"$dir/pgbridge.toml" <<EOT
listen = "127.0.0.1:${port[bridge]}"
admin_listen = "127.0.0.1:${admin_port[bridge]}"
rules = "$dir/rules"

[primary]
url = "postgres://postgres@127.0.0.1:${port[primary]}/bench"

[secondary]
url = "postgres://postgres@127.0.0.1:${port[secondary]}/bench"
shared_tables = ["instruments"]

[mirror]
journal_dir = "$dir/journal"

[divergence]
log = "$dir/divergences.jsonl"

[admin]
token = "$TOKEN"
audit_log = "$dir/audit.jsonl"

[limits]
max_client_connections = 500
EOT
launch_pgbridge bridge "$dir"
sed "s/SYMBOL/DXY/g" "$repo/bench/mirror-workload.sql" >"$work/workload.sql"

api() {
    curl -fsS --max-time 10 -H "Authorization: Bearer $TOKEN" "$@" 2>/dev/null || true
}
field() { grep -o "\"$1\":[0-9.eE+-]*" <<<"$2" | head -n 1 | cut -d: -f2 || true; }
state() { grep -o '"state":"[a-z]*"' <<<"$1" | head -n 1 | cut -d'"' -f4 || true; }

# Waits until the mirror has applied everything journaled (up to 120 s).
wait_caught_up() {
    local s j a deadline=$((SECONDS + 120))
    while [ "$SECONDS" -lt "$deadline" ]; do
        s=$(api "http://127.0.0.1:${admin_port[bridge]}/api/status")
        j=$(field journal_seq "$s")
        a=$(field applied_seq "$s")
        if [ -n "$j" ] && [ -n "$a" ] && [ "$a" -ge "$j" ]; then return 0; fi
        sleep 0.2
    done
    die "the mirror did not catch up: $s"
}

# ROWS DXY bars on the primary behind pgbridge's back (the DXY rows before them removed), the
# target emptied: what a backfill then copies. Run only while no load writes.
load_rows() {
    wait_caught_up
    psql_at "${port[primary]}" -c "DELETE FROM derived_data_bars WHERE symbol = 'DXY'" -c "INSERT INTO
        derived_data_bars (symbol, ts, open, high, low, close, volume)
        SELECT 'DXY', timestamptz '2026-01-01 00:00:00+00' + g * interval '1 minute', 100 + g % 50,
        101 + g % 50, 99 + g % 50, round(100.5 + (g % 97) / 7.0, 6), 1000 + g
        FROM generate_series(1, $ROWS) g" -c "VACUUM ANALYZE derived_data_bars" >/dev/null
    psql_at "${port[secondary]}" -c "TRUNCATE data_bars" >/dev/null
}

# Starts a job with POST to API path $2 and JSON body $3, a $1 (for messages), and waits for
# it to end done; prints the job's JSON.
run_job() {
    local kind=$1 path=$2 body=$3 answer id j st
    answer=$(api -X POST -H 'Content-Type: application/json' -d "$body" \
        "http://127.0.0.1:${admin_port[bridge]}$path")
    id=$(field job "$answer")
    [ -n "$id" ] || die "the $kind did not start: '$answer'"
    while :; do
        j=$(api "http://127.0.0.1:${admin_port[bridge]}/api/jobs/$id")
        st=$(state "$j")
        [ "$st" != running ] && [ -n "$st" ] && break
        sleep 0.1
    done
    [ "$st" = done ] || die "$kind job $id ended $st: $j"
    echo "$j"
}

# Runs a backfill with JSON body $1 to its end; prints "rows seconds start end".
backfill() {
    local start j
    start=$(now)
    j=$(run_job backfill /api/tables/derived_data_bars/backfill "$1")
    awk -v r="$(field rows_done "$j")" -v a="$start" -v b="$(now)" \
        'BEGIN { printf "%d %.3f %.3f %.3f\n", r, b - a, a, b }'
}

rate_of() { awk '{ printf "%.0f\n", $1 / $2 }' <<<"$1"; }

# A verify of the rows a backfill just copied (idle, default chunk size): appends its rows per
# second to $work/results/verify.idle; a verify that finds a difference stops the benchmark.
measure_verify() {
    local start j
    wait_caught_up
    start=$(now)
    j=$(run_job verify /api/verify '{"tables":["derived_data_bars"]}')
    grep -q '"clean":true' <<<"$j" || die "the verify found differences: $j"
    awk -v r="$(field rows_done "$j")" -v a="$start" -v b="$(now)" \
        'BEGIN { printf "%.0f\n", r / (b - a) }' >>"$work/results/verify.idle"
}

# A pgbench run of the load for DURATION s with per-second progress into $1; prints the tps.
run_load() {
    local out=$1
    timeout --kill-after=10 $((DURATION + 60)) "$PGBENCH" -n -h 127.0.0.1 -p "${port[bridge]}" \
        -U postgres -c "$CLIENTS" -j "$THREADS" -T "$DURATION" -M "$MODE" -P 1 \
        -f "$work/workload.sql" bench >"$out" 2>&1 || die "pgbench failed: $(tail -n 5 "$out")"
    sed -n 's/^tps = \([0-9.]*\) .*/\1/p' "$out" | tail -n 1
}

# The mean of pgbench's per-second tps (file $1, run begun at $2) over the seconds fully inside
# [$3, $4].
tps_between() {
    sed -n 's/^progress: \([0-9.]*\) s, \([0-9.]*\) tps.*/\1 \2/p' "$1" |
        awk -v t0="$2" -v a="$3" -v b="$4" '{ at = t0 + $1 } at - 1 >= a && at <= b { s += $2; n++ }
            END { if (n) printf "%.1f\n", s / n }'
}

log "$ROUNDS rounds: $ROWS rows, chunks $CHUNKS idle; load $CLIENTS clients ($MODE) for ${DURATION}s"
for round in $(seq 1 "$ROUNDS"); do
    for chunk in $CHUNKS; do
        load_rows
        r=$(backfill "{\"chunk_rows\":$chunk,\"max_rows_per_sec\":0}")
        rate_of "$r" >>"$work/results/idle.$chunk"
        log "round $round/$ROUNDS  idle    chunk $chunk: $(rate_of "$r") rows/s ($r)"
        [ "$chunk" != 5000 ] || measure_verify
    done
    # The load alone, then the load with a backfill started 2 s into it.
    load_rows
    base=$(run_load "$work/results/$round.base.log")
    echo "$base" >>"$work/results/tps.base"
    wait_caught_up
    t0=$(now)
    run_load "$work/results/$round.loaded.log" >"$work/results/$round.loaded.tps" &
    load_pid=$!
    sleep 2
    r=$(backfill "{${MAX_ROWS_PER_SEC:+\"max_rows_per_sec\":$MAX_ROWS_PER_SEC}}")
    wait "$load_pid" || die "the loaded pgbench run failed"
    read -r _ _ b_start b_end <<<"$r"
    during=$(tps_between "$work/results/$round.loaded.log" "$t0" "$b_start" "$b_end")
    rate_of "$r" >>"$work/results/loaded"
    if [ -n "$during" ]; then
        echo "$during" >>"$work/results/tps.during"
        echo "$(ratio "$during" "$base")" >>"$work/results/tps.ratio"
    fi
    log "round $round/$ROUNDS  loaded  $(rate_of "$r") rows/s ($r); load $base tps alone, ${during:-?} tps during the backfill"
done

# ---- correctness ------------------------------------------------------------------------------------
wait_caught_up
pin="SET TimeZone = 'UTC'; SET DateStyle = 'ISO, YMD'; SET extra_float_digits = 1;"
psql_at "${port[primary]}" -At -c "$pin" -c "SELECT 'DXY.IDX', '1m', ts, open, high, low, close,
    volume, true FROM derived_data_bars WHERE symbol = 'DXY' ORDER BY ts" >"$work/primary.rows"
psql_at "${port[secondary]}" -At -c "$pin" -c "SELECT symbol, timeframe, ts, open, high, low,
    close_px, volume, is_synthetic FROM data_bars ORDER BY ts" >"$work/secondary.rows"
verdict=MATCH
cmp -s "$work/primary.rows" "$work/secondary.rows" || verdict=MISMATCH

# The median of file $1, or "-" when it is missing or empty.
med() {
    local v=""
    [ ! -s "$1" ] || v=$(median "$1")
    echo "${v:--}"
}
echo
echo "backfill benchmark: $ROWS rows, ${DURATION}s load runs of $CLIENTS clients ($MODE), $ROUNDS rounds: medians"
printf '%-40s %s\n' "situation" "value"
for chunk in $CHUNKS; do
    printf '%-40s %s\n' "idle, chunk_rows $chunk (rows/s)" "$(med "$work/results/idle.$chunk")"
done
printf '%-40s %s\n' "verify, idle (rows/s)" "$(med "$work/results/verify.idle")"
printf '%-40s %s\n' "under the load, default chunk (rows/s)" "$(med "$work/results/loaded")"
printf '%-40s %s\n' "load alone (tps)" "$(med "$work/results/tps.base")"
printf '%-40s %s\n' "load during the backfill (tps)" "$(med "$work/results/tps.during")"
printf '%-40s %s\n' "load during / alone" "$(med "$work/results/tps.ratio")"
echo "correctness: $verdict"
[ "$verdict" = MATCH ] || exit 1
