"""Every way a connection or request can fail, in one table: who caused it, the
status code a client is answered with (HTTP), Envoy's response flag and the
metric label.

Where this sits: beside the data flow. ``net/relay.py`` sets flags from here;
the HTTP layer (a later capability) answers local replies from the same rows.
Errors caused by a peer (remote) are logged at debug level and counted; errors
that cannot happen unless meshproxy itself is wrong are logged at error level.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class ErrorKind:
    flag: str
    """Envoy's short response flag (``%RESPONSE_FLAGS%``), used as the ``response_flags`` label."""
    status: int
    """HTTP status of a local reply for this error (L4 connections only use the flag)."""
    cause: str
    """``upstream``, ``downstream`` or ``local``: who caused it."""
    description: str


UPSTREAM_CONNECT_FAILURE = ErrorKind("UF", 503, "upstream", "upstream connection failure (refused, unreachable or connect timeout)")
UPSTREAM_CONNECTION_TERMINATION = ErrorKind("UC", 503, "upstream", "upstream connection reset or closed mid-exchange")
DOWNSTREAM_CONNECTION_TERMINATION = ErrorKind("DC", 0, "downstream", "downstream connection reset")
IDLE_TIMEOUT = ErrorKind("SI", 408, "local", "no bytes in either direction for the idle timeout")
NO_ROUTE = ErrorKind("NR", 404, "local", "no route: refused (a redirect loop to the proxy itself, or not redirected)")
UPSTREAM_PROTOCOL_ERROR = ErrorKind("UPE", 502, "upstream", "upstream sent a malformed response")
UPSTREAM_REQUEST_TIMEOUT = ErrorKind("UT", 504, "upstream", "no complete response within the route timeout")
UPSTREAM_RESET = ErrorKind("UR", 503, "upstream", "upstream reset the stream before responding")
DOWNSTREAM_PROTOCOL_ERROR = ErrorKind("DPE", 400, "downstream", "the client sent a malformed or over-limit request")
REQUEST_HEADERS_TIMEOUT = ErrorKind("DT", 408, "downstream", "the client did not send a complete request head in time")
RBAC_DENIED = ErrorKind("RBAC", 403, "local", "denied by an authorization policy")
INTERNAL_ERROR = ErrorKind("IE", 500, "local", "a bug in meshproxy (logged with a traceback)")

ALL = (UPSTREAM_CONNECT_FAILURE, UPSTREAM_CONNECTION_TERMINATION, DOWNSTREAM_CONNECTION_TERMINATION,
       IDLE_TIMEOUT, NO_ROUTE, UPSTREAM_PROTOCOL_ERROR, UPSTREAM_REQUEST_TIMEOUT, UPSTREAM_RESET,
       DOWNSTREAM_PROTOCOL_ERROR, REQUEST_HEADERS_TIMEOUT, INTERNAL_ERROR, RBAC_DENIED)
BY_FLAG = {k.flag: k for k in ALL}


class StartupError(Exception):
    """Something the operator must fix before the proxy can start (the message says what);
    ``cli.py`` prints it and exits 1 without a traceback."""
