#!/usr/bin/env bash
# Multi-worker scaling of the dataflow core: each given `bench` binary in
# turn (alternated, REPS rounds) at 1, 2, 4 and 8 workers, 300,000 events
# per worker (no services needed). Run on a quiet machine with at least
# 10 cores (the workers, the sink stand-in's thread and the publisher
# thread); on the 2-core VM only -w 1 and -w 2 mean anything.
#
#   benchmarks/scripts/scaling.sh "BIN LABEL" ["BIN LABEL" ...]
#
# Prints one line per run, `rep= w= bin=` then the bench's own line.
# WORKERS="1 2 4 8" and REPS=2 may be set in the environment.
set -euo pipefail
workers=${WORKERS:-1 2 4 8}
reps=${REPS:-2}
echo "cpus: $(nproc); $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2)"
for rep in $(seq "$reps"); do
    for w in $workers; do
        for pair in "$@"; do
            read -r bin label <<<"$pair"
            line=$(timeout 300 "$bin" core --events $((300000 * w)) -w "$w" 2>&1 | tail -1)
            echo "rep=$rep w=$w bin=$label $line"
        done
    done
done
