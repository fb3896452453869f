#!/usr/bin/env bash
# Real clients against a real server: curl (HTTP/1.1, HTTP/2 prior
# knowledge, --user), wget (--user/--password) and Python requests download
# the same backup, and an upload made with curl comes back intact; wget -c
# resumes and aria2c -x4 splits a download; /metrics parses with the Python
# reference parser (prometheus_client). These need tools beyond the
# toolchain, so they live here, which installs them, not in cargo test.
set -euo pipefail
cd "$(dirname "$0")/.."
echo "== real clients"
if ! command -v wget >/dev/null || ! command -v aria2c >/dev/null || ! command -v curl >/dev/null; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wget curl aria2 >/dev/null
fi
python3 -c 'import requests' 2>/dev/null || python3 -m pip install -q requests
python3 -c 'import prometheus_client' 2>/dev/null || python3 -m pip install -q "prometheus_client==0.21.1"
cargo build --locked -q --bin backupd
bin=target/debug/backupd
work=$(mktemp -d)
pid=""
trap '[ -n "$pid" ] && kill "$pid" 2>/dev/null; rm -rf "$work"' EXIT
secret=$("$bin" systems add fw1 --data-dir "$work" 2>/dev/null)
id=01934fab-bc33-7890-a1b2-c3d4e5f6a7b8.tar.gz
head -c $((5 * 1024 * 1024 + 123)) /dev/urandom > "$work/backups/fw1/$id"
want=$(sha256sum < "$work/backups/fw1/$id" | cut -d' ' -f1)
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
admin=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
"$bin" serve --listen "127.0.0.1:$port" --admin-listen "127.0.0.1:$admin" --data-dir "$work" 2>"$work/server.log" &
pid=$!
for _ in $(seq 50); do curl -s -o /dev/null "http://127.0.0.1:$port/" && break; sleep 0.1; done
url="http://127.0.0.1:$port/api/systems/backups/$id"
check() { got=$(sha256sum < "$2" | cut -d' ' -f1); [ "$got" = "$want" ] || { echo "FAIL: $1 got different bytes"; exit 1; }; echo "ok: $1"; }
curl -sS --fail --http1.1 --user "fw1:$secret" -o "$work/c1" "$url"; check "curl HTTP/1.1" "$work/c1"
curl -sS --fail --http2-prior-knowledge --user "fw1:$secret" -o "$work/c2" "$url"; check "curl HTTP/2 prior knowledge" "$work/c2"
curl -sS --fail -H "Authorization: Basic $(printf 'fw1:%s' "$secret" | base64 -w0)" -o "$work/c3" "$url"; check "curl Authorization header" "$work/c3"
wget -q --user fw1 --password "$secret" -O "$work/w" "$url"; check "wget" "$work/w"
python3 - "$url" "$secret" "$work/p" <<'PY'
import sys, requests
url, secret, out = sys.argv[1:]
r = requests.get(url, auth=("fw1", secret), timeout=30)
r.raise_for_status()
open(out, "wb").write(r.content)
PY
check "python requests" "$work/p"
# Upload with curl, download it back with requests.
new=$(curl -sS --fail --user "fw1:$secret" -H "X-Filename: again.tar.gz" -H "Content-Type: application/octet-stream" \
  --data-binary "@$work/backups/fw1/$id" "http://127.0.0.1:$port/api/systems/backups" | python3 -c 'import sys, json; print(json.load(sys.stdin)["data"]["id"])')
python3 - "http://127.0.0.1:$port/api/systems/backups/$new" "$secret" "$work/u" <<'PY'
import sys, requests
url, secret, out = sys.argv[1:]
r = requests.get(url, auth=("fw1", secret), timeout=30)
r.raise_for_status()
open(out, "wb").write(r.content)
PY
check "curl upload, requests download" "$work/u"
# wget -c resumes an interrupted transfer; aria2c splits one over four connections.
head -c $((3 * 1024 * 1024 + 17)) "$work/backups/fw1/$id" > "$work/wc"
wget -q -c --user fw1 --password "$secret" -O "$work/wc" "$url"; check "wget -c" "$work/wc"
aria2c -q -x4 -s4 -k1M --allow-overwrite=true --auto-file-renaming=false \
  --http-user fw1 --http-passwd "$secret" -d "$work" -o aria.bin "$url"; check "aria2c -x4" "$work/aria.bin"
grep -q "status=206" "$work/server.log" || { echo "FAIL: no ranged request (206) in the log"; exit 1; }
echo "ok: ranged requests seen"
# A live scrape through the Python reference parser.
curl -sS --fail "http://127.0.0.1:$admin/metrics" | python3 -c '
import sys
from prometheus_client.parser import text_string_to_metric_families
names = {f.name for f in text_string_to_metric_families(sys.stdin.read())}
for want in ("backupd_requests", "backupd_sent_bytes", "backupd_request_duration_seconds"):
    assert want in names, (want, sorted(names))
print("ok: /metrics parses with prometheus_client:", len(names), "families")
'
