"""End to end: mesh security between pods in network namespaces (issue "Mesh security", point 7).

Topology (built once per module, see ``pods.py``)::

    node ns: br0 198.18.0.1/24
      ├── frontend  198.18.0.11  client app (curl, apps/marker_client.py), rules + sidecar as 1337,
      │                          spiffe://cluster.local/ns/shop/sa/frontend,
      │                          security.mesh_destinations: 198.18.0.0/24 → identity reviews
      ├── reviews   198.18.0.12  apps/http_whoami.py :8080, apps/echo_server.py :9000 :9100,
      │                          rules + sidecar as 1337, spiffe://cluster.local/ns/shop/sa/reviews,
      │                          peer_authentication mode and authorization policies per test
      └── outsider  198.18.0.13  no sidecar, no rules: plaintext clients and openssl s_client

Certificates come from the real CLI (``meshproxy ca init`` / ``ca issue``) into the
node's temp dir; the pod directories are chowned to 1337 like a mounted Secret with
fsGroup. Sidecars are reconfigured by restarting them (SIGKILL of the process we
started, then ``meshproxy run`` again with a new config and ``wait-ready``).

"B's app sees nothing" is read from the apps' own JSON logs: ``http_whoami.py`` logs
every request, ``echo_server.py`` every accepted connection and the bytes it got.

The bridge capture (test 1) runs ``tcpdump -i br0`` in the node namespace (bridge
in promiscuous mode, so it sees frames forwarded between pod ports); without
tcpdump it falls back to ``apps/packet_capture.py`` (AF_PACKET). Both are bounded
by ``timeout``. A plaintext control marker sent by the outsider pod proves the
capture would have seen plaintext had it crossed the bridge.

Run: ``cd /work/main && .venv/bin/python -m pytest tests/netns/test_mtls_pods.py -q`` (as root).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from pods import APPS, MESHPROXY, PROXY_UID, PYTHON, TOOLS, Node, Pod, run_cmd  # noqa: E402

TD = "cluster.local"
FRONTEND = f"spiffe://{TD}/ns/shop/sa/frontend"
REVIEWS = f"spiffe://{TD}/ns/shop/sa/reviews"
RATINGS = f"spiffe://{TD}/ns/shop/sa/ratings"

HTTP_PORT, TCP_PORT, TCP_PORT2 = 8080, 9000, 9100
PASSTHROUGH = "127.0.0.6"

REQUESTS = "istio_requests_total"
OPENED = "istio_tcp_connections_opened_total"
CLOSED = "istio_tcp_connections_closed_total"
MTLS_FAILURES = "meshproxy_mtls_failures_total"
AUTHZ = "meshproxy_authz_decisions_total"


# === helpers ===

def token() -> str:
    return uuid.uuid4().hex[:10]


def curl(pod: Pod, url: str, *extra: str) -> tuple[int, int | None, dict[str, str], str]:
    """``curl -i`` from ``pod`` → (exit code, status, lower-cased headers, body)."""
    proc = pod.exec(["curl", "-sS", "-i", "--max-time", "5", *extra, url], check=False, timeout=15)
    status, headers, body = None, {}, ""
    if proc.returncode == 0 and proc.stdout:
        head, _, body = proc.stdout.partition("\n\n")  # text mode: CRLF arrives as LF
        lines = head.split("\n")
        status = int(lines[0].split()[1])
        for line in lines[1:]:
            k, _, v = line.partition(":")
            headers[k.strip().lower()] = v.strip()
    return proc.returncode, status, headers, body


def marker(pod: Pod, host: str, port: int, text: str, timeout: float = 5, until_echo: bool = False) -> dict:
    """``apps/marker_client.py`` from ``pod``: send ``text`` and half-close, then read to EOF
    (``until_echo``: only until the echo is complete); its JSON report."""
    argv = [PYTHON, str(APPS / "marker_client.py"), host, str(port), text, "--timeout", str(timeout)]
    proc = pod.exec(argv + (["--until-echo"] if until_echo else []), timeout=timeout * 3 + 10)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def events(proc) -> list[dict]:
    """The JSON lines an app logged."""
    out = []
    for line in proc.log().splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            pass
    return out


def ensure_dir_for_proxy(path: Path) -> None:
    """Like a Secret volume with fsGroup: the sidecar (uid 1337) owns its certificate files."""
    for p in [path, *path.iterdir()]:
        os.chown(p, PROXY_UID, PROXY_UID)


class Mesh:
    """The module's pods, certificates and apps, and the reconfiguration helpers."""

    def __init__(self, node: Node):
        self.node = node
        self.pki = node.workdir / "pki"
        self.pki.mkdir(mode=0o755)
        self.ca = self.pki / "ca"
        self.cli(["ca", "init", "--trust-domain", TD, "--out", str(self.ca)])
        self.tls_a = self.issue("frontend", FRONTEND)
        self.tls_b = self.issue("reviews", REVIEWS)

        self.a = node.add_pod("frontend")
        self.b = node.add_pod("reviews")
        self.c = node.add_pod("outsider")
        assert (self.a.ip, self.b.ip, self.c.ip) == ("198.18.0.11", "198.18.0.12", "198.18.0.13")

        self.whoami = self.b.run([PYTHON, "-u", str(APPS / "http_whoami.py"), "reviews", str(HTTP_PORT)],
                                 name="whoami@reviews")
        self.whoami.wait_for_log('"listening"')
        self.echo = self.b.start_echo(TCP_PORT, TCP_PORT2)
        self.a.apply_rules()
        self.b.apply_rules()
        self.a_security: dict | None = None
        self.b_security: dict | None = None
        self.configure_a()
        self.configure_b()

    # --- pki ---
    def cli(self, args: list[str]) -> None:
        run_cmd([str(MESHPROXY), *args])

    def issue(self, name: str, spiffe_id: str, ca: Path | None = None) -> dict:
        out = self.pki / name
        self.cli(["ca", "issue", "--ca", str(ca or self.ca), "--spiffe-id", spiffe_id, "--ttl", "2h",
                  "--out", str(out)])
        ensure_dir_for_proxy(out)
        return {"cert_file": str(out / "cert.pem"), "key_file": str(out / "key.pem"),
                "bundle_file": str(out / "bundle.pem")}

    # --- sidecars ---
    @staticmethod
    def _restart(pod: Pod, security: dict) -> None:
        if pod.sidecar is not None:
            pod.sidecar.proc.kill()
            pod.sidecar = None
        pod.start_sidecar(ready_timeout=15, security=security)

    def configure_a(self, identities: tuple[str, ...] = (REVIEWS,)) -> None:
        security = {"tls": self.tls_a,
                    "mesh_destinations": [{"cidrs": ["198.18.0.0/24"], "identities": list(identities)}]}
        if security != self.a_security or self.a.sidecar is None or not self.a.sidecar.proc.alive():
            self._restart(self.a, security)
            self.a_security = security

    def configure_b(self, mode: str = "STRICT", policies: list[dict] | None = None) -> None:
        security: dict = {"tls": self.tls_b, "peer_authentication": {"mode": mode}}
        if policies:
            security["authorization_policies"] = policies
        if security != self.b_security or self.b.sidecar is None or not self.b.sidecar.proc.alive():
            self._restart(self.b, security)
            self.b_security = security

    # --- what B's apps saw ---
    def http_seen(self, path_part: str) -> list[dict]:
        return [e for e in events(self.whoami) if e.get("event") == "request" and path_part in e["path"]]

    def tcp_bytes_seen(self) -> int:
        """Connections on which B's echo app received at least one byte (all ports)."""
        return sum(1 for e in events(self.echo) if e.get("event") == "close" and e["bytes"] > 0)

    def tcp_accepts(self, port: int) -> int:
        return sum(1 for e in events(self.echo) if e.get("event") == "accept" and e["port"] == port)


