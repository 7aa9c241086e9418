#!/usr/bin/env bash
# System libraries the build links against: OpenSSL (rdkafka's `ssl`
# feature, PostgreSQL TLS, HTTPS) found through pkg-config. Installs the
# Debian packages when they are missing; does nothing otherwise.
set -euo pipefail
export PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"
if command -v pkg-config >/dev/null 2>&1 && pkg-config --exists openssl; then
    exit 0
fi
echo "install-build-deps: installing libssl-dev pkg-config"
sudo_cmd=()
[[ $EUID -eq 0 ]] || sudo_cmd=(sudo)
"${sudo_cmd[@]}" apt-get update -q
DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -q --no-install-recommends libssl-dev pkg-config
