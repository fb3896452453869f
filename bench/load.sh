#!/usr/bin/env bash
# Load and slow clients against a release build on loopback (issue 3,
# section 3). Needs wrk and h2load (apt: wrk, nghttp2-client) and python3.
#
#   cargo build --release && bench/load.sh
#
# 1. wrk: 2,000 connections, 200,000 mixed requests (200/401/404/400),
#    zero unexpected statuses and zero socket errors, server RSS sampled.
# 2. h2load: many streams on few HTTP/2 connections.
# 3. slowloris: 1,000 half-sent heads + 1,000 non-readers while real
#    requests are timed; the server must shed both (header and idle timeouts).
# 4. HTTP/2 rapid reset and a CONTINUATION flood while others are served.
#
# Loopback only; every loop is bounded; the server and samplers it starts
# are stopped by pid on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-target/release/backupd}
PORT=${PORT:-18471}
REQUESTS=${REQUESTS:-200000}
CONNECTIONS=${CONNECTIONS:-2000}
[ -x "$BIN" ] || { echo "build first: cargo build --release" >&2; exit 2; }
for tool in wrk h2load python3; do
  command -v "$tool" >/dev/null || { echo "missing $tool" >&2; exit 2; }
done
ulimit -n "$(ulimit -Hn)"

work=$(mktemp -d)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

secret=$("$BIN" --data-dir "$work/data" systems add fw1 2>/dev/null)
good="Basic $(printf 'fw1:%s' "$secret" | base64 -w0)"
bad="Basic $(printf 'fw1:%s' "wrong-secret" | base64 -w0)"
dir="$work/data/backups/fw1"
head -c 4096 /dev/urandom > "$dir/01934fab-bc33-7890-a1b2-c3d4e5f6a7b8.bin"
truncate -s 64M "$dir/01934fab-bc33-7890-a1b2-c3d4e5f6a7ba.bin"

RUST_LOG=warn,backupd=info "$BIN" serve --listen "127.0.0.1:$PORT" --data-dir "$work/data" \
  2> >(grep --line-buffered -v ' request ' > "$work/server.log") &
server=$!
pids+=("$server")
for _ in $(seq 100); do
  grep -q "listening on" "$work/server.log" 2>/dev/null && break
  sleep 0.1
done
grep -q "listening on" "$work/server.log" || { cat "$work/server.log"; exit 1; }
base="http://127.0.0.1:$PORT/api/systems/backups"

rss_kib() { awk '/VmRSS/ {print $2}' "/proc/$server/status"; }
# Samples the server's RSS every 100 ms into $work/rss until killed.
sample_rss() { while kill -0 "$server" 2>/dev/null; do rss_kib >> "$work/rss"; sleep 0.1; done; }
peak_rss() { sort -n "$work/rss" | tail -1; }
echo "server RSS at start: $(rss_kib) KiB"
failed=0

echo "== 1. wrk: $CONNECTIONS connections, $REQUESTS mixed requests"
: > "$work/rss"; sample_rss & sampler=$!; pids+=("$sampler")
REQUESTS=$REQUESTS THREADS=2 AUTH_GOOD=$good AUTH_BAD=$bad \
  wrk -t2 -c"$CONNECTIONS" -d120s --timeout 10s -s bench/mixed.lua "$base/" > "$work/wrk.out" || true
kill "$sampler"; wait "$sampler" 2>/dev/null || true
cat "$work/wrk.out"
echo "server RSS peak during wrk: $(peak_rss) KiB; after: $(rss_kib) KiB"
grep -q "unexpected=0" "$work/wrk.out" || { echo "FAIL: unexpected statuses"; failed=1; }
grep -q "ERRORS connect=0 read=0 write=0 timeout=0" "$work/wrk.out" || { echo "FAIL: socket errors"; failed=1; }
total=$(sed -n 's/^STATUS 200=\([0-9]*\) 400=\([0-9]*\) 401=\([0-9]*\) 404=\([0-9]*\).*/\1+\2+\3+\4/p' "$work/wrk.out" | bc)
echo "responses counted: $total"
[ "${total:-0}" -ge "$REQUESTS" ] || { echo "FAIL: fewer than $REQUESTS responses"; failed=1; }

echo "== 2. h2load: 100,000 requests, 8 connections x 64 streams"
h2load -n 100000 -c 8 -m 64 -H "authorization: $good" \
  "$base/01934fab-bc33-7890-a1b2-c3d4e5f6a7b8.bin" > "$work/h2load.out" 2>&1 || true
grep -E "^(finished|requests|status codes|traffic)" "$work/h2load.out"
grep -q "100000 succeeded, 0 failed, 0 errored" "$work/h2load.out" \
  && grep -q "status codes: 100000 2xx" "$work/h2load.out" || { echo "FAIL: h2load"; failed=1; }

echo "== 3. slowloris and non-readers (takes about 70 s)"
: > "$work/rss"; sample_rss & sampler=$!; pids+=("$sampler")
python3 bench/hostile_clients.py slow 127.0.0.1 "$PORT" "$good" || failed=1
kill "$sampler"; wait "$sampler" 2>/dev/null || true
echo "server RSS peak with 2,000 stalled sockets: $(peak_rss) KiB"

echo "== 4. HTTP/2 rapid reset and CONTINUATION flood"
python3 bench/hostile_clients.py h2flood 127.0.0.1 "$PORT" "$good" || failed=1

kill -0 "$server" || { echo "FAIL: the server died"; failed=1; }
echo "server RSS at the end: $(rss_kib) KiB"
echo "server warnings and errors:"
grep -E "WARN|ERROR" "$work/server.log" | grep -v "authentication failed" | sort | uniq -c | sort -rn | head -10 || true
[ "$failed" = 0 ] && echo "== load: PASS" || echo "== load: FAIL"
exit "$failed"
