#!/usr/bin/env bash
# Local backing services for the analytics service: PostgreSQL, Redis and a
# single-node Kafka 4.1.1 (KRaft), all bound to 127.0.0.1, no Docker needed.
#
#   scripts/services.sh [start]   install what is missing, start, wait until ready
#   scripts/services.sh stop      stop everything started by this script
#   scripts/services.sh status    one line per service (exit 0 only if all run)
#
# All state lives under $ROOT/.data (git-ignored):
#   .data/postgres/   our own PostgreSQL cluster (data/, run/ = unix socket,
#                     postgres.log). Owned by the `postgres` OS user when run
#                     as root. If that user cannot traverse the parents of
#                     .data (e.g. the repo is under /root), the cluster lives
#                     in /var/tmp/analytics-pg-<hash of ROOT> instead and
#                     .data/postgres is a symlink to it.
#   .data/redis/      redis.pid, redis.log (no persistence)
#   .data/kafka/      libs/ (jars from Maven Central, see scripts/kafka/pom.xml),
#                     server.properties, log4j2*.properties, cluster.id,
#                     logs/ (topic data), kafka.log, kafka.pid
#
# Environment overrides: PGPORT (5432), REDIS_PORT (6379), KAFKA_PORT (9092),
# KAFKA_CONTROLLER_PORT (9093).
#
# Connection details (the defaults the service expects):
#   postgres://analytics_user:change_me@127.0.0.1:5432/analytics
#   redis://127.0.0.1:6379
#   Kafka bootstrap 127.0.0.1:9092, topics trading.events market.data
#   order.events user.actions (6 partitions, replication factor 1)
set -euo pipefail
# runuser, service and pg_ctlcluster live in the sbin folders, which a
# minimal environment (cron, `env -i`, some CI runners) leaves out of PATH.
export PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)"
ROOT="$(cd "$SCRIPT_DIR/.." && pwd -P)"
DATA="$ROOT/.data"
HOST=127.0.0.1

PG_PORT="${PGPORT:-5432}"
REDIS_PORT="${REDIS_PORT:-6379}"
KAFKA_PORT="${KAFKA_PORT:-9092}"
KAFKA_CONTROLLER_PORT="${KAFKA_CONTROLLER_PORT:-9093}"

PG_DB=analytics
PG_USER=analytics_user
PG_PASSWORD=change_me

KAFKA_TOPICS=(trading.events market.data order.events user.actions)
KAFKA_TOPIC_PARTITIONS=6
KAFKA_POM="$SCRIPT_DIR/kafka/pom.xml"

PG_READY_TIMEOUT=60
REDIS_READY_TIMEOUT=30
KAFKA_READY_TIMEOUT=90
STOP_TIMEOUT=60

ROOT_HASH="$(printf '%s' "$ROOT" | sha256sum | cut -c1-12)"

# ----------------------------------------------------------------- helpers --

log() { printf '%s\n' "$*"; }
warn() { printf 'services.sh: %s\n' "$*" >&2; }
die() { printf 'services.sh: ERROR: %s\n' "$*" >&2; exit 1; }

is_root() { [[ $EUID -eq 0 ]]; }

# port_open PORT: true when something accepts TCP connections on 127.0.0.1:PORT.
port_open() {
    # shellcheck disable=SC2016 # expanded by the inner bash
    timeout 2 bash -c 'exec 3<>"/dev/tcp/$0/$1"' "$HOST" "$1" 2>/dev/null
}

# now: seconds since the epoch (bash builtin, no fork).
now() { printf '%(%s)T' -1; }

# pid_alive PIDFILE PATTERN: the pid in PIDFILE runs and its command line
# contains PATTERN (guards against a recycled pid).
pid_alive() {
    local pidfile=$1 pattern=$2 pid
    [[ -s $pidfile ]] || return 1
    pid="$(<"$pidfile")"
    [[ $pid =~ ^[0-9]+$ ]] || return 1
    [[ -r /proc/$pid/cmdline ]] || return 1
    tr '\0' ' ' <"/proc/$pid/cmdline" | grep -qF -- "$pattern"
}

