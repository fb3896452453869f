"""Slowloris and non-reading clients against backupd, with real requests
timed meanwhile. Loopback only; every loop is bounded.

usage: slow_clients.py HOST PORT ADMIN_PORT AUTH_HEADER SMALL_ID BIG_ID

A half request is seen closed from the client (EOF). A non-reader cannot
see the close (the server's FIN waits behind data the client never reads),
so the server's own gauge, backupd_active_connections on the admin
listener, tells whether it let them go.
Prints one RESULT line; exits non-zero if real requests failed or were slow,
or the server did not close the stalled sockets within its timeouts.
"""
import socket, sys, time, statistics, select

host, port, admin_port = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
auth, small_id, big_id = sys.argv[4], sys.argv[5], sys.argv[6]
HALF = 1000        # sockets that send half a request head, then stall
NON_READERS = 1000 # sockets that request a 1 GiB backup and never read
HEADER_TIMEOUT = 15  # backupd's HEADER_READ_TIMEOUT
IDLE_TIMEOUT = 60    # backupd's IDLE_TIMEOUT

def real_request():
    t0 = time.monotonic()
    s = socket.create_connection((host, port), timeout=10)
    s.sendall(f"GET /api/systems/backups/{small_id} HTTP/1.1\r\nHost: x\r\nAuthorization: {auth}\r\nConnection: close\r\n\r\n".encode())
    data = b""
    while True:
        chunk = s.recv(65536)
        if not chunk:
            break
        data += chunk
    s.close()
    ok = data.startswith(b"HTTP/1.1 200")
    return ok, (time.monotonic() - t0) * 1000

baseline = [real_request() for _ in range(50)]
half, non_readers = [], []
for _ in range(HALF):
    s = socket.create_connection((host, port), timeout=10)
    s.sendall(f"GET /api/systems/backups/{small_id} HTTP/1.1\r\nHost: x\r\nAuthori".encode())
    half.append(s)
for _ in range(NON_READERS):
    s = socket.create_connection((host, port), timeout=10)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.sendall(f"GET /api/systems/backups/{big_id} HTTP/1.1\r\nHost: x\r\nAuthorization: {auth}\r\n\r\n".encode())
    non_readers.append(s)
time.sleep(1)
under_attack = [real_request() for _ in range(50)]

def closed_count(socks, limit_s):
    """Waits up to limit_s for the server to close each socket (EOF or reset)."""
    deadline = time.monotonic() + limit_s
    by_fd = {s.fileno(): s for s in socks}
    poller = select.poll()
    for fd in by_fd:
        poller.register(fd, select.POLLIN | select.POLLHUP | select.POLLERR)
    closed = set()
    while time.monotonic() < deadline and len(closed) < len(socks):
        for fd, _ in poller.poll(1000):
            s = by_fd[fd]
            try:
                # A half request gets no response bytes: the first read is the EOF.
                s.recv(4096, socket.MSG_DONTWAIT)
            except BlockingIOError:
                continue
            except OSError:
                pass
            closed.add(fd)
            poller.unregister(fd)
    return len(closed)

def active_connections():
    s = socket.create_connection((host, admin_port), timeout=10)
    s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    data = b""
    while chunk := s.recv(65536):
        data += chunk
    s.close()
    for line in data.decode().splitlines():
        if line.startswith("backupd_active_connections "):
            return int(float(line.split()[1]))
    raise SystemExit("no backupd_active_connections in /metrics")

t_attack = time.monotonic()
during = active_connections()
half_closed = closed_count(half, HEADER_TIMEOUT + 10)
# Non-readers: wait out the idle timeout (counted from their last byte moved).
time.sleep(max(0.0, IDLE_TIMEOUT + 10 - (time.monotonic() - t_attack)))
left = active_connections()
nr_closed = NON_READERS - max(0, left - 1)  # the metrics request itself is one
after = [real_request() for _ in range(20)]
for s in half + non_readers:
    s.close()

def summary(rs):
    lat = [l for _, l in rs]
    return sum(1 for ok, _ in rs if ok), statistics.median(lat), max(lat)

b_ok, b_med, b_max = summary(baseline)
a_ok, a_med, a_max = summary(under_attack)
f_ok, f_med, f_max = summary(after)
print(f"RESULT baseline_ok={b_ok}/50 baseline_p50_ms={b_med:.2f} attack_ok={a_ok}/50 attack_p50_ms={a_med:.2f} attack_max_ms={a_max:.2f} "
      f"half_requests_closed={half_closed}/{HALF} connections_during={during} connections_after_idle_timeout={left} after_ok={f_ok}/20")
failed = a_ok < 50 or f_ok < 20 or half_closed < HALF or nr_closed < NON_READERS or a_med > max(50.0, 10 * b_med)
sys.exit(1 if failed else 0)
