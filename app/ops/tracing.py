"""Distributed tracing with the OpenTelemetry SDK, exported over OTLP/HTTP.

Off unless OTEL_EXPORTER_OTLP_ENDPOINT is set (then callers pay one `is None` branch). On,
each worker has its own `Tracing`, never OpenTelemetry's global provider, and the spans are
hand-made rather than the contrib instrumentations. See docs/observability.md.
"""

from __future__ import annotations

import contextlib
import threading
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from contextvars import Token
from typing import Any

import requests
from opentelemetry.context import Context, attach, detach
from opentelemetry.exporter.otlp.proto.http import Compression
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.metrics import NoOpMeterProvider
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanLimits, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace import sampling as samplers
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.trace import (
    INVALID_SPAN,
    NonRecordingSpan,
    Span,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    TraceFlags,
    TraceState,
    get_current_span,
    set_span_in_context,
)

from app.domain.errors import DomainError
from app.http.errors import ApiError
from app.http.request_state import STANDARD_METHODS
from app.http.trace_context import format_traceparent, parse_traceparent, parse_tracestate

TRACES_PATH = "/v1/traces"  # appended to OTEL_EXPORTER_OTLP_ENDPOINT, as the spec says
MAX_HEADER_ATTRIBUTE_CHARS = 512  # user agents and paths are the client's text
# Machine traffic at fixed intervals (probes, scrapes): not traced, so traces are requests.
UNTRACED_PATHS = ("/health/", "/metrics")


def build_tracing(config, metrics, scrub: Callable[[str], str], version: str
                  ) -> Tracing | None:
    """This worker's tracing, or None when OTEL_EXPORTER_OTLP_ENDPOINT is unset (off)."""
    if not config.otel_exporter_otlp_endpoint:
        return None
    session = requests.Session()
    session.trust_env = False  # no proxy or netrc from the environment: the endpoint is exact
    meters = NoOpMeterProvider()
    inner = OTLPSpanExporter(
        endpoint=config.otel_exporter_otlp_endpoint + TRACES_PATH,
        headers=dict(config.otel_exporter_otlp_headers),
        timeout=config.otel_bsp_export_timeout / 1000,
        compression=Compression.NoCompression,
        session=session,
        meter_provider=meters,
    )
    queue = config.otel_bsp_max_queue_size
    bounded = BoundedExport(queue, metrics)
    exporter = CountingExporter(inner, metrics, bounded.taken)
    bounded.batch = BatchSpanProcessor(
        exporter, max_queue_size=queue,
        schedule_delay_millis=config.otel_bsp_schedule_delay,
        max_export_batch_size=config.otel_bsp_max_export_batch_size,
        export_timeout_millis=config.otel_bsp_export_timeout, meter_provider=meters)
    provider = TracerProvider(
        sampler=sampler_for(config.otel_traces_sampler, config.otel_traces_sampler_arg),
        resource=resource_for(config.otel_service_name, config.otel_resource_attributes,
                              version),
        shutdown_on_exit=False,  # Deps.close shuts it down; no atexit hook in the worker
        span_limits=SpanLimits(
            max_attributes=64, max_events=16, max_links=8, max_span_attributes=64,
            max_event_attributes=16, max_link_attributes=16, max_attribute_length=4096,
            max_span_attribute_length=4096),
        meter_provider=meters,
    )
    provider.add_span_processor(bounded)
    flush_seconds = max(1.0, min(5.0, config.graceful_timeout / 4))
    return Tracing(provider, exporter, scrub, version, flush_seconds)


def sampler_for(name: str, ratio: float) -> samplers.Sampler:
    """The sampler OTEL_TRACES_SAMPLER names, with OTEL_TRACES_SAMPLER_ARG as its ratio."""
    base: samplers.Sampler | None = {
        "always_on": samplers.ALWAYS_ON, "always_off": samplers.ALWAYS_OFF}.get(
        name.removeprefix("parentbased_"))
    if base is None:
        base = samplers.TraceIdRatioBased(ratio)
    return samplers.ParentBased(base) if name.startswith("parentbased_") else base


def resource_for(service_name: str, attributes: Sequence[tuple[str, str]], version: str
                 ) -> Resource:
    """The resource every span carries; OTEL_SERVICE_NAME wins over a service.name in
    OTEL_RESOURCE_ATTRIBUTES. Built directly: Resource.create() would read the environment."""
    values: dict[str, Any] = {"service.version": version, "telemetry.sdk.language": "python",
                              "telemetry.sdk.name": "opentelemetry"}
    values.update(attributes)
    values["service.name"] = service_name
    return Resource(values)


