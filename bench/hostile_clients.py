#!/usr/bin/env python3
"""Hostile clients for bench/load.sh (loopback only, bounded, no dependencies).

  slow HOST PORT AUTH       1,000 half-sent heads + 1,000 non-readers of a big
                            backup, while timing real requests; then checks
                            the server closes the stalled sockets.
  h2flood HOST PORT AUTH    HTTP/2 rapid reset and a CONTINUATION flood, while
                            timing real requests on other connections.

AUTH is a full Authorization value for a system whose SMALL and BIG ids exist.
"""

import resource
import socket
import statistics
import struct
import sys
import threading
import time

SMALL = "/api/systems/backups/01934fab-bc33-7890-a1b2-c3d4e5f6a7b8.bin"
BIG = "/api/systems/backups/01934fab-bc33-7890-a1b2-c3d4e5f6a7ba.bin"


def raise_nofile():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def real_requests(addr, auth, n, out, stop=None):
    """n sequential GETs of the small backup, each on a new connection."""
    req = f"GET {SMALL} HTTP/1.1\r\nHost: b\r\nAuthorization: {auth}\r\nConnection: close\r\n\r\n".encode()
    for _ in range(n):
        if stop is not None and stop.is_set():
            break
        t0 = time.perf_counter()
        try:
            s = socket.create_connection(addr, timeout=10)
            s.sendall(req)
            buf = b""
            while True:
                d = s.recv(65536)
                if not d:
                    break
                buf += d
            s.close()
            ok = buf.startswith(b"HTTP/1.1 200 ")
        except OSError:
            ok = False
        out.append((ok, (time.perf_counter() - t0) * 1000))


def summary(label, results):
    oks = [ms for ok, ms in results if ok]
    fails = len(results) - len(oks)
    if oks:
        q = statistics.quantiles(oks, n=100) if len(oks) > 1 else [oks[0]] * 99
        print(f"{label}: {len(oks)} ok, {fails} failed, p50 {statistics.median(oks):.2f} ms, p99 {q[98]:.2f} ms")
    else:
        print(f"{label}: 0 ok, {fails} failed")
    return fails


def closed_by_server(s):
    """True if the peer closed (EOF or reset); never blocks."""
    s.setblocking(False)
    try:
        d = s.recv(1 << 20, socket.MSG_PEEK)
        if d == b"":
            return True
        # Data is pending (a non-reader's body): drain a little and look again.
        return False
    except BlockingIOError:
        return False
    except OSError:
        return True


def drain_until_closed(s, limit_bytes=1 << 30):
    s.setblocking(False)
    got = 0
    try:
        while got < limit_bytes:
            d = s.recv(1 << 20)
            if not d:
                return True
            got += len(d)
    except BlockingIOError:
        return False
    except OSError:
        return True
    return False


def slow(host, port, auth):
    raise_nofile()
    addr = (host, port)
    base = []
    real_requests(addr, auth, 200, base)
    fails = summary("baseline real requests", base)

    half = []
    for _ in range(1000):
        s = socket.create_connection(addr)
        s.sendall(b"GET /api/systems/backups/x HTTP/1.1\r\nHost: b\r\nAuthoriz")
        half.append(s)
    readers = []
    req = f"GET {BIG} HTTP/1.1\r\nHost: b\r\nAuthorization: {auth}\r\n\r\n".encode()
    for _ in range(1000):
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.connect(addr)
        s.sendall(req)
        readers.append(s)
    t_open = time.time()
    print("opened 1000 half-sent heads and 1000 non-readers")
    during = []
    real_requests(addr, auth, 200, during)
    fails += summary("real requests while stalled", during)

    # The header-read timeout (15 s) must shed the half heads.
    while time.time() - t_open < 17:
        time.sleep(0.5)
    closed_half = sum(closed_by_server(s) for s in half)
    print(f"after {time.time() - t_open:.0f} s: {closed_half}/1000 half-sent heads closed by the server")
    # The idle timeout (60 s without a byte moving) must shed the non-readers.
    while time.time() - t_open < 64:
        time.sleep(1)
    closed_readers = sum(drain_until_closed(s, 256 << 20) for s in readers)
    print(f"after {time.time() - t_open:.0f} s: {closed_readers}/1000 non-readers closed by the server")
    after = []
    real_requests(addr, auth, 100, after)
    fails += summary("real requests afterwards", after)
    for s in half + readers:
        s.close()
    ok = fails == 0 and closed_half == 1000 and closed_readers == 1000
    print("slow clients:", "PASS" if ok else "FAIL")
    return ok


# --- HTTP/2 by hand: just enough framing and HPACK to misbehave. ---

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, RST_STREAM, SETTINGS, PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = 0, 1, 3, 4, 6, 7, 8, 9
END_STREAM, END_HEADERS, ACK = 0x1, 0x4, 0x1


