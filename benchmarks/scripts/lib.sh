# Shared by the benchmark scripts that run the service against the
# project's services (`make services`): connection settings, the four
# topics of a run and the cleanup of its database. Source it from the
# repository root.
PG="postgres://analytics_user:change_me@127.0.0.1:5432/analytics"
PG_SOCK="$(readlink -f .data/postgres)/run"
API=18080; METRICS=19090; HEALTH=18081
export PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"
TOPICS="trading.events market.data order.events user.actions"

# Creates PREFIX.<topic> for the four topics, 4 partitions each.
create_topics() {
    local t
    for t in $TOPICS; do
        java -cp '.data/kafka/libs/*' org.apache.kafka.tools.TopicCommand \
            --bootstrap-server 127.0.0.1:9092 --create --if-not-exists \
            --topic "$1.$t" --partitions 4 --replication-factor 1 >/dev/null 2>&1
    done
}

# Deletes PREFIX.<topic> for the four topics.
delete_topics() {
    local t
    for t in $TOPICS; do
        java -cp '.data/kafka/libs/*' org.apache.kafka.tools.TopicCommand \
            --bootstrap-server 127.0.0.1:9092 --delete --topic "$1.$t" >/dev/null 2>&1 || true
    done
}

# The topics list of a service config for PREFIX.
topic_list() {
    local t out=""
    for t in $TOPICS; do out+="${out:+, }\"$1.$t\""; done
    printf '[%s]' "$out"
}

# Drops database DB, ending its connections.
drop_db() {
    runuser -u postgres -- psql -q -h "$PG_SOCK" -d postgres -c "DROP DATABASE $1 WITH (FORCE)" >/dev/null \
        || echo "could not drop $1"
}

# A run named RUN of the service with WORKERS workers: its topics, its
# database and its config in /tmp/RUN.yaml (rate limiting and keys off).
start_run() {
    create_topics "$1"
    psql -q "$PG" -c "CREATE DATABASE $1" >/dev/null
    cat >"/tmp/$1.yaml" <<YAML
server: {host: "127.0.0.1", port: $API}
database: {host: "127.0.0.1", port: 5432, database: "$1", user: "analytics_user", password: "change_me"}
redis: {host: "127.0.0.1", port: 6379}
kafka:
  brokers: ["127.0.0.1:9092"]
  consumer_group: "$1"
  topics: $(topic_list "$1")
analytics:
  ingestion: {workers: $2}
metrics: {port: $METRICS}
health: {port: $HEALTH}
security: {api_key_enabled: false, rate_limit: {enabled: false}}
YAML
}

# Drops the database and topics of run RUN.
end_run() {
    drop_db "$1"
    delete_topics "$1"
}
