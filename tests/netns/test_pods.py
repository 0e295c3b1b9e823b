"""End to end: pods in network namespaces, the interception rules and the L4 sidecar.

Each test builds its own node (a bridge namespace) and pods (see ``pods.py``),
runs the app as an ordinary process and meshproxy as uid/gid 1337 inside the
pod, applies ``iptables/meshproxy-init.sh`` there, and checks what the app saw
(the echo server reports the peer address) and what the sidecar counted
(``/stats/prometheus``). Every socket operation and every subprocess has a
timeout; everything is torn down by the ``node`` fixture even on failure.

Run: ``cd /work/main && .venv/bin/python -m pytest tests/netns/test_pods.py -q -x`` (as root).
"""

from __future__ import annotations

import json
import re
import signal
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from pods import MESHPROXY, INBOUND_PORT, OUTBOUND_PORT, Node, Pod  # noqa: E402

APP_PORT = 8080
EXCLUDED_PORT = 9090
DEFAULT_EXCLUDED_INBOUND = "15090,15021,15020"

OPENED = "istio_tcp_connections_opened_total"
CLOSED = "istio_tcp_connections_closed_total"
SENT = "istio_tcp_sent_bytes_total"
RECEIVED = "istio_tcp_received_bytes_total"

HEADER_MAX = 80  # "PEER <ip> <port> LOCAL <ip> <port>\n" written by the echo server before the echo

FAMILIES = ["v4", "v6"]


def addr(pod: Pod, family: str) -> str:
    return pod.ip if family == "v4" else pod.ip6


def passthrough(family: str) -> str:
    return "127.0.0.6" if family == "v4" else "::6"


def loopback(family: str) -> str:
    return "127.0.0.1" if family == "v4" else "::1"


def meshed(node: Node, name: str, *app_ports: int, **rule_flags: str) -> Pod:
    """A pod with the echo app, the interception rules and a ready sidecar."""
    pod = node.add_pod(name)
    if app_ports:
        pod.start_echo(*app_ports)
    pod.apply_rules(**rule_flags)
    pod.start_sidecar()
    return pod


def plain(node: Node, name: str, *app_ports: int) -> Pod:
    """A pod with no sidecar and no rules (optionally running the echo app)."""
    pod = node.add_pod(name)
    if app_ports:
        pod.start_echo(*app_ports)
    return pod


def ok(result: dict) -> dict:
    assert result["ok"], f"connection failed: {result}"
    return result


# === 1, 2, 6: inbound, outbound and sidecar-to-sidecar, IPv4 and IPv6 ===

@pytest.mark.parametrize("family", FAMILIES)
def test_inbound_is_redirected_through_the_sidecar(node, family):
    client, server = plain(node, "client"), meshed(node, "server", APP_PORT)
    size = 20_000

    result = ok(client.connect(addr(server, family), APP_PORT, size=size))

    assert result["peer"] == passthrough(family), "the app must see the sidecar's passthrough source"
    assert result["local"] == loopback(family) and result["port"] == APP_PORT
    labels = dict(reporter="destination", destination_workload="server", destination_workload_namespace="mpt")
    sidecar = server.sidecar
    assert sidecar.wait_counter(OPENED, 1, **labels) == 1, sidecar.metrics_text()
    assert sidecar.wait_counter(CLOSED, 1, **labels) == 1, sidecar.metrics_text()
    received = sidecar.wait_counter(RECEIVED, size, **labels)
    sent = sidecar.wait_counter(SENT, size, **labels)
    # Istio semantics: received = bytes from the downstream client, sent = bytes back to it.
    assert size <= received <= size + HEADER_MAX, sidecar.metrics_text()
    assert size <= sent <= size + HEADER_MAX, sidecar.metrics_text()
    assert sidecar.counter(OPENED, reporter="source") == 0, "inbound must not count as outbound"


@pytest.mark.parametrize("family", FAMILIES)
def test_outbound_is_forwarded_to_the_original_destination(node, family):
    client, server = meshed(node, "client"), plain(node, "server", APP_PORT)
    size = 100_000

    result = ok(client.connect(addr(server, family), APP_PORT, size=size))

    assert result["peer"] == addr(client, family), "the sidecar connects from the pod's own address"
    assert result["echo_ok"]
    sidecar = client.sidecar
    labels = dict(reporter="source", source_workload="client", source_workload_namespace="mpt")
    assert sidecar.wait_counter(OPENED, 1, **labels) == 1, sidecar.metrics_text()
    assert sidecar.wait_counter(CLOSED, 1, **labels) == 1, sidecar.metrics_text()
    dest = f"{server.ip}:{APP_PORT}" if family == "v4" else f"[{server.ip6}]:{APP_PORT}"
    services = {s.labels.get("destination_service") for s in sidecar.metrics()
                if s.name == OPENED and s.labels.get("reporter") == "source"}
    assert services & {dest, dest.replace("[", "").replace("]", "")}, \
        f"destination_service should be the original destination {dest}, got {services}"
    assert size <= sidecar.wait_counter(RECEIVED, size, **labels) <= size + HEADER_MAX
    assert size <= sidecar.wait_counter(SENT, size, **labels) <= size + HEADER_MAX
    assert sidecar.counter(OPENED, reporter="destination") == 0


