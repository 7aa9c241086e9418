#!/usr/bin/env bash
# Evaluates every PromQL expression of a Grafana dashboard on a real
# Prometheus server that scrapes a running service:
#
#   scripts/eval-grafana-promql.sh DASHBOARD_JSON TARGET
#
# TARGET is host:port of a /metrics endpoint (e.g. 127.0.0.1:9098).
# Starts .data/prometheus/bin/prometheus (scripts/install-prometheus.sh) on a
# free 127.0.0.1 port with a temporary config (scrape_interval 1s, one job
# scraping http://TARGET/metrics) and a temporary TSDB, both removed on exit,
# the server stopped on exit. Waits until at least 3 scrapes of TARGET
# succeeded (its latest `up` is 1 and sum_over_time(up[5m]) >= 3; deadline
# PROMQL_WAIT_S, default 60 s), then evaluates each expression with
# scripts/grafana-promql.py eval, which substitutes Grafana's variables
# ($__rate_interval, $__interval, $__range = 1m, ..., and the dashboard's
# template variables; see its --help) and prints one line per expression:
#   PANEL TITLE [refId]: ok N series | empty | ERROR message
# The scrape job is named PROMQL_JOB (default `analytics`, the job of
# deploy/prometheus.yml) and the dashboard's `job` variable is set to it.
# Last line: promql: expressions=N evaluated=N empty=E errors=X
#
# Exit status: 0 every expression evaluated (empty results included), 1 an
# expression failed to parse or evaluate, or TARGET was not scraped 3 times
# in time, 2 usage error or prometheus not installed.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)"
PROMETHEUS=$ROOT/.data/prometheus/bin/prometheus
HELPER=$ROOT/scripts/grafana-promql.py
MIN_SCRAPES=3

die() { printf 'eval-grafana-promql.sh: %s\n' "$*" >&2; exit "${2:-1}"; }

[[ $# -eq 2 ]] || die "usage: scripts/eval-grafana-promql.sh DASHBOARD_JSON HOST:PORT" 2
dashboard=$1
target=$2
job=${PROMQL_JOB:-analytics}
wait_s=${PROMQL_WAIT_S:-60}
[[ -r $dashboard ]] || die "cannot read $dashboard" 2
[[ $target =~ ^[^/[:space:]]+:[0-9]+$ ]] || die "TARGET must be host:port, not $target" 2
[[ $job =~ ^[A-Za-z0-9_.-]+$ ]] || die "PROMQL_JOB must be a plain name, not $job" 2
[[ $wait_s =~ ^[1-9][0-9]*$ ]] || die "PROMQL_WAIT_S must be a positive integer" 2
[[ -x $PROMETHEUS ]] || die "$PROMETHEUS is missing: run scripts/install-prometheus.sh" 2

work=$(mktemp -d)
server_pid=""
cleanup() {
    if [[ -n $server_pid ]]; then
        kill "$server_pid" 2>/dev/null || true
        wait "$server_pid" 2>/dev/null || true
    fi
    rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
prom_url=http://127.0.0.1:$port

cat >"$work/prometheus.yml" <<EOF
global:
  scrape_interval: 1s
  scrape_timeout: 1s
  evaluation_interval: 1s
scrape_configs:
  - job_name: $job
    metrics_path: /metrics
    static_configs:
      - targets: ["$target"]
EOF

"$PROMETHEUS" \
    --config.file="$work/prometheus.yml" \
    --storage.tsdb.path="$work/data" \
    --web.listen-address="127.0.0.1:$port" \
    --log.level=warn \
    >"$work/prometheus.log" 2>&1 &
server_pid=$!
echo "prometheus $("$PROMETHEUS" --version 2>/dev/null | awk 'NR == 1 { print $3 }') on $prom_url scraping http://$target/metrics as job $job"

# Wait for MIN_SCRAPES successful scrapes, polling twice a second.
deadline=$((SECONDS + wait_s))
scrapes=0
while :; do
    if ! kill -0 "$server_pid" 2>/dev/null; then
        tail -n 20 "$work/prometheus.log" >&2
        server_pid=""
        die "prometheus exited before scraping $target"
    fi
    scrapes=$(python3 "$HELPER" scrapes "$prom_url" "$job")
    ((scrapes >= MIN_SCRAPES)) && break
    if ((SECONDS >= deadline)); then
        python3 "$HELPER" targets "$prom_url" >&2 || true
        tail -n 20 "$work/prometheus.log" >&2
        die "$target: $scrapes successful scrapes within ${wait_s}s, $MIN_SCRAPES needed"
    fi
    sleep 0.5
done
echo "$scrapes successful scrapes of $target"

python3 "$HELPER" eval "$prom_url" "$dashboard" --var "job=$job"
