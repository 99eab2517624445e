#!/usr/bin/env python3
"""Hostile-client probes against a real tidegate binary, for before/after
figures (the "No single client, backend or config may take a pool down"
issue). Loopback only; every process it starts is ended by its PID; each
probe is bounded in time.

    benches/e2e/hostile.py [--bin target/release/tidegate] [--legacy]
                           [--probe NAME ...] [--wait SECONDS]

--legacy writes configs without the keys older builds refuse (the timeout
keys), to measure a build from before them. Without it the probes set the
new timeouts to 5 s so the "after" figure does not take the 60 s default.

Probes (each on a fresh tidegate and fresh `tidegate backend` processes):
  slow_readers   16 HTTP/1.1 clients GET 100 MB and never read; pool of 16 slots
  h2_zero_window one HTTP/2 connection, INITIAL_WINDOW_SIZE 0, 256 streams; 128 slots
  idle_tunnels   128 WebSocket tunnels that send nothing; 128 slots
  stalled_body   a backend that sends its head and stalls; 4 clients
  aborted_uploads 12 uploads (Content-Length 1,000,000, 20 KB sent, close)
  slow_reader_rss 400 HTTP/1.1 clients GET 1 MB and never read: RSS growth
Each prints one JSON line.
"""

import argparse
import json
import os
import socket
import struct
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.abspath(__file__)) + "/../.."


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class Rig:
    """tidegate + backends on loopback, ended by PID."""

    def __init__(self, binary, backends, pool_extra, top_extra, backend_args=()):
        self.procs = []
        self.dir = tempfile.mkdtemp(prefix="tidegate-hostile.")
        self.backend_ports = []
        for _ in range(backends):
            port = free_port()
            self.backend_ports.append(port)
            self.procs.append(
                subprocess.Popen(
                    [binary, "backend", "--listen", f"127.0.0.1:{port}", "--threads", "1", *backend_args],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
        self.web, self.admin = free_port(), free_port()
        members = ", ".join(f'{{ address = "127.0.0.1:{p}" }}' for p in self.backend_ports)
        config = f"""{top_extra}
[admin]
listen = "127.0.0.1:{self.admin}"
[[listener]]
name = "web"
listen = "127.0.0.1:{self.web}"
[pools.shop]
{pool_extra}
backends = [ {members} ]
"""
        path = os.path.join(self.dir, "tidegate.toml")
        with open(path, "w") as f:
            f.write(config)
        self.proxy = subprocess.Popen(
            [binary, "run", "--config", path],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env={**os.environ, "NO_COLOR": "1"},
        )
        self.procs.append(self.proxy)
        for port in [self.web, self.admin] + self.backend_ports:
            wait_port(port)

    def stats(self):
        with urllib.request.urlopen(f"http://127.0.0.1:{self.admin}/stats", timeout=5) as r:
            return json.load(r)

    def in_flight(self):
        return self.stats()["pools"][0]["in_flight"]

    def rss_kib(self):
        with open(f"/proc/{self.proxy.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        return 0

    def get_status(self, path="/products/1", timeout=10):
        s = socket.create_connection(("127.0.0.1", self.web), timeout=timeout)
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n".encode())
        started = time.time()
        data = s.recv(64)
        s.close()
        return data[9:12].decode(errors="replace"), time.time() - started

    def close(self):
        for p in self.procs:
            p.kill()
        for p in self.procs:
            p.wait()


def wait_port(port, seconds=10):
    deadline = time.time() + seconds
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"nothing listens on {port}")


def held_for(rig, wait, busy):
    """Seconds until in-flight drops to 0 (None: still held after `wait`),
    with the status a fresh request got while the slots were held."""
    deadline = time.time() + 10
    while rig.in_flight() < busy and time.time() < deadline:
        time.sleep(0.05)
    peak = rig.in_flight()
    start = time.time()
    probe, probe_s = rig.get_status(timeout=15)
    while time.time() - start < wait:
        if rig.in_flight() == 0:
            return peak, round(time.time() - start, 1), probe, round(probe_s, 2)
        time.sleep(0.25)
    return peak, None, probe, round(probe_s, 2)


def slow_readers(binary, legacy, wait):
    top = "" if legacy else '[limits]\nclient_send_timeout = "5s"\n'
    rig = Rig(binary, 1, "max_concurrency = 16\nqueue = { max_depth = 100, timeout = \"2s\" }", top)
    try:
        socks = []
        for _ in range(16):
            s = socket.create_connection(("127.0.0.1", rig.web))
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            s.sendall(b"GET /bytes/100000000 HTTP/1.1\r\nHost: a\r\n\r\n")
            socks.append(s)
        peak, freed_after, probe, probe_s = held_for(rig, wait, 16)
        return {"probe": "slow_readers", "slots_held": peak, "freed_after_s": freed_after,
                "fresh_request_status": probe, "fresh_request_s": probe_s}
    finally:
        rig.close()


def h2_frame(kind, flags, stream, payload=b""):
    return struct.pack(">I", len(payload))[1:] + bytes([kind, flags]) + struct.pack(">I", stream) + payload


def h2_headers(fields):
    out = b""
    for name, value in fields:
        out += b"\x00" + bytes([len(name)]) + name + bytes([len(value)]) + value
    return out


def h2_zero_window(binary, legacy, wait):
    top = "" if legacy else '[limits]\nclient_send_timeout = "5s"\n'
    rig = Rig(binary, 2, "max_concurrency = 64\nqueue = { max_depth = 1000, timeout = \"2s\" }", top)
    try:
        s = socket.create_connection(("127.0.0.1", rig.web))
        s.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        s.sendall(h2_frame(4, 0, 0, struct.pack(">HI", 4, 0)))  # INITIAL_WINDOW_SIZE = 0
        block = h2_headers([(b":method", b"GET"), (b":scheme", b"http"), (b":path", b"/bytes/1000000"),
                            (b":authority", b"a")])
        for i in range(256):
            s.sendall(h2_frame(1, 0x5, 1 + 2 * i, block))
        peak, freed_after, probe, probe_s = held_for(rig, wait, 128)
        return {"probe": "h2_zero_window", "slots_held": peak, "freed_after_s": freed_after,
                "fresh_request_status": probe, "fresh_request_s": probe_s}
    finally:
        rig.close()


def idle_tunnels(binary, legacy, wait):
    top = "" if legacy else '[limits]\ntunnel_idle_timeout = "5s"\n'
    rig = Rig(binary, 2, "max_concurrency = 64\nqueue = { max_depth = 1000, timeout = \"2s\" }", top)
    try:
        socks = []
        for _ in range(128):
            s = socket.create_connection(("127.0.0.1", rig.web))
            s.sendall(b"GET /upgrade HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n")
            socks.append(s)
        peak, freed_after, probe, probe_s = held_for(rig, wait, 128)
        return {"probe": "idle_tunnels", "slots_held": peak, "freed_after_s": freed_after,
                "fresh_request_status": probe, "fresh_request_s": probe_s}
    finally:
        rig.close()


def stalled_body(binary, legacy, wait):
    """A backend that answers with a head and part of the body, then stalls."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(64)
    port = srv.getsockname()[1]
    import threading

    conns = []

    def serve():
        while True:
            try:
                c, _ = srv.accept()
            except OSError:
                return
            conns.append(c)
            try:
                c.recv(65536)
                c.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\npartial")
            except OSError:
                pass

    threading.Thread(target=serve, daemon=True).start()
    pool = "max_concurrency = 4\nqueue = { max_depth = 100, timeout = \"2s\" }\n"
    if not legacy:
        pool += 'timeouts = { read = "5s" }\n'
    rig = RigAt(binary, port, pool)
    try:
        clients = []
        for _ in range(4):
            s = socket.create_connection(("127.0.0.1", rig.web))
            s.sendall(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
            clients.append(s)
        peak, freed_after, probe, probe_s = held_for(rig, wait, 4)
        return {"probe": "stalled_body", "slots_held": peak, "freed_after_s": freed_after,
                "fresh_request_status": probe, "fresh_request_s": probe_s}
    finally:
        rig.close()
        srv.close()


class RigAt(Rig):
    """A tidegate in front of one backend that is already listening."""

    def __init__(self, binary, port, pool_extra):
        self.procs = []
        self.dir = tempfile.mkdtemp(prefix="tidegate-hostile.")
        self.backend_ports = [port]
        self.web, self.admin = free_port(), free_port()
        path = os.path.join(self.dir, "tidegate.toml")
        with open(path, "w") as f:
            f.write(f"""[admin]
listen = "127.0.0.1:{self.admin}"
[[listener]]
name = "web"
listen = "127.0.0.1:{self.web}"
[pools.shop]
{pool_extra}
backends = [ {{ address = "127.0.0.1:{port}" }} ]
""")
        self.proxy = subprocess.Popen([binary, "run", "--config", path], stdout=subprocess.DEVNULL,
                                      stderr=subprocess.DEVNULL)
        self.procs.append(self.proxy)
        for p in [self.web, self.admin]:
            wait_port(p)


def aborted_uploads(binary, legacy, wait):
    rig = Rig(binary, 1, "", "")
    try:
        for _ in range(12):
            s = socket.create_connection(("127.0.0.1", rig.web))
            s.sendall(b"POST /cart HTTP/1.1\r\nHost: a\r\nContent-Length: 1000000\r\n\r\n")
            s.sendall(b"x" * 20000)
            s.close()
        time.sleep(1)
        b = rig.stats()["pools"][0]["backends"][0]
        probe, _ = rig.get_status()
        return {"probe": "aborted_uploads", "backend_state": b["state"], "ejections": b["health"]["ejections"],
                "fresh_request_status": probe}
    finally:
        rig.close()


def slow_reader_rss(binary, legacy, wait):
    rig = Rig(binary, 4, "max_concurrency = 200\nqueue = { max_depth = 1000, timeout = \"30s\" }",
              '[limits]\nmax_connections = 2000\n')
    try:
        time.sleep(0.5)
        base = rig.rss_kib()
        socks = []
        for _ in range(400):
            s = socket.create_connection(("127.0.0.1", rig.web))
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            s.sendall(b"GET /bytes/1000000 HTTP/1.1\r\nHost: a\r\n\r\n")
            socks.append(s)
        time.sleep(3)
        peak = rig.rss_kib()
        return {"probe": "slow_reader_rss", "clients": 400, "rss_before_mib": round(base / 1024, 1),
                "rss_with_slow_readers_mib": round(peak / 1024, 1),
                "per_client_kib": round((peak - base) / 400, 1)}
    finally:
        rig.close()


PROBES = {f.__name__: f for f in [slow_readers, h2_zero_window, idle_tunnels, stalled_body, aborted_uploads,
                                  slow_reader_rss]}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default=os.path.join(ROOT, "target/release/tidegate"))
    ap.add_argument("--legacy", action="store_true")
    ap.add_argument("--probe", action="append", choices=sorted(PROBES))
    ap.add_argument("--wait", type=float, default=30.0, help="seconds to wait for held slots to be freed")
    args = ap.parse_args()
    for name in args.probe or list(PROBES):
        print(json.dumps(PROBES[name](args.bin, args.legacy, args.wait)), flush=True)


if __name__ == "__main__":
    sys.exit(main())
