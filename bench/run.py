"""Side-by-side download benchmark: backupd against nginx (sendfile, Basic
auth) and static-web-server, on the same page-cached files, in one run.

A benchmark, not a test: it prints and records figures, never asserts a
timing. Run through bench/run.sh, which installs the peers and builds.

usage: run.py BACKUPD_BIN [--quick] [--out bench/RESULTS.md]
"""
import base64, hashlib, os, re, shutil, signal, socket, statistics, subprocess, sys, tempfile, time

QUICK = "--quick" in sys.argv
BIN = os.path.abspath(sys.argv[1])
OUT = sys.argv[sys.argv.index("--out") + 1] if "--out" in sys.argv else None
BIG = (256 << 20) if QUICK else (1 << 30)       # the "1 GiB" file
REPS = 1 if QUICK else 3
WRK_SECONDS = 3 if QUICK else 10
RSS_STREAMS = 8 if QUICK else 64
USER = "fw1"
# Who takes uploads, and how: backupd's POST (fsync included) and nginx's
# WebDAV PUT (no fsync); static-web-server has no upload.
UPLOAD_TARGETS = {
    "backupd": lambda base: (lambda i: base, "POST"),
    "nginx": lambda base: (lambda i: f"{base.replace('/api/systems/backups', '/upload')}/up{i}.bin", "PUT"),
}
BIG_SOURCE = None  # the big file's path, set in main()
BIG_ID = "01934fab-bc33-7890-a1b2-c3d4e5f6a7b8.bin"
SMALL_ID = "01934fab-bc33-7890-a1b2-c3d4e5f6a7b9.bin"
HUGE_ID = "01934fab-bc33-7890-a1b2-c3d4e5f6a7ba.bin"
HUGE = 4 << 30        # the 4 GiB file of the second RSS figure (full mode)
HUGE_SECONDS = 20     # its downloads are cut after this long


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def wait_port(port, limit=10.0):
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"nothing listening on {port}")


def pids_of(root_pid):
    """root_pid and its descendants (nginx workers)."""
    out = [root_pid]
    for p in os.listdir("/proc"):
        if p.isdigit():
            try:
                stat = open(f"/proc/{p}/stat").read()
                if int(stat.rsplit(")", 1)[1].split()[1]) == root_pid:
                    out.append(int(p))
            except (OSError, IndexError, ValueError):
                pass
    return out


def cpu_seconds(root_pid):
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids_of(root_pid):
        try:
            fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime + stime
        except OSError:
            pass
    return total / tick


def rss_mib(root_pid):
    total = 0
    for pid in pids_of(root_pid):
        try:
            for line in open(f"/proc/{pid}/status"):
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total / 1024


def curl(url, auth):
    out = subprocess.run(
        ["curl", "-s", "-o", "/dev/null", "--user", auth, "-w", "%{http_code} %{size_download} %{time_total}", url],
        capture_output=True, text=True, timeout=600)
    code, size, secs = out.stdout.split()
    if code != "200":
        raise SystemExit(f"{url}: HTTP {code}")
    return int(size), float(secs)


def streams(url, auth, n):
    """n concurrent downloads; aggregate GB/s and the bytes moved."""
    t0 = time.monotonic()
    procs = [subprocess.Popen(["curl", "-s", "-o", "/dev/null", "--user", auth, "-w", "%{size_download}", url],
                              stdout=subprocess.PIPE, text=True) for _ in range(n)]
    total = sum(int(p.communicate(timeout=900)[0]) for p in procs)
    return total / (time.monotonic() - t0) / 1e9, total


def wrk(url, auth_header):
    out = subprocess.run(["wrk", "-t2", "-c64", f"-d{WRK_SECONDS}s", "--latency", "-H", f"Authorization: {auth_header}", url],
                         capture_output=True, text=True, timeout=120).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    requests = int(re.search(r"(\d+) requests in", out).group(1))
    def ms(label):
        v, unit = re.search(rf"\s{label}%\s+([\d.]+)(us|ms|s)", out).groups()
        return float(v) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if non2xx:
        raise SystemExit(f"{url}: {non2xx.group(1)} non-2xx responses")
    return rps, ms("50"), ms("99"), requests


def peak_rss(url, auth, root_pid, n, limit=None):
    """Peak summed RSS of the server during n concurrent downloads of url,
    cut after `limit` seconds if given (memory that grew with the offset
    would show well within that)."""
    procs = [subprocess.Popen(["curl", "-s", "-o", "/dev/null", "--user", auth, url]) for _ in range(n)]
    peak, t0 = 0.0, time.monotonic()
    while any(p.poll() is None for p in procs):
        peak = max(peak, rss_mib(root_pid))
        if limit and time.monotonic() - t0 > limit:
            break
        time.sleep(0.1)
    for p in procs:
        if p.poll() is None:
            p.kill()
        p.wait()
    return peak


