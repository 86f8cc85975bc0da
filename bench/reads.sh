#!/usr/bin/env bash
# The cost of the read switchover: a pgbench read workload on a migrated table, directly on the
# primary and through pgbridge with the table's reads served by the primary, compared in shadow
# (every read, [shadow] sample = 1.0) and served by the secondary.
#
#   bench/reads.sh                           # 3 rounds of 15 s per protocol and target
#   DURATION=5 ROUNDS=1 bench/reads.sh       # a quick look
#
# One run starts two throwaway PostgreSQL servers (initdb in a temp dir, fsync off, free loopback
# ports, as the `postgres` user when run as root) with the DXY schemas (docker/*-init.sql) in a
# database `bench`, loads ROWS one-minute DXY bars into the primary's derived_data_bars and their
# mapping (rules/dxy.toml) into the secondary's data_bars, and starts one pgbridge (a release
# build) with rules/dxy.toml in front of the primary. The workload (bench/reads-workload.sql) reads
# one random bar by its key. Every round runs each protocol against the four targets, in an order
# that rotates from round to round:
#   direct     the primary itself
#   primary    pgbridge, reads = primary (the start of a migration)
#   shadow     pgbridge, reads = shadow: served by the primary, every read also run on the
#              secondary and compared
#   secondary  pgbridge, reads = secondary: served by the secondary
# The flag is switched through the admin API (PUT /api/tables/derived_data_bars/reads) between
# runs, as an operator would. It prints the median tps per protocol and target and the ratios
# shadow/primary, secondary/primary and primary/direct, then pgbridge's counters: shadow reads by
# result and reads the secondary served or handed back. A shadow mismatch or a secondary read that
# fell back exits 1 (the data are the same on both sides).
#
# Settings (environment):
#   DURATION=15  seconds per pgbench run          ROUNDS=3     rounds
#   CLIENTS=8    THREADS=2                        MODES="simple prepared"   pgbench -M values
#   ROWS=20000   bars loaded    TARGETS="direct primary shadow secondary"   which, in that order
#   SHADOW_SAMPLE=1.0  [shadow] sample: the share of shadow-flagged reads compared
#   PGBRIDGE_BIN=path  skip the cargo build (else cargo build --release; CARGO_TARGET_DIR is honoured)
#   PG_BIN=dir   PostgreSQL binaries (default: newest /usr/lib/postgresql/*/bin)
#   OUT=file     also write every run as CSV (round,mode,target,tps)
#   KEEP=1       keep the temp dir (server logs, pgbridge log, pgbench outputs)
# Needs: PostgreSQL server and client binaries (Debian: postgresql-15 postgresql-client-15), curl,
# and cargo unless PGBRIDGE_BIN is given.
set -euo pipefail
export LC_ALL=C

DURATION=${DURATION:-15}
ROUNDS=${ROUNDS:-3}
CLIENTS=${CLIENTS:-8}
THREADS=${THREADS:-2}
MODES=${MODES:-simple prepared}
ROWS=${ROWS:-20000}
OUT=${OUT:-}
TOKEN=bench-token

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
read -r -a TARGETS <<<"${TARGETS:-direct primary shadow secondary}"

# shellcheck source=bench/lib.sh
. "$repo/bench/lib.sh"

find_postgres
command -v curl >/dev/null 2>&1 || die "curl is needed (apt-get install curl)"
for f in docker/primary-init.sql docker/secondary-init.sql rules/dxy.toml bench/reads-workload.sql; do
    [ -f "$repo/$f" ] || die "$repo/$f is missing"
done
make_workdir pgbridge-reads-bench
declare -A port=() admin_port=() bridge_pid=() pg_started=()
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# --- the two databases, with the same bars on both sides ------------------------------------------
start_dxy_servers
bar="'2026-01-01 00:00:00+00'::timestamptz + g * interval '1 minute', 100 + g % 50, 101 + g % 50,
     99 + g % 50, round(100.5 + (g % 97) / 7.0, 6), 1000 + g"
log "loading $ROWS bars on both sides"
psql_at "${port[primary]}" -c "TRUNCATE derived_data_bars" -c "INSERT INTO derived_data_bars
    (symbol, ts, open, high, low, close, volume)
    SELECT 'DXY', $bar FROM generate_series(0, $ROWS - 1) g" -c "ANALYZE" >/dev/null
psql_at "${port[secondary]}" -c "TRUNCATE data_bars" -c "INSERT INTO data_bars
    (symbol, timeframe, ts, open, high, low, close_px, volume, is_synthetic)
    SELECT 'DXY.IDX', '1m', $bar, true FROM generate_series(0, $ROWS - 1) g" -c "ANALYZE" >/dev/null

# --- pgbridge --------------------------------------------------------------------------------------
bin=$(build_pgbridge) || exit 1
dir=$work/bridge
mkdir -p "$dir/rules"
cp "$repo/rules/dxy.toml" "$dir/rules/"
free_port "port[bridge]"
free_port "admin_port[bridge]"
cat >"$dir/pgbridge.toml" <<EOT
${PGBRIDGE_CONFIG_EXTRA:-}
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

[shadow]
sample = ${SHADOW_SAMPLE:-1.0}

[admin]
token = "$TOKEN"
audit_log = "$dir/audit.jsonl"

