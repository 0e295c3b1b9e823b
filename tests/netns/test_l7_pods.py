"""End to end at L7: pods in network namespaces with real interception, HTTP
routed by the client sidecar to a service VIP's endpoints, and gRPC inbound.

Topology (``pods.py``): client 198.18.0.11, server-a 198.18.0.12, server-b
198.18.0.13 on the node bridge, each with the interception rules and a sidecar.

- The client's app does plain HTTP to the service VIP 198.19.0.10:80, which no
  host owns. The OUTPUT nat rule redirects the connect to the client sidecar's
  outbound listener; nat OUTPUT runs after the routing decision, so the VIP
  needs a route, which the pod's default route via the node bridge provides
  (the packet never leaves: it is redirected to 15001 locally). Checked: with
  the default route deleted, ``curl http://198.19.0.10/`` fails at once
  (ENETUNREACH, curl exit 7) and the sidecar never sees the connection. The sidecar
  routes authority ``198.19.0.10`` to the cluster ``reviews`` (both server
  pods, round robin), the server sidecars take it inbound and hand it to their
  app from 127.0.0.6.
- A grpcio client in the client pod calls server-a's gRPC app on a port the
  server sidecar declares ``grpc``: through both sidecars, status and metadata
  intact.

Run: ``cd /work/main && .venv/bin/python -m pytest tests/netns/test_l7_pods.py -q`` (as root).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from pods import APPS, PYTHON, REPO, Node, Pod  # noqa: E402

VIP = "198.19.0.10"
APP_PORT = 8080
GRPC_PORT = 50051
GRPC_ECHO = REPO / "tests" / "e2e" / "grpc_echo.py"
REQUESTS = "istio_requests_total"


def server_pod(node: Node, name: str) -> Pod:
    pod = node.add_pod(name)
    proc = pod.run([PYTHON, "-u", str(APPS / "http_whoami.py"), name, str(APP_PORT)], name=f"whoami@{name}")
    proc.wait_for_log('"listening"')
    grpc_app = pod.run([PYTHON, "-u", str(GRPC_ECHO), str(GRPC_PORT)], name=f"grpc@{name}")
    grpc_app.wait_for_log("listening")
    pod.app = proc
    pod.apply_rules()
    pod.start_sidecar(ports=[{"port": GRPC_PORT, "protocol": "grpc"}])
    return pod


def client_pod(node: Node, endpoints: list[str]) -> Pod:
    pod = node.add_pod("client")
    pod.apply_rules()
    pod.start_sidecar(
        clusters=[{"name": "reviews", "endpoints": endpoints}],
        routes=[{"name": "reviews-vip", "match": {"authority": [VIP]}, "cluster": "reviews"}],
    )
    return pod


def test_http_to_service_vip_is_routed_round_robin_through_both_sidecars(node):
    client = client_pod(node, [f"198.18.0.12:{APP_PORT}", f"198.18.0.13:{APP_PORT}"])
    a, b = server_pod(node, "server-a"), server_pod(node, "server-b")
    assert (a.ip, b.ip) == ("198.18.0.12", "198.18.0.13")

    seen = []
    for i in range(4):
        out = client.exec(["curl", "-sS", "--max-time", "5", f"http://{VIP}/reviews/{i}"], timeout=15).stdout
        seen.append(json.loads(out))

    pods = [s["pod"] for s in seen]
    assert sorted(pods) == ["server-a", "server-a", "server-b", "server-b"], pods
    assert pods[0] != pods[1] and pods[1] != pods[2], f"not round robin: {pods}"
    assert all(s["peer"] == "127.0.0.6" for s in seen), [s["peer"] for s in seen]
    assert [s["path"] for s in seen] == [f"/reviews/{i}" for i in range(4)]
    assert all(s["headers"]["host"] == VIP for s in seen)
    assert len({s["headers"]["x-request-id"] for s in seen}) == 4

    src = client.sidecar
    assert src.wait_counter(REQUESTS, 4, reporter="source", destination_service="reviews",
                            response_code="200") == 4, src.metrics_text()
    for pod in (a, b):
        dst = pod.sidecar
        assert dst.wait_counter(REQUESTS, 2, reporter="destination", response_code="200",
                                destination_service=f"{pod.ip}:{APP_PORT}",
                                destination_workload=pod.name) == 2, dst.metrics_text()
        assert dst.counter(REQUESTS, reporter="source") == 0


GRPC_CLIENT = """
import json, sys
sys.path.insert(0, {e2e!r})
import grpc
from grpc_echo import EchoClient
c = EchoClient({target!r})
resp, call = c.unary.with_call(b"hi", timeout=5)
out = {{"unary": resp.decode(), "peer": dict(call.trailing_metadata())["x-peer"],
        "stream": [m.decode() for m in c.server_stream(b"5", timeout=5)]}}
try:
    c.unary(b"fail:gadget", timeout=5)
except grpc.RpcError as e:
    out["error"] = [e.code().name, e.details(), dict(e.trailing_metadata()).get("x-reason")]
print(json.dumps(out))
"""


def test_inbound_grpc_on_a_declared_port_is_proxied(node):
    client = client_pod(node, [f"198.18.0.12:{APP_PORT}"])
    server = server_pod(node, "server-a")
    script = GRPC_CLIENT.format(e2e=str(GRPC_ECHO.parent), target=f"{server.ip}:{GRPC_PORT}")

    out = json.loads(client.exec([PYTHON, "-c", script], timeout=30).stdout.strip().splitlines()[-1])

    assert out["unary"] == "echo:hi"
    assert out["peer"].startswith("ipv4:127.0.0.6:"), out["peer"]
    assert out["stream"] == [f"m{i}" for i in range(5)]
    assert out["error"] == ["NOT_FOUND", "no such thing: gadget", "missing"]
    dst = server.sidecar
    labels = dict(reporter="destination", request_protocol="grpc", destination_service=f"{server.ip}:{GRPC_PORT}")
    assert dst.wait_counter(REQUESTS, 2, grpc_response_status="0", **labels) == 2, dst.metrics_text()
    assert dst.wait_counter(REQUESTS, 1, grpc_response_status="5", **labels) == 1, dst.metrics_text()
    assert dst.counter("meshproxy_protocol_detection_total", direction="inbound", outcome="declared") >= 1
    src = client.sidecar
    assert src.wait_counter(REQUESTS, 3, reporter="source", request_protocol="grpc") == 3, src.metrics_text()
