"""The per-request filter chain: the contract every HTTP filter speaks.

Where this sits: ``http/server.py`` receives a ``RequestHead`` from the codec,
makes a ``FilterContext`` and calls ``FilterChain.run_request``; on ``CONTINUE``
it asks the router for a route and forwards the head upstream. When the
response head comes back (from upstream, or a local reply) it calls
``run_response`` before the downstream codec writes it. ``pipeline.py`` builds
one chain per listener direction from each config snapshot; a request keeps the
chain (and snapshot) it started with.

Adding a filter (authz, fault injection, rate limit, a Python filter named in
config) is appending it to the list given to ``FilterChain``: either a shared
instance (stateless filters, no per-request cost) or a factory called once per
request (filters that keep per-request state). ``HeaderHygiene`` comes first.

Rules:

1. Request filters run in list order and the chain stops at the first verdict
   that is not ``CONTINUE`` (Envoy's decoder filters, ``FilterHeadersStatus``
   reduced to three values).
2. Response filters run in reverse order (Envoy's encoders), and only for the
   filters whose ``on_request_head`` ran: a filter never sees a response to a
   request it did not see.
3. The chain is pure and synchronous: a filter that needs to wait (an external
   authz call) returns ``STOP``, does its work itself, then calls
   ``ctx.resume()``; the server then calls ``FilterChain.resume``.
4. Exceptions from a filter are not caught here: the server's per-stream
   boundary turns them into a 500 local reply and logs them.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Iterable, Protocol, Union

from . import headers as hdrs

if TYPE_CHECKING:
    from ..codec.events import RequestHead, ResponseHead
    from ..errors import ErrorKind
    from ..net.addrs import Peer


class Verdict(enum.Enum):
    """What a request filter tells the chain to do next. Each member's docstring
    says exactly what the caller does with it."""

    def __new__(cls, value: str, doc: str) -> "Verdict":
        member = object.__new__(cls)
        member._value_ = value
        member.__doc__ = doc
        return member

    CONTINUE = ("continue", """The head passes on: the chain calls the next filter; after the
        last one ``run_request`` returns CONTINUE and the server routes the request
        and forwards the (possibly modified) head upstream.""")
    STOP = ("stop", """The filter took the request over and will finish later (e.g. an
        asynchronous authz call). The chain calls no further filter and returns STOP;
        the server forwards nothing, keeps the request (its body buffered within the
        usual limits) and waits. The filter calls ``ctx.resume()`` exactly once when
        done, after setting ``ctx.local_reply`` if the answer is a local reply; the
        server then calls ``FilterChain.resume(ctx, head)`` and acts on its verdict.""")
    RESPOND = ("respond", """Answer locally: the filter has set ``ctx.local_reply``. The chain
        calls no further filter and returns RESPOND; the server builds the reply with
        ``LocalReply.render``, runs ``run_response`` over it, sends it, discards the
        request body and never contacts an upstream.""")


@dataclass(frozen=True, slots=True)
class LocalReply:
    """A response meshproxy makes up instead of forwarding (linkerd's synthetic response)."""

    status: int
    """HTTP status, e.g. 403."""
    message: str
    """Short, clear, safe to show the client: it goes into the body."""
    flag: str
    """Envoy-style response flag (``errors.py``), e.g. ``UAEX``; sent in
    ``x-meshproxy-response-flags`` and recorded by access log and metrics."""
    details: str = ""
    """The access log's ``response_code_details`` (Envoy's ``%RESPONSE_CODE_DETAILS%``), e.g.
    ``rbac_access_denied_matched_policy[deny-admin]``; not sent to the client."""

    @classmethod
    def of(cls, kind: "ErrorKind", message: str | None = None) -> "LocalReply":
        """The reply for one row of the error table in ``errors.py``."""
        return cls(kind.status, message or kind.description, kind.flag)

    def render(self, stream_id: int, *, http_version: str, request_id: bytes | None = None,
               keep_alive: bool = True) -> tuple["ResponseHead", bytes]:
        """The response head and body to send (``headers.local_reply``)."""
        return hdrs.local_reply(stream_id, self.status, self.message, self.flag,
                                http_version=http_version, request_id=request_id,
                                keep_alive=keep_alive)


@dataclass(slots=True)
class FilterContext:
    """Per-request state shared by the server and the filters; one per request head."""

    direction: str
    """``"inbound"``, ``"outbound"`` or ``"explicit"``."""
    peer: "Peer"
    """The downstream peer (``net/addrs.py``); ``peer.host`` is its IP."""
    scheme: str | None = None
    """The downstream transport's scheme (``"https"`` over TLS) when the server knows
    it per connection (PERMISSIVE listeners take both); None = the filter's default."""
    request_id: bytes | None = None
    """The ``x-request-id``; ``HeaderHygiene`` sets it (keeping or generating one)."""
    route: Any = None
    """The router's answer (``http/router.RouteResult``); None while request filters
    run (routing comes after them), set before response filters run."""
    principal: str | None = None
    """The verified SPIFFE ID of an mTLS peer sidecar (inbound), else None."""
    destination_port: int = 0
    """The port the client connected to (the original destination's)."""
    local_reply: LocalReply | None = None
    """Set by a filter that returns RESPOND (or STOP, then resumes with a reply), and
    by the server before it sends a local reply of its own (e.g. upstream connect
    failure): response filters read it to tell a local reply from an upstream one."""
    resume: Callable[[], None] | None = None
    """Set by the server: a filter that returned STOP calls it once, when done."""
    filters: tuple = field(default=(), repr=False)
    """The filter instances serving this request (set by the chain)."""
    reached: int = 0
    """How many filters' ``on_request_head`` ran (set by the chain)."""
    stopped: bool = False
    """A filter returned STOP and ``FilterChain.resume`` has not run yet (set by the chain)."""


class RequestFilter(Protocol):
    """What a filter implements.

    It may also define ``on_response_head(self, ctx, head: ResponseHead) -> None``
    to inspect or modify a response head in place (an upstream response or a local
    reply); the chain calls it only when the filter defines it.
    """

    def on_request_head(self, ctx: FilterContext, head: "RequestHead") -> Verdict:
        """Inspect or modify the request head (in place) and decide."""
        ...


FilterFactory = Callable[[], RequestFilter]
"""Builds a fresh filter for one request (a class, a ``functools.partial`` ...)."""

_CONTINUE = Verdict.CONTINUE
_STOP = Verdict.STOP
_RESPOND = Verdict.RESPOND
_hygiene_request = hdrs.hygiene_request
_hygiene_response = hdrs.hygiene_response


def _is_instance(entry: object) -> bool:
    return not isinstance(entry, type) and hasattr(entry, "on_request_head")


class FilterChain:
    """Filters for one direction of one config snapshot, built once, run per request."""

    __slots__ = ("_entries", "_shared", "_hooks")

    def __init__(self, filters: Iterable[Union[RequestFilter, FilterFactory]] = ()) -> None:
        entries = tuple(filters)
        for entry in entries:
            if not _is_instance(entry) and not callable(entry):
                raise TypeError(f"not a filter or a filter factory: {entry!r}")
        self._entries = entries
        self._shared: tuple | None = entries if all(map(_is_instance, entries)) else None
        """All entries are shared instances: requests reuse this tuple, allocating nothing."""
        self._hooks: tuple | None = (tuple(getattr(e, "on_response_head", None) for e in entries)
                                     if self._shared is not None else None)
        """With shared instances: each one's ``on_response_head`` (or None), looked up once."""

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def entries(self) -> tuple:
        """The filters and filter factories, in order."""
        return self._entries

    def instantiate(self) -> tuple:
        """The filters for one request: shared instances as they are, factories called."""
        if self._shared is not None:
            return self._shared
        return tuple(e if _is_instance(e) else e() for e in self._entries)

    def run_request(self, ctx: FilterContext, head: "RequestHead") -> Verdict:
        """Run the request filters in order until one does not CONTINUE; return that verdict."""
        filters = self._shared
        if filters is None:
            filters = self.instantiate()
        ctx.filters = filters
        return self._run(ctx, head, filters, 0)

    def resume(self, ctx: FilterContext, head: "RequestHead") -> Verdict:
        """Continue after a filter's STOP: RESPOND if it set ``ctx.local_reply``, else
        run the filters after it (which may STOP or RESPOND in turn)."""
        if not ctx.stopped:
            raise RuntimeError("FilterChain.resume without a pending STOP")
        ctx.stopped = False
        if ctx.local_reply is not None:
            return _RESPOND
        return self._run(ctx, head, ctx.filters, ctx.reached)

    def run_response(self, ctx: FilterContext, head: "ResponseHead") -> None:
        """Run ``on_response_head`` in reverse order over the filters that saw the request."""
        filters = ctx.filters
        if filters is self._shared:
            hooks = self._hooks
            for i in range(ctx.reached - 1, -1, -1):
                hook = hooks[i]
                if hook is not None:
                    hook(ctx, head)
            return
        for i in range(ctx.reached - 1, -1, -1):
            hook = getattr(filters[i], "on_response_head", None)
            if hook is not None:
                hook(ctx, head)

    @staticmethod
    def _run(ctx: FilterContext, head: "RequestHead", filters: tuple, start: int) -> Verdict:
        for i in range(start, len(filters)):
            verdict = filters[i].on_request_head(ctx, head)
            if verdict is not _CONTINUE:
                ctx.reached = i + 1
                if verdict is _STOP:
                    ctx.stopped = True
                elif verdict is _RESPOND:
                    if ctx.local_reply is None:
                        raise RuntimeError(f"{filters[i]!r} returned RESPOND without setting ctx.local_reply")
                else:
                    raise TypeError(f"{filters[i]!r} returned {verdict!r}, expected a Verdict")
                return verdict
        ctx.reached = len(filters)
        return _CONTINUE


class HeaderHygiene:
    """Built-in first filter: ``headers.clean_request`` on the way in (sets
    ``ctx.request_id``), ``headers.clean_response`` on the way back. Stateless:
    share one instance per chain."""

    __slots__ = ("direction", "scheme", "inbound")

    def __init__(self, direction: str, scheme: str = "http") -> None:
        direction = getattr(direction, "value", direction)  # accept net.addrs.Direction too
        if direction not in ("inbound", "outbound", "explicit"):
            raise ValueError(f"direction must be 'inbound', 'outbound' or 'explicit', got {direction!r}")
        self.direction = direction
        self.inbound = direction == "inbound"
        self.scheme = scheme
        """Downstream scheme when ``ctx.scheme`` is None."""

    def on_request_head(self, ctx: FilterContext, head: "RequestHead") -> Verdict:
        # clean_request's rules, positional (the keyword wrapper costs a frame per request)
        ctx.request_id = _hygiene_request(head, self.inbound, ctx.peer.host, ctx.scheme or self.scheme,
                                          ctx.request_id)
        return _CONTINUE

    def on_response_head(self, ctx: FilterContext, head: "ResponseHead") -> None:
        _hygiene_response(head, ctx.local_reply is not None)

    def __repr__(self) -> str:
        return f"HeaderHygiene({self.direction!r}, {self.scheme!r})"
