#!/usr/bin/env bash
# The service's memory over a run at RATE events/s for SECS seconds
# (defaults 600 and 20000, -w WORKERS (default 2), the bench mix, default
# horizons): every 10 s one line of seconds since the load started, heap
# allocated (MB), jemalloc resident (MB), RSS (MiB), events ingested,
# consumer lag (messages) and live windows; then, over the samples from
# the second half (or WARMUP seconds) to the end of the load, the means
# and the largest deviation from the first of them. DATAFLOW="key:
# value, ..." adds an `analytics.dataflow` section to the run's config
# (e.g. DATAFLOW="max_pending_rows: 50000"); AGGREGATION and DASHBOARD
# add `analytics.aggregation` and `analytics.dashboard` the same way.
# Needs `make services` and a release build.
#
#   [WORKERS=N] [WARMUP=S] [DATAFLOW=...] [AGGREGATION=...] [DASHBOARD=...] \
#       benchmarks/scripts/rsstrace.sh BIN [SECS] [RATE]
set -euo pipefail
cd "$(dirname "$0")/../.."
bin=$1; secs=${2:-600}; rate=${3:-20000}; workers=${WORKERS:-2}
source benchmarks/scripts/lib.sh
run="rsstrace_$$"
start_run "$run" "$workers"
for section in dataflow aggregation dashboard; do
    value=$(printenv "${section^^}" || true)
    if [ -n "$value" ]; then
        sed -i "s/^  ingestion: /  $section: {$value}\n  ingestion: /" "/tmp/$run.yaml"
    fi
done
"$bin" run -c "/tmp/$run.yaml" >"/tmp/$run.log" 2>&1 &
pid=$!
target/release/bench loadgen --rate "$rate" --duration "$secs" --seed 7 --topic-prefix "$run." >/dev/null 2>&1 &
load=$!
sum() { awk -v m="$1" '$1 == m { s += $2 } END { printf "%d", s }' <<<"$metrics"; }
t0=$(date +%s)
trace=$(mktemp)
echo "s alloc_MB resident_MB rss_MiB ingested lag windows"
while kill -0 "$load" 2>/dev/null; do
    sleep 10
    metrics=$(curl -s "localhost:$METRICS/metrics" | sed 's/{[^}]*}//')
    printf '%d %d %d %d %d %d %d\n' "$(( $(date +%s) - t0 ))" \
        "$(( $(sum analytics_heap_allocated_bytes) / 1000000 ))" \
        "$(( $(sum analytics_heap_resident_bytes) / 1000000 ))" \
        "$(( $(awk '/VmRSS/ {print $2}' "/proc/$pid/status") / 1024 ))" \
        "$(sum analytics_events_ingested_total)" "$(sum analytics_consumer_lag_messages)" \
        "$(sum analytics_live_windows)" | tee -a "$trace"
done
awk -v from="${WARMUP:-$(( secs / 2 ))}" -v to="$secs" '$1 >= from && $1 <= to {
        n++; a += $2; r += $4; if ($4 > m) m = $4; if (n == 1) w = $4
        d = ($4 > w ? $4 - w : w - $4) / w * 100; if (d > dev) dev = d }
    END { if (n) printf "from %d s (%d samples): alloc %d MB, RSS mean %d MiB, max %d MiB, first %d MiB, max deviation from it %.1f %%\n", from, n, a / n, r / n, m, w, dev }' "$trace"
rm -f "$trace"
kill -TERM "$pid"; wait "$pid" || true
end_run "$run"
