#!/usr/bin/env bash
# The cost of moving a table's writes: a pgbench write workload through pgbridge with the writes
# on the primary (the forward mirror copies them into the target) and with the writes switched to
# the secondary (`PUT /api/tables/derived_data_bars/writes`: statements run on the target through
# the write view, the reverse mirror copies them back into the legacy table), and the pause a
# switch costs the clients while the workload runs.
#
#   bench/writes.sh                          # 3 rounds of 20 s per target
#   DURATION=5 ROUNDS=1 bench/writes.sh      # a quick look
#
# The switch needs the target in the primary's own database, so one run starts ONE throwaway
# PostgreSQL server (initdb in a temp dir, fsync off, a free loopback port, as the `postgres` user
# when run as root) with a database `bench` holding docker/primary-init.sql (derived_data_bars
# emptied, instruments) and the CREATE TABLE data_bars of docker/secondary-init.sql (not its
# instruments, which would collide). In front of it two pgbridge processes (a release build):
#   relay     no rules: pgbridge relays only (the reference)
#   bridge    rules/dxy.toml, [secondary] the same database, an admin token: its writes are
#             switched between primary and secondary by the runs below
# The workload is bench/writes-workload.sql (an upsert and an update of one bar per transaction,
# bench/mirror-workload.sql's with the upsert setting EXCLUDED's values, which the write view
# accepts): DXY through `bridge`, the migrated rows; the symbol RLY through `relay`, rows outside the
# rule's where (so every switch passes force:true, which overrides that and the missing
# backfill/verify evidence). Every round runs, per pgbench protocol:
#   relay     the relay, writing RLY
#   forward   the bridge with the writes on the primary (forward mirror)
#   reverse   the bridge with the writes on the secondary (reverse mirror)
# in an order rotating from round to round (before a run the bridge's writes are switched, idle,
# to its direction; to the primary for the relay, whose RLY rows go into the legacy table),
# and then
#   switch    the bridge with the writes on the primary, and SWITCHES times during the run a
#             switch to the secondary and one back (the run's time split evenly between them):
#             the `paused_ms` of every answer, and the longest latency of one transaction a
#             client saw (pgbench -l), the "longest client pause"
# After each bridge run, the next starts only once the forward mirror applied everything
# journaled (applied_seq == journal_seq) and the reverse one its queue (reverse.queued == 0); that
# catch-up is in the run's CPU. At the end of each round, caught up as above, the rule's image of
# the legacy table's DXY rows must equal data_bars (the EXPECTED/ACTUAL queries of
# tests/common/jobs.rs): MATCH, or MISMATCH and exit 1. Every pgbench run writes a per-transaction
# log (-l), so the longest latency of the runs without a switch is printed too, for comparison.
# Everything is stopped and removed on exit.
#
# Settings (environment):
#   DURATION=20  seconds per pgbench run          ROUNDS=3     rounds
#   CLIENTS=8    THREADS=2                        MODES="simple prepared"   pgbench -M values
#   SWITCHES=2   switch cycles (to secondary and back) per switch run
#   SWITCH_TIMEOUT_MS=10000  the switch's timeout_ms (it aborts, 409, past it)
#   PGBRIDGE_BIN=path  skip the cargo build (else cargo build --release; CARGO_TARGET_DIR is honoured)
#   PG_BIN=dir   PostgreSQL binaries (default: newest /usr/lib/postgresql/*/bin)
#   OUT=file     also write every run as CSV (round,mode,run,tps,max_latency_ms,catchup_s,paused_ms)
#   CATCHUP_TIMEOUT=120  seconds to wait for the mirrors after a run
#   PGBRIDGE_CONFIG_EXTRA="worker_threads = 1"   top-level lines added to both pgbridge configs
#   CHECK=run    compare the two tables after every run of the bridge too (default: once a round)
#   KEEP=1       keep the temp dir (server log, pgbridge logs, pgbench outputs and logs, answers)
# Needs: PostgreSQL server and client binaries (Debian: postgresql-15 postgresql-client-15), curl,
# and cargo unless PGBRIDGE_BIN is given.
set -euo pipefail
export LC_ALL=C