@pytest.mark.parametrize("family", FAMILIES)
def test_sidecar_to_sidecar(node, family):
    client, server = meshed(node, "client"), meshed(node, "server", APP_PORT)

    for size in (1, 300_000):
        result = ok(client.connect(addr(server, family), APP_PORT, size=size))
        assert result["peer"] == passthrough(family)

    assert client.sidecar.wait_counter(OPENED, 2, reporter="source") == 2, client.sidecar.metrics_text()
    assert server.sidecar.wait_counter(OPENED, 2, reporter="destination") == 2, server.sidecar.metrics_text()


# === 3: no loops ===

def test_connecting_to_the_sidecar_ports_directly_does_not_loop(node):
    server, other = meshed(node, "server", APP_PORT), plain(node, "other")
    targets = [(server, host, port)
               for host in ("127.0.0.1", "::1", server.ip, server.ip6)
               for port in (OUTBOUND_PORT, INBOUND_PORT)]
    targets += [(other, host, port) for host in (server.ip, server.ip6) for port in (OUTBOUND_PORT, INBOUND_PORT)]

    outcomes = {}
    for pod, host, port in targets:
        result = pod.connect(host, port, size=64, timeout=3)
        outcomes[f"{pod.name}->{host}:{port}"] = result["error"] or "ok"

    # Refused, reset or closed without reaching an app is fine; a hang (timeout) means a loop.
    hung = {k: v for k, v in outcomes.items() if v in ("timeout", "ok")}
    assert not hung, f"direct connections to sidecar ports should be refused or closed: {outcomes}"
    sidecar = server.sidecar
    assert sidecar.proc.alive(), sidecar.proc.log()[-3000:]
    assert sidecar.ready()
    time.sleep(1.0)  # a loop would keep opening connections in the background
    opened = sidecar.counter(OPENED)
    assert opened <= 2 * len(targets), f"connection storm: {opened} opened\n{sidecar.metrics_text()}"
    time.sleep(0.5)
    assert sidecar.counter(OPENED) == opened, "connections still being opened: a loop"
    # The proxy still serves real traffic.
    ok(other.connect(server.ip, APP_PORT))


# === 4: exclusions ===

def test_excluded_ports_and_cidrs_bypass_the_sidecar(node):
    outside = plain(node, "outside", APP_PORT)  # created first: its address goes into the exclusions
    server = meshed(node, "server", APP_PORT, EXCLUDED_PORT,
                    exclude_inbound_ports=f"{DEFAULT_EXCLUDED_INBOUND},{EXCLUDED_PORT}")
    client = meshed(node, "client", exclude_outbound_ports=str(EXCLUDED_PORT),
                    exclude_outbound_cidrs=f"{outside.ip}/32,{outside.ip6}/128")

    # Excluded inbound port, from a pod without a sidecar: the app sees the real client.
    assert ok(outside.connect(server.ip, EXCLUDED_PORT))["peer"] == outside.ip
    assert ok(outside.connect(server.ip6, EXCLUDED_PORT))["peer"] == outside.ip6
    # Excluded outbound port (and excluded inbound on the server): neither sidecar sees it.
    assert ok(client.connect(server.ip, EXCLUDED_PORT))["peer"] == client.ip
    # Excluded outbound CIDRs, v4 and v6.
    assert ok(client.connect(outside.ip, APP_PORT))["peer"] == client.ip
    assert ok(client.connect(outside.ip6, APP_PORT))["peer"] == client.ip6

    # Control: a captured connection is counted once by each side, so nothing above was.
    assert ok(client.connect(server.ip, APP_PORT))["peer"] == "127.0.0.6"
    assert client.sidecar.wait_counter(OPENED, 1, reporter="source") == 1, client.sidecar.metrics_text()
    assert server.sidecar.wait_counter(OPENED, 1, reporter="destination") == 1, server.sidecar.metrics_text()
    time.sleep(0.3)
    assert client.sidecar.counter(OPENED) == 1, client.sidecar.metrics_text()
    assert server.sidecar.counter(OPENED) == 1, server.sidecar.metrics_text()


# === 5: app loopback traffic ===

def test_app_loopback_traffic_is_not_captured(node):
    server, client = meshed(node, "server", APP_PORT), plain(node, "client")

    assert ok(server.connect("127.0.0.1", APP_PORT))["peer"] == "127.0.0.1"
    assert ok(server.connect("::1", APP_PORT))["peer"] == "::1"

    # Control: real inbound is counted, so the loopback connections above were not.
    assert ok(client.connect(server.ip, APP_PORT))["peer"] == "127.0.0.6"
    assert server.sidecar.wait_counter(OPENED, 1, reporter="destination") == 1
    time.sleep(0.3)
    assert server.sidecar.counter(OPENED) == 1, server.sidecar.metrics_text()


