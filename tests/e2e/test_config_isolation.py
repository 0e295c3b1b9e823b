"""The real ``meshproxy run``: config validated in a child process, the sidecar never loads
pydantic, and hot reload (timer and SIGHUP) still validates, applies or refuses."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request

import pytest
from e2e_support import free_port

from meshproxy.config.load import load

MESHPROXY = [sys.executable, "-m", "meshproxy"]


def get_json(url: str):
    with urllib.request.urlopen(url, timeout=5) as r:
        return json.loads(r.read())


def metric(url: str, name: str) -> float:
    with urllib.request.urlopen(url, timeout=5) as r:
        for line in r.read().decode().splitlines():
            if line.startswith(name + " ") or line.startswith(name + "{"):
                return float(line.rsplit(" ", 1)[1])
    return 0.0


def wait_until(pred, timeout=15.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.1)
    return False


@pytest.fixture
def proxy(tmp_path):
    ports = {k: free_port() for k in ("admin", "health", "prom", "web")}
    path = tmp_path / "mesh.yaml"
    procs = []

    def write(interval: str, upstream_port: int):
        path.write_text(f"""
inbound: {{enabled: false}}
outbound: {{enabled: false}}
admin: {{port: {ports['admin']}}}
health: {{address: 127.0.0.1, port: {ports['health']}}}
prometheus: {{address: 127.0.0.1, port: {ports['prom']}}}
reload: {{interval: {interval}}}
listeners:
  - {{name: web, port: {ports['web']}, protocol: tcp, upstream: "127.0.0.1:{upstream_port}"}}
clusters:
  - {{name: c{upstream_port}, endpoints: ["127.0.0.1:{upstream_port}"]}}
""")

    def start():
        p = subprocess.Popen([*MESHPROXY, "run", "--config", str(path)], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
        procs.append(p)
        rc = subprocess.run([*MESHPROXY, "wait-ready", "--config", str(path), "--timeout", "15"]).returncode
        assert rc == 0, p.communicate(timeout=5) if p.poll() is not None else "not ready"
        return p

    yield write, start, path, ports
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


def test_the_sidecar_runs_without_pydantic_and_dumps_the_validated_config(proxy):
    write, start, path, ports = proxy
    write("0", 9)
    p = start()
    maps = open(f"/proc/{p.pid}/maps").read()
    assert "_pydantic_core" not in maps, "pydantic was loaded by the running sidecar"
    dumped = get_json(f"http://127.0.0.1:{ports['admin']}/config_dump")
    assert dumped["version"] == 1 and dumped["source"] == str(path)
    expected = load(path).model_dump(mode="json")
    assert dumped["config"]["listeners"] == expected["listeners"]
    assert dumped["config"]["clusters"] == expected["clusters"]
    assert dumped["config"]["node"] == expected["node"]


def test_timed_reload_applies_a_valid_file_and_refuses_a_broken_one(proxy):
    write, start, path, ports = proxy
    write("0.2s", 9)
    start()
    admin = f"http://127.0.0.1:{ports['admin']}"
    write("0.2s", 10)  # a change to clusters: reloadable
    assert wait_until(lambda: get_json(f"{admin}/config_dump")["version"] == 2)
    assert get_json(f"{admin}/config_dump")["config"]["clusters"][0]["name"] == "c10"
    path.write_text("routes: [{name: broken}]\n")
    assert wait_until(lambda: metric(f"{admin}/stats/prometheus", "meshproxy_config_errors_total") >= 1)
    dumped = get_json(f"{admin}/config_dump")
    assert dumped["version"] == 2 and dumped["config"]["clusters"][0]["name"] == "c10"
    assert metric(f"{admin}/stats/prometheus", "meshproxy_config_reloads_total") == 1


def test_sighup_reloads_at_once_without_a_timer(proxy):
    write, start, path, ports = proxy
    write("0", 9)
    p = start()
    admin = f"http://127.0.0.1:{ports['admin']}"
    write("0", 11)
    time.sleep(0.5)
    assert get_json(f"{admin}/config_dump")["version"] == 1  # no timer: nothing happens by itself
    os.kill(p.pid, signal.SIGHUP)
    assert wait_until(lambda: get_json(f"{admin}/config_dump")["version"] == 2)
    assert get_json(f"{admin}/config_dump")["config"]["clusters"][0]["name"] == "c11"
    assert p.poll() is None
