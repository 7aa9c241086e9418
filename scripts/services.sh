#!/usr/bin/env bash
# Local backing services for the analytics service: PostgreSQL, Redis and a
# single-node Kafka 4.1.1 (KRaft), all bound to 127.0.0.1, no Docker needed.
# PostgreSQL and Kafka also offer TLS endpoints (private CA) for the
# integration tests.
#
#   scripts/services.sh [start]   install what is missing, start, wait until ready
#   scripts/services.sh stop      stop everything started by this script
#   scripts/services.sh status    one line per service and TLS endpoint
#                                 (exit 0 only if all run)
#   scripts/services.sh tls-env   print `export` lines for the TLS tests:
#                                 eval "$(scripts/services.sh tls-env)"
#
# All state lives under $ROOT/.data (git-ignored):
#   .data/postgres/   our own PostgreSQL cluster (data/, run/ = unix socket,
#                     postgres.log, tls/ = copies of server.crt, server.key
#                     and ca.crt owned by the cluster owner, mode 0600).
#                     Owned by the `postgres` OS user when run
#                     as root. If that user cannot traverse the parents of
#                     .data (e.g. the repo is under /root), the cluster lives
#                     in /var/tmp/analytics-pg-<hash of ROOT> instead and
#                     .data/postgres is a symlink to it.
#   .data/redis/      redis.pid, redis.log (no persistence)
#   .data/kafka/      libs/ (jars from Maven Central, see scripts/kafka/pom.xml),
#                     server.properties, log4j2*.properties, cluster.id,
#                     logs/ (topic data), kafka.log, kafka.pid,
#                     tls-keystore.pem (server.key + server.crt),
#                     sasl-client.properties (Java client settings for 9095),
#                     config.sha256 (what the running broker was started with:
#                     a broker from an older config is restarted),
#                     scram.done (the SCRAM user exists in this log dir)
#   .data/tls/        private CA and certificates (openssl, RSA 2048), made
#                     once, remade when missing, not signed by the current CA
#                     or expiring within 30 days:
#                       ca.crt, ca.key            the CA (10 years)
#                       server.crt, server.key    SAN DNS:localhost, IP:127.0.0.1
#                                                 (serverAuth, clientAuth)
#                       wrong-host.crt, .key      SAN DNS:wrong.example only
#                                                 (served by nothing)
#                       client.crt, client.key    CN=analytics_tls (clientAuth)
#                     Keys are PKCS#8 PEM, mode 0600; certificates 0644.
#                     .profile and .keys-match: what was made and a hash of
#                     the files when keys and certificates last matched.
#
# Environment overrides: PGPORT (5432), REDIS_PORT (6379), KAFKA_PORT (9092),
# KAFKA_CONTROLLER_PORT (9093), KAFKA_SSL_PORT (9094), KAFKA_SASL_SSL_PORT
# (9095).
#
# Connection details (the defaults the service expects):
#   postgres://analytics_user:change_me@127.0.0.1:5432/analytics
#   redis://127.0.0.1:6379
#   Kafka bootstrap 127.0.0.1:9092, topics trading.events market.data
#   order.events user.actions (6 partitions, replication factor 1)
#
# TLS endpoints (CA: .data/tls/ca.crt):
#   PostgreSQL  postgres://analytics_tls:tls_secret@localhost:5432/analytics
#               (sslmode=verify-full). The role may only log in over TLS
#               (hostnossl ... reject); its sessions run as analytics_user
#               (member, plus ALTER ROLE ... SET role), so it owns and sees
#               what the service creates (analytics_user is granted
#               pg_read_all_stats, so that such a session sees its own row
#               in pg_stat_ssl). PostgreSQL also listens on
#               127.0.0.2, which is not in the certificate: verify-full to
#               host 127.0.0.2 fails the host name check. A client
#               certificate (client.crt) is verified against the CA when sent.
#   Kafka SSL       127.0.0.1:9094 (client certificate optional: requested)
#   Kafka SASL_SSL  127.0.0.1:9095, SCRAM-SHA-512, SCRAM-SHA-256 or PLAIN,
#                   user analytics, password scram_secret
#   No ACLs (no authorizer). PLAINTEXT 9092 stays the inter-broker listener.
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
KAFKA_SSL_PORT="${KAFKA_SSL_PORT:-9094}"
KAFKA_SASL_SSL_PORT="${KAFKA_SASL_SSL_PORT:-9095}"

