"""The authorization engine: Istio ``AuthorizationPolicy`` semantics, compiled once per
config snapshot and evaluated per inbound connection (TCP) or request (HTTP).

Where this sits: ``app.py`` builds one ``Authorizer`` from
``security.authorization_policies`` (``config/security.py``) per snapshot;
``authz/filter.py`` asks it about every inbound HTTP request (``AuthzFilter``) and
``net/listener.py`` about every inbound opaque TCP connection (``check_tcp``).
Pure and synchronous: no asyncio, no sockets, no clock, no logging, no metrics. The
caller logs and counts from the returned ``Decision``.

Evaluation (istio/api ``security/v1beta1/authorization_policy.proto``; CUSTOM is not
supported):

1. AUDIT policies are evaluated first and only recorded (``Decision.audited``).
2. Any enforced DENY policy matches → denied (``action="DENY"``).
3. No enforced ALLOW policy exists → allowed (``action="default"``).
4. Some enforced ALLOW policy matches → allowed (``action="ALLOW"``).
5. Otherwise denied (``action="default"``, ``policy=None``; Envoy logs
   ``rbac_access_denied_matched_policy[none]``).

A policy matches when any of its rules does. A policy with no rules never matches,
whatever its action (istio/istio ``pilot/pkg/security/authz/builder/builder.go``
emits ``rbacPolicyMatchNever`` for it): an ALLOW policy without rules therefore
denies everything (Istio's ``allow-nothing``), ``rules: [{}]`` allows everything. A
rule matches when any ``from`` matches, any ``to`` matches and every ``when`` holds;
an empty list matches everything, and so does an empty ``source``/``operation``.
Within one field the values are ORed; ``not_*`` values must all fail to match.

Values: exact, ``prefix*``, ``*suffix`` or ``*`` (present and non-empty), the way
Istio's ``StringMatcher`` reads them (only a leading or trailing ``*`` is special).

- ``principals`` accept ``td/ns/NS/sa/SA`` (Istio) and ``spiffe://td/ns/NS/sa/SA``;
  both sides are compared without the scheme. ``namespaces`` are read from the
  principal's ``/ns/NS/`` segment. Both need an authenticated (mTLS) peer: plaintext
  never matches ``principals``/``namespaces``, ``*`` means "any authenticated peer".
  Like Envoy's ``NotId(Authenticated)`` (and ztunnel's ``rbac.rs``), ``not_principals``
  and ``not_namespaces`` DO match a plaintext peer: it has no principal to exclude.
  Scope a DENY with ``not_principals`` accordingly, or pair it with ``principals: ["*"]``.
- ``ip_blocks``: CIDRs or single addresses, v4 and v6, against the peer address
  (Envoy's ``direct_remote_ip``; ``X-Forwarded-For`` is never consulted).
- ``ports``: the original destination port. ``methods``: case-sensitive.
  ``paths``: the path without query or fragment, not normalised.
- ``hosts``: the request's ``Host`` (HTTP/1.1) or ``:authority`` (HTTP/2) as sent,
  compared case-insensitively (RFC 4343; Istio since CVE-2021-39155). A port the client
  sent is part of the value, as in Istio: ``web.shop.svc`` does not match
  ``web.shop.svc:8080``; ``web.shop.svc:*`` matches any port. A request without one
  (HTTP/1.0 without ``Host``) never matches ``hosts`` and always passes ``not_hosts``.
- ``when``: ``request.headers[NAME]`` (name case-insensitive; several fields of one
  name are joined with ``,`` like Envoy), ``source.principal``, ``source.namespace``,
  ``source.ip``, ``destination.port`` as above; ``request.method`` and
  ``request.path`` are meshproxy extensions treated like ``methods``/``paths``.
  An absent header never matches ``values`` and always passes ``not_values``.

TCP connections and HTTP-only fields (``methods``, ``paths``, ``hosts``, their ``not_*``,
``request.headers[...]``, ``request.method``, ``request.path``). Istio's generator
(``pilot/pkg/security/authz/model/model.go``: ``Generate(forTCP)`` and
``checkError``) treats them by action:

- ALLOW: a rule that uses any HTTP-only field is dropped from the TCP filter, so it
  never matches a TCP connection (the policy still exists, so it still turns on
  default-deny). Narrower allow: less is allowed.
- DENY and AUDIT: the HTTP-only values are dropped and the rest of the rule stays, so
  a rule left with nothing matches every TCP connection ("for a DENY rule, missing
  attributes are treated as matches", authorization_policy.proto). Wider deny.
  A DENY ``to: [{methods: [POST], ports: [8080]}]`` denies all TCP on port 8080.

Dry run (``dry_run: true``, Istio's ``istio.io/dry-run`` annotation): such policies
never change ``allowed``. ``dry_run_denied`` is set when enforcing the dry-run
policies as well would have denied a request that is allowed (a dry-run DENY matches,
or dry-run ALLOW policies exist, no enforced ALLOW policy exists and none of them
matches); ``dry_run_policy`` names the DENY policy, or is None for "no ALLOW
matched". (Istio reports each action's shadow engine on its own, so with both an
enforced and a dry-run ALLOW it would also report "shadow denied" for a request the
enforced ALLOW let through; we report only outcomes that would really change.)

Not supported (not in the config model): CUSTOM, ``request.auth.*``,
``remote.ip``, ``destination.ip``, ``connection.sni``, trust-domain aliases, path
templates. Invalid values (a bad CIDR, a non-numeric port, an unknown key) raise
``ValueError`` naming the policy and rule, so a bad snapshot is refused at load.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from functools import lru_cache
from operator import attrgetter
from typing import Callable, Literal, Sequence

from ..config.security import AuthorizationPolicy, Condition, Operation, Rule, Source

_SCHEME = "spiffe://"


@dataclass(frozen=True, slots=True)
class Attributes:
    """What a decision is made on: one inbound connection (TCP) or request (HTTP)."""

    source_principal: str | None
    """The verified peer SPIFFE ID with its scheme (``spiffe://td/ns/a/sa/b``); None for plaintext."""
    source_ip: str
    """The peer's address (``Peer.host``)."""
    destination_port: int
    """The original destination port (before redirection)."""
    method: bytes | None = None
    """HTTP method; None for a TCP connection (``is_http`` is False)."""
    path: bytes | None = None
    """HTTP path without query or fragment; None when the request has none (CONNECT)."""
    headers: list[tuple[bytes, bytes]] | None = None
    """HTTP headers, lower-case names (``codec/events.py``)."""
    authority: bytes | None = None
    """HTTP ``Host`` / ``:authority`` as sent (``RequestHead.authority``); None when absent."""
    source_namespace: str | None = None
    """The principal's ``/ns/NS/`` segment; derived from ``source_principal`` when not given."""
    source_identity: str | None = field(default=None, init=False, repr=False, compare=False)
    """``source_principal`` without ``spiffe://``, the form policies are matched on (derived)."""

    def __post_init__(self) -> None:
        p = self.source_principal
        if p is None:
            return
        ident, ns = _split_principal(p)
        object.__setattr__(self, "source_identity", ident)
        if self.source_namespace is None:
            object.__setattr__(self, "source_namespace", ns)

    @property
    def is_http(self) -> bool:
        return self.method is not None


@lru_cache(maxsize=1024)
def _split_principal(principal: str) -> tuple[str, str | None]:
    """(identity without ``spiffe://``, namespace); peers repeat, so this is cached."""
    ident = principal[len(_SCHEME):] if principal.startswith(_SCHEME) else principal
    return ident, namespace_of(ident)


def namespace_of(principal: str) -> str | None:
    """``NS`` from ``[spiffe://]td/ns/NS/sa/SA``, or None."""
    i = principal.find("/ns/")
    if i < 0:
        return None
    rest = principal[i + 4:]
    ns = rest.split("/", 1)[0]
    return ns or None


Action = Literal["ALLOW", "DENY", "default"]


@dataclass(frozen=True, slots=True)
class Decision:
    """The answer for one connection or request."""

    allowed: bool
    policy: str | None = None
    """The policy that decided: the matching DENY or ALLOW policy; None for a default decision."""
    action: Action = "default"
    """``DENY``/``ALLOW``: that policy decided; ``default``: no policy matched (allowed when no
    enforced ALLOW policy exists, denied otherwise)."""
    dry_run_denied: bool = False
    """Allowed, but enforcing the dry-run policies too would have denied it."""
    dry_run_policy: str | None = None
    """The dry-run DENY policy that would have denied (None: no dry-run ALLOW policy matched)."""
    audited: tuple[str, ...] = ()
    """Names of the AUDIT policies that matched, in config order."""


_ALLOW_DEFAULT = Decision(True)
_DENY_DEFAULT = Decision(False)

# === compiled matchers ===

Check = Callable[[Attributes], bool]


class _Strings:
    """Istio string values compiled once: exact set, prefix and suffix tuples, presence."""

    __slots__ = ("exact", "prefixes", "suffixes", "present")

    def __init__(self, values: Sequence, star: object) -> None:
        exact, prefixes, suffixes, present = set(), [], [], False
        for v in values:
            if v == star:
                present = True
            elif v[:1] == star:
                suffixes.append(v[1:])
            elif v[-1:] == star:
                prefixes.append(v[:-1])
            else:
                exact.add(v)
        self.exact = frozenset(exact)
        self.prefixes = tuple(prefixes) or None
        self.suffixes = tuple(suffixes) or None
        self.present = present

    def __call__(self, s) -> bool:
        return (s in self.exact
                or (self.present and len(s) > 0)
                or (self.prefixes is not None and s.startswith(self.prefixes))
                or (self.suffixes is not None and s.endswith(self.suffixes)))


def _strs(values: Sequence[str]) -> _Strings:
    return _Strings(values, "*")


def _bytes(values: Sequence[str]) -> _Strings:
    return _Strings([v.encode("utf-8") for v in values], b"*")


def _principals(values: Sequence[str]) -> _Strings:
    return _strs([v[len(_SCHEME):] if v.startswith(_SCHEME) else v for v in values])


class _Networks:
    """CIDRs compiled to (network int, mask int) per IP version."""

    __slots__ = ("v4", "v6")

    def __init__(self, values: Sequence[str]) -> None:
        v4, v6 = [], []
        for v in values:
            try:
                net = ipaddress.ip_network(v.strip(), strict=False)
            except ValueError:
                raise ValueError(f"expected an IP address or CIDR such as 10.0.0.0/8, got {v!r}") from None
            (v4 if net.version == 4 else v6).append((int(net.network_address), int(net.netmask)))
        self.v4 = tuple(v4)
        self.v6 = tuple(v6)

    def __call__(self, ip: tuple[int, int]) -> bool:
        version, n = ip
        for net, mask in (self.v4 if version == 4 else self.v6):
            if n & mask == net:
                return True
        return False


@lru_cache(maxsize=4096)
def _parse_ip(s: str) -> tuple[int, int] | None:
    """``(version, integer)`` of an address (zone id dropped, v4-mapped v6 unwrapped); None if invalid."""
    try:
        ip = ipaddress.ip_address(s.split("%", 1)[0])
    except ValueError:
        return None
    if ip.version == 6 and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.version, int(ip)


def _ports(values: Sequence) -> frozenset[int]:
    out = set()
    for v in values:
        try:
            p = int(v)
        except (TypeError, ValueError):
            p = -1
        if not 0 <= p <= 65535:
            raise ValueError(f"expected a port number 0-65535, got {v!r}")
        out.add(p)
    return frozenset(out)


def _field(get: Callable[[Attributes], object], pos, neg) -> Check:
    """Positive values must match (an absent attribute never does); negative values must not
    (an absent attribute passes, like Envoy's ``NotId``)."""
    if pos is not None and neg is not None:
        def check(a: Attributes) -> bool:
            v = get(a)
            return v is not None and pos(v) and not neg(v)
    elif pos is not None:
        def check(a: Attributes) -> bool:
            v = get(a)
            return v is not None and pos(v)
    else:
        def check(a: Attributes) -> bool:
            v = get(a)
            return v is None or not neg(v)
    return check


def _header_getter(name: bytes) -> Callable[[Attributes], bytes | None]:
    def get(a: Attributes) -> bytes | None:
        headers = a.headers
        if not headers:
            return None
        found = [v for k, v in headers if k == name]
        if not found:
            return None
        return found[0] if len(found) == 1 else b",".join(found)
    return get


def _source_ip(a: Attributes):
    return _parse_ip(a.source_ip)


_identity = attrgetter("source_identity")
_namespace = attrgetter("source_namespace")
_port = attrgetter("destination_port")
_method = attrgetter("method")
_path = attrgetter("path")


def _authority(a: Attributes) -> bytes | None:
    h = a.authority
    return h.lower() if h is not None else None


def _hosts(values: Sequence[str]) -> _Strings:
    return _bytes([v.lower() for v in values])

Compiled = list[tuple[Check, bool]]
"""Checks of one clause, each with whether it is HTTP-only."""


def _add(out: Compiled, values, not_values, compile_, get, http_only: bool) -> None:
    if values or not_values:
        out.append((_field(get, compile_(values) if values else None,
                           compile_(not_values) if not_values else None), http_only))


def _source(s: Source) -> Compiled:
    out: Compiled = []
    _add(out, s.principals, s.not_principals, _principals, _identity, False)
    _add(out, s.namespaces, s.not_namespaces, _strs, _namespace, False)
    _add(out, s.ip_blocks, s.not_ip_blocks, _Networks, _source_ip, False)
    return out


def _operation(o: Operation) -> Compiled:
    out: Compiled = []
    _add(out, o.ports, o.not_ports, _ports_matcher, _port, False)
    _add(out, o.methods, o.not_methods, _bytes, _method, True)
    _add(out, o.paths, o.not_paths, _bytes, _path, True)
    _add(out, o.hosts, o.not_hosts, _hosts, _authority, True)
    return out


def _ports_matcher(values) -> Callable[[int], bool]:
    return _ports(values).__contains__


_CONDITIONS = {
    "source.principal": (_principals, _identity, False),
    "source.namespace": (_strs, _namespace, False),
    "source.ip": (_Networks, _source_ip, False),
    "destination.port": (_ports_matcher, _port, False),
    "request.method": (_bytes, _method, True),
    "request.path": (_bytes, _path, True),
}


def _condition(c: Condition) -> Compiled:
    out: Compiled = []
    key = c.key
    if key.startswith("request.headers["):
        if not key.endswith("]") or len(key) == len("request.headers[]"):
            raise ValueError(f"expected request.headers[NAME], got {key!r}")
        name = key[len("request.headers["):-1].strip().lower().encode("ascii")
        _add(out, c.values, c.not_values, _bytes, _header_getter(name), True)
        return out
    try:
        compile_, get, http_only = _CONDITIONS[key]
    except KeyError:
        raise ValueError(f"unknown condition key {key!r}") from None
    _add(out, c.values, c.not_values, compile_, get, http_only)
    return out


class _Rule:
    """One rule for one protocol: ``from`` clauses (any), ``to`` clauses (any), ``when`` checks (all)."""

    __slots__ = ("froms", "tos", "whens")

    def __init__(self, froms, tos, whens) -> None:
        self.froms: tuple[tuple[Check, ...], ...] | None = froms
        """None = no ``from`` (matches everything); an empty inner tuple matches everything too."""
        self.tos: tuple[tuple[Check, ...], ...] | None = tos
        self.whens: tuple[Check, ...] = whens

    def matches(self, a: Attributes) -> bool:
        for c in self.whens:
            if not c(a):
                return False
        return ((self.froms is None or _any_clause(self.froms, a))
                and (self.tos is None or _any_clause(self.tos, a)))


def _any_clause(clauses: tuple[tuple[Check, ...], ...], a: Attributes) -> bool:
    """Some clause whose checks all hold (plain loops: this is the per-request hot path)."""
    for clause in clauses:
        for c in clause:
            if not c(a):
                break
        else:
            return True
    return False


def _compile_rule(rule: Rule, action: str) -> tuple[_Rule, _Rule | None]:
    """The rule for HTTP, and for TCP (None: never matches TCP; see the module docstring)."""
    froms = [_source(s) for s in rule.from_]
    tos = [_operation(o) for o in rule.to]
    whens = [chk for c in rule.when for chk in _condition(c)]

    def build(keep_http: bool) -> _Rule:
        def clause(compiled: Compiled) -> tuple[Check, ...]:
            return tuple(c for c, http_only in compiled if keep_http or not http_only)
        return _Rule(tuple(clause(f) for f in froms) if froms else None,
                     tuple(clause(t) for t in tos) if tos else None,
                     clause(whens))

    http = build(True)
    uses_http = any(h for clause in (*froms, *tos, whens) for _, h in clause)
    if not uses_http:
        return http, http
    return http, (None if action == "ALLOW" else build(False))


class _Policy:
    __slots__ = ("name", "http", "tcp")

    def __init__(self, policy: AuthorizationPolicy) -> None:
        self.name = policy.name
        http, tcp = [], []
        for i, rule in enumerate(policy.rules):
            try:
                h, t = _compile_rule(rule, policy.action)
            except ValueError as e:
                raise ValueError(f"authorization policy {policy.name!r} rule {i}: {e}") from None
            http.append(h)
            if t is not None:
                tcp.append(t)
        self.http: tuple[_Rule, ...] = tuple(http)
        self.tcp: tuple[_Rule, ...] = tuple(tcp)

    def matches(self, a: Attributes) -> bool:
        for r in (self.http if a.method is not None else self.tcp):
            if r.matches(a):
                return True
        return False


def _first(policies: tuple[_Policy, ...], a: Attributes) -> str | None:
    for p in policies:
        if p.matches(a):
            return p.name
    return None


class Authorizer:
    """The policies of one config snapshot, compiled once. ``check`` is pure and cheap."""

    __slots__ = ("_audit", "_deny", "_allow", "_dry_deny", "_dry_allow", "needs_headers")

    def __init__(self, policies: Sequence[AuthorizationPolicy]) -> None:
        groups: dict[tuple[str, bool], list[_Policy]] = {}
        for p in policies:
            dry = p.dry_run and p.action != "AUDIT"  # AUDIT only records anyway
            groups.setdefault((p.action, dry), []).append(_Policy(p))
        self._audit = tuple(groups.get(("AUDIT", False), ()))
        self._deny = tuple(groups.get(("DENY", False), ()))
        self._allow = tuple(groups.get(("ALLOW", False), ()))
        self._dry_deny = tuple(groups.get(("DENY", True), ()))
        self._dry_allow = tuple(groups.get(("ALLOW", True), ()))
        self.needs_headers = any(c.key.startswith("request.headers[") for p in policies for r in p.rules
                                 for c in r.when)
        """Some rule reads request headers: a check without ``Attributes.headers`` would be wrong."""

    @property
    def empty(self) -> bool:
        """No policy at all: every check allows, the caller may skip authorization."""
        return not (self._audit or self._deny or self._allow or self._dry_deny or self._dry_allow)

    def check(self, a: Attributes) -> Decision:
        audited: tuple[str, ...] = ()
        if self._audit:
            audited = tuple(p.name for p in self._audit if p.matches(a))
        deny = _first(self._deny, a)
        if deny is not None:
            return Decision(False, deny, "DENY", audited=audited)
        allow = None
        if self._allow:
            allow = _first(self._allow, a)
            if allow is None:
                return Decision(False, audited=audited) if audited else _DENY_DEFAULT
        dry_denied, dry_policy = False, None
        if self._dry_deny:
            dry_policy = _first(self._dry_deny, a)
            dry_denied = dry_policy is not None
        if not dry_denied and self._dry_allow and not self._allow:
            dry_denied = _first(self._dry_allow, a) is None
        if allow is None and not dry_denied and not audited:
            return _ALLOW_DEFAULT
        return Decision(True, allow, "ALLOW" if allow is not None else "default",
                        dry_denied, dry_policy, audited)

    def __repr__(self) -> str:
        return (f"Authorizer(audit={len(self._audit)}, deny={len(self._deny)}, allow={len(self._allow)}, "
                f"dry_run={len(self._dry_deny) + len(self._dry_allow)})")
