"""Interception rules on real iptables, each test in its own network namespace.

What is checked: apply installs exactly the rendered rules (in iptables-save's own
form), re-applying changes nothing, a user's nat rules survive apply and cleanup,
cleanup restores the pre-apply ruleset byte for byte (minus counters), the init
script works from env vars, and - behaviourally - the kernel redirects the app's
TCP to the listeners while uid 1337, excluded ports/CIDRs and loopback are left
alone. Runs for both iptables backends when their binaries exist.
"""

from __future__ import annotations

import importlib.util
import json
import re
import select
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from meshproxy.intercept import rules
from meshproxy.intercept.rules import InterceptConfig

# The namespace helpers live in this directory's conftest; load it by path so a
# conftest elsewhere cannot shadow the plain module name "conftest".
_spec = importlib.util.spec_from_file_location("_netns_conftest", Path(__file__).with_name("conftest.py"))
_conftest = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_conftest)
sh = _conftest.sh

REPO = Path(__file__).resolve().parents[2]
BACKENDS = [pytest.param(name, marks=pytest.mark.skipif(
    not shutil.which(f"iptables-{name}-restore") or not shutil.which(f"ip6tables-{name}-restore"),
    reason=f"iptables-{name} not installed")) for name in ("nft", "legacy")]


def meshproxy(ns: str, *argv: str, env: dict[str, str] | None = None, check: bool = True):
    """Run `meshproxy iptables ...` (the intercept CLI on its own) inside ``ns``."""
    assigns = [f"{k}={v}" for k, v in (env or {}).items()]
    return sh("env", *assigns, sys.executable, "-m", "meshproxy.intercept.cli", "iptables", *argv,
              ns=ns, check=check)


def nat(ns: str, backend: str, family: int) -> str:
    """`iptables-save -t nat` without the timestamp comments and packet counters."""
    tool = f"{'ip6tables' if family == 6 else 'iptables'}-{backend}-save"
    text = sh(tool, "-t", "nat", ns=ns).stdout
    return "\n".join(re.sub(r"\[\d+:\d+\]", "[0:0]", line) for line in text.splitlines()
                     if not line.startswith("#")) + "\n"


def tool(backend: str, family: int) -> str:
    return f"{'ip6tables' if family == 6 else 'iptables'}-{backend}"


def add_user_rules(ns: str, backend: str) -> None:
    """A user's own nat setup that must outlive us: a chain, and rules in OUTPUT and PREROUTING."""
    for family, dst in ((4, "10.9.9.9"), (6, "2001:db8:9::9")):
        ipt = tool(backend, family)
        sh(ipt, "-t", "nat", "-N", "USER_CHAIN", ns=ns)
        sh(ipt, "-t", "nat", "-A", "USER_CHAIN", "-p", "tcp", "--dport", "25", "-j", "RETURN", ns=ns)
        sh(ipt, "-t", "nat", "-A", "OUTPUT", "-d", dst, "-j", "USER_CHAIN", ns=ns)
        sh(ipt, "-t", "nat", "-A", "PREROUTING", "-p", "tcp", "--dport", "2222", "-j", "REDIRECT",
           "--to-ports", "22", ns=ns)


@pytest.mark.parametrize("backend", BACKENDS)
def test_apply_installs_exactly_the_rendered_rules(make_netns, backend):
    ns = make_netns("apply")
    meshproxy(ns, "apply", "--iptables-backend", backend, "--exclude-outbound-cidrs", "10.0.0.0/8,fd00::/8")
    cfg = InterceptConfig(exclude_outbound_cidrs="10.0.0.0/8,fd00::/8")
    for family in (4, 6):
        saved = nat(ns, backend, family).splitlines()
        rendered = rules.render(cfg, family).splitlines()
        assert [l for l in saved if l.startswith("-A")] == sorted(
            (l for l in rendered if l.startswith("-A")), key=_save_order(saved))
        for chain in rules.CHAINS:
            assert f":{chain} - [0:0]" in saved
    assert "inet6 ::6/128" in sh("ip", "-6", "addr", "show", "dev", "lo", ns=ns).stdout


def _save_order(saved: list[str]):
    """iptables-save groups rules by chain (in its own chain order) and keeps order within a chain."""
    chains = [l[1:].split()[0] for l in saved if l.startswith(":")]
    return lambda line: chains.index(line.split()[1])


@pytest.mark.parametrize("backend", BACKENDS)
def test_reapply_is_idempotent(make_netns, backend):
    ns = make_netns("twice")
    meshproxy(ns, "apply", "--iptables-backend", backend)
    first = {f: nat(ns, backend, f) for f in (4, 6)}
    meshproxy(ns, "apply", "--iptables-backend", backend)
    assert {f: nat(ns, backend, f) for f in (4, 6)} == first
    # Re-applying with other settings replaces ours instead of adding to it.
    meshproxy(ns, "apply", "--iptables-backend", backend, "--exclude-outbound-ports", "3306")
    changed = nat(ns, backend, 4)
    assert changed.count("-j MESH_OUTPUT") == 1 and "--dport 3306" in changed


