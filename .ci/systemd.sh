#!/usr/bin/env bash
# deploy/backupd.service passes systemd-analyze verify; prints its exposure.
set -euo pipefail
cd "$(dirname "$0")/.."
echo "== systemd unit"
command -v systemd-analyze >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq systemd >/dev/null; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# verify wants the ExecStart binary to exist: point a copy of the unit at the build.
cargo build --locked -q --bin backupd
sed "s|/usr/local/bin/backupd|$PWD/target/debug/backupd|" deploy/backupd.service > "$work/backupd.service"
out=$(systemd-analyze verify "$work/backupd.service" 2>&1 || true)
echo "$out"
# Only problems with our unit count (the container may lack other units).
if echo "$out" | grep -i "backupd.service" | grep -viE "network-online.target|Failed to open|mount"; then
  echo "FAIL: systemd-analyze verify reported problems"; exit 1
fi
# The socket unit too (verified next to the service it activates).
cp deploy/backupd.socket "$work/backupd.socket"
out=$(cd "$work" && systemd-analyze verify "$work/backupd.socket" 2>&1 || true)
echo "$out"
if echo "$out" | grep -i "backupd.socket" | grep -viE "network-online.target|Failed to open|mount"; then
  echo "FAIL: systemd-analyze verify reported problems with backupd.socket"; exit 1
fi
systemd-analyze security --offline=true "$work/backupd.service" 2>/dev/null | tail -1 || true
