#!/usr/bin/env python3
"""Side-by-side download benchmark: backupd, nginx and static-web-server.

Driven by bench/run.sh, which builds backupd and installs the other servers
and the clients first. Standard library only. Every server runs on loopback
on a free high port with its own config in a scratch directory; every wait
is bounded; every process this script starts is stopped in a `finally`.

It is a benchmark, not a test: it fails only when a server answers wrongly
(wrong status, wrong size), never because a figure is slow.
"""

import argparse
import base64
import datetime
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time

GIB = 1 << 30
MIB = 1 << 20
GB = 1e9

# Valid backup ids (UUIDv7, RFC 4122 variant): backupd serves no other name.
ID_BIG = "01934fab-bc33-7890-a1b2-c3d4e5f6a7b8.bin"
ID_HUGE = "01934fab-bc33-7890-a1b2-c3d4e5f6a7b9.bin"
ID_SMALL = "01934fab-bc33-7890-a1b2-c3d4e5f6a7ba.bin"
SYSTEM = "bench"

CLK_TCK = os.sysconf("SC_CLK_TCK")
# Bounds on every wait, so a wedged server fails the run instead of hanging it.
START_TIMEOUT_S = 15
STOP_TIMEOUT_S = 10
RSS_SAMPLE_INTERVAL_S = 0.02


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_listening(port, proc, name):
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{name} exited during start-up (status {proc.returncode})")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"{name} did not listen on port {port} within {START_TIMEOUT_S} s")


def proc_children(pid):
    """Direct children of `pid` (nginx workers of the master)."""
    kids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        if int(fields[1]) == pid:
            kids.append(int(entry))
    return kids


def cpu_seconds(pids):
    """user+sys seconds of `pids` (all threads, live and exited)."""
    total = 0
    for pid in pids:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
        fields = stat[stat.rindex(")") + 2 :].split()
        # fields[0] is field 3 (state); utime and stime are fields 14 and 15.
        total += int(fields[11]) + int(fields[12])
    return total / CLK_TCK


def status_kib(pid, key):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


class Server:
    """One server under test: how to start it, its URL, its processes."""

    def __init__(self, name, work):
        self.name = name
        self.work = work
        self.port = None
        self.proc = None
        self.logfile = None

    def command(self):
        raise NotImplementedError

    def path(self, backup_id):
        return "/" + backup_id

    def url(self, backup_id):
        return f"http://127.0.0.1:{self.port}{self.path(backup_id)}"

    def start(self):
        self.port = free_port()
        cmd, env = self.command()
        self.logfile = open(os.path.join(self.work, f"{self.name}.log"), "ab")
        self.proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=self.logfile,
            stderr=self.logfile,
            env={**os.environ, **env},
        )
        wait_listening(self.port, self.proc, self.name)

    def stop(self):
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(STOP_TIMEOUT_S)
        self.proc = None
        self.logfile.close()

    def restart(self):
        self.stop()
        self.start()

    def cpu_pids(self):
        """Processes whose CPU time counts as the server's."""
        return [self.proc.pid]

    def rss_pids(self):
        """Processes whose memory counts as the server's."""
        return [self.proc.pid]


class Backupd(Server):
    def __init__(self, work, binary, data):
        super().__init__("backupd", work)
        self.binary = binary
        self.data = data

    def command(self):
        # RUST_LOG=info is the default: one log line per request, as in
        # production (nginx and static-web-server also log each request).
        return (
            [self.binary, "serve", "--listen", f"127.0.0.1:{self.port}", "--data-dir", self.data],
            {"RUST_LOG": "info"},
        )

    def path(self, backup_id):
        return "/api/systems/backups/" + backup_id


class Nginx(Server):
    def __init__(self, work, root, htpasswd):
        super().__init__("nginx", work)
        self.root = root
        self.htpasswd = htpasswd

    def command(self):
        conf = os.path.join(self.work, "nginx.conf")
        tmp = os.path.join(self.work, "nginx-tmp")
        os.makedirs(tmp, exist_ok=True)
        with open(conf, "w") as f:
            f.write(
                f"""
# Foreground master, one worker per core, everything under the scratch dir.
daemon off;
worker_processes auto;
pid {self.work}/nginx.pid;
error_log {self.work}/nginx-error.log warn;
events {{ worker_connections 4096; }}
http {{
    types {{ }}
    default_type application/octet-stream;
    access_log {self.work}/nginx-access.log;
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    sendfile on;
    tcp_nopush on;
    tcp_nodelay on;
    # wrk keeps its 64 connections open; nginx's default closes one every
    # 1000 requests, backupd and static-web-server never do.
    keepalive_requests 1000000;
    server {{
        listen 127.0.0.1:{self.port};
        root {self.root};
        location / {{
            auth_basic "bench";
            auth_basic_user_file {self.htpasswd};
        }}
    }}
}}
"""
            )
        return ["nginx", "-c", conf, "-p", self.work], {}

    def cpu_pids(self):
        return [self.proc.pid] + proc_children(self.proc.pid)

    def rss_pids(self):
        # The workers do the serving; the master only supervises.
        return proc_children(self.proc.pid)

    def start(self):
        super().start()
        # The port opens before every worker is forked; wait for all of them.
        want = os.cpu_count()
        deadline = time.monotonic() + START_TIMEOUT_S
        while len(proc_children(self.proc.pid)) < want and time.monotonic() < deadline:
            time.sleep(0.05)