PG_DB=analytics
PG_USER=analytics_user
PG_PASSWORD=change_me
# TLS-only role for the TLS tests; its sessions run as $PG_USER.
PG_TLS_USER=analytics_tls
PG_TLS_PASSWORD=tls_secret
# Loopback address PostgreSQL also listens on, absent from the server
# certificate: the target of the "verify-full must fail" test.
PG_TLS_WRONG_HOST=127.0.0.2

KAFKA_TOPICS=(trading.events market.data order.events user.actions)
KAFKA_TOPIC_PARTITIONS=6
KAFKA_POM="$SCRIPT_DIR/kafka/pom.xml"
KAFKA_SCRAM_USER=analytics
KAFKA_SCRAM_PASSWORD=scram_secret

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

# --------------------------------------------------------------------- TLS --

TLS_DIR="$DATA/tls"
TLS_CA_DAYS=3650
TLS_LEAF_DAYS=825
TLS_RENEW_SECONDS=$(( 30 * 24 * 3600 ))
# The certificates below, in words. A different text (edit it whenever the
# profiles in tls_write_openssl_conf change) remakes all of them.
TLS_PROFILE="v1 rsa2048 ca server(DNS:localhost,IP:127.0.0.1) wrong-host(DNS:wrong.example) client(CN=analytics_tls)"
# file name -> openssl config section, and the subject's common name.
TLS_LEAVES=(server wrong-host client)
declare -A TLS_SECTION=([server]=server [wrong-host]=wrong_host [client]=client)
declare -A TLS_CN=([server]=localhost [wrong-host]=wrong.example [client]=analytics_tls)

# tls_write_openssl_conf FILE: the request and extension profiles, without
# depending on the system's openssl.cnf.
tls_write_openssl_conf() {
    cat >"$1" <<'CNF'
[req]
distinguished_name = dn
prompt = no
[dn]
CN = unused
[ca]
basicConstraints = critical,CA:TRUE
keyUsage = critical,keyCertSign,cRLSign
subjectKeyIdentifier = hash
[server]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature,keyEncipherment
extendedKeyUsage = serverAuth,clientAuth
subjectAltName = DNS:localhost,IP:127.0.0.1
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid,issuer
[wrong_host]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature,keyEncipherment
extendedKeyUsage = serverAuth,clientAuth
subjectAltName = DNS:wrong.example
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid,issuer
[client]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature,keyEncipherment
extendedKeyUsage = clientAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid,issuer
CNF
}

