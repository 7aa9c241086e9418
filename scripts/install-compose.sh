#!/usr/bin/env bash
# Makes `docker compose` available for validating docker-compose.yml
# (`docker compose config -q`): the machines we build on have the docker
# client but no compose plugin and no Docker engine. Builds Docker Compose
# from its published Go module (through the Go module proxy) and installs it
# as a docker CLI plugin. Idempotent: does nothing when the plugin works.
set -euo pipefail

VERSION="${COMPOSE_VERSION:-v2.40.3}"
PLUGIN_DIR="${DOCKER_CONFIG:-$HOME/.docker}/cli-plugins"

if docker compose version >/dev/null 2>&1; then
    exit 0
fi
command -v docker >/dev/null 2>&1 || { echo "install-compose.sh: the docker client is missing (apt-get install docker.io)" >&2; exit 1; }
command -v go >/dev/null 2>&1 || { echo "install-compose.sh: go is missing (apt-get install golang)" >&2; exit 1; }

echo "building docker compose $VERSION from the Go module proxy (a few minutes the first time)"
# `go install pkg@version` refuses modules with exclude directives, so build
# inside the downloaded module instead.
dir=$(go mod download -json "github.com/docker/compose/v2@$VERSION" \
      | python3 -c 'import json, sys; print(json.load(sys.stdin)["Dir"])')
mkdir -p "$PLUGIN_DIR"
(cd "$dir" && GOFLAGS=-buildvcs=false go build -trimpath -o "$PLUGIN_DIR/docker-compose" ./cmd)
docker compose version
