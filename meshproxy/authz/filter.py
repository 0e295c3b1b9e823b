"""Authorization at the edges of the inbound path: the HTTP request filter and the
L4 connection check, both thin adapters over ``authz/engine.py``.

Where this sits: ``http/context.py`` appends one shared ``AuthzFilter`` to the
inbound chain (after ``HeaderHygiene``) when policies are configured;
``net/listener.py`` calls ``check_tcp`` once per inbound opaque TCP connection,
after the mTLS handshake, before relaying a byte. Pure and synchronous like the
engine: a denial is a local reply (HTTP) or a refused connection (TCP), never an
exception.

A denied request is answered like Envoy's RBAC filter: 403 with the message
``RBAC: access denied``, and the access log's ``response_code_details`` names the
policy as Envoy's does: ``rbac_access_denied_matched_policy[NAME]``, ``[none]`` when
no ALLOW policy matched. Envoy's RBAC filter sets no response flag (its built-in
flags have none for RBAC; ``UAEX`` is ext_authz's); our local replies always carry
a flag, so we use ``RBAC`` (``errors.RBAC_DENIED``).
"""

from __future__ import annotations

from functools import lru_cache
from typing import TYPE_CHECKING, Callable

from ..errors import RBAC_DENIED
from ..http.chain import LocalReply, Verdict
from .engine import Attributes, Authorizer, Decision

if TYPE_CHECKING:
    from ..codec.events import RequestHead
    from ..http.chain import FilterContext

DENIED_REPLY = LocalReply(403, "RBAC: access denied", RBAC_DENIED.flag, "rbac_access_denied_matched_policy[none]")
"""The local reply for a request no ALLOW policy matched (shared: ``LocalReply`` is frozen)."""


@lru_cache(maxsize=256)
def _denied_by(policy: str) -> LocalReply:
    """The local reply for a request the DENY policy ``policy`` matched (one per policy name)."""
    return LocalReply(DENIED_REPLY.status, DENIED_REPLY.message, DENIED_REPLY.flag,
                      f"rbac_access_denied_matched_policy[{policy}]")


_CONTINUE = Verdict.CONTINUE
_RESPOND = Verdict.RESPOND


def request_path(target: bytes) -> bytes | None:
    """The path of a request target, without query or fragment: origin-form ``/a?b`` → ``/a``,
    absolute-form ``http://h/a?b`` → ``/a`` (``/`` when empty), ``*`` → ``*``;
    authority-form (CONNECT) has none → None."""
    if target[:1] != b"/":
        scheme = target.find(b"://")
        if scheme < 0:
            return b"*" if target == b"*" else None
        start = target.find(b"/", scheme + 3)
        if start < 0:
            return b"/"
        target = target[start:]
    end = len(target)
    for sep in (b"?", b"#"):
        i = target.find(sep, 0, end)
        if i >= 0:
            end = i
    return target[:end] if end != len(target) else target


class AuthzFilter:
    """Inbound request filter: RESPOND 403 when the authorizer denies, else CONTINUE.
    Stateless: share one instance per chain (per snapshot)."""

    __slots__ = ("authorizer", "counter", "needs_headers")

    def __init__(self, authorizer: Authorizer, counter: Callable[[Decision], None] | None = None) -> None:
        self.authorizer = authorizer
        self.counter = counter
        """Called with every decision that denied, would have denied (dry run) or was audited;
        not for plain allows (the hot path)."""
        self.needs_headers = authorizer.needs_headers
        """Some policy reads request headers (``when: request.headers[...]``): ``allows`` must be
        given them."""

    def on_request_head(self, ctx: "FilterContext", head: "RequestHead") -> Verdict:
        d = self.authorizer.check(Attributes(
            ctx.principal,
            ctx.peer.host,
            ctx.destination_port,
            head.method,
            request_path(head.target),
            head.headers,
            head.authority,
        ))
        if self.counter is not None and (not d.allowed or d.dry_run_denied or d.audited):
            self.counter(d)
        if d.allowed:
            return _CONTINUE
        ctx.local_reply = DENIED_REPLY if d.policy is None else _denied_by(d.policy)
        return _RESPOND

    def allows(self, principal: str | None, source_ip: str, port: int, method: bytes, target: bytes,
               headers: "list[tuple[bytes, bytes]] | None", authority: bytes | None) -> bool:
        """The express lane's question (``http/express.py``), for an origin-form request whose
        headers went through hygiene: may it go on? The decision is the one ``on_request_head``
        makes; ``headers`` may be None unless ``needs_headers``. Allowed requests that the
        counter wants (dry-run denials, audits) are counted here. A denial is not: the lane
        hands that request to the general path, whose ``on_request_head`` answers it and counts
        it once."""
        d = self.authorizer.check(Attributes(principal, source_ip, port, method, request_path(target), headers,
                                             authority))
        if not d.allowed:
            return False
        if self.counter is not None and (d.dry_run_denied or d.audited):
            self.counter(d)
        return True

    def __repr__(self) -> str:
        return f"AuthzFilter({self.authorizer!r})"


def check_tcp(authorizer: Authorizer, principal: str | None, source_ip: str, port: int) -> Decision:
    """The decision for an inbound L4 connection (HTTP-only fields per Istio's TCP rules,
    see ``engine.py``). ``principal`` is the verified peer SPIFFE ID, None for plaintext."""
    return authorizer.check(Attributes(principal, source_ip, port))
