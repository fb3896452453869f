#!/usr/bin/env bash
# The release build for x86_64-unknown-linux-musl is one statically linked
# file under 8 MiB.
set -euo pipefail
cd "$(dirname "$0")/.."
echo "== static binary (musl)"
rustup target add x86_64-unknown-linux-musl >/dev/null 2>&1 || true
# ring compiles a little C and assembly: it needs musl's gcc wrapper.
command -v musl-gcc >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq musl-tools >/dev/null; }
start=$(date +%s)
cargo build --release --locked --target x86_64-unknown-linux-musl -q
bin=target/x86_64-unknown-linux-musl/release/backupd
echo "built in $(( $(date +%s) - start )) s"
out=$(ldd "$bin" 2>&1 || true)
echo "ldd: $out"
case "$out" in *"statically linked"*|*"not a dynamic executable"*) ;; *) echo "FAIL: not static"; exit 1;; esac
size=$(stat -c %s "$bin")
echo "size: $size bytes ($(( size / 1024 )) KiB)"
[ "$size" -lt $(( 8 * 1024 * 1024 )) ] || { echo "FAIL: over 8 MiB"; exit 1; }
"$bin" --version
