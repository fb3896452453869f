"""Upload benchmark (issue 16): backupd's POST against nginx's WebDAV PUT and
against the disk itself (dd conv=fsync), on the same page-cached file, in
one run, the servers taking turns. `openssl dgst -sha256` of the same file
is timed too (report only): the digest backupd computes and nginx does not,
so that its share of backupd's CPU per GiB can be read off.

A benchmark, not a test: it prints and records figures and never asserts a
timing. It does exit non-zero when an upload fails, stores the wrong number
of bytes or comes back with the wrong SHA-256. Run it through
bench/upload.sh, which installs nginx and curl and builds backupd.

usage: upload.py BACKUPD_BIN [--quick] [--out bench/RESULTS.md] [--profile DIR]

  --quick        256 MiB instead of 1 GiB, one repetition instead of three
  --out FILE     append a dated section with the table to FILE
  --profile DIR  instead of the benchmark: one upload of the big file under
                 `perf record -e cpu-clock -g` and one under `strace -c -f`,
                 and one under `strace -y` for the sizes of the reads and
                 writes, all attached to backupd's worker; summaries in DIR

BENCH_DIR (environment) picks the directory the work directory is made in
(default: the system's temporary directory). Everything written (backupd's
data directories, nginx's upload and body-temp directories, dd's output)
lands on that one filesystem.
"""
import base64, hashlib, json, os, re, shutil, signal, statistics, subprocess, sys, tempfile, time

if len(sys.argv) < 2 or sys.argv[1].startswith("-"):
    raise SystemExit(__doc__)

# bench/run.py only computes constants from sys.argv when imported (its
# main() runs under `if __name__ == "__main__"`); argv[1] is a binary here
# too, so importing it is harmless.
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from run import cpu_seconds, free_port, pids_of, settle, wait_port  # noqa: E402

QUICK = "--quick" in sys.argv
BIN = os.path.abspath(sys.argv[1])
OUT = sys.argv[sys.argv.index("--out") + 1] if "--out" in sys.argv else None
PROFILE = sys.argv[sys.argv.index("--profile") + 1] if "--profile" in sys.argv else None
MIB = 1 << 20
GIB = 1 << 30
BIG = 256 * MIB if QUICK else GIB   # the single upload, and each of the RSS phase's
PART = 256 * MIB                    # each of the 8 concurrent uploads
STREAMS = 8
REPS = 1 if QUICK else 3
RSS_TARGET_MIB = 32
TIMEOUT = 1800


def size_label(n):
    return f"{n // GIB} GiB" if n >= GIB else f"{n // MIB} MiB"


# --- files -----------------------------------------------------------------

