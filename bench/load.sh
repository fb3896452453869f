#!/usr/bin/env bash
# Load, slow clients and HTTP/2 abuse against a release build of backupd on
# loopback (issue 3, section 3). A benchmark, not a test: it prints figures
# and exits non-zero only when behaviour (not speed) is wrong: unexpected
# statuses, connection errors, stalled sockets left open, a dead server.
#
#   bash bench/load.sh            # full run (about 4 minutes)
#   bash bench/load.sh --quick    # smaller numbers, for CI to keep it working
set -euo pipefail
cd "$(dirname "$0")/.."
quick=0; [ "${1:-}" = "--quick" ] && quick=1

for tool in wrk h2load curl python3; do
  command -v "$tool" >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk nghttp2-client curl >/dev/null; break; }
done
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"

cargo build --release --locked -q
bin=target/release/backupd
work=$(mktemp -d)
server_pid=""
cleanup() { [ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null; wait 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT

secret=$("$bin" systems add fw1 --data-dir "$work" 2>/dev/null)
small=01934fab-bc33-7890-a1b2-c3d4e5f6a7b8.bin
big=01934fab-bc33-7890-a1b2-c3d4e5f6a7b9.bin
head -c 4096 /dev/urandom > "$work/backups/fw1/$small"
truncate -s 1G "$work/backups/fw1/$big"
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
port=$(free_port)
admin_port=$(free_port)
# A fresh server for each phase, so each RSS figure is that phase's own.
start_server() {
  if [ -n "$server_pid" ]; then kill "$server_pid"; wait "$server_pid" 2>/dev/null || true; fi
  "$bin" serve --listen "127.0.0.1:$port" --admin-listen "127.0.0.1:$admin_port" --data-dir "$work" \
    --max-connections 8192 2>>"$work/server.log" &
  server_pid=$!
  for _ in $(seq 50); do curl -s -o /dev/null "http://127.0.0.1:$port/" && break; sleep 0.1; done
}
start_server
auth="Basic $(printf 'fw1:%s' "$secret" | base64 -w0)"
bad_auth="Basic $(printf 'fw1:%s' "wrong" | base64 -w0)"
# The server is a supervisor and its worker(s): memory is summed over both.
server_pids() { echo "$server_pid" $(cat "/proc/$server_pid/task/$server_pid/children" 2>/dev/null); }
rss() { for p in $(server_pids); do cat "/proc/$p/status"; done | awk '/VmRSS|VmHWM/ {kb[$1]+=$2} END {for (k in kb) printf "%s=%d MiB ", k, kb[k]/1024}'; }
rss_now() { for p in $(server_pids); do cat "/proc/$p/status"; done | awk '/VmRSS/ {kb+=$2} END {print int(kb/1024)}'; }
alive() { curl -s -o /dev/null -w '%{http_code}' -H "Authorization: $auth" "http://127.0.0.1:$port/api/systems/backups/$small"; }
status=0

echo "== mixed load: 2000 connections, 200/401/404/400 in equal parts"
if [ $quick = 1 ]; then conns=200; secs=5; else conns=2000; secs=30; fi
out=$(LOAD_AUTH="$auth" LOAD_BAD_AUTH="$bad_auth" LOAD_ID="$small" \
  wrk -t2 -c"$conns" -d"${secs}s" --timeout 10s -s bench/load/mixed.lua "http://127.0.0.1:$port" | grep RESULT)
echo "$out  $(rss)"
case "$out" in *" unexpected=0 "*" connect_err=0 read_err=0 write_err=0 timeouts=0 "*) ;; *) echo "FAIL: unexpected statuses or connection errors"; status=1;; esac
[ $quick = 1 ] || { n=$(sed -E 's/.*requests=([0-9]+).*/\1/' <<<"$out"); [ "$n" -ge 200000 ] || { echo "FAIL: only $n requests (wanted 200000)"; status=1; }; }

echo "== 64 concurrent downloads of a 1 GiB file"
start_server
n=64; [ $quick = 1 ] && n=8
for _ in $(seq "$n"); do curl -s -o /dev/null -H "Authorization: $auth" "http://127.0.0.1:$port/api/systems/backups/$big" & done
wait_pids=$(jobs -p | grep -v "^${server_pid}$" || true)
peak=0
while kill -0 $wait_pids 2>/dev/null; do
  r=$(rss_now); [ "$r" -gt "$peak" ] && peak=$r; sleep 0.2
done
wait $wait_pids 2>/dev/null || true
echo "RESULT downloads=$n peak_rss_mib=$peak $(rss)"
[ "$peak" -lt 64 ] || { echo "FAIL: RSS ${peak} MiB >= 64 MiB"; status=1; }

echo "== slowloris: 1000 half requests + 1000 non-readers, real requests meanwhile"
start_server
if [ $quick = 1 ]; then
  echo "(skipped in --quick: it waits out the 60 s idle timeout)"
else
  python3 bench/load/slow_clients.py 127.0.0.1 "$port" "$admin_port" "$auth" "$small" "$big" || { echo "FAIL: slow clients"; status=1; }
  echo "  $(rss)"
fi

echo "== HTTP/2: many streams on one connection"
start_server
h2n=100000; [ $quick = 1 ] && h2n=10000
# -m 64: the server advertises 64 concurrent streams (MAX_CONCURRENT_STREAMS);
# h2load does not retry streams refused before it reads SETTINGS.
h2load -n "$h2n" -c 1 -m 64 -H "Authorization: $auth" "http://127.0.0.1:$port/api/systems/backups/$small" \
  | grep -E "^requests:|^status codes:|finished in"

echo "== HTTP/2: rapid reset and CONTINUATION flood"
python3 bench/load/h2_attacks.py 127.0.0.1 "$port"
code=$(alive)
echo "RESULT server_after_attacks=$code $(rss)"
[ "$code" = 200 ] || { echo "FAIL: server not serving after the attacks"; status=1; }
kill -0 "$server_pid" || { echo "FAIL: server died"; status=1; }
exit $status
