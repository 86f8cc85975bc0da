#!/usr/bin/env bash
# The cost of mirroring: a pgbench write workload on a migrated table through pgbridge as a plain
# relay and through pgbridge mirroring the rows to a secondary (`rows` mode, rules/dxy.toml).
#
#   bench/mirror.sh                          # 3 rounds of 15 s per protocol and target
#   DURATION=5 ROUNDS=1 bench/mirror.sh      # a quick look
#
# One run starts two throwaway PostgreSQL servers (initdb in a temp dir, fsync off, free loopback
# ports, as the `postgres` user when run as root): the primary with docker/primary-init.sql and the
# secondary with docker/secondary-init.sql, both in a database `bench`, derived_data_bars emptied.
# In front of the primary it starts two pgbridge processes (a release build):
#   relay     no rules: pgbridge relays only
#   mirrored  rules/dxy.toml, [secondary] the secondary's bench, journal and divergence log in the
#             temp dir: DXY bars written to derived_data_bars are mirrored into data_bars
# The workload (bench/mirror-workload.sql) is one transaction per bar: an upsert and an update of
# the same row. Through `mirrored` it writes DXY, the migrated rows; through `relay` it writes the
# symbol RLY (same statement, same length), so the relay's unmirrored writes never touch the rows
# compared at the end. Every round runs both protocols (-M simple, -M prepared) against both targets,
# the target order alternating from round to round. While a mirrored run goes, /api/status is
# sampled every 0.5 s for the mirror's lag; after it, the time until applied_seq == journal_seq is
# the catch-up time (the next run starts only then, so the applier never steals the next run's CPU).
# At the end the secondary's data_bars must equal the rule's mapping of the primary's DXY rows:
# MATCH, or MISMATCH and exit 1. It prints the median tps per protocol and target, the ratio
# mirrored/relay, the largest lag and catch-up time, and the applier's rate. Everything is stopped
# and removed on exit.
#
# Settings (environment):
#   DURATION=15  seconds per pgbench run          ROUNDS=3     rounds
#   CLIENTS=8    THREADS=2                        MODES="simple prepared"   pgbench -M values
#   RATE=tps     pgbench -R: both targets run at this rate, so their CPU per transaction compares
#                like for like (the tps columns then show only whether a target kept up)
#   PRIMARY_DURABLE=1  the primary fsyncs its commits (fsync, synchronous_commit and
#                full_page_writes on), as in production: the relay's COMMIT then waits for a disk
#                flush too, as the mirrored one waits for the journal's. Default: durability off.
#   SECONDARY=paused  stop the secondary's processes (SIGSTOP) during each mirrored run and let them
#                go on (SIGCONT) after it: the run measures the session path alone (capture and
#                journal), as when the secondary has a machine of its own, and the catch-up after
#                it the applier's rate on a backlog. Default: running.
#   MIRROR_EXTRA="order_rows = true"  lines added to both pgbridges' [mirror] section (the
#                relay has no rules, so they change only the mirrored one)
#   PGBRIDGE_BIN=path  skip the cargo build (else cargo build --release; CARGO_TARGET_DIR is honoured)
#   PG_BIN=dir   PostgreSQL binaries (default: newest /usr/lib/postgresql/*/bin)
#   OUT=file     also write every run as CSV (round,mode,target,tps,max_lag_s,catchup_s,journal_seq)
#   CATCHUP_TIMEOUT=120  seconds to wait for the applier after a mirrored run
#   PGBRIDGE_CONFIG_EXTRA="worker_threads = 1"   top-level lines added to both pgbridge configs
#   KEEP=1       keep the temp dir (server logs, pgbridge logs, pgbench outputs, status samples)
# Needs: PostgreSQL server and client binaries (Debian: postgresql-15 postgresql-client-15), curl,
# and cargo unless PGBRIDGE_BIN is given.
set -euo pipefail
export LC_ALL=C

DURATION=${DURATION:-15}
ROUNDS=${ROUNDS:-3}
CLIENTS=${CLIENTS:-8}
THREADS=${THREADS:-2}
MODES=${MODES:-simple prepared}
OUT=${OUT:-}
CATCHUP_TIMEOUT=${CATCHUP_TIMEOUT:-120}

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TARGETS=(relay mirrored)
declare -A symbol=([relay]=RLY [mirrored]=DXY)