DURATION=${DURATION:-20}
ROUNDS=${ROUNDS:-3}
CLIENTS=${CLIENTS:-8}
THREADS=${THREADS:-2}
MODES=${MODES:-simple prepared}
SWITCHES=${SWITCHES:-2}
SWITCH_TIMEOUT_MS=${SWITCH_TIMEOUT_MS:-10000}
OUT=${OUT:-}
CATCHUP_TIMEOUT=${CATCHUP_TIMEOUT:-120}
CHECK=${CHECK:-round}
TOKEN=bench-writes-token

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
RUNS=(relay forward reverse)

# shellcheck source=bench/lib.sh
. "$repo/bench/lib.sh"
now() { date +%s.%N; }

# --- binaries ------------------------------------------------------------------------------------
find_postgres
command -v curl >/dev/null 2>&1 || die "curl is needed (apt-get install curl)"
for f in docker/primary-init.sql docker/secondary-init.sql rules/dxy.toml bench/writes-workload.sql; do
    [ -f "$repo/$f" ] || die "$repo/$f is missing"
done
[ "$SWITCHES" -ge 1 ] 2>/dev/null || die "SWITCHES must be at least 1"

# --- a private directory, and who runs the servers --------------------------------------------------
make_workdir pgbridge-writes-bench

declare -A port=() admin_port=() bridge_pid=() pg_started=()
switcher_pid=
cleanup_hook() {
    if [ -n "$switcher_pid" ]; then
        kill -TERM "$switcher_pid" 2>/dev/null || true
        wait "$switcher_pid" 2>/dev/null || true
    fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# --- PostgreSQL: one server, both tables in one database ----------------------------------------------
start_pg primary ${PRIMARY_DURABLE:+durable}
db_port=${port[primary]}
psql_at "$db_port" -f "$repo/docker/primary-init.sql" >/dev/null ||
    die "loading docker/primary-init.sql failed"
psql_at "$db_port" -c 'TRUNCATE derived_data_bars' >/dev/null
# The target's DDL alone: docker/secondary-init.sql up to the end of its first statement.
awk '{ print } /^\);/ { exit }' "$repo/docker/secondary-init.sql" >"$work/target.sql"
grep -q 'CREATE TABLE data_bars' "$work/target.sql" || die "no CREATE TABLE data_bars in docker/secondary-init.sql"
psql_at "$db_port" -f "$work/target.sql" >/dev/null || die "creating data_bars failed"

# --- pgbridge: relay and bridge ----------------------------------------------------------------------
bin=$(build_pgbridge) || exit 1
start_bridge() {
    local name=$1
    local dir=$work/bridge-$name
    local url="postgres://postgres@127.0.0.1:$db_port/bench"
    free_port "port[$name]"
    free_port "admin_port[$name]"
    mkdir -p "$dir"
    {
        echo "# PGBRIDGE_CONFIG_EXTRA: top-level keys to try, e.g. worker_threads = 1"
        echo "${PGBRIDGE_CONFIG_EXTRA:-}"
        echo "listen = \"127.0.0.1:${port[$name]}\""
        echo "admin_listen = \"127.0.0.1:${admin_port[$name]}\""
        if [ "$name" = bridge ]; then
            mkdir -p "$dir/rules"
            cp "$repo/rules/dxy.toml" "$dir/rules/"
            echo "rules = \"$dir/rules\""
        fi
        cat <<EOF

[primary]
url = "$url"
EOF
        if [ "$name" = bridge ]; then
            # The switch needs the target in the primary's own database: the same URL.
            cat <<EOF

[secondary]
url = "$url"
shared_tables = ["instruments"]
EOF
        fi
        cat <<EOF

[mirror]
journal_dir = "$dir/journal"

[divergence]
log = "$dir/divergences.jsonl"

[limits]
max_client_connections = 500

[admin]
token = "$TOKEN"
EOF
    } >"$dir/pgbridge.toml"
    launch_pgbridge "$name" "$dir"
}
start_bridge relay
start_bridge bridge

# --- the bridge's status and switches ----------------------------------------------------------------
status_json() {
    curl -fsS --max-time 2 "http://127.0.0.1:${admin_port[bridge]}/api/status" 2>/dev/null || true
}
# A number field of a JSON answer (the first with that name: journal_seq and applied_seq are the
# forward mirror's, queued the reverse mirror's, paused_ms the switch's).
field() {
    grep -o "\"$1\":[0-9.eE+-]*" <<<"$2" | head -n 1 | cut -d: -f2 || true
}
# The table's write direction (tables[0].writes).
direction() {
    grep -o '"writes":"[a-z]*"' <<<"$(status_json)" | head -n 1 | cut -d'"' -f4 || true
}
status=$(status_json)
[ -n "$(field journal_seq "$status")" ] ||
    die "GET /api/status of the bridge gave no mirror.journal_seq: '$status'"
[ "$(direction)" = primary ] || die "the bridge's writes are not on the primary at the start: '$status'"

# Switches the writes to $1 ($2 says why); appends the answer to $work/results/switches and prints
# "code paused_ms" (paused_ms empty when the switch failed).
switch_to() {
    local to=$1 why=$2 answer code body
    answer=$(curl -sS --max-time $((SWITCH_TIMEOUT_MS / 1000 + 30)) -X PUT \
        -H "Authorization: Bearer $TOKEN" -H 'Content-Type: application/json' \
        -d "{\"target\":\"$to\",\"force\":true,\"reason\":\"bench/writes.sh: $why\",\"timeout_ms\":$SWITCH_TIMEOUT_MS}" \
        -w '\n%{http_code}' "http://127.0.0.1:${admin_port[bridge]}/api/tables/derived_data_bars/writes" 2>&1) || true
    code=$(tail -n 1 <<<"$answer")
    body=$(sed '$d' <<<"$answer")
    printf '%s %s %s %s\n' "$(date +%H:%M:%S.%N)" "$to" "$code" "$(tr -d '\n' <<<"$body")" >>"$work/results/switches"
    if [ "$code" = 200 ]; then
        echo "$code $(field paused_ms "$body")"
    else
        log "  switch to $to ($why) failed: HTTP $code $body"
        echo "$code "
    fi
}

# Waits until the forward mirror applied everything journaled and the reverse mirror's queue is
# empty; prints the seconds it took from $1, or "TIMEOUT".
wait_caught_up() {
    local start=$1 s j a q deadline=$((SECONDS + CATCHUP_TIMEOUT))
    while [ "$SECONDS" -lt "$deadline" ]; do
        s=$(status_json)
        j=$(field journal_seq "$s")
        a=$(field applied_seq "$s")
        q=$(field queued "$s")
        if [ -n "$j" ] && [ -n "$a" ] && [ "$a" -ge "$j" ] && [ "${q:-0}" -eq 0 ]; then
            awk -v a="$start" -v b="$(now)" 'BEGIN { printf "%.2f\n", b - a }'
            return 0
        fi
        sleep 0.1
    done
    echo TIMEOUT
}

# --- the runs --------------------------------------------------------------------------------------
mkdir -p "$work/results"
sed "s/SYMBOL/RLY/g" "$repo/bench/writes-workload.sql" >"$work/workload-RLY.sql"
sed "s/SYMBOL/DXY/g" "$repo/bench/writes-workload.sql" >"$work/workload-DXY.sql"

# One pgbench run through pgbridge $1 with symbol $2 (results under name $3); prints
# "tps max_latency_ms", or nothing when the run failed (the reason goes to the log).
run_pgbench() {
    local bridge=$1 sym=$2 name=$3 out logs
    out=$work/results/$name.log
    logs=$work/results/$name.txn
    rm -f "$logs".*
    if timeout --kill-after=10 $((DURATION + 60)) "$PGBENCH" -n -h 127.0.0.1 -p "${port[$bridge]}" \
        -U postgres -c "$CLIENTS" -j "$THREADS" -T "$DURATION" -M "$mode" \
        -l --log-prefix="$logs" -f "$work/workload-$sym.sql" bench >"$out" 2>&1; then
        # The per-transaction log: client, transaction, latency in µs, ...
        local tps maxlat
        tps=$(sed -n 's/^tps = \([0-9.]*\) .*/\1/p' "$out" | tail -n 1)
        maxlat=$(cat "$logs".* 2>/dev/null | awk '$3 > m { m = $3 } END { printf "%.0f", m / 1000 }')
        echo "$tps $maxlat"
    else
        log "  $name failed (exit $?): $(grep -v '^pgbench: warning' "$out" | tail -n 5 | tr '\n' ' ')"
    fi
}

# Switches the writes to $1 when they are elsewhere (idle, before a run); dies when it cannot.
ensure_direction() {
    local r
    [ "$(direction)" = "$1" ] && return 0
    r=$(switch_to "$1" "before a run")
    [ "${r%% *}" = 200 ] || die "cannot switch the writes to $1"
    echo "${r#* }" >>"$work/results/idle.paused"
    [ "$(direction)" = "$1" ] || die "the writes are not on $1 after the switch: $(status_json)"
}

# During a switch run: waits, switches to the secondary, waits, back, SWITCHES times, the run's
# time split evenly; appends each paused_ms to $1 (or FAIL).
switcher() {
    local file=$1 gap i r
    gap=$(awk -v d="$DURATION" -v n="$SWITCHES" 'BEGIN { printf "%.2f", d / (2 * n + 1) }')
    for i in $(seq 1 "$SWITCHES"); do
        for to in secondary primary; do
            sleep "$gap"
            r=$(switch_to "$to" "under load")
            if [ "${r%% *}" = 200 ]; then echo "${r#* }" >>"$file"; else echo FAIL >>"$file"; fi
        done
    done
}

failures=0
catchup_timeouts=0
mismatches=0
read -r -a modes <<<"$MODES"
for mode in "${modes[@]}"; do
    case "$mode" in simple | extended | prepared) ;; *) die "unknown pgbench mode '$mode'" ;; esac
