#!/usr/bin/env bash
# Builds the Prometheus server (cmd/prometheus) that scripts/eval-grafana-promql.sh
# runs to evaluate the Grafana dashboard's PromQL, from its Go module through
# the Go module proxy (the machines we build on reach no download site), into
# .data/prometheus/bin/prometheus (git-ignored). Idempotent: does nothing when
# that binary is there and `--version` reports the pinned version.
#
# No UI assets are built or needed (only the HTTP API is used): without the
# `builtinassets` tag the binary embeds none. The tag `remove_all_sd` leaves
# out every service discovery but file and http (static_configs always work),
# which spares compiling the cloud SDKs. The version string, set by ldflags
# as Prometheus's own release build does, is what the skip check reads.
#
# A cold build (empty module and build caches) downloads about 0.5 GB of
# modules and takes minutes on 2 cores; the Go caches ($(go env GOMODCACHE),
# $(go env GOCACHE)) make later builds fast.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)"

VERSION=v0.316.0   # go.mod of v0.316.0 says `go 1.26.7`: builds with Go 1.26.8
MODULE=github.com/prometheus/prometheus
BIN="$ROOT/.data/prometheus/bin"

GO=$(command -v go || echo /usr/local/go/bin/go)
[[ -x $GO ]] || { echo "install-prometheus.sh: go is missing (apt-get install golang)" >&2; exit 1; }

installed() {
    # e.g. "prometheus, version 0.316.0 (branch: , revision: unknown)"
    [[ -x $BIN/prometheus ]] || return 0
    "$BIN/prometheus" --version 2>/dev/null | awk 'NR == 1 && $2 == "version" { print "v" $3 }' || true
}
if [[ $(installed) == "$VERSION" ]]; then
    exit 0
fi

echo "building prometheus $VERSION from the Go module proxy (minutes the first time)"
start=$SECONDS
mkdir -p "$BIN"
ldflags="-X github.com/prometheus/common/version.Version=${VERSION#v}"
ldflags+=" -X github.com/prometheus/common/version.Branch=go-install"
GOBIN="$BIN" "$GO" install -trimpath -tags remove_all_sd -ldflags "$ldflags" "$MODULE/cmd/prometheus@$VERSION"
[[ $(installed) == "$VERSION" ]] || { echo "install-prometheus.sh: $BIN/prometheus does not report $VERSION" >&2; exit 1; }
echo "built prometheus $VERSION in $((SECONDS - start)) s: $BIN/prometheus"
