#!/usr/bin/env bash
# Catch-up on a backlog: produces one backlog (600k events: 20,000/s for
# 30 s, seed 7, four topics of 4 partitions named PREFIX.*), then starts
# each given binary in turn on it (a fresh database each, -w 1 unless
# set) and times it from start until analytics_events_ingested_total +
# analytics_dead_letters_total (source kafka) equals the backlog: every
# row durable in PostgreSQL and counted live (-w WORKERS, default 1). Prints the time, the rate and
# the sink's phase seconds. Needs `make services` and a release build
# (`cargo build --release -p analytics -p benchmarks`).
#
#   [WORKERS=N] benchmarks/scripts/catchup.sh PREFIX "BIN LABEL [key=value ...]" ...
#
# key=value pairs go under analytics.dataflow (e.g.
# rollup_compaction_interval=1s). Run binaries alternately (A B A B): an
# older backlog drains slower (more of it is past the 1m horizon).
set -euo pipefail
cd "$(dirname "$0")/../.."
prefix=$1; shift
source benchmarks/scripts/lib.sh

create_topics "$prefix"
total=$(target/release/bench loadgen --rate 20000 --duration 30 --seed 7 --topic-prefix "$prefix." 2>&1 \
    | grep -a '^produced' | awk '{print $2}')
echo "backlog: $total events in $prefix.*"

metric_sum() {
    local text
    text=$(curl -s "localhost:$METRICS/metrics" || true)
    awk '
        /^analytics_events_ingested_total\{source="kafka"\}/ { a = $2 }
        /^analytics_dead_letters_total\{source="kafka"\}/ { b = $2 }
        END { printf "%d", a + b }' <<<"$text"
}

for spec in "$@"; do
    read -r bin label extra <<<"$spec"
    db="catchup_${label}_$$"
    psql -q "$PG" -c "CREATE DATABASE $db" >/dev/null
    dataflow=$(printf '%s' "${extra:-}" | sed 's/=/: /g; s/ \([a-z_]*:\)/, \1/g')
    cfg="/tmp/$db.yaml"
    cat >"$cfg" <<YAML
server: {host: "127.0.0.1", port: $API, shutdown_timeout: 30s}
database: {host: "127.0.0.1", port: 5432, database: "$db", user: "analytics_user", password: "change_me", max_connections: 10}
redis: {host: "127.0.0.1", port: 6379}
kafka:
  brokers: ["127.0.0.1:9092"]
  consumer_group: "catchup-$db"
  topics: $(topic_list "$prefix")
analytics:
  ingestion: {workers: ${WORKERS:-1}}
  dataflow: {$dataflow}
metrics: {port: $METRICS}
health: {port: $HEALTH}
logging: {level: "warn", format: "console"}
security: {api_key_enabled: false, rate_limit: {enabled: false}}
YAML
    start=$(date +%s.%N)
    RUST_LOG=warn "$bin" run -c "$cfg" >"/tmp/$db.log" 2>&1 &
    pid=$!
    if [[ -n ${CATCHUP_PERF:-} ]]; then  # 10 s of the whole machine, flat, from 3 s in
        (sleep 3; perf record -F 499 -a -o "/tmp/$db.perf.data" -- sleep 10 >/dev/null 2>&1) &
    fi
    deadline=$(( $(date +%s) + 600 ))
    until (( $(metric_sum) >= total )); do
        kill -0 "$pid" 2>/dev/null || { echo "$label: exited early, log /tmp/$db.log"; break; }
        (( $(date +%s) < deadline )) || { echo "$label: not caught up within 600 s"; break; }
        sleep 0.5
    done
    elapsed=$(echo "$(date +%s.%N) - $start" | bc)
    echo "$label: $total events in $elapsed s = $(echo "$total / $elapsed" | bc) events/s"
    [[ -z ${CATCHUP_PERF:-} ]] || echo "$label: profile /tmp/$db.perf.data"
    curl -s "localhost:$METRICS/metrics" \
        | grep -E '^analytics_sink_phase_seconds_total|^analytics_rollup_compaction_seconds_(sum|count)' \
        | sed 's/^analytics_//' | tr '\n' ' '
    echo
    kill -TERM "$pid"; wait "$pid" || true
    drop_db "$db"
done
