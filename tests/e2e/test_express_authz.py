"""Authorization on the express lane, against the general path, and policy reloads on kept-alive connections.

Two inbound sidecars with the same policies run side by side, one with ``http.express: true``
and one with ``false``, in front of the same scripted app (``test_express.Scripted``). For each
request both must send the app the same bytes (nothing when denied), answer the client the same
way (403 ``RBAC: access denied`` with its flag), record the same Istio request metrics and count
the same authorization decisions — once each, though a denied request on the lane is re-read by
the general path it is handed to. Allowed requests must stay on the lane.

A policy reload applies to the next request on every connection, kept-alive ones included
(on either lane): a sidecar's pooled connections from its peers live for minutes.
"""

from __future__ import annotations

import asyncio
import random

import pytest
from e2e_support import metric_value, metrics_text
from test_express import BODY, OK_CL, Scripted, exchange, parse_response, series

from meshproxy.config.load import from_dict
from meshproxy.http.express import ExpressServer
from meshproxy.http.server import HttpServerConnection
from meshproxy.net.addrs import OrigDst

POLICIES = [
    {"name": "deny-admin", "action": "DENY", "rules": [{"to": [{"paths": ["/admin*"]}]}]},
    {"name": "deny-internal-host", "action": "DENY", "rules": [{"to": [{"hosts": ["internal.shop.svc:*"]}]}]},
    {"name": "reads", "action": "ALLOW", "rules": [{"to": [{"methods": ["GET", "HEAD"]}]}]},
    {"name": "audit-reports", "action": "AUDIT", "rules": [{"to": [{"paths": ["/reports/*"]}]}]},
    {"name": "would-deny-beta", "action": "DENY", "dry_run": True, "rules": [{"to": [{"paths": ["/beta"]}]}]},
]
HEADER_POLICIES = [
    {"name": "tenant-a-only", "action": "ALLOW",
     "rules": [{"when": [{"key": "request.headers[X-Tenant]", "values": ["a", "a-*"]}]}]},
]
DENIED = (403, b"Forbidden")


def req(method: str, path: str, host: str = "reviews.shop.svc", extra: str = "") -> bytes:
    """A closing request with a fixed x-request-id (a denied request's id is otherwise drawn
    twice on the lane: once there, once on the general path it is handed to)."""
    return (f"{method} {path} HTTP/1.1\r\nHost: {host}\r\nx-request-id: rid-1\r\n{extra}"
            f"Connection: close\r\n\r\n").encode()


CASES = {
    "allowed": (req("GET", "/items?x=1"), True),
    "deny-path": (req("GET", "/admin/users"), False),
    "deny-host-any-case": (req("GET", "/items", host="Internal.SHOP.svc:9080"), False),
    "default-deny-method": (req("DELETE", "/items"), False),
    "audited": (req("GET", "/reports/q3"), True),
    "dry-run-would-deny": (req("GET", "/beta"), True),
    "unusual-head-exact-route": (req("GET", "/items", extra="X-Forwarded-For: 1.2.3.4\r\n"), True),
    "unusual-head-denied": (req("GET", "/admin", extra="X-Forwarded-For: 1.2.3.4\r\n"), False),
}
HEADER_CASES = {
    "tenant-a": (req("GET", "/items", extra="X-Tenant: a\r\n"), True),
    "tenant-a-prefix": (req("GET", "/items", extra="x-tenant: a-7\r\n"), True),
    "tenant-b": (req("GET", "/items", extra="X-Tenant: b\r\n"), False),
    "no-tenant": (req("GET", "/items"), False),
}


async def _pair(proxy, origdst, policies):
    up = await Scripted().start()
    origdst.default = OrigDst("127.0.0.1", up.port)  # inbound: clients meant the app's port

    def cfg(express: bool) -> dict:
        return {"inbound": {"enabled": True}, "http": {"express": express},
                "security": {"authorization_policies": policies}}

    return up, await proxy(cfg(True)), await proxy(cfg(False))


def _authz_counts(r) -> dict:
    """``meshproxy_authz_decisions_total`` by (policy, enforced), read from the collector."""
    return {(smp.labels["policy"], smp.labels["enforced"]): smp.value
            for fam in r.app.metrics.authz.collect() for smp in fam.samples
            if smp.name.endswith("_total") and smp.value}


async def _run_case(pair, raw: bytes):
    up, fast, slow = pair
    results = []
    for r in (fast, slow):
        random.seed(11)
        up.got, up.script = [], [OK_CL]
        before_m, before_a = series(r), _authz_counts(r)
        client = await exchange(r.port("virtualInbound"), raw, timeout=2.0)
        await asyncio.sleep(0.05)
        after_m, after_a = series(r), _authz_counts(r)
        delta_m = {k: tuple(a - b for a, b in zip(v, before_m.get(k, (0, 0, 0)))) for k, v in after_m.items()
                   if v != before_m.get(k)}
        delta_a = {k: v - before_a.get(k, 0) for k, v in after_a.items() if v != before_a.get(k)}
        results.append((list(up.got), parse_response(client, raw.startswith(b"HEAD")), delta_m, delta_a))
    return results


@pytest.mark.parametrize("policies, cases", [(POLICIES, CASES), (HEADER_POLICIES, HEADER_CASES)],
                         ids=["paths-hosts-methods-audit-dry-run", "request-headers"])
