"""The C ``Series`` of ``_ngfast`` records exactly what the Python reference
``observe/requests.Series`` records (counts, sums, every bucket, on generated
observations and on each bucket's edges), and ``RequestMetrics`` uses it."""

from __future__ import annotations

import math
import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshproxy.observe import requests as rq

if rq._fast is None:
    if os.environ.get("CI"):
        raise RuntimeError("meshproxy.codec._ngfast was not built (setup.py; needs gcc and Python headers)")
    pytest.skip("meshproxy.codec._ngfast not built here", allow_module_level=True)
CSeries = rq._fast.Series


def state(s) -> tuple:
    return (s.count, s.dur, s.dur_sum, s.req, s.req_sum, s.resp, s.resp_sum)


def edges(bounds) -> list:
    """Each bound, just below and just above it, and the far ends."""
    out = [0, -1.0]
    for b in bounds:
        out += [b, math.nextafter(b, -math.inf), math.nextafter(b, math.inf)]
    return out + [bounds[-1] * 10]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(
    st.one_of(st.floats(allow_nan=False, allow_infinity=False, min_value=-10, max_value=1e7),
              st.sampled_from(edges(rq.DURATION_BUCKETS_MS))),
    st.one_of(st.integers(0, 10**9), st.sampled_from([int(b) for b in rq.SIZE_BUCKETS])),
    st.one_of(st.integers(0, 10**9), st.sampled_from([int(b) + d for b in rq.SIZE_BUCKETS for d in (-1, 0, 1)]))),
    max_size=40))
def test_c_series_records_what_python_series_records(observations):
    a, b = CSeries(), rq.Series()
    for obs in observations:
        a.observe(*obs)
        b.observe(*obs)
    assert state(a) == state(b)


def test_edges_and_odd_values_land_where_bisect_puts_them():
    for d in edges(rq.DURATION_BUCKETS_MS) + [math.nan, math.inf, -math.inf]:
        a, b = CSeries(), rq.Series()
        a.observe(d, 0, 0)
        b.observe(d, 0, 0)
        assert a.dur == b.dur, d
    assert len(CSeries().dur) == len(rq.DURATION_BUCKETS_MS) + 1
    assert len(CSeries().req) == len(CSeries().resp) == len(rq.SIZE_BUCKETS) + 1


def test_request_metrics_use_the_c_series_and_render_them():
    m = rq.RequestMetrics()
    labels = tuple(f"l{i}" for i in range(len(rq.REQUEST_LABELS)))
    m.record(labels, 3.0, 120, 1200)
    m.record(labels, 0.2, 0, 5)
    assert type(m.series[labels]) is CSeries and rq.SeriesType is CSeries
    total, dur, req, resp = m.collect()
    assert total.samples[0].value == 2
    buckets = {s.labels["le"]: s.value for s in dur.samples if s.name.endswith("_bucket")}
    assert buckets["0.5"] == 1 and buckets["5.0"] == 2 and buckets["+Inf"] == 2
    assert [s.value for s in dur.samples if s.name.endswith("_sum")] == [3.2]


def test_bad_arguments_are_errors():
    s = CSeries()
    with pytest.raises(TypeError):
        s.observe(1.0, 2)
    with pytest.raises(TypeError):
        s.observe("1", 2, 3)
    with pytest.raises(TypeError):
        CSeries(1)
    assert s.count == 0  # nothing half-recorded


def test_observing_leaves_nothing_behind(memory_growth):
    s = CSeries()
    assert memory_growth([lambda: s.observe(1.5, 100, 2000), lambda: s.dur], 20_000) < 32 * 1024
