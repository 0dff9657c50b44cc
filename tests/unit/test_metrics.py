"""Request metrics tallied per thread equal what prometheus_client's own observe() gives."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry, Histogram

from app.ops.metrics import LATENCY_BUCKETS, Metrics
from tests.conftest import run_threads

# Below, on and above bucket bounds, and past the last one (+Inf).
DURATIONS = (0.0004, 0.001, 0.0011, 0.0049, 0.075, 0.3, 2.5, 11.0, 0.0)


def _samples(metric) -> dict:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in metric.collect() for s in family.samples
            if not s.name.endswith("_created")}


def test_tallied_requests_equal_direct_observations():
    metrics = Metrics(None, "test")
    reference = Histogram("http_request_duration_seconds", "reference", ["method", "route"],
                          buckets=LATENCY_BUCKETS, registry=CollectorRegistry())

    def serve(offset: int) -> None:
        for i, seconds in enumerate(DURATIONS):
            status = 200 if (i + offset) % 3 else 404
            metrics.observe_request("GET", "/conversations/<conversation_id>", status, seconds)
            metrics.observe_request("BREW", "unmatched", 405, seconds)

    run_threads(serve, [(n,) for n in range(4)])
    for _ in range(4):
        for seconds in DURATIONS:
            reference.labels("GET", "/conversations/<conversation_id>").observe(seconds)
            reference.labels("other", "unmatched").observe(seconds)

    assert _samples(metrics.duration) == {}  # nothing reaches the series before a flush
    metrics.flush_requests()
    metrics.flush_requests()  # a second flush adds nothing
    # Equal counts in every bucket; sums equal up to the order floats were added in.
    assert _samples(metrics.duration) == pytest.approx(_samples(reference))
    counts = _samples(metrics.requests)
    assert sum(counts.values()) == 2 * 4 * len(DURATIONS)
    assert counts[("http_requests_total", (("method", "other"), ("route", "unmatched"),
                                           ("status", "405")))] == 4 * len(DURATIONS)

    metrics.observe_request("GET", "/conversations/<conversation_id>", 200, 0.02)
    reference.labels("GET", "/conversations/<conversation_id>").observe(0.02)
    metrics.flush_requests()
    assert _samples(metrics.duration) == pytest.approx(_samples(reference))
