"""The filter chain: verdict order, STOP/resume, response filters in reverse,
per-request factories vs shared instances, and the HeaderHygiene filter."""

from __future__ import annotations

import pytest

from meshproxy import errors
from meshproxy.codec.events import RequestHead, ResponseHead
from meshproxy.http import headers as h
from meshproxy.http.chain import FilterChain, FilterContext, HeaderHygiene, LocalReply, Verdict
from meshproxy.net.addrs import Peer


class Rec:
    """Records calls into a shared log and answers a fixed verdict."""

    def __init__(self, name, log, verdict=Verdict.CONTINUE, reply=None):
        self.name, self.log, self.verdict, self.reply = name, log, verdict, reply

    def on_request_head(self, ctx, head):
        self.log.append(("req", self.name))
        if self.reply is not None:
            ctx.local_reply = self.reply
        return self.verdict

    def on_response_head(self, ctx, head):
        self.log.append(("resp", self.name))


class RequestOnly:
    def __init__(self, log):
        self.log = log

    def on_request_head(self, ctx, head):
        self.log.append(("req", "only"))
        return Verdict.CONTINUE


def ctx(direction="inbound", **kw):
    return FilterContext(direction, Peer("10.0.0.9", 4321), **kw)


def head(headers=()):
    return RequestHead(1, b"GET", b"/", b"svc", list(headers))


DENY = LocalReply(403, "denied", "RBAC")


def test_all_continue_runs_all_then_responses_in_reverse():
    log = []
    chain = FilterChain([Rec("a", log), Rec("b", log), RequestOnly(log), Rec("c", log)])
    c = ctx()
    assert chain.run_request(c, head()) is Verdict.CONTINUE
    chain.run_response(c, ResponseHead(1, 200, []))
    assert log == [("req", "a"), ("req", "b"), ("req", "only"), ("req", "c"),
                   ("resp", "c"), ("resp", "b"), ("resp", "a")]


def test_first_respond_stops_later_filters():
    log = []
    chain = FilterChain([Rec("a", log), Rec("deny", log, Verdict.RESPOND, DENY), Rec("c", log)])
    c = ctx()
    assert chain.run_request(c, head()) is Verdict.RESPOND
    assert c.local_reply == DENY
    chain.run_response(c, ResponseHead(1, 403, []))
    # "c" never saw the request, so it does not see the response either
    assert log == [("req", "a"), ("req", "deny"), ("resp", "deny"), ("resp", "a")]


def test_respond_without_reply_is_a_bug():
    chain = FilterChain([Rec("bad", [], Verdict.RESPOND)])
    with pytest.raises(RuntimeError, match="local_reply"):
        chain.run_request(ctx(), head())


def test_non_verdict_is_a_bug():
    class Forgot:
        def on_request_head(self, ctx, head):
            pass

    with pytest.raises(TypeError, match="Verdict"):
        FilterChain([Forgot()]).run_request(ctx(), head())


def test_stop_then_resume_continues_after_the_stopping_filter():
    log = []
    chain = FilterChain([Rec("a", log), Rec("wait", log, Verdict.STOP), Rec("c", log)])
    c = ctx()
    assert chain.run_request(c, head()) is Verdict.STOP
    assert log == [("req", "a"), ("req", "wait")]
    assert chain.resume(c, head()) is Verdict.CONTINUE
    assert log[-1] == ("req", "c")
    with pytest.raises(RuntimeError):
        chain.resume(c, head())


def test_stop_then_resume_with_a_reply_responds():
    log = []
    waiting = Rec("wait", log, Verdict.STOP)
    chain = FilterChain([waiting, Rec("c", log)])
    c = ctx()
    assert chain.run_request(c, head()) is Verdict.STOP
    c.local_reply = DENY  # the async check came back negative
    assert chain.resume(c, head()) is Verdict.RESPOND
    assert log == [("req", "wait")]


def test_factories_make_one_filter_per_request_shared_instances_are_reused():
    made = []

    class PerRequest:
        def __init__(self):
            made.append(self)

        def on_request_head(self, ctx, head):
            return Verdict.CONTINUE

    shared = RequestOnly([])
    chain = FilterChain([shared, PerRequest, lambda: PerRequest()])
    c1, c2 = ctx(), ctx()
    chain.run_request(c1, head())
    chain.run_request(c2, head())
    assert len(made) == 4
    assert c1.filters[0] is c2.filters[0] is shared
    assert c1.filters[1] is not c2.filters[1]


