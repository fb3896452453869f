#!/usr/bin/env bash
# OpenAPI conformance: starts backupd on a free loopback port with a seeded
# store and runs schemathesis (every check, every phase) against openapi.yaml,
# authenticated as a seeded system. Fails on any failure schemathesis reports.
#
# Three passes, each against a fresh server:
#   open       no rate limits, no retention: the main pass (ST_MAX_EXAMPLES)
#   limited    --append-only and 3 uploads a minute: 403 on DELETE and 429
#              with Retry-After on uploads (ST_MAX_EXAMPLES_SMALL)
#   no-storage an explicit --storage that does not exist: every operation
#              answers 503 with Retry-After (ST_MAX_EXAMPLES_SMALL); the
#              not_a_server_error check is off for this pass only, since a
#              503 is what it is there to check
# Bounded: at most N cases per operation and phase, each pass killed after
# ST_TIMEOUT seconds.
set -euo pipefail
cd "$(dirname "$0")/.."
echo "== OpenAPI conformance (schemathesis)"

SCHEMATHESIS_VERSION=4.32.5
SPEC_VALIDATOR_VERSION=0.9.0
ST_MAX_EXAMPLES=${ST_MAX_EXAMPLES:-100}
ST_MAX_EXAMPLES_SMALL=${ST_MAX_EXAMPLES_SMALL:-25}
ST_TIMEOUT=${ST_TIMEOUT:-240}
ST_SEED=${ST_SEED:-}

if ! st --version 2>/dev/null | grep -qx "st, version $SCHEMATHESIS_VERSION"; then
  python3 -m pip install -q "schemathesis==$SCHEMATHESIS_VERSION"
fi
if ! python3 -c 'import openapi_spec_validator' 2>/dev/null; then
  python3 -m pip install -q "openapi-spec-validator==$SPEC_VALIDATOR_VERSION"
fi
st --version

echo "== openapi.yaml is a valid OpenAPI 3.1 document"
python3 -c 'import sys, yaml
from openapi_spec_validator import validate
validate(yaml.safe_load(open(sys.argv[1])))' openapi.yaml

cargo build --locked -q --bin backupd
root=$PWD
bin=$root/target/debug/backupd

work=$(mktemp -d)
server_pid=
stop_server() {
  if [ -n "$server_pid" ]; then
    kill "$server_pid" 2>/dev/null || true
    wait "$server_pid" 2>/dev/null || true
    server_pid=
  fi
}
trap 'stop_server; rm -rf "$work"' EXIT

# seed DIR: a data dir with systems `ci` (secret on stdout) and `other`, and
# a few backups dropped in by hand (no upload record); one is the spec's
# example id. `other`'s backup must stay a 404 for `ci`.
seed() {
  local data=$1 secret
  secret=$("$bin" systems add ci --data-dir "$data" 2>/dev/null)
  "$bin" systems add other --data-dir "$data" >/dev/null 2>&1
  mkdir -p "$data/backups/ci" "$data/backups/other"
  head -c 65536 /dev/urandom >"$data/backups/ci/01934fab-bc33-7890-a1b2-c3d4e5f6a7b8.tar.gz"
  head -c 1000 /dev/urandom >"$data/backups/ci/01934fab-bc34-7abc-9def-0123456789ab.gpg"
  : >"$data/backups/ci/01934fab-bc35-7000-8000-000000000000.bin"
  head -c 100 /dev/urandom >"$data/backups/other/01934fab-bc36-7111-b222-333344445555.tar.zst"
  echo "$secret"
}

# HEAD over HTTP/2 (prior knowledge), with curl, on every kind of answer:
# the stream ends cleanly (curl exits 0, not 92 for a PROTOCOL_ERROR) with
# the status and Content-Length the GET gets.
h2_heads() {
  local port=$1 secret=$2 base="http://127.0.0.1:$1/api/systems/backups" path auth get head
  for case in "$base|ci:$secret" "$base/01934fab-bc33-7890-a1b2-c3d4e5f6a7b8.tar.gz|ci:$secret" \
      "$base/01934fab-bc36-7111-b222-333344445555.tar.zst|ci:$secret" "$base/..%2fother|ci:$secret" \
      "$base|ci:wrong" "http://127.0.0.1:$port/nowhere|"; do
    path=${case%%|*} auth=${case#*|}
    get=$(curl -sS --http2-prior-knowledge ${auth:+--user "$auth"} -o /dev/null -w '%{http_code} %{size_download}' "$path")
    head=$(curl -sS --http2-prior-knowledge -I ${auth:+--user "$auth"} "$path" | tr -d '\r' |
      awk 'NR==1 {code=$2} tolower($1)=="content-length:" {len=$2} END {print code, len}') || {
      echo "FAIL: HEAD over HTTP/2 of $path: curl failed"; return 1; }
    [ "$get" = "$head" ] || { echo "FAIL: HEAD over HTTP/2 of $path: '$head', GET: '$get'"; return 1; }
    echo "ok: HEAD over HTTP/2 $path ($head)"
  done
}

# run_pass NAME MAX_EXAMPLES "SERVER ARGS" [ST ARGS...]
run_pass() {
  local name=$1 examples=$2 server_args=$3
  shift 3
  local dir="$work/$name" port secret status=0
  mkdir -p "$dir"
  secret=$(seed "$dir/data")
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  # shellcheck disable=SC2086 # server_args is a list of flags
  RUST_LOG=warn "$bin" serve --data-dir "$dir/data" --listen "127.0.0.1:$port" \
    --grace-period 1 $server_args 2>"$dir/server.log" &
  server_pid=$!
  python3 - "$port" <<'EOF'
import socket, sys, time
for _ in range(100):
    try:
        socket.create_connection(("127.0.0.1", int(sys.argv[1])), 0.2).close()
        sys.exit(0)
    except OSError:
        time.sleep(0.1)
sys.exit("server did not start")
EOF
  echo "== schemathesis: $name pass ($server_args)"
  # From the scratch dir, so schemathesis' and hypothesis' caches stay out of the tree.
  (cd "$dir" && timeout --kill-after=10 "$ST_TIMEOUT" \
    st --config-file "$root/.ci/schemathesis.toml" run "$root/openapi.yaml" \
    --url "http://127.0.0.1:$port" \
    --auth "ci:$secret" \
    --checks all \
    --max-examples "$examples" \
    --request-timeout 10 \
    --workers 2 \
    ${ST_SEED:+--seed "$ST_SEED"} \
    --no-color \
    --output-sanitize true \
    --generation-database none \
    "$@") || status=$?
  if [ "$status" -eq 0 ] && [ "$name" = open ]; then
    h2_heads "$port" "$secret" || status=$?
  fi
  stop_server
  if [ "$status" -ne 0 ]; then
    echo "== schemathesis $name pass failed (exit $status); server log tail:"
    grep -v "authentication failed" "$dir/server.log" | tail -n 30 || true
    exit "$status"
  fi
  if grep -qF "$secret" "$dir/server.log"; then
    echo "== the secret leaked into the server log"
    exit 1
  fi
}

run_pass open "$ST_MAX_EXAMPLES" \
  "--upload-rate-per-minute 0 --upload-rate-per-hour 0 --retention-count 0 --max-upload-bytes 1048576"
run_pass limited "$ST_MAX_EXAMPLES_SMALL" \
  "--append-only --upload-rate-per-minute 3 --upload-rate-per-hour 0 --retention-count 5 --max-upload-bytes 1048576"
run_pass no-storage "$ST_MAX_EXAMPLES_SMALL" \
  "--storage $work/no-storage/missing-mount" --exclude-checks not_a_server_error
echo "== conformance passed"
