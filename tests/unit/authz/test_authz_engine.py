"""The authorization engine against Istio's AuthorizationPolicy semantics: one table
of (policies, attributes) → allowed, then decision details (which policy, action,
dry run, audit), compile-time errors, and hypothesis properties of DENY/ALLOW."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings, strategies as st

from meshproxy.authz.engine import Attributes, Authorizer, Decision, namespace_of
from meshproxy.config.security import AuthorizationPolicy

SLEEP = "spiffe://cluster.local/ns/default/sa/sleep"
ADMIN = "spiffe://cluster.local/ns/ops/sa/admin"


def pol(name="p", action="ALLOW", rules=None, dry_run=False) -> AuthorizationPolicy:
    d = {"name": name, "action": action, "dry_run": dry_run}
    if rules is not None:
        d["rules"] = rules
    return AuthorizationPolicy.model_validate(d)


def http(principal=SLEEP, ip="10.0.0.5", port=8080, method=b"GET", path=b"/", headers=(),
         authority=b"reviews.shop.svc:9080") -> Attributes:
    return Attributes(principal, ip, port, method, path, list(headers), authority)


def tcp(principal=SLEEP, ip="10.0.0.5", port=8080) -> Attributes:
    return Attributes(principal, ip, port)


def frm(**source):
    return {"from": [source]}


def to(**operation):
    return {"to": [operation]}


def when(key, values=(), not_values=()):
    return {"when": [{"key": key, "values": list(values), "not_values": list(not_values)}]}


ALLOW_ALL = pol("allow-all", rules=[{}])
DENY_ALL = pol("deny-all", "DENY", rules=[{}])

# (id, policies, attributes, allowed)
CASES = [
    ("no policies allow", [], http(), True),
    ("no policies allow tcp plaintext", [], tcp(None), True),
    ("allow all", [ALLOW_ALL], http(), True),
    ("deny all", [DENY_ALL], http(), False),
    ("deny beats allow", [ALLOW_ALL, DENY_ALL], http(), False),
    ("deny beats allow (order)", [DENY_ALL, ALLOW_ALL], http(), False),
    ("default deny once an allow exists",
     [pol(rules=[frm(principals=["cluster.local/ns/ops/sa/admin"])])], http(), False),
    ("allow with empty rules matches nothing", [pol("allow-nothing")], http(), False),
    ("allow with empty rules matches nothing tcp", [pol("allow-nothing")], tcp(), False),
    ("deny with empty rules matches nothing", [pol("d", "DENY")], http(), True),
    ("allow-nothing plus allow-all", [pol("allow-nothing"), ALLOW_ALL], http(), True),
    ("empty source matches", [pol(rules=[{"from": [{}]}])], http(None), True),
    ("empty operation matches", [pol(rules=[{"to": [{}]}])], http(None), True),
    # from only / to only / when only
    ("from only match", [pol(rules=[frm(namespaces=["default"])])], http(), True),
    ("from only miss", [pol(rules=[frm(namespaces=["ops"])])], http(), False),
    ("to only match", [pol(rules=[to(methods=["GET"])])], http(), True),
    ("to only miss", [pol(rules=[to(methods=["POST"])])], http(), False),
    ("when only match", [pol(rules=[when("request.headers[x-env]", ["prod"])])],
     http(headers=[(b"x-env", b"prod")]), True),
    ("when only miss", [pol(rules=[when("request.headers[x-env]", ["prod"])])],
     http(headers=[(b"x-env", b"dev")]), False),
    ("from and to both needed",
     [pol(rules=[{**frm(namespaces=["default"]), **to(methods=["POST"])}])], http(), False),
    ("any of from", [pol(rules=[{"from": [{"namespaces": ["ops"]}, {"namespaces": ["default"]}]}])], http(), True),
    ("any of to", [pol(rules=[{"to": [{"paths": ["/x"]}, {"paths": ["/"]}]}])], http(), True),
    ("all of when",
     [pol(rules=[{"when": [{"key": "source.namespace", "values": ["default"]},
                           {"key": "request.headers[x-a]", "values": ["1"]}]}])], http(), False),
    ("fields in one source are ANDed",
     [pol(rules=[frm(namespaces=["default"], ip_blocks=["192.168.0.0/16"])])], http(), False),
    ("any rule of a policy", [pol(rules=[frm(namespaces=["ops"]), frm(namespaces=["default"])])], http(), True),
    # principals
    ("principal exact istio form", [pol(rules=[frm(principals=["cluster.local/ns/default/sa/sleep"])])], http(), True),
    ("principal exact spiffe form", [pol(rules=[frm(principals=[SLEEP])])], http(), True),
    ("principal exact other", [pol(rules=[frm(principals=["cluster.local/ns/default/sa/web"])])], http(), False),
    ("principal prefix", [pol(rules=[frm(principals=["cluster.local/ns/default/*"])])], http(), True),
    ("principal prefix spiffe form", [pol(rules=[frm(principals=["spiffe://cluster.local/ns/default/*"])])],
     http(), True),
    ("principal prefix miss", [pol(rules=[frm(principals=["cluster.local/ns/ops/*"])])], http(), False),
    ("principal suffix", [pol(rules=[frm(principals=["*/sa/sleep"])])], http(), True),
    ("principal suffix miss", [pol(rules=[frm(principals=["*/sa/web"])])], http(), False),
    ("principal any authenticated", [pol(rules=[frm(principals=["*"])])], http(), True),
    ("principal any: plaintext never", [pol(rules=[frm(principals=["*"])])], http(None), False),
    ("principal prefix: plaintext never", [pol(rules=[frm(principals=["*"])])], tcp(None), False),
    ("not_principals excludes", [pol(rules=[frm(not_principals=["*/sa/sleep"])])], http(), False),
    ("not_principals other passes", [pol(rules=[frm(not_principals=["*/sa/web"])])], http(), True),
    ("not_principals matches plaintext (Envoy NotId)",
     [pol("d", "DENY", rules=[frm(not_principals=["cluster.local/ns/ops/*"])])], http(None), False),
    ("principals and not_principals",
     [pol(rules=[frm(principals=["cluster.local/ns/default/*"], not_principals=["*/sa/sleep"])])], http(), False),
    ("when source.principal", [pol(rules=[when("source.principal", [SLEEP])])], http(), True),
    ("when source.principal plaintext", [pol(rules=[when("source.principal", ["*"])])], http(None), False),
    # namespaces
    ("namespace exact", [pol(rules=[frm(namespaces=["default"])])], http(), True),
    ("namespace prefix", [pol(rules=[frm(namespaces=["def*"])])], http(), True),
    ("namespace suffix", [pol(rules=[frm(namespaces=["*ault"])])], http(), True),
    ("namespace plaintext never", [pol(rules=[frm(namespaces=["*"])])], http(None), False),
    ("not_namespaces excludes", [pol(rules=[frm(not_namespaces=["default"])])], http(), False),
    ("not_namespaces other", [pol(rules=[frm(not_namespaces=["ops"])])], http(ADMIN), False),
    ("not_namespaces plaintext passes", [pol(rules=[frm(not_namespaces=["ops"])])], http(None), True),
    ("when source.namespace", [pol(rules=[when("source.namespace", not_values=["ops"])])], http(), True),
    # ip blocks
    ("ip v4 cidr", [pol(rules=[frm(ip_blocks=["10.0.0.0/8"])])], http(), True),
    ("ip v4 single", [pol(rules=[frm(ip_blocks=["10.0.0.5"])])], http(), True),
    ("ip v4 miss", [pol(rules=[frm(ip_blocks=["10.0.1.0/24"])])], http(), False),
    ("ip v4 block vs v6 peer", [pol(rules=[frm(ip_blocks=["0.0.0.0/0"])])], http(ip="fd00::5"), False),
    ("ip v6 cidr", [pol(rules=[frm(ip_blocks=["fd00::/8"])])], http(ip="fd00::5"), True),
    ("ip v6 single", [pol(rules=[frm(ip_blocks=["fd00::5"])])], http(ip="fd00::5"), True),
    ("ip v6 miss", [pol(rules=[frm(ip_blocks=["fe80::/10"])])], http(ip="fd00::5"), False),
    ("ip v4-mapped v6 peer", [pol(rules=[frm(ip_blocks=["10.0.0.0/8"])])], http(ip="::ffff:10.0.0.5"), True),
    ("not_ip_blocks excludes", [pol(rules=[frm(not_ip_blocks=["10.0.0.0/24"])])], http(), False),
    ("not_ip_blocks other", [pol(rules=[frm(not_ip_blocks=["10.0.1.0/24"])])], http(), True),
    ("plaintext allowed by ip", [pol(rules=[frm(ip_blocks=["10.0.0.0/8"])])], http(None), True),
    ("when source.ip", [pol(rules=[when("source.ip", ["10.0.0.0/30"])])], http(), False),
    # ports
    ("port match", [pol(rules=[to(ports=[8080])])], http(), True),
    ("port miss", [pol(rules=[to(ports=[9090])])], http(), False),
    ("not_ports", [pol(rules=[to(not_ports=[8080])])], http(), False),
    ("port tcp", [pol(rules=[to(ports=[8080])])], tcp(), True),
    ("when destination.port", [pol(rules=[when("destination.port", ["8080"])])], tcp(), True),
    ("when destination.port not", [pol(rules=[when("destination.port", not_values=["8080"])])], tcp(), False),
    # methods
    ("method any of", [pol(rules=[to(methods=["POST", "GET"])])], http(), True),
    ("method case-sensitive", [pol(rules=[to(methods=["get"])])], http(), False),
    ("not_methods", [pol(rules=[to(not_methods=["GET"])])], http(), False),
    ("not_methods other", [pol(rules=[to(not_methods=["DELETE"])])], http(), True),
    ("when request.method", [pol(rules=[when("request.method", ["GET"])])], http(), True),
    # paths
    ("path exact", [pol(rules=[to(paths=["/api"])])], http(path=b"/api"), True),
    ("path exact is not prefix", [pol(rules=[to(paths=["/api"])])], http(path=b"/api/v1"), False),
    ("path prefix", [pol(rules=[to(paths=["/api/*"])])], http(path=b"/api/v1"), True),
    ("path prefix miss", [pol(rules=[to(paths=["/api/*"])])], http(path=b"/apix"), False),
    ("path suffix", [pol(rules=[to(paths=["*.html"])])], http(path=b"/a/b.html"), True),
    ("path suffix miss", [pol(rules=[to(paths=["*.html"])])], http(path=b"/a/b.htm"), False),
    ("path any", [pol(rules=[to(paths=["*"])])], http(path=b"/x"), True),
    ("path absent (CONNECT)", [pol(rules=[to(paths=["*"])])], http(path=None), False),
    ("not_paths", [pol(rules=[to(not_paths=["/admin*"])])], http(path=b"/admin/x"), False),
    ("not_paths other", [pol(rules=[to(not_paths=["/admin*"])])], http(path=b"/public"), True),
    # hosts: the authority as sent, case-insensitive (RFC 4343), its port included
    ("host exact with port", [pol(rules=[to(hosts=["reviews.shop.svc:9080"])])], http(), True),
    ("host exact without the port misses", [pol(rules=[to(hosts=["reviews.shop.svc"])])], http(), False),
    ("host exact, client sent no port", [pol(rules=[to(hosts=["reviews.shop.svc"])])],
     http(authority=b"reviews.shop.svc"), True),
    ("host any port", [pol(rules=[to(hosts=["reviews.shop.svc:*"])])], http(), True),
    ("host any port is not another host", [pol(rules=[to(hosts=["reviews.shop.svc:*"])])],
     http(authority=b"reviews.shop.svc.evil:80"), False),
    ("host case-insensitive request", [pol(rules=[to(hosts=["reviews.shop.svc:*"])])],
     http(authority=b"Reviews.SHOP.svc:9080"), True),
    ("host case-insensitive policy", [pol(rules=[to(hosts=["REVIEWS.shop.svc:9080"])])], http(), True),
    ("host suffix", [pol(rules=[to(hosts=["*.shop.svc:9080"])])], http(), True),
    ("host suffix miss", [pol(rules=[to(hosts=["*.other.svc:9080"])])], http(), False),
    ("host any", [pol(rules=[to(hosts=["*"])])], http(), True),
    ("host absent (HTTP/1.0)", [pol(rules=[to(hosts=["*"])])], http(authority=None), False),
    ("not_hosts", [pol(rules=[to(not_hosts=["reviews.shop.svc:*"])])], http(), False),
    ("not_hosts other", [pol(rules=[to(not_hosts=["ratings.shop.svc:*"])])], http(), True),
    ("not_hosts absent passes", [pol(rules=[to(not_hosts=["reviews.shop.svc:*"])])], http(authority=None), True),
    ("deny by host, case folded", [ALLOW_ALL, pol("d", "DENY", rules=[to(hosts=["admin.shop.svc:*"])])],
     http(authority=b"ADMIN.Shop.Svc:80"), False),
    ("when request.path", [pol(rules=[when("request.path", ["/healthz"])])], http(path=b"/healthz"), True),
    # headers
    ("header exact", [pol(rules=[when("request.headers[X-Token]", ["abc"])])],
     http(headers=[(b"x-token", b"abc")]), True),
    ("header prefix", [pol(rules=[when("request.headers[x-token]", ["ab*"])])],
     http(headers=[(b"x-token", b"abc")]), True),
    ("header suffix", [pol(rules=[when("request.headers[x-token]", ["*bc"])])],
     http(headers=[(b"x-token", b"abc")]), True),
    ("header present", [pol(rules=[when("request.headers[x-token]", ["*"])])],
     http(headers=[(b"x-token", b"abc")]), True),
    ("header absent", [pol(rules=[when("request.headers[x-token]", ["*"])])], http(), False),
    ("header not_values", [pol(rules=[when("request.headers[x-token]", not_values=["abc"])])],
     http(headers=[(b"x-token", b"abc")]), False),
    ("header not_values absent passes", [pol(rules=[when("request.headers[x-token]", not_values=["abc"])])],
     http(), True),
    ("header repeated joined with comma", [pol(rules=[when("request.headers[x-a]", ["1,2"])])],
     http(headers=[(b"x-a", b"1"), (b"x-a", b"2")]), True),
    # TCP vs HTTP: ALLOW rules with HTTP-only fields never match TCP
    ("tcp allow rule with methods never matches", [pol(rules=[to(methods=["GET"])])], tcp(), False),
    ("tcp allow rule with ports+methods never matches", [pol(rules=[to(ports=[8080], methods=["GET"])])],
     tcp(), False),
    ("tcp allow rule with not_paths never matches", [pol(rules=[to(not_paths=["/x"])])], tcp(), False),
    ("tcp allow rule with hosts never matches", [pol(rules=[to(hosts=["*"])])], tcp(), False),
    ("tcp deny hosts only denies all tcp", [pol("d", "DENY", rules=[to(hosts=["a.svc"])])], tcp(), False),
    ("tcp allow rule with header when never matches",
     [pol(rules=[{**frm(namespaces=["default"]), **when("request.headers[x-a]", ["1"])}])], tcp(), False),
    ("tcp allow: other rules still match",
     [pol(rules=[to(methods=["GET"]), frm(namespaces=["default"])])], tcp(), True),
    ("http allow rule with ports+methods", [pol(rules=[to(ports=[8080], methods=["GET"])])], http(), True),
    # TCP vs HTTP: DENY rules drop their HTTP-only fields
    ("tcp deny methods+port denies the port", [ALLOW_ALL, pol("d", "DENY", rules=[to(methods=["POST"], ports=[8080])])],
     tcp(), False),
    ("tcp deny methods+port other port", [ALLOW_ALL, pol("d", "DENY", rules=[to(methods=["POST"], ports=[8080])])],
     tcp(port=9000), True),
    ("tcp deny methods only denies all tcp", [pol("d", "DENY", rules=[to(methods=["POST"])])], tcp(), False),
    ("tcp deny header when only denies all tcp", [pol("d", "DENY", rules=[when("request.headers[x-a]", ["1"])])],
     tcp(), False),
    ("tcp deny keeps non-http parts",
     [pol("d", "DENY", rules=[{**frm(namespaces=["ops"]), **to(paths=["/admin"])}])], tcp(), True),
    ("http deny methods+port, other method", [pol("d", "DENY", rules=[to(methods=["POST"], ports=[8080])])],
     http(), True),
    ("http deny methods+port, matching", [pol("d", "DENY", rules=[to(methods=["GET"], ports=[8080])])],
     http(), False),
    # AUDIT never decides, dry run never enforces
    ("audit does not deny", [pol("a", "AUDIT", rules=[{}])], http(), True),
    ("audit does not count as allow", [pol("a", "AUDIT", rules=[{}]), pol("allow-nothing")], http(), False),
    ("dry-run deny does not deny", [pol("d", "DENY", rules=[{}], dry_run=True)], http(), True),
    ("dry-run allow does not default-deny", [pol("allow-nothing", dry_run=True)], http(), True),
    ("dry-run allow does not allow", [pol("allow-nothing"), pol("a", rules=[{}], dry_run=True)], http(), False),
]


@pytest.mark.parametrize("policies, attrs, allowed", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_table(policies, attrs, allowed):
    assert Authorizer(policies).check(attrs).allowed is allowed


# === decision details ===

def test_no_policies_is_the_shared_default():
    a = Authorizer([])
    assert a.empty
    assert a.check(http()) == Decision(True, None, "default")


def test_deny_names_the_policy():
    d = Authorizer([ALLOW_ALL, pol("no-post", "DENY", rules=[to(methods=["GET"])])]).check(http())
    assert (d.allowed, d.policy, d.action) == (False, "no-post", "DENY")


def test_allow_names_the_first_matching_policy():
    d = Authorizer([pol("ops", rules=[frm(namespaces=["ops"])]), pol("mine", rules=[frm(namespaces=["default"])]),
                    pol("also", rules=[{}])]).check(http())
    assert (d.allowed, d.policy, d.action) == (True, "mine", "ALLOW")


def test_default_deny_has_no_policy():
    d = Authorizer([pol("ops", rules=[frm(namespaces=["ops"])])]).check(http())
    assert (d.allowed, d.policy, d.action) == (False, None, "default")


def test_audit_recorded_in_order_and_not_enforced():
    a = Authorizer([pol("a1", "AUDIT", rules=[to(methods=["GET"])]), pol("a2", "AUDIT", rules=[to(methods=["PUT"])]),
                    pol("a3", "AUDIT", rules=[{}]), DENY_ALL])
    d = a.check(http())
    assert (d.allowed, d.policy, d.audited) == (False, "deny-all", ("a1", "a3"))
    assert Authorizer([pol("a1", "AUDIT", rules=[{}])]).check(tcp()) == Decision(True, audited=("a1",))


def test_audit_on_tcp_drops_http_fields_like_deny():
    d = Authorizer([pol("a", "AUDIT", rules=[to(methods=["GET"], ports=[8080])])]).check(tcp())
    assert d.audited == ("a",)


def test_dry_run_deny_recorded_as_would_deny():
    d = Authorizer([pol("would", "DENY", rules=[to(paths=["/"])], dry_run=True)]).check(http())
    assert (d.allowed, d.dry_run_denied, d.dry_run_policy) == (True, True, "would")
    d = Authorizer([pol("would", "DENY", rules=[to(paths=["/x"])], dry_run=True)]).check(http())
    assert (d.allowed, d.dry_run_denied) == (True, False)


def test_dry_run_allow_would_deny_when_nothing_matches():
    a = Authorizer([pol("only-ops", rules=[frm(namespaces=["ops"])], dry_run=True)])
    d = a.check(http())
    assert (d.allowed, d.dry_run_denied, d.dry_run_policy, d.action) == (True, True, None, "default")
    assert a.check(http(ADMIN)) == Decision(True)


def test_dry_run_allow_adds_to_enforced_allow():
    # Enforced ALLOW already allows: enforcing the dry-run ALLOW too changes nothing.
    a = Authorizer([pol("mine", rules=[frm(namespaces=["default"])]),
                    pol("only-ops", rules=[frm(namespaces=["ops"])], dry_run=True)])
    assert a.check(http()) == Decision(True, "mine", "ALLOW")


def test_denied_request_is_not_also_dry_run_denied():
    d = Authorizer([DENY_ALL, pol("would", "DENY", rules=[{}], dry_run=True)]).check(http())
    assert (d.allowed, d.dry_run_denied) == (False, False)


def test_dry_run_audit_still_audits():
    assert Authorizer([pol("a", "AUDIT", rules=[{}], dry_run=True)]).check(http()).audited == ("a",)


# === attributes ===

def test_attributes_derive_namespace_and_identity():
    a = http("spiffe://td/ns/shop/sa/web")
    assert (a.source_namespace, a.source_identity, a.is_http) == ("shop", "td/ns/shop/sa/web", True)
    assert tcp(None).source_namespace is None and not tcp(None).is_http
    assert Attributes("td/ns/a/sa/b", "1.2.3.4", 1).source_namespace == "a"
    assert Attributes(SLEEP, "1.2.3.4", 1, source_namespace="given").source_namespace == "given"
    assert namespace_of("spiffe://td/sa/x") is None


def test_unparseable_peer_ip_matches_no_block():
    a = Authorizer([pol(rules=[frm(ip_blocks=["0.0.0.0/0", "::/0"])])])
    assert not a.check(http(ip="not-an-ip")).allowed
    assert a.check(http(ip="fe80::1%eth0")).allowed


# === compile errors ===

@pytest.mark.parametrize("rules, message", [
    ([frm(ip_blocks=["10.0.0.0/33"])], "IP address or CIDR"),
    ([when("source.ip", ["nope"])], "IP address or CIDR"),
    ([when("destination.port", ["http"])], "port number"),
    ([when("source.principalx", ["a"])], "unknown condition key"),
    ([when("request.headers[", ["a"])], "request.headers[NAME]"),
])
def test_invalid_values_are_refused_at_compile_time(rules, message):
    with pytest.raises(ValueError, match=re.escape(message)) as e:
        Authorizer([pol("bad", rules=rules)])
    assert "'bad' rule 0" in str(e.value)


# === properties ===

principals = st.sampled_from([None, SLEEP, ADMIN, "spiffe://other.td/ns/x/sa/y"])
ips = st.sampled_from(["10.0.0.5", "10.1.2.3", "192.168.1.1", "fd00::5", "2001:db8::1"])
ports = st.sampled_from([80, 8080, 9000])
methods = st.sampled_from([b"GET", b"POST", b"DELETE"])
paths = st.sampled_from([b"/", b"/api/v1", b"/admin/x", b"/index.html"])
header_sets = st.sampled_from([[], [(b"x-env", b"prod")], [(b"x-env", b"dev")]])


@st.composite
def attributes(draw):
    principal, ip, port = draw(principals), draw(ips), draw(ports)
    if draw(st.booleans()):
        return Attributes(principal, ip, port)
    return Attributes(principal, ip, port, draw(methods), draw(paths), draw(header_sets))


sources = st.fixed_dictionaries({}, optional={
    "principals": st.lists(st.sampled_from(["*", "cluster.local/ns/default/*", "*/sa/admin", SLEEP]), max_size=2),
    "not_principals": st.lists(st.sampled_from(["*/sa/sleep", "other.td/*"]), max_size=1),
    "namespaces": st.lists(st.sampled_from(["default", "ops", "o*"]), max_size=2),
    "not_namespaces": st.lists(st.sampled_from(["default", "x"]), max_size=1),
    "ip_blocks": st.lists(st.sampled_from(["10.0.0.0/8", "fd00::/8", "192.168.1.1"]), max_size=2),
    "not_ip_blocks": st.lists(st.sampled_from(["10.1.0.0/16", "2001:db8::/32"]), max_size=1),
})
operations = st.fixed_dictionaries({}, optional={
    "ports": st.lists(ports, max_size=2),
    "not_ports": st.lists(ports, max_size=1),
    "methods": st.lists(st.sampled_from(["GET", "POST"]), max_size=2),
    "not_methods": st.lists(st.sampled_from(["DELETE"]), max_size=1),
    "paths": st.lists(st.sampled_from(["/api/*", "*.html", "/", "*"]), max_size=2),
    "not_paths": st.lists(st.sampled_from(["/admin*"]), max_size=1),
})
conditions = st.fixed_dictionaries({
    "key": st.sampled_from(["request.headers[x-env]", "source.namespace", "destination.port", "source.ip"]),
}).flatmap(lambda c: st.fixed_dictionaries({
    "key": st.just(c["key"]),
    "values": st.lists(st.sampled_from({
        "request.headers[x-env]": ["prod", "d*", "*"], "source.namespace": ["default", "ops"],
        "destination.port": ["80", "8080"], "source.ip": ["10.0.0.0/8", "fd00::/8"]}[c["key"]]), max_size=2),
}))
rules = st.fixed_dictionaries({}, optional={
    "from": st.lists(sources, max_size=2),
    "to": st.lists(operations, max_size=2),
    "when": st.lists(conditions, max_size=2),
})
names = iter(range(10**9))


def policies(actions):
    return st.builds(lambda action, rs, dry: pol(f"p{next(names)}", action, rs, dry),
                     st.sampled_from(actions), st.one_of(st.none(), st.lists(rules, max_size=3)),
                     st.booleans())


@settings(max_examples=300, deadline=None)
@given(st.lists(policies(["ALLOW", "DENY", "AUDIT"]), max_size=4), policies(["DENY"]), attributes())
def test_adding_a_deny_never_allows_what_was_denied(base, deny, attrs):
    if not Authorizer(base).check(attrs).allowed:
        assert not Authorizer([*base, deny]).check(attrs).allowed


@settings(max_examples=300, deadline=None)
@given(st.lists(policies(["DENY", "AUDIT"]), max_size=4), policies(["ALLOW"]), attributes())
def test_adding_an_allow_never_allows_what_a_deny_denied(base, allow, attrs):
    before = Authorizer(base).check(attrs)
    assert before.action in ("DENY", "default")
    if not before.allowed:
        after = Authorizer([*base, allow]).check(attrs)
        assert not after.allowed and after.action == "DENY" and after.policy == before.policy


@settings(max_examples=300, deadline=None)
@given(st.lists(policies(["ALLOW", "DENY", "AUDIT"]), max_size=4), attributes())
def test_dry_run_and_audit_never_change_enforcement(ps, attrs):
    enforced = [p for p in ps if p.action != "AUDIT" and not p.dry_run]
    got, want = Authorizer(ps).check(attrs), Authorizer(enforced).check(attrs)
    assert (got.allowed, got.policy, got.action) == (want.allowed, want.policy, want.action)