done
runs=$((ROUNDS * ${#modes[@]} * 4))
log "$runs runs of ${DURATION}s: $CLIENTS clients, $THREADS threads, modes ${modes[*]}, $SWITCHES switch cycles per switch run"
[ -z "$OUT" ] || echo "round,mode,run,tps,max_latency_ms,catchup_s,paused_ms" >"$OUT"

check_alive() {
    local name
    for name in relay bridge; do
        if ! kill -0 "${bridge_pid[$name]}" 2>/dev/null; then
            log "pgbridge $name is gone; its log:"
            tail -n 40 "$work/bridge-$name/pgbridge.log" >&2
            die "pgbridge $name exited during the runs"
        fi
    done
}

# Record one run's figures: $1 round, $2 run, $3 "tps maxlat", $4 ticks before (pg bridge), $5
# ticks after, $6 catch-up, $7 paused list.
record() {
    local round=$1 run=$2 res=$3 catchup=$6 paused=$7 tps maxlat txns k
    read -r -a t0 <<<"$4"
    read -r -a t1 <<<"$5"
    tps=${res%% *}
    maxlat=${res#* }
    [ -n "$res" ] || { tps=FAIL; maxlat=-; }
    txns=$(pgbench_txns "$work/results/$round.$mode.$run.log")
    for k in 0 1; do
        [ -z "$txns" ] || cpu_per_ktxn $((t1[k] - t0[k])) "$txns" >>"$work/results/$mode.$run.cpu$k"
    done
    if [ "$tps" = FAIL ]; then
        failures=$((failures + 1))
    else
        echo "$tps" >>"$work/results/$mode.$run"
        echo "$maxlat" >>"$work/results/$mode.$run.maxlat"
    fi
    local extra=""
    [ "$catchup" = - ] || extra+=", caught up ${catchup}s after"
    [ -z "$paused" ] || extra+=", paused_ms $paused"
    local unit=" tps"
    [ "$tps" != FAIL ] || unit=""
    log "round $round/$ROUNDS  $(printf '%-9s %-8s' "$mode" "$run") $tps$unit, max latency ${maxlat} ms$extra"
    [ -z "$OUT" ] || echo "$round,$mode,$run,$tps,$maxlat,$catchup,${paused// /;}" >>"$OUT"
}

ticks_of() { echo "$(cluster_ticks primary) $(proc_ticks "${bridge_pid[$1]}")"; }

# Waits for the mirrors, then compares the rule's image of the legacy table's DXY rows with
# data_bars (tests/common/jobs.rs EXPECTED/ACTUAL); $1 names the check. Sets verdict,
# rows_expected and rows_actual; a MISMATCH is counted and its diff kept.
check_images() {
    local label=$1 pin="SET TimeZone = 'UTC'; SET DateStyle = 'ISO, YMD'; SET extra_float_digits = 1;"
    [ "$(wait_caught_up "$(now)")" != TIMEOUT ] || log "  $label: the mirrors did not catch up; comparing anyway"
    psql_at "$db_port" -At -c "$pin" -c "SELECT 'DXY.IDX', '1m', ts, open, high, low, close, volume, 't'
        FROM derived_data_bars WHERE symbol = 'DXY' ORDER BY ts" >"$work/expected.rows" ||
        die "reading the legacy table's rows failed"
    psql_at "$db_port" -At -c "$pin" -c "SELECT symbol, timeframe, ts, open, high, low, close_px,
        volume, is_synthetic FROM data_bars ORDER BY ts" >"$work/actual.rows" ||
        die "reading the target's rows failed"
    rows_expected=$(wc -l <"$work/expected.rows")
    rows_actual=$(wc -l <"$work/actual.rows")
    if cmp -s "$work/expected.rows" "$work/actual.rows"; then
        verdict=MATCH
    else
        verdict=MISMATCH
        mismatches=$((mismatches + 1))
        diff "$work/expected.rows" "$work/actual.rows" >"$work/rows.diff.$label" || true
    fi
    log "$label  correctness: $verdict (legacy DXY image $rows_expected rows, data_bars $rows_actual$(
        [ "$verdict" = MATCH ] || echo ", $(grep -c '^[<>]' "$work/rows.diff.$label") diff lines"))"
}

for round in $(seq 1 "$ROUNDS"); do
    for mode in "${modes[@]}"; do
        for i in 0 1 2; do
            run=${RUNS[$(((i + round - 1) % 3))]}
            check_alive
            case "$run" in
                # The relay's RLY rows go straight into the legacy table: only with its writes there.
                relay) bridge=relay sym=RLY; ensure_direction primary ;;
                forward) bridge=bridge sym=DXY; ensure_direction primary ;;
                reverse) bridge=bridge sym=DXY; ensure_direction secondary ;;
            esac
            t0=$(ticks_of "$bridge")
            res=$(run_pgbench "$bridge" "$sym" "$round.$mode.$run")
            catchup=-
            if [ "$bridge" = bridge ]; then
                catchup=$(wait_caught_up "$(now)")
                if [ "$catchup" = TIMEOUT ]; then
                    catchup_timeouts=$((catchup_timeouts + 1))
                    log "  the mirrors did not catch up within ${CATCHUP_TIMEOUT}s: $(status_json)"
                else
                    echo "$catchup" >>"$work/results/catchup"
                fi
            fi
            record "$round" "$run" "$res" "$t0" "$(ticks_of "$bridge")" "$catchup" ""
            [ "$CHECK" != run ] || [ "$bridge" != bridge ] || check_images "$round.$mode.$run"
        done

        # The switch run: the writes on the primary, switched back and forth under the load.
        check_alive
        ensure_direction primary
        pfile=$work/results/$round.$mode.paused
        : >"$pfile"
        t0=$(ticks_of bridge)
        switcher "$pfile" &
        switcher_pid=$!
        res=$(run_pgbench bridge DXY "$round.$mode.switch")
        wait "$switcher_pid" 2>/dev/null || true
        switcher_pid=
        catchup=$(wait_caught_up "$(now)")
        [ "$catchup" != TIMEOUT ] || {
            catchup_timeouts=$((catchup_timeouts + 1))
            log "  the mirrors did not catch up within ${CATCHUP_TIMEOUT}s: $(status_json)"
        }
        cat "$pfile" >>"$work/results/paused"
        grep -v FAIL "$pfile" >>"$work/results/$mode.paused" || true
        switch_failures=$(grep -c FAIL "$pfile" || true)
        failures=$((failures + switch_failures))
        record "$round" switch "$res" "$t0" "$(ticks_of bridge)" "$catchup" "$(tr '\n' ' ' <"$pfile" | sed 's/ $//')"
        [ "$(direction)" = primary ] || log "  the writes are on $(direction) after the switch run"
        [ "$CHECK" != run ] || check_images "$round.$mode.switch"
    done

    # --- correctness, once per round ---------------------------------------------------------------
    check_images "round-$round"
    echo "$round $verdict $rows_expected $rows_actual" >>"$work/results/verdicts"
