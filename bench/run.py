#!/usr/bin/env python3
"""meshproxy benchmark harness (stdlib only).

    .venv/bin/python bench/run.py [--quick] [--rounds N] [--out bench/RESULTS.md]
                                  [--suite l4|l7|all] [--scenarios a,b] [--keep-tmp]

Structure (see bench/README.md):

* A *suite* is one section of RESULTS.md, made of one or more *tables*: each a list of scenarios, a list of
  measurements, the scenario under test (the subject), the reference scenarios ratios are taken against, the
  baseline for added latency, and targets. All tables of a suite are measured in one run, rounds interleaved.
* A *scenario* knows how to start its proxy processes (pinned to CPU 1), which ports a client hits
  (``http`` for HTTP/1.1 load, ``h2c`` for HTTP/2 prior knowledge, ``bulk`` for iperf3) and which PIDs' process
  trees count as "proxy CPU".
* A *measurement* runs one client (pinned to CPU 0) against one scenario and returns metric values.
* The runner starts the shared upstream (nginx, HTTP/1.1 and h2c ports, + iperf3 server on CPU 0) once, starts every scenario once, then
  runs rounds: for each measurement, each scenario in turn (A B C, A B C, ...), reading the proxy's CPU time,
  /proc/stat steal, and the client's own rusage around every run. Medians and spreads over rounds are reported;
  ratios are the median of per-round ratios (both sides measured minutes apart, under the same steal).

Every process started is recorded and killed by PID in a ``finally`` block; the temp dir is removed.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime as _dt
import importlib.metadata
import json
import os
import platform
import pwd
import random
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from typing import Callable, Iterable

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")

CLIENT_CPU = "0"   # load generator + upstream
PROXY_CPU = "1"    # proxy (or both proxies of a chain)

BODY_SMALL = 1024
BODY_LARGE = 1024 * 1024


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------------------------------------------
# /proc readers
# ----------------------------------------------------------------------------------------------------------------

def _children_map() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat", "rb") as f:
                raw = f.read().decode(errors="replace")
        except OSError:
            continue
        rest = raw[raw.rfind(")") + 2:].split()
        kids.setdefault(int(rest[1]), []).append(int(d))
    return kids


def process_tree(roots: Iterable[int]) -> list[int]:
    """The roots and all their live descendants."""
    kids = _children_map()
    out: list[int] = []
    stack = list(roots)
    while stack:
        p = stack.pop()
        if p in out:
            continue
        out.append(p)
        stack.extend(kids.get(p, []))
    return out


def proc_cpu_ticks(pid: int) -> int:
    """utime+stime of every thread of one process, in clock ticks (0 if gone)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read().decode(errors="replace")
    except OSError:
        return 0
    rest = raw[raw.rfind(")") + 2:].split()
    # fields after "comm": state(3) ppid(4) ... utime(14) stime(15) -> indices 11, 12 in `rest`
    return int(rest[11]) + int(rest[12])


def tree_cpu_ms(roots: Iterable[int]) -> float:
    return sum(proc_cpu_ticks(p) for p in process_tree(roots)) * 1000.0 / CLK_TCK


def _status_kib(pid: int, field: str) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def tree_kib(roots: Iterable[int], field: str) -> int:
    return sum(_status_kib(p, field) for p in process_tree(roots))


@dataclasses.dataclass
class CpuStat:
    """Aggregate and per-CPU jiffies from /proc/stat."""
    rows: dict[str, list[int]]

    @classmethod
    def read(cls) -> "CpuStat":
        rows = {}
        with open("/proc/stat") as f:
            for line in f:
                if line.startswith("cpu"):
                    parts = line.split()
                    rows[parts[0]] = [int(x) for x in parts[1:]]
        return cls(rows)

    def delta(self, later: "CpuStat", cpu: str = "cpu") -> dict[str, float]:
        a, b = self.rows[cpu], later.rows[cpu]
        d = [y - x for x, y in zip(a, b)]
        # user nice system idle iowait irq softirq steal guest guest_nice (guest* already in user/nice)
        total = sum(d[:8]) or 1
        idle = d[3] + d[4]
        return {"steal_pct": 100.0 * d[7] / total, "busy_pct": 100.0 * (total - idle - d[7]) / total,
                "task_pct": 100.0 * (d[0] + d[1] + d[2]) / total, "irq_pct": 100.0 * (d[5] + d[6]) / total}


_WAIT_BUDGET = [0.0]   # seconds left for wait_quiet over the whole run (set in main)


def wait_quiet(limit_pct: float, max_wait: float) -> float:
    """Between runs nothing of ours is busy: wait (bounded) until the machine's other load drops below limit_pct
    of one CPU. Returns the seconds waited. The waits of a whole run share one budget."""
    max_wait = min(max_wait, _WAIT_BUDGET[0])
    t0 = time.monotonic()
    while True:
        a = CpuStat.read()
        time.sleep(0.3)
        b = CpuStat.read()
        busy = sum(a.delta(b, c)["busy_pct"] for c in b.rows if c != "cpu")
        waited = time.monotonic() - t0
        if busy <= limit_pct or waited >= max_wait:
            _WAIT_BUDGET[0] = max(0.0, _WAIT_BUDGET[0] - waited)
            if waited > 1:
                log(f"  waited {waited:.0f} s for other load to drop (now {busy:.0f} % of a CPU; "
                    f"wait budget left {_WAIT_BUDGET[0]:.0f} s)")
            return waited


def children_cpu_ms() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (r.ru_utime + r.ru_stime) * 1000.0


# ----------------------------------------------------------------------------------------------------------------
# Processes and ports
# ----------------------------------------------------------------------------------------------------------------

class Env:
    """Temp dir, port allocator and registry of every long-running process started (killed by PID at the end)."""

    def __init__(self, keep_tmp: bool = False):
        self.tmp = tempfile.mkdtemp(prefix="meshproxy-bench-")
        self.keep_tmp = keep_tmp
        self.procs: list[tuple[str, subprocess.Popen]] = []
        self._next_port = random.randrange(20000, 29000)
        self._used: set[int] = set()
        self.mesh_b: tuple | None = None
        """(process, prometheus port) of the mesh suite's sidecar B, shared by its meshproxy chains."""

    def port(self) -> int:
        for _ in range(2000):
            p = self._next_port
            self._next_port += 1
            if self._next_port > 31999:
                self._next_port = 20000
            if p in self._used:
                continue
            with socket.socket() as s:
                try:
                    s.bind(("127.0.0.1", p))
                except OSError:
                    continue
            self._used.add(p)
            return p
        raise RuntimeError("no free port")

    def path(self, *parts: str) -> str:
        return os.path.join(self.tmp, *parts)

    def spawn(self, name: str, argv: list[str], cpu: str | None, env: dict | None = None) -> subprocess.Popen:
        if cpu is not None:
            argv = ["taskset", "-c", cpu] + argv          # taskset execs: the PID is the program's own
        argv = nice_prefix() + argv
        logf = open(self.path(f"{name}.log"), "ab")
        p = subprocess.Popen(argv, stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                             env=env, start_new_session=True)
        logf.close()
        self.procs.append((name, p))
        log(f"started {name} pid {p.pid}: {' '.join(argv)}")
        return p

    def logtail(self, name: str, n: int = 30) -> str:
        try:
            with open(self.path(f"{name}.log"), errors="replace") as f:
                return "".join(f.readlines()[-n:])
        except OSError:
            return ""

    def stop(self, p: subprocess.Popen, name: str = "?") -> None:
        if p.poll() is not None:
            return
        tree = process_tree([p.pid])                       # remember descendants (workers) by PID
        with contextlib.suppress(ProcessLookupError):
            os.kill(p.pid, signal.SIGTERM)
        try:
            p.wait(timeout=5)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.kill(p.pid, signal.SIGKILL)
            p.wait(timeout=5)
        for pid in tree[1:]:                               # anything the root left behind, by PID
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)

    def cleanup(self) -> None:
        for name, p in reversed(self.procs):
            try:
                self.stop(p, name)
            except Exception as e:                          # keep going: every process must be stopped
                log(f"stopping {name} pid {p.pid}: {e!r}")
        self.procs.clear()
        if self.keep_tmp:
            log(f"kept temp dir {self.tmp}")
        else:
            shutil.rmtree(self.tmp, ignore_errors=True)


NICE = [0]


def nice_prefix() -> list[str]:
    return ["nice", "-n", str(NICE[0])] if NICE[0] else []


