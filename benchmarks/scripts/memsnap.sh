#!/usr/bin/env bash
# What the service holds after SECS seconds at RATE events/s (defaults 60
# and 20000, -w WORKERS (default 2), the bench mix, default horizons): its RSS, the live
# windows and count entries, the arrangements' records per worker, the
# consumer lag and whether the sources paused for the sink. Needs
# `make services` and a release build.
#
#   [WORKERS=N] benchmarks/scripts/memsnap.sh BIN [SECS] [RATE]
set -euo pipefail
cd "$(dirname "$0")/../.."
bin=$1; secs=${2:-60}; rate=${3:-20000}; workers=${WORKERS:-2}
source benchmarks/scripts/lib.sh
run="memsnap_$$"
start_run "$run" "$workers"
"$bin" run -c "/tmp/$run.yaml" >"/tmp/$run.log" 2>&1 &
pid=$!
target/release/bench loadgen --rate "$rate" --duration "$secs" --seed 7 --topic-prefix "$run." >/dev/null 2>&1
echo "after $secs s at $rate events/s: rss $(( $(awk '/VmRSS/ {print $2}' "/proc/$pid/status") / 1024 )) MiB"
curl -s "localhost:$METRICS/metrics" | grep -E '^analytics_(arrangement_records|live_windows|live_count_entries|heap_allocated_bytes|heap_resident_bytes|consumer_lag_messages|source_paused_total|events_ingested_total)' \
    | awk '{ if ($1 ~ /consumer_lag/) lag += $2; else print } END { print "analytics_consumer_lag_messages (sum)", lag }'
kill -TERM "$pid"; wait "$pid" || true
end_run "$run"
