#!/usr/bin/env bash
# The S3 suites against Garage, the object store the API's reference
# deployments run: a throw-away single-node Garage on loopback (S3 on
# 127.0.0.1:3900, region "garage", sqlite metadata, replication 1), one
# bucket and a fresh key, then the same tests as .ci/s3.sh runs on
# SeaweedFS. Not part of .ci/run: building Garage takes 8-20 minutes on
# two cores. The binary comes from GARAGE_BIN when given, otherwise from
# `cargo install garage --locked` (into target/garage).
set -euo pipefail
cd "$(dirname "$0")/.."
echo "== S3 (Garage)"
bin=${GARAGE_BIN:-}
if [ -z "$bin" ]; then
  cargo install garage --locked --root target/garage
  bin=target/garage/bin/garage
fi
"$bin" --version
work=$(mktemp -d)
pid=""
stop() {
  [ -n "$pid" ] || return 0
  kill "$pid" 2>/dev/null || return 0
  for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.1; done
  kill -9 "$pid" 2>/dev/null || true
}
trap 'stop; rm -rf "$work" || true' EXIT
cat > "$work/garage.toml" <<CONF
metadata_dir = "$work/meta"
data_dir = "$work/data"
db_engine = "sqlite"
replication_factor = 1
rpc_bind_addr = "127.0.0.1:3901"
rpc_public_addr = "127.0.0.1:3901"
rpc_secret = "$(head -c32 /dev/urandom | od -An -tx1 | tr -d ' \n')"
[s3_api]
s3_region = "garage"
api_bind_addr = "127.0.0.1:3900"
root_domain = ".s3.garage.localhost"
CONF
g() { "$bin" -c "$work/garage.toml" "$@"; }
# Started directly, not through g: $! of a backgrounded function is the
# subshell running it, and killing that left the server running (and its
# ports taken, so the next run could not start its own).
"$bin" -c "$work/garage.toml" server >"$work/garage.log" 2>&1 &
pid=$!
for _ in $(seq 100); do g status >/dev/null 2>&1 && break; sleep 0.1; done
g layout assign -z dc1 -c 1G "$(g node id -q | cut -d@ -f1)" >/dev/null
g layout apply --version 1 >/dev/null
g bucket create backups >/dev/null
key=$(g key create backupd-ci)
access=$(echo "$key" | awk '/Key ID/ {print $NF}')
secret=$(echo "$key" | awk '/Secret key/ {print $NF}')
g bucket allow --read --write --owner backups --key backupd-ci >/dev/null
export BACKUPD_TEST_S3_ENDPOINT=http://127.0.0.1:3900 BACKUPD_TEST_S3_BUCKET=backups
export BACKUPD_TEST_S3_REGION=garage
export BACKUPD_TEST_S3_ACCESS_KEY="$access" BACKUPD_TEST_S3_SECRET_KEY="$secret"
cargo test --locked --test s3_client -- --ignored
BACKUPD_TEST_BACKEND=s3 cargo test --locked --test download --test lifecycle --test hostile
# import, verify and prune beside a server, through the same boundary.
BACKUPD_TEST_BACKEND=s3 cargo test --locked --test cli import_verify_and_prune
BACKUPD_TEST_BACKEND=s3 cargo test --locked --test replicas --test s3_faults -- --ignored
echo "== Garage passed"
