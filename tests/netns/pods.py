"""Network-namespace "pods" for end-to-end tests of the transparent sidecar.

Topology (everything inside namespaces this harness creates; the root
namespace's interfaces and firewall are never touched)::

    node ns:  br0  198.18.0.1/24  2001:db8::1/64   (forwarding on: the gateway for service VIPs later)
               ├── vp1 ══ veth ══ eth0  pod ns "client"  198.18.0.11  2001:db8::b
               └── vp2 ══ veth ══ eth0  pod ns "server"  198.18.0.12  2001:db8::c

Each veth pair is created from inside the node namespace with its peer placed
straight into the pod namespace, so no interface ever exists in the root
namespace. IPv6 duplicate address detection is off in every namespace (sysctl
``accept_dad=0`` plus ``nodad``), so v6 addresses work the moment they are added.

A :class:`Pod` runs processes inside its namespace: :meth:`Pod.run` starts one
in the background (optionally as uid/gid 1337 through ``setpriv``) and returns
a :class:`Proc` that the :class:`Node` kills at teardown; :meth:`Pod.exec` runs
one to completion. :meth:`Pod.start_sidecar` writes the pod's meshproxy config,
starts ``meshproxy run`` as 1337 and waits for ``meshproxy wait-ready``;
:meth:`Pod.apply_rules` runs ``iptables/meshproxy-init.sh`` in the pod.

The apps under ``apps/`` are tiny: ``echo_server.py`` answers every connection
with the peer address it sees and then echoes; ``echo_client.py`` sends a
payload, checks the echo byte for byte and prints one JSON line.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import yaml

REPO = Path(__file__).resolve().parents[2]
# MPT_MESHPROXY / MPT_INIT_SCRIPT point the harness at another build (an installed wheel, say).
MESHPROXY = Path(os.environ.get("MPT_MESHPROXY", REPO / ".venv" / "bin" / "meshproxy"))
INIT_SCRIPT = Path(os.environ.get("MPT_INIT_SCRIPT", REPO / "iptables" / "meshproxy-init.sh"))
APPS = Path(__file__).resolve().parent / "apps"
PYTHON = sys.executable
PROXY_UID = 1337
TOOLS = ("ip", "iptables-save", "ip6tables-save", "setpriv", "sysctl", "ss", "curl")
"""Commands the harness runs (besides meshproxy and Python)."""

SUBNET4, GATEWAY4 = "198.18.0.0/24", "198.18.0.1"
SUBNET6, GATEWAY6 = "2001:db8::/64", "2001:db8::1"
POD_NAMESPACE = "mpt"

INBOUND_PORT, OUTBOUND_PORT = 15006, 15001
HEALTH_PORT, PROMETHEUS_PORT = 15021, 15090


def run_cmd(argv: list[str], *, check: bool = True, timeout: float = 30,
            env: dict[str, str] | None = None, input: str | None = None) -> subprocess.CompletedProcess:
    """Run ``argv`` to completion; on failure raise with both output streams."""
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env, input=input)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(argv)} -> {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}")
    return proc


def in_ns(ns: str, argv: list[str], uid: int | None = None) -> list[str]:
    """Command line running ``argv`` in namespace ``ns``, as ``uid`` (uid = gid) when given."""
    drop = ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups"] if uid is not None else []
    return ["ip", "netns", "exec", ns, *drop, *argv]


# === Proc ===

@dataclass
class Proc:
    """A background process started in a pod. ``pid`` is the process itself
    (``ip netns exec`` and ``setpriv`` both exec), leader of its own session."""

    name: str
    argv: list[str]
    popen: subprocess.Popen
    log_path: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def signal(self, sig: int) -> None:
        if self.alive():
            self.popen.send_signal(sig)

    def wait(self, timeout: float) -> int:
        return self.popen.wait(timeout=timeout)

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def wait_for_log(self, needle: str, timeout: float = 10) -> None:
        deadline = time.monotonic() + timeout
        while needle not in self.log():
            if not self.alive():
                raise AssertionError(f"{self.name} exited ({self.popen.returncode}) before "
                                     f"logging {needle!r}:\n{self.log()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.name} did not log {needle!r} within {timeout}s:\n{self.log()}")
            time.sleep(0.02)

    def kill(self) -> None:
        """SIGKILL the process group this process leads (only what we started), then reap."""
        if self.popen.poll() is None:
            try:
                os.killpg(self.popen.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        try:
            self.popen.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass


# === Metrics ===

_SAMPLE = re.compile(r"^([A-Za-z_:][A-Za-z0-9_:]*)(?:\{(.*)\})?\s+(\S+)")
_LABEL = re.compile(r'([A-Za-z_][A-Za-z0-9_]*)="((?:[^"\\]|\\.)*)"')


@dataclass(frozen=True)
class Sample:
    name: str
    labels: dict[str, str]
    value: float


def parse_prometheus(text: str) -> list[Sample]:
    """Parse Prometheus text exposition into samples (comments skipped)."""
    samples = []
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = _SAMPLE.match(line)
        if m:
            samples.append(Sample(m.group(1), dict(_LABEL.findall(m.group(2) or "")), float(m.group(3))))
    return samples


def metric_sum(samples: list[Sample], name: str, **labels: str) -> float:
    """Sum of ``name`` over the samples whose labels include ``labels``."""
    return sum(s.value for s in samples
               if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()))


# === Pod ===

@dataclass
class Sidecar:
    """A running ``meshproxy run`` in a pod."""

    pod: "Pod"
    proc: Proc
    config_path: Path
    config: dict

    def metrics_text(self) -> str:
        return self.pod.exec(["curl", "-sS", "--max-time", "3",
                              f"http://127.0.0.1:{PROMETHEUS_PORT}/stats/prometheus"]).stdout

    def metrics(self) -> list[Sample]:
        return parse_prometheus(self.metrics_text())

    def counter(self, name: str, **labels: str) -> float:
        return metric_sum(self.metrics(), name, **labels)

    def wait_counter(self, name: str, at_least: float, timeout: float = 5, **labels: str) -> float:
        """Poll until ``counter(name, **labels) >= at_least`` (metrics may be recorded on close)."""
        deadline = time.monotonic() + timeout
        while True:
            value = self.counter(name, **labels)
            if value >= at_least or time.monotonic() > deadline:
                return value
            time.sleep(0.05)

    def ready(self) -> bool:
        proc = self.pod.exec([str(MESHPROXY), "wait-ready", "--config", str(self.config_path),
                              "--timeout", "2"], check=False, timeout=10)
        return proc.returncode == 0


@dataclass
class Pod:
    name: str
    ns: str
    ip: str
    ip6: str
    node: "Node"
    sidecar: Sidecar | None = None
    app: Proc | None = None

    @property
    def workload(self) -> str:
        return self.name

    @property
    def pod_name(self) -> str:
        return f"{self.name}-7c9d8f-x2k4p"

    def run(self, argv: list[str], uid: int | None = None, name: str | None = None) -> Proc:
        """Start ``argv`` in the background inside this pod; killed at teardown."""
        return self.node.spawn(self, argv, uid=uid, name=name)

    def exec(self, argv: list[str], uid: int | None = None, check: bool = True, timeout: float = 30,
             env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        """Run ``argv`` inside this pod to completion."""
        return run_cmd(in_ns(self.ns, argv, uid), check=check, timeout=timeout, env=env)

    # --- apps ---

    def start_echo(self, *ports: int) -> Proc:
        """Start ``apps/echo_server.py`` on ``ports`` (dual-stack) and wait until it listens."""
        argv = [PYTHON, "-u", str(APPS / "echo_server.py")]
        for port in ports:
            argv += ["--port", str(port)]
        proc = self.run(argv, name=f"echo@{self.name}")
        proc.wait_for_log('"listening"')
        self.app = proc
        return proc

    def client_argv(self, host: str, port: int, size: int = 4096, timeout: float = 5,
                    chunk: int = 0, delay: float = 0.0) -> list[str]:
        return [PYTHON, str(APPS / "echo_client.py"), host, str(port), "--size", str(size),
                "--timeout", str(timeout), "--chunk", str(chunk), "--delay", str(delay)]

    def connect(self, host: str, port: int, size: int = 4096, timeout: float = 5, uid: int | None = None,
                **kw) -> dict:
        """Run ``echo_client.py`` in this pod to completion and return its JSON report."""
        proc = self.exec(self.client_argv(host, port, size=size, timeout=timeout, **kw), uid=uid,
                         timeout=timeout * 4 + 10)
        return json.loads(proc.stdout.strip().splitlines()[-1])

    # --- interception rules ---

    def apply_rules(self, action: str | None = None, **flags: str) -> subprocess.CompletedProcess:
        """Run ``iptables/meshproxy-init.sh [action]`` in this pod; ``flags`` become
        ``MESHPROXY_<FLAG>`` environment variables (``exclude_inbound_ports="9090"``)."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("MESHPROXY_")}
        env["PATH"] = f"{MESHPROXY.parent}:{env.get('PATH', '/usr/sbin:/usr/bin:/sbin:/bin')}"
        env["MESHPROXY_BIN"] = str(MESHPROXY)
        for key, value in flags.items():
            env[f"MESHPROXY_{key.upper()}"] = str(value)
        script = [str(INIT_SCRIPT)] if os.access(INIT_SCRIPT, os.X_OK) else ["sh", str(INIT_SCRIPT)]
        return self.exec(script + ([action] if action else []), env=env)

    def cleanup_rules(self, **flags: str) -> subprocess.CompletedProcess:
        return self.apply_rules("cleanup", **flags)

    def nat_rules(self) -> tuple[str, str]:
        """``iptables-save -t nat`` and ``ip6tables-save -t nat`` of this pod."""
        return (self.exec(["iptables-save", "-t", "nat"]).stdout,
                self.exec(["ip6tables-save", "-t", "nat"]).stdout)

    # --- sidecar ---

    def write_config(self, **sections: dict) -> tuple[Path, dict]:
        config: dict = {
            "node": {
                "pod_name": self.pod_name,
                "pod_namespace": POD_NAMESPACE,
                "service_account": self.name,
                "instance_ip": self.ip,
                "workload_name": self.workload,
            },
            "drain": {"duration": "5s"},
            "log": {"level": "debug"},
        }
        for key, value in sections.items():
            if isinstance(value, dict) and isinstance(config.get(key), dict):
                config[key] = {**config[key], **value}
            else:
                config[key] = value
        path = self.node.workdir / f"{self.name}-meshproxy.yaml"
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        path.chmod(0o644)
        return path, config

    def start_sidecar(self, ready_timeout: float = 10, **sections: dict) -> Sidecar:
        """Start ``meshproxy run`` as uid/gid 1337 in this pod and wait for readiness."""
        path, config = self.write_config(**sections)
        proc = self.run([str(MESHPROXY), "run", "--config", str(path)], uid=PROXY_UID,
                        name=f"meshproxy@{self.name}")
        ready = self.exec([str(MESHPROXY), "wait-ready", "--config", str(path), "--timeout", str(ready_timeout)],
                          check=False, timeout=ready_timeout + 10)
        if ready.returncode != 0 or not proc.alive():
            raise AssertionError(
                f"sidecar in {self.name} not ready (wait-ready rc={ready.returncode}, "
                f"alive={proc.alive()}):\n{ready.stdout}{ready.stderr}\n--- sidecar log ---\n{proc.log()}")
        self.sidecar = Sidecar(self, proc, path, config)
        return self.sidecar

    def listening(self, port: int) -> bool:
        out = self.exec(["ss", "-Hltn", f"sport = :{port}"]).stdout
        return bool(out.strip())