def make_source(path, size):
    """A file of random bytes, page-cached; its SHA-256 (hex, base64)."""
    h = hashlib.sha256()
    with open(path, "wb") as f:
        for _ in range(size // MIB):
            block = os.urandom(MIB)
            h.update(block)
            f.write(block)
    with open(path, "rb") as f:  # page-cache it (it was just written: it is)
        while f.read(16 * MIB):
            pass
    return h.hexdigest(), base64.b64encode(h.digest()).decode()


# --- servers ---------------------------------------------------------------

def add_systems(data, names):
    """Adds each system to the data directory; {name: secret}."""
    out = {}
    for name in names:
        out[name] = subprocess.run([BIN, "systems", "add", name, "--data-dir", data],
                                   capture_output=True, text=True, check=True).stdout.strip()
    return out


def start_backupd(work, tag, data, extra=()):
    """backupd serve on a free port, every upload limit off; (Popen, base URL)."""
    port = free_port()
    p = subprocess.Popen(
        [BIN, "serve", "--listen", f"127.0.0.1:{port}", "--data-dir", data,
         "--max-upload-bytes", str(16 * GIB), "--quota-bytes", "0", "--retention-count", "0",
         "--upload-rate-per-minute", "0", "--upload-rate-per-hour", "0", *extra],
        stderr=open(os.path.join(work, f"{tag}.log"), "w"), env={**os.environ, "RUST_LOG": "warn"})
    wait_port(port)
    scheme = "https" if "--tls-cert" in extra else "http"
    base = f"{scheme}://127.0.0.1:{port}/api/systems/backups"
    # The supervisor holds the socket: wait until the worker answers.
    deadline = time.monotonic() + 20
    while True:
        code = subprocess.run(["curl", "-sk", "-o", "/dev/null", "-w", "%{http_code}", base],
                              capture_output=True, text=True).stdout
        if code == "401":
            break
        if time.monotonic() > deadline or p.poll() is not None:
            raise SystemExit(f"backupd ({tag}) does not answer: {code!r}; see {tag}.log")
        time.sleep(0.1)
    return p, base


def worker_of(root_pid):
    """backupd serve's worker: the supervisor's child (the newest if several)."""
    kids = [pid for pid in pids_of(root_pid) if pid != root_pid]
    if not kids:
        raise SystemExit("backupd has no worker process")
    return max(kids)


def status_kib(pid, field):
    try:
        for line in open(f"/proc/{pid}/status"):
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def start_nginx(work, users):
    """nginx with a WebDAV PUT location behind Basic auth; (Popen, upload URL)."""
    port = free_port()
    lines = []
    for user, secret in users.items():
        sha = base64.b64encode(hashlib.sha1(secret.encode()).digest()).decode()
        lines.append(f"{user}:{{SHA}}{sha}\n")
    open(os.path.join(work, "htpasswd"), "w").write("".join(lines))
    for d in ("nginx-uploads", "nginx-body"):
        os.makedirs(os.path.join(work, d), exist_ok=True)
    conf = os.path.join(work, "nginx.conf")
    open(conf, "w").write(f"""
worker_processes auto;
user root;
pid {work}/nginx.pid;
error_log {work}/nginx-error.log;
daemon off;
events {{ worker_connections 1024; }}
http {{
  access_log off;
  server {{
    listen 127.0.0.1:{port};
    location /upload/ {{
      alias {work}/nginx-uploads/;
      dav_methods PUT;
      create_full_put_path on;
      client_max_body_size 0;
      # Same filesystem as the uploads: the finished body is renamed, not copied.
      client_body_temp_path {work}/nginx-body;
      auth_basic "backupd";
      auth_basic_user_file {work}/htpasswd;
    }}
  }}
}}
""")
    p = subprocess.Popen(["nginx", "-c", conf, "-p", work])
    wait_port(port)
    return p, f"http://127.0.0.1:{port}/upload"


def stop(procs):
    # SIGTERM first: a SIGKILLed nginx master leaves its workers behind.
    for p in procs:
        if p.poll() is None:
            p.terminate()
    for p in procs:
        try:
            p.wait(timeout=30)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


# --- uploads ---------------------------------------------------------------

# `Expect:` (empty) drops the `Expect: 100-continue` curl adds to bodies
# above 1 MiB, for both servers alike: what is timed is the body, not a
# round trip before it. -T streams the file (Content-Length from its size);
# -X POST only renames the method.
def backupd_cmd(url, user, secret, path, b64, proto=()):
    return ["curl", "-sS", "--user", f"{user}:{secret}", "-X", "POST", "-T", path, *proto,
            "-H", "Expect:", "-H", "Content-Type: application/octet-stream",
            "-H", f"Content-Digest: sha-256=:{b64}:", "-H", "X-Filename: up.bin",
            "-w", "\n%{http_code} %{size_upload} %{time_total} %{http_version}", url]


def nginx_cmd(url, user, secret, path):
    return ["curl", "-sS", "--user", f"{user}:{secret}", "-T", path, "-H", "Expect:",
            "-w", "\n%{http_code} %{size_upload} %{time_total} %{http_version}", url]


def parse(out, what):
    body, _, tail = out.rpartition("\n")
    try:
        code, size, secs, version = tail.split()
    except ValueError:
        raise SystemExit(f"{what}: curl failed: {out!r}")
    return body, int(code), int(size), float(secs), version


def check_backupd(out, what, size, hexdigest, want_version=None):
    """The 201 and its sha256; (seconds, backup id)."""
    body, code, sent, secs, version = parse(out, what)
    if code != 201:
        raise SystemExit(f"{what}: HTTP {code}: {body[:300]}")
    data = json.loads(body)["data"]
    if sent != size or data.get("size", size) != size:
        raise SystemExit(f"{what}: {sent} bytes sent, {data.get('size')} stored, of {size}")
    if data["sha256"] != hexdigest:
        raise SystemExit(f"{what}: sha256 {data['sha256']} != {hexdigest}")
    if want_version and version != want_version:
        raise SystemExit(f"{what}: HTTP/{version}, not HTTP/{want_version}")
    return secs, data["id"]


def delete_backup(base, user, secret, backup_id, proto=()):
    code = subprocess.run(["curl", "-sSk", *proto, "-o", "/dev/null", "-w", "%{http_code}", "--user", f"{user}:{secret}",
                           "-X", "DELETE", f"{base}/{backup_id}"], capture_output=True, text=True).stdout
    if code != "200":
        raise SystemExit(f"DELETE {backup_id}: HTTP {code}")


def run_curl(cmd):
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT)
    if out.returncode != 0:
        raise SystemExit(f"{' '.join(cmd[:3])}...: curl exit {out.returncode}: {out.stderr.strip()}")
    return out.stdout