# stop_pidfile NAME PIDFILE PATTERN: SIGTERM, wait up to STOP_TIMEOUT, SIGKILL.
stop_pidfile() {
    local name=$1 pidfile=$2 pattern=$3 pid deadline
    if ! pid_alive "$pidfile" "$pattern"; then
        rm -f "$pidfile"
        log "$name: not running"
        return 0
    fi
    pid="$(<"$pidfile")"
    kill -TERM "$pid" 2>/dev/null || true
    deadline=$(( $(now) + STOP_TIMEOUT ))
    while pid_alive "$pidfile" "$pattern"; do
        if (( $(now) >= deadline )); then
            warn "$name (pid $pid) did not exit within ${STOP_TIMEOUT}s, sending SIGKILL"
            kill -KILL "$pid" 2>/dev/null || true
            sleep 0.5
            break
        fi
        sleep 0.2
    done
    rm -f "$pidfile"
    log "$name: stopped"
}

APT_UPDATED=0
apt_install() {
    local sudo=() aptlog="$DATA/apt.log"
    if ! is_root; then
        command -v sudo >/dev/null 2>&1 || die "need to apt-get install $*, but not root and no sudo"
        sudo=(sudo)
    fi
    command -v apt-get >/dev/null 2>&1 || die "need packages ($*) but apt-get is not available"
    log "installing via apt: $* (log: $aptlog)"
    if (( APT_UPDATED == 0 )); then
        "${sudo[@]}" apt-get update -q >>"$aptlog" 2>&1 || { tail -n 20 "$aptlog" >&2; die "apt-get update failed"; }
        APT_UPDATED=1
    fi
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$@" >>"$aptlog" 2>&1 \
        || { tail -n 30 "$aptlog" >&2; die "apt-get install $* failed"; }
}

# -------------------------------------------------------------- PostgreSQL --

PG_OS_USER=""
PG_BASE=""
PGDATA_DIR=""
PG_SOCK=""
PG_LOG=""
PGBIN=""

pg_find_bin() {
    local ver
    # Prefer the major version the cluster was created with.
    if [[ -n $PGDATA_DIR && -s $PGDATA_DIR/PG_VERSION ]]; then
        ver="$(<"$PGDATA_DIR/PG_VERSION")"
        if [[ -x /usr/lib/postgresql/$ver/bin/postgres ]]; then
            PGBIN="/usr/lib/postgresql/$ver/bin"
            return 0
        fi
    fi
    PGBIN="$(printf '%s\n' /usr/lib/postgresql/*/bin | sort -V | tail -n 1)"
    [[ -n $PGBIN && -x $PGBIN/initdb ]]
}

# Run a command as the OS user that owns the cluster.
as_pg() {
    if is_root; then
        (cd / && runuser -u postgres -- "$@")
    else
        "$@"
    fi
}

