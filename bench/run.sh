#!/usr/bin/env bash
# Side-by-side download benchmark: backupd against nginx (sendfile) and
# static-web-server, on loopback, page-cached files, curl and wrk as clients.
#
#   bench/run.sh [--quick] [--reps N] [--label NAME] [--results FILE] [--no-build]
#
#   --quick        small files, one repetition, ~1-2 minutes; for CI, to keep
#                  this script working. Never asserts a timing.
#   --reps N       repetitions per figure (at least 3; the median is reported)
#   --label NAME   section of the results file to (re)write [latest]
#   --results FILE where the table goes [bench/RESULTS.md; none with --quick]
#   --no-build     use the existing target/release/backupd
#
# Installs what is missing: nginx, apache2-utils (htpasswd), wrk and curl
# with apt-get; static-web-server with `cargo install --locked` (an older
# release if the newest does not build; skipped, and said so, if none does).
set -euo pipefail
cd "$(dirname "$0")/.."

quick=0
reps=3
label=latest
results=
build=1
while (($#)); do
  case "$1" in
    --quick) quick=1 ;;
    --reps) reps=$2; shift ;;
    --label) label=$2; shift ;;
    --results) results=$2; shift ;;
    --no-build) build=0 ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
  esac
  shift
done
if [[ -z $results && $quick == 0 ]]; then
  results=bench/RESULTS.md
fi

missing=()
for tool in nginx htpasswd wrk curl python3; do
  command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
done
if ((${#missing[@]})); then
  echo "== installing: ${missing[*]}" >&2
  apt-get update
  apt-get install -y nginx apache2-utils wrk curl python3
fi

# static-web-server: the newest release first, then older ones that build on
# older compilers. Each attempt is one bounded cargo install.
sws=$(command -v static-web-server || true)
sws_note=""
if [[ -z $sws ]]; then
  for version in "" 2.36.1 2.33.1 2.28.0; do
    echo "== cargo install --locked static-web-server ${version:+--version $version}" >&2
    if cargo install --locked static-web-server ${version:+--version "$version"} >&2; then
      sws=$(command -v static-web-server || echo "$HOME/.cargo/bin/static-web-server")
      break
    fi
  done
fi
if [[ -n $sws && -x $sws ]]; then
  sws_note="static-web-server $("$sws" --version | awk '/^Version:/ {print $2; exit}') (bcrypt cost 4 for Basic auth: the only scheme it checks)"
else
  sws=""
  sws_note="could not be installed with cargo install --locked; skipped"
  echo "== static-web-server: $sws_note" >&2
fi

if ((build)); then
  echo "== cargo build --release" >&2
  cargo build --release --locked >&2
fi

work=$(mktemp -d "${TMPDIR:-/tmp}/backupd-bench.XXXXXX")
driver=""
cleanup() {
  # The driver stops its servers in a `finally`; this catches the driver
  # itself if we are interrupted, then removes the scratch files.
  if [[ -n $driver ]] && kill -0 "$driver" 2>/dev/null; then
    kill -TERM "$driver" 2>/dev/null || true
    for _ in $(seq 100); do
      kill -0 "$driver" 2>/dev/null || break
      sleep 0.1
    done
  fi
  rm -rf "$work"
}
trap cleanup EXIT

args=(--work "$work" --backupd "$PWD/target/release/backupd" --label "$label"
      --reps "$reps" --commit "$(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
      --sws "$sws" --sws-note "$sws_note")
((quick)) && args+=(--quick)
[[ -n $results ]] && args+=(--results "$results")
python3 bench/bench.py "${args[@]}" &
driver=$!
wait "$driver"
