"""Fixtures shared by the unit tests."""

from __future__ import annotations

import gc
import tracemalloc

import pytest


@pytest.fixture
def memory_growth():
    """``memory_growth(cases, rounds)``: bytes still allocated (tracemalloc, after a
    collection) once every callable in ``cases`` ran ``rounds`` times, after one warm-up
    run each. A reference leaked per call keeps thousands of objects alive and shows."""

    def measure(cases, rounds: int) -> int:
        for case in cases:
            case()
        gc.collect()
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            for _ in range(rounds):
                for case in cases:
                    case()
            gc.collect()
            return tracemalloc.get_traced_memory()[0] - before
        finally:
            tracemalloc.stop()

    return measure