done

# --- the table -------------------------------------------------------------------------------------
maximum() {
    [ -s "$1" ] || return 0
    sort -g "$1" | tail -n 1
}
fmt_tps() {
    if [ -n "$1" ]; then printf '%10.0f' "$1"; else printf '%10s' FAIL; fi
}
final=$(status_json)

echo
echo "writes benchmark: upsert + update of one bar per transaction, $CLIENTS clients, $THREADS threads,"
echo "${DURATION}s x $ROUNDS rounds, one PostgreSQL database: median tps"
[ -z "${PRIMARY_DURABLE:-}" ] || echo "(the server fsyncs its commits)"
echo "  forward: writes on the primary (forward mirror); reverse: writes on the secondary (reverse mirror)"
printf '%-10s%10s%10s%10s%17s%17s\n' mode relay forward reverse reverse/forward forward/relay
for mode in "${modes[@]}"; do
    r=$(median "$work/results/$mode.relay")
    f=$(median "$work/results/$mode.forward")
    v=$(median "$work/results/$mode.reverse")
    printf '%-10s%s%s%s%17s%17s\n' "$mode" "$(fmt_tps "$r")" "$(fmt_tps "$f")" "$(fmt_tps "$v")" \
        "$(ratio "$v" "$f")" "$(ratio "$f" "$r")"
