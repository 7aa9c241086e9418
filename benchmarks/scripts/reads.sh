#!/usr/bin/env bash
# Closed-loop reads during ingest: for each given binary in turn (a fresh
# database and topics each, -w 1, rate limiting off, the default logging),
# the bench load generator offers 2,000 events/s, and `hey` (Go module
# proxy, built into .data/tools on first use) keeps 20 clients busy on
# GET /api/v1/dashboard/metrics for 20 s, then on GET /api/v1/events/stats
# (the default range) for 20 s. Prints requests/s, p50 and p99 of each.
# Needs `make services` and a release build (`cargo build --release -p
# analytics -p benchmarks`). Run binaries alternately (A B A B).
#
#   benchmarks/scripts/reads.sh "BIN LABEL" ...
set -euo pipefail
cd "$(dirname "$0")/../.."
source benchmarks/scripts/lib.sh
HEY=.data/tools/hey
[[ -x $HEY ]] || GOBIN="$PWD/.data/tools" go install github.com/rakyll/hey@v0.1.5

closed_loop() {  # URL LABEL
    "$HEY" -z 20s -c 20 "$1" | awk -v label="$2" '
        /Requests\/sec:/ { rps = $2 }
        /^  50%+ in/ { p50 = $3 * 1000 }  # hey prints "50%% in"
        /^  99%+ in/ { p99 = $3 * 1000 }
        /^  \[[0-9]+\]/ { codes = codes " " $1 "=" $2 }
        END { printf "%s: %.0f req/s, p50 %.2f ms, p99 %.2f ms, status%s\n", label, rps, p50, p99, codes }'
}

for spec in "$@"; do
    read -r bin label <<<"$spec"
    run="reads_${label}_$$"
    start_run "$run" 1
    "$bin" run -c "/tmp/$run.yaml" >"/tmp/$run.log" 2>&1 &
    pid=$!
    target/release/bench loadgen --rate 2000 --duration 70 --seed 7 --topic-prefix "$run." >/dev/null 2>&1 &
    load=$!
    deadline=$(( $(date +%s) + 60 ))
    until [[ $(curl -s -o /dev/null -w '%{http_code}' "localhost:$API/api/v1/dashboard/metrics") == 200 ]]; do
        (( $(date +%s) < deadline )) || { echo "$label: no dashboard within 60 s, log /tmp/$run.log"; break; }
        sleep 0.2
    done
    if [[ -n ${READS_PERF:-} ]]; then  # a profile of the service during the dashboard loop
        perf record -F 199 --call-graph dwarf,16384 -p "$pid" -o "/tmp/$run.perf.data" -- sleep 8 >/dev/null 2>&1 &
    fi
    closed_loop "http://127.0.0.1:$API/api/v1/dashboard/metrics" "$label dashboard"
    [[ -z ${READS_PERF:-} ]] || { wait %?perf 2>/dev/null || true; echo "$label: profile /tmp/$run.perf.data"; }
    closed_loop "http://127.0.0.1:$API/api/v1/events/stats" "$label stats"
    echo "$label: log lines $(wc -l <"/tmp/$run.log"), rss $(( $(awk '/VmRSS/ {print $2}' "/proc/$pid/status") / 1024 )) MiB"
    kill "$load" 2>/dev/null || true; wait "$load" 2>/dev/null || true
    kill -TERM "$pid"; wait "$pid" || true
    end_run "$run"
done