class Tracing:
    """One worker's tracer, and the spans SayPI makes with it."""

    def __init__(self, provider: TracerProvider, exporter: CountingExporter,
                 scrub: Callable[[str], str], version: str, flush_seconds: float):
        self.provider = provider
        self.tracer = provider.get_tracer("saypi", version)
        self.exporter = exporter
        self.scrub = scrub
        self.flush_seconds = flush_seconds
        self._root = Context()  # the parent of a request without a valid traceparent
        self._untraced = contextlib.nullcontext(INVALID_SPAN)

    # --- the server span --------------------------------------------------------------
    def start_request(self, environ: Mapping[str, Any], client_addr: str
                      ) -> RequestSpan | None:
        """Start the request's server span (a child of the caller's, when its traceparent
        is valid) and make it current on this thread until `RequestSpan.end`; None for
        health probes and metric scrapes, which are not traced."""
        path = environ.get("PATH_INFO", "")
        if path.startswith(UNTRACED_PATHS):
            return None
        parent = parse_traceparent(environ.get("HTTP_TRACEPARENT"))
        if parent is None:
            context = self._root
        else:
            members = parse_tracestate(environ.get("HTTP_TRACESTATE"))
            context = set_span_in_context(NonRecordingSpan(SpanContext(
                parent.trace_id, parent.span_id, is_remote=True,
                trace_flags=TraceFlags(parent.flags),
                trace_state=TraceState(members) if members else None)), self._root)
        method = environ.get("REQUEST_METHOD", "")
        attributes = {"url.path": self._client_text(path),
                      "url.scheme": environ.get("wsgi.url_scheme", "http"),
                      "client.address": client_addr}
        if method in STANDARD_METHODS:
            attributes["http.request.method"] = name = method
        else:
            name = "HTTP"
            attributes["http.request.method"] = "_OTHER"
            attributes["http.request.method_original"] = self._client_text(method)
        agent = environ.get("HTTP_USER_AGENT")
        if agent:
            attributes["user_agent.original"] = self._client_text(agent)
        protocol = environ.get("SERVER_PROTOCOL", "")
        if protocol.startswith("HTTP/"):
            attributes["network.protocol.version"] = protocol[5:]
        span = self.tracer.start_span(name, context, SpanKind.SERVER, attributes)
        ids = span.get_span_context()
        return RequestSpan(span, name, attach(set_span_in_context(span, context)),
                           format_traceparent(ids.trace_id, ids.span_id, ids.trace_flags))

    def _client_text(self, text: str) -> str:
        return self.scrub(text[:MAX_HEADER_ATTRIBUTE_CHARS])

    def record_exception(self, error: BaseException) -> None:
        """An exception event on the current span (a 5xx's cause), redacted as logs are."""
        span = get_current_span()
        if span.is_recording():
            stack = "".join(traceback.format_exception(type(error), error, error.__traceback__))
            span.record_exception(error, attributes={
                "exception.message": self.scrub(str(error)),
                "exception.stacktrace": self.scrub(stack)})

    # --- children ---------------------------------------------------------------------------
    def span(self, name: str, attributes: Mapping[str, Any] | None = None,
             kind: SpanKind = SpanKind.INTERNAL) -> contextlib.AbstractContextManager[Span]:
        """A child of the current span for one `with` block, when the current span is being
        recorded; otherwise nothing is made (a no-op span is yielded).

        An exception marks the span failed without an exception event (its message may hold
        values); a refusal does not. See docs/observability.md ("Tracing").
        """
        if not get_current_span().is_recording():
            return self._untraced
        return ChildSpan(self.tracer, name, attributes, kind)

    def recording(self) -> bool:
        """Whether the current span is being recorded (children would be kept)."""
        return get_current_span().is_recording()

    # --- shutdown ---------------------------------------------------------------------------
    def close(self) -> None:
        """Export the spans still queued, for at most flush_seconds; what is left after that
        is dropped and counted (reason "shutdown")."""
        self.exporter.drop_after(time.monotonic() + self.flush_seconds)
        closer = threading.Thread(target=self.provider.shutdown, name="trace-flush",
                                  daemon=True)
        closer.start()
        closer.join(self.flush_seconds)
        if closer.is_alive():  # an export still retrying: interrupt it, send nothing more
            self.exporter.shutdown()
            closer.join(1.0)


