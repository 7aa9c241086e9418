#!/usr/bin/env bash
# Installs what scripts/check-manifests.sh needs to validate deploy/k8s
# offline, from package registries only (the machines we build on reach no
# other site, and kubeconform's default is to download its schemas from one):
#   - kubeconform, built from its Go module through the Go module proxy;
#   - the Kubernetes JSON schemas, from the PyPI package kubernetes-validate
#     (it ships them for each Kubernetes minor version), taken out of its
#     wheel and made loadable from local files (see below).
# Both go under $ANALYTICS_TOOLS (default ~/.cache/analytics-tools), outside
# the work tree, and survive fresh clones of the repository. Idempotent: does
# nothing when the pinned versions are already there.
set -euo pipefail

KUBECONFORM_VERSION=v0.8.0
SCHEMAS_PACKAGE=kubernetes-validate==1.37.0
SCHEMAS_SHA256=85136d018a27b50ec7fc049d902bfa5193f5976807e6c0f408e3ab6fe078cad9
# Kubernetes versions the manifests are checked against: an older one still
# common on managed clusters, and the newest the package has.
K8S_VERSIONS="1.30.0 1.37.0"

TOOLS="${ANALYTICS_TOOLS:-${XDG_CACHE_HOME:-$HOME/.cache}/analytics-tools}"
BIN="$TOOLS/bin"
SCHEMAS="$TOOLS/k8s-json-schema"

GO=$(command -v go || echo /usr/local/go/bin/go)
[[ -x $GO ]] || { echo "install-kubeconform.sh: go is missing (apt-get install golang)" >&2; exit 1; }

# ---- kubeconform -------------------------------------------------------------
installed=""
if [[ -x $BIN/kubeconform ]]; then
    # A `go install`ed binary prints "development" for -v; its build info
    # names the module version.
    installed=$("$GO" version -m "$BIN/kubeconform" | awk '$1 == "mod" { print $3 }')
fi
if [[ $installed != "$KUBECONFORM_VERSION" ]]; then
    # Fails at once, naming the version, if the proxy does not have it.
    "$GO" list -m -json "github.com/yannh/kubeconform@$KUBECONFORM_VERSION" >/dev/null
    echo "building kubeconform $KUBECONFORM_VERSION from the Go module proxy"
    mkdir -p "$BIN"
    GOBIN="$BIN" "$GO" install -trimpath "github.com/yannh/kubeconform/cmd/kubeconform@$KUBECONFORM_VERSION"
fi

# ---- schemas -----------------------------------------------------------------
# The package's schemas are strict (additionalProperties: false) and name each
# other by https://kubernetes.io/api/... ids: a kind's file refers to its
# types as "/api/_definitions.json#/$defs/...", which kubeconform would try to
# download from kubernetes.io. Dropping the ids and making those references
# relative ("_definitions.json#/$defs/...") resolves them to the
# _definitions.json beside each file. Nothing else is changed.
stamp="$SCHEMAS_PACKAGE sha256:$SCHEMAS_SHA256 $K8S_VERSIONS"
if [[ ! -f $SCHEMAS/.source || $(<"$SCHEMAS/.source") != "$stamp" ]]; then
    echo "fetching Kubernetes JSON schemas ($SCHEMAS_PACKAGE from PyPI) for $K8S_VERSIONS"
    tmp=$(mktemp -d)
    trap 'rm -rf "$tmp"' EXIT
    echo "$SCHEMAS_PACKAGE --hash=sha256:$SCHEMAS_SHA256" > "$tmp/requirements.txt"
    python3 -m pip download --quiet --disable-pip-version-check --no-deps \
        --only-binary=:all: --require-hashes -r "$tmp/requirements.txt" -d "$tmp/wheel"
    read -ra versions <<< "$K8S_VERSIONS"
    python3 - "$tmp"/wheel/*.whl "$tmp/schemas" "${versions[@]}" <<'EOF'
import json, os, sys, zipfile

wheel, out, versions = sys.argv[1], sys.argv[2], sys.argv[3:]
prefix = "kubernetes_validate/kubernetes-json-schema/"
REF = "/api/_definitions.json#"

def relative(node):
    if isinstance(node, dict):
        return {k: (("_definitions.json#" + v[len(REF):])
                    if k == "$ref" and isinstance(v, str) and v.startswith(REF)
                    else relative(v))
                for k, v in node.items()}
    if isinstance(node, list):
        return [relative(v) for v in node]
    return node

with zipfile.ZipFile(wheel) as z:
    for version in versions:
        folder = f"v{version}-local-strict"
        names = [n for n in z.namelist()
                 if n.startswith(f"{prefix}{folder}/") and n.endswith(".json")]
        if not any(n.endswith("/_definitions.json") for n in names):
            sys.exit(f"{os.path.basename(wheel)} has no schemas for Kubernetes {version}")
        os.makedirs(os.path.join(out, folder))
        for name in names:
            schema = json.loads(z.read(name))
            schema.pop("$id", None)
            with open(os.path.join(out, folder, os.path.basename(name)), "w") as f:
                json.dump(relative(schema), f)
        print(f"  {folder}: {len(names)} schemas")
EOF
    echo "$stamp" > "$tmp/schemas/.source"
    rm -rf "$SCHEMAS"
    mkdir -p "$TOOLS"
    mv "$tmp/schemas" "$SCHEMAS"
fi

# What check-manifests.sh reads.
cat > "$TOOLS/manifests.env" <<EOF
KUBECONFORM='$BIN/kubeconform'
SCHEMAS='$SCHEMAS'
K8S_VERSIONS='$K8S_VERSIONS'
EOF
echo "kubeconform $KUBECONFORM_VERSION and Kubernetes schemas ($K8S_VERSIONS) ready in $TOOLS"