# === 7: apply is idempotent, cleanup restores the original ===

def _normalise(saved: str) -> list[str]:
    """iptables-save output without comments/timestamps and with zeroed counters."""
    return [re.sub(r"\[\d+:\d+\]", "[0:0]", line) for line in saved.splitlines()
            if line and not line.startswith("#")]


def _nat(pod: Pod) -> tuple[list[str], list[str]]:
    v4, v6 = pod.nat_rules()
    return _normalise(v4), _normalise(v6)


def test_apply_is_idempotent_and_cleanup_restores_the_original(node):
    pod = node.add_pod("pod")
    # Someone else's rules, which must survive apply and cleanup untouched.
    for tool, dst in (("iptables", "198.19.255.1/32"), ("ip6tables", "2001:db8:ffff::1/128")):
        pod.exec([tool, "-t", "nat", "-N", "KEEP_ME"])
        pod.exec([tool, "-t", "nat", "-A", "KEEP_ME", "-p", "udp", "-j", "RETURN"])
        pod.exec([tool, "-t", "nat", "-A", "PREROUTING", "-p", "udp", "-j", "KEEP_ME"])
        pod.exec([tool, "-t", "nat", "-A", "OUTPUT", "-d", dst, "-p", "tcp", "-j", "RETURN"])
    original = _nat(pod)

    pod.apply_rules()
    once = _nat(pod)
    for rules in once:
        text = "\n".join(rules)
        assert f"--to-ports {INBOUND_PORT}" in text and f"--to-ports {OUTBOUND_PORT}" in text, text
        assert "KEEP_ME" in text
    pod.apply_rules()
    assert _nat(pod) == once, "re-applying must not change the ruleset"

    # Re-applying with other settings replaces ours rather than adding to it.
    pod.apply_rules(exclude_inbound_ports=f"{DEFAULT_EXCLUDED_INBOUND},{EXCLUDED_PORT}")
    changed = _nat(pod)
    assert changed != once
    pod.cleanup_rules()
    assert _nat(pod) == original, "cleanup must restore the original ruleset"
    pod.apply_rules(exclude_inbound_ports=f"{DEFAULT_EXCLUDED_INBOUND},{EXCLUDED_PORT}")
    assert _nat(pod) == changed

    # Cleanup twice is harmless; the CLI does the same as the script.
    pod.cleanup_rules()
    pod.cleanup_rules()
    assert _nat(pod) == original
    pod.exec([str(MESHPROXY), "iptables", "apply"])
    pod.exec([str(MESHPROXY), "iptables", "apply"])
    assert _nat(pod) == once
    pod.exec([str(MESHPROXY), "iptables", "cleanup"])
    assert _nat(pod) == original


# === 8: SIGTERM drains in-flight connections ===

def test_sigterm_drains_in_flight_and_refuses_new_connections(node):
    client, server = plain(node, "client"), meshed(node, "server", APP_PORT)
    drain_seconds, margin = 5.0, 3.0
    sidecar = server.sidecar
    assert sidecar.config["drain"]["duration"] == f"{drain_seconds:g}s"
    app = server.app

    # ~3 s transfer: 30 chunks of 2000 bytes, 0.1 s apart, echoed back.
    slow = client.run(client.client_argv(server.ip, APP_PORT, size=60_000, chunk=2000, delay=0.1, timeout=10),
                      name="slow-client")
    deadline = time.monotonic() + 5
    while '"peer": "127.0.0.6"' not in app.log():
        assert time.monotonic() < deadline, f"slow transfer never reached the app:\n{app.log()}\n{slow.log()}"
        time.sleep(0.02)
    time.sleep(0.3)
    assert slow.alive()

    sigterm_at = time.monotonic()
    sidecar.proc.signal(signal.SIGTERM)
    deadline = time.monotonic() + 2
    while server.listening(INBOUND_PORT):
        assert time.monotonic() < deadline, "the inbound listener is still listening 2 s after SIGTERM"
        time.sleep(0.05)

    refused = client.connect(server.ip, APP_PORT, size=64, timeout=2)
    assert slow.alive(), "the slow transfer ended before the drain check: make it slower"
    assert refused["error"] in ("ConnectionRefusedError", "ConnectionResetError", "BrokenPipeError"), \
        f"a new connection during drain should be refused or reset: {refused}"

    assert slow.wait(timeout=15) == 0
    transfer = json.loads(slow.log().strip().splitlines()[-1])
    assert transfer["ok"] and transfer["echo_ok"], f"in-flight transfer broken by the drain: {transfer}"
    assert transfer["peer"] == "127.0.0.6"

    rc = sidecar.proc.wait(timeout=drain_seconds + margin + 5)
    took = time.monotonic() - sigterm_at
    assert rc == 0, f"sidecar exit code {rc}\n{sidecar.proc.log()[-3000:]}"
    assert took <= drain_seconds + margin, f"sidecar took {took:.1f}s to exit after SIGTERM"
