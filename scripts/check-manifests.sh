#!/usr/bin/env bash
# Validates the deployment files, offline:
#   - deploy/k8s/*.yaml with kubeconform -strict against the Kubernetes JSON
#     schemas of each version scripts/install-kubeconform.sh installed (run it
#     first); kustomization.yaml is not a Kubernetes resource and is skipped.
#     When kubectl is there, the kustomize build of deploy/k8s is checked too.
#   - deploy/systemd/analytics.service with systemd-analyze verify.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)"
TOOLS="${ANALYTICS_TOOLS:-${XDG_CACHE_HOME:-$HOME/.cache}/analytics-tools}"

[[ -f $TOOLS/manifests.env ]] || { echo "check-manifests.sh: run scripts/install-kubeconform.sh first" >&2; exit 1; }
# shellcheck source=/dev/null
source "$TOOLS/manifests.env"

# ---- Kubernetes ----------------------------------------------------------------
manifests=()
for f in "$ROOT"/deploy/k8s/*.yaml; do
    [[ $(basename "$f") == kustomization.yaml ]] || manifests+=("$f")
done

for version in $K8S_VERSIONS; do
    # Only this local location: kubeconform downloads nothing, and a kind
    # without a schema here is an error (no -ignore-missing-schemas).
    validate=("$KUBECONFORM" -strict -kubernetes-version "$version"
        -schema-location "$SCHEMAS/{{ .NormalizedKubernetesVersion }}-local{{ .StrictSuffix }}/{{ .ResourceKind }}{{ .KindSuffix }}.json")

    # The check checks itself: an unknown field and a wrong type must be refused,
    # or the schemas are not being applied.
    if "${validate[@]}" - >/dev/null 2>&1 <<'EOF'
apiVersion: policy/v1
kind: PodDisruptionBudget
metadata: {name: self-check}
spec: {maxUnavailable: {}, notAField: 1}
EOF
    then
        echo "check-manifests.sh: kubeconform accepted an invalid manifest for Kubernetes $version: schemas not applied" >&2
        exit 1
    fi

    echo "deploy/k8s against Kubernetes $version:"
    "${validate[@]}" -summary "${manifests[@]}"
    if command -v kubectl >/dev/null 2>&1; then
        echo "kubectl kustomize deploy/k8s against Kubernetes $version:"
        kubectl kustomize "$ROOT/deploy/k8s" | "${validate[@]}" -summary -
    fi
done
command -v kubectl >/dev/null 2>&1 || echo "kubectl not installed: kustomization.yaml not built (the files it lists are checked above)"

# ---- systemd ---------------------------------------------------------------------
unit="$ROOT/deploy/systemd/analytics.service"
if command -v systemd-analyze >/dev/null 2>&1; then
    # verify checks that ExecStart's binary exists and that the default
    # dependencies load: give it a root holding a stand-in for the binary and
    # this machine's own units. It only warns (exit 0) on unknown keys or bad
    # values, so any output is a failure.
    root=$(mktemp -d)
    trap 'rm -rf "$root"' EXIT
    mkdir -p "$root/usr/local/bin" "$root/etc/systemd/system" "$root/usr/lib/systemd"
    printf '#!/bin/sh\n' > "$root/usr/local/bin/analytics"
    chmod +x "$root/usr/local/bin/analytics"
    cp -a /usr/lib/systemd/system "$root/usr/lib/systemd/"
    cp "$unit" "$root/etc/systemd/system/"
    if ! out=$(systemd-analyze verify --root="$root" analytics.service 2>&1) || [[ -n $out ]]; then
        echo "deploy/systemd/analytics.service: systemd-analyze verify:" >&2
        echo "${out//$root/}" >&2
        exit 1
    fi
    echo "deploy/systemd/analytics.service: valid (systemd-analyze verify, systemd $(systemd-analyze --version | awk 'NR == 1 { print $2 }'))"
else
    echo "systemd-analyze not installed: deploy/systemd/analytics.service not verified (apt-get install systemd)"
fi
