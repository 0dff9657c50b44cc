"""A webhook receiver for the tests: an http.server on 127.0.0.1 (plain or TLS) that keeps
every request.

`answer(request)` decides each answer: a status, headers, and seconds to wait first (a
receiver that hangs). Every request is kept with its headers, body and arrival time.
"""

from __future__ import annotations

import json
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Received:
    path: str
    headers: dict[str, str]  # lower-case names
    body: bytes
    at: float  # time.time() on arrival
    number: int  # 0 for the first request

    @property
    def event(self) -> dict[str, Any]:
        return json.loads(self.body)


@dataclass
class Answer:
    status: int = 200
    headers: dict[str, str] | None = None
    wait: float = 0.0


def always(status: int) -> Callable[[Received], Answer]:
    return lambda _: Answer(status)


class Receiver:
    def __init__(self, answer: Callable[[Received], Answer] = always(204),
                 tls: ssl.SSLContext | None = None, host: str = "127.0.0.1"):
        self.answer = answer
        self.received: list[Received] = []
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with receiver._lock:
                    request = Received(self.path, {k.lower(): v for k, v in self.headers.items()},
                                       body, time.time(), len(receiver.received))
                    receiver.received.append(request)
                answer = receiver.answer(request)
                if answer.wait:
                    time.sleep(answer.wait)
                try:
                    self.send_response(answer.status)
                    for name, value in (answer.headers or {}).items():
                        self.send_header(name, value)
                    # 204 and 304 have no body: bytes after one would be read as the start
                    # of the next answer on the kept-alive connection.
                    body = b"" if answer.status in (204, 304) else b"ok"
                    if body:
                        self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                except OSError:
                    pass  # the relay gave up waiting and closed the connection

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        if tls is not None:
            self.server.socket = tls.wrap_socket(self.server.socket, server_side=True)
        self.port = self.server.server_address[1]
        self.url = f"{'https' if tls else 'http'}://{host}:{self.port}/hooks"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def events(self) -> list[Received]:
        with self._lock:
            return list(self.received)

    def ids(self) -> list[str]:
        return [r.headers["webhook-id"] for r in self.events()]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def __enter__(self) -> Receiver:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
