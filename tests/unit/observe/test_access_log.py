"""Access log: one JSON line per request, Istio's keys, batched writes."""

import asyncio
import json

from meshproxy.codec.events import RequestHead
from meshproxy.config.routing import AccessLog
from meshproxy.observe.access_log import FIELDS, AccessLogger, entry_for, make_access_log

ISTIO_KEYS = {
    "start_time", "method", "path", "protocol", "response_code", "response_flags", "response_code_details",
    "bytes_received", "bytes_sent", "duration", "upstream_service_time", "x_forwarded_for", "user_agent",
    "request_id", "authority", "upstream_host", "upstream_cluster", "route_name", "downstream_remote_address",
    "downstream_local_address", "requested_server_name", "traceparent", "trace_id",
}
TP = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def full_entry(**over):
    e = {
        "start_time": 1714564800.1234,
        "method": "GET",
        "path": "/api?x=1",
        "protocol": "HTTP/1.1",
        "response_code": 200,
        "response_flags": "-",
        "response_code_details": "via_upstream",
        "bytes_received": 12,
        "bytes_sent": 345,
        "duration": 7.9,
        "upstream_service_time": 5,
        "x_forwarded_for": "1.2.3.4",
        "user_agent": "curl/8.5",
        "request_id": "r-1",
        "authority": "reviews:9080",
        "upstream_host": "10.0.0.9:9080",
        "upstream_cluster": "reviews",
        "route_name": "default",
        "downstream_remote_address": "10.0.0.5:43210",
        "downstream_local_address": "10.0.0.7:9080",
        "requested_server_name": None,
        "traceparent": TP,
    }
    e.update(over)
    return e


def read_lines(path):
    with open(path) as f:
        return [json.loads(line) for line in f.read().splitlines()]


def test_disabled_is_none(tmp_path):
    assert make_access_log(AccessLog()) is None
    logger = make_access_log(AccessLog(enabled=True, path=str(tmp_path / "a.log")))
    assert isinstance(logger, AccessLogger)
    logger.close()


def test_one_json_line_per_entry_with_the_documented_keys(tmp_path):
    path = tmp_path / "access.log"
    logger = AccessLogger(str(path))
    logger.log(full_entry())
    logger.log({"method": b"POST", "path": b"/\xff", "response_code": 503, "response_flags": "UF,URX"})
    logger.close()
    first, second = read_lines(path)
    assert list(first) == list(FIELDS) and ISTIO_KEYS <= set(FIELDS)
    assert first["start_time"] == "2024-05-01T12:00:00.123Z"
    assert first["duration"] == 7 and first["upstream_service_time"] == 5
    assert first["response_code"] == 200 and first["bytes_sent"] == 345
    assert first["trace_id"] == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert first["requested_server_name"] is None
    # missing values are null, except response_flags which is "-" when none
    assert second["method"] == "POST" and second["path"] == "/\\xff"
    assert second["response_flags"] == "UF,URX"
    assert second["start_time"] is None and second["authority"] is None and second["trace_id"] is None
    assert sum(v is not None for v in second.values()) == 4


def test_response_flags_default_and_extra_keys(tmp_path):
    path = tmp_path / "a.log"
    logger = AccessLogger(str(path))
    logger.log({"response_code": 200, "response_flags": None, "custom": b"x"})
    logger.log({"response_code": 200})
    logger.close()
    a, b = read_lines(path)
    assert a["response_flags"] == b["response_flags"] == "-"
    assert list(a)[-1] == "custom" and a["custom"] == "x"
    assert "custom" not in b


def test_appends_to_an_existing_file(tmp_path):
    path = tmp_path / "a.log"
    path.write_text('{"old":1}\n')
    logger = AccessLogger(str(path))
    logger.log(full_entry())
    logger.close()
    assert len(read_lines(path)) == 2


def test_stdout(capsys):
    logger = make_access_log(AccessLog(enabled=True, path="-"))
    logger.log(full_entry(response_code=404))  # no running loop: written at once
    out = capsys.readouterr().out
    assert out.endswith("\n") and out.count("\n") == 1
    assert json.loads(out)["response_code"] == 404
    logger.close()


async def test_batches_in_the_loop_and_flushes_on_close(tmp_path):
    path = tmp_path / "a.log"
    logger = AccessLogger(str(path), flush_interval=60)
    for i in range(50):
        logger.log(full_entry(response_code=200 + i))
    assert path.read_text() == ""  # buffered, nothing written yet
    logger.close()
    lines = read_lines(path)
    assert [x["response_code"] for x in lines] == list(range(200, 250))
    logger.log(full_entry())  # after close: dropped, not raised
    assert logger.dropped == 1


async def test_timer_flushes_within_the_interval(tmp_path, capsys):
    path = tmp_path / "a.log"
    logger = AccessLogger(str(path), flush_interval=0.01)
    logger.log(full_entry())
    logger.log(full_entry())
    assert path.read_text() == ""
    await asyncio.sleep(0.05)
    assert len(read_lines(path)) == 2
    logger.log(full_entry())  # a new batch arms the timer again
    await asyncio.sleep(0.05)
    assert len(read_lines(path)) == 3
    logger.close()


async def test_full_buffer_flushes_at_once(tmp_path):
    path = tmp_path / "a.log"
    logger = AccessLogger(str(path), flush_interval=60, max_buffer_bytes=2000)
    for _ in range(10):
        logger.log(full_entry())
    assert 1 <= len(read_lines(path)) < 10
    logger.close()
    assert len(read_lines(path)) == 10


def test_reopen_after_rotation(tmp_path):
    path = tmp_path / "a.log"
    logger = AccessLogger(str(path))
    logger.log(full_entry())
    path.rename(tmp_path / "a.log.1")
    logger.reopen()
    logger.log(full_entry(response_code=500))
    logger.close()
    assert [x["response_code"] for x in read_lines(path)] == [500]
    assert [x["response_code"] for x in read_lines(tmp_path / "a.log.1")] == [200]


def test_write_errors_are_counted_not_raised(tmp_path):
    logger = AccessLogger(str(tmp_path / "a.log"))
    logger._file.close()  # simulate a dead file
    logger.log(full_entry())
    assert logger.dropped == 1


def test_entry_for_reads_the_request_head():
    head = RequestHead(stream_id=1, method=b"GET", target=b"/api?x=1", authority=b"reviews:9080",
                       headers=[(b"host", b"reviews:9080"), (b"user-agent", b"curl/8.5"), (b"x-request-id", b"r-1"),
                                (b"x-forwarded-for", b"1.2.3.4"), (b"x-forwarded-for", b"5.6.7.8"),
                                (b"traceparent", TP.encode())],
                       http_version="2")
    e = entry_for(head, response_code=200, duration=3)
    assert e == {"method": b"GET", "path": b"/api?x=1", "protocol": "HTTP/2", "authority": b"reviews:9080",
                 "user_agent": b"curl/8.5", "request_id": b"r-1", "x_forwarded_for": b"1.2.3.4,5.6.7.8",
                 "traceparent": TP.encode(), "response_code": 200, "duration": 3}
    line = json.loads(AccessLogger("-").encode(e))
    assert line["method"] == "GET" and line["protocol"] == "HTTP/2" and line["trace_id"] == TP[3:35]