def test_all_shared_chain_allocates_nothing_per_request():
    chain = FilterChain([HeaderHygiene("inbound"), RequestOnly([])])
    assert chain.instantiate() is chain.instantiate()
    assert len(chain) == 2


def test_rejects_non_filters():
    with pytest.raises(TypeError):
        FilterChain([42])


def test_empty_chain_continues():
    c = ctx()
    assert FilterChain().run_request(c, head()) is Verdict.CONTINUE
    FilterChain().run_response(c, ResponseHead(1, 200, []))


def test_verdict_members_document_what_the_caller_does():
    for v in Verdict:
        assert v.__doc__ and "server" in v.__doc__
    assert Verdict("stop") is Verdict.STOP


def test_local_reply_of_error_kind_and_render():
    reply = LocalReply.of(errors.UPSTREAM_CONNECT_FAILURE, "upstream connect error")
    assert (reply.status, reply.flag) == (503, "UF")
    rhead, body = reply.render(7, http_version="1.1", request_id=b"r")
    assert rhead.status == 503 and h.get_header(rhead.headers, b"x-meshproxy-response-flags") == b"UF"
    assert body == b"meshproxy: Service Unavailable: upstream connect error (UF)\n"


# === HeaderHygiene ===

def test_header_hygiene_inbound_request_and_response():
    chain = FilterChain([HeaderHygiene("inbound", "https")])
    c = ctx()
    rq = head([(b"connection", b"keep-alive"), (b"x-forwarded-client-cert", b"forged"),
               (b"x-forwarded-proto", b"http")])
    assert chain.run_request(c, rq) is Verdict.CONTINUE
    assert c.request_id and h.get_header(rq.headers, b"x-request-id") == c.request_id
    assert h.get_header(rq.headers, b"x-forwarded-for") == b"10.0.0.9"
    assert h.get_header(rq.headers, b"x-forwarded-proto") == b"https"
    assert h.get_header(rq.headers, b"x-forwarded-client-cert") is None
    rs = ResponseHead(1, 200, [(b"keep-alive", b"5"), (b"x-meshproxy-response-flags", b"UF"), (b"a", b"1")])
    chain.run_response(c, rs)
    assert rs.headers == [(b"a", b"1")]


def test_header_hygiene_keeps_flags_on_local_replies_and_uses_ctx_scheme():
    log = []
    chain = FilterChain([HeaderHygiene("outbound"), Rec("deny", log, Verdict.RESPOND, DENY)])
    c = ctx("outbound", scheme="https", request_id=b"given")
    rq = head()
    assert chain.run_request(c, rq) is Verdict.RESPOND
    assert c.request_id == b"given"
    assert h.get_header(rq.headers, b"x-forwarded-proto") == b"https"
    rs, _ = c.local_reply.render(1, http_version="1.1", request_id=c.request_id)
    chain.run_response(c, rs)
    assert h.get_header(rs.headers, b"x-meshproxy-response-flags") == b"RBAC"
    assert h.get_header(rs.headers, b"x-request-id") == b"given"


def test_header_hygiene_direction():
    from meshproxy.net.addrs import Direction

    assert HeaderHygiene(Direction.INBOUND).direction == "inbound"
    with pytest.raises(ValueError):
        HeaderHygiene("sideways")


def test_express_lane_view_of_a_chain():
    """What the express lane may run of a chain: hygiene and one authorization filter; any
    other filter (or factory) sends that direction's requests to the general path."""
    from meshproxy.authz.engine import Authorizer
    from meshproxy.authz.filter import AuthzFilter
    from meshproxy.http.context import _lane_view

    authz = AuthzFilter(Authorizer([]))
    assert _lane_view(FilterChain([HeaderHygiene("inbound")])) == (True, None)
    assert _lane_view(FilterChain([HeaderHygiene("inbound"), authz])) == (True, authz)

    class Other:
        def on_request_head(self, ctx, head):
            return Verdict.CONTINUE

    assert _lane_view(FilterChain([HeaderHygiene("inbound"), authz, Other()])) == (False, None)
    assert _lane_view(FilterChain([HeaderHygiene("inbound"), Other])) == (False, None)
