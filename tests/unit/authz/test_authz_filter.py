"""The HTTP authorization filter (verdicts, the 403 reply, what it hands the counter,
which attributes it reads from the context and head) and the L4 ``check_tcp``."""

from __future__ import annotations

import pytest

from meshproxy.authz.engine import Attributes, Authorizer, Decision
from meshproxy.authz.filter import DENIED_REPLY, AuthzFilter, check_tcp, request_path
from meshproxy.codec.events import RequestHead
from meshproxy.config.security import AuthorizationPolicy
from meshproxy.http.chain import FilterChain, FilterContext, HeaderHygiene, Verdict
from meshproxy.net.addrs import Peer

SLEEP = "spiffe://cluster.local/ns/default/sa/sleep"


def pol(name="p", action="ALLOW", rules=None, dry_run=False):
    d = {"name": name, "action": action, "dry_run": dry_run}
    if rules is not None:
        d["rules"] = rules
    return AuthorizationPolicy.model_validate(d)


def head(method=b"GET", target=b"/", headers=None):
    return RequestHead(1, method, target, b"svc", headers if headers is not None else [(b"host", b"svc")])


def ctx(principal=SLEEP, ip="10.0.0.5", port=8080):
    c = FilterContext("inbound", Peer(ip, 40000))
    c.principal = principal
    c.destination_port = port
    return c


class Spy:
    """Stands in for the authorizer: records the attributes and answers a fixed decision."""

    needs_headers = False

    def __init__(self, decision=Decision(True)):
        self.decision, self.seen = decision, []

    def check(self, attrs):
        self.seen.append(attrs)
        return self.decision


def run(policies, c=None, h=None):
    counted = []
    f = AuthzFilter(Authorizer(policies), counted.append)
    c = c or ctx()
    return f.on_request_head(c, h or head()), c, counted


def test_allowed_continues_and_counts_nothing():
    verdict, c, counted = run([pol(rules=[{"to": [{"methods": ["GET"]}]}])])
    assert verdict is Verdict.CONTINUE and c.local_reply is None and counted == []


def test_denied_responds_403_rbac():
    verdict, c, counted = run([pol("no-get", "DENY", rules=[{"to": [{"methods": ["GET"]}]}])])
    assert verdict is Verdict.RESPOND
    r = c.local_reply
    assert (r.status, r.message, r.flag) == (403, "RBAC: access denied", "RBAC")
    assert r.details == "rbac_access_denied_matched_policy[no-get]"  # Envoy's %RESPONSE_CODE_DETAILS%
    assert [(d.allowed, d.policy, d.action) for d in counted] == [(False, "no-get", "DENY")]


def test_default_deny_responds_403():
    verdict, c, counted = run([pol("allow-nothing")])
    assert verdict is Verdict.RESPOND and counted == [Decision(False)]
    assert c.local_reply is DENIED_REPLY and DENIED_REPLY.details == "rbac_access_denied_matched_policy[none]"


@pytest.mark.parametrize("policies", [
    [pol("would", "DENY", rules=[{}], dry_run=True)],
    [pol("audit", "AUDIT", rules=[{}])],
])
def test_dry_run_and_audit_continue_but_are_counted(policies):
    verdict, c, counted = run(policies)
    assert verdict is Verdict.CONTINUE and c.local_reply is None
    assert len(counted) == 1 and counted[0].allowed
    assert counted[0].dry_run_denied or counted[0].audited == ("audit",)


def test_counter_is_optional():
    f = AuthzFilter(Authorizer([pol("allow-nothing")]))
    assert f.on_request_head(ctx(), head()) is Verdict.RESPOND


def test_attributes_come_from_context_and_head():
    spy = Spy()
    hdrs = [(b"host", b"svc"), (b"x-a", b"1")]
    AuthzFilter(spy).on_request_head(ctx(SLEEP, "fd00::5", 9080), head(b"POST", b"/api/v1?x=1#f", hdrs))
    (a,) = spy.seen
    assert a == Attributes(SLEEP, "fd00::5", 9080, b"POST", b"/api/v1", hdrs, b"svc")
    assert a.source_namespace == "default" and a.is_http


