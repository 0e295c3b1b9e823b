"""Network-namespace fixtures: the root check and a namespace factory.

Tests here need root, ``ip netns`` and iptables. They run in CI (``CI`` set,
as root) and fail loudly there if they cannot; outside CI they skip when not
root. Every namespace a test makes carries a unique prefix and is deleted in
the fixture finaliser, even when the test fails; nothing here touches the
root namespace's interfaces or firewall.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid

import pytest


def _netns_unavailable() -> str | None:
    if os.geteuid() != 0:
        return "needs root"
    for tool in ("ip", "iptables-restore", "ip6tables-restore"):
        if shutil.which(tool) is None:
            return f"needs {tool} on PATH"
    return None


def pytest_collection_modifyitems(config, items):
    why = _netns_unavailable()
    for item in items:
        if "tests/netns/" not in str(item.fspath).replace(os.sep, "/"):
            continue
        item.add_marker(pytest.mark.netns)
        if why is None:
            continue
        if os.environ.get("CI"):
            raise pytest.UsageError(f"netns tests cannot run in CI: {why}")
        item.add_marker(pytest.mark.skip(reason=f"netns test skipped outside CI: {why}"))


def sh(*argv: str, ns: str | None = None, check: bool = True, input: str | None = None,
       timeout: float = 30) -> subprocess.CompletedProcess:
    """Run a command (optionally inside namespace ``ns``); raise with its stderr on failure."""
    cmd = (["ip", "netns", "exec", ns] if ns else []) + list(argv)
    proc = subprocess.run(cmd, capture_output=True, text=True, input=input, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} -> {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc


@pytest.fixture
def make_netns():
    """Factory: ``make_netns("pod")`` creates a fresh namespace with loopback up and
    returns its name (``mpt-<run>-pod``); all are deleted at teardown."""
    run = uuid.uuid4().hex[:6]
    made: list[str] = []

    def make(role: str) -> str:
        name = f"mpt-{run}-{role}"
        sh("ip", "netns", "add", name)
        made.append(name)
        sh("ip", "link", "set", "lo", "up", ns=name)
        return name

    yield make
    for name in reversed(made):
        # Kill anything still running inside (only processes in namespaces we made).
        pids = subprocess.run(["ip", "netns", "pids", name], capture_output=True, text=True).stdout.split()
        for pid in pids:
            try:
                os.kill(int(pid), 9)
            except (ProcessLookupError, ValueError):
                pass
        subprocess.run(["ip", "netns", "del", name], capture_output=True)


@pytest.hookimpl(tryfirst=True, hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Keep each phase's report on the item so finalisers know whether the test failed."""
    outcome = yield
    rep = outcome.get_result()
    setattr(item, f"rep_{rep.when}", rep)


@pytest.fixture
def node(make_netns, request):
    """A "node" namespace with a bridge; ``node.add_pod("client")`` adds pod namespaces.

    Teardown kills every process the harness started (by PID), prints their logs
    when the test failed, then ``make_netns`` deletes the namespaces."""
    from pods import TOOLS, Node

    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    if missing:
        why = f"the pod harness needs {', '.join(missing)} on PATH"
        if os.environ.get("CI"):
            pytest.fail(why)
        pytest.skip(why)
    n = Node(make_netns)
    yield n
    failed = any(getattr(getattr(request.node, f"rep_{when}", None), "failed", False)
                 for when in ("setup", "call"))
    if failed:
        print(n.dump_logs())
    n.close()


REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _proxy_user_can_run(path: str) -> bool:
    probe = subprocess.run(["setpriv", "--reuid", "1337", "--regid", "1337", "--clear-groups",
                            "test", "-x", path], capture_output=True, timeout=10)
    return probe.returncode == 0


@pytest.fixture(autouse=True, scope="session")
def _proxy_user_reaches_the_checkout():
    """The sidecar runs as uid/gid 1337, so the checkout and its venv must be readable by
    others. A fresh clone in a 0700 directory (``mktemp -d``) is not: open up the checkout
    itself (never anything above it), or fail with the directory to fix."""
    if _netns_unavailable() is not None:
        yield
        return
    target = os.path.join(REPO, ".venv", "bin", "meshproxy")
    if not _proxy_user_can_run(target):
        subprocess.run(["chmod", "-R", "o+rX", REPO], check=False, timeout=60)
    if not _proxy_user_can_run(target):
        blocked = next((d for d in _ancestors(REPO) if not os.stat(d).st_mode & 0o001), None)
        raise pytest.UsageError(
            f"uid 1337 (the sidecar's user) cannot run {target}: directory {blocked or REPO} is not "
            f"traversable by others; clone the project where uid 1337 can read it")
    yield


def _ancestors(path: str):
    parts = []
    while True:
        parts.append(path)
        parent = os.path.dirname(path)
        if parent == path:
            break
        path = parent
    return reversed(parts)