# shellcheck source=bench/lib.sh
. "$repo/bench/lib.sh"
now() { date +%s.%N; }

# --- binaries ------------------------------------------------------------------------------------
find_postgres
command -v curl >/dev/null 2>&1 || die "curl is needed (apt-get install curl)"
for f in docker/primary-init.sql docker/secondary-init.sql rules/dxy.toml bench/mirror-workload.sql; do
    [ -f "$repo/$f" ] || die "$repo/$f is missing"
done

# --- a private directory, and who runs the servers --------------------------------------------------
make_workdir pgbridge-mirror-bench

declare -A port=() admin_port=() bridge_pid=() pg_started=()
sampler_pid=
# The sampler stops at its next turn once its stop file exists (a signal could land while it runs a
# command substitution, and bash then reports a parse error); waits at most a few seconds.
stop_sampler() {
    if [ -n "$sampler_pid" ]; then
        : >"$work/sampler.stop"
        for _ in $(seq 1 50); do
            kill -0 "$sampler_pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$sampler_pid" 2>/dev/null || true
        wait "$sampler_pid" 2>/dev/null || true
        sampler_pid=
    fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM


# --- PostgreSQL: primary and secondary ---------------------------------------------------------------
start_dxy_servers
psql_at "${port[primary]}" -c 'TRUNCATE derived_data_bars' >/dev/null

# --- pgbridge: relay and mirrored ----------------------------------------------------------------
bin=$(build_pgbridge) || exit 1
start_bridge() {
    local name=$1
    local dir=$work/bridge-$name
    free_port "port[$name]"
    free_port "admin_port[$name]"
    mkdir -p "$dir"
    {
        echo "# PGBRIDGE_CONFIG_EXTRA: top-level keys to try, e.g. worker_threads = 1"
        echo "${PGBRIDGE_CONFIG_EXTRA:-}"
        echo "listen = \"127.0.0.1:${port[$name]}\""
        echo "admin_listen = \"127.0.0.1:${admin_port[$name]}\""
        if [ "$name" = mirrored ]; then
            mkdir -p "$dir/rules"
            cp "$repo/rules/dxy.toml" "$dir/rules/"
            echo "rules = \"$dir/rules\""
        fi
        # relay: no `rules` key and no rules dir next to the config: pgbridge relays only.
        cat <<EOF

[primary]
url = "postgres://postgres@127.0.0.1:${port[primary]}/bench"
EOF
        if [ "$name" = mirrored ]; then
            cat <<EOF

[secondary]
url = "postgres://postgres@127.0.0.1:${port[secondary]}/bench"
EOF
        fi
        cat <<EOF

[mirror]
journal_dir = "$dir/journal"
${MIRROR_EXTRA:-}

[divergence]
log = "$dir/divergences.jsonl"

[limits]
max_client_connections = 500
EOF
    } >"$dir/pgbridge.toml"
    launch_pgbridge "$name" "$dir"
}
start_bridge relay
start_bridge mirrored

# --- the mirror's status -----------------------------------------------------------------------------
# The body of GET /api/status of the mirrored pgbridge (empty when it does not answer).
status_json() {
    curl -fsS --max-time 2 "http://127.0.0.1:${admin_port[mirrored]}/api/status" 2>/dev/null || true
}
# A number field of the status (only `mirror` has these names).
field() {
    grep -o "\"$1\":[0-9.eE+-]*" <<<"$2" | head -n 1 | cut -d: -f2 || true
}
status=$(status_json)
[ -n "$(field journal_seq "$status")" ] ||
    die "GET /api/status of the mirrored pgbridge gave no mirror.journal_seq: '$status'"
grep -q '"data_bars"' <<<"$status" || die "the mirrored pgbridge has no rule for data_bars: '$status'"

# Appends "time lag_seconds journal_seq applied_seq" to $1 every 0.5 s until stop_sampler.
sample_status() {
    local file=$1 s
    while [ ! -e "$work/sampler.stop" ]; do
        s=$(status_json)
        if [ -n "$s" ]; then
            echo "$(now) $(field lag_seconds "$s") $(field journal_seq "$s") $(field applied_seq "$s")" >>"$file"
        fi
        sleep 0.5
    done
}

# Waits until applied_seq == journal_seq (sampling into $1); prints the seconds it took from $2,
# or "TIMEOUT".
wait_caught_up() {
    local file=$1 start=$2 s j a deadline=$((SECONDS + CATCHUP_TIMEOUT))
    while [ "$SECONDS" -lt "$deadline" ]; do
        s=$(status_json)
        j=$(field journal_seq "$s")
        a=$(field applied_seq "$s")
        if [ -n "$j" ] && [ -n "$a" ]; then
            echo "$(now) $(field lag_seconds "$s") $j $a" >>"$file"
            if [ "$a" -ge "$j" ]; then
                awk -v a="$start" -v b="$(now)" 'BEGIN { printf "%.2f\n", b - a }'
                return 0
            fi
        fi
        sleep 0.1
    done
    echo TIMEOUT
}

# Sends signal $2 to every process of PostgreSQL server $1 (the postmaster and its children).
signal_cluster() {
    local pm
    pm=$(head -n 1 "$work/$1/data/postmaster.pid")
    # shellcheck disable=SC2046
    kill -"$2" "$pm" $(cat "/proc/$pm/task/$pm/children" 2>/dev/null) 2>/dev/null || true
}
cleanup_hook() {
    stop_sampler
    [ "${SECONDARY:-}" != paused ] || signal_cluster secondary CONT
}

# --- the runs --------------------------------------------------------------------------------------
mkdir -p "$work/results"
for target in "${TARGETS[@]}"; do
    sed "s/SYMBOL/${symbol[$target]}/g" "$repo/bench/mirror-workload.sql" >"$work/workload-$target.sql"
done

# One pgbench run; prints the tps, or nothing when the run failed (the reason goes to the log).
run_pgbench() {
    local target=$1 mode=$2 round=$3 out
    out=$work/results/$round.$mode.$target.log
    if timeout --kill-after=10 $((DURATION + 60)) "$PGBENCH" -n -h 127.0.0.1 -p "${port[$target]}" \
        -U postgres -c "$CLIENTS" -j "$THREADS" -T "$DURATION" -M "$mode" ${RATE:+-R "$RATE"} \
        -f "$work/workload-$target.sql" bench >"$out" 2>&1; then
        sed -n 's/^tps = \([0-9.]*\) .*/\1/p' "$out" | tail -n 1
    else
        log "  $target ($mode) failed (exit $?): $(grep -v '^pgbench: warning' "$out" | tail -n 5 | tr '\n' ' ')"
    fi
}

failures=0
catchup_timeouts=0
mirrored_seconds=0
read -r -a modes <<<"$MODES"
for mode in "${modes[@]}"; do
    case "$mode" in simple | extended | prepared) ;; *) die "unknown pgbench mode '$mode'" ;; esac