done
echo
echo "CPU per 1000 transactions, ms (medians; the mirrors' catch-up after a run included):"
printf '%-10s%-9s%10s%10s%8s\n' mode run postgres pgbridge total
for mode in "${modes[@]}"; do
    for run in "${RUNS[@]}" switch; do
        cpu=()
        for k in 0 1; do cpu+=("$(median "$work/results/$mode.$run.cpu$k" 2>/dev/null)"); done
        total=$(awk -v a="${cpu[0]:-0}" -v b="${cpu[1]:-0}" 'BEGIN { print a + b }')
        printf '%-10s%-9s%10s%10s%8s\n' "$mode" "$run" "${cpu[0]:--}" "${cpu[1]:--}" "$total"
    done
done
echo
echo "switches under load ($SWITCHES to the secondary and $SWITCHES back per run, $CLIENTS clients):"
printf '%-10s%10s%12s%12s%14s%22s\n' mode switches paused_ms paused_ms "switch run" "longest client pause"
printf '%-10s%10s%12s%12s%14s%22s\n' "" "" median max "tps median" "ms: median (max)"
for mode in "${modes[@]}"; do
    n=$(wc -l <"$work/results/$mode.paused" 2>/dev/null || echo 0)
    printf '%-10s%10s%12s%12s%14s%22s\n' "$mode" "$n" "$(median "$work/results/$mode.paused")" \
        "$(maximum "$work/results/$mode.paused")" "$(fmt_tps "$(median "$work/results/$mode.switch")" | tr -d ' ')" \
        "$(median "$work/results/$mode.switch.maxlat") ($(maximum "$work/results/$mode.switch.maxlat"))"