class RequestSpan:
    """A request's server span while it is current; `end` reports the outcome and ends it."""

    __slots__ = ("name", "span", "token", "traceparent")

    def __init__(self, span: Span, name: str, token: Token[Context], traceparent: str):
        self.span = span
        self.name = name
        self.token = token
        self.traceparent = traceparent  # the response's header: version-trace-span-flags

    @property
    def trace_id(self) -> str:
        return self.traceparent[3:35]

    @property
    def span_id(self) -> str:
        return self.traceparent[36:52]

    def end(self, route: str | None, status: int) -> None:
        """Name the span by its route template (when one matched), record the status, end it,
        and make the span no longer current. 5xx answers mark it failed; 4xx do not."""
        span = self.span
        try:
            if span.is_recording():
                attributes: dict[str, Any] = {"http.response.status_code": status}
                if route is not None:
                    attributes["http.route"] = route
                    span.update_name(f"{self.name} {route}")
                if status >= 500:
                    attributes["error.type"] = str(status)
                    span.set_status(Status(StatusCode.ERROR))
                span.set_attributes(attributes)
            span.end()
        finally:
            detach(self.token)


class ChildSpan:
    """One child span, current for the length of a `with` block."""

    __slots__ = ("attributes", "kind", "name", "span", "token", "tracer")

    def __init__(self, tracer, name: str, attributes: Mapping[str, Any] | None,
                 kind: SpanKind):
        self.tracer = tracer
        self.name = name
        self.attributes = attributes
        self.kind = kind

    def __enter__(self) -> Span:
        self.span = span = self.tracer.start_span(self.name, kind=self.kind,
                                                  attributes=self.attributes)
        self.token = attach(set_span_in_context(span))
        return span

    def __exit__(self, exc_type, exc, tb) -> None:
        detach(self.token)
        span = self.span
        if exc is not None and not is_refusal(exc):
            sqlstate = getattr(exc, "sqlstate", None)
            if sqlstate:
                span.set_attribute("db.response.status_code", sqlstate)
            span.set_attribute("error.type", sqlstate or type(exc).__qualname__)
            span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
        span.end()


def is_refusal(error: BaseException) -> bool:
    """A user error the request answers with a 4xx: not a failure of a span's work."""
    return isinstance(error, DomainError) or (isinstance(error, ApiError) and error.status < 500)


# --- export -------------------------------------------------------------------------------------
class BoundedExport(SpanProcessor):
    """The SDK's BatchSpanProcessor behind a bound that counts what it refuses.

    The batch processor's own queue silently replaces its oldest span when
    full; here a sampled span that would exceed `limit` spans not yet taken
    by the exporter is dropped and counted (reason "queue_full") instead,
    so the batch processor's queue (of the same size) never overflows.
    """

    def __init__(self, limit: int, metrics):
        self.limit = limit
        self.batch: BatchSpanProcessor  # set next: the batch's exporter reports to `taken`
        self._dropped = metrics.spans_dropped.labels("queue_full")
        self._pending = 0
        self._lock = threading.Lock()

    def taken(self, count: int) -> None:
        """The exporter took `count` spans off the queue."""
        with self._lock:
            self._pending = max(0, self._pending - count)

    def on_end(self, span: ReadableSpan) -> None:
        if not span.context.trace_flags.sampled:
            return
        with self._lock:
            full = self._pending >= self.limit
            if not full:
                self._pending += 1
        if full:
            self._dropped.inc()
            return
        self.batch.on_end(span)

    def shutdown(self) -> None:
        self.batch.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self.batch.force_flush(timeout_millis)


class CountingExporter(SpanExporter):
    """The OTLP exporter, counting spans sent and spans lost, and stoppable at exit."""

    def __init__(self, inner: OTLPSpanExporter, metrics, taken: Callable[[int], None]):
        self.inner = inner
        self._taken = taken
        self._exported = metrics.spans_exported
        self._failed = metrics.spans_dropped.labels("export_failed")
        self._abandoned = metrics.spans_dropped.labels("shutdown")
        self._drop_after: float | None = None
        self._lock = threading.Lock()
        self._closed = False

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        count = len(spans)
        self._taken(count)
        deadline = self._drop_after
        if self._closed or (deadline is not None and time.monotonic() >= deadline):
            self._abandoned.inc(count)
            return SpanExportResult.FAILURE
        result = self.inner.export(spans)
        if result is SpanExportResult.SUCCESS:
            self._exported.inc(count)
        else:
            self._failed.inc(count)
        return result

    def drop_after(self, deadline: float) -> None:
        """Exports starting after `deadline` (time.monotonic) send nothing."""
        self._drop_after = deadline

    def shutdown(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self.inner.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True