done
runs=$((ROUNDS * ${#modes[@]} * ${#TARGETS[@]}))
log "$runs runs of ${DURATION}s: $CLIENTS clients, $THREADS threads, modes ${modes[*]}"
[ -z "$OUT" ] || echo "round,mode,target,tps,max_lag_s,catchup_s,journal_seq" >"$OUT"
for round in $(seq 1 "$ROUNDS"); do
    for mode in "${modes[@]}"; do
        for i in 0 1; do
            target=${TARGETS[$(((i + round - 1) % 2))]}
            if ! kill -0 "${bridge_pid[$target]}" 2>/dev/null; then
                log "pgbridge $target is gone; its log:"
                tail -n 40 "$work/bridge-$target/pgbridge.log" >&2
                die "pgbridge $target exited during the runs"
            fi
            lag=- catchup=- jseq=-
            children=$(cluster_children primary)
            ticks0=("$(cluster_ticks primary)" "$(cluster_ticks secondary)" "$(proc_ticks "${bridge_pid[$target]}")")
            if [ "$target" = mirrored ]; then
                samples=$work/results/$round.$mode.status
                : >"$samples"
                rm -f "$work/sampler.stop"
                sample_status "$samples" &
                sampler_pid=$!
                start=$(now)
                [ "${SECONDARY:-}" != paused ] || signal_cluster secondary STOP
                tps=$(run_pgbench "$target" "$mode" "$round")
                ended=$(now)
                [ "${SECONDARY:-}" != paused ] || signal_cluster secondary CONT
                stop_sampler
                catchup=$(wait_caught_up "$samples" "$ended")
                finished=$(now)
                if [ "$catchup" = TIMEOUT ]; then
                    catchup_timeouts=$((catchup_timeouts + 1))
                    log "  the applier did not catch up within ${CATCHUP_TIMEOUT}s: $(status_json)"
                fi
                mirrored_seconds=$(awk -v t="$mirrored_seconds" -v a="$start" -v b="$finished" \
                    'BEGIN { printf "%.3f", t + b - a }')
                lag=$(awk '$2 != "" && $2 > m { m = $2 } END { printf "%.3f", m + 0 }' "$samples")
                jseq=$(awk 'END { print $3 }' "$samples")
                echo "$lag" >>"$work/results/lag"
                [ "$catchup" = TIMEOUT ] || echo "$catchup" >>"$work/results/catchup"
            else
                tps=$(run_pgbench "$target" "$mode" "$round")
            fi
            # CPU per transaction, by process, over the run and the catch-up after it (the
            # applier's work on the secondary included).
            settle_cluster primary "$children"
            ticks1=("$(cluster_ticks primary)" "$(cluster_ticks secondary)" "$(proc_ticks "${bridge_pid[$target]}")")
            txns=$(pgbench_txns "$work/results/$round.$mode.$target.log")
            for k in 0 1 2; do
                [ -z "$txns" ] || cpu_per_ktxn $((ticks1[k] - ticks0[k])) "$txns" >>"$work/results/$mode.$target.cpu$k"
            done
            if [ -z "$tps" ]; then
                tps=FAIL
                failures=$((failures + 1))
            else
                echo "$tps" >>"$work/results/$mode.$target"
            fi
            extra=""
            [ "$target" != mirrored ] || extra="  max lag ${lag}s, caught up ${catchup}s after, journal_seq $jseq"
            unit=" tps"
            [ "$tps" != FAIL ] || unit=""
            log "round $round/$ROUNDS  $(printf '%-9s %-9s' "$mode" "$target") $tps$unit$extra"
            [ -z "$OUT" ] || echo "$round,$mode,$target,$tps,$lag,$catchup,$jseq" >>"$OUT"
        done
    done
done

# --- correctness -----------------------------------------------------------------------------------
log "comparing the secondary's data_bars with the primary's DXY rows"
final=$(status_json)
journal_total=$(field journal_seq "$final")
applied_total=$(field applied_seq "$final")
parked=$(field parked "$final")
divergences=$(grep -o '"divergences":{"total":[0-9]*' <<<"$final" | grep -o '[0-9]*$' || true)
# The same text on both sides: pin the settings that shape it.
pin="SET TimeZone = 'UTC'; SET DateStyle = 'ISO, YMD'; SET extra_float_digits = 1;"
psql_at "${port[primary]}" -At -c "$pin" -c "SELECT 'DXY.IDX', '1m', ts, open, high, low, close, volume, true
    FROM derived_data_bars WHERE symbol = 'DXY' ORDER BY ts" >"$work/primary.rows" ||
    die "reading the primary's rows failed"
psql_at "${port[secondary]}" -At -c "$pin" -c "SELECT symbol, timeframe, ts, open, high, low, close_px,
    volume, is_synthetic FROM data_bars ORDER BY ts" >"$work/secondary.rows" ||
    die "reading the secondary's rows failed"
primary_rows=$(wc -l <"$work/primary.rows")
secondary_rows=$(wc -l <"$work/secondary.rows")
if cmp -s "$work/primary.rows" "$work/secondary.rows"; then
    verdict=MATCH
else
    verdict=MISMATCH
    diff "$work/primary.rows" "$work/secondary.rows" | head -n 20 >"$work/rows.diff" || true
fi
relay_rows=$(psql_at "${port[primary]}" -At -c "SELECT count(*) FROM derived_data_bars WHERE symbol = 'RLY'" || echo "?")

# --- the table -------------------------------------------------------------------------------------
maximum() {
    [ -s "$1" ] || return 0
    sort -g "$1" | tail -n 1
}
fmt_tps() {
    if [ -n "$1" ]; then printf '%12.0f' "$1"; else printf '%12s' FAIL; fi
}

echo
echo "mirror benchmark: upsert + update of one bar per transaction, $CLIENTS clients, $THREADS threads,"
echo "${DURATION}s x $ROUNDS rounds${RATE:+, at $RATE tps}: median tps"
[ -z "${PRIMARY_DURABLE:-}" ] || echo "(the primary fsyncs its commits)"
[ -z "${MIRROR_EXTRA:-}" ] || echo "([mirror] ${MIRROR_EXTRA//$'\n'/; })"
[ "${SECONDARY:-}" != paused ] ||
    echo "(the secondary paused during the mirrored runs: the session path alone; applied after each)"
printf '%-10s%12s%12s%17s\n' mode relay mirrored mirrored/relay
for mode in "${modes[@]}"; do
    r=$(median "$work/results/$mode.relay")
    m=$(median "$work/results/$mode.mirrored")
    printf '%-10s%s%s%17s\n' "$mode" "$(fmt_tps "$r")" "$(fmt_tps "$m")" "$(ratio "$m" "$r")"
done
echo
echo "CPU per 1000 transactions, ms (medians; a mirrored run's catch-up included):"
printf '%-10s%-10s%10s%11s%10s%8s\n' mode target primary secondary pgbridge total
for mode in "${modes[@]}"; do
    for target in "${TARGETS[@]}"; do
        cpu=()
        for k in 0 1 2; do cpu+=("$(median "$work/results/$mode.$target.cpu$k" 2>/dev/null)"); done
        total=$(awk -v a="${cpu[0]:-0}" -v b="${cpu[1]:-0}" -v c="${cpu[2]:-0}" 'BEGIN { print a + b + c }')
        printf '%-10s%-10s%10s%11s%10s%8s\n' "$mode" "$target" "${cpu[0]:--}" "${cpu[1]:--}" "${cpu[2]:--}" "$total"
    done
done
echo
max_lag=$(maximum "$work/results/lag")
max_catchup=$(maximum "$work/results/catchup")
rate=-
if [ -n "$journal_total" ] && awk -v t="$mirrored_seconds" 'BEGIN { exit !(t > 0) }'; then
    rate=$(awk -v j="$journal_total" -v t="$mirrored_seconds" 'BEGIN { printf "%.0f", j / t }')
fi
printf '%-44s %s\n' "max mirror lag (s, sampled every 0.5 s)" "${max_lag:--}"
printf '%-44s %s\n' "max catch-up after a run (s)" "${max_catchup:--}$([ "$catchup_timeouts" -eq 0 ] || echo " ($catchup_timeouts timed out)")"
printf '%-44s %s\n' "applier rate (journal_seq / mirrored time)" "$rate txn/s over ${mirrored_seconds}s (runs + catch-up)"
printf '%-44s %s\n' "journal_seq / applied_seq at the end" "${journal_total:--} / ${applied_total:--}"
printf '%-44s %s\n' "parked / divergences" "${parked:--} / ${divergences:--}"
printf '%-44s %s\n' "rows: primary DXY / secondary / relay RLY" "$primary_rows / $secondary_rows / $relay_rows"
echo "correctness: $verdict"

status=0
if [ "$verdict" = MISMATCH ]; then
    echo "the secondary's data_bars differ from the primary's DXY rows (first lines of the diff):"
    cat "$work/rows.diff"
    status=1
fi
if [ "$failures" -gt 0 ]; then
    echo
    echo "$failures run(s) failed; rerun with KEEP=1 to keep every pgbench output and pgbridge log."
    status=1
fi
if [ "$catchup_timeouts" -gt 0 ]; then
    echo "the applier did not catch up within ${CATCHUP_TIMEOUT}s after $catchup_timeouts run(s)"
    status=1
fi
if [ -s "$work/bridge-mirrored/divergences.jsonl" ]; then
    echo "divergences recorded (first 5):"
    head -n 5 "$work/bridge-mirrored/divergences.jsonl"
fi
if grep -qE ' (ERROR|WARN) ' "$work/bridge-mirrored/pgbridge.log" 2>/dev/null; then
    echo "the mirrored pgbridge logged warnings or errors (first 10):"
    grep -E ' (ERROR|WARN) ' "$work/bridge-mirrored/pgbridge.log" | head -n 10
fi
exit "$status"