def wait_port(port: int, proc: subprocess.Popen | None, timeout: float = 15.0, host: str = "127.0.0.1") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process {proc.pid} exited with {proc.returncode} before port {port} opened")
        with socket.socket() as s:
            s.settimeout(0.5)
            if s.connect_ex((host, port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"port {port} not accepting after {timeout}s")


def wait_http_ok(url: str, proc: subprocess.Popen | None, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process {proc.pid} exited with {proc.returncode} before {url} was ready")
        try:
            with urllib.request.urlopen(url, timeout=1) as r:
                if r.status == 200:
                    return
        except Exception as e:
            last = e
        time.sleep(0.1)
    raise RuntimeError(f"{url} not ready after {timeout}s ({last!r})")


def http_get(port: int, path: str, timeout: float = 5.0) -> bytes:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout) as r:
        return r.read()


def h2c_get(port: int, path: str, timeout: float = 10.0) -> bytes:
    """GET over h2c with prior knowledge (curl); fails unless the response really is HTTP/2 200."""
    r = subprocess.run(["curl", "-sS", "--http2-prior-knowledge", "-o", "-", "-w", "\n%{http_version} %{http_code}",
                        "--max-time", str(timeout), f"http://127.0.0.1:{port}{path}"],
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=timeout + 5)
    body, _, tail = r.stdout.rpartition(b"\n")
    if r.returncode != 0 or tail.split() != [b"2", b"200"]:
        raise RuntimeError(f"h2c GET :{port}{path}: curl exit {r.returncode}, {tail!r} {r.stderr[-300:]!r}")
    return body


def run_client(argv: list[str], timeout: float) -> tuple[str, float]:
    """Run a load client pinned to CPU 0; return (stdout+stderr, its CPU ms from rusage)."""
    before = children_cpu_ms()
    r = subprocess.run(nice_prefix() + ["taskset", "-c", CLIENT_CPU] + argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                       stdin=subprocess.DEVNULL, timeout=timeout)
    out = r.stdout.decode(errors="replace")
    if r.returncode != 0:
        raise RuntimeError(f"{argv[0]} exited {r.returncode}: {out[-2000:]}")
    return out, children_cpu_ms() - before


# ----------------------------------------------------------------------------------------------------------------
# Upstream: nginx (1 worker, CPU 0) + iperf3 server (CPU 0)
# ----------------------------------------------------------------------------------------------------------------

NGINX_CONF = """\
daemon off;
master_process on;
{user}worker_processes 1;
pid {tmp}/nginx.pid;
error_log {tmp}/nginx-error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    default_type application/octet-stream;
    sendfile on;
    tcp_nopush on;
    tcp_nodelay on;
    keepalive_timeout 300s;
    keepalive_requests 10000000;
    open_file_cache max=16 inactive=300s;
    client_body_temp_path {tmp}/nginx-body;
    proxy_temp_path {tmp}/nginx-proxy;
    fastcgi_temp_path {tmp}/nginx-fastcgi;
    uwsgi_temp_path {tmp}/nginx-uwsgi;
    scgi_temp_path {tmp}/nginx-scgi;
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        root {tmp}/www;
        location = /1k {{ return 200 "{small}"; }}
        location = /1m {{ }}
        location = / {{ return 200 "{small}"; }}
    }}
    server {{
        # h2c with prior knowledge (nginx 1.22: `http2` on a plain listen); same locations
        listen 127.0.0.1:{h2c_port} http2 backlog=4096;
        root {tmp}/www;
        location = /1k {{ return 200 "{small}"; }}
        location = /1m {{ }}
        location = / {{ return 200 "{small}"; }}
    }}
}}
"""


@dataclasses.dataclass
class Upstream:
    http_port: int
    bulk_port: int
    h2c_port: int
    pids: list[int]


def start_upstream(env: Env) -> Upstream:
    os.makedirs(env.path("www"), exist_ok=True)
    small = ("meshproxy-bench-" * 64)[:BODY_SMALL]
    with open(env.path("www", "1m"), "wb") as f:
        f.write(os.urandom(BODY_LARGE))
    port, bulk, h2c = env.port(), env.port(), env.port()
    conf = env.path("nginx.conf")
    with open(conf, "w") as f:
        # the worker must read the 0700 temp dir: run it as our own user (root here)
        user = f"user {pwd.getpwuid(os.getuid()).pw_name};\n" if os.getuid() == 0 else ""
        f.write(NGINX_CONF.format(tmp=env.tmp, port=port, h2c_port=h2c, small=small, user=user))
    ng = env.spawn("nginx", ["nginx", "-p", env.tmp, "-c", conf], cpu=CLIENT_CPU)
    ip = env.spawn("iperf3-server", ["iperf3", "-s", "-B", "127.0.0.1", "-p", str(bulk)], cpu=CLIENT_CPU)
    wait_port(port, ng)
    wait_port(h2c, ng)
    wait_port(bulk, ip)
    assert len(http_get(port, "/1k")) == BODY_SMALL
    assert len(http_get(port, "/1m")) == BODY_LARGE
    assert len(h2c_get(h2c, "/1k")) == BODY_SMALL
    return Upstream(port, bulk, h2c, [ng.pid, ip.pid])


# ----------------------------------------------------------------------------------------------------------------
# Scenarios
# ----------------------------------------------------------------------------------------------------------------

class Scenario:
    """A way for the client to reach the upstream. Subclasses start their processes in `start`."""
    name = "?"
    description = "?"

    def __init__(self) -> None:
        self.ports: dict[str, int] = {}      # "http" -> port the HTTP client hits, "bulk" -> iperf3 port
        self.cpu_roots: list[int] = []       # PIDs whose process trees count as proxy CPU / RSS
        self.procs: list[subprocess.Popen] = []
        self.parts: dict[str, int] = {}      # a chain's members ("A", "B") -> PID, for per-proxy RSS
        self.tls: dict | None = None         # mTLS server for the handshake measurement (host, port, alpn, roots)

    def start(self, env: Env, up: Upstream, args: argparse.Namespace) -> None:
        raise NotImplementedError

    def alive(self) -> None:
        for p in self.procs:
            if p.poll() is not None:
                raise RuntimeError(f"{self.name}: pid {p.pid} exited with {p.returncode}")

    def check(self) -> None:
        """Sanity before any load: the scenario really serves the bodies on each of its ports."""
        if "http" in self.ports:
            assert len(http_get(self.ports["http"], "/1k")) == BODY_SMALL, self.name
            assert len(http_get(self.ports["http"], "/1m")) == BODY_LARGE, self.name
        if "h2c" in self.ports:
            assert len(h2c_get(self.ports["h2c"], "/1k")) == BODY_SMALL, self.name
            assert len(h2c_get(self.ports["h2c"], "/1m")) == BODY_LARGE, self.name


class Direct(Scenario):
    name = "direct"
    description = "client → nginx (no proxy)"

    def start(self, env, up, args):
        self.ports = {"http": up.http_port, "bulk": up.bulk_port}


HAPROXY_TCP_CONF = """\
global
    nbthread 1
    maxconn 4096
defaults
    mode tcp
    timeout connect 5s
    timeout client 5m
    timeout server 5m
frontend bench
    bind 127.0.0.1:{port}
    default_backend nginx
backend nginx
    server nginx 127.0.0.1:{up_port}
frontend bulk
    bind 127.0.0.1:{bulk}
    default_backend iperf
backend iperf
    server iperf 127.0.0.1:{up_bulk}
"""


class HaproxyTcp(Scenario):
    name = "haproxy-tcp"
    description = "client → HAProxy 2.6 (mode tcp, nbthread 1, CPU 1) → nginx"

    def start(self, env, up, args):
        port, bulk = env.port(), env.port()
        cfg = env.path(f"{self.name}.cfg")
        with open(cfg, "w") as f:
            f.write(HAPROXY_TCP_CONF.format(port=port, bulk=bulk, up_port=up.http_port, up_bulk=up.bulk_port))
        p = env.spawn(self.name, ["haproxy", "-db", "-f", cfg], cpu=PROXY_CPU)
        self.procs, self.cpu_roots = [p], [p.pid]
        wait_port(port, p)
        wait_port(bulk, p)
        self.ports = {"http": port, "bulk": bulk}


MESHPROXY_L4_CONF = """\
listeners:
  - name: bench
    address: 127.0.0.1
    port: {port}
    protocol: tcp
    upstream: "127.0.0.1:{up_port}"
  - name: bulk
    address: 127.0.0.1
    port: {bulk}
    protocol: tcp
    upstream: "127.0.0.1:{up_bulk}"
inbound: {{enabled: false}}
outbound: {{enabled: false}}
admin: {{enabled: true, address: 127.0.0.1, port: {admin}}}
health: {{enabled: true, address: 127.0.0.1, port: {health}}}
prometheus: {{enabled: true, address: 127.0.0.1, port: {prom}}}
log: {{level: warning}}
"""


class MeshproxyL4(Scenario):
    name = "meshproxy-l4"
    description = "client → meshproxy explicit listener, `protocol: tcp` (L4 relay, CPU 1) → nginx"

    def start(self, env, up, args):
        port, bulk, admin, health, prom = (env.port() for _ in range(5))
        cfg = env.path(f"{self.name}.yaml")
        with open(cfg, "w") as f:
            f.write(MESHPROXY_L4_CONF.format(port=port, bulk=bulk, up_port=up.http_port, up_bulk=up.bulk_port,
                                             admin=admin, health=health, prom=prom))
        p = env.spawn(self.name, [args.meshproxy, "run", "--config", cfg], cpu=PROXY_CPU)
        self.procs, self.cpu_roots = [p], [p.pid]
        wait_http_ok(f"http://127.0.0.1:{health}/healthz/ready", p, timeout=30)
        wait_port(port, p)
        wait_port(bulk, p)
        self.ports = {"http": port, "bulk": bulk}


# --- L7 -------------------------------------------------------------------------------------------------------

class DirectH2c(Scenario):
    name = "direct-h2c"
    description = "client → nginx h2c (no proxy)"

    def start(self, env, up, args):
        self.ports = {"h2c": up.h2c_port}


def start_meshproxy(sc: Scenario, env: Env, args, conf: str, ready_ports: list[int]) -> None:
    """Write `conf` (with {admin} {health} {prom} placeholders filled here), run it on CPU 1, wait until ready."""
    admin, health, prom = env.port(), env.port(), env.port()
    cfg = env.path(f"{sc.name}.yaml")
    with open(cfg, "w") as f:
        f.write(conf.format(admin=admin, health=health, prom=prom))
    p = env.spawn(sc.name, [args.meshproxy, "run", "--config", cfg], cpu=PROXY_CPU)
    sc.procs, sc.cpu_roots = [p], [p.pid]
    wait_http_ok(f"http://127.0.0.1:{health}/healthz/ready", p, timeout=30)
    for port in ready_ports:
        wait_port(port, p)


MESHPROXY_COMMON = """\
inbound: {{enabled: false}}
outbound: {{enabled: false}}
admin: {{enabled: true, address: 127.0.0.1, port: {admin}}}
health: {{enabled: true, address: 127.0.0.1, port: {health}}}
prometheus: {{enabled: true, address: 127.0.0.1, port: {prom}}}
log: {{level: warning}}
"""

MESHPROXY_HTTP_CONF = """\
listeners:
  - name: bench
    address: 127.0.0.1
    port: {port}
    protocol: http
    upstream: "127.0.0.1:{up_port}"
clusters:
  - name: nginx
    endpoints: ["127.0.0.1:{up_port}"]
    protocol: {cluster_protocol}
routes:
  - name: all
    cluster: nginx
"""


class MeshproxyHttp(Scenario):
    name = "meshproxy-http"
    description = ("client → meshproxy explicit listener `protocol: http` → route → cluster `protocol: http1` "
                   "(HTTP/1.1 express lane, keep-alive pool; metrics on, CPU 1) → nginx")
    key, up_attr, cluster_protocol = "http", "http_port", "http1"

    def start(self, env, up, args):
        port = env.port()
        conf = MESHPROXY_HTTP_CONF.format(port=port, up_port=getattr(up, self.up_attr),
                                          cluster_protocol=self.cluster_protocol)
        start_meshproxy(self, env, args, conf + MESHPROXY_COMMON, [port])
        self.ports = {self.key: port}


class MeshproxyH2c(MeshproxyHttp):
    name = "meshproxy-h2c"
    description = ("client (h2c) → meshproxy explicit listener `protocol: http` → route → cluster `protocol: http2` "
                   "(h2c, multiplexed; metrics on, CPU 1) → nginx h2c")
    key, up_attr, cluster_protocol = "h2c", "h2c_port", "http2"


HAPROXY_HTTP_CONF = """\
global
    nbthread 1
    maxconn 4096
defaults
    mode http
    timeout connect 5s
    timeout client 5m
    timeout server 5m
    http-reuse always
frontend bench
    bind 127.0.0.1:{port}{bind_opts}
    default_backend nginx
backend nginx
    server nginx 127.0.0.1:{up_port}{server_opts}
"""


class HaproxyHttp(Scenario):
    name = "haproxy-http"
    description = "client → HAProxy 2.6 (mode http, `http-reuse always`, nbthread 1, CPU 1) → nginx"
    key, up_attr, bind_opts, server_opts = "http", "http_port", "", ""

    def start(self, env, up, args):
        port = env.port()
        cfg = env.path(f"{self.name}.cfg")
        with open(cfg, "w") as f:
            f.write(HAPROXY_HTTP_CONF.format(port=port, up_port=getattr(up, self.up_attr),
                                             bind_opts=self.bind_opts, server_opts=self.server_opts))
        p = env.spawn(self.name, ["haproxy", "-db", "-f", cfg], cpu=PROXY_CPU)
        self.procs, self.cpu_roots = [p], [p.pid]
        wait_port(port, p)
        self.ports = {self.key: port}


class HaproxyH2c(HaproxyHttp):
    name = "haproxy-h2c"
    description = ("client (h2c) → HAProxy 2.6 (mode http, `bind … proto h2`, `server … proto h2`, "
                   "`http-reuse always`, nbthread 1, CPU 1) → nginx h2c")
    key, up_attr, bind_opts, server_opts = "h2c", "h2c_port", " proto h2", " proto h2"


NGINX_PROXY_CONF = """\
daemon off;
master_process on;
{user}worker_processes 1;
pid {tmp}/nginx-proxy.pid;
error_log {tmp}/nginx-proxy-error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    tcp_nodelay on;
    keepalive_timeout 300s;
    keepalive_requests 10000000;
    client_body_temp_path {tmp}/nginx-proxy-body;
    proxy_temp_path {tmp}/nginx-proxy-proxy;
    fastcgi_temp_path {tmp}/nginx-proxy-fastcgi;
    uwsgi_temp_path {tmp}/nginx-proxy-uwsgi;
    scgi_temp_path {tmp}/nginx-proxy-scgi;
    upstream backend {{
        server 127.0.0.1:{up_port};
        keepalive 32;
        keepalive_requests 10000000;
        keepalive_timeout 300s;
    }}
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location / {{
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
    }}
}}
"""


class NginxProxy(Scenario):
    name = "nginx-proxy"
    description = ("client → nginx 1.22 reverse proxy (`proxy_http_version 1.1`, `Connection \"\"`, upstream "
                   "`keepalive 32`, one worker, CPU 1) → nginx")

    def start(self, env, up, args):
        port = env.port()
        conf = env.path(f"{self.name}.conf")
        with open(conf, "w") as f:
            user = f"user {pwd.getpwuid(os.getuid()).pw_name};\n" if os.getuid() == 0 else ""
            f.write(NGINX_PROXY_CONF.format(tmp=env.tmp, port=port, up_port=up.http_port, user=user))
        p = env.spawn(self.name, ["nginx", "-p", env.tmp, "-c", conf], cpu=PROXY_CPU)
        self.procs, self.cpu_roots = [p], [p.pid]       # master; the worker is in its process tree
        wait_port(port, p)
        self.ports = {"http": port}


# --- mesh (two sidecars with mTLS vs two HAProxys with mTLS) ---------------------------------------------------

MESH_NS_PREFIX = "mpbench-"
MESH_POD_IP = "198.18.0.2"       # the namespace's "pod IP" (on lo): A's upstream, redirected to B's inbound
MESH_INBOUND_PORT = 15006
PROXY_UID = 1337
TRUST_DOMAIN = "cluster.local"
CLIENT_ID = f"spiffe://{TRUST_DOMAIN}/ns/bench/sa/client"
SERVER_ID = f"spiffe://{TRUST_DOMAIN}/ns/bench/sa/server"
CLONE_NEWNET = 0x40000000


def _setns(fd: int) -> None:
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, CLONE_NEWNET) != 0:
        e = ctypes.get_errno()
        raise OSError(e, f"setns: {os.strerror(e)}")