class StaticWebServer(Server):
    def __init__(self, work, binary, root, bcrypt_entry):
        super().__init__("static-web-server", work)
        self.binary = binary
        self.root = root
        self.bcrypt_entry = bcrypt_entry

    def command(self):
        return (
            [
                self.binary,
                "--host", "127.0.0.1",
                "--port", str(self.port),
                "--root", self.root,
                "--compression", "false",
                "--directory-listing", "false",
                "--basic-auth", self.bcrypt_entry,
                "--log-level", "info",
            ],
            {},
        )


def curl(url, auth, max_time=None):
    cmd = ["curl", "-s", "-o", "/dev/null", "-w", "%{http_code} %{size_download} %{time_total}"]
    if auth:
        cmd += ["-H", f"Authorization: {auth}"]
    if max_time:
        cmd += ["--max-time", str(max_time)]
    return cmd + [url]


def run_curls(n, url, auth, expect_bytes, timeout_s, max_time=None):
    """`n` concurrent downloads of `url`; returns (bytes, wall seconds)."""
    procs = [
        subprocess.Popen(curl(url, auth, max_time), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        for _ in range(n)
    ]
    t0 = time.monotonic()
    total = 0
    try:
        for p in procs:
            out, _ = p.communicate(timeout=max(1, timeout_s - (time.monotonic() - t0)))
            code, size, _ = out.decode().split()
            if max_time is None and (code != "200" or int(size) != expect_bytes):
                raise SystemExit(f"{url}: status {code}, {size} bytes (expected 200, {expect_bytes})")
            total += int(size)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    return total, time.monotonic() - t0


def parse_wrk_duration_ms(text):
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text)
    value, unit = float(m.group(1)), m.group(2)
    return value * {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 6e4}[unit]


def run_wrk(url, auth, seconds, connections, threads):
    cmd = [
        "wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "--latency",
        "-H", f"Authorization: {auth}", url,
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 30).stdout
    if "Non-2xx" in out or "Socket errors" in out:
        raise SystemExit(f"wrk against {url} saw errors:\n{out}")
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    requests = int(re.search(r"(\d+) requests in", out).group(1))
    p50 = parse_wrk_duration_ms(re.search(r"\s50%\s+(\S+)", out).group(1))
    p99 = parse_wrk_duration_ms(re.search(r"\s99%\s+(\S+)", out).group(1))
    return rps, p50, p99, requests


class RssSampler(threading.Thread):
    """Samples the summed VmRSS of some processes until stopped."""

    def __init__(self, pids):
        super().__init__(daemon=True)
        self.pids = pids
        self.peak_kib = 0
        self.halt = threading.Event()

    def run(self):
        while not self.halt.is_set():
            try:
                kib = sum(status_kib(pid, "VmRSS") for pid in self.pids)
            except OSError:
                kib = 0
            self.peak_kib = max(self.peak_kib, kib)
            self.halt.wait(RSS_SAMPLE_INTERVAL_S)

    def stop(self):
        self.halt.set()
        self.join(5)


def peak_rss_mib(server, n, backup_id, auth, expect_bytes, timeout_s, max_time=None):
    """Peak RSS (MiB) of a freshly started `server` while `n` clients
    download `backup_id` at once: the larger of the sampled summed VmRSS and
    the summed VmHWM (high-water marks, which catch peaks between samples)."""
    server.restart()
    pids = server.rss_pids()
    sampler = RssSampler(pids)
    sampler.start()
    try:
        run_curls(n, server.url(backup_id), auth, expect_bytes, timeout_s, max_time)
    finally:
        sampler.stop()
    hwm_kib = sum(status_kib(pid, "VmHWM") for pid in pids)
    return max(sampler.peak_kib, hwm_kib) / 1024