@pytest.mark.parametrize("backend", BACKENDS)
def test_user_rules_survive_and_cleanup_restores_the_exact_ruleset(make_netns, backend):
    ns = make_netns("user")
    add_user_rules(ns, backend)
    before = {f: nat(ns, backend, f) for f in (4, 6)}
    meshproxy(ns, "apply", "--iptables-backend", backend)
    for family in (4, 6):
        during = nat(ns, backend, family)
        assert "MESH_OUTPUT" in during
        assert all(line in during.splitlines() for line in before[family].splitlines() if line.startswith("-A"))
    out = meshproxy(ns, "cleanup", "--iptables-backend", backend).stdout
    assert "IPv4" in out and "IPv6" in out
    assert {f: nat(ns, backend, f) for f in (4, 6)} == before
    assert "::6/128" not in sh("ip", "-6", "addr", "show", "dev", "lo", ns=ns).stdout
    # A second cleanup finds nothing of ours and changes nothing.
    assert "nothing of ours" in meshproxy(ns, "cleanup", "--iptables-backend", backend).stdout
    assert {f: nat(ns, backend, f) for f in (4, 6)} == before


def test_auto_backend_follows_existing_rules(make_netns):
    if not shutil.which("iptables-legacy-restore"):
        pytest.skip("iptables-legacy not installed")
    ns = make_netns("auto")
    sh("iptables-legacy", "-t", "nat", "-A", "OUTPUT", "-d", "10.9.9.9", "-j", "RETURN", ns=ns)
    out = meshproxy(ns, "apply", "--no-ipv6").stdout
    assert "iptables-legacy-restore" in out
    assert "MESH_OUTPUT" in nat(ns, "legacy", 4) and "MESH_OUTPUT" not in nat(ns, "nft", 4)
    assert "iptables-legacy-restore" in meshproxy(ns, "cleanup", "--no-ipv6").stdout  # finds ours again


def test_init_script_reads_env(make_netns, tmp_path):
    ns = make_netns("init")
    wrapper = tmp_path / "meshproxy"
    wrapper.write_text(f'#!/bin/sh\nexec {sys.executable} -m meshproxy.intercept.cli "$@"\n')
    wrapper.chmod(0o755)
    script = str(REPO / "iptables" / "meshproxy-init.sh")
    env = [f"MESHPROXY_BIN={wrapper}", "MESHPROXY_EXCLUDE_OUTBOUND_PORTS=3306", "MESHPROXY_IPV6=false",
           "MESHPROXY_INBOUND_PORT=16006"]
    sh("env", *env, "sh", script, "--include-inbound-ports", "8080", ns=ns)
    v4 = nat(ns, "nft", 4)
    assert "--dport 3306 -m comment --comment meshproxy -j RETURN" in v4
    assert "-j REDIRECT --to-ports 16006" in v4 and "--dport 8080 " in v4
    assert "MESH_" not in nat(ns, "nft", 6)
    sh("env", *env, "sh", script, "cleanup", ns=ns)
    assert "MESH_" not in nat(ns, "nft", 4)
    bad = sh("env", *env, "MESHPROXY_INBOUND_PORT=0", "sh", script, ns=ns, check=False)
    assert bad.returncode == 2 and "--inbound-port" in bad.stderr and "Traceback" not in bad.stderr


# === Behaviour: the kernel really redirects what the rules say ===

SERVER = r"""
import json, select, socket, struct
socks = []
for fam, host in ((socket.AF_INET, "0.0.0.0"), (socket.AF_INET6, "::")):
    for port in (15001, 15006):
        s = socket.socket(fam, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if fam == socket.AF_INET6:
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        s.bind((host, port)); s.listen(16); socks.append(s)
print("ready", flush=True)
while True:
    for s in select.select(socks, [], [])[0]:
        conn, peer = s.accept()
        if s.family == socket.AF_INET:   # SO_ORIGINAL_DST = 80: a sockaddr_in
            port, ip = struct.unpack("!2xH4s8x", conn.getsockopt(socket.SOL_IP, 80, 16))
        else:                            # IP6T_SO_ORIGINAL_DST = 80: a sockaddr_in6
            port, ip = struct.unpack("!2xH4x16s4x", conn.getsockopt(socket.IPPROTO_IPV6, 80, 28))
        ip = socket.inet_ntop(s.family, ip)
        print(json.dumps({"listener": s.getsockname()[1], "orig": [ip, port], "peer": peer[0]}), flush=True)
        conn.close()
"""

