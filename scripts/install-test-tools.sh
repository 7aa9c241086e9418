#!/usr/bin/env bash
# Installs what the browser test needs: Debian's Chromium (no downloaded
# browser) and playwright-core from the npm registry (tests/web).
# Idempotent; run by `make test`.
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
echo "test tools ready: $(chromium --version 2>/dev/null | head -1), playwright-core $(node -p "require('$ROOT/tests/web/node_modules/playwright-core/package.json').version")"