# === Node ===

@dataclass
class Node:
    """The node namespace with the bridge; owns every pod and process it made."""

    make_netns: Callable[[str], str]
    ns: str = ""
    workdir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="mpt-")))
    pods: list[Pod] = field(default_factory=list)
    procs: list[Proc] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.workdir.chmod(0o755)  # the sidecar (uid 1337) reads its config here
        try:
            self._make_bridge()
        except BaseException:
            shutil.rmtree(self.workdir, ignore_errors=True)
            raise

    def _make_bridge(self) -> None:
        self.ns = self.make_netns("node")
        self._sysctl(self.ns, "net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1",
                     "net.ipv6.conf.all.accept_dad=0", "net.ipv6.conf.default.accept_dad=0")
        # Bridged frames must not traverse this namespace's netfilter (br_netfilter may be loaded).
        run_cmd(in_ns(self.ns, ["sysctl", "-qw", "net.bridge.bridge-nf-call-iptables=0",
                                "net.bridge.bridge-nf-call-ip6tables=0"]), check=False)
        self._ip(self.ns, "link", "add", "br0", "type", "bridge")
        self._ip(self.ns, "addr", "add", f"{GATEWAY4}/24", "dev", "br0")
        self._ip(self.ns, "addr", "add", f"{GATEWAY6}/64", "dev", "br0", "nodad")
        self._ip(self.ns, "link", "set", "br0", "up")

    @staticmethod
    def _ip(ns: str, *args: str) -> None:
        run_cmd(["ip", "-n", ns, *args])

    @staticmethod
    def _sysctl(ns: str, *settings: str) -> None:
        run_cmd(in_ns(ns, ["sysctl", "-qw", *settings]))

    def add_pod(self, name: str) -> Pod:
        """A pod namespace joined to the bridge with the next free v4/v6 address."""
        index = len(self.pods) + 1
        host = 10 + index
        ns = self.make_netns(name)
        self._sysctl(ns, "net.ipv6.conf.all.accept_dad=0", "net.ipv6.conf.default.accept_dad=0")
        port = f"vp{index}"
        self._ip(self.ns, "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", ns)
        self._ip(self.ns, "link", "set", port, "master", "br0", "up")
        self._sysctl(ns, "net.ipv6.conf.eth0.accept_dad=0")
        ip, ip6 = f"198.18.0.{host}", f"2001:db8::{host:x}"
        self._ip(ns, "addr", "add", f"{ip}/24", "dev", "eth0")
        self._ip(ns, "addr", "add", f"{ip6}/64", "dev", "eth0", "nodad")
        self._ip(ns, "link", "set", "eth0", "up")
        self._ip(ns, "route", "add", "default", "via", GATEWAY4)
        self._ip(ns, "-6", "route", "add", "default", "via", GATEWAY6)
        pod = Pod(name=name, ns=ns, ip=ip, ip6=ip6, node=self)
        self.pods.append(pod)
        return pod

    def spawn(self, pod: Pod, argv: list[str], uid: int | None = None, name: str | None = None) -> Proc:
        name = name or f"{Path(argv[0]).name}@{pod.name}"
        log_path = self.workdir / f"{len(self.procs):02d}-{re.sub(r'[^A-Za-z0-9@.-]', '_', name)}.log"
        with open(log_path, "wb") as log:
            popen = subprocess.Popen(in_ns(pod.ns, argv, uid), stdout=log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, start_new_session=True)
        proc = Proc(name=name, argv=argv, popen=popen, log_path=log_path)
        self.procs.append(proc)
        return proc

    def dump_logs(self) -> str:
        return "".join(f"\n===== {p.name} (pid {p.pid}, rc {p.popen.poll()}) =====\n{p.log()}" for p in self.procs)

    def close(self) -> None:
        """Kill every process we started (by PID / our own process groups). The
        namespaces themselves are removed by the ``make_netns`` finaliser."""
        for proc in reversed(self.procs):
            proc.kill()
        shutil.rmtree(self.workdir, ignore_errors=True)
