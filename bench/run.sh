#!/usr/bin/env bash
# Download benchmark (issue 4): backupd vs nginx (sendfile, Basic auth) and
# static-web-server on the same files in one run; figures as ratios to nginx.
# A benchmark, not a test: it never asserts a timing.
#
#   bash bench/run.sh           # full: 1 GiB files, 3 repetitions, appends to bench/RESULTS.md
#   bash bench/run.sh --quick   # 256 MiB, 1 repetition, prints only (CI keeps the script working)
set -euo pipefail
cd "$(dirname "$0")/.."
quick=""; [ "${1:-}" = "--quick" ] && quick="--quick"
need=""
command -v nginx >/dev/null || need="$need nginx-light"
command -v htpasswd >/dev/null || need="$need apache2-utils"
command -v wrk >/dev/null || need="$need wrk"
command -v curl >/dev/null || need="$need curl"
if [ -n "$need" ]; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $need >/dev/null
fi
if [ -z "$quick" ] && ! command -v static-web-server >/dev/null; then
  cargo install --locked static-web-server || echo "static-web-server could not be installed: it is skipped"
fi
ulimit -n "$(ulimit -Hn)"
cargo build --release --locked -q
if [ -n "$quick" ]; then
  python3 bench/run.py target/release/backupd --quick
else
  python3 bench/run.py target/release/backupd --out bench/RESULTS.md
fi
