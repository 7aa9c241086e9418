#!/usr/bin/env bash
# Produce keyed records with Kafka's own Java console producer: a client
# independent of the analytics service's Rust code, for cross-checking it.
#
#   scripts/produce-independent.sh TOPIC FILE
#
# FILE: one record per line, `key<TAB>json-value`. Blank lines are skipped.
# Use `-` as FILE to read stdin. Records with the same key go to the same
# partition (Kafka's default murmur2 partitioner).
#
# Needs the jars fetched by `scripts/services.sh start` (.data/kafka/libs).
# Environment: KAFKA_BOOTSTRAP (default 127.0.0.1:9092),
#              KAFKA_MAX_BLOCK_MS (default 15000; how long to wait for the
#              broker / topic metadata before giving up).
# Exit status: 0 only if every record was acknowledged (acks=all).
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)"
ROOT="$(cd "$SCRIPT_DIR/.." && pwd -P)"
KAFKA_DIR="$ROOT/.data/kafka"
LIBS="$KAFKA_DIR/libs"
BOOTSTRAP="${KAFKA_BOOTSTRAP:-127.0.0.1:9092}"
MAX_BLOCK_MS="${KAFKA_MAX_BLOCK_MS:-15000}"

die() { printf 'produce-independent.sh: %s\n' "$*" >&2; exit 1; }

[[ $# -eq 2 ]] || die "usage: $0 TOPIC FILE   (FILE lines: key<TAB>json, '-' = stdin)"
TOPIC=$1
FILE=$2
if [[ $FILE != - ]]; then
    [[ -r $FILE ]] || die "cannot read $FILE"
fi
command -v java >/dev/null 2>&1 || die "java not found (run scripts/services.sh start)"
compgen -G "$LIBS/kafka-tools-*.jar" >/dev/null || die "Kafka jars missing in $LIBS (run scripts/services.sh start)"

log4j_opts=()
if [[ -f $KAFKA_DIR/tools-log4j2.properties ]]; then
    log4j_opts=(-Dlog4j2.configurationFile="$KAFKA_DIR/tools-log4j2.properties")
fi

errlog="$(mktemp)"
adminconf="$(mktemp)"
trap 'rm -f "$errlog" "$adminconf"' EXIT

# The producer would block max.block.ms on EVERY record of a missing topic
# (auto-creation is off), so check broker + topic up front, with short timeouts.
printf 'request.timeout.ms=5000\ndefault.api.timeout.ms=%s\n' "$MAX_BLOCK_MS" >"$adminconf"
if ! java -Xmx256m -XX:+UseSerialGC -XX:TieredStopAtLevel=1 "${log4j_opts[@]}" \
    -cp "$LIBS/*" org.apache.kafka.tools.TopicCommand \
    --bootstrap-server "$BOOTSTRAP" --command-config "$adminconf" \
    --describe --topic "$TOPIC" >"$errlog" 2>&1; then
    cat "$errlog" >&2
    die "topic $TOPIC not found or broker $BOOTSTRAP unreachable"
fi
grep -q "Topic: $TOPIC" "$errlog" || { cat "$errlog" >&2; die "topic $TOPIC not found on $BOOTSTRAP"; }

input=/dev/stdin
[[ $FILE == - ]] || input=$FILE

# Asynchronous sends only log delivery failures (the exit status stays 0),
# so stderr is captured and checked for errors as well.
set +e
sed -e '/^$/d' "$input" | java -Xmx256m -XX:+UseSerialGC -XX:TieredStopAtLevel=1 "${log4j_opts[@]}" \
    -cp "$LIBS/*" org.apache.kafka.tools.ConsoleProducer \
    --bootstrap-server "$BOOTSTRAP" --topic "$TOPIC" \
    --property parse.key=true --property key.separator=$'\t' \
    --producer-property acks=all --producer-property linger.ms=5 \
    --producer-property max.block.ms="$MAX_BLOCK_MS" \
    2>"$errlog"
status=("${PIPESTATUS[@]}")
set -e

cat "$errlog" >&2
if (( status[0] != 0 )); then
    die "reading $FILE failed"
fi
if (( status[1] != 0 )); then
    die "ConsoleProducer exited with status ${status[1]}"
fi
if grep -qE '(^|[] ])(ERROR|FATAL) ' "$errlog"; then
    die "ConsoleProducer reported errors while sending to $TOPIC"
fi