@pytest.fixture(scope="module")
def mesh():
    """Build the node, the three pods, the certificates and the apps once for the module;
    tear everything down (processes by PID, then our namespaces) even on failure."""
    missing = [tool for tool in ("ip", "iptables-restore", "ip6tables-restore", *TOOLS) if shutil.which(tool) is None]
    why = "needs root" if os.geteuid() != 0 else (
        f"the pod harness needs {', '.join(missing)} on PATH" if missing else None)
    if why is not None:
        if os.environ.get("CI"):
            pytest.fail(why)
        pytest.skip(why)
    run = uuid.uuid4().hex[:6]
    made: list[str] = []

    def make(role: str) -> str:
        name = f"mpt-{run}-{role}"
        run_cmd(["ip", "netns", "add", name])
        made.append(name)
        run_cmd(["ip", "-n", name, "link", "set", "lo", "up"])
        return name

    node = None
    try:
        node = Node(make)
        m = Mesh(node)
        yield m
    except BaseException:
        if node is not None:
            print(node.dump_logs())
        raise
    finally:
        if node is not None:
            node.close()
        for name in reversed(made):
            pids = subprocess.run(["ip", "netns", "pids", name], capture_output=True, text=True).stdout.split()
            for pid in pids:  # only processes inside namespaces this module created
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except (ProcessLookupError, ValueError):
                    pass
            subprocess.run(["ip", "netns", "del", name], capture_output=True)


