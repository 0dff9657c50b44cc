"""The export path in process: the SDK's batch processor and OTLP exporter, as a worker
builds them, sending to a real receiver; the bounded queue and its counts."""

from __future__ import annotations

from app.config import Config
from app.ops.metrics import Metrics
from app.ops.tracing import build_tracing
from tests.conftest import eventually
from tests.e2e.otlp_receiver import OtlpReceiver

ENVIRON = {"REQUEST_METHOD": "GET", "PATH_INFO": "/conversations/cv_0123456789abcdef",
           "SERVER_PROTOCOL": "HTTP/1.1", "wsgi.url_scheme": "http"}


def counted(metric) -> dict[str, float]:
    values = {}
    for family in metric.collect():
        for sample in family.samples:
            if sample.name.endswith("_total"):
                values[sample.labels.get("reason", "")] = sample.value
    return values


def tracing_to(receiver: OtlpReceiver, **settings: str):
    config = Config.from_env({"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
                              "OTEL_BSP_SCHEDULE_DELAY": "600000", **settings}, [])
    metrics = Metrics(None, "test")
    return build_tracing(config, metrics, lambda text: text, "test"), metrics


def one_request(tracing) -> None:
    request = tracing.start_request(ENVIRON, "127.0.0.1")
    request.end("/conversations/<conversation_id>", 200)


def test_a_full_queue_drops_and_counts_instead_of_blocking(receiver):
    tracing, metrics = tracing_to(receiver, OTEL_BSP_MAX_QUEUE_SIZE="2",
                                  OTEL_BSP_MAX_EXPORT_BATCH_SIZE="2")
    receiver.hold()  # the collector stalls on the first export
    one_request(tracing)
    one_request(tracing)  # a full batch: the exporter takes both and waits
    assert eventually(lambda: receiver.held == 1, seconds=20, every=0.01)
    for _ in range(5):  # two fit the queue again; three do not
        one_request(tracing)
    assert counted(metrics.spans_dropped)["queue_full"] == 3
    receiver.release()
    tracing.close()  # sends the two still queued
    assert len(receiver.received()) == 4
    assert counted(metrics.spans_exported)[""] == 4
    assert counted(metrics.spans_dropped) == {"queue_full": 3, "export_failed": 0,
                                              "shutdown": 0}


def test_close_exports_what_is_queued_and_failures_are_counted(receiver):
    tracing, metrics = tracing_to(receiver)
    for _ in range(3):
        one_request(tracing)
    assert receiver.received() == []  # the schedule is far off: all still queued
    tracing.close()
    assert len(receiver.received()) == 3
    assert {s.name for s in receiver.received()} == {"GET /conversations/<conversation_id>"}

    receiver.refuse()  # a collector answering 503 past the export timeout: lost, and counted
    failing, metrics = tracing_to(receiver, OTEL_BSP_EXPORT_TIMEOUT="500")
    one_request(failing)
    failing.close()
    assert counted(metrics.spans_dropped)["export_failed"] + \
        counted(metrics.spans_dropped)["shutdown"] == 1
    assert counted(metrics.spans_exported)[""] == 0


def test_probes_and_scrapes_make_no_span(receiver):
    tracing, _ = tracing_to(receiver)
    for path in ("/health/ready", "/health/live", "/metrics"):
        assert tracing.start_request({**ENVIRON, "PATH_INFO": path}, "127.0.0.1") is None
    tracing.close()
    assert receiver.received() == []