def frame(kind, flags, stream, payload=b""):
    return struct.pack(">I", len(payload))[1:] + bytes([kind, flags]) + struct.pack(">I", stream) + payload


def hpack_int(value, prefix_bits, first=0):
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes([first | value])
    out = [first | limit]
    value -= limit
    while value >= 128:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def hpack_literal(index, value):
    """Literal header field without indexing, name from the static table."""
    v = value.encode()
    return hpack_int(index, 4) + hpack_int(len(v), 7) + v


def request_block(path, auth):
    # :method GET (2), :scheme http (6), :path (4), :authority (1), authorization (23)
    return b"\x82\x86" + hpack_literal(4, path) + hpack_literal(1, "b") + hpack_literal(23, auth)


def h2_connect(addr):
    s = socket.create_connection(addr, timeout=10)
    s.sendall(PREFACE + frame(SETTINGS, 0, 0))
    return s


class Reader(threading.Thread):
    """Reads and parses server frames; acks SETTINGS, notes GOAWAY and close."""

    def __init__(self, s):
        super().__init__(daemon=True)
        self.s, self.goaway, self.closed, self.frames = s, None, False, 0

    def run(self):
        buf = b""
        try:
            while True:
                d = self.s.recv(65536)
                if not d:
                    break
                buf += d
                while len(buf) >= 9:
                    n = int.from_bytes(buf[:3], "big")
                    if len(buf) < 9 + n:
                        break
                    kind, flags = buf[3], buf[4]
                    payload = buf[9:9 + n]
                    buf = buf[9 + n:]
                    self.frames += 1
                    if kind == SETTINGS and not flags & ACK:
                        self.s.sendall(frame(SETTINGS, ACK, 0))
                    elif kind == GOAWAY and self.goaway is None:
                        last, code = struct.unpack(">II", payload[:8])
                        self.goaway = (last & 0x7FFFFFFF, code)
        except OSError:
            pass
        self.closed = True


def rapid_reset(addr, auth, streams=200_000):
    s = h2_connect(addr)
    r = Reader(s)
    r.start()
    block = request_block(SMALL, auth)
    sent = 0
    t0 = time.time()
    try:
        batch = []
        for i in range(streams):
            sid = 2 * i + 1
            batch.append(frame(HEADERS, END_STREAM | END_HEADERS, sid, block))
            batch.append(frame(RST_STREAM, 0, sid, struct.pack(">I", 8)))  # CANCEL
            if len(batch) >= 200:
                s.sendall(b"".join(batch))
                sent += len(batch) // 2
                batch = []
                if r.closed:
                    break
    except OSError:
        pass
    r.join(timeout=5)
    s.close()
    print(f"rapid reset: sent {sent} HEADERS+RST_STREAM pairs in {time.time() - t0:.1f} s; "
          f"server GOAWAY {r.goaway} (code 11 = ENHANCE_YOUR_CALM), connection closed: {r.closed}")
    return r


def continuation_flood(addr, auth, limit=64 << 20):
    s = h2_connect(addr)
    r = Reader(s)
    r.start()
    # Literal with a new name: 0x00, name, value; repeated "x-flood: aaaa".
    field = b"\x00" + hpack_int(7, 7) + b"x-flood" + hpack_int(4000, 7) + b"a" * 4000
    sent = 0
    t0 = time.time()
    try:
        s.sendall(frame(HEADERS, END_STREAM, 1, request_block(SMALL, auth)))
        chunk = frame(CONTINUATION, 0, 1, field * 4)
        while sent < limit and not r.closed:
            s.sendall(chunk)
            sent += len(chunk)
    except OSError:
        pass
    r.join(timeout=5)
    s.close()
    print(f"CONTINUATION flood: server stopped it after {sent / 1024:.0f} KiB in {time.time() - t0:.1f} s; "
          f"GOAWAY {r.goaway}, connection closed: {r.closed}")
    return r, sent


def h2flood(host, port, auth):
    addr = (host, port)
    others = []
    stop = threading.Event()
    t = threading.Thread(target=real_requests, args=(addr, auth, 100_000, others, stop))
    t.start()
    rr = rapid_reset(addr, auth)
    cf, sent = continuation_flood(addr, auth)
    stop.set()
    t.join()
    fails = summary("real requests during the floods", others)
    after = []
    real_requests(addr, auth, 50, after)
    fails += summary("real requests afterwards", after)
    ok = fails == 0 and rr.closed and cf.closed and sent < (64 << 20)
    print("http/2 floods:", "PASS" if ok else "FAIL")
    return ok


if __name__ == "__main__":
    mode, host, port, auth = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    ok = {"slow": slow, "h2flood": h2flood}[mode](host, port, auth)
    sys.exit(0 if ok else 1)