@pytest.fixture(autouse=True)
def _logs_on_failure(request, mesh):
    yield
    rep = getattr(request.node, "rep_call", None)
    if rep is not None and rep.failed:
        tail = "".join(f"\n===== {p.name} (pid {p.pid}, rc {p.popen.poll()}) =====\n{p.log()[-4000:]}"
                       for p in mesh.node.procs)
        print(tail)


@contextmanager
def bridge_capture(node: Node, path: Path, seconds: int = 30):
    """Capture every frame on the node's bridge into ``path`` while the block runs."""
    log = path.with_suffix(".log")
    if shutil.which("tcpdump"):
        # --immediate-mode: without it libpcap hands packets over in ring blocks (retired after
        # a timeout), and a SIGTERM before then loses the block: an empty capture.
        argv = ["timeout", str(seconds), "tcpdump", "-i", "br0", "--immediate-mode", "-U", "-n", "-s", "0",
                "-Z", "root", "-w", str(path)]
        ready = "listening on"
    else:
        argv = ["timeout", str(seconds), PYTHON, "-u", str(APPS / "packet_capture.py"), "br0", str(path),
                str(seconds - 1)]
        ready = "listening"
    with open(log, "wb") as out:
        popen = subprocess.Popen(["ip", "netns", "exec", node.ns, *argv], stdout=out, stderr=subprocess.STDOUT,
                                 stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 10
        while ready not in log.read_text(errors="replace"):
            assert popen.poll() is None, f"capture exited early: {log.read_text(errors='replace')}"
            assert time.monotonic() < deadline, f"capture not ready: {log.read_text(errors='replace')}"
            time.sleep(0.05)
        yield path
        time.sleep(0.5)  # let the last frames land
    finally:
        if popen.poll() is None:
            popen.send_signal(signal.SIGTERM)  # ``timeout`` forwards it; tcpdump flushes and exits
            try:
                popen.wait(timeout=5)
            except subprocess.TimeoutExpired:
                os.killpg(popen.pid, signal.SIGKILL)
                popen.wait(timeout=5)


def tcp_ok(result: dict, text: str) -> None:
    assert result["error"] is None and result["received"].startswith(f"PEER {PASSTHROUGH} "), result
    assert result["received"].endswith(text + "\n"), result


def tcp_closed(result: dict, text: str) -> None:
    """The connection ended (EOF or reset) without any echo."""
    assert result["error"] != "timeout", f"connection hung instead of being closed: {result}"
    assert "PEER" not in result["received"] and text not in result["received"], result


# === 1: HTTP and TCP over mTLS, identity at B, only TLS on the wire ===

def test_http_and_tcp_ride_mtls_and_only_tls_crosses_the_bridge(mesh, tmp_path):
    mesh.configure_a()
    mesh.configure_b("STRICT")
    a, b, c = mesh.a, mesh.b, mesh.c
    t = token()
    secret = f"MESHPROXY-PLAINTEXT-MARKER-{t}"
    control = f"MESHPROXY-CONTROL-MARKER-{t}"
    path = f"/mtls-http/{t}"
    before_failures = b.sidecar.counter(MTLS_FAILURES)

    with bridge_capture(mesh.node, tmp_path / "br0.pcap") as pcap:
        rc, status, _, body = curl(a, f"http://{b.ip}:{HTTP_PORT}{path}")
        tcp = marker(a, b.ip, TCP_PORT, secret, until_echo=True)
        # Control: the outsider's plaintext crosses the bridge (then STRICT refuses it).
        ctl = marker(c, b.ip, TCP_PORT, control, timeout=3)

    assert (rc, status) == (0, 200), (rc, status, body)
    seen = json.loads(body)
    assert seen["path"] == path and seen["peer"] == PASSTHROUGH, seen
    xfcc = seen["headers"].get("x-forwarded-client-cert", "")
    assert f"URI={FRONTEND}" in xfcc and f"By={REVIEWS}" in xfcc, seen["headers"]
    assert [e["peer"] for e in mesh.http_seen(path)] == [PASSTHROUGH]
    tcp_ok(tcp, secret)
    tcp_closed(ctl, control)

    sidecar = b.sidecar
    assert sidecar.wait_counter(REQUESTS, 1, reporter="destination", source_principal=FRONTEND,
                                connection_security_policy="mutual_tls", response_code="200") == 1, \
        sidecar.metrics_text()
    assert sidecar.wait_counter(OPENED, 1, reporter="destination", source_principal=FRONTEND,
                                connection_security_policy="mutual_tls",
                                destination_service=f"{b.ip}:{TCP_PORT}") == 1, sidecar.metrics_text()
    assert sidecar.wait_counter(MTLS_FAILURES, before_failures + 1) >= before_failures + 1  # the control

    data = pcap.read_bytes()
    assert len(data) > 1000, f"capture is (nearly) empty: {len(data)} bytes"
    assert control.encode() in data, "the capture did not see plaintext that did cross the bridge"
    assert secret.encode() not in data, "the TCP marker crossed the bridge in plaintext"
    assert f"GET {path}".encode() not in data and path.encode() not in data, \
        "the HTTP request crossed the bridge in plaintext"
    assert b"\x17\x03\x03" in data, "no TLS application-data records on the bridge"
    # TLS 1.3 encrypts the certificates: the workload identities are not readable on the wire either.
    assert FRONTEND.encode() not in data and REVIEWS.encode() not in data


# === 2: STRICT refuses plaintext, PERMISSIVE accepts both ===

def test_strict_refuses_plaintext_and_permissive_accepts_both(mesh):
    mesh.configure_a()
    mesh.configure_b("STRICT")
    a, b, c = mesh.a, mesh.b, mesh.c
    t = token()
    echo_bytes = mesh.tcp_bytes_seen()
    accepts = mesh.tcp_accepts(TCP_PORT)

    rc, status, _, _ = curl(c, f"http://{b.ip}:{HTTP_PORT}/strict-plain/{t}")
    assert rc in (52, 56) and status is None, f"plaintext to a STRICT port: curl rc={rc} status={status}"
    tcp_closed(marker(c, b.ip, TCP_PORT, f"strict-plain-{t}", timeout=3), f"strict-plain-{t}")
    time.sleep(0.2)
    assert mesh.http_seen(f"/strict-plain/{t}") == []
    assert mesh.tcp_accepts(TCP_PORT) == accepts and mesh.tcp_bytes_seen() == echo_bytes, \
        "B's app saw the refused plaintext connection"
    assert b.sidecar.counter(MTLS_FAILURES, reason="not_mtls_in_strict") >= 2, b.sidecar.metrics_text()
    # mTLS from A still works on the same STRICT ports.
    rc, status, _, body = curl(a, f"http://{b.ip}:{HTTP_PORT}/strict-mtls/{t}")
    assert (rc, status) == (0, 200)

    mesh.configure_b("PERMISSIVE")
    rc, status, _, body = curl(a, f"http://{b.ip}:{HTTP_PORT}/permissive-mtls/{t}")
    assert (rc, status) == (0, 200), (rc, status, body)
    assert f"URI={FRONTEND}" in json.loads(body)["headers"].get("x-forwarded-client-cert", "")
    rc, status, _, body = curl(c, f"http://{b.ip}:{HTTP_PORT}/permissive-plain/{t}")
    assert (rc, status) == (0, 200), (rc, status, body)
    plain = json.loads(body)
    assert plain["peer"] == PASSTHROUGH and "x-forwarded-client-cert" not in plain["headers"], plain
    tcp_ok(marker(a, b.ip, TCP_PORT, f"permissive-mtls-{t}", until_echo=True), f"permissive-mtls-{t}")
    tcp_ok(marker(c, b.ip, TCP_PORT, f"permissive-plain-{t}", until_echo=True), f"permissive-plain-{t}")

    sidecar = b.sidecar
    assert sidecar.wait_counter(REQUESTS, 1, reporter="destination", source_principal=FRONTEND,
                                connection_security_policy="mutual_tls") == 1, sidecar.metrics_text()
    assert sidecar.wait_counter(REQUESTS, 1, reporter="destination",
                                connection_security_policy="none") == 1, sidecar.metrics_text()
    assert sidecar.wait_counter(OPENED, 1, reporter="destination", source_principal=FRONTEND,
                                connection_security_policy="mutual_tls") == 1, sidecar.metrics_text()
    assert sidecar.wait_counter(OPENED, 1, reporter="destination",
                                connection_security_policy="none") == 1, sidecar.metrics_text()


# === 3: openssl s_client against a STRICT port ===

def s_client(mesh, case: str, cert: dict | None) -> subprocess.CompletedProcess:
    """``openssl s_client -alpn meshproxy-tcp`` from the outsider pod to B:8080, sending a peer
    metadata line (as a sidecar's first bytes) and one HTTP/1.0 request after the handshake;
    bounded with ``timeout 5``."""
    from meshproxy.net.peer_hello import encode

    argv = ["timeout", "5", "openssl", "s_client", "-connect", f"{mesh.b.ip}:{HTTP_PORT}",
            "-alpn", "meshproxy-tcp", "-CAfile", mesh.tls_b["bundle_file"], "-ign_eof"]
    if cert is not None:
        argv += ["-cert", cert["cert_file"], "-key", cert["key_file"]]
    return run_cmd(["ip", "netns", "exec", mesh.c.ns, *argv], check=False, timeout=15,
                   input=encode("openssl", "openssl", "v1", "test").decode()
                   + f"GET /openssl/{case} HTTP/1.0\r\nHost: reviews\r\n\r\n")


def test_openssl_s_client_needs_a_valid_mesh_certificate(mesh):
    from meshproxy.tls.ca import CertificateAuthority

    mesh.configure_b("STRICT")
    t = token()
    other_ca = mesh.pki / f"other-ca-{t}"
    mesh.cli(["ca", "init", "--trust-domain", TD, "--out", str(other_ca)])
    foreign = mesh.issue(f"foreign-{t}", FRONTEND, ca=other_ca)
    expired_dir = mesh.pki / f"expired-{t}"
    CertificateAuthority.load(str(mesh.ca)).issue(
        FRONTEND, timedelta(hours=1), now=datetime.now(timezone.utc) - timedelta(days=2)).save(str(expired_dir))
    expired = {"cert_file": str(expired_dir / "cert.pem"), "key_file": str(expired_dir / "key.pem")}
    failures_before = mesh.b.sidecar.counter(MTLS_FAILURES)

    outcomes = {}
    for case, cert in (("no-cert", None), ("foreign-ca", foreign), ("expired", expired)):
        proc = s_client(mesh, f"{case}-{t}", cert)
        outcomes[case] = proc
        assert '"peer"' not in proc.stdout, f"{case}: the request reached the app:\n{proc.stdout}"
        assert mesh.http_seen(f"/openssl/{case}-{t}") == [], f"{case}: B's app saw the request"
    n_failed = mesh.b.sidecar.wait_counter(MTLS_FAILURES, failures_before + 3)
    assert n_failed >= failures_before + 3, (
        f"three failed handshakes expected in {MTLS_FAILURES}\n{mesh.b.sidecar.metrics_text()}\n"
        + "\n".join(f"--- {k}: rc={p.returncode}\n{p.stdout[-1500:]}\n{p.stderr[-1500:]}" for k, p in outcomes.items()))

    proc = s_client(mesh, f"valid-{t}", mesh.tls_a)
    assert "meshproxy-tcp" in proc.stdout, proc.stdout  # "ALPN protocol: meshproxy-tcp"
    assert '"peer": "127.0.0.6"' in proc.stdout, f"rc={proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    assert [e["peer"] for e in mesh.http_seen(f"/openssl/valid-{t}")] == [PASSTHROUGH]
    assert mesh.b.sidecar.wait_counter(OPENED, 1, reporter="destination", source_principal=FRONTEND,
                                       connection_security_policy="mutual_tls", source_workload="openssl",
                                       source_app="openssl", source_version="v1", source_cluster="test",
                                       destination_service=f"{mesh.b.ip}:{HTTP_PORT}") >= 1


# === 4: a wrong SPIFFE ID for the destination ===

def test_wrong_server_identity_fails_closed(mesh):
    mesh.configure_b("STRICT")
    a, b = mesh.a, mesh.b
    t = token()
    echo_bytes = mesh.tcp_bytes_seen()
    accepts = mesh.tcp_accepts(TCP_PORT)
    try:
        mesh.configure_a(identities=(RATINGS,))
        rc, status, headers, body = curl(a, f"http://{b.ip}:{HTTP_PORT}/wrong-id/{t}")
        assert (rc, status) == (0, 503), (rc, status, body)
        assert headers.get("x-meshproxy-response-flags") == "UF", headers
        result = marker(a, b.ip, TCP_PORT, f"wrong-id-{t}")
        tcp_closed(result, f"wrong-id-{t}")
        time.sleep(0.2)
        assert mesh.http_seen(f"/wrong-id/{t}") == [], "B's app saw a request sent to the wrong identity"
        assert mesh.tcp_bytes_seen() == echo_bytes, "B's app received bytes sent to the wrong identity"
        assert a.sidecar.wait_counter(REQUESTS, 1, reporter="source", response_code="503",
                                      response_flags="UF") == 1, a.sidecar.metrics_text()
        assert a.sidecar.wait_counter(CLOSED, 1, reporter="source", response_flags="UF") == 1, \
            a.sidecar.metrics_text()
        # Not even an empty connection: B's sidecar must not hand a connection to its app for a
        # client that rejects B's identity.
        assert mesh.tcp_accepts(TCP_PORT) == accepts, (
            "B's app accepted a connection (0 bytes) for a client that rejected B's SPIFFE ID: the client "
            "checks the server identity only after the TLS handshake completed, so B already relayed it")
    finally:
        mesh.configure_a()
    rc, status, _, _ = curl(a, f"http://{b.ip}:{HTTP_PORT}/right-id/{t}")
    assert (rc, status) == (0, 200)


# === TCP half-close over mTLS (found while writing point 7: the TCP leg never sees EOF) ===

def test_tcp_half_close_crosses_mtls(mesh):
    """A client that half-closes after sending (``shutdown(SHUT_WR)``, like ``nc -N`` or any
    request/response-then-EOF protocol) must get the echo AND the server's EOF, as it does
    without mTLS (the relay's invariant 3)."""
    mesh.configure_a()
    mesh.configure_b("PERMISSIVE")
    a, b, c = mesh.a, mesh.b, mesh.c
    t = token()
    # Control: plaintext through B's sidecar only: half-close works.
    plain = marker(c, b.ip, TCP_PORT, f"half-close-plain-{t}", timeout=3)
    assert plain["error"] is None and plain["eof"], plain
    tcp_ok(plain, f"half-close-plain-{t}")
    # Through both sidecars over mTLS.
    result = marker(a, b.ip, TCP_PORT, f"half-close-mtls-{t}", timeout=3)
    assert result["received"].endswith(f"half-close-mtls-{t}\n"), result
    assert result["error"] is None and result["eof"], (
        f"the client's half-close did not reach B's app over mTLS (no EOF came back within 3 s): {result}")


# === 5: authorization policies end to end ===

def test_authorization_policies_end_to_end(mesh):
    a, b = mesh.a, mesh.b
    mesh.configure_a()
    t = token()
    url = f"http://{b.ip}:{HTTP_PORT}"

    def get(path: str) -> tuple[int | None, str]:
        rc, status, _, body = curl(a, f"{url}{path}")
        assert rc == 0, f"curl {path}: rc={rc}"
        return status, body

    # (a) Only a DENY policy: everything it does not match is allowed (no ALLOW policy → default allow).
    mesh.configure_b("STRICT", [
        {"name": "deny-admin", "action": "DENY",
         "rules": [{"from": [{"principals": [f"{TD}/ns/shop/sa/frontend"]}],
                    "to": [{"ports": [HTTP_PORT], "paths": ["/admin*"]}]}]},
    ])
    assert get(f"/a/ok/{t}")[0] == 200
    assert get(f"/admin/a/{t}") == (403, "RBAC: access denied")
    tcp_ok(marker(a, b.ip, TCP_PORT, f"a-tcp-{t}", until_echo=True), f"a-tcp-{t}")  # the DENY's ports keep it off 9000
    assert mesh.http_seen(f"/admin/a/{t}") == []
    assert b.sidecar.wait_counter(AUTHZ, 1, policy="deny-admin", enforced="true") == 1, b.sidecar.metrics_text()

    # (b) ALLOW with a principal wildcard, DENY over ALLOW for HTTP paths and for a TCP port.
    mesh.configure_b("STRICT", [
        {"name": "shop-wildcard", "action": "ALLOW", "rules": [{"from": [{"principals": [f"{TD}/ns/shop/*"]}]}]},
        {"name": "deny-admin", "action": "DENY", "rules": [{"to": [{"ports": [HTTP_PORT], "paths": ["/admin*"]}]}]},
        {"name": "deny-tcp", "action": "DENY",
         "rules": [{"from": [{"principals": [f"{TD}/ns/shop/sa/front*"]}], "to": [{"ports": [TCP_PORT2]}]}]},
    ])
    accepts2 = mesh.tcp_accepts(TCP_PORT2)
    status, body = get(f"/b/ok/{t}")
    assert status == 200 and json.loads(body)["peer"] == PASSTHROUGH
    assert get(f"/admin/b/{t}") == (403, "RBAC: access denied"), "DENY must win over a matching ALLOW"
    tcp_ok(marker(a, b.ip, TCP_PORT, f"b-tcp-{t}", until_echo=True), f"b-tcp-{t}")
    tcp_closed(marker(a, b.ip, TCP_PORT2, f"b-denied-{t}"), f"b-denied-{t}")
    time.sleep(0.2)
    assert mesh.http_seen(f"/admin/b/{t}") == []
    assert mesh.tcp_accepts(TCP_PORT2) == accepts2, "B's app saw a connection denied by policy"
    assert b.sidecar.wait_counter(AUTHZ, 1, policy="deny-tcp", enforced="true") == 1, b.sidecar.metrics_text()

    # (c) An ALLOW policy that does not match frontend: default deny, for HTTP and TCP.
    mesh.configure_b("STRICT", [
        {"name": "ratings-only", "action": "ALLOW",
         "rules": [{"from": [{"principals": [f"{TD}/ns/shop/sa/ratings", f"{TD}/ns/other/*"]}]}]},
    ])
    accepts = mesh.tcp_accepts(TCP_PORT)
    assert get(f"/c/denied/{t}") == (403, "RBAC: access denied")
    tcp_closed(marker(a, b.ip, TCP_PORT, f"c-denied-{t}"), f"c-denied-{t}")
    time.sleep(0.2)
    assert mesh.http_seen(f"/c/denied/{t}") == []
    assert mesh.tcp_accepts(TCP_PORT) == accepts, "B's app saw a connection denied by default"

    # Back to no policies: allowed again.
    mesh.configure_b("STRICT")
    assert get(f"/d/ok/{t}")[0] == 200
