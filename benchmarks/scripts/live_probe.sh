#!/usr/bin/env bash
# Where the time of a live service goes at a given ingest rate: for each
# given binary in turn (a fresh database and topics each, -w 1, rate
# limiting off), the bench load generator offers RATE events/s; after 15 s
# of warm-up the service's own metrics are read twice, SECS apart, and the
# differences printed: sink batches and their seconds, the sink's seconds
# per phase, events ingested, and the published snapshots' freshness
# (`analytics_freshness_seconds`, the age of the oldest tick released, per
# publish) with its histogram at the end.
#
# Options (environment):
#   READS=1       `hey` offers 2,000 req/s (20 clients, 100 req/s each) to
#                 GET /api/v1/dashboard/metrics during the SECS, and prints
#                 its rate, percentiles and slowest answer.
#   COMPACT=10s   sets analytics.dataflow.rollup_compaction_interval.
#   PGLOG=1       logs every statement's duration in PostgreSQL's log
#                 (.data/postgres/postgres.log) for the run's database.
#   PGSTATS=1     prints, at the end, each updated table's inserts,
#                 updates, HOT updates and dead row versions
#                 (pg_stat_user_tables of the run's database), and
#                 metric_aggregations' rows and mean sketch bytes per
#                 interval, and the pending deltas.
# Needs `make services` and a release build (`cargo build --release -p
# analytics -p benchmarks`). Run binaries alternately (A B A B).
#
#   benchmarks/scripts/live_probe.sh RATE SECS "BIN LABEL" ...
set -euo pipefail
cd "$(dirname "$0")/../.."
source benchmarks/scripts/lib.sh
rate=$1; secs=$2; shift 2
HEY=.data/tools/hey
if [[ -n ${READS:-} && ! -x $HEY ]]; then
    GOBIN="$PWD/.data/tools" go install github.com/rakyll/hey@v0.1.5
fi

snapshot() {
    curl -s "localhost:$METRICS/metrics" | grep -E '^analytics_(sink_phase_seconds_total|rollup_compaction_seconds_(sum|count)|batch_duration_seconds_(sum|count)|freshness_seconds_(sum|count)|events_ingested_total\{source="kafka")' || true
}

for spec in "$@"; do
    read -r bin label <<<"$spec"
    run="probe_${label}_$$"
    start_run "$run" 1
    if [[ -n ${COMPACT:-} ]]; then
        sed -i "s/^  ingestion: {workers: 1}$/&\n  dataflow: {rollup_compaction_interval: $COMPACT}/" "/tmp/$run.yaml"
    fi
    if [[ -n ${PGLOG:-} ]]; then
        runuser -u postgres -- psql -q -h "$PG_SOCK" -d postgres \
            -c "ALTER DATABASE $run SET log_min_duration_statement = 0" >/dev/null
    fi
    "$bin" run -c "/tmp/$run.yaml" >"/tmp/$run.log" 2>&1 &
    pid=$!
    deadline=$(( $(date +%s) + 60 ))
    until curl -sf -o /dev/null "localhost:$METRICS/metrics"; do
        (( $(date +%s) < deadline )) || { echo "$label: no metrics within 60 s, log /tmp/$run.log"; break; }
        sleep 0.2
    done
    target/release/bench loadgen --rate "$rate" --duration $(( secs + 20 )) --seed 7 --topic-prefix "$run." >/dev/null 2>&1 &
    load=$!
    sleep 15
    snapshot >"/tmp/$run.a"
    echo "== $label ($bin, $rate events/s, ${secs} s${COMPACT:+, compaction every $COMPACT})"
    if [[ -n ${READS:-} ]]; then
        "$HEY" -z "${secs}s" -q 100 -c 20 "http://localhost:$API/api/v1/dashboard/metrics" \
            | grep -E 'Requests/sec|Slowest|(50|90|99)%+ in|^  \[[0-9]+\]' || true
    else
        sleep "$secs"
    fi
    snapshot >"/tmp/$run.b"
    # Differences over the SECS.
    paste -d' ' "/tmp/$run.a" "/tmp/$run.b" | awk '{ printf "  %-60s %12.3f\n", $1, $4 - $2 }'
    curl -s "localhost:$METRICS/metrics" | grep -E '^analytics_freshness_seconds_bucket' \
        | awk '{ printf "%s%s", sep, $0; sep = "  " } END { print "" }' | sed 's/analytics_freshness_seconds_bucket//g'
    if [[ -n ${PGSTATS:-} ]]; then
        runuser -u postgres -- psql -h "$PG_SOCK" -d "$run" -c \
            "SELECT relname, n_tup_ins AS ins, n_tup_upd AS upd, n_tup_hot_upd AS hot, n_dead_tup AS dead
             FROM pg_stat_user_tables WHERE n_tup_upd > 0 ORDER BY n_tup_upd DESC" \
            -c "SELECT \"interval\", count(*) AS rows, round(avg(octet_length(sketch))) AS sketch_bytes
                FROM metric_aggregations GROUP BY 1 ORDER BY min(time_bucket) DESC, 2 DESC" \
            -c "SELECT \"interval\", count(*) AS pending_deltas FROM metric_aggregation_deltas GROUP BY 1"
    fi
    kill "$load" 2>/dev/null || true
    kill "$pid"; wait "$pid" 2>/dev/null || true
    end_run "$run"
done