def upload(url, auth, path, method):
    """One upload of the big file with curl -T (streamed, never in memory)."""
    out = subprocess.run(
        ["curl", "-s", "-o", "/dev/null", "--user", auth, "-X", method, "-T", path,
         "-H", "Content-Type: application/octet-stream", "-H", "X-Filename: big.bin",
         "-w", "%{http_code} %{size_upload} %{time_total}", url],
        capture_output=True, text=True, timeout=900)
    code, size, secs = out.stdout.split()
    if code not in ("201", "204"):
        raise SystemExit(f"upload to {url}: HTTP {code}")
    return int(size) / float(secs) / 1e9


def settle():
    """Writes every dirty page out now. The kernel writes a dirty page back
    about 30 s after it was dirtied, on its own threads: without this, the
    1 GiB file made at the start would be written back while the first
    server is measured, and nginx's unsynced uploads while the next one is."""
    os.sync()
    time.sleep(1)


def sample(name, pid, base, auth_user, auth_header, rep):
    """One repetition of every figure against one server."""
    big, small = f"{base}/{BIG_ID}", f"{base}/{SMALL_ID}"
    r = {}
    size, secs = curl(big, auth_user)
    r["single"] = size / secs / 1e9
    c0 = cpu_seconds(pid)
    r["multi"], moved = streams(big, auth_user, 8)
    r["cpu"] = (cpu_seconds(pid) - c0) / (moved / (1 << 30))
    c0 = cpu_seconds(pid)
    r["rps"], r["p50"], r["p99"], requests = wrk(small, auth_header)
    r["cpu_req"] = (cpu_seconds(pid) - c0) / requests * 1e6
    r["rss"] = peak_rss(big, auth_user, pid, RSS_STREAMS)
    if not QUICK:
        # A fresh look at the same figure with a 4 GiB file: flat memory
        # means the same peak.
        r["rss_huge"] = peak_rss(f"{base}/{HUGE_ID}", auth_user, pid, RSS_STREAMS, HUGE_SECONDS)
    if UPLOAD_TARGETS.get(name):
        target, method = UPLOAD_TARGETS[name](base)
        r["upload"] = upload(target(rep), auth_user, BIG_SOURCE, method)
    print(f"{name}, repetition {rep + 1}: {r}", flush=True)
    return r


def measure(servers, auth_user, auth_header):
    """Every figure REPS times per server, medians. The servers take turns:
    each repetition measures all of them, in an order rotated by one each
    time, so that the machine's drift over the run (a shared VM's speed
    moves by 10-20 % over minutes) lands on every server alike instead of
    on whichever was measured in that stretch."""
    samples = {name: [] for name, _, _ in servers}
    for rep in range(REPS):
        turn = servers[rep % len(servers):] + servers[:rep % len(servers)]
        for name, pid, base in turn:
            samples[name].append(sample(name, pid, base, auth_user, auth_header, rep))
            settle()
    return {name: {key: statistics.median(r[key] for r in runs) for key in runs[0]}
            for name, runs in samples.items()}


