#!/usr/bin/env bash
# Installs what the browser test needs: Debian's Chromium (no downloaded
# browser) and playwright-core from the npm registry (tests/web), and
# schemathesis from PyPI, pinned, in a virtualenv at .data/venv-schemathesis
# (used by scripts/schemathesis.sh), and Prometheus built from its Go module
# (scripts/install-prometheus.sh). Idempotent; run by `make test`.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)"

if ! command -v chromium >/dev/null 2>&1; then
    sudo=()
    [[ $(id -u) -eq 0 ]] || sudo=(sudo)
    echo "installing chromium (Debian package)"
    "${sudo[@]}" apt-get update -q >/dev/null
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null
fi
command -v node >/dev/null 2>&1 || { echo "install-test-tools.sh: node is missing (apt-get install nodejs npm)" >&2; exit 1; }
if [[ ! -d $ROOT/tests/web/node_modules/playwright-core ]]; then
    (cd "$ROOT/tests/web" && npm ci --no-audit --no-fund --silent)
fi

# schemathesis: exact pin; pip runs only when the venv lacks that version.
SCHEMATHESIS_VERSION=4.32.5
ST_VENV=$ROOT/.data/venv-schemathesis
st_installed() { "$ST_VENV/bin/python" -c 'import importlib.metadata as m; print(m.version("schemathesis"))' 2>/dev/null || true; }
if [[ $(st_installed) != "$SCHEMATHESIS_VERSION" ]]; then
    command -v python3 >/dev/null 2>&1 || { echo "install-test-tools.sh: python3 is missing" >&2; exit 1; }
    echo "installing schemathesis $SCHEMATHESIS_VERSION into .data/venv-schemathesis"
    mkdir -p "$ROOT/.data"
    # A venv whose interpreter no longer runs (e.g. python3 was replaced) is rebuilt.
    "$ST_VENV/bin/python" -c '' 2>/dev/null || python3 -m venv --clear "$ST_VENV"
    "$ST_VENV/bin/python" -m pip install -q --disable-pip-version-check --no-input "schemathesis==$SCHEMATHESIS_VERSION"
    [[ $(st_installed) == "$SCHEMATHESIS_VERSION" ]] || { echo "install-test-tools.sh: schemathesis $SCHEMATHESIS_VERSION did not install" >&2; exit 1; }
fi
# Prometheus from the Go module proxy (tests/grafana.rs evaluates the
# dashboard's PromQL on it); minutes on a fresh machine, then cached.
"$ROOT/scripts/install-prometheus.sh"

echo "test tools ready: $(chromium --version 2>/dev/null | head -1), playwright-core $(node -p "require('$ROOT/tests/web/node_modules/playwright-core/package.json').version"), schemathesis $(st_installed)"