pg_paths() {
    if is_root; then PG_OS_USER=postgres; else PG_OS_USER="$(id -un)"; fi
    PG_BASE="$DATA/postgres"
    if [[ -L $PG_BASE ]]; then
        PG_BASE="$(readlink -f "$PG_BASE")"
    fi
    PGDATA_DIR="$PG_BASE/data"
    PG_LOG="$PG_BASE/postgres.log"
    PG_SOCK="$PG_BASE/run"
    # Unix socket paths are limited to 107 bytes.
    if (( ${#PG_SOCK} > 90 )); then
        PG_SOCK="/tmp/analytics-pg-$ROOT_HASH"
    fi
}

# Create the directory that holds our cluster, readable by the cluster owner.
pg_prepare_base() {
    mkdir -p "$DATA"
    if [[ -e $DATA/postgres || -L $DATA/postgres ]]; then
        return 0
    fi
    if is_root; then
        id postgres >/dev/null 2>&1 || die "OS user 'postgres' does not exist (is the postgresql package installed?)"
        chmod 755 "$DATA"
        if runuser -u postgres -- test -x "$DATA"; then
            mkdir -m 700 "$DATA/postgres"
            chown postgres:postgres "$DATA/postgres"
        else
            local alt="/var/tmp/analytics-pg-$ROOT_HASH"
            warn "user postgres cannot traverse $DATA (parent directory permissions);"
            warn "placing the cluster in $alt (symlinked from .data/postgres)"
            mkdir -p "$alt"
            chown postgres:postgres "$alt"
            chmod 700 "$alt"
            ln -s "$alt" "$DATA/postgres"
        fi
    else
        mkdir -m 700 "$DATA/postgres"
    fi
}

pg_running() {
    [[ -s $PGDATA_DIR/postmaster.pid ]] || return 1
    as_pg "$PGBIN/pg_ctl" status -D "$PGDATA_DIR" >/dev/null 2>&1
}

pg_write_conf() {
    local conf="$PGDATA_DIR/analytics.conf"
    local tmp
    tmp="$(mktemp)"
    cat >"$tmp" <<EOF
# Written by scripts/services.sh on every start; edit the script, not this file.
listen_addresses = '$HOST'
port = $PG_PORT
unix_socket_directories = '$PG_SOCK'
max_connections = 200
shared_buffers = 256MB
fsync = on
synchronous_commit = on
full_page_writes = on
wal_level = minimal
max_wal_senders = 0
password_encryption = 'scram-sha-256'
logging_collector = off
log_line_prefix = '%m [%p] %q%u@%d '
log_timezone = 'UTC'
timezone = 'UTC'
EOF
    if is_root; then chown "$PG_OS_USER" "$tmp"; fi
    chmod 600 "$tmp"
    mv -f "$tmp" "$conf"
}

pg_initdb() {
    [[ -s $PGDATA_DIR/PG_VERSION ]] && return 0
    log "postgres: initializing cluster in $PGDATA_DIR"
    as_pg rm -rf "$PGDATA_DIR.tmp"
    as_pg "$PGBIN/initdb" -D "$PGDATA_DIR.tmp" \
        --auth-local=peer --auth-host=scram-sha-256 \
        --encoding=UTF8 --no-locale >"$PG_BASE/initdb.log" 2>&1 \
        || { tail -n 30 "$PG_BASE/initdb.log" >&2; die "initdb failed"; }
    printf "\n# Local overrides for the analytics dev cluster\ninclude_if_exists = 'analytics.conf'\n" \
        | as_pg tee -a "$PGDATA_DIR.tmp/postgresql.conf" >/dev/null
    as_pg mv "$PGDATA_DIR.tmp" "$PGDATA_DIR"
}

# If another PostgreSQL (e.g. Debian's default cluster, which the package
# install starts automatically) holds our port, stop it or fail.
pg_free_port() {
    port_open "$PG_PORT" || return 0
    if is_root && command -v pg_lsclusters >/dev/null 2>&1; then
        local ver name port status rest
        while read -r ver name port status rest; do
            if [[ $port == "$PG_PORT" && $status == online* ]]; then
                log "postgres: stopping system cluster $ver/$name that holds port $PG_PORT"
                pg_ctlcluster "$ver" "$name" stop >/dev/null 2>&1 || true
            fi
        done < <(pg_lsclusters --no-header 2>/dev/null || true)
    fi
    if port_open "$PG_PORT" && is_root && [[ -x /etc/init.d/postgresql ]]; then
        log "postgres: stopping the system postgresql service (port $PG_PORT is busy)"
        service postgresql stop >/dev/null 2>&1 || true
    fi
    local deadline=$(( $(now) + 15 ))
    while port_open "$PG_PORT"; do
        if (( $(now) >= deadline )); then
            die "port $HOST:$PG_PORT is used by another process (not our cluster in $PGDATA_DIR). Stop it, or set PGPORT to another port."
        fi
        sleep 0.2
    done
}

pg_psql_super() {
    as_pg "$PGBIN/psql" -X -q -v ON_ERROR_STOP=1 -h "$PG_SOCK" -p "$PG_PORT" -U "$PG_OS_USER" -d postgres "$@"
}

pg_bootstrap_db() {
    pg_psql_super <<EOF >/dev/null
DO \$\$
BEGIN
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '$PG_USER') THEN
    CREATE ROLE $PG_USER LOGIN CREATEDB PASSWORD '$PG_PASSWORD';
  ELSE
    ALTER ROLE $PG_USER LOGIN CREATEDB PASSWORD '$PG_PASSWORD';
  END IF;
END
\$\$;
EOF
    local exists
    exists="$(pg_psql_super -tA -c "SELECT 1 FROM pg_database WHERE datname = '$PG_DB'")"
    if [[ $exists != 1 ]]; then
        pg_psql_super -c "CREATE DATABASE $PG_DB OWNER $PG_USER" >/dev/null
    fi
    # Prove that password auth over TCP works the way the service connects.
    PGPASSWORD="$PG_PASSWORD" "$PGBIN/psql" -X -q -tA \
        "postgresql://$PG_USER@$HOST:$PG_PORT/$PG_DB?connect_timeout=5" -c 'select 1' >/dev/null \
        || die "postgres: password login as $PG_USER over TCP failed"
}

pg_start() {
    pg_paths
    if [[ ! -s $PGDATA_DIR/PG_VERSION ]] && ! compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null; then
        apt_install postgresql
    fi
    pg_find_bin || die "PostgreSQL binaries not found under /usr/lib/postgresql/*/bin"
    pg_prepare_base
    pg_paths
    pg_initdb
    pg_find_bin || true

    mkdir -p "$PG_SOCK"
    if is_root; then chown "$PG_OS_USER" "$PG_SOCK"; fi
    chmod 700 "$PG_SOCK"

    if pg_running; then
        :
    else
        pg_free_port
        pg_write_conf
        as_pg "$PGBIN/pg_ctl" start -W -D "$PGDATA_DIR" -l "$PG_LOG" >/dev/null 9>&- \
            || { tail -n 30 "$PG_LOG" >&2 || true; die "pg_ctl start failed"; }
    fi

    local deadline=$(( $(now) + PG_READY_TIMEOUT ))
    until "$PGBIN/pg_isready" -q -h "$HOST" -p "$PG_PORT" -t 2; do
        if (( $(now) >= deadline )); then
            tail -n 30 "$PG_LOG" >&2 || true
            die "postgres not ready on $HOST:$PG_PORT after ${PG_READY_TIMEOUT}s (log: $PG_LOG)"
        fi
        sleep 0.2
    done
    pg_bootstrap_db
    log "postgres: ready  postgres://$PG_USER:$PG_PASSWORD@$HOST:$PG_PORT/$PG_DB  (data: $PGDATA_DIR)"
}

pg_stop() {
    pg_paths
    if [[ ! -s $PGDATA_DIR/PG_VERSION ]] || ! pg_find_bin; then
        log "postgres: not running"
        return 0
    fi
    if ! pg_running; then
        log "postgres: not running"
        return 0
    fi
    if ! as_pg "$PGBIN/pg_ctl" stop -D "$PGDATA_DIR" -m fast -w -t "$STOP_TIMEOUT" >/dev/null 2>&1; then
        warn "postgres: fast shutdown did not finish within ${STOP_TIMEOUT}s, using immediate mode"
        as_pg "$PGBIN/pg_ctl" stop -D "$PGDATA_DIR" -m immediate -w -t 30 >/dev/null 2>&1 || true
    fi
    log "postgres: stopped"
}

pg_status() {
    pg_paths
    if [[ -s $PGDATA_DIR/PG_VERSION ]] && pg_find_bin && pg_running; then
        local pid
        pid="$(head -n 1 "$PGDATA_DIR/postmaster.pid" 2>/dev/null || true)"
        if "$PGBIN/pg_isready" -q -h "$HOST" -p "$PG_PORT" -t 2; then
            log "postgres: running (pid $pid) $HOST:$PG_PORT db=$PG_DB"
            return 0
        fi
        log "postgres: running (pid $pid) but not accepting connections on $HOST:$PG_PORT"
        return 1
    fi
    log "postgres: stopped"
    return 1
}

# ------------------------------------------------------------------- Redis --

REDIS_DIR="$DATA/redis"
REDIS_PID="$REDIS_DIR/redis.pid"
REDIS_LOG="$REDIS_DIR/redis.log"

redis_ping() {
    [[ "$(timeout 3 redis-cli -h "$HOST" -p "$REDIS_PORT" ping 2>/dev/null)" == PONG ]]
}

redis_free_port() {
    port_open "$REDIS_PORT" || return 0
    if is_root && { [[ -x /etc/init.d/redis-server ]] || [[ -f /lib/systemd/system/redis-server.service ]]; }; then
        log "redis: stopping the system redis-server service (port $REDIS_PORT is busy)"
        service redis-server stop >/dev/null 2>&1 || true
    fi
    local deadline=$(( $(now) + 15 ))
    while port_open "$REDIS_PORT"; do
        if (( $(now) >= deadline )); then
            die "port $HOST:$REDIS_PORT is used by another process (not our redis, pid file $REDIS_PID). Stop it, or set REDIS_PORT."
        fi
        sleep 0.2
    done
}

redis_start() {
    if ! command -v redis-server >/dev/null 2>&1 || ! command -v redis-cli >/dev/null 2>&1; then
        apt_install redis-server
    fi
    mkdir -p "$REDIS_DIR"
    if ! pid_alive "$REDIS_PID" redis-server; then
        rm -f "$REDIS_PID"
        redis_free_port
        redis-server --daemonize yes \
            --bind "$HOST" --port "$REDIS_PORT" --protected-mode yes \
            --dir "$REDIS_DIR" --pidfile "$REDIS_PID" --logfile "$REDIS_LOG" \
            --save "" --appendonly no 9>&- \
            || die "redis-server failed to start (log: $REDIS_LOG)"
    fi
    local deadline=$(( $(now) + REDIS_READY_TIMEOUT ))
    until redis_ping; do
        if (( $(now) >= deadline )); then
            tail -n 30 "$REDIS_LOG" >&2 || true
            die "redis not answering PING on $HOST:$REDIS_PORT after ${REDIS_READY_TIMEOUT}s (log: $REDIS_LOG)"
        fi
        sleep 0.2
    done
    log "redis:    ready  redis://$HOST:$REDIS_PORT"
}

redis_stop() {
    stop_pidfile redis "$REDIS_PID" redis-server
}

redis_status() {
    if pid_alive "$REDIS_PID" redis-server; then
        if redis_ping; then
            log "redis:    running (pid $(<"$REDIS_PID")) $HOST:$REDIS_PORT"
            return 0
        fi
        log "redis:    running (pid $(<"$REDIS_PID")) but not answering PING on $HOST:$REDIS_PORT"
        return 1
    fi
    log "redis:    stopped"
    return 1
}

# ------------------------------------------------------------------- Kafka --

KAFKA_DIR="$DATA/kafka"
KAFKA_LIBS="$KAFKA_DIR/libs"
KAFKA_LIBS_MARKER="$KAFKA_LIBS/.complete"
KAFKA_LOGS="$KAFKA_DIR/logs"
KAFKA_PROPS="$KAFKA_DIR/server.properties"
KAFKA_LOG4J="$KAFKA_DIR/log4j2.properties"
KAFKA_TOOLS_LOG4J="$KAFKA_DIR/tools-log4j2.properties"
KAFKA_PID="$KAFKA_DIR/kafka.pid"
KAFKA_LOG="$KAFKA_DIR/kafka.log"
KAFKA_OUT="$KAFKA_DIR/kafka.out"
KAFKA_CLUSTER_ID_FILE="$KAFKA_DIR/cluster.id"
KAFKA_BOOTSTRAP="$HOST:$KAFKA_PORT"

# Short-lived Kafka CLI JVMs: small heap, C1 only, quiet logging.
kafka_tool() {
    timeout 60 java -Xmx512m -XX:+UseSerialGC -XX:TieredStopAtLevel=1 -Xshare:auto \
        -Dlog4j2.configurationFile="$KAFKA_TOOLS_LOG4J" \
        -cp "$KAFKA_LIBS/*" "$@"
}

kafka_ensure_java() {
    local pkgs=()
    command -v java >/dev/null 2>&1 || pkgs+=(openjdk-17-jre-headless)
    if [[ ! -f $KAFKA_LIBS_MARKER ]] && ! command -v mvn >/dev/null 2>&1; then
        pkgs+=(maven)
    fi
    if (( ${#pkgs[@]} > 0 )); then
        apt_install "${pkgs[@]}"
    fi
}

kafka_fetch_libs() {
    local pom_hash
    pom_hash="$(sha256sum "$KAFKA_POM" | cut -d' ' -f1)"
    if [[ -f $KAFKA_LIBS_MARKER && "$(<"$KAFKA_LIBS_MARKER")" == "$pom_hash" ]]; then
        return 0
    fi
    command -v mvn >/dev/null 2>&1 || apt_install maven
    log "kafka: fetching jars from Maven Central into $KAFKA_LIBS (once)"
    local tmp="$KAFKA_LIBS.tmp"
    rm -rf "$tmp"
    mkdir -p "$tmp"
    mvn -q -B -f "$KAFKA_POM" \
        org.apache.maven.plugins:maven-dependency-plugin:3.8.1:copy-dependencies \
        -DoutputDirectory="$tmp" -DincludeScope=runtime >"$KAFKA_DIR/mvn.log" 2>&1 \
        || { tail -n 40 "$KAFKA_DIR/mvn.log" >&2; die "mvn copy-dependencies failed (log: $KAFKA_DIR/mvn.log)"; }
    compgen -G "$tmp/kafka_2.13-*.jar" >/dev/null || die "kafka jar missing after mvn copy-dependencies"
    compgen -G "$tmp/log4j-core-*.jar" >/dev/null || die "log4j-core jar missing after mvn copy-dependencies"
    rm -rf "$KAFKA_LIBS"
    mv "$tmp" "$KAFKA_LIBS"
    printf '%s\n' "$pom_hash" >"$KAFKA_LIBS_MARKER"
}

kafka_write_config() {
    mkdir -p "$KAFKA_LOGS"
    cat >"$KAFKA_PROPS.tmp" <<EOF
# Written by scripts/services.sh on every start; edit the script, not this file.
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@$HOST:$KAFKA_CONTROLLER_PORT
listeners=PLAINTEXT://$HOST:$KAFKA_PORT,CONTROLLER://$HOST:$KAFKA_CONTROLLER_PORT
advertised.listeners=PLAINTEXT://$HOST:$KAFKA_PORT
controller.listener.names=CONTROLLER
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
inter.broker.listener.name=PLAINTEXT
offsets.topic.replication.factor=1
offsets.topic.num.partitions=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
log.dirs=$KAFKA_LOGS
num.partitions=$KAFKA_TOPIC_PARTITIONS
default.replication.factor=1
auto.create.topics.enable=false
delete.topic.enable=true
log.retention.hours=24
EOF
    mv -f "$KAFKA_PROPS.tmp" "$KAFKA_PROPS"

    cat >"$KAFKA_LOG4J" <<EOF
# Broker logging (log4j2): INFO and above to kafka.log, rolled at 50 MB.
status = warn
name = kafka-broker
appender.file.type = RollingFile
appender.file.name = FILE
appender.file.fileName = $KAFKA_LOG
appender.file.filePattern = $KAFKA_LOG.%i
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
appender.file.policies.type = Policies
appender.file.policies.size.type = SizeBasedTriggeringPolicy
appender.file.policies.size.size = 50MB
appender.file.strategy.type = DefaultRolloverStrategy
appender.file.strategy.max = 5
rootLogger.level = INFO
rootLogger.appenderRef.file.ref = FILE
logger.controller.name = kafka.controller
logger.controller.level = INFO
logger.request.name = kafka.request.logger
logger.request.level = WARN
EOF

    cat >"$KAFKA_TOOLS_LOG4J" <<'EOF'
# Kafka command line tools: only warnings and errors, to stderr.
status = warn
name = kafka-tools
appender.stderr.type = Console
appender.stderr.name = STDERR
appender.stderr.target = SYSTEM_ERR
appender.stderr.layout.type = PatternLayout
appender.stderr.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = WARN
rootLogger.appenderRef.stderr.ref = STDERR
EOF
}

kafka_format() {
    [[ -s $KAFKA_LOGS/meta.properties ]] && return 0
    local cid=""
    if [[ -s $KAFKA_CLUSTER_ID_FILE ]]; then
        cid="$(<"$KAFKA_CLUSTER_ID_FILE")"
    else
        cid="$(kafka_tool kafka.tools.StorageTool random-uuid | tail -n 1)"
        [[ $cid =~ ^[A-Za-z0-9_-]{22}$ ]] || die "kafka: StorageTool random-uuid returned '$cid'"
        printf '%s\n' "$cid" >"$KAFKA_CLUSTER_ID_FILE"
    fi
    log "kafka: formatting storage in $KAFKA_LOGS (cluster id $cid)"
    # Static quorum (controller.quorum.voters) => no --standalone: Kafka 4.1
    # rejects it ("You cannot specify controller.quorum.voters and format the
    # node with --initial-controllers or --standalone").
    kafka_tool kafka.tools.StorageTool format -t "$cid" -c "$KAFKA_PROPS" --ignore-formatted \
        >"$KAFKA_DIR/format.log" 2>&1 \
        || { cat "$KAFKA_DIR/format.log" >&2; die "kafka storage format failed"; }
}

kafka_print_logs() {
    echo "---- tail of $KAFKA_LOG" >&2
    tail -n 40 "$KAFKA_LOG" >&2 2>/dev/null || true
    echo "---- tail of $KAFKA_OUT" >&2
    tail -n 20 "$KAFKA_OUT" >&2 2>/dev/null || true
}

kafka_list_topics() {
    kafka_tool org.apache.kafka.tools.TopicCommand --bootstrap-server "$KAFKA_BOOTSTRAP" --list
}

kafka_start() {
    mkdir -p "$KAFKA_DIR"
    kafka_ensure_java
    kafka_fetch_libs
    kafka_write_config

    if ! pid_alive "$KAFKA_PID" kafka.Kafka; then
        rm -f "$KAFKA_PID"
        local p
        for p in "$KAFKA_PORT" "$KAFKA_CONTROLLER_PORT"; do
            if port_open "$p"; then
                die "port $HOST:$p is used by another process (not our Kafka, pid file $KAFKA_PID). Stop it first."
            fi
        done
        kafka_format
        # setsid: own session so the broker outlives this script and the
        # terminal; the inner bash records its own pid, then execs java.
        # shellcheck disable=SC2016 # expanded by the inner bash
        setsid bash -c 'echo $$ >"$0"; exec "$@"' "$KAFKA_PID" \
            nohup java -Xms256m -Xmx1g -XX:+UseG1GC -XX:MaxGCPauseMillis=20 \
            -Djava.awt.headless=true -Djava.net.preferIPv4Stack=true \
            -Dlog4j2.configurationFile="$KAFKA_LOG4J" \
            -cp "$KAFKA_LIBS/*" kafka.Kafka "$KAFKA_PROPS" \
            >>"$KAFKA_OUT" 2>&1 </dev/null 9>&- &
        disown || true
    fi

    local deadline=$(( $(now) + KAFKA_READY_TIMEOUT ))
    until port_open "$KAFKA_PORT"; do
        # The process itself, not its command line: while bash execs nohup
        # and nohup execs java, /proc/PID/cmdline can read empty.
        if [[ -s $KAFKA_PID ]] && ! kill -0 "$(<"$KAFKA_PID")" 2>/dev/null; then
            kafka_print_logs
            die "kafka exited during startup (logs: $KAFKA_LOG, $KAFKA_OUT)"
        fi
        if (( $(now) >= deadline )); then
            kafka_print_logs
            die "kafka not listening on $KAFKA_BOOTSTRAP after ${KAFKA_READY_TIMEOUT}s (log: $KAFKA_LOG)"
        fi
        sleep 0.3
    done
    local topics
    until topics="$(kafka_list_topics 2>>"$KAFKA_DIR/tools.err")"; do
        if (( $(now) >= deadline )); then
            kafka_print_logs
            die "kafka: TopicCommand --list kept failing for ${KAFKA_READY_TIMEOUT}s (see $KAFKA_DIR/tools.err, $KAFKA_LOG)"
        fi
        sleep 1
    done

    local t
    for t in "${KAFKA_TOPICS[@]}"; do
        if ! grep -qxF -- "$t" <<<"$topics"; then
            kafka_tool org.apache.kafka.tools.TopicCommand --bootstrap-server "$KAFKA_BOOTSTRAP" \
                --create --if-not-exists --topic "$t" \
                --partitions "$KAFKA_TOPIC_PARTITIONS" --replication-factor 1 >/dev/null \
                || die "kafka: creating topic $t failed"
            log "kafka: created topic $t ($KAFKA_TOPIC_PARTITIONS partitions)"
        fi
    done
    log "kafka:    ready  $KAFKA_BOOTSTRAP  topics: ${KAFKA_TOPICS[*]}"
}

kafka_stop() {
    stop_pidfile kafka "$KAFKA_PID" kafka.Kafka
}

kafka_status() {
    if pid_alive "$KAFKA_PID" kafka.Kafka; then
        if port_open "$KAFKA_PORT"; then
            log "kafka:    running (pid $(<"$KAFKA_PID")) $KAFKA_BOOTSTRAP"
            return 0
        fi
        log "kafka:    running (pid $(<"$KAFKA_PID")) but not listening on $KAFKA_BOOTSTRAP"
        return 1
    fi
    log "kafka:    stopped"
    return 1
}

# -------------------------------------------------------------------- main --

# Serializes start/stop. The daemons must not inherit fd 9 (they would hold
# the lock forever), hence the `9>&-` on every daemon launch above.
take_lock() {
    mkdir -p "$DATA"
    exec 9>"$DATA/.services.lock"
    flock -w 300 9 || die "another services.sh is running (lock $DATA/.services.lock)"
}

cmd_start() {
    take_lock
    local t0
    t0=$(now)
    pg_start
    redis_start
    kafka_start
    log "all services ready in $(( $(now) - t0 ))s (data: $DATA)"
}

cmd_stop() {
    take_lock
    kafka_stop
    redis_stop
    pg_stop
}

cmd_status() {
    local rc=0
    pg_status || rc=1
    redis_status || rc=1
    kafka_status || rc=1
    return "$rc"
}

case "${1:-start}" in
    start) cmd_start ;;
    stop) cmd_stop ;;
    status) cmd_status ;;
    restart) cmd_stop; cmd_start ;;
    -h|--help|help)
        sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed -e '$d' -e 's/^# \{0,1\}//'
        ;;
    *) die "usage: $0 [start|stop|status|restart]" ;;
esac
