#!/usr/bin/env python3
"""Does the 401 take longer for some kinds of wrong credentials?

Measures response latency of backupd's 401 for
  (a) an unknown system,
  (b) a known system with a wrong secret,
  (c) a known system with its secret changed in the last byte only,
N samples each (default 10,000), interleaved in random order on one
keep-alive connection to a release build on loopback, and reports Welch's t
between every pair. |t| < 4.5 means no detectable difference.

A positive control runs interleaved with them: (d) the same request to an
unknown path, answered 404 before any credential work. Its t against (a)
shows what size of difference this setup can see at all; it is reported,
not part of the verdict. The smallest detectable difference is printed too
(4.5 standard errors of the difference of means).

Usage: bench/timing.py [--samples N] [--binary target/release/backupd]
Builds nothing: run `cargo build --release` first. Needs only Python 3.
"""

import argparse
import base64
import math
import os
import random
import re
import secrets
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

ID = "01934fab-bc33-7890-a1b2-c3d4e5f6a7b8.tar.gz"


def basic(user, password):
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def welch_t(a, b):
    va, vb = statistics.variance(a), statistics.variance(b)
    return (statistics.fmean(a) - statistics.fmean(b)) / math.sqrt(va / len(a) + vb / len(b))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--samples", type=int, default=10_000)
    ap.add_argument("--warmup", type=int, default=1_000)
    ap.add_argument("--binary", default="target/release/backupd")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as data:
        secret = subprocess.run(
            [args.binary, "--data-dir", data, "systems", "add", "fw1"],
            check=True, capture_output=True, text=True,
        ).stdout.strip()
        proc = subprocess.Popen(
            [args.binary, "serve", "--listen", "127.0.0.1:0", "--data-dir", data],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
            # Only warnings and up per request would still be one line per
            # 401 ("authentication failed"); keep the log quiet but keep the
            # listening line, which is info from the binary itself.
            env={**os.environ, "RUST_LOG": "backupd=info,backupd::routes=error"},
        )
        try:
            addr = None
            deadline = time.time() + 20
            while time.time() < deadline:
                line = proc.stderr.readline()
                m = re.search(r"listening on ([0-9.]+):(\d+)", line)
                if m:
                    addr = (m.group(1), int(m.group(2)))
                    break
            if addr is None:
                sys.exit("server did not start")
            # Keep draining stderr so the server never blocks on a full pipe.
            threading.Thread(target=lambda: [None for _ in proc.stderr], daemon=True).start()

            wrong = secrets.token_urlsafe(32)[: len(secret)]
            last = secret[:-1] + ("A" if secret[-1] != "A" else "B")
            classes = {
                "a unknown system": basic("nosuchsystem", secret),
                "b wrong secret": basic("fw1", wrong),
                "c last byte differs": basic("fw1", last),
            }
            requests = {
                k: (f"GET /api/systems/backups/{ID} HTTP/1.1\r\nHost: bench\r\n"
                    f"Authorization: {v}\r\n\r\n").encode()
                for k, v in classes.items()
            }
            control = "d control: route 404"
            requests[control] = (f"GET /api/systems/backupz/{ID} HTTP/1.1\r\nHost: bench\r\n"
                                 f"Authorization: {classes['c last byte differs']}\r\n\r\n").encode()
            sock = socket.create_connection(addr)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

            def one(req):
                t0 = time.perf_counter_ns()
                sock.sendall(req)
                buf = b""
                while True:
                    buf += sock.recv(4096)
                    end = buf.find(b"\r\n\r\n")
                    if end >= 0:
                        m = re.search(rb"content-length: (\d+)", buf[:end])
                        if len(buf) >= end + 4 + int(m.group(1)):
                            break
                t1 = time.perf_counter_ns()
                assert buf.startswith((b"HTTP/1.1 401 ", b"HTTP/1.1 404 ")), buf[:40]
                return (t1 - t0) / 1000.0  # microseconds

            order = [k for k in requests for _ in range(args.samples)]
            random.shuffle(order)
            for i in range(args.warmup):
                one(requests[order[i % len(order)]])
            samples = {k: [] for k in requests}
            for k in order:
                samples[k].append(one(requests[k]))
        finally:
            proc.terminate()
            proc.wait(timeout=30)

    print(f"samples per class: {args.samples} (interleaved, one keep-alive connection), "
          f"warm-up {args.warmup}")
    print(f"{'class':<22} {'mean us':>9} {'median':>8} {'p90':>8} {'p99':>8} {'stdev':>8}")
    for k, v in samples.items():
        q = statistics.quantiles(v, n=100)
        print(f"{k:<22} {statistics.fmean(v):9.1f} {statistics.median(v):8.1f} "
              f"{q[89]:8.1f} {q[98]:8.1f} {statistics.stdev(v):8.1f}")
    worst = 0.0
    keys = [k for k in samples if k != control]
    for i in range(len(keys)):
        for j in range(i + 1, len(keys)):
            a, b = samples[keys[i]], samples[keys[j]]
            t = welch_t(a, b)
            worst = max(worst, abs(t))
            se = math.sqrt(statistics.variance(a) / len(a) + statistics.variance(b) / len(b))
            print(f"Welch t  {keys[i][:1]} vs {keys[j][:1]}: {t:+.2f}   "
                  f"(mean difference {statistics.fmean(a) - statistics.fmean(b):+.2f} us; "
                  f"detectable at |t| 4.5: {4.5 * se:.2f} us)")
    t = welch_t(samples[keys[0]], samples[control])
    print(f"control  a vs d: {t:+.2f}   (401 with credential work vs 404 without; not part of the verdict)")
    print(f"max |t| = {worst:.2f} ({'PASS' if worst < 4.5 else 'FAIL'}: target < 4.5)")
    sys.exit(0 if worst < 4.5 else 1)


if __name__ == "__main__":
    main()