[limits]
max_client_connections = 500
EOT
launch_pgbridge bridge "$dir"

# Switches where reads of derived_data_bars are served.
set_reads() {
    local answer
    answer=$(curl -fsS --max-time 10 -X PUT -H "Authorization: Bearer $TOKEN" \
        -H 'Content-Type: application/json' \
        -d "{\"source\":\"$1\",\"reason\":\"bench/reads.sh\",\"force\":true}" \
        "http://127.0.0.1:${admin_port[bridge]}/api/tables/derived_data_bars/reads") ||
        die "switching reads to $1 failed: $answer"
}
# The sum of the samples of metric $1 with label text $2.
metric() {
    curl -fsS --max-time 5 "http://127.0.0.1:${admin_port[bridge]}/metrics" |
        awk -v name="$1" -v label="$2" 'index($0, name "{") == 1 && index($0, label) { s += $NF }
            END { printf "%d\n", s }'
}

# --- the runs --------------------------------------------------------------------------------------
mkdir -p "$work/results"
run_pgbench() {
    local p=$1 mode=$2 out=$3
    if timeout --kill-after=10 $((DURATION + 60)) "$PGBENCH" -n -h 127.0.0.1 -p "$p" \
        -U postgres -c "$CLIENTS" -j "$THREADS" -T "$DURATION" -M "$mode" -D "rows=$ROWS" \
        -f "$repo/bench/reads-workload.sql" bench >"$out" 2>&1; then
        sed -n 's/^tps = \([0-9.]*\) .*/\1/p' "$out" | tail -n 1
    else
        log "  pgbench failed (exit $?): $(grep -v '^pgbench: warning' "$out" | tail -n 5 | tr '\n' ' ')"
    fi
}
read -r -a modes <<<"$MODES"
for mode in "${modes[@]}"; do
    case "$mode" in simple | extended | prepared) ;; *) die "unknown pgbench mode '$mode'" ;; esac
done
log "$((ROUNDS * ${#modes[@]} * ${#TARGETS[@]})) runs of ${DURATION}s: $CLIENTS clients, $THREADS threads, modes ${modes[*]}"
[ -z "$OUT" ] || echo "round,mode,target,tps" >"$OUT"
failures=0
for round in $(seq 1 "$ROUNDS"); do
    for mode in "${modes[@]}"; do
        for i in "${!TARGETS[@]}"; do
            target=${TARGETS[$(((i + round - 1) % ${#TARGETS[@]}))]}
            kill -0 "${bridge_pid[bridge]}" 2>/dev/null || {
                tail -n 40 "$dir/pgbridge.log" >&2
                die "pgbridge exited during the runs"
            }
            if [ "$target" = direct ]; then
                p=${port[primary]}
            else
                set_reads "$target"
                p=${port[bridge]}
            fi
            tps=$(run_pgbench "$p" "$mode" "$work/results/$round.$mode.$target.log")
            if [ -z "$tps" ]; then
                tps=FAIL
                failures=$((failures + 1))
            else
                echo "$tps" >>"$work/results/$mode.$target"
            fi
            log "round $round/$ROUNDS  $(printf '%-9s %-10s' "$mode" "$target") $tps"
            [ -z "$OUT" ] || echo "$round,$mode,$target,$tps" >>"$OUT"
        done
    done
done
set_reads primary

# --- the table -------------------------------------------------------------------------------------
echo
echo "read benchmark: one bar by its key, $ROWS bars, $CLIENTS clients, $THREADS threads,"
echo "${DURATION}s x $ROUNDS rounds: median tps"
printf '%-10s%10s%10s%10s%10s%16s%18s%16s\n' mode direct primary shadow secondary \
    shadow/primary secondary/primary primary/direct
for mode in "${modes[@]}"; do
    d=$(median "$work/results/$mode.direct")
    p=$(median "$work/results/$mode.primary")
    s=$(median "$work/results/$mode.shadow")
    c=$(median "$work/results/$mode.secondary")
    printf '%-10s%10.0f%10.0f%10.0f%10.0f%16s%18s%16s\n' "$mode" "${d:-0}" "${p:-0}" "${s:-0}" \
        "${c:-0}" "$(ratio "$s" "$p")" "$(ratio "$c" "$p")" "$(ratio "$p" "$d")"
done
echo
equal=$(metric pgbridge_shadow_reads_total 'result="equal"')
mismatch=$(metric pgbridge_shadow_reads_total 'result="mismatch"')
dropped=$(metric pgbridge_shadow_reads_total 'result="dropped"')
other=$(($(metric pgbridge_shadow_reads_total 'result="error"') + $(metric pgbridge_shadow_reads_total 'result="timeout"')))
served=$(metric pgbridge_secondary_reads_total 'result="served"')
fallback=$(metric pgbridge_secondary_reads_total 'result="fallback"')
echo "shadow reads: $equal equal, $mismatch mismatched, $other failed, $dropped dropped (over capacity)"
echo "secondary: $served reads served, $fallback handed to the primary"
[ "$failures" -eq 0 ] || die "$failures pgbench runs failed"
[ "$mismatch" -eq 0 ] && [ "$fallback" -eq 0 ] || die "the two sides disagreed (see $dir/divergences.jsonl; KEEP=1 keeps it)"