# tls_new_key FILE: RSA 2048, PKCS#8 PEM (what Kafka's PEM keystore reads).
tls_new_key() {
    (umask 077 && openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$1" 2>/dev/null) \
        || die "tls: openssl genpkey failed for $1"
}

# tls_key_matches NAME: NAME.key is the private key of NAME.crt.
tls_key_matches() {
    local crt_pub key_pub
    crt_pub="$(openssl x509 -noout -pubkey -in "$TLS_DIR/$1.crt" 2>/dev/null)" || return 1
    key_pub="$(openssl pkey -pubout -in "$TLS_DIR/$1.key" 2>/dev/null)" || return 1
    [[ -n $crt_pub && $crt_pub == "$key_pub" ]]
}

# tls_files_hash: sha256 over all keys and certificates; .keys-match holds it
# from the last time they were made or found to match (skips tls_key_matches).
tls_files_hash() {
    local name
    for name in ca "${TLS_LEAVES[@]}"; do
        cat "$TLS_DIR/$name.crt" "$TLS_DIR/$name.key" 2>/dev/null || true
    done | sha256sum | cut -d' ' -f1
}

# tls_verified WHEN NAME...: the names (ca included) whose certificate chains
# to ca.crt and is valid at the epoch second WHEN, one per line.
tls_verified() {
    local when=$1 name files=()
    shift
    for name in "$@"; do
        [[ -s $TLS_DIR/$name.crt ]] && files+=("$name.crt")
    done
    (( ${#files[@]} > 0 )) || return 0
    # Exit status 2 when any of them fails; the per-file lines tell which.
    (cd "$TLS_DIR" || exit 0; openssl verify -CAfile ca.crt -attime "$when" "${files[@]}" 2>/dev/null; true) \
        | sed -n 's/^\(.*\)\.crt: OK$/\1/p'
}

# tls_ensure: the CA and the certificates in $TLS_DIR exist, match their
# keys, chain to the CA and stay valid for 30 more days; otherwise they are
# made (all of them when the CA is remade).
tls_ensure() {
    command -v openssl >/dev/null 2>&1 || apt_install openssl
    mkdir -p "$TLS_DIR"
    chmod 755 "$TLS_DIR"
    rm -rf "$TLS_DIR"/.tmp.*

    local all=(ca "${TLS_LEAVES[@]}") name t ok_now ok_later remake=() keys_checked=0
    t=$(now)
    if [[ ! -s $TLS_DIR/.profile || "$(<"$TLS_DIR/.profile")" != "$TLS_PROFILE" ]]; then
        remake=("${all[@]}")
    else
        ok_now="$(tls_verified "$t" "${all[@]}")"
        ok_later="$(tls_verified $(( t + TLS_RENEW_SECONDS )) "${all[@]}")"
        if [[ -s $TLS_DIR/.keys-match && "$(<"$TLS_DIR/.keys-match")" == "$(tls_files_hash)" ]]; then
            keys_checked=1
        fi
        for name in "${all[@]}"; do
            if ! grep -qxF -- "$name" <<<"$ok_now" || ! grep -qxF -- "$name" <<<"$ok_later" \
                || [[ ! -s $TLS_DIR/$name.key ]] || { (( ! keys_checked )) && ! tls_key_matches "$name"; }; then
                if [[ $name == ca ]]; then
                    remake=("${all[@]}")
                    break
                fi
                remake+=("$name")
            fi
        done
    fi
    if (( ${#remake[@]} == 0 )); then
        (( keys_checked )) || tls_files_hash >"$TLS_DIR/.keys-match"
        return 0
    fi

    local tmp cnf
    tmp="$(mktemp -d "$TLS_DIR/.tmp.XXXXXX")"
    cnf="$tmp/openssl.cnf"
    tls_write_openssl_conf "$cnf"
    rm -f "$TLS_DIR/.profile" "$TLS_DIR/.keys-match"
    if [[ ${remake[0]} == ca ]]; then
        log "tls: creating a private CA in $TLS_DIR"
        tls_new_key "$tmp/ca.key"
        openssl req -x509 -new -key "$tmp/ca.key" -sha256 -days "$TLS_CA_DAYS" \
            -subj "/CN=analytics dev CA $ROOT_HASH" -config "$cnf" -extensions ca \
            -out "$tmp/ca.crt" 2>"$tmp/err" \
            || { cat "$tmp/err" >&2; die "tls: creating the CA certificate failed"; }
        chmod 644 "$tmp/ca.crt"
        mv -f "$tmp/ca.key" "$TLS_DIR/ca.key"
        mv -f "$tmp/ca.crt" "$TLS_DIR/ca.crt"
        remake=("${remake[@]:1}")
    fi
    for name in "${remake[@]}"; do
        log "tls: creating $name.crt (CN=${TLS_CN[$name]})"
        tls_new_key "$tmp/$name.key"
        openssl req -new -key "$tmp/$name.key" -subj "/CN=${TLS_CN[$name]}" -config "$cnf" \
            -out "$tmp/$name.csr" 2>"$tmp/err" \
            || { cat "$tmp/err" >&2; die "tls: certificate request for $name failed"; }
        openssl x509 -req -in "$tmp/$name.csr" -CA "$TLS_DIR/ca.crt" -CAkey "$TLS_DIR/ca.key" \
            -set_serial "$(printf '0x%04x%04x%04x%04x%04x%04x%04x%04x' \
                $(( RANDOM | 0x1000 )) "$RANDOM" "$RANDOM" "$RANDOM" "$RANDOM" "$RANDOM" "$RANDOM" "$RANDOM")" \
            -days "$TLS_LEAF_DAYS" -sha256 -extfile "$cnf" -extensions "${TLS_SECTION[$name]}" \
            -out "$tmp/$name.crt" 2>"$tmp/err" \
            || { cat "$tmp/err" >&2; die "tls: signing $name.crt failed"; }
        chmod 644 "$tmp/$name.crt"
        mv -f "$tmp/$name.key" "$TLS_DIR/$name.key"
        mv -f "$tmp/$name.crt" "$TLS_DIR/$name.crt"
    done
    rm -rf "$tmp"
    tls_files_hash >"$TLS_DIR/.keys-match"
    printf '%s\n' "$TLS_PROFILE" >"$TLS_DIR/.profile"
}

# -------------------------------------------------------------- PostgreSQL --

PG_OS_USER=""
PG_BASE=""
PGDATA_DIR=""
PG_SOCK=""
PG_LOG=""
PG_TLS_DIR=""
PGBIN=""
# Set by pg_install_tls, pg_write_conf, pg_write_hba: 1 when the file changed.
PG_TLS_CHANGED=0
PG_CONF_CHANGED=0
PG_HBA_CHANGED=0
PG_HBA_BEGIN="# BEGIN analytics TLS role (scripts/services.sh rewrites this block on every start)"
PG_HBA_END="# END analytics TLS role"

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
    PG_TLS_DIR="$PG_BASE/tls"
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

# pg_write_conf: analytics.conf; PG_CONF_CHANGED=1 when it differs from the
# file the cluster has (a running cluster must then restart: listen_addresses).
pg_write_conf() {
    local conf="$PGDATA_DIR/analytics.conf"
    local tmp
    tmp="$(mktemp)"
    cat >"$tmp" <<EOF
# Written by scripts/services.sh on every start; edit the script, not this file.
# $PG_TLS_WRONG_HOST: same server certificate, a host name it does not name.
listen_addresses = '$HOST,$PG_TLS_WRONG_HOST'
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
ssl = on
ssl_cert_file = '$PG_TLS_DIR/server.crt'
ssl_key_file = '$PG_TLS_DIR/server.key'
ssl_ca_file = '$PG_TLS_DIR/ca.crt'
ssl_min_protocol_version = 'TLSv1.2'
EOF
    PG_CONF_CHANGED=0
    if pg_replace_file "$tmp" "$conf"; then PG_CONF_CHANGED=1; fi
}

# pg_replace_file TMP DEST: moves TMP over DEST (owned by the cluster owner,
# mode 0600) when they differ, else removes TMP; true when DEST changed.
pg_replace_file() {
    local tmp=$1 dest=$2
    if cmp -s "$tmp" "$dest"; then
        rm -f "$tmp"
        return 1
    fi
    if is_root; then chown "$PG_OS_USER" "$tmp"; fi
    chmod 600 "$tmp"
    mv -f "$tmp" "$dest"
}

# pg_write_hba: our block at the top of pg_hba.conf (ahead of initdb's generic
# rules, which stay as they are): the TLS role logs in over TLS only.
# PG_HBA_CHANGED=1 when the file changed (a reload applies it).
pg_write_hba() {
    local hba="$PGDATA_DIR/pg_hba.conf" tmp
    tmp="$(mktemp)"
    {
        printf '%s\n' "$PG_HBA_BEGIN"
        printf '%-9s %-15s %-15s %-23s %s\n' \
            hostssl all "$PG_TLS_USER" "$HOST/32" scram-sha-256 \
            hostssl all "$PG_TLS_USER" "$PG_TLS_WRONG_HOST/32" scram-sha-256 \
            hostssl all "$PG_TLS_USER" ::1/128 scram-sha-256 \
            hostnossl all "$PG_TLS_USER" 0.0.0.0/0 reject \
            hostnossl all "$PG_TLS_USER" ::/0 reject
        printf '%s\n' "$PG_HBA_END"
        awk -v b="$PG_HBA_BEGIN" -v e="$PG_HBA_END" \
            '$0 == b { skip = 1; next } $0 == e { skip = 0; next } !skip' "$hba"
    } >"$tmp"
    PG_HBA_CHANGED=0
    if pg_replace_file "$tmp" "$hba"; then PG_HBA_CHANGED=1; fi
}

# pg_install_tls: copies of server.crt, server.key and ca.crt where the
# cluster owner reads them (PostgreSQL wants its key owned by the server user,
# mode 0600). PG_TLS_CHANGED=1 when a copy changed (a reload applies it).
pg_install_tls() {
    local f changed=0
    if [[ ! -d $PG_TLS_DIR ]]; then
        mkdir -m 700 "$PG_TLS_DIR"
        if is_root; then chown "$PG_OS_USER:" "$PG_TLS_DIR"; fi
    fi
    for f in server.crt server.key ca.crt; do
        cmp -s "$TLS_DIR/$f" "$PG_TLS_DIR/$f" && continue
        (umask 077 && cp "$TLS_DIR/$f" "$PG_TLS_DIR/$f.tmp")
        if is_root; then chown "$PG_OS_USER:" "$PG_TLS_DIR/$f.tmp"; fi
        mv -f "$PG_TLS_DIR/$f.tmp" "$PG_TLS_DIR/$f"
        changed=1
    done
    PG_TLS_CHANGED=$changed
}

# pg_reload: SIGHUP, then wait until the postmaster has read its files again
# (a new session sees a later pg_conf_load_time()).
pg_reload() {
    local q="SELECT (extract(epoch FROM pg_conf_load_time()) * 1000000)::bigint"
    local before after deadline
    before="$(pg_psql_super -tA -c "$q")"
    as_pg "$PGBIN/pg_ctl" reload -D "$PGDATA_DIR" >/dev/null
    deadline=$(( $(now) + 15 ))
    while after="$(pg_psql_super -tA -c "$q")"; (( after <= before )); do
        if (( $(now) >= deadline )); then
            die "postgres: configuration reload not applied after 15s (log: $PG_LOG)"
        fi
        sleep 0.1
    done
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
  -- The TLS role works as $PG_USER: member (INHERIT), and its sessions
  -- SET ROLE to it, so the objects it creates belong to $PG_USER too.
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '$PG_TLS_USER') THEN
    CREATE ROLE $PG_TLS_USER LOGIN INHERIT PASSWORD '$PG_TLS_PASSWORD';
  ELSE
    ALTER ROLE $PG_TLS_USER LOGIN INHERIT PASSWORD '$PG_TLS_PASSWORD';
  END IF;
  IF NOT pg_has_role('$PG_TLS_USER', '$PG_USER', 'MEMBER') THEN
    GRANT $PG_USER TO $PG_TLS_USER;
  END IF;
  ALTER ROLE $PG_TLS_USER SET role = '$PG_USER';
  -- pg_stat_ssl / pg_stat_activity show a session's details only to roles
  -- with the privileges of its session user (or pg_read_all_stats); a TLS
  -- session runs as $PG_USER, which must see its own ssl = t.
  IF NOT pg_has_role('$PG_USER', 'pg_read_all_stats', 'MEMBER') THEN
    GRANT pg_read_all_stats TO $PG_USER;
  END IF;
END
\$\$;
EOF
    local exists
    exists="$(pg_psql_super -tA -c "SELECT 1 FROM pg_database WHERE datname = '$PG_DB'")"
    if [[ $exists != 1 ]]; then
        pg_psql_super -c "CREATE DATABASE $PG_DB OWNER $PG_USER" >/dev/null
    fi
    pg_psql_super -c "GRANT ALL ON DATABASE $PG_DB TO $PG_TLS_USER" >/dev/null
    # Prove that password auth over TCP works the way the service connects.
    PGPASSWORD="$PG_PASSWORD" "$PGBIN/psql" -X -q -tA \
        "postgresql://$PG_USER@$HOST:$PG_PORT/$PG_DB?connect_timeout=5" -c 'select 1' >/dev/null \
        || die "postgres: password login as $PG_USER over TCP failed"
    pg_tls_check || die "postgres: TLS login as $PG_TLS_USER (verify-full, host localhost) failed"
}

# pg_tls_check: the TLS role logs in over TLS with verify-full against our CA.
pg_tls_check() {
    local ssl
    ssl="$(PGPASSWORD="$PG_TLS_PASSWORD" "$PGBIN/psql" -X -q -tA \
        "host=localhost port=$PG_PORT dbname=$PG_DB user=$PG_TLS_USER sslmode=verify-full sslrootcert=$TLS_DIR/ca.crt connect_timeout=5" \
        -c 'SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()' 2>&1)" \
        || { printf '%s\n' "$ssl" >&2; return 1; }
    [[ $ssl == t ]]
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

    pg_install_tls
    pg_write_conf
    pg_write_hba
    if pg_running; then
        if (( PG_CONF_CHANGED )); then
            log "postgres: analytics.conf changed, restarting the cluster"
            as_pg "$PGBIN/pg_ctl" stop -D "$PGDATA_DIR" -m fast -w -t "$STOP_TIMEOUT" >/dev/null \
                || die "postgres: stopping the cluster for the new configuration failed (log: $PG_LOG)"
        elif (( PG_HBA_CHANGED || PG_TLS_CHANGED )); then
            log "postgres: pg_hba.conf or certificates changed, reloading"
            pg_reload
        fi
    fi
    if ! pg_running; then
        pg_free_port
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
    log "postgres: TLS    postgres://$PG_TLS_USER:$PG_TLS_PASSWORD@localhost:$PG_PORT/$PG_DB  (sslmode=verify-full, CA $TLS_DIR/ca.crt)"
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
            if pg_tls_check 2>/dev/null; then
                log "postgres: TLS ok (verify-full as $PG_TLS_USER@localhost:$PG_PORT, also listening on $PG_TLS_WRONG_HOST)"
                return 0
            fi
            log "postgres: TLS login as $PG_TLS_USER (verify-full, localhost:$PG_PORT) fails"
            return 1
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
KAFKA_SSL_BOOTSTRAP="$HOST:$KAFKA_SSL_PORT"
KAFKA_SASL_SSL_BOOTSTRAP="$HOST:$KAFKA_SASL_SSL_PORT"
KAFKA_KEYSTORE="$KAFKA_DIR/tls-keystore.pem"
KAFKA_SASL_CLIENT_PROPS="$KAFKA_DIR/sasl-client.properties"
KAFKA_CONFIG_HASH="$KAFKA_DIR/config.sha256"
KAFKA_SCRAM_MARKER="$KAFKA_DIR/scram.done"

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
listeners=PLAINTEXT://$HOST:$KAFKA_PORT,CONTROLLER://$HOST:$KAFKA_CONTROLLER_PORT,SSL://$HOST:$KAFKA_SSL_PORT,SASL_SSL://$HOST:$KAFKA_SASL_SSL_PORT
advertised.listeners=PLAINTEXT://$HOST:$KAFKA_PORT,SSL://$HOST:$KAFKA_SSL_PORT,SASL_SSL://$HOST:$KAFKA_SASL_SSL_PORT
controller.listener.names=CONTROLLER
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT,SSL:SSL,SASL_SSL:SASL_SSL
inter.broker.listener.name=PLAINTEXT
# TLS (SSL and SASL_SSL listeners): server.key + server.crt from $TLS_DIR,
# client certificates optional, checked against the CA when sent.
ssl.keystore.type=PEM
ssl.keystore.location=$KAFKA_KEYSTORE
ssl.truststore.type=PEM
ssl.truststore.location=$TLS_DIR/ca.crt
ssl.client.auth=requested
# SASL_SSL: SCRAM users live in the cluster metadata (kafka_ensure_scram);
# PLAIN checks the one user listed here. No authorizer: no ACLs.
listener.name.sasl_ssl.sasl.enabled.mechanisms=SCRAM-SHA-512,SCRAM-SHA-256,PLAIN
listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;
listener.name.sasl_ssl.scram-sha-256.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;
listener.name.sasl_ssl.plain.sasl.jaas.config=org.apache.kafka.common.security.plain.PlainLoginModule required user_$KAFKA_SCRAM_USER="$KAFKA_SCRAM_PASSWORD";
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

    # PEM keystore: the PKCS#8 key and its certificate in one file.
    (umask 077 && cat "$TLS_DIR/server.key" "$TLS_DIR/server.crt" >"$KAFKA_KEYSTORE.tmp")
    mv -f "$KAFKA_KEYSTORE.tmp" "$KAFKA_KEYSTORE"

    # Java client settings for the SASL_SSL listener (kafka_ensure_scram).
    cat >"$KAFKA_SASL_CLIENT_PROPS" <<EOF
security.protocol=SASL_SSL
sasl.mechanism=SCRAM-SHA-512
sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required username="$KAFKA_SCRAM_USER" password="$KAFKA_SCRAM_PASSWORD";
ssl.truststore.type=PEM
ssl.truststore.location=$TLS_DIR/ca.crt
EOF

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

# kafka_config_hash: what the broker reads at startup and never again.
kafka_config_hash() {
    cat "$KAFKA_PROPS" "$KAFKA_KEYSTORE" "$TLS_DIR/ca.crt" | sha256sum | cut -d' ' -f1
}

# kafka_ensure_scram: the SCRAM user exists (SHA-256 and SHA-512) and logs in
# over SASL_SSL. Done once per storage directory: scram.done holds the
# cluster.id and directory.id of logs/meta.properties (a new directory.id
# after a re-format) and a hash of the credentials.
kafka_ensure_scram() {
    local want dir_id
    dir_id="$(grep -E '^(cluster|directory)\.id=' "$KAFKA_LOGS/meta.properties" 2>/dev/null | sort | cut -d= -f2 | paste -sd' ' || true)"
    want="$dir_id $(printf '%s:%s' "$KAFKA_SCRAM_USER" "$KAFKA_SCRAM_PASSWORD" | sha256sum | cut -d' ' -f1)"
    if [[ -n $dir_id && -s $KAFKA_SCRAM_MARKER && "$(<"$KAFKA_SCRAM_MARKER")" == "$want" ]]; then
        return 0
    fi
    rm -f "$KAFKA_SCRAM_MARKER"
    log "kafka: creating SCRAM user $KAFKA_SCRAM_USER (SCRAM-SHA-256, SCRAM-SHA-512)"
    # One mechanism per request: KRaft refuses both at once ("A user
    # credential cannot be altered twice in the same request").
    local mech
    for mech in SCRAM-SHA-256 SCRAM-SHA-512; do
        kafka_tool kafka.admin.ConfigCommand --bootstrap-server "$KAFKA_BOOTSTRAP" --alter \
            --add-config "$mech=[password=$KAFKA_SCRAM_PASSWORD]" \
            --entity-type users --entity-name "$KAFKA_SCRAM_USER" >/dev/null 2>>"$KAFKA_DIR/tools.err" \
            || die "kafka: ConfigCommand --alter ($mech user $KAFKA_SCRAM_USER) failed (see $KAFKA_DIR/tools.err)"
    done
    # The broker applies the credential from the metadata log shortly after
    # the write: log in over SASL_SSL (SCRAM-SHA-512) until that works.
    local deadline=$(( $(now) + KAFKA_READY_TIMEOUT ))
    until kafka_tool org.apache.kafka.tools.TopicCommand --bootstrap-server "$KAFKA_SASL_SSL_BOOTSTRAP" \
            --command-config "$KAFKA_SASL_CLIENT_PROPS" --list >/dev/null 2>>"$KAFKA_DIR/tools.err"; do
        if (( $(now) >= deadline )); then
            kafka_print_logs
            die "kafka: SCRAM login as $KAFKA_SCRAM_USER on $KAFKA_SASL_SSL_BOOTSTRAP kept failing for ${KAFKA_READY_TIMEOUT}s (see $KAFKA_DIR/tools.err)"
        fi
        sleep 1
    done
    printf '%s\n' "$want" >"$KAFKA_SCRAM_MARKER"
}

kafka_start() {
    mkdir -p "$KAFKA_DIR"
    kafka_ensure_java
    kafka_fetch_libs
    kafka_write_config

    local config_hash
    config_hash="$(kafka_config_hash)"
    if pid_alive "$KAFKA_PID" kafka.Kafka \
        && [[ ! -s $KAFKA_CONFIG_HASH || "$(<"$KAFKA_CONFIG_HASH")" != "$config_hash" ]]; then
        log "kafka: configuration or certificates changed, restarting the broker"
        kafka_stop
    fi

    if ! pid_alive "$KAFKA_PID" kafka.Kafka; then
        rm -f "$KAFKA_PID"
        local p
        for p in "$KAFKA_PORT" "$KAFKA_CONTROLLER_PORT" "$KAFKA_SSL_PORT" "$KAFKA_SASL_SSL_PORT"; do
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
        printf '%s\n' "$config_hash" >"$KAFKA_CONFIG_HASH"
    fi

    local deadline=$(( $(now) + KAFKA_READY_TIMEOUT ))
    until port_open "$KAFKA_PORT" && port_open "$KAFKA_SSL_PORT" && port_open "$KAFKA_SASL_SSL_PORT"; do
        # The process itself, not its command line: while bash execs nohup
        # and nohup execs java, /proc/PID/cmdline can read empty.
        if [[ -s $KAFKA_PID ]] && ! kill -0 "$(<"$KAFKA_PID")" 2>/dev/null; then
            kafka_print_logs
            die "kafka exited during startup (logs: $KAFKA_LOG, $KAFKA_OUT)"
        fi
        if (( $(now) >= deadline )); then
            kafka_print_logs
            die "kafka not listening on $KAFKA_BOOTSTRAP, $KAFKA_SSL_BOOTSTRAP and $KAFKA_SASL_SSL_BOOTSTRAP after ${KAFKA_READY_TIMEOUT}s (log: $KAFKA_LOG)"
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
    kafka_ensure_scram
    log "kafka:    ready  $KAFKA_BOOTSTRAP  topics: ${KAFKA_TOPICS[*]}"
    log "kafka:    TLS    SSL $KAFKA_SSL_BOOTSTRAP, SASL_SSL $KAFKA_SASL_SSL_BOOTSTRAP (SCRAM-SHA-512/256, PLAIN: $KAFKA_SCRAM_USER/$KAFKA_SCRAM_PASSWORD)"
}

kafka_stop() {
    stop_pidfile kafka "$KAFKA_PID" kafka.Kafka
}

kafka_status() {
    if pid_alive "$KAFKA_PID" kafka.Kafka; then
        if port_open "$KAFKA_PORT"; then
            log "kafka:    running (pid $(<"$KAFKA_PID")) $KAFKA_BOOTSTRAP"
            local rc=0 listener
            for listener in "SSL $KAFKA_SSL_BOOTSTRAP" "SASL_SSL $KAFKA_SASL_SSL_BOOTSTRAP"; do
                if port_open "${listener##*:}"; then
                    log "kafka:    TLS listener ${listener% *} ${listener#* } ok"
                else
                    log "kafka:    TLS listener ${listener% *} ${listener#* } not listening"
                    rc=1
                fi
            done
            return "$rc"
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
    tls_ensure
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

# cmd_tls_env: `export` lines for the TLS integration tests.
cmd_tls_env() {
    [[ -s $TLS_DIR/ca.crt ]] || warn "no certificates in $TLS_DIR yet: run scripts/services.sh start"
    local pairs=(
        TLS_DIR "$TLS_DIR"
        TLS_CA_FILE "$TLS_DIR/ca.crt"
        TLS_SERVER_CERT "$TLS_DIR/server.crt"
        TLS_SERVER_KEY "$TLS_DIR/server.key"
        TLS_CLIENT_CERT "$TLS_DIR/client.crt"
        TLS_CLIENT_KEY "$TLS_DIR/client.key"
        TLS_WRONG_HOST_CERT "$TLS_DIR/wrong-host.crt"
        TLS_WRONG_HOST_KEY "$TLS_DIR/wrong-host.key"
        PG_TLS_URL "postgres://$PG_TLS_USER:$PG_TLS_PASSWORD@localhost:$PG_PORT/$PG_DB"
        PG_TLS_HOST localhost
        PG_TLS_PORT "$PG_PORT"
        PG_TLS_USER "$PG_TLS_USER"
        PG_TLS_PASSWORD "$PG_TLS_PASSWORD"
        PG_TLS_DB "$PG_DB"
        PG_TLS_WRONG_HOST "$PG_TLS_WRONG_HOST"
        PG_TLS_WRONG_HOST_URL "postgres://$PG_TLS_USER:$PG_TLS_PASSWORD@$PG_TLS_WRONG_HOST:$PG_PORT/$PG_DB"
        KAFKA_SSL_BROKERS "$KAFKA_SSL_BOOTSTRAP"
        KAFKA_SASL_SSL_BROKERS "$KAFKA_SASL_SSL_BOOTSTRAP"
        KAFKA_SASL_MECHANISMS "SCRAM-SHA-512,SCRAM-SHA-256,PLAIN"
        KAFKA_SCRAM_USER "$KAFKA_SCRAM_USER"
        KAFKA_SCRAM_PASSWORD "$KAFKA_SCRAM_PASSWORD"
    )
    # Plain values as they are; anything else in single quotes (what both
    # `eval` and dotenv-style readers take).
    local i v q="'"
    for (( i = 0; i < ${#pairs[@]}; i += 2 )); do
        v=${pairs[i+1]}
        if [[ ! $v =~ ^[A-Za-z0-9_./:@,=+-]*$ ]]; then
            v="'${v//$q/$q\\$q$q}'"
        fi
        printf 'export %s=%s\n' "${pairs[i]}" "$v"
    done
}

# tls_status: the certificates exist and stay valid for 30 more days.
tls_status() {
    local all=(ca "${TLS_LEAVES[@]}") ok name missing=()
    if ! command -v openssl >/dev/null 2>&1 || [[ ! -s $TLS_DIR/ca.crt ]]; then
        log "tls:      no certificates in $TLS_DIR"
        return 1
    fi
    ok="$(tls_verified $(( $(now) + TLS_RENEW_SECONDS )) "${all[@]}")"
    for name in "${all[@]}"; do
        grep -qxF -- "$name" <<<"$ok" || missing+=("$name")
    done
    if (( ${#missing[@]} > 0 )); then
        log "tls:      $TLS_DIR: ${missing[*]} missing, not signed by ca.crt or expiring within 30 days (start remakes them)"
        return 1
    fi
    log "tls:      $TLS_DIR ok (CA $(openssl x509 -noout -enddate -in "$TLS_DIR/ca.crt" | cut -d= -f2-), server.crt $(openssl x509 -noout -enddate -in "$TLS_DIR/server.crt" | cut -d= -f2-))"
}

cmd_status() {
    local rc=0
    tls_status || rc=1
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
    tls-env) cmd_tls_env ;;
    -h|--help|help)
        sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed -e '$d' -e 's/^# \{0,1\}//'
        ;;
    *) die "usage: $0 [start|stop|status|restart|tls-env]" ;;
esac
