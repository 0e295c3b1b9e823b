"""The real process: ``meshproxy run`` with SIGTERM drain, ``wait-ready``, and start errors."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest
from e2e_support import free_port

MESHPROXY = [sys.executable, "-m", "meshproxy"]


class SlowServer(threading.Thread):
    """Sends ``chunks`` × 64 KiB, one chunk every ``interval`` seconds, to every client."""

    def __init__(self, chunks: int, interval: float):
        super().__init__(daemon=True)
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen()
        self.port = self.sock.getsockname()[1]
        self.chunks, self.interval = chunks, interval

    def run(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self.serve, args=(conn,), daemon=True).start()

    def serve(self, conn):
        with conn:
            try:
                for i in range(self.chunks):
                    conn.sendall(bytes([i % 256]) * 65536)
                    time.sleep(self.interval)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the proxy cut the transfer (drain timeout test): expected


@pytest.fixture
def proc_config(tmp_path):
    ports = {k: free_port() for k in ("admin", "health", "prom", "web")}

    def write(upstream_port: int, drain: str = "3s", exit_on_zero: bool = False):
        p = tmp_path / "mesh.yaml"
        p.write_text(f"""
inbound: {{enabled: false}}
outbound: {{enabled: false}}
admin: {{port: {ports['admin']}}}
health: {{address: 127.0.0.1, port: {ports['health']}}}
prometheus: {{address: 127.0.0.1, port: {ports['prom']}}}
drain: {{duration: {drain}, exit_on_zero_active_connections: {str(exit_on_zero).lower()}}}
listeners:
  - {{name: web, port: {ports['web']}, protocol: tcp, upstream: "127.0.0.1:{upstream_port}"}}
""")
        return p, ports

    return write


def start(config) -> subprocess.Popen:
    proc = subprocess.Popen([*MESHPROXY, "run", "--config", str(config)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    rc = subprocess.run([*MESHPROXY, "wait-ready", "--config", str(config), "--timeout", "10"]).returncode
    if rc != 0:
        proc.kill()
        raise AssertionError(f"not ready: {proc.communicate(timeout=5)}")
    return proc


def read_all(sock) -> bytes:
    out = bytearray()
    while chunk := sock.recv(1 << 16):
        out += chunk
    return bytes(out)


@pytest.mark.parametrize("exit_on_zero", [False, True])
def test_sigterm_drains_in_flight_and_refuses_new(proc_config, exit_on_zero):
    server = SlowServer(chunks=15, interval=0.1)  # ~1.5 s transfer
    server.start()
    config, ports = proc_config(server.port, drain="4s", exit_on_zero=exit_on_zero)
    proc = start(config)
    try:
        client = socket.create_connection(("127.0.0.1", ports["web"]), timeout=10)
        first = client.recv(1)  # the transfer is in flight
        assert first == b"\x00"
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", ports["web"]), timeout=2)
        data = first + read_all(client)
        client.close()
        assert len(data) == 15 * 65536
        assert data == b"".join(bytes([i]) * 65536 for i in range(15))
        assert proc.wait(timeout=10) == 0
        elapsed = time.monotonic() - t0
        if exit_on_zero:
            assert elapsed < 3.5, "should leave as soon as the last connection closed"
        else:
            assert elapsed >= 3.5, "should wait the whole drain duration"
        _, err = proc.communicate(timeout=5)
        assert "Traceback" not in err
    finally:
        if proc.poll() is None:
            proc.kill()


def test_drain_duration_cuts_long_transfers(proc_config):
    server = SlowServer(chunks=100, interval=0.1)  # 10 s: longer than the drain
    server.start()
    config, ports = proc_config(server.port, drain="0.5s", exit_on_zero=True)
    proc = start(config)
    try:
        client = socket.create_connection(("127.0.0.1", ports["web"]), timeout=10)
        assert client.recv(1) == b"\x00"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=5) == 0
        client.settimeout(5)
        try:
            data = read_all(client)
        except ConnectionResetError:
            data = b""
        assert len(data) < 99 * 65536
    finally:
        if proc.poll() is None:
            proc.kill()


def test_wait_ready_times_out_when_nothing_listens():
    port = free_port()
    t0 = time.monotonic()
    proc = subprocess.run([*MESHPROXY, "wait-ready", "--url", f"http://127.0.0.1:{port}/healthz/ready",
                           "--timeout", "0.5"], capture_output=True, text=True, timeout=10)
    assert proc.returncode == 1
    assert "not ready after 0.5s" in proc.stderr
    assert time.monotonic() - t0 < 5


def test_port_in_use_is_a_clear_start_error(proc_config):
    config, ports = proc_config(1)
    blocker = socket.socket()
    blocker.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 0)
    blocker.bind(("127.0.0.1", ports["web"]))
    blocker.listen()
    try:
        proc = subprocess.run([*MESHPROXY, "run", "--config", str(config)], capture_output=True, text=True,
                              timeout=20)
        assert proc.returncode == 1
        assert f"listener web: cannot bind 127.0.0.1:{ports['web']}" in proc.stderr
        assert "Traceback" not in proc.stderr
    finally:
        blocker.close()


def test_runs_on_plain_asyncio_too(proc_config):
    server = SlowServer(chunks=2, interval=0)
    server.start()
    config, ports = proc_config(server.port, drain="0.1s")
    proc = subprocess.Popen([*MESHPROXY, "run", "--config", str(config)], stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "MESHPROXY_LOOP": "asyncio"})
    try:
        assert subprocess.run([*MESHPROXY, "wait-ready", "--config", str(config), "--timeout", "10"]).returncode == 0
        client = socket.create_connection(("127.0.0.1", ports["web"]), timeout=10)
        assert len(read_all(client)) == 2 * 65536
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
        assert "loop: asyncio" in proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
