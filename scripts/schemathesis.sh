#!/usr/bin/env bash
# Fuzzes the HTTP API with schemathesis against the OpenAPI document the
# service serves at BASE_URL/api/v1/openapi.json.
#
#   scripts/schemathesis.sh BASE_URL [API_KEY]
#
# schemathesis comes from .data/venv-schemathesis (scripts/install-test-tools.sh).
# With API_KEY every request carries `X-API-Key: API_KEY`. The key is never
# printed: it reaches schemathesis through an environment variable named in a
# generated config file (not argv), schemathesis masks X-API-Key in its own
# output, and its output is also piped through sed replacing the key by ***.
#
# Checks: not_a_server_error, status_code_conformance, content_type_conformance,
# response_schema_conformance, response_headers_conformance. Runs the bounded
# phases examples, coverage and fuzzing (no stateful phase, no --max-time, which
# would make fuzzing repeat until the time is spent), seed 1, one worker, 10 s
# per request, /api/v1/stream left out (an SSE stream never ends),
# SCHEMATHESIS_MAX_EXAMPLES (default 50) cases per operation in
# the fuzzing phase. No state is kept between runs: the Hypothesis example
# database is off and schemathesis's own cache (.schemathesis/, which replays
# earlier crashes) is disabled; everything it writes goes to a temp dir that is
# removed on exit. The run also fails on the warnings missing_auth (operations
# answered only 401/403: the key is missing or wrong) and base_url_mismatch
# (operations answered only 404: the base URL is wrong).
#
# Exit status: schemathesis's own (non-zero on any failed check, error or the
# warnings above; 0 otherwise). Last line, machine-readable:
#   schemathesis: operations=N cases=M failures=F
# The numbers come from the JSON run report schemathesis writes
# (--report-json-path): N = operations.tested, M = test_cases.generated (the
# test cases, i.e. API calls, of all phases; a handful of extra probe requests
# schemathesis sends before testing are not counted), F =
# test_cases.unique_failures (distinct failures, as in its summary). Errors
# (e.g. an unreachable server) show in the exit status, not in F. Without a
# report (schemathesis died first) the line reads operations=0 cases=0
# failures=0 and the exit status is non-zero.
{ set +x; } 2>/dev/null  # never trace: the key would show up in the trace
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)"
VENV=$ROOT/.data/venv-schemathesis

if [[ $# -lt 1 || $# -gt 2 || -z $1 ]]; then
    echo "usage: scripts/schemathesis.sh BASE_URL [API_KEY]" >&2
    exit 2
fi
base_url=${1%/}
api_key=${2:-}
max_examples=${SCHEMATHESIS_MAX_EXAMPLES:-50}
[[ $max_examples =~ ^[1-9][0-9]*$ ]] || { echo "schemathesis.sh: SCHEMATHESIS_MAX_EXAMPLES must be a positive integer" >&2; exit 2; }
[[ -x $VENV/bin/schemathesis ]] || { echo "schemathesis.sh: $VENV/bin/schemathesis is missing: run scripts/install-test-tools.sh" >&2; exit 2; }

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
chmod 700 "$work"

# Config file: no persistent cache, fail on vacuous runs, and the header.
{
    printf '[cache]\nenabled = false\n\n'
    printf '[warnings]\nfail-on = ["missing_auth", "base_url_mismatch"]\n'
    if [[ -n $api_key ]]; then
        # ${...} is expanded by schemathesis from its environment.
        # shellcheck disable=SC2016
        printf '\n[headers]\n"X-API-Key" = "${SCHEMATHESIS_SH_API_KEY}"\n'
    fi
} >"$work/schemathesis.toml"

# sed script replacing every occurrence of the key by ***; kept in a file so
# the key is not in sed's argv either. An empty script copies the output.
: >"$work/redact.sed"
if [[ -n $api_key ]]; then
    escaped=$(printf '%s' "$api_key" | sed 's/[][\/.*^$&]/\\&/g')
    printf 's/%s/***/g\n' "$escaped" >"$work/redact.sed"
fi

checks=not_a_server_error,status_code_conformance,content_type_conformance
checks+=,response_schema_conformance,response_headers_conformance
phases=examples,coverage,fuzzing
args=(
    run "$base_url/api/v1/openapi.json"
    --checks "$checks"
    --phases "$phases"
    --seed 1
    --max-examples "$max_examples"
    --workers 1
    --request-timeout 10
    --generation-database none
    --report json --report-json-path "$work/report.json"
    --no-color
    # A Server-Sent Events stream never ends: every case would time out.
    --exclude-path /api/v1/stream
)
rc=0
(
    cd "$work"  # whatever schemathesis or Hypothesis writes in the cwd stays here
    SCHEMATHESIS_SH_API_KEY=$api_key HYPOTHESIS_STORAGE_DIRECTORY=$work/hypothesis \
        "$VENV/bin/schemathesis" --config-file "$work/schemathesis.toml" "${args[@]}" </dev/null 2>&1
) | sed -u -f "$work/redact.sed" || rc=$?

summary=$("$VENV/bin/python" - "$work/report.json" <<'EOF' || true
import json, sys
try:
    with open(sys.argv[1]) as f:
        r = json.load(f)
    print("operations=%d cases=%d failures=%d" % (
        r["operations"]["tested"], r["test_cases"]["generated"], r["test_cases"]["unique_failures"]))
except (OSError, ValueError, KeyError, TypeError):
    print("operations=0 cases=0 failures=0 (no report)")
    sys.exit(1)
EOF
)
[[ $summary == *"(no report)" && $rc -eq 0 ]] && rc=1
echo "schemathesis: ${summary% (no report)}"
exit "$rc"