def test_plaintext_request_has_no_principal():
    verdict, _, _ = run([pol(rules=[{"from": [{"principals": ["*"]}]}])], ctx(principal=None))
    assert verdict is Verdict.RESPOND


def test_in_a_chain_after_header_hygiene():
    chain = FilterChain([HeaderHygiene("inbound"), AuthzFilter(Authorizer([pol("allow-nothing")]))])
    c = ctx()
    assert chain.run_request(c, head()) is Verdict.RESPOND
    assert c.local_reply is DENIED_REPLY and c.reached == 2


@pytest.mark.parametrize("target, path", [
    (b"/", b"/"),
    (b"/a/b", b"/a/b"),
    (b"/a?b=1", b"/a"),
    (b"/a#frag", b"/a"),
    (b"/a?b#c", b"/a"),
    (b"/?", b"/"),
    (b"http://svc:8080/a/b?c", b"/a/b"),
    (b"http://svc", b"/"),
    (b"https://svc?x", b"/"),
    (b"*", b"*"),
    (b"svc:443", None),
])
def test_request_path(target, path):
    assert request_path(target) == path


def test_check_tcp_uses_tcp_semantics():
    a = Authorizer([pol("get-only", rules=[{"to": [{"methods": ["GET"]}]}]),
                    pol("ops", rules=[{"from": [{"namespaces": ["ops"]}]}])])
    assert check_tcp(a, SLEEP, "10.0.0.5", 8080) == Decision(False)
    assert check_tcp(a, "spiffe://cluster.local/ns/ops/sa/x", "10.0.0.5", 8080) == Decision(True, "ops", "ALLOW")
    d = check_tcp(Authorizer([pol("no-post", "DENY", rules=[{"to": [{"methods": ["POST"], "ports": [5432]}]}])]),
                  None, "10.0.0.5", 5432)
    assert (d.allowed, d.policy) == (False, "no-post")


def test_allows_asks_the_same_question_as_the_filter():
    """The express lane's call: the same attributes as ``on_request_head`` for the same request."""
    spy = Spy()
    hdrs = [(b"host", b"svc"), (b"x-a", b"1")]
    assert AuthzFilter(spy).allows(SLEEP, "fd00::5", 9080, b"POST", b"/api/v1?x=1", hdrs, b"svc") is True
    AuthzFilter(spy).on_request_head(ctx(SLEEP, "fd00::5", 9080), head(b"POST", b"/api/v1?x=1", hdrs))
    assert spy.seen[0] == spy.seen[1] == Attributes(SLEEP, "fd00::5", 9080, b"POST", b"/api/v1", hdrs, b"svc")


def test_allows_counts_dry_run_and_audit_but_not_a_denial():
    """A denial is counted by the general path the lane hands the request to, so only once."""
    counted: list = []
    deny = AuthzFilter(Authorizer([pol("allow-nothing")]), counted.append)
    assert deny.allows(SLEEP, "10.0.0.1", 80, b"GET", b"/", None, b"h") is False
    assert counted == []
    audit = AuthzFilter(Authorizer([pol("audit", "AUDIT", rules=[{}]), pol("would", "DENY", rules=[{}],
                                                                          dry_run=True)]), counted.append)
    assert audit.allows(SLEEP, "10.0.0.1", 80, b"GET", b"/", None, b"h") is True
    assert len(counted) == 1 and counted[0].audited == ("audit",) and counted[0].dry_run_denied
    plain = AuthzFilter(Authorizer([pol("all", rules=[{}])]), counted.append)
    assert plain.allows(SLEEP, "10.0.0.1", 80, b"GET", b"/", None, b"h") is True
    assert len(counted) == 1  # a plain allow is not counted (the hot path)


@pytest.mark.parametrize("rules, needs", [
    ([{"to": [{"paths": ["/a"]}]}], False),
    ([{"when": [{"key": "source.ip", "values": ["10.0.0.1"]}]}], False),
    ([{}, {"when": [{"key": "request.headers[X-Tenant]", "values": ["a"]}]}], True),
])
def test_needs_headers_only_when_a_rule_reads_them(rules, needs):
    f = AuthzFilter(Authorizer([pol("p", rules=rules)]))
    assert f.needs_headers is needs