@contextlib.contextmanager
def mesh_netns(env: "Env", args):
    """One network namespace holding the whole mesh benchmark (client, both sidecars, nginx), like one pod whose
    app calls itself through its pod IP: lo up, MESH_POD_IP/32 on lo, meshproxy's own iptables rules
    (`meshproxy iptables apply`, IPv4). The harness moves itself into it (setns), so everything it starts runs
    there; on exit it moves back and deletes the namespace (after env.cleanup() has killed every process)."""
    if os.geteuid() != 0:
        raise RuntimeError("the mesh suite needs root (network namespace, iptables, uid 1337)")
    for tool in ("ip", "iptables", "setpriv"):
        if not shutil.which(tool):
            raise RuntimeError(f"the mesh suite needs `{tool}`")
    name = f"{MESH_NS_PREFIX}{os.getpid()}"
    subprocess.run(["ip", "netns", "add", name], check=True, timeout=10)
    home = os.open("/proc/self/ns/net", os.O_RDONLY)
    entered = False
    try:
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True, timeout=10)
        subprocess.run(["ip", "-n", name, "addr", "add", f"{MESH_POD_IP}/32", "dev", "lo"], check=True, timeout=10)
        fd = os.open(f"/run/netns/{name}", os.O_RDONLY)
        try:
            _setns(fd)
        finally:
            os.close(fd)
        entered = True
        ienv = dict(os.environ, MESHPROXY_IPV6="false", MESHPROXY_PROXY_UID=str(PROXY_UID),
                    MESHPROXY_PROXY_GID=str(PROXY_UID), MESHPROXY_INBOUND_PORT=str(MESH_INBOUND_PORT),
                    MESHPROXY_BIN=args.meshproxy)
        r = subprocess.run(["sh", os.path.join(REPO, "iptables", "meshproxy-init.sh")], env=ienv, timeout=30,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        if r.returncode != 0:
            raise RuntimeError(f"meshproxy-init.sh failed: {r.stdout.decode(errors='replace')}")
        log(f"network namespace {name}: lo up, {MESH_POD_IP}/32 on lo, meshproxy iptables rules applied")
        os.chmod(env.tmp, 0o711)          # uid 1337 reads its config and certificates below the temp dir
        yield name
    finally:
        if entered:
            _setns(home)
        os.close(home)
        subprocess.run(["ip", "netns", "del", name], timeout=10)
        log(f"deleted network namespace {name}")


@dataclasses.dataclass
class Pki:
    ca: str
    client: str      # dirs with cert.pem key.pem bundle.pem (+ haproxy.pem = cert + key)
    server: str


def mesh_pki(env: Env, args) -> Pki:
    """One mesh CA and two workload certificates (`meshproxy ca init/issue`), shared by both chains."""
    if getattr(env, "pki", None):
        return env.pki
    base = env.path("pki")
    os.makedirs(base, exist_ok=True)
    ca = os.path.join(base, "ca")

    def mp(*a: str) -> None:
        r = subprocess.run([args.meshproxy, "ca", *a], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=60)
        if r.returncode != 0:
            raise RuntimeError(f"meshproxy ca {a[0]}: {r.stdout.decode(errors='replace')}")
    mp("init", "--trust-domain", TRUST_DOMAIN, "--out", ca)
    dirs = {}
    for who, sid in (("client", CLIENT_ID), ("server", SERVER_ID)):
        d = os.path.join(base, who)
        mp("issue", "--ca", ca, "--spiffe-id", sid, "--ttl", "24h", "--out", d)
        with open(os.path.join(d, "haproxy.pem"), "w") as out:
            for part in ("cert.pem", "key.pem"):
                with open(os.path.join(d, part)) as f:
                    out.write(f.read())
        dirs[who] = d
    for root, ds, fs in os.walk(base):                    # like a mounted Secret: readable by the proxy's uid
        for n in ds + fs:
            os.chown(os.path.join(root, n), PROXY_UID, PROXY_UID)
    os.chown(base, PROXY_UID, PROXY_UID)
    os.chmod(base, 0o755)
    env.pki = Pki(ca, dirs["client"], dirs["server"])
    return env.pki


def as_proxy_uid(argv: list[str]) -> list[str]:
    return ["setpriv", f"--reuid={PROXY_UID}", f"--regid={PROXY_UID}", "--clear-groups"] + argv


def prom_text(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/stats/prometheus", timeout=5) as r:
        return r.read().decode()


MESH_A_CONF = """\
listeners:
  - name: app-out
    address: 127.0.0.1
    port: {port}
    protocol: http
    upstream: "{pod_ip}:{app_port}"
clusters:
  - name: server
    endpoints: ["{pod_ip}:{app_port}"]
    mtls: {{enabled: true, identities: ["{server_id}"]}}
routes:
  - name: all
    cluster: server
security:
  trust_domain: {td}
  tls: {{cert_file: {d}/cert.pem, key_file: {d}/key.pem, bundle_file: {d}/bundle.pem}}
"""

MESH_B_CONF = """\
listeners: []
inbound: {{enabled: true, port: {inbound}, addresses: ["0.0.0.0"]}}
outbound: {{enabled: false}}
security:
  trust_domain: {td}
  tls: {{cert_file: {d}/cert.pem, key_file: {d}/key.pem, bundle_file: {d}/bundle.pem}}
  peer_authentication: {{mode: STRICT}}
admin: {{enabled: true, address: 127.0.0.1, port: {admin}}}
health: {{enabled: true, address: 127.0.0.1, port: {health}}}
prometheus: {{enabled: true, address: 127.0.0.1, port: {prom}}}
log: {{level: warning}}
"""


def _merged_yaml(text: str, path: str) -> str:
    """``text`` (YAML) with the mappings of the YAML file ``path`` merged in, key by key."""
    import yaml

    def merge(a, b):
        if isinstance(a, dict) and isinstance(b, dict):
            return {**a, **{k: merge(a.get(k), v) for k, v in b.items()}}
        return b

    with open(path) as f:
        return yaml.safe_dump(merge(yaml.safe_load(text), yaml.safe_load(f)), sort_keys=False)


class MeshproxyMesh(Scenario):
    name = "meshproxy-mesh"
    description = ("client → sidecar A (uid 1337; explicit listener `protocol: http` → cluster `mtls` to the pod IP) "
                   "→ iptables → mTLS, HTTP/1.1 kept as HTTP/1.1 (ALPN meshproxy-http1; Istio's default "
                   "h2UpgradePolicy, pooled connections; the express lane at both ends) → sidecar B (uid 1337; "
                   "inbound listener, STRICT) "
                   "→ nginx; both meshproxy, both on CPU 1")
    a_extra = ""
    """YAML lines added to A's ``security:`` block."""
    alpn = "meshproxy-http1"
    """What A offers B (for the new-handshakes measurement)."""

    def start(self, env, up, args):
        pki = mesh_pki(env, args)
        # B first: the inbound side (SO_ORIGINAL_DST of the redirected connection → app port on 127.0.0.1).
        # One B serves every meshproxy chain of the run: the iptables rules send the pod IP's traffic to
        # the one inbound port (15006), and B speaks both ALPNs. Runs are one at a time, so B's CPU in a
        # run is that chain's.
        shared = env.mesh_b
        if shared is None:
            b_admin, b_health, b_prom = env.port(), env.port(), env.port()
            conf_b = MESH_B_CONF.format(inbound=MESH_INBOUND_PORT, td=TRUST_DOMAIN, d=pki.server,
                                        admin=b_admin, health=b_health, prom=b_prom)
            if args.b_extra:
                conf_b = _merged_yaml(conf_b, args.b_extra)
            cfg_b = env.path("meshproxy-mesh-b.yaml")
            with open(cfg_b, "w") as f:
                f.write(conf_b)
            pb = env.spawn("meshproxy-mesh-b", as_proxy_uid([args.meshproxy, "run", "--config", cfg_b]),
                           cpu=PROXY_CPU)
            wait_http_ok(f"http://127.0.0.1:{b_health}/healthz/ready", pb, timeout=30)
            wait_port(MESH_INBOUND_PORT, pb)
            env.mesh_b = shared = (pb, b_prom)
        pb, b_prom = shared
        port = env.port()
        a_admin, a_health, a_prom = env.port(), env.port(), env.port()
        conf_a = MESH_A_CONF.format(port=port, pod_ip=MESH_POD_IP, app_port=up.http_port, server_id=SERVER_ID,
                                    td=TRUST_DOMAIN, d=pki.client) + self.a_extra + MESHPROXY_COMMON.format(
            admin=a_admin, health=a_health, prom=a_prom)
        cfg_a = env.path(f"{self.name}-a.yaml")
        with open(cfg_a, "w") as f:
            f.write(conf_a)
        pa = env.spawn(f"{self.name}-a", as_proxy_uid([args.meshproxy, "run", "--config", cfg_a]), cpu=PROXY_CPU)
        wait_http_ok(f"http://127.0.0.1:{a_health}/healthz/ready", pa, timeout=30)
        wait_port(port, pa)
        self.procs, self.cpu_roots = [pa, pb], [pa.pid, pb.pid]
        self.parts = {"A": pa.pid, "B": pb.pid}
        self.ports = {"http": port}
        self.b_prom = b_prom
        # new handshakes go to B the way A's do: to the pod IP as uid 1337, redirected to the inbound listener
        self.tls = {"host": MESH_POD_IP, "port": up.http_port, "alpn": self.alpn, "roots": [pb.pid]}

    def check(self):
        super().check()
        text = prom_text(self.b_prom)
        want = [line for line in text.splitlines() if line.startswith("istio_requests_total{")
                and 'connection_security_policy="mutual_tls"' in line and f'source_principal="{CLIENT_ID}"' in line
                and 'reporter="destination"' in line]
        if not want or sum(float(line.rsplit(None, 1)[1]) for line in want) < 2:
            raise RuntimeError(f"{self.name}: B's metrics show no mutual_tls requests from {CLIENT_ID}:\n"
                               + "\n".join(x for x in text.splitlines() if x.startswith("istio_requests_total")))
        log(f"{self.name}: B counts the check requests as mutual_tls from {CLIENT_ID}")


HAPROXY_MTLS_A_CONF = """\
global
    nbthread 1
    maxconn 4096
    ssl-default-server-options ssl-min-ver TLSv1.3
defaults
    mode http
    timeout connect 5s
    timeout client 5m
    timeout server 5m
    http-reuse always
frontend app_out
    bind 127.0.0.1:{port}
    # B's answer arrives over HTTP/2, which has no reason phrase; HAProxy then sends `HTTP/1.1 200 ` and h2load
    # counts such a response as failed. Put the phrase back (meshproxy's A sends `200 OK`).
    http-response set-status 200 reason OK if {{ status 200 }}
    default_backend server_b
backend server_b
    server b 127.0.0.1:{b_port} ssl crt {client}/haproxy.pem ca-file {client}/bundle.pem verify required alpn {alpn}
"""

HAPROXY_MTLS_B_CONF = """\
global
    nbthread 1
    maxconn 4096
    ssl-default-bind-options ssl-min-ver TLSv1.3
defaults
    mode http
    timeout connect 5s
    timeout client 5m
    timeout server 5m
    http-reuse always
frontend mtls_in
    bind 127.0.0.1:{b_port} ssl crt {server}/haproxy.pem ca-file {server}/bundle.pem verify required alpn h2,http/1.1
    default_backend app
backend app
    server nginx 127.0.0.1:{up_port}
"""


class HaproxyMtlsChain(Scenario):
    name = "haproxy-mtls-chain"
    description = ("client → HAProxy A (mode http, `server … ssl crt ca-file verify required alpn h2`, "
                   "`http-reuse always`) → mTLS, HTTP/2 → HAProxy B (`bind … ssl crt ca-file verify required "
                   "alpn h2,http/1.1`) → nginx; TLS ≥ 1.3, nbthread 1 each, both on CPU 1")
    alpn = "h2"
    """What A offers B."""

    def start(self, env, up, args):
        pki = mesh_pki(env, args)
        port, b_port = env.port(), env.port()
        cfg_a, cfg_b = env.path(f"{self.name}-a.cfg"), env.path(f"{self.name}-b.cfg")
        with open(cfg_b, "w") as f:
            f.write(HAPROXY_MTLS_B_CONF.format(b_port=b_port, server=pki.server, up_port=up.http_port))
        with open(cfg_a, "w") as f:
            f.write(HAPROXY_MTLS_A_CONF.format(port=port, b_port=b_port, client=pki.client, alpn=self.alpn))
        pb = env.spawn(f"{self.name}-b", ["haproxy", "-db", "-f", cfg_b], cpu=PROXY_CPU)
        wait_port(b_port, pb)
        pa = env.spawn(f"{self.name}-a", ["haproxy", "-db", "-f", cfg_a], cpu=PROXY_CPU)
        wait_port(port, pa)
        self.procs, self.cpu_roots = [pa, pb], [pa.pid, pb.pid]
        self.parts = {"A": pa.pid, "B": pb.pid}
        self.ports = {"http": port}
        self.tls = {"host": "127.0.0.1", "port": b_port, "alpn": self.alpn, "roots": [pb.pid]}


class HaproxyMtlsChainH1(HaproxyMtlsChain):
    name = "haproxy-mtls-chain-h1"
    description = ("as `haproxy-mtls-chain`, but A offers B `alpn http/1.1`: HTTP/1.1 between the two HAProxy "
                   "instances (keep-alive, `http-reuse always`), as meshproxy-mesh keeps it")
    alpn = "http/1.1"


class MeshproxyMeshH2(MeshproxyMesh):
    name = "meshproxy-mesh-h2"
    description = ("as `meshproxy-mesh`, but A's `security.h2_upgrade_policy: UPGRADE`: HTTP/1.1 from the client "
                   "is carried to B as HTTP/2 streams over one mTLS connection (ALPN meshproxy-h2; the HAProxy "
                   "chain multiplexes too), B speaks HTTP/1.1 to nginx; the general path at both ends; the same "
                   "B process as `meshproxy-mesh`")
    a_extra = "  h2_upgrade_policy: UPGRADE\n"
    alpn = "meshproxy-h2"


SCENARIOS: dict[str, type[Scenario]] = {c.name: c for c in (
    Direct, MeshproxyL4, HaproxyTcp,
    DirectH2c, MeshproxyHttp, HaproxyHttp, NginxProxy, MeshproxyH2c, HaproxyH2c,
    MeshproxyMesh, MeshproxyMeshH2, HaproxyMtlsChain, HaproxyMtlsChainH1)}


# ----------------------------------------------------------------------------------------------------------------
# Metrics and measurements
# ----------------------------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Metric:
    key: str
    label: str
    unit: str
    higher_is_better: bool
    fmt: str = "{:.1f}"


@dataclasses.dataclass
class RunCtx:
    env: Env
    up: Upstream
    args: argparse.Namespace
    dur: float          # seconds per timed run


class Measurement:
    """One client run against one scenario. `run` returns {metric_key: value}; `info` holds extras (steal, ...)."""
    name = "?"
    metrics: list[Metric] = []
    strict = False       # latency at low load: a few % of foreign load on CPU 1 already moves p99
    port = "http"        # which of the scenario's ports the client hits ("http" for HTTP/1.1, "h2c")

    def run(self, ctx: RunCtx, sc: Scenario) -> tuple[dict[str, float], dict[str, float]]:
        raise NotImplementedError

    # shared accounting around a client run ------------------------------------------------------------------
    @staticmethod
    def timed(sc: Scenario, fn: Callable[[], tuple[str, float]],
              roots: list[int] | None = None) -> tuple[str, dict[str, float]]:
        roots = sc.cpu_roots if roots is None else roots
        sc.alive()
        cpu0 = tree_cpu_ms(roots)
        st0 = CpuStat.read()
        t0 = time.monotonic()
        out, client_ms = fn()
        wall = time.monotonic() - t0
        st1 = CpuStat.read()
        cpu1 = tree_cpu_ms(roots)
        sc.alive()
        info = {
            "wall_s": wall,
            "proxy_cpu_ms": cpu1 - cpu0,
            "client_cpu_ms": client_ms,
            "steal_pct": st0.delta(st1)["steal_pct"],
            "cpu0_busy_pct": st0.delta(st1, "cpu0")["busy_pct"],
            "cpu1_busy_pct": st0.delta(st1, "cpu1")["busy_pct"],
        }
        # CPU 1 should run nothing but the proxy: process time there beyond the proxy's own (other jobs on the
        # machine) is noise. irq/softirq time is not charged to tasks; it is the proxy's packets, left out.
        info["cpu1_other_pct"] = max(0.0, st0.delta(st1, "cpu1")["task_pct"] - info["proxy_cpu_ms"] / wall / 10.0)
        return out, info


WRK_LUA = """\
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "BENCH requests=%d duration_us=%d bytes=%d err_connect=%d err_read=%d err_write=%d err_status=%d " ..
    "err_timeout=%d p50_us=%.0f p90_us=%.0f p99_us=%.0f max_us=%.0f\\n",
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max))
end
"""


def parse_kv(out: str, tag: str) -> dict[str, float]:
    for line in out.splitlines():
        if line.startswith(tag + " "):
            return {k: float(v) for k, v in (kv.split("=", 1) for kv in line.split()[1:])}
    raise RuntimeError(f"no '{tag}' line in output:\n{out[-2000:]}")


class Wrk(Measurement):
    """wrk, 1 thread, N keep-alive connections, fixed duration: requests/s, p50/p99, proxy CPU per 1000 req."""

    def __init__(self, tag: str, path: str, conns: int, latency: bool = True):
        self.tag, self.path, self.conns = tag, path, conns
        self.name = f"wrk {path} c{conns}"
        t = f"{path.strip('/')} c{conns}"
        self.metrics = [Metric(f"rps_{tag}", f"requests/s, {t}", "req/s", True, "{:,.0f}")]
        if latency:
            self.metrics += [Metric(f"p50_{tag}", f"p50 latency, {t}", "ms", False, "{:.3f}"),
                             Metric(f"p99_{tag}", f"p99 latency, {t}", "ms", False, "{:.3f}")]
        self.metrics += [Metric(f"cpu_{tag}", f"proxy CPU per 1000 req, {t}", "ms", False, "{:.1f}")]

    def run(self, ctx, sc):
        lua = ctx.env.path("report.lua")
        if not os.path.exists(lua):
            with open(lua, "w") as f:
                f.write(WRK_LUA)
        url = f"http://127.0.0.1:{sc.ports[self.port]}{self.path}"
        # wrk takes whole seconds only ("-d2.5s" is a usage error)
        argv = ["wrk", "-t1", f"-c{self.conns}", f"-d{max(1, round(ctx.dur))}s", "--timeout", "5s", "-s", lua, url]
        out, info = self.timed(sc, lambda: run_client(argv, timeout=ctx.dur + 60))
        r = parse_kv(out, "BENCH")
        n = r["requests"]
        errors = sum(v for k, v in r.items() if k.startswith("err_"))
        info["errors"] = errors
        if n <= 0:
            raise RuntimeError(f"{sc.name}: wrk completed no requests:\n{out}")
        vals = {f"rps_{self.tag}": n / (r["duration_us"] / 1e6),
                f"p50_{self.tag}": r["p50_us"] / 1000.0,
                f"p99_{self.tag}": r["p99_us"] / 1000.0}
        if sc.cpu_roots:
            vals[f"cpu_{self.tag}"] = info["proxy_cpu_ms"] / n * 1000.0
        return {m.key: vals[m.key] for m in self.metrics if m.key in vals}, info


def read_h2load_log(path: str) -> tuple[list[float], list[int], int]:
    """h2load --log-file: one line per request, `start_us status duration_us`. Returns latencies (ms), start
    times (µs) and the number of non-2xx responses."""
    lat, starts, bad = [], [], 0
    with open(path) as f:
        for line in f:
            parts = line.split()
            if len(parts) < 3:
                continue
            if not parts[1].startswith("2"):
                bad += 1
            starts.append(int(parts[0]))
            lat.append(int(parts[2]) / 1000.0)
    return lat, starts, bad


H2LOAD_REQS = re.compile(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed,"
                         r" (\d+) errored")


class H2load(Measurement):
    """h2load over h2c (prior knowledge), 1 thread, N connections × M concurrent streams, fixed duration:
    requests/s, p50/p99 from the per-request log, proxy CPU per 1000 requests."""
    port = "h2c"

    def __init__(self, tag: str, path: str, conns: int, streams: int, latency: bool = True):
        self.tag, self.path, self.conns, self.streams = tag, path, conns, streams
        self.name = f"h2load h2c {path} c{conns} m{streams}"
        t = f"h2c {path.strip('/')} c{conns} m{streams}"
        self.metrics = [Metric(f"rps_{tag}", f"requests/s, {t}", "req/s", True, "{:,.0f}")]
        if latency:
            self.metrics += [Metric(f"p50_{tag}", f"p50 latency, {t}", "ms", False, "{:.3f}"),
                             Metric(f"p99_{tag}", f"p99 latency, {t}", "ms", False, "{:.3f}")]
        self.metrics += [Metric(f"cpu_{tag}", f"proxy CPU per 1000 req, {t}", "ms", False, "{:.1f}")]

    def run(self, ctx, sc):
        logf = ctx.env.path("h2load-sat.tsv")
        with contextlib.suppress(FileNotFoundError):
            os.unlink(logf)
        url = f"http://127.0.0.1:{sc.ports[self.port]}{self.path}"
        # no --warm-up-time: every request completed in the run is counted, like wrk (scenarios are warmed up)
        argv = ["h2load", "-t1", f"-c{self.conns}", f"-m{self.streams}", f"-D{ctx.dur:g}", f"--log-file={logf}", url]
        out, info = self.timed(sc, lambda: run_client(argv, timeout=ctx.dur + 60))
        m = H2LOAD_REQS.search(out)
        fin = re.search(r"finished in ([\d.]+)s, ([\d.]+) req/s", out)
        if not m or not fin:
            raise RuntimeError(f"{sc.name}: unexpected h2load output:\n{out[-2000:]}")
        n = int(m.group(4))
        lat, _, bad = read_h2load_log(logf)
        info["errors"] = bad + int(m.group(5)) + int(m.group(6))
        if n <= 0 or not lat:
            raise RuntimeError(f"{sc.name}: h2load completed no requests:\n{out[-2000:]}")
        q = quantiles(lat)
        vals = {f"rps_{self.tag}": float(fin.group(2)), f"p50_{self.tag}": q(50), f"p99_{self.tag}": q(99)}
        if sc.cpu_roots:
            vals[f"cpu_{self.tag}"] = info["proxy_cpu_ms"] / n * 1000.0
        return {k.key: vals[k.key] for k in self.metrics if k.key in vals}, info


class FixedRate(Measurement):
    """h2load at a fixed total rate over N connections (HTTP/1.1 with --h1, else h2c with one stream per
    connection at a time): latency p50/p99 from the per-request log.

    h2load starts every connection's `--rps` timer at the same moment, so by default the N connections send
    together: bursts of N requests (within about 15 µs) every N/rate seconds, and the p99 is the time to get
    a whole burst through. ``paced=True`` starts the connections 1/rate apart instead (`-r1
    --rate-period`), so the requests arrive about evenly, one every 1/rate seconds: the latency of a request
    that finds the proxy idle. h2load allows `-r` only with `-n`, so the paced run counts requests instead of
    timing them and leaves out those started in its first `warm` seconds."""
    strict = True

    def __init__(self, tag: str, path: str, rate: int, conns: int, h2c: bool = False, paced: bool = False):
        self.tag, self.path, self.rate, self.conns = tag, path, rate, conns
        self.h2c = h2c
        self.paced = paced
        self.port = "h2c" if h2c else "http"
        self.name = f"h2load {'h2c ' if h2c else ''}{rate} req/s c{conns}{' paced' if paced else ''}"
        t = f"{rate} req/s, {'h2c ' if h2c else ''}c{conns}{', paced' if paced else ''}"
        self.metrics = [Metric(f"p50_{tag}", f"p50 latency at {t}", "ms", False, "{:.3f}"),
                        Metric(f"p99_{tag}", f"p99 latency at {t}", "ms", False, "{:.3f}"),
                        Metric(f"cpu_{tag}", f"proxy CPU per 1000 req at {t}", "ms", False, "{:.1f}")]

    def run(self, ctx, sc):
        logf = ctx.env.path(f"h2load-{self.tag}-{sc.name}.tsv")  # one per measurement and scenario (--keep-tmp)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(logf)
        url = f"http://127.0.0.1:{sc.ports[self.port]}{self.path}"
        warm = 1.0
        if self.paced:
            stagger_ms = max(1, round(1000 / self.rate))
            timing = ["-r1", f"--rate-period={stagger_ms}ms", f"-n{round(self.rate * (ctx.dur + warm))}"]
        else:
            timing = [f"-D{ctx.dur:g}", f"--warm-up-time={warm:g}"]
        argv = ["h2load"] + ([] if self.h2c else ["--h1"]) + [
            "-t1", f"-c{self.conns}", f"--rps={self.rate / self.conns:g}"] + timing + [f"--log-file={logf}", url]
        out, info = self.timed(sc, lambda: run_client(argv, timeout=ctx.dur + warm + 60))
        lat, starts, bad = read_h2load_log(logf)
        if self.paced and starts:
            t0 = min(starts) + warm * 1e6
            kept = [i for i, st in enumerate(starts) if st >= t0]
            lat, starts = [lat[i] for i in kept], [starts[i] for i in kept]
        if len(lat) < self.rate * ctx.dur * 0.5:
            raise RuntimeError(f"{sc.name}: h2load logged only {len(lat)} requests:\n{out[-2000:]}")
        m = H2LOAD_REQS.search(out)
        info["errors"] = bad + (int(m.group(5)) + int(m.group(6)) if m else 0)
        info["achieved_rps"] = len(lat) / ((max(starts) - min(starts)) / 1e6 or 1)
        q = quantiles(lat)
        vals = {f"p50_{self.tag}": q(50), f"p99_{self.tag}": q(99)}
        info["logged"] = len(lat)
        if sc.cpu_roots:
            # the warm-up second is not logged but costs CPU too: normalise by the nominal rate over the wall time
            vals[f"cpu_{self.tag}"] = info["proxy_cpu_ms"] / (info["wall_s"] * self.rate / 1000.0)
        return vals, info


class Handshakes(Measurement):
    """New mTLS handshakes per second against the chain's server side (B) alone: bench/mtls_handshakes.py, N
    threads each opening fresh connections with the client certificate (no resumption), the scenario's ALPN (and,
    to meshproxy, a sidecar's peer metadata line), and waiting for B's first HTTP/2 frame. Metrics: handshakes/s and B's CPU per 1000 handshakes."""
    port = "tls"

    def __init__(self, tag: str = "hs", threads: int = 8):
        self.tag, self.threads = tag, threads
        self.name = f"mTLS handshakes t{threads}"
        self.metrics = [Metric(f"rate_{tag}", f"new mTLS handshakes/s (B alone, {threads} client threads)", "/s",
                               True, "{:,.0f}"),
                        Metric(f"cpu_{tag}", "B's CPU per 1000 new mTLS handshakes", "ms", False, "{:.0f}")]

    def run(self, ctx, sc):
        t, pki = sc.tls, mesh_pki(ctx.env, ctx.args)
        # as uid 1337, like sidecar A: for meshproxy that is what sends a pod-IP connection to the inbound listener
        argv = as_proxy_uid([sys.executable, os.path.join(HERE, "mtls_handshakes.py"), "--host", t["host"],
                             "--port", str(t["port"]), "--alpn", t["alpn"], "--cert", f"{pki.client}/cert.pem",
                             "--key", f"{pki.client}/key.pem", "--ca", f"{pki.client}/bundle.pem",
                             "--duration", f"{ctx.dur:g}", "--threads", str(self.threads)]
                            + (["--peer-line"] if t["alpn"].startswith("meshproxy-") else []))
        out, info = self.timed(sc, lambda: run_client(argv, timeout=ctx.dur + 60), roots=t["roots"])
        r = parse_kv(out, "BENCH")
        n = r["handshakes"]
        info["errors"] = r["errors"] + r["alpn_mismatch"]
        if n <= 0:
            raise RuntimeError(f"{sc.name}: no handshake completed:\n{out[-2000:]}")
        return {f"rate_{self.tag}": n / (r["duration_us"] / 1e6),
                f"cpu_{self.tag}": info["proxy_cpu_ms"] / n * 1000.0}, info


def quantiles(xs: list[float]) -> Callable[[float], float]:
    s = sorted(xs)

    def q(p: float) -> float:
        k = (len(s) - 1) * p / 100.0
        lo = int(k)
        hi = min(lo + 1, len(s) - 1)
        return s[lo] + (s[hi] - s[lo]) * (k - lo)
    return q


class Iperf(Measurement):
    """iperf3 bulk TCP, one stream, client → scenario's bulk port → iperf3 server: Gbit/s and proxy CPU per GiB."""
    name = "iperf3 bulk"

    def __init__(self, tag: str = "bulk"):
        self.tag = tag
        self.metrics = [Metric(f"gbps_{tag}", "bulk throughput (iperf3, 1 stream)", "Gbit/s", True, "{:.2f}"),
                        Metric(f"cpu_{tag}", "proxy CPU per GiB, bulk", "ms", False, "{:.0f}")]

    def run(self, ctx, sc):
        argv = ["iperf3", "-c", "127.0.0.1", "-p", str(sc.ports["bulk"]), "-t", f"{max(1, round(ctx.dur))}",
                "-O", "1", "-J"]
        out, info = self.timed(sc, lambda: run_client(argv, timeout=ctx.dur + 60))
        j = json.loads(out[out.index("{"):])
        if "error" in j:
            raise RuntimeError(f"{sc.name}: iperf3: {j['error']}")
        rx = j["end"]["sum_received"]
        vals = {f"gbps_{self.tag}": rx["bits_per_second"] / 1e9}
        if sc.cpu_roots:
            # bytes moved during the whole client run (omitted warm-up second included) ~ sent bytes; use the
            # receiver's counted bytes scaled to the wall time of the run for CPU normalisation.
            total_bytes = rx["bits_per_second"] / 8 * info["wall_s"]
            vals[f"cpu_{self.tag}"] = info["proxy_cpu_ms"] / (total_bytes / 2**30)
        return vals, info


# ----------------------------------------------------------------------------------------------------------------
# Targets and suites
# ----------------------------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Target:
    key: str
    kind: str            # "ratio_le" | "ratio_ge" (median of per-round ratios vs ref) | "abs_le" | "abs_ge"
    #                      | "le_ref": median(subject) ≤ value × median(ref), for added latencies (a ratio of two
    #                        differences means nothing)
    value: float
    ref: str | None = None
    gate: bool = True    # False: shown with PASS/FAIL but reported only, not counted in "Targets: x/y pass"

    def text(self) -> str:
        t = {"ratio_le": f"≤ {self.value:g}× {self.ref}", "ratio_ge": f"≥ {self.value:g}× {self.ref}",
             "abs_le": f"≤ {self.value:g}", "abs_ge": f"≥ {self.value:g}",
             "le_ref": f"≤ {self.ref}" if self.value == 1 else f"≤ {self.value:g}× {self.ref}"}[self.kind]
        return t + ("" if self.gate else " (reported, not gated)")


@dataclasses.dataclass
class Table:
    """One comparison table of a suite: scenarios measured with the same measurements, side by side."""
    title: str                    # sub-heading ("" when the suite has one table)
    scenarios: list[str]
    subject: str                  # scenario under test
    references: list[str]         # ratio columns subject/ref
    baseline: str                 # added latency = scenario − baseline (same round)
    measurements: Callable[[argparse.Namespace], list[Measurement]]
    targets: list[Target]
    added: list[tuple[str, str]]  # (derived key, from key): added latency vs baseline
    extra_single: list[str] = dataclasses.field(default_factory=list)   # more once-per-scenario rows (RSS parts)


@dataclasses.dataclass
class Suite:
    key: str                      # RESULTS.md section marker
    title: str
    tables: list[Table]           # all measured in one run, rounds interleaved across every table
    duration: float = 8.0         # default seconds per timed run (3 with --quick)
    setup: Callable | None = None  # context manager (env, args) around the whole suite, e.g. a network namespace


def l4_measurements(args) -> list[Measurement]:
    return [Wrk("1k_c16", "/1k", 16), Wrk("1k_c64", "/1k", 64), Wrk("1m_c16", "/1m", 16, latency=False),
            FixedRate("fixed", "/1k", 1000, 16), Iperf("bulk")]


def mesh_measurements(args) -> list[Measurement]:
    return [Wrk("mesh_c16", "/1k", 16), Wrk("mesh_c64", "/1k", 64), FixedRate("fixed", "/1k", 1000, 16),
            FixedRate("paced", "/1k", 1000, 16, paced=True), Handshakes("hs", 8)]


def l7_h1_measurements(args) -> list[Measurement]:
    return [Wrk("h1_c16", "/1k", 16), Wrk("h1_c64", "/1k", 64), FixedRate("fixed", "/1k", 1000, 16),
            FixedRate("paced", "/1k", 1000, 16, paced=True)]


def l7_h2c_measurements(args) -> list[Measurement]:
    return [H2load("h2c_c16", "/1k", 16, 10), H2load("h2c_c64", "/1k", 64, 10),
            FixedRate("fixed_h2c", "/1k", 1000, 16, h2c=True)]


SUITES = {
    "l4": Suite(
        key="l4", title="L4 path (opaque TCP relay)", duration=8.0,
        tables=[Table(
            title="",
            scenarios=["direct", "meshproxy-l4", "haproxy-tcp"], subject="meshproxy-l4",
            references=["direct", "haproxy-tcp"], baseline="direct",
            measurements=l4_measurements,
            targets=[Target("cpu_1k_c16", "ratio_le", 1.1, "haproxy-tcp"),
                     Target("cpu_1k_c64", "ratio_le", 1.1, "haproxy-tcp"),
                     Target("gbps_bulk", "ratio_ge", 1.0, "haproxy-tcp"),
                     Target("added_p99_fixed", "abs_le", 1.0),
                     Target("idle_rss", "abs_le", 40.0)],
            added=[("added_p50_fixed", "p50_fixed"), ("added_p99_fixed", "p99_fixed")])],
    ),
    "l7": Suite(
        key="l7", title="L7 path (HTTP/1.1 and h2c proxying, 1 KiB body)", duration=6.0,
        tables=[
            Table(
                title="HTTP/1.1",
                scenarios=["direct", "meshproxy-http", "haproxy-http", "nginx-proxy"], subject="meshproxy-http",
                references=["direct", "haproxy-http", "nginx-proxy"], baseline="direct",
                measurements=l7_h1_measurements,
                targets=[Target("cpu_h1_c16", "ratio_le", 2.0, "haproxy-http"),
                         Target("cpu_h1_c64", "ratio_le", 2.0, "haproxy-http"),
                         Target("added_p99_fixed", "le_ref", 1.0, "haproxy-http"),
                         Target("added_p99_paced", "le_ref", 1.0, "haproxy-http", gate=False)],
                added=[("added_p50_fixed", "p50_fixed"), ("added_p99_fixed", "p99_fixed"),
                       ("added_p50_paced", "p50_paced"), ("added_p99_paced", "p99_paced")]),
            Table(
                title="h2c (HTTP/2 prior knowledge, both legs)",
                scenarios=["direct-h2c", "meshproxy-h2c", "haproxy-h2c"], subject="meshproxy-h2c",
                references=["direct-h2c", "haproxy-h2c"], baseline="direct-h2c",
                measurements=l7_h2c_measurements,
                targets=[Target("cpu_h2c_c16", "ratio_le", 3.0, "haproxy-h2c"),
                         Target("cpu_h2c_c64", "ratio_le", 3.0, "haproxy-h2c"),
                         Target("added_p99_fixed_h2c", "le_ref", 1.0, "haproxy-h2c", gate=False)],
                added=[("added_p50_fixed_h2c", "p50_fixed_h2c"), ("added_p99_fixed_h2c", "p99_fixed_h2c")]),
        ],
    ),
    "mesh": Suite(
        key="mesh", title="Mesh path (two sidecars, mTLS between them, 1 KiB body)", duration=6.0,
        setup=mesh_netns,
        tables=[Table(
            title="",
            scenarios=["direct", "meshproxy-mesh", "meshproxy-mesh-h2", "haproxy-mtls-chain", "haproxy-mtls-chain-h1"],
            subject="meshproxy-mesh",
            references=["direct", "haproxy-mtls-chain"], baseline="direct",
            measurements=mesh_measurements,
            targets=[Target("cpu_mesh_c16", "ratio_le", 1.5, "haproxy-mtls-chain"),
                     Target("cpu_mesh_c64", "ratio_le", 1.5, "haproxy-mtls-chain"),
                     Target("added_p99_fixed", "le_ref", 1.0, "haproxy-mtls-chain"),
                     Target("added_p99_paced", "le_ref", 1.0, "haproxy-mtls-chain", gate=False)],
            added=[("added_p50_fixed", "p50_fixed"), ("added_p99_fixed", "p99_fixed"),
                   ("added_p50_paced", "p50_paced"), ("added_p99_paced", "p99_paced")],
            extra_single=["idle_rss_A", "idle_rss_B", "peak_rss_A", "peak_rss_B"])],
    ),
}
SUITE_ORDER = ["l4", "l7", "mesh"]       # --suite all

EXTRA_METRICS = {
    "added_p50_fixed": Metric("added_p50_fixed", "added p50 vs direct at 1000 req/s", "ms", False, "{:.3f}"),
    "added_p99_fixed": Metric("added_p99_fixed", "added p99 vs direct at 1000 req/s", "ms", False, "{:.3f}"),
    "added_p50_paced": Metric("added_p50_paced", "added p50 vs direct at 1000 req/s, paced", "ms", False,
                              "{:.3f}"),
    "added_p99_paced": Metric("added_p99_paced", "added p99 vs direct at 1000 req/s, paced", "ms", False,
                              "{:.3f}"),
    "added_p50_fixed_h2c": Metric("added_p50_fixed_h2c", "added p50 vs direct-h2c at 1000 req/s, h2c", "ms", False,
                                  "{:.3f}"),
    "added_p99_fixed_h2c": Metric("added_p99_fixed_h2c", "added p99 vs direct-h2c at 1000 req/s, h2c", "ms", False,
                                  "{:.3f}"),
    "idle_rss": Metric("idle_rss", "idle RSS (VmRSS after start)", "MiB", False, "{:.1f}"),
    "idle_rss_A": Metric("idle_rss_A", "idle RSS, proxy A (client side)", "MiB", False, "{:.1f}"),
    "idle_rss_B": Metric("idle_rss_B", "idle RSS, proxy B (server side)", "MiB", False, "{:.1f}"),
    "peak_rss_A": Metric("peak_rss_A", "peak RSS, proxy A (client side)", "MiB", False, "{:.1f}"),
    "peak_rss_B": Metric("peak_rss_B", "peak RSS, proxy B (server side)", "MiB", False, "{:.1f}"),
    "peak_rss": Metric("peak_rss", "peak RSS (VmHWM at end)", "MiB", False, "{:.1f}"),
}


# ----------------------------------------------------------------------------------------------------------------
# Runner
# ----------------------------------------------------------------------------------------------------------------

@dataclasses.dataclass
class Results:
    # values[scenario][metric] -> list of per-round values (index = round)
    values: dict[str, dict[str, list[float]]]
    info: list[dict]              # one record per client run
    single: dict[str, dict[str, float]]   # once-per-scenario values (RSS)


def table_measurements(table: Table, args) -> list[Measurement]:
    ms = table.measurements(args)
    if args.measure:
        ms = [m for m in ms if any(sel in m.name for sel in args.measure)]
    return ms


def table_scenarios(table: Table, args) -> list[str]:
    return [s for s in table.scenarios if not args.scenarios or s in args.scenarios]


def suite_plan(suite: Suite, args) -> list[tuple[Table, list[str], list[Measurement]]]:
    """The suite's tables that have something to run after --scenarios / --measure filtering."""
    plan = [(t, table_scenarios(t, args), table_measurements(t, args)) for t in suite.tables]
    return [p for p in plan if p[1] and p[2]]


def run_suite(suite: Suite, args, env: Env, up: Upstream) -> Results:
    plan = suite_plan(suite, args)
    names = list(dict.fromkeys(n for _, tn, _ in plan for n in tn))
    dur = args.duration
    scs: dict[str, Scenario] = {}
    single: dict[str, dict[str, float]] = {}
    for n in names:
        sc = SCENARIOS[n]()
        try:
            sc.start(env, up, args)
        except Exception:
            log(f"{n} failed to start; its log:\n{env.logtail(n)}")
            raise
        sc.check()                                         # sanity: the scenario really serves the bodies
        time.sleep(0.5)
        if sc.cpu_roots:
            single[n] = {"idle_rss": tree_kib(sc.cpu_roots, "VmRSS") / 1024.0}
            for part, pid in sc.parts.items():
                single[n][f"idle_rss_{part}"] = tree_kib([pid], "VmRSS") / 1024.0
        scs[n] = sc
    values: dict[str, dict[str, list[float]]] = {n: {} for n in names}
    infos: list[dict] = []
    ctx = RunCtx(env, up, args, dur)
    warm = RunCtx(env, up, args, max(1, round(dur / 10)))  # whole seconds: h2load -D takes no fraction
    for n, sc in scs.items():                              # warm-up, not recorded
        if "http" in sc.ports:
            Wrk("warm", "/1k", 64, latency=False).run(warm, sc)
        if "h2c" in sc.ports:
            H2load("warm", "/1k", 64, 10, latency=False).run(warm, sc)
    for rnd in range(args.rounds):
        for table, tnames, meas in plan:                   # A B C, A B C, ... within each measurement
            for m in meas:
                for n in tnames:
                    sc = scs[n]
                    if m.port == "tls" and not sc.tls or m.port != "tls" and m.port not in sc.ports:
                        continue                           # e.g. `direct` has no mTLS server to shake hands with
                    limit = args.strict_noise_limit if m.strict else args.noise_limit
                    retries = args.retries + (1 if m.strict else 0)
                    for attempt in range(retries + 1):
                        wait_quiet(limit, args.quiet_wait)
                        log(f"round {rnd + 1}/{args.rounds} {m.name:<26} {n}"
                            + (f" (retry {attempt})" if attempt else ""))
                        vals, info = m.run(ctx, sc)
                        info.update(round=rnd, scenario=n, measurement=m.name, attempt=attempt)
                        infos.append(info)
                        noisy = info["steal_pct"] > limit or info["cpu1_other_pct"] > limit
                        if not noisy:
                            break
                        info["discarded"] = attempt < retries
                        log(f"  noisy run: steal {info['steal_pct']:.1f} %, other load on CPU 1 "
                            f"{info['cpu1_other_pct']:.0f} %" + (", retrying" if info["discarded"] else ", kept"))
                    for k, v in vals.items():
                        values[n].setdefault(k, []).append(v)
                    if info.get("errors"):
                        log(f"  !! {info['errors']:.0f} errors")
                    log("  " + "  ".join(f"{k}={v:.3f}" for k, v in vals.items())
                        + f"  steal={info['steal_pct']:.1f}%")
    for n, sc in scs.items():
        if sc.cpu_roots:
            single[n]["peak_rss"] = tree_kib(sc.cpu_roots, "VmHWM") / 1024.0
        for part, pid in sc.parts.items():
            single[n][f"peak_rss_{part}"] = tree_kib([pid], "VmHWM") / 1024.0
    # derived: added latency vs the table's baseline, per round
    for table, tnames, _ in plan:
        if table.baseline not in values:
            continue
        base = values[table.baseline]
        for n in tnames:
            if n == table.baseline:
                continue
            for dk, fk in table.added:
                a, b = values[n].get(fk, []), base.get(fk, [])
                if a and b:
                    values[n][dk] = [x - y for x, y in zip(a, b)]
    return Results(values, infos, single)


# ----------------------------------------------------------------------------------------------------------------
# Report
# ----------------------------------------------------------------------------------------------------------------

def _med(xs: list[float]) -> float | None:
    return statistics.median(xs) if xs else None


def _cell(m: Metric, xs: list[float]) -> str:
    if not xs:
        return "—"
    med = m.fmt.format(statistics.median(xs))
    if len(xs) == 1:
        return med
    return f"{med} <sub>{m.fmt.format(min(xs))}–{m.fmt.format(max(xs))}</sub>"


def _ratio(a: list[float], b: list[float]) -> float | None:
    rs = [x / y for x, y in zip(a, b) if y]
    return statistics.median(rs) if rs else None


def machine_facts(args) -> list[tuple[str, str]]:
    def ver(argv: list[str], pat: str = r"(\d+\.\d+[\w.\-]*)") -> str:
        try:
            out = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=10).stdout.decode()
            m = re.search(pat, out)
            return m.group(1) if m else "?"
        except Exception:
            return "?"

    def pkg(name: str) -> str:
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            return "not installed"
    model = "?"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    commit = ver(["git", "-C", REPO, "rev-parse", "--short", "HEAD"], r"(\w+)")
    dirty = subprocess.run(["git", "-C", REPO, "status", "--porcelain", "--", "meshproxy"],
                           stdout=subprocess.PIPE, timeout=10).stdout.strip()
    return [
        ("date", _dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")),
        ("meshproxy commit", commit + (" (+ uncommitted changes in meshproxy/)" if dirty else "")),
        ("nproc", str(os.cpu_count())),
        ("cpu", model),
        ("kernel", platform.release()),
        ("python", platform.python_version()),
        ("meshproxy build", "compiled (mypyc, setup.py MESHPROXY_MYPYC=1)" if args.build == "compiled"
         else "sources (interpreted)"),
        ("uvloop", pkg("uvloop")),
        ("haproxy / nginx / wrk / h2load / iperf3",
         " / ".join([ver(["haproxy", "-v"]), ver(["nginx", "-v"]), ver(["wrk", "-v"]),
                     ver(["h2load", "--version"]), ver(["iperf3", "--version"])])),
        ("run", f"{args.rounds} rounds, {args.duration:g} s per timed run"
                + (" (--quick)" if args.quick else "")),
    ]


def render_table(table: Table, tnames: list[str], res: Results, args,
                 verdicts: list[tuple[str, str, str, bool, bool]]) -> list[str]:
    names = [s for s in tnames if s in res.values]
    subj = table.subject if table.subject in names else None
    refs = [r for r in table.references if r in names and r != subj]
    metrics: list[Metric] = []
    for m in table_measurements(table, args):
        metrics += m.metrics
    have = {k for n in names for k in res.values[n]}
    for dk, _ in table.added:
        if dk in have:
            metrics.append(EXTRA_METRICS[dk])
    metrics += [EXTRA_METRICS["idle_rss"], EXTRA_METRICS["peak_rss"]]
    metrics += [EXTRA_METRICS[k] for k in table.extra_single]
    targets = {t.key: t for t in table.targets}

    def series(n: str, k: str) -> list[float]:
        if k in ("idle_rss", "peak_rss") or k in table.extra_single:
            v = res.single.get(n, {}).get(k)
            return [] if v is None else [v]
        return res.values[n].get(k, [])

    lines = [f"### {table.title}", ""] if table.title else []
    lines += ["Scenarios: " + "; ".join(f"`{n}` = {SCENARIOS[n].description}" for n in names) + ".", ""]
    head = ["metric", "unit"] + [f"`{n}`" for n in names]
    if subj:
        head += [f"{subj} / {r}" for r in refs] + ["target", "result"]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    mine: list[tuple[str, bool, bool]] = []
    for m in metrics:
        row = [m.label, m.unit] + [_cell(m, series(n, m.key)) for n in names]
        if subj:
            for r in refs:
                rt = None
                if not m.key.startswith("added_"):      # a ratio of two differences means nothing
                    rt = _ratio(series(subj, m.key), series(r, m.key))
                row.append("—" if rt is None else f"{rt:.2f}×")
            t = targets.get(m.key)
            if t is None:
                row += ["", ""]
            else:
                ok, shown = None, ""
                if t.kind.startswith("ratio") and t.ref in names:
                    rt = _ratio(series(subj, m.key), series(t.ref, m.key))
                    if rt is not None:
                        ok = rt <= t.value if t.kind == "ratio_le" else rt >= t.value
                        shown = f" ({rt:.3f}×)"
                elif t.kind == "le_ref" and t.ref in names:
                    v, r = _med(series(subj, m.key)), _med(series(t.ref, m.key))
                    if v is not None and r is not None:
                        ok = v <= t.value * r
                        shown = f" ({m.fmt.format(v)} vs {m.fmt.format(r)} {m.unit})"
                elif t.kind.startswith("abs"):
                    v = _med(series(subj, m.key))
                    if v is not None:
                        ok = v <= t.value if t.kind == "abs_le" else v >= t.value
                unit = f" {m.unit}" if t.kind.startswith("abs") else ""
                verdict = "n/a" if ok is None else ("**PASS**" if ok else "**FAIL**") + shown
                row += [t.text() + unit, verdict]
                if ok is not None:
                    mine.append((m.key, ok, t.gate))
                    verdicts.append((table.title, m.label, t.text() + unit, ok, t.gate))
        lines.append("| " + " | ".join(row) + " |")
    st_cells = []
    for n in names:
        xs = [i["steal_pct"] for i in res.info if i["scenario"] == n and not i.get("discarded")]
        st_cells.append(f"{statistics.median(xs):.1f} / {max(xs):.1f}" if xs else "—")
    lines.append("| steal during runs (median / max) | % | " + " | ".join(st_cells)
                 + (" |" * (len(refs) + 2) if subj else "") + " |")
    lines.append("")
    gated = [(k, ok) for k, ok, g in mine if g]
    if gated:
        fails = [k for k, ok in gated if not ok]
        lines.append(f"Targets: {len(gated) - len(fails)}/{len(gated)} pass"
                     + (f" (fail: {', '.join(fails)})." if fails else "."))
        lines.append("")
    return lines


def render(suite: Suite, res: Results, facts: list[tuple[str, str]], args
           ) -> tuple[str, list[tuple[str, str, str, bool, bool]]]:
    """The RESULTS.md section, and the verdicts (table, metric, target, ok, gated) for the log."""
    lines = [f"## {suite.title}", ""]
    steal = [i["steal_pct"] for i in res.info if not i.get("discarded")]
    steal_txt = (f"median {statistics.median(steal):.1f} %, max {max(steal):.1f} %" if steal else "n/a")
    lines += ["| | |", "|---|---|"] + [f"| {k} | {v} |" for k, v in facts] + [f"| steal during runs | {steal_txt} |",
                                                                           ""]
    lines += ["Cells: median over rounds, with min–max below. Ratios: median of per-round ratios. "
              "Latencies in ms; CPU is the proxy process tree's utime+stime.", ""]
    verdicts: list[tuple[str, str, str, bool, bool]] = []
    for table, tnames, _ in suite_plan(suite, args):
        lines += render_table(table, tnames, res, args, verdicts)
    errs = [i for i in res.info if i.get("errors")]
    if errs:
        lines.append("Client-reported errors: " + "; ".join(
            f"{i['scenario']} {i['measurement']} round {i['round'] + 1}: {i['errors']:.0f}" for i in errs) + ".")
        lines.append("")
    # raw per-run record
    disc = sum(1 for i in res.info if i.get("discarded"))
    if disc:
        lines += [f"{disc} run(s) were discarded and repeated because steal or other processes' load on CPU 1 "
                  f"exceeded {args.noise_limit:g} % ({args.strict_noise_limit:g} % for fixed-rate latency runs; "
                  f"marked *discarded* below).", ""]
    lines += ["<details><summary>Per-run record (steal, CPU busy, proxy CPU)</summary>", "",
              "| round | measurement | scenario | wall s | proxy CPU ms | client CPU ms | cpu0 busy % | cpu1 busy % "
              "| other load on cpu1 % | steal % | errors |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for i in res.info:
        lines.append(f"| {i['round'] + 1} | {i['measurement']} | {i['scenario']}"
                     f"{' *discarded*' if i.get('discarded') else ''} | {i['wall_s']:.1f} | "
                     f"{i['proxy_cpu_ms']:.0f} | {i['client_cpu_ms']:.0f} | {i['cpu0_busy_pct']:.0f} | "
                     f"{i['cpu1_busy_pct']:.0f} | {i['cpu1_other_pct']:.0f} | {i['steal_pct']:.1f} | "
                     f"{i.get('errors', 0):.0f} |")
    lines += ["", "</details>", ""]
    return "\n".join(lines), verdicts


def write_section(path: str, key: str, body: str) -> None:
    """Replace (or append) only this suite's section of RESULTS.md, between its markers."""
    begin, end = f"<!-- bench:{key}:begin -->", f"<!-- bench:{key}:end -->"
    block = f"{begin}\n{body.rstrip()}\n{end}\n"
    text = ""
    if os.path.exists(path):
        with open(path) as f:
            text = f.read()
    if not text.strip():
        text = ("# meshproxy benchmark results\n\nGenerated by `bench/run.py`; see `bench/README.md` for method. "
                "Each section is rewritten only by its own suite.\n\n")
    pat = re.compile(re.escape(begin) + r".*?" + re.escape(end) + r"\n?", re.S)
    text = pat.sub(lambda _: block, text, count=1) if pat.search(text) else text.rstrip("\n") + "\n\n" + block
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


# ----------------------------------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="3 s timed runs instead of the suite's default")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--duration", type=float,
                    help="seconds per timed run (default: l4 8, l7 6; 3 with --quick)")
    ap.add_argument("--out", default=os.path.join(HERE, "RESULTS.md"))
    ap.add_argument("--no-write", action="store_true", help="print the section instead of writing --out")
    ap.add_argument("--suite", default="l4", choices=sorted(SUITES) + ["all"],
                    help="which section to run ('all': " + ", ".join(SUITE_ORDER) + ", one after the other)")
    ap.add_argument("--scenarios", type=lambda s: [x for x in s.split(",") if x],
                    help="subset of the suite's scenarios, comma-separated")
    ap.add_argument("--measure", type=lambda s: [x for x in s.split(",") if x],
                    help="only measurements whose name contains one of these, comma-separated (e.g. 'h2load,iperf3')")
    ap.add_argument("--meshproxy", default=os.path.join(REPO, ".venv", "bin", "meshproxy"))
    ap.add_argument("--build", default="compiled", choices=["compiled", "sources"],
                    help="which meshproxy to measure: 'compiled' (default; the mypyc build, setup.py's "
                         "MESHPROXY_MYPYC=1, made or refreshed by tests/compiled.sh and put first on PYTHONPATH) "
                         "or 'sources' (the editable install as it is)")
    ap.add_argument("--noise-limit", type=float, default=20.0,
                    help="repeat a run once when steal or non-proxy load on CPU 1 exceeds this many %% (default 20)")
    ap.add_argument("--strict-noise-limit", type=float, default=5.0,
                    help="the same for latency-at-fixed-rate runs, which get one more retry (default 5)")
    ap.add_argument("--nice", type=int, default=-10,
                    help="run the upstream, proxies and clients at this nice value (0: leave alone; default -10) "
                         "so other jobs on the machine disturb them less")
    ap.add_argument("--quiet-wait", type=float, default=20.0,
                    help="before each run, wait up to this many s for other load to drop below --noise-limit")
    ap.add_argument("--wait-budget", type=float, default=120.0,
                    help="total seconds all those waits may take in one run (default 120)")
    ap.add_argument("--retries", type=int, default=1, help="repeats allowed per noisy run (default 1)")
    ap.add_argument("--keep-tmp", action="store_true", help="keep the temp dir (configs, logs)")
    ap.add_argument("--b-extra", metavar="FILE",
                    help="YAML appended to the mesh suite's sidecar B config, for hand experiments (e.g. "
                         "authorization policies); only with --no-write, so the tables never carry it")
    args = ap.parse_args(argv)
    if args.b_extra and not args.no_write:
        ap.error("--b-extra needs --no-write: RESULTS.md's tables describe the suite's own configs")
    if os.cpu_count() and os.cpu_count() < 2:
        log("warning: fewer than 2 CPUs; pinning will overlap")
    for tool in ("nginx", "haproxy", "wrk", "h2load", "iperf3", "taskset", "curl"):
        if not shutil.which(tool):
            log(f"missing tool: {tool}")
            return 2
    keys = SUITE_ORDER if args.suite == "all" else [args.suite]
    if args.build == "compiled":
        r = subprocess.run(["bash", os.path.join(REPO, "tests", "compiled.sh"), "--if-stale"],
                           stdout=subprocess.PIPE, timeout=900)
        if r.returncode != 0:
            log("tests/compiled.sh failed: cannot measure the compiled build (--build sources measures the sources)")
            return 2
        os.environ["PYTHONPATH"] = r.stdout.decode().strip().splitlines()[-1]  # every meshproxy we start
    built = subprocess.run([args.meshproxy, "--version"], stdout=subprocess.PIPE, timeout=60).stdout.decode()
    if f"({args.build})" not in built:
        log(f"{args.meshproxy} --version says {built.strip()!r}, not the {args.build} build asked for")
        return 2
    _WAIT_BUDGET[0] = args.wait_budget
    NICE[0] = args.nice if os.geteuid() == 0 or args.nice > 0 else 0

    def on_term(signum, frame):
        raise SystemExit(128 + signum)
    signal.signal(signal.SIGTERM, on_term)

    for key in keys:
        suite = SUITES[key]
        sargs = argparse.Namespace(**vars(args))
        if args.duration is None:
            sargs.duration = 3.0 if args.quick else suite.duration
        plan = suite_plan(suite, sargs)
        if not plan:
            log(f"suite {key}: nothing selected by --scenarios/--measure, skipped")
            continue
        n_runs = sargs.rounds * sum(len(tn) * len(ms) for _, tn, ms in plan)
        log(f"suite {key}: {n_runs} timed runs of ~{sargs.duration:g} s, "
            f"expect ~{n_runs * (sargs.duration + 2.5) / 60:.0f} min plus retries/waits")
        facts = machine_facts(sargs)         # before the run: the commit meshproxy is started from
        env = Env(keep_tmp=args.keep_tmp)
        t0 = time.monotonic()
        with (suite.setup(env, sargs) if suite.setup else contextlib.nullcontext()):
            try:                             # processes are killed (by PID) before the namespace goes away
                up = start_upstream(env)
                res = run_suite(suite, sargs, env, up)
            finally:
                env.cleanup()
        log(f"suite {key} done in {time.monotonic() - t0:.0f} s")
        body, verdicts = render(suite, res, facts, sargs)
        if args.no_write:
            print(body)
        else:
            write_section(args.out, suite.key, body)
            log(f"wrote section '{suite.key}' of {args.out}")
            print(body)
        for title, label, text, ok, gate in verdicts:
            log(f"{key} {'PASS' if ok else 'FAIL'}{'' if gate else ' (report only)'}: "
                f"{(title + ': ') if title else ''}{label} {text}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