def concurrent(cmds):
    """Runs the curl commands at once; (wall seconds, their outputs)."""
    t0 = time.monotonic()
    procs = [subprocess.Popen(c, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for c in cmds]
    outs = []
    for p in procs:
        o, e = p.communicate(timeout=TIMEOUT)
        if p.returncode != 0:
            raise SystemExit(f"concurrent upload: curl exit {p.returncode}: {e.strip()}")
        outs.append(o)
    return time.monotonic() - t0, outs


class Bench:
    def __init__(self, work):
        self.work = work
        self.procs = []

    # One single upload per call; each returns the figures of one sample.
    def backupd_single(self, label, server, base, secret, proto, version):
        c0 = cpu_seconds(server.pid)
        out = run_curl(backupd_cmd(base, "fw0", secret, self.big, self.big_b64, proto))
        cpu = (cpu_seconds(server.pid) - c0) / (BIG / GIB)
        secs, bid = check_backupd(out, label, BIG, self.big_hex, version)
        delete_backup(base, "fw0", secret, bid)
        return {"gbps": BIG / secs / 1e9, "cpu": cpu}

    def nginx_single(self):
        pid = self.nginx.pid
        c0 = cpu_seconds(pid)
        out = run_curl(nginx_cmd(f"{self.nginx_url}/single.bin", "fw0", self.secrets["fw0"], self.big))
        cpu = (cpu_seconds(pid) - c0) / (BIG / GIB)
        body, code, sent, secs, _ = parse(out, "nginx PUT")
        dest = os.path.join(self.work, "nginx-uploads", "single.bin")
        if code not in (201, 204) or sent != BIG or os.path.getsize(dest) != BIG:
            raise SystemExit(f"nginx PUT: HTTP {code}, {sent} bytes sent: {body[:300]}")
        os.remove(dest)
        return {"gbps": BIG / secs / 1e9, "cpu": cpu}

    def dd_single(self, flags=()):
        dest = os.path.join(self.work, "dd-out.bin")
        r0 = os.times()
        t0 = time.monotonic()
        subprocess.run(["dd", f"if={self.big}", f"of={dest}", "bs=1M", "conv=fsync", *flags, "status=none"], check=True)
        secs = time.monotonic() - t0
        r1 = os.times()
        if os.path.getsize(dest) != BIG:
            raise SystemExit("dd wrote the wrong size")
        os.remove(dest)
        cpu = (r1.children_user + r1.children_system - r0.children_user - r0.children_system) / (BIG / GIB)
        return {"gbps": BIG / secs / 1e9, "cpu": cpu}

    def sha256_single(self):
        """`openssl dgst -sha256` of the big file: what checking the digest
        backupd checks costs on its own (nginx checks none)."""
        r0 = os.times()
        out = subprocess.run(["openssl", "dgst", "-sha256", "-r", self.big], capture_output=True, text=True,
                             check=True).stdout
        r1 = os.times()
        if out.split()[0] != self.big_hex:
            raise SystemExit(f"openssl dgst: {out.strip()} is not {self.big_hex}")
        cpu = (r1.children_user + r1.children_system - r0.children_user - r0.children_system) / (BIG / GIB)
        return {"cpu": cpu}

    def backupd_multi(self):
        pid = self.backupd.pid
        c0 = cpu_seconds(pid)
        names = [f"fw{i}" for i in range(STREAMS)]
        secs, outs = concurrent([backupd_cmd(self.base, n, self.secrets[n], self.part, self.part_b64) for n in names])
        cpu = (cpu_seconds(pid) - c0) / (STREAMS * PART / GIB)
        for n, out in zip(names, outs):
            _, bid = check_backupd(out, f"concurrent POST by {n}", PART, self.part_hex)
            delete_backup(self.base, n, self.secrets[n], bid)
        return {"gbps": STREAMS * PART / secs / 1e9, "cpu": cpu}

    def nginx_multi(self):
        pid = self.nginx.pid
        c0 = cpu_seconds(pid)
        names = [f"fw{i}" for i in range(STREAMS)]
        secs, outs = concurrent([nginx_cmd(f"{self.nginx_url}/{n}.bin", n, self.secrets[n], self.part) for n in names])
        cpu = (cpu_seconds(pid) - c0) / (STREAMS * PART / GIB)
        for n, out in zip(names, outs):
            body, code, sent, _, _ = parse(out, f"concurrent PUT by {n}")
            dest = os.path.join(self.work, "nginx-uploads", f"{n}.bin")
            if code not in (201, 204) or sent != PART or os.path.getsize(dest) != PART:
                raise SystemExit(f"nginx PUT by {n}: HTTP {code}, {sent} bytes: {body[:300]}")
            os.remove(dest)
        return {"gbps": STREAMS * PART / secs / 1e9, "cpu": cpu}

    def rss_phase(self):
        """A fresh backupd, 8 concurrent uploads of the big file by 8 systems;
        the VmHWM of each of its processes afterwards."""
        data = os.path.join(self.work, "backupd-rss")
        names = [f"fw{i}" for i in range(STREAMS)]
        secrets = add_systems(data, names)
        p, base = start_backupd(self.work, "backupd-rss", data)
        self.procs.append(p)
        worker = worker_of(p.pid)
        settle()
        secs, outs = concurrent([backupd_cmd(base, n, secrets[n], self.big, self.big_b64) for n in names])
        for n, out in zip(names, outs):
            check_backupd(out, f"RSS phase POST by {n}", BIG, self.big_hex)
        hwm = {pid: status_kib(pid, "VmHWM") / 1024 for pid in pids_of(p.pid)}
        stop([p])
        shutil.rmtree(data, ignore_errors=True)
        return {"worker": hwm.get(worker, 0.0), "supervisor": hwm.get(p.pid, 0.0), "max": max(hwm.values()),
                "gbps": STREAMS * BIG / secs / 1e9}

    def setup(self):
        w = self.work
        self.big = os.path.join(w, "big.bin")
        self.big_hex, self.big_b64 = make_source(self.big, BIG)
        if PART == BIG:
            self.part, self.part_hex, self.part_b64 = self.big, self.big_hex, self.big_b64
        else:
            self.part = os.path.join(w, "part.bin")
            self.part_hex, self.part_b64 = make_source(self.part, PART)
        data = os.path.join(w, "backupd")
        self.secrets = add_systems(data, [f"fw{i}" for i in range(STREAMS)])
        self.backupd, self.base = start_backupd(w, "backupd", data)
        self.procs.append(self.backupd)
        # HTTPS: a second backupd with its own data directory, same filesystem.
        cert, key = os.path.join(w, "cert.pem"), os.path.join(w, "key.pem")
        subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                        "-keyout", key, "-out", cert, "-days", "2", "-subj", "/CN=localhost",
                        "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"], check=True, capture_output=True)
        tls_data = os.path.join(w, "backupd-tls")
        self.tls_secret = add_systems(tls_data, ["fw0"])["fw0"]
        self.backupd_tls, self.tls_base = start_backupd(w, "backupd-tls", tls_data, ("--tls-cert", cert, "--tls-key", key))
        self.procs.append(self.backupd_tls)
        self.nginx, self.nginx_url = start_nginx(w, self.secrets)
        self.procs.append(self.nginx)
        settle()

    def measure(self):
        singles = [
            ("backupd", lambda: self.backupd_single(
                "backupd POST", self.backupd, self.base, self.secrets["fw0"], ("--http1.1",), "1.1")),
            ("nginx", self.nginx_single),
            ("dd", self.dd_single),
            # backupd writes with O_DIRECT: dd the same way, for reference
            # (the page-cache copy dd's figure includes varies a lot on a VM).
            ("dd-direct", lambda: self.dd_single(("oflag=direct",))),
            ("sha256", self.sha256_single),
            ("backupd-https", lambda: self.backupd_single(
                "backupd POST over HTTPS", self.backupd_tls, self.tls_base, self.tls_secret, ("-k", "--http1.1"), "1.1")),
            ("backupd-h2c", lambda: self.backupd_single(
                "backupd POST over h2c", self.backupd, self.base, self.secrets["fw0"], ("--http2-prior-knowledge",), "2")),
            ("backupd-h2-tls", lambda: self.backupd_single(
                "backupd POST over h2 (TLS)", self.backupd_tls, self.tls_base, self.tls_secret, ("-k", "--http2"), "2")),
        ]
        multis = [("backupd", self.backupd_multi), ("nginx", self.nginx_multi)]
        single = {n: [] for n, _ in singles}
        multi = {n: [] for n, _ in multis}
        for rep in range(REPS):
            # The servers take turns, in an order rotated each repetition, so
            # that the machine's drift lands on all of them alike.
            for table, turns in ((single, singles), (multi, multis)):
                k = rep % len(turns)
                for name, fn in turns[k:] + turns[:k]:
                    settle()
                    r = fn()
                    table[name].append(r)
                    kind = "single" if table is single else f"{STREAMS} concurrent"
                    print(f"repetition {rep + 1}, {kind}, {name}: "
                          + ", ".join(f"{k2} {v:.3f}" for k2, v in r.items()), flush=True)
        med = lambda runs, key: statistics.median(r[key] for r in runs)
        return ({n: {k: med(v, k) for k in v[0]} for n, v in single.items()},
                {n: {"gbps": med(v, "gbps"), "cpu": med(v, "cpu")} for n, v in multi.items()})