CLIENT = r"""
import socket, sys
try:
    socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=3).close()
    print("connected")
except OSError as exc:
    print(type(exc).__name__)
"""


@pytest.fixture
def pod(make_netns):
    """A pod namespace with rules applied, a fake listener on 15001/15006, and a peer namespace.

    The pod (198.18.0.2/15, 2001:db8::2/64) reaches the peer (198.18.0.3) over a veth.
    A REJECT rule answers every new outgoing connection that is *not* redirected with
    a reset, so a missed redirect fails fast instead of timing out.
    """
    ns, peer = make_netns("pod"), make_netns("peer")
    sh("ip", "link", "add", "v-pod", "netns", ns, "type", "veth", "peer", "name", "v-peer", "netns", peer)
    for where, dev, v4, v6 in ((ns, "v-pod", "198.18.0.2/15", "2001:db8::2/64"),
                               (peer, "v-peer", "198.18.0.3/15", "2001:db8::3/64")):
        sh("ip", "addr", "add", v4, "dev", dev, ns=where)
        sh("ip", "-6", "addr", "add", v6, "dev", dev, "nodad", ns=where)
        sh("ip", "link", "set", dev, "up", ns=where)
    # Filter OUTPUT sees the destination after nat: redirected SYNs go to 127.0.0.1 / ::1.
    for ipt, pods in (("iptables", "198.18.0.0/15"), ("ip6tables", "2001:db8::/32")):
        sh(ipt, "-A", "OUTPUT", "-d", pods, "-p", "tcp", "--syn", "-j", "REJECT", "--reject-with", "tcp-reset",
           ns=ns)
    meshproxy(ns, "apply", "--exclude-outbound-ports", "81", "--exclude-outbound-cidrs", "198.18.7.0/24")
    server = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-c", SERVER],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout.readline().strip() == "ready"
        yield ns, peer, server
    finally:
        server.kill()
        server.wait()


def connect(ns: str, host: str, port: int, uid: int | None = None) -> str:
    as_user = ["setpriv", "--reuid", str(uid), "--regid", str(uid), "--clear-groups"] if uid is not None else []
    return sh(*as_user, sys.executable, "-c", CLIENT, host, str(port), ns=ns).stdout.strip()


def accepted(server) -> dict:
    ready, _, _ = select.select([server.stdout], [], [], 5)
    assert ready, "listener saw no connection"
    return json.loads(server.stdout.readline())


def test_app_outbound_is_redirected_with_original_destination(pod):
    ns, _, server = pod
    assert connect(ns, "198.18.9.9", 80) == "connected"
    # The source was picked before nat rewrote the destination: it is the pod IP.
    assert accepted(server) == {"listener": 15001, "orig": ["198.18.9.9", 80], "peer": "198.18.0.2"}
    assert connect(ns, "2001:db8::9", 443) == "connected"
    assert accepted(server) == {"listener": 15001, "orig": ["2001:db8::9", 443], "peer": "2001:db8::2"}


def test_proxy_uid_excluded_ports_and_cidrs_are_not_redirected(pod):
    ns, _, server = pod
    assert connect(ns, "198.18.9.9", 80, uid=1337) == "ConnectionRefusedError"   # the sidecar itself
    assert connect(ns, "198.18.9.9", 81) == "ConnectionRefusedError"             # excluded port
    assert connect(ns, "198.18.7.7", 80) == "ConnectionRefusedError"             # excluded CIDR
    assert connect(ns, "127.0.0.1", 9999) == "ConnectionRefusedError"            # app → localhost
    assert connect(ns, "198.18.0.2", 9999) == "ConnectionRefusedError"           # app → own pod IP
    # And the listener really is there: the next redirected connection is the first it sees.
    assert connect(ns, "198.18.9.9", 80) == "connected"
    assert accepted(server)["orig"] == ["198.18.9.9", 80]


def test_sidecar_to_own_pod_ip_is_captured_as_inbound(pod):
    ns, _, server = pod
    assert connect(ns, "198.18.0.2", 8080, uid=1337) == "connected"
    assert accepted(server) == {"listener": 15006, "orig": ["198.18.0.2", 8080], "peer": "198.18.0.2"}


def test_inbound_from_peer_is_redirected_except_excluded_ports(pod):
    ns, peer, server = pod
    assert connect(peer, "198.18.0.2", 8080) == "connected"
    assert accepted(server) == {"listener": 15006, "orig": ["198.18.0.2", 8080], "peer": "198.18.0.3"}
    assert connect(peer, "2001:db8::2", 8080) == "connected"
    assert accepted(server) == {"listener": 15006, "orig": ["2001:db8::2", 8080], "peer": "2001:db8::3"}
    assert connect(peer, "198.18.0.2", 15021) == "ConnectionRefusedError"  # health port is excluded