done
echo "longest latency of one transaction in the runs without a switch, ms (median (max)):"
for mode in "${modes[@]}"; do
    line="  $mode:"
    for run in "${RUNS[@]}"; do
        line+=" $run $(median "$work/results/$mode.$run.maxlat") ($(maximum "$work/results/$mode.$run.maxlat"))"
    done
    echo "$line"
done
idle=$(median "$work/results/idle.paused" 2>/dev/null)
[ -z "$idle" ] || echo "paused_ms of the switches between runs (idle), median: $idle"
echo
max_catchup=$(maximum "$work/results/catchup")
printf '%-46s %s\n' "max catch-up after a run (s)" "${max_catchup:--}$([ "$catchup_timeouts" -eq 0 ] || echo " ($catchup_timeouts timed out)")"
printf '%-46s %s\n' "forward journal_seq / applied_seq at the end" "$(field journal_seq "$final") / $(field applied_seq "$final")"
printf '%-46s %s\n' "reverse applied / queued at the end" "$(field applied "$final") / $(field queued "$final")"
printf '%-46s %s\n' "rows at the end: legacy DXY image / data_bars" "$rows_expected / $rows_actual"
echo "correctness per round: $(awk '{ printf "%s%s", (NR > 1 ? " " : ""), $2 }' "$work/results/verdicts")"
if [ "$mismatches" -eq 0 ]; then echo "correctness: MATCH"; else echo "correctness: MISMATCH"; fi