def report(single, multi, rss):
    b, ng, dd = single["backupd"], single["nginx"], single["dd"]
    big = size_label(BIG)

    def row(label, val, ref, higher_better, target, fmt="{:.3g}", tgt=None):
        ratio = val / ref if ref else None
        if target is None:
            met = "report only"
        else:
            met = "yes" if (ratio >= target if higher_better else ratio <= target) else "NO"
        tgt = tgt or ("-" if target is None else (f">= {target:.1f}x" if higher_better else f"<= {target:.1f}x"))
        return (f"| {label} | {fmt.format(val)} | {fmt.format(ref) if ref is not None else '-'} | "
                f"{f'{ratio:.2f}x' if ratio is not None else '-'} | {tgt} | {met} |")

    cpu_model = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
    lines = [
        f"Run {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, nproc {os.cpu_count()}, {cpu_model}, "
        f"{'quick' if QUICK else 'full'} mode, median of {REPS} (servers take turns). backupd answers after "
        "fsync; nginx's WebDAV PUT does not fsync; dd is `bs=1M conv=fsync`. All on one filesystem.",
        "",
        "| figure | backupd | reference | ratio | target | met? |",
        "|---|---|---|---|---|---|",
        row(f"single {big} upload, GB/s (ref: nginx PUT)", b["gbps"], ng["gbps"], True, 0.9),
        row(f"single {big} upload, GB/s (ref: dd conv=fsync)", b["gbps"], dd["gbps"], True, 0.8),
        row(f"{STREAMS} concurrent {size_label(PART)} uploads, {STREAMS} systems, aggregate GB/s (ref: nginx)",
            multi["backupd"]["gbps"], multi["nginx"]["gbps"], True, 1.0),
        row(f"CPU seconds per GiB received, single upload (ref: nginx)", b["cpu"], ng["cpu"], False, 1.0),
        row(f"peak RSS (VmHWM) of the worker, {STREAMS} concurrent {big} uploads, MiB (ref: the target)",
            rss["worker"], RSS_TARGET_MIB, False, 1.0, tgt=f"<= {RSS_TARGET_MIB} MiB"),
        row(f"  same, largest of its processes (supervisor {rss['supervisor']:.1f} MiB), MiB",
            rss["max"], None, False, None),
        row(f"  aggregate GB/s of that phase ({STREAMS} x {big})", rss["gbps"], None, True, None),
        row(f"CPU seconds per GiB, {STREAMS} concurrent uploads (ref: nginx)",
            multi["backupd"]["cpu"], multi["nginx"]["cpu"], False, None),
        row(f"CPU seconds per GiB, single upload (ref: dd itself)", b["cpu"], dd["cpu"], False, None),
        row(f"CPU seconds per GiB, single upload (ref: nginx's plus `openssl dgst -sha256` of the file, "
            f"{single['sha256']['cpu']:.2f}: the SHA-256 backupd computes and nginx does not)",
            b["cpu"], ng["cpu"] + single["sha256"]["cpu"], False, None),
        row(f"single {big} upload, GB/s (ref: dd oflag=direct conv=fsync, as backupd writes)",
            b["gbps"], single["dd-direct"]["gbps"], True, None),
        row(f"single {big} upload over HTTPS (HTTP/1.1, TLS 1.3), GB/s (ref: backupd plain HTTP/1.1)",
            single["backupd-https"]["gbps"], b["gbps"], True, None),
        row(f"  its CPU seconds per GiB (ref: plain HTTP/1.1)", single["backupd-https"]["cpu"], b["cpu"], False, None),
        row(f"single {big} upload over HTTP/2 cleartext (prior knowledge), GB/s (ref: HTTP/1.1)",
            single["backupd-h2c"]["gbps"], b["gbps"], True, None),
        row(f"single {big} upload over HTTP/2 over TLS, GB/s (ref: HTTP/1.1)",
            single["backupd-h2-tls"]["gbps"], b["gbps"], True, None),
    ]
    table = "\n".join(lines)
    print(table)
    if OUT:
        command = os.environ.get("BENCH_COMMAND") or "python3 " + " ".join(sys.argv)
        with open(OUT, "a") as f:
            f.write(f"\n## Upload benchmark ({time.strftime('%Y-%m-%d', time.gmtime())})\n\n"
                    f"`{command}`; backupd binary `{BIN}`; work directory on "
                    f"`{os.path.realpath(os.environ.get('BENCH_DIR') or tempfile.gettempdir())}`."
                    + (f" {os.environ['BENCH_NOTE']}" if os.environ.get("BENCH_NOTE") else "") + "\n\n"
                    + table + "\n")