def main():
    work = tempfile.mkdtemp(prefix="backupd-bench-")
    procs = []
    try:
        data = os.path.join(work, "data")
        secret = subprocess.run([BIN, "systems", "add", USER, "--data-dir", data], capture_output=True, text=True, check=True).stdout.strip()
        files = os.path.join(data, "backups", USER)
        with open(os.path.join(files, BIG_ID), "wb") as f:
            block = os.urandom(1 << 20)
            for _ in range(BIG >> 20):
                f.write(block)
        with open(os.path.join(files, SMALL_ID), "wb") as f:
            f.write(os.urandom(64 << 10))
        if not QUICK:
            # Sparse: reading it fills the page cache with zeros, no disk.
            with open(os.path.join(files, HUGE_ID), "wb") as f:
                f.truncate(HUGE)
        for name in (BIG_ID, SMALL_ID):  # page-cache both
            with open(os.path.join(files, name), "rb") as f:
                while f.read(1 << 24):
                    pass
        settle()
        global BIG_SOURCE
        BIG_SOURCE = os.path.join(work, "upload-source.bin")
        os.link(os.path.join(files, BIG_ID), BIG_SOURCE)
        auth_user = f"{USER}:{secret}"
        auth_header = "Basic " + base64.b64encode(auth_user.encode()).decode()
        servers = []  # (name, pid, base URL), all serving at once

        # backupd
        port = free_port()
        p = subprocess.Popen([BIN, "serve", "--listen", f"127.0.0.1:{port}", "--data-dir", data,
                              "--max-upload-bytes", str(4 << 30), "--retention-count", "0"],
                             stderr=open(os.path.join(work, "backupd.log"), "w"), env={**os.environ, "RUST_LOG": "warn"})
        procs.append(p)
        wait_port(port)
        servers.append(("backupd", p.pid, f"http://127.0.0.1:{port}/api/systems/backups"))

        # nginx: sendfile, Basic auth with a {SHA} htpasswd entry (one SHA-1
        # per request: as cheap as backupd's salted SHA-256).
        port = free_port()
        sha = base64.b64encode(hashlib.sha1(secret.encode()).digest()).decode()
        open(os.path.join(work, "htpasswd"), "w").write(f"{USER}:{{SHA}}{sha}\n")
        conf = os.path.join(work, "nginx.conf")
        open(conf, "w").write(f"""
worker_processes auto;
# The benchmark's files are in a private temporary directory.
user root;
pid {work}/nginx.pid;
error_log {work}/nginx-error.log;
daemon off;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  sendfile on;
  tcp_nopush on;
  keepalive_requests 100000;
  server {{
    listen 127.0.0.1:{port};
    location /api/systems/backups/ {{
      alias {files}/;
      auth_basic "backupd";
      auth_basic_user_file {work}/htpasswd;
      default_type application/octet-stream;
    }}
    location /upload/ {{
      alias {work}/nginx-uploads/;
      dav_methods PUT;
      client_max_body_size 0;
      client_body_temp_path {work}/nginx-body;
      auth_basic "backupd";
      auth_basic_user_file {work}/htpasswd;
    }}
  }}
}}
""")
        os.makedirs(os.path.join(work, "nginx-uploads"))
        p = subprocess.Popen(["nginx", "-c", conf, "-p", work])
        procs.append(p)
        wait_port(port)
        servers.append(("nginx", p.pid, f"http://127.0.0.1:{port}/api/systems/backups"))

        # static-web-server, if installed: its Basic auth takes bcrypt only.
        sws = shutil.which("static-web-server")
        if sws:
            port = free_port()
            bcrypt = subprocess.run(["htpasswd", "-nbBC", "4", USER, secret], capture_output=True, text=True, check=True).stdout.strip()
            root = os.path.join(work, "sws")
            # It refuses symlinks that leave its root: hard-link the same files.
            os.makedirs(os.path.join(root, "api", "systems", "backups"))
            for name in (BIG_ID, SMALL_ID) + (() if QUICK else (HUGE_ID,)):
                os.link(os.path.join(files, name), os.path.join(root, "api", "systems", "backups", name))
            p = subprocess.Popen([sws, "--host", "127.0.0.1", "--port", str(port), "--root", root, "--basic-auth", bcrypt,
                                  "--log-level", "error", "--compression", "false"], stdout=subprocess.DEVNULL)
            procs.append(p)
            wait_port(port)
            servers.append(("static-web-server", p.pid, f"http://127.0.0.1:{port}/api/systems/backups"))
        else:
            print("static-web-server not installed: skipped (bench/run.sh tries cargo install --locked static-web-server)")
        report(measure(servers, auth_user, auth_header))
    finally:
        # SIGTERM first: a SIGKILLed nginx master leaves its workers behind.
        for p in procs:
            if p.poll() is None:
                p.terminate()
        for p in procs:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        shutil.rmtree(work, ignore_errors=True)


def report(results):
    ng = results["nginx"]
    rows = [
        ("1 GiB single stream (GB/s)" if not QUICK else "256 MiB single stream (GB/s)", "single", True),
        ("8 concurrent streams, aggregate (GB/s)", "multi", True),
        ("64 KiB + Basic auth, 64 conns (req/s)", "rps", True),
        ("  p50 latency (ms)", "p50", False),
        ("  p99 latency (ms)", "p99", False),
        ("  CPU µs per 64 KiB request", "cpu_req", False),
        ("CPU seconds per GiB served (8 streams)", "cpu", False),
        (f"peak RSS, {RSS_STREAMS} concurrent big downloads (MiB)", "rss", False),
        (f"peak RSS, {RSS_STREAMS} concurrent 4 GiB downloads, first {HUGE_SECONDS} s (MiB)", "rss_huge", False),
        ("upload of the big file (GB/s; backupd POST with fsync, nginx WebDAV PUT)", "upload", True),
    ]
    names = list(results)
    cpu_model = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
    lines = [f"Run {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, nproc {os.cpu_count()}, {cpu_model}, "
             f"{'quick' if QUICK else 'full'} mode, median of {REPS} (servers take turns); ratio = server / nginx (same run).", "",
             "| figure | " + " | ".join(names) + " | " + " | ".join(f"{n}/nginx" for n in names if n != "nginx") + " |",
             "|---|" + "---|" * (2 * len(names) - 1)]
    for label, key, _higher_better in rows:
        vals = [f"{results[n][key]:.3g}" if key in results[n] else "-" for n in names]
        ratios = [f"{results[n][key] / ng[key]:.2f}x" if ng.get(key) and key in results[n] else "-"
                  for n in names if n != "nginx"]
        lines.append(f"| {label} | " + " | ".join(vals) + " | " + " | ".join(ratios) + " |")
    table = "\n".join(lines)
    print(table)
    if OUT:
        with open(OUT, "a") as f:
            f.write("\n" + table + "\n")


if __name__ == "__main__":
    main()
