#!/usr/bin/env bash
# Compares builds of the dataflow core: runs `BIN core --events EVENTS -w
# WORKERS` for each given bench binary in turn, ROUNDS times (A B A B ...,
# so that the host's drift falls on all of them), each under
# `perf stat -e task-clock`, and prints per binary the events/s and the
# CPU seconds of every round. On this noisy VM the CPU seconds are the
# steadier figure; read medians. No services needed.
#
#   [EVENTS=300000] benchmarks/scripts/core_ab.sh ROUNDS WORKERS BIN...
#
# Keep a copy of each build's target/release/bench to compare them.
set -euo pipefail
rounds=$1; workers=$2; shift 2
events=${EVENTS:-300000}
stat=$(mktemp)
trap 'rm -f "$stat"' EXIT
for _ in $(seq "$rounds"); do
    for bin in "$@"; do
        line=$(perf stat -e task-clock -x, -o "$stat" "$bin" core --events "$events" -w "$workers" 2>&1 | tail -1)
        rate=$(grep -oE '[0-9]+ events/s' <<<"$line" | cut -d' ' -f1)
        cpu=$(awk -F, '/task-clock/ {printf "%.2f", $1/1000}' "$stat")
        echo "$bin $rate $cpu"
    done
done | sort -s -k1,1 | awk '
    { rate[$1] = rate[$1] " " $2; cpu[$1] = cpu[$1] " " $3 }
    END { for (b in rate) print b ":  events/s" rate[b] "  |  CPU s" cpu[b] }'