status=0
if [ "$mismatches" -gt 0 ]; then
    for f in "$work"/rows.diff.*; do
        echo "${f#"$work"/rows.diff.}: the target differs from the legacy table's DXY image ($(grep -c '^<' "$f") lines only in the legacy image, $(grep -c '^>' "$f") only in data_bars; first lines of the diff):"
        head -n 12 "$f"
    done
    status=1
fi
if [ "$failures" -gt 0 ]; then
    echo
    echo "$failures run(s) or switch(es) failed; rerun with KEEP=1 to keep every pgbench output and pgbridge log."
    status=1
fi
if [ "$catchup_timeouts" -gt 0 ]; then
    echo "the mirrors did not catch up within ${CATCHUP_TIMEOUT}s after $catchup_timeouts run(s)"
    status=1
fi
if [ -s "$work/bridge-bridge/divergences.jsonl" ]; then
    echo "divergences recorded (first 5):"
    head -n 5 "$work/bridge-bridge/divergences.jsonl"
fi
# Until the first switch installs its change table the reverse mirror retries, warning each time.
absent='relation "pgbridge.reverse_changes" does not exist'
n_absent=$(grep -E ' (ERROR|WARN) ' "$work/bridge-bridge/pgbridge.log" 2>/dev/null | grep -cF "$absent" || true)
[ "${n_absent:-0}" -eq 0 ] ||
    echo "the bridge's reverse mirror warned $n_absent time(s) that $absent (before the first switch creates it)"
if grep -E ' (ERROR|WARN) ' "$work/bridge-bridge/pgbridge.log" 2>/dev/null | grep -qvF "$absent"; then
    echo "the bridge logged other warnings or errors (first 10):"
    grep -E ' (ERROR|WARN) ' "$work/bridge-bridge/pgbridge.log" | grep -vF "$absent" | head -n 10
fi
exit "$status"