def write_file(path, size, source=None):
    """A file of `size` random bytes (or `source` repeated), left in the page cache."""
    with open(path, "wb") as f:
        if source is not None:
            while f.tell() < size:
                with open(source, "rb") as src:
                    shutil.copyfileobj(src, f, 16 * MIB)
            f.truncate(size)
        else:
            for _ in range(size // MIB):
                f.write(os.urandom(MIB))
            f.write(os.urandom(size % MIB))
    os.chmod(path, 0o644)


def cpu_model():
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return "unknown"


# (key, label, unit format, lower is better)
ROWS = [
    ("single", "{big}, one stream (GB/s)", "{:.2f}", False),
    ("eight", "8 × {big} concurrent, aggregate (GB/s)", "{:.2f}", False),
    ("rps", "64 KiB, 64 conns, Basic auth (req/s)", "{:.0f}", False),
    ("p50", "64 KiB latency p50 (ms)", "{:.2f}", True),
    ("p99", "64 KiB latency p99 (ms)", "{:.2f}", True),
    ("cpu_gib", "CPU s per GiB served (user+sys)", "{:.3f}", True),
    ("cpu_req", "CPU µs per 64 KiB request", "{:.1f}", True),
    ("rss", "peak RSS, 64 × {big} concurrent (MiB)", "{:.1f}", True),
    ("rss_huge", "peak RSS, 64 × 4 GiB concurrent (MiB)", "{:.1f}", True),
]


def table(results, names, rows, big):
    head = "| figure | " + " | ".join(names) + " |"
    lines = [head, "|---" * (len(names) + 1) + "|"]
    for key, label, fmt, lower in rows:
        cells = []
        ref = results.get("nginx", {}).get(key)
        for name in names:
            value = results.get(name, {}).get(key)
            if value is None:
                cells.append("n/a")
                continue
            cell = fmt.format(value)
            if name != "nginx" and ref:
                cell += f" ({value / ref:.2f}×)"
            cells.append(cell)
        arrow = " ↓" if lower else " ↑"
        lines.append(f"| {label.format(big=big)}{arrow} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def update_results(path, label, text):
    """Replaces the section of `label` in `path` (appending it if new)."""
    begin, end = f"<!-- run:{label} -->", f"<!-- /run:{label} -->"
    block = f"{begin}\n{text}\n{end}"
    old = open(path).read() if os.path.exists(path) else "# Download benchmark results\n"
    if begin in old and end in old:
        new = old[: old.index(begin)] + block + old[old.index(end) + len(end) :]
    else:
        new = old.rstrip("\n") + "\n\n" + block + "\n"
    with open(path, "w") as f:
        f.write(new)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", required=True)
    ap.add_argument("--backupd", required=True)
    ap.add_argument("--sws", default="")
    ap.add_argument("--sws-note", default="")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--label", default="latest")
    ap.add_argument("--results", default="")
    ap.add_argument("--commit", default="")
    args = ap.parse_args()

    quick = args.quick
    reps = 1 if quick else max(3, args.reps)
    big = 64 * MIB if quick else GIB
    huge = 0 if quick else 4 * GIB
    small = 64 * 1024
    wrk_seconds = 1 if quick else 10
    rss_clients = 64
    # Generous bounds for a transfer that should take seconds.
    transfer_timeout = 60 if quick else 300
    huge_max_time = 20

    work = args.work
    data = os.path.join(work, "data")
    root = os.path.join(data, "backups", SYSTEM)
    os.chmod(work, 0o755)

    servers = []
    try:
        # backupd owns the credentials; the same secret opens every server.
        out = subprocess.run(
            [args.backupd, "systems", "add", SYSTEM, "--data-dir", data],
            capture_output=True, text=True, check=True, timeout=30,
        )
        secret = out.stdout.strip()
        auth = "Basic " + base64.b64encode(f"{SYSTEM}:{secret}".encode()).decode()
        os.makedirs(root, exist_ok=True)
        for d in (data, os.path.dirname(root), root):
            os.chmod(d, 0o755)  # nginx workers run as nobody

        log(f"writing test files ({big // MIB} MiB{', 4 GiB' if huge else ''}, 64 KiB) under {work}")
        write_file(os.path.join(root, ID_BIG), big)
        write_file(os.path.join(root, ID_SMALL), small)
        if huge:
            write_file(os.path.join(root, ID_HUGE), huge, source=os.path.join(root, ID_BIG))

        # nginx: {SHA} (unsalted SHA-1, one hash per request): the cheapest
        # scheme it checks, the closest to backupd's one salted SHA-256.
        htpasswd = os.path.join(work, "htpasswd")
        digest = subprocess.run(
            ["htpasswd", "-nbs", SYSTEM, secret], capture_output=True, text=True, check=True
        ).stdout.strip()
        with open(htpasswd, "w") as f:
            f.write(digest + "\n")
        os.chmod(htpasswd, 0o644)

        servers.append(Backupd(work, args.backupd, data))
        servers.append(Nginx(work, root, htpasswd))
        if args.sws:
            # static-web-server checks only bcrypt; cost 4 is the cheapest.
            entry = subprocess.run(
                ["htpasswd", "-nbBC", "4", SYSTEM, secret], capture_output=True, text=True, check=True
            ).stdout.strip()
            servers.append(StaticWebServer(work, args.sws, root, entry))
        names = [s.name for s in servers]
        for s in servers:
            s.start()
            # Sanity: auth is enforced and the file comes back whole.
            code = subprocess.run(curl(s.url(ID_SMALL), None, 10), capture_output=True, text=True).stdout.split()[0]
            if code != "401":
                raise SystemExit(f"{s.name}: expected 401 without credentials, got {code}")
            run_curls(1, s.url(ID_SMALL), auth, small, 30)
            log(f"{s.name} listening on 127.0.0.1:{s.port}")

        samples = {n: {} for n in names}

        def add(name, key, value):
            samples[name].setdefault(key, []).append(value)

        for rep in range(reps):
            # Servers take turns within a repetition, so background load
            # (other builds on this machine) hits each of them alike.
            for s in servers:
                cpu0 = cpu_seconds(s.cpu_pids())
                n, t = run_curls(1, s.url(ID_BIG), auth, big, transfer_timeout)
                add(s.name, "single", n / t / GB)
                served = n
                n, t = run_curls(8, s.url(ID_BIG), auth, big, transfer_timeout)
                add(s.name, "eight", n / t / GB)
                served += n
                add(s.name, "cpu_gib", (cpu_seconds(s.cpu_pids()) - cpu0) / (served / GIB))

                cpu0 = cpu_seconds(s.cpu_pids())
                rps, p50, p99, requests = run_wrk(s.url(ID_SMALL), auth, wrk_seconds, 64, 2)
                add(s.name, "cpu_req", (cpu_seconds(s.cpu_pids()) - cpu0) / requests * 1e6)
                add(s.name, "rps", rps)
                add(s.name, "p50", p50)
                add(s.name, "p99", p99)

                add(s.name, "rss", peak_rss_mib(s, rss_clients, ID_BIG, auth, big, transfer_timeout))
                log(f"rep {rep + 1}/{reps} {s.name}: " + ", ".join(
                    f"{k}={v[-1]:.3g}" for k, v in samples[s.name].items()))
        if huge:
            # 64 × 4 GiB would take minutes per server; memory that grows
            # with the offset shows within the first seconds at these rates.
            for rep in range(reps):
                for s in servers:
                    add(s.name, "rss_huge", peak_rss_mib(
                        s, rss_clients, ID_HUGE, auth, huge, huge_max_time + 30, max_time=huge_max_time))
                    log(f"rep {rep + 1}/{reps} {s.name}: rss_huge={samples[s.name]['rss_huge'][-1]:.3g}")
    finally:
        for s in servers:
            s.stop()

    results = {n: {k: statistics.median(v) for k, v in samples[n].items()} for n in names}
    rows = [r for r in ROWS if any(r[0] in results[n] for n in names)]
    if not args.sws:
        names.append("static-web-server")

    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    header = [
        f"### {args.label}" + (" (quick mode: small files, not a measurement)" if quick else ""),
        "",
        f"- date: {now}; backupd commit: {args.commit or 'unknown'}",
        f"- machine: nproc={os.cpu_count()}, CPU: {cpu_model()}, "
        f"RAM {os.sysconf('SC_PHYS_PAGES') * os.sysconf('SC_PAGE_SIZE') / GIB:.0f} GiB",
        f"- {reps} repetition(s), median shown; (×) is the ratio to nginx in this run; "
        "↑ higher is better, ↓ lower is better; GB = 10^9 bytes",
        "- clients: curl -o /dev/null (downloads), wrk -t2 (64 KiB requests); "
        "all on the same 2 cores as the servers, and other builds may have been running on this "
        "shared machine: the ratios to nginx in the same run are the figures that count",
        "- CPU s per GiB: user+sys of the server (nginx: master + workers) over the one- and "
        "eight-stream downloads; peak RSS: freshly started server, max of sampled summed VmRSS and "
        "summed VmHWM (nginx: the workers)",
    ]
    if huge:
        header.append(f"- the 4 GiB RSS row: 64 downloads of a 4 GiB file, cut after {huge_max_time} s")
    if args.sws_note:
        header.append(f"- static-web-server: {args.sws_note}")
    text = "\n".join(header) + "\n\n" + table(results, names, rows, f"{big // GIB} GiB" if big >= GIB else f"{big // MIB} MiB") + "\n\n<details><summary>raw samples</summary>\n\n```json\n" + json.dumps(samples, indent=1) + "\n```\n</details>\n"
    print(text)
    if args.results:
        update_results(args.results, args.label, text)
        log(f"wrote section '{args.label}' of {args.results}")


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    main()