# --- profile ---------------------------------------------------------------

def profile(work, outdir):
    """One upload under perf, one under strace -c, one under strace -y (sizes)."""
    os.makedirs(outdir, exist_ok=True)
    b = Bench(work)
    b.big = os.path.join(work, "big.bin")
    b.big_hex, b.big_b64 = make_source(b.big, BIG)
    data = os.path.join(work, "backupd")
    secrets = add_systems(data, ["fw0"])
    p, base = start_backupd(work, "backupd", data)
    b.procs.append(p)
    worker = worker_of(p.pid)
    try:
        def one(label):
            settle()
            out = run_curl(backupd_cmd(base, "fw0", secrets["fw0"], b.big, b.big_b64, ("--http1.1",)))
            secs, bid = check_backupd(out, label, BIG, b.big_hex)
            delete_backup(base, "fw0", secrets["fw0"], bid)
            print(f"{label}: {BIG / secs / 1e9:.3f} GB/s", flush=True)

        one("warm-up upload")
        # perf
        pdata = os.path.join(outdir, "perf.data")
        settle()
        rec = subprocess.Popen(["perf", "record", "-q", "-e", "cpu-clock", "-g", "-o", pdata, "-p", str(worker)],
                               stderr=subprocess.DEVNULL)
        time.sleep(1)
        one("upload under perf record")
        rec.send_signal(signal.SIGINT)
        rec.wait(timeout=120)
        for name, extra in (("perf-report.txt", []), ("perf-flat.txt", ["-g", "none", "--percent-limit", "0.3"]),
                            ("perf-threads.txt", ["-g", "none", "--sort", "comm"]),
                            ("perf-dso.txt", ["-g", "none", "--sort", "dso"])):
            txt = subprocess.run(["perf", "report", "-i", pdata, "--stdio", "--no-children", *extra],
                                 capture_output=True, text=True).stdout
            open(os.path.join(outdir, name), "w").write(txt)
        # strace -c: counts (the upload is much slower under strace)
        sc = os.path.join(outdir, "strace-c.txt")
        tr = subprocess.Popen(["strace", "-c", "-f", "-p", str(worker), "-o", sc], stderr=subprocess.DEVNULL)
        time.sleep(1)
        one("upload under strace -c")
        tr.send_signal(signal.SIGINT)
        tr.wait(timeout=120)
        # strace -y: sizes of socket reads and file writes
        log = os.path.join(work, "strace.log")
        tr = subprocess.Popen(["strace", "-f", "-qq", "-y", "-T", "-s", "0", "-p", str(worker), "-o", log,
                               "-e", "trace=read,readv,recvfrom,recvmsg,write,writev,pwrite64,pwritev,fsync,fdatasync,sendto,sendmsg"],
                              stderr=subprocess.DEVNULL)
        time.sleep(1)
        one("upload under strace -y")
        tr.send_signal(signal.SIGINT)
        tr.wait(timeout=120)
        sizes = size_histogram(log)
        open(os.path.join(outdir, "strace-sizes.txt"), "w").write(sizes)
        print(f"\nper {size_label(BIG)} upload (strace -c -f, {sc}):")
        print(open(sc).read())
        print(f"sizes and time inside the calls (strace -y -T):\n{sizes}")
        print(f"perf (flat, {outdir}/perf-flat.txt):")
        print("\n".join(open(os.path.join(outdir, "perf-flat.txt")).read().splitlines()[:60]))
    finally:
        stop(b.procs)


