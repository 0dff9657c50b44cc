"""`python -m bench.otlp_sink PORT`: an OTLP/HTTP endpoint that accepts spans and discards them.

What the tracing benchmark points SayPI at: it answers every POST with 200
and an empty ExportTraceServiceResponse (zero bytes of protobuf) without
decoding anything, so a row's figures are SayPI's cost of making and
exporting spans, not a collector's. GET /ready answers 200, for the
benchmark's readiness check. Runs until SIGTERM.
"""

from __future__ import annotations

import signal
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Sink(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the exporter's session expects

    def do_POST(self) -> None:
        remaining = int(self.headers.get("Content-Length") or 0)
        while remaining > 0:
            chunk = self.rfile.read(min(remaining, 65536))
            if not chunk:
                break
            remaining -= len(chunk)
        self._answer(200, "application/x-protobuf")

    def do_GET(self) -> None:
        self._answer(200 if self.path == "/ready" else 404, "text/plain")

    def _answer(self, status: int, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args) -> None:
        pass


def _exit(signum, frame) -> None:
    raise SystemExit(0)  # unwinds serve_forever through `finally`


def main(argv: list[str]) -> int:
    server = ThreadingHTTPServer(("127.0.0.1", int(argv[0])), Sink)
    server.daemon_threads = True
    signal.signal(signal.SIGTERM, _exit)
    try:
        server.serve_forever()
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
