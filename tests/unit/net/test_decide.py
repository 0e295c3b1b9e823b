"""The pure L4 decision table and SO_ORIGINAL_DST parsing."""

from __future__ import annotations

import socket
import struct

import pytest

from meshproxy.net.addrs import Direction, OrigDst, SockAddr, Upstream
from meshproxy.net.decide import Forward, Plan, Refuse, decide
from meshproxy.net.origdst import parse_sockaddr

OWN = frozenset({15001, 15006})
inbound = Plan(Direction.INBOUND, OWN, frozenset({"198.18.0.7"}))
outbound = Plan(Direction.OUTBOUND, OWN, frozenset({"198.18.0.7"}))
LOCAL_OUT = SockAddr("127.0.0.1", 15001)
LOCAL_IN = SockAddr("198.18.0.7", 15006)


def test_explicit_goes_to_fixed_upstream():
    plan = Plan(Direction.EXPLICIT, fixed_upstream=Upstream("10.0.0.1", 80))
    assert decide(plan, SockAddr("127.0.0.1", 9000), None) == Forward(Upstream("10.0.0.1", 80))


def test_outbound_passthrough():
    assert decide(outbound, LOCAL_OUT, OrigDst("198.18.0.9", 80)) == Forward(Upstream("198.18.0.9", 80))


def test_inbound_to_app_from_passthrough_source():
    assert decide(inbound, LOCAL_IN, OrigDst("198.18.0.7", 8080)) == Forward(
        Upstream("127.0.0.1", 8080), "127.0.0.6")


def test_inbound_v6_to_app_v6():
    local = SockAddr("2001:db8::7", 15006)
    assert decide(inbound, local, OrigDst("2001:db8::7", 8080)) == Forward(Upstream("::1", 8080), "::6")


@pytest.mark.parametrize("plan, local, orig", [
    (outbound, LOCAL_OUT, None),                                   # not redirected
    (outbound, LOCAL_OUT, OrigDst("127.0.0.1", 15001)),            # straight at the listener
    (outbound, LOCAL_OUT, OrigDst("198.18.0.7", 15006)),           # to our own inbound via pod IP
    (inbound, LOCAL_IN, OrigDst("198.18.0.7", 15006)),             # would forward to app on 15006
    (inbound, LOCAL_IN, OrigDst("127.0.0.1", 15001)),
])
def test_loops_are_refused(plan, local, orig):
    verdict = decide(plan, local, orig)
    assert isinstance(verdict, Refuse)
    assert verdict.flag == "NR"


def test_own_port_on_another_host_is_fine():
    assert decide(outbound, LOCAL_OUT, OrigDst("198.18.0.9", 15006)) == Forward(Upstream("198.18.0.9", 15006))


def test_parse_sockaddr_in():
    raw = struct.pack("=H", socket.AF_INET) + struct.pack("!H", 8080) + socket.inet_aton("198.18.0.9") + b"\0" * 8
    assert parse_sockaddr(raw) == OrigDst("198.18.0.9", 8080)


def test_parse_sockaddr_in6():
    raw = (struct.pack("=H", socket.AF_INET6) + struct.pack("!H", 443) + b"\0" * 4
           + socket.inet_pton(socket.AF_INET6, "2001:db8::9") + b"\0" * 4)
    assert parse_sockaddr(raw) == OrigDst("2001:db8::9", 443)


def test_parse_v4_mapped_v6_unwraps():
    raw = (struct.pack("=H", socket.AF_INET6) + struct.pack("!H", 80) + b"\0" * 4
           + socket.inet_pton(socket.AF_INET6, "::ffff:198.18.0.9") + b"\0" * 4)
    assert parse_sockaddr(raw) == OrigDst("198.18.0.9", 80)


@pytest.mark.parametrize("raw", [b"", b"\x02\x00", struct.pack("=H", 99) + b"\0" * 14,
                                 struct.pack("=H", socket.AF_INET6) + b"\0" * 10])
def test_parse_rejects_garbage(raw):
    with pytest.raises(ValueError):
        parse_sockaddr(raw)


def test_sockaddr_str():
    assert str(SockAddr("2001:db8::1", 80)) == "[2001:db8::1]:80"
    assert str(SockAddr("10.0.0.1", 80)) == "10.0.0.1:80"