async def test_express_lane_authorizes_as_the_general_path_does(proxy, origdst, policies, cases):
    pair = await _pair(proxy, origdst, policies)
    try:
        for name, (raw, allowed) in cases.items():
            fast, slow = await _run_case(pair, raw)
            assert fast == slow, name
            got, resp, metrics, counted = fast
            if allowed:
                assert len(got) == 1 and resp and resp[0][0] == 200, (name, fast)
            else:
                assert got == [], f"{name}: a denied request reached the app"
                status, reason, fields, body, _ = resp[0]
                assert (status, reason, body) == (*DENIED, b"RBAC: access denied"), name
                assert (b"x-meshproxy-response-flags", b"RBAC") in fields, name
                assert counted and all(k[1] == "true" for k in counted), name
            assert sum(v[0] for v in metrics.values()) == 1, f"{name}: one request recorded"
    finally:
        await pair[0].stop()


async def test_allowed_requests_stay_on_the_lane(proxy, origdst):
    up, fast, _ = await _pair(proxy, origdst, POLICIES)
    up.script = [OK_CL] * 3
    reader, writer = await asyncio.open_connection("127.0.0.1", fast.port("virtualInbound"))
    try:
        for path in ("/a", "/reports/x", "/b"):
            writer.write(f"GET {path} HTTP/1.1\r\nHost: reviews\r\n\r\n".encode())
            assert (await reader.readuntil(BODY)).startswith(b"HTTP/1.1 200 OK\r\n")
            assert [type(c) for c in fast.app.http.connections] == [ExpressServer]
        writer.write(b"GET /admin HTTP/1.1\r\nHost: reviews\r\n\r\n")  # denied: handed over, answered, kept
        head = await reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 403 Forbidden\r\n") and b"connection: close" not in head.lower()
        await reader.readuntil(b"RBAC: access denied")
        assert [type(c) for c in fast.app.http.connections] == [HttpServerConnection]
        assert len(up.got) == 3
    finally:
        writer.close()
        await up.stop()


def _policies_cfg(app, policies) -> object:
    """The running config with ``policies`` in place of its authorization policies."""
    raw = app.snapshot.config.model_dump(by_alias=True, exclude_unset=True)
    raw.setdefault("security", {})["authorization_policies"] = policies
    return from_dict(raw)


@pytest.mark.parametrize("express", [True, False])
async def test_policy_reload_applies_to_the_next_request_on_a_kept_alive_connection(proxy, origdst, express):
    up = await Scripted().start()
    origdst.default = OrigDst("127.0.0.1", up.port)
    r = await proxy({"inbound": {"enabled": True}, "http": {"express": express}})  # no policies at start
    up.script = [OK_CL] * 4
    reader, writer = await asyncio.open_connection("127.0.0.1", r.port("virtualInbound"))
    one = b"GET /orders HTTP/1.1\r\nHost: reviews\r\n\r\n"
    try:
        writer.write(one)
        assert (await reader.readuntil(BODY)).startswith(b"HTTP/1.1 200 OK\r\n")
        r.app.apply(_policies_cfg(r.app, [{"name": "no-orders", "action": "DENY",
                                           "rules": [{"to": [{"paths": ["/orders"]}]}]}]))
        writer.write(one)  # same connection
        head = await reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 403 Forbidden\r\n")
        await reader.readuntil(b"RBAC: access denied")
        r.app.apply(_policies_cfg(r.app, []))  # and back: allowed again on that connection
        writer.write(one)
        assert (await reader.readuntil(BODY)).startswith(b"HTTP/1.1 200 OK\r\n")
        assert len(up.got) == 2
        text = await metrics_text(r)
        assert metric_value(text, "meshproxy_authz_decisions_total", policy="no-orders", enforced="true") == 1
    finally:
        writer.close()
        await up.stop()


@pytest.mark.parametrize("express", [True, False])
async def test_denied_request_with_a_body_still_coming_closes_with_connection_close(proxy, origdst, express):
    """403 at the head: without a body the connection is kept (as above); with a body not yet
    read, HTTP/1.1 cannot find the next request, so the answer says ``connection: close``
    and the connection closes (Envoy does the same)."""
    up = await Scripted().start()
    origdst.default = OrigDst("127.0.0.1", up.port)
    r = await proxy({"inbound": {"enabled": True}, "http": {"express": express},
                     "security": {"authorization_policies": POLICIES}})
    reader, writer = await asyncio.open_connection("127.0.0.1", r.port("virtualInbound"))
    try:
        writer.write(b"POST /items HTTP/1.1\r\nHost: reviews\r\nContent-Length: 10\r\n\r\nhello")
        out = await asyncio.wait_for(reader.read(), 3)  # read() returns at EOF only
        head = out.split(b"\r\n\r\n")[0].lower()
        assert head.startswith(b"http/1.1 403 forbidden\r\n") and b"\r\nconnection: close" in head
        assert up.got == []
    finally:
        writer.close()
        await up.stop()


async def test_denials_are_logged_with_envoys_response_code_details(proxy, origdst, tmp_path):
    import json

    up = await Scripted().start()
    origdst.default = OrigDst("127.0.0.1", up.port)
    path = tmp_path / "access.log"
    r = await proxy({"inbound": {"enabled": True}, "access_log": {"enabled": True, "path": str(path)},
                     "security": {"authorization_policies": POLICIES}})
    try:
        up.script = [OK_CL]
        for raw in (req("GET", "/items"), req("GET", "/admin/x"), req("DELETE", "/items")):
            await exchange(r.port("virtualInbound"), raw, timeout=2.0)
        r.app.http.access_log.flush()
        lines = [json.loads(ln) for ln in path.read_text().splitlines()]
        assert [(e["path"], e["response_code"], e["response_flags"], e["response_code_details"]) for e in lines] == [
            ("/items", 200, "-", None),
            ("/admin/x", 403, "RBAC", "rbac_access_denied_matched_policy[deny-admin]"),
            ("/items", 403, "RBAC", "rbac_access_denied_matched_policy[none]"),  # no ALLOW matched DELETE
        ]
    finally:
        await up.stop()