def size_histogram(log):
    """Per (syscall, fd kind): calls, bytes, and the commonest return values."""
    pending, stats = {}, {}
    call = re.compile(r"^(\d+)\s+(\w+)\((\d+)<([^>]*)>")
    ret = re.compile(r"=\s+(-?\d+)")
    took = re.compile(r"<(\d+\.\d+)>\s*$")
    resumed = re.compile(r"^(\d+)\s+<\.\.\. (\w+) resumed>")
    for line in open(log, errors="replace"):
        m = call.match(line)
        if m:
            pid, name, _, what = m.groups()
            kind = "socket" if what.startswith(("TCP", "socket", "UNIX")) else ("file" if what.startswith("/") else what.split(":")[0])
            if line.rstrip().endswith("<unfinished ...>"):
                pending[pid] = (name, kind)
                continue
        else:
            m = resumed.match(line)
            if not m or m.group(1) not in pending:
                continue
            name, kind = pending.pop(m.group(1))
        r = ret.search(line.rsplit(")", 1)[-1]) if ")" in line else None
        if not r:
            continue
        n = int(r.group(1))
        s = stats.setdefault((name, kind), {"calls": 0, "bytes": 0, "errors": 0, "sizes": {}, "secs": 0.0, "max": 0.0})
        s["calls"] += 1
        t = took.search(line)
        if t:
            s["secs"] += float(t.group(1))
            s["max"] = max(s["max"], float(t.group(1)))
        if n < 0:
            s["errors"] += 1
        else:
            s["bytes"] += n
            s["sizes"][n] = s["sizes"].get(n, 0) + 1
    out = []
    for (name, kind), s in sorted(stats.items(), key=lambda kv: -kv[1]["calls"]):
        common = sorted(s["sizes"].items(), key=lambda kv: -kv[1])[:5]
        avg = s["bytes"] / max(1, s["calls"] - s["errors"])
        out.append(f"{name:10} {kind:8} calls {s['calls']:8}  errors {s['errors']:6}  bytes {s['bytes']:12}  "
                   f"mean {avg:9.0f}  in calls {s['secs']:7.3f} s (longest {s['max'] * 1000:.1f} ms)  commonest "
                   + ", ".join(f"{k}x{v}" for k, v in common))
    return "\n".join(out) + "\n"


def main():
    work = tempfile.mkdtemp(prefix="backupd-upload-bench-", dir=os.environ.get("BENCH_DIR") or None)
    try:
        if PROFILE:
            profile(work, os.path.abspath(PROFILE))
            return
        b = Bench(work)
        try:
            b.setup()
            single, multi = b.measure()
            stop(b.procs)
            b.procs = []
            rss = b.rss_phase()
        finally:
            stop(b.procs)
        report(single, multi, rss)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
