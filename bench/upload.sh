#!/usr/bin/env bash
# Upload benchmark (issue 16): backupd's POST (Content-Digest checked, fsync
# before the 201) against nginx's WebDAV PUT and against `dd conv=fsync` on
# the same filesystem, in one run, the servers taking turns. A benchmark,
# not a test: it never asserts a timing, but exits non-zero when an upload
# fails or a checksum is wrong.
#
#   bash bench/upload.sh [--quick] [BACKUPD_BIN]
#       full: 1 GiB, median of 3, appends a dated section to bench/RESULTS.md
#       --quick: 256 MiB, 1 repetition, prints only
#   bash bench/upload.sh --profile DIR [BACKUPD_BIN]
#       one upload under perf record (cpu-clock), one under strace -c, one
#       under strace -y (read/write sizes), attached to backupd's worker;
#       summaries in DIR (add --quick for 256 MiB). perf needs a binary with
#       symbols: CARGO_PROFILE_RELEASE_STRIP=false cargo build --release --locked
#
# BACKUPD_BIN (or the BIN environment variable) skips the build; by default
# target/release/backupd is built with `cargo build --release --locked -q`.
# OUT=FILE appends to FILE instead of bench/RESULTS.md in full mode (OUT=
# appends nowhere); BENCH_DIR=DIR puts the work directory (the data
# directories, nginx's uploads, dd's output) on DIR's filesystem instead of
# the temporary directory's; BENCH_NOTE=TEXT is added to the appended section.
set -euo pipefail
cmdline="${BIN:+BIN=$BIN }bash bench/upload.sh${*:+ $*}"
cd "$(dirname "$0")/.."
quick=""; profile=""; bin="${BIN:-}"
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) quick="--quick" ;;
    --profile) profile="${2:?--profile needs a directory}"; shift ;;
    -h|--help) sed -n '2,/^set -e/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    -*) echo "unknown option $1" >&2; exit 2 ;;
    *) bin="$1" ;;
  esac
  shift
done
need=""
command -v nginx >/dev/null || need="$need nginx-light"
command -v curl >/dev/null || need="$need curl"
command -v openssl >/dev/null || need="$need openssl"
if [ -n "$profile" ]; then
  perf --version >/dev/null 2>&1 || need="$need linux-perf"
  command -v strace >/dev/null || need="$need strace"
fi
if [ -n "$need" ]; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $need >/dev/null
fi
if [ -z "$bin" ]; then
  cargo build --release --locked -q
  bin=target/release/backupd
fi
export BENCH_COMMAND="$cmdline"
if [ -n "$profile" ]; then
  python3 bench/upload.py "$bin" $quick --profile "$profile"
elif [ -n "$quick" ]; then
  python3 bench/upload.py "$bin" --quick
else
  out="${OUT-bench/RESULTS.md}"
  python3 bench/upload.py "$bin" ${out:+--out "$out"}
fi
