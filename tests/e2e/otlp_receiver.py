"""A small OTLP/HTTP trace receiver for the tests: what a collector would be sent.

An http.server on 127.0.0.1 (a free port) that accepts POST /v1/traces,
decodes each ExportTraceServiceRequest with opentelemetry-proto and keeps its
spans, flattened to `ReceivedSpan`s. `refuse()` makes it answer 503 (a
collector in trouble); `hold()` keeps every export waiting for an answer
until `release()` (a collector that stalls). Used as a context manager it
stops itself.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

SERVER_KIND = Span.SpanKind.SPAN_KIND_SERVER
CLIENT_KIND = Span.SpanKind.SPAN_KIND_CLIENT
STATUS_ERROR = Status.StatusCode.STATUS_CODE_ERROR


def _value(value: AnyValue) -> Any:
    kind = value.WhichOneof("value")
    if kind == "array_value":
        return [_value(v) for v in value.array_value.values]
    if kind == "kvlist_value":
        return {kv.key: _value(kv.value) for kv in value.kvlist_value.values}
    return getattr(value, kind) if kind else None


def _attributes(pairs) -> dict[str, Any]:
    return {kv.key: _value(kv.value) for kv in pairs}


@dataclass
class ReceivedSpan:
    trace_id: str
    span_id: str
    parent_span_id: str
    name: str
    kind: int
    attributes: dict[str, Any]
    status_code: int
    events: list[tuple[str, dict[str, Any]]]
    resource: dict[str, Any] = field(repr=False)
    trace_state: str = ""

    def texts(self) -> list[str]:
        """Every string this span carries (attributes, events, resource), for leak checks."""
        found = [self.name, self.trace_state]
        for attributes in (self.attributes, self.resource,
                           *(attrs for _, attrs in self.events)):
            found.extend(str(v) for v in attributes.values())
        return found


class OtlpReceiver:
    def __init__(self):
        self.spans: list[ReceivedSpan] = []
        self.requests = 0
        self._lock = threading.Lock()
        self._refusing = False
        self._gate = threading.Event()
        self._gate.set()
        self.held = 0  # exports waiting at the gate now
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                # SayPI's exporter sends uncompressed (app/ops/tracing.py)
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if self.path != "/v1/traces" or receiver._refusing:
                    self.send_response(404 if self.path != "/v1/traces" else 503)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                receiver._wait_at_gate()
                receiver._receive(body)
                answer = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *args) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def _receive(self, body: bytes) -> None:
        request = ExportTraceServiceRequest()
        request.ParseFromString(body)
        received = []
        for resource_spans in request.resource_spans:
            resource = _attributes(resource_spans.resource.attributes)
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    received.append(ReceivedSpan(
                        span.trace_id.hex(), span.span_id.hex(), span.parent_span_id.hex(),
                        span.name, span.kind, _attributes(span.attributes), span.status.code,
                        [(e.name, _attributes(e.attributes)) for e in span.events], resource,
                        span.trace_state))
        with self._lock:
            self.requests += 1
            self.spans.extend(received)

    def _wait_at_gate(self) -> None:
        if self._gate.is_set():
            return
        with self._lock:
            self.held += 1
        self._gate.wait()
        with self._lock:
            self.held -= 1

    def hold(self) -> None:
        self._gate.clear()

    def release(self) -> None:
        self._gate.set()

    def refuse(self) -> None:
        """Answer every export from now on with 503."""
        self._refusing = True

    def received(self) -> list[ReceivedSpan]:
        with self._lock:
            return list(self.spans)

    def trace(self, trace_id: str) -> list[ReceivedSpan]:
        return [s for s in self.received() if s.trace_id == trace_id]

    def wait_for(self, predicate, seconds: float = 20.0) -> list[ReceivedSpan]:
        """The received spans once predicate(spans) holds; raises AssertionError after
        `seconds` (an upper bound for a test that would otherwise hang, not a timing)."""
        deadline = time.monotonic() + seconds
        while True:
            spans = self.received()
            if predicate(spans):
                return spans
            if time.monotonic() > deadline:
                raise AssertionError(f"spans never matched; received {len(spans)}: "
                                     f"{[(s.name, s.trace_id) for s in spans]}")
            time.sleep(0.05)

    def close(self) -> None:
        self._gate.set()
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> OtlpReceiver:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
