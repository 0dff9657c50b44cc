"""SayPI's gunicorn worker: request heads read in the main loop, health on its own lane.

gunicorn's gthread worker hands every accepted connection to a thread, which
then blocks reading the request head (for up to 5 s before the first byte,
for ever once bytes trickle in). A few hundred idle connections, or a few
dozen clients sending one header line a second, therefore hold every thread
while fresh requests queue behind them. `SayPIWorker` changes only where the
head is read:

- the main loop's selector waits for a connection to become readable and
  reads its bytes without blocking, until the blank line that ends the head;
  only then does a thread get the connection, with the head already buffered
  in gunicorn's parser, so a thread never waits on a client for a head;
- a head not complete `header_timeout` seconds after the connection was
  accepted (or after a kept-alive connection's next request began) is cut
  off: the connection is closed, as HAProxy's `timeout http-request` would;
- a head larger than `max_header_bytes` is answered `400 invalid_request`
  ("the request headers are too large") in the contract's JSON, without a
  thread; gunicorn's own limits (line length, field count and size) still
  apply to the heads that pass;
- requests for `/health/*` run on a small pool of their own, so probes never
  queue behind API requests that wait for a database connection; they still
  run through the whole WSGI app (request id, access line, metrics);
- connections that close after their response linger (half-closed, reading
  what the client still sends, for LINGER_SECONDS at most) in the selector
  rather than in gunicorn's blocking `close_graceful` on the main loop;
- on SIGTERM the worker stops listening at once: connections already queued
  on its listening socket are answered `503 service_unavailable` with
  `Connection: close`, then the socket is closed, so new connections are
  refused instead of hanging until the worker exits.

The request that already sent its head pays one non-blocking recv in the main
thread instead of one blocking recv in its thread, plus a search for the
blank line and a few attribute writes.
"""

from __future__ import annotations

import json
import selectors
import socket
import time
from collections import OrderedDict
from concurrent import futures
from functools import partial
from http import HTTPStatus

from gunicorn import http
from gunicorn.http2 import negotiation
from gunicorn.workers.gthread import STOP_KEEPALIVE_LINGER, TConn, ThreadWorker

from app.http.errors import ApiError, InternalFailure, InvalidRequest, ServiceUnavailable

#: Largest single read of a request head from a client socket.
RECV_BYTES = 65536
#: How long a connection closed after its response keeps reading (and
#: discarding) what its client still sends, so the kernel does not answer
#: those bytes with a reset that could destroy the response in flight.
LINGER_SECONDS = 2.0
LINGER_MAX_BYTES = 65536
HEALTH_PREFIX = b"/health/"
TOO_LARGE_REASON = "the request headers are too large"

# Outcomes of reading a head.
_WAIT, _READY, _TOO_LARGE, _GONE = range(4)


def contract_error_bytes(error: ApiError) -> bytes:
    """A complete HTTP/1.1 response, closing the connection, carrying `error` as JSON."""
    body = json.dumps(error.body(), separators=(",", ":")).encode()
    extra = "".join(f"{name}: {value}\r\n" for name, value in error.headers.items())
    head = (f"HTTP/1.1 {error.status} {HTTPStatus(error.status).phrase}\r\n"
            f"Connection: close\r\nContent-Type: application/json; charset=utf-8\r\n"
            f"X-Content-Type-Options: nosniff\r\n{extra}Content-Length: {len(body)}\r\n\r\n")
    return head.encode("latin-1") + body


class _ContractErrorSocket:
    """Wraps a client socket so gunicorn's own HTML error page leaves as the contract's JSON."""

    def __init__(self, sock):
        self._sock = sock

    def __getattr__(self, name):
        return getattr(self._sock, name)

    def sendall(self, data: bytes) -> None:
        status_line = data.split(b"\r\n", 1)[0].decode("latin-1")
        _, status, reason = [*status_line.split(" ", 2), "", ""][:3]
        error = InternalFailure() if status.startswith("5") else \
            InvalidRequest(reason.lower() or "the request is malformed")
        self._sock.sendall(contract_error_bytes(error))


def is_health_request(head: bytes | bytearray) -> bool:
    """Whether a request head's target is under /health/ (cheap: no parsing)."""
    space = head.find(b" ", 0, 24)
    return space > 0 and head.startswith(HEALTH_PREFIX, space + 1)


class SayPIWorker(ThreadWorker):
    """gunicorn's gthread worker with heads read by the main loop (see the module docstring).

    Errors gunicorn answers itself (malformed request lines, bad headers) are
    JSON in the contract's shape too: `400 invalid_request` or
    `500 internal_failure`. `worker_class_for` in app/ops/serve.py sets the three
    class attributes from the configuration.
    """

    header_timeout: float = 5.0
    max_header_bytes: int = 32768
    health_threads: int = 2

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # Insertion order is deadline order: every entry gets now + a constant.
        self._heads: OrderedDict[TConn, float] = OrderedDict()
        self._lingering: OrderedDict[TConn, float] = OrderedDict()
        self._health_pool: futures.ThreadPoolExecutor | None = None
        self._listening_stopped = False
        self._too_large = contract_error_bytes(InvalidRequest(TOO_LARGE_REASON))
        self._shutting_down = contract_error_bytes(ServiceUnavailable(1))

    def init_process(self):
        self._health_pool = futures.ThreadPoolExecutor(
            max_workers=self.health_threads, thread_name_prefix="saypi-health")
        super().init_process()  # runs the worker until it stops

    def run(self):
        try:
            super().run()
        finally:
            self._health_pool.shutdown(wait=False)

    def handle_quit(self, sig, frame):
        if self._health_pool is not None:
            self._health_pool.shutdown(wait=False)
        super().handle_quit(sig, frame)

    def handle_error(self, req, client, addr, exc):
        super().handle_error(req, _ContractErrorSocket(client), addr, exc)

    # --- reading heads in the main loop -----------------------------------------------------
    def enqueue_req(self, conn):
        """gunicorn's one way into the thread pool: read the head here first."""
        if conn.is_http2 or self.cfg.is_ssl or (
                not conn.initialized and conn.parser is None
                and negotiation.prior_knowledge_allowed(self.cfg, conn.client)):
            self._dispatch(conn, self.tpool)  # TLS and HTTP/2 read in their thread, as before
            return
        conn.sock.setblocking(False)
        buffered = conn.parser.unreader.take_buffered() if conn.parser is not None else b""
        conn.saypi_head = bytearray(buffered)
        outcome = self._scan(conn.saypi_head, 0) if buffered else _WAIT
        if outcome == _WAIT:
            outcome = self._receive(conn)
        if outcome == _WAIT:
            self._heads[conn] = time.monotonic() + self.header_timeout
            self.poller.register(conn.sock, selectors.EVENT_READ,
                                 partial(self._on_head_readable, conn))
        else:
            self._settle(conn, outcome)

    def _on_head_readable(self, conn, _sock) -> None:
        outcome = self._receive(conn)
        if outcome != _WAIT:
            self.poller.unregister(conn.sock)
            del self._heads[conn]
            self._settle(conn, outcome)

    def _receive(self, conn) -> int:
        head = conn.saypi_head
        try:
            data = conn.sock.recv(RECV_BYTES)
        except (BlockingIOError, InterruptedError):
            return _WAIT
        except OSError:
            return _GONE
        if not data:
            return _GONE
        start = len(head) - 3 if len(head) > 3 else 0
        head += data
        return self._scan(head, start)

    def _scan(self, head: bytearray, start: int) -> int:
        end = head.find(b"\r\n\r\n", start)
        if end >= 0:
            return _READY if end + 4 <= self.max_header_bytes else _TOO_LARGE
        if len(head) > self.max_header_bytes:
            return _TOO_LARGE
        # Heads gunicorn's parser refuses before they end (a bare LF, an
        # overlong request line) go to it now, for its own 400.
        if head.count(b"\n") != head.count(b"\r\n"):
            return _READY
        limit = self.cfg.limit_request_line
        if limit > 0 and len(head) > limit + 2 and head.find(b"\r\n") < 0:
            return _READY
        return _WAIT

    def _settle(self, conn, outcome: int) -> None:
        if outcome == _READY:
            head = conn.saypi_head
            conn.saypi_head = None
            if conn.parser is None:
                conn.parser = http.get_parser(self.cfg, conn.sock, conn.client)
            conn.parser.unreader.unread(bytes(head))
            conn.data_ready = True
            self._dispatch(conn, self._health_pool if is_health_request(head) else self.tpool)
        elif outcome == _TOO_LARGE:
            conn.saypi_head = None
            self.log.warning("Invalid request from ip=%s: request head larger than %d bytes",
                             conn.client[0] if isinstance(conn.client, tuple) else conn.client,
                             self.max_header_bytes)
            self._answer_and_close(conn, self._too_large)
        else:
            self._close(conn)

    def _dispatch(self, conn, pool: futures.ThreadPoolExecutor) -> None:
        fs = pool.submit(self.handle, conn)
        fs.add_done_callback(lambda fut: self.method_queue.defer(self._finished, conn, fut))

    def _finished(self, conn, fs) -> None:
        """On the main loop after a thread served `conn`: keep it alive, or linger and close."""
        try:
            result = fs.result() if not fs.cancelled() else False
        except Exception:
            result = False
        if result:
            self.finish_request(conn, fs)  # keep-alive (or gunicorn's deferral)
        else:
            self._linger_close(conn)

    # --- closing without blocking the main loop ---------------------------------------------
    def _answer_and_close(self, conn, response: bytes) -> None:
        try:
            conn.sock.send(response)  # small: fits a fresh socket's send buffer
        except OSError:
            pass
        self._linger_close(conn)

    def _linger_close(self, conn) -> None:
        sock = conn.sock
        try:
            sock.shutdown(socket.SHUT_WR)
            sock.setblocking(False)
            self.poller.register(sock, selectors.EVENT_READ,
                                 partial(self._on_linger_readable, conn))
        except (OSError, ValueError, KeyError):
            self._close(conn)
            return
        conn.saypi_drained = 0
        self._lingering[conn] = time.monotonic() + LINGER_SECONDS

    def _on_linger_readable(self, conn, _sock) -> None:
        try:
            data = conn.sock.recv(RECV_BYTES)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        conn.saypi_drained += len(data)
        if not data or conn.saypi_drained >= LINGER_MAX_BYTES:
            self.poller.unregister(conn.sock)
            del self._lingering[conn]
            self._close(conn)

    def _close(self, conn) -> None:
        self.nr_conns -= 1
        conn.close()

    def murder_pending(self):
        """Each main-loop turn: also cut off late heads and end finished lingers."""
        super().murder_pending()
        now = time.monotonic()
        for waiting in (self._heads, self._lingering):
            while waiting:
                conn, deadline = next(iter(waiting.items()))
                if deadline > now:
                    break
                del waiting[conn]
                try:
                    self.poller.unregister(conn.sock)
                except (OSError, KeyError, ValueError):
                    pass
                self._close(conn)

    # --- SIGTERM: stop listening at once ----------------------------------------------------
    def set_accept_enabled(self, enabled):
        if self._listening_stopped:
            return
        super().set_accept_enabled(enabled)
        if not enabled and not self.alive:
            self._stop_listening()

    def _stop_listening(self) -> None:
        """Answer what is queued on this worker's listening sockets with 503, then close them.

        Closing a listening socket resets the connections still in its
        accept queue, so they are taken first; once every process closed its
        socket (the master closes its copies before it signals the workers),
        the kernel refuses new connections.
        """
        self._listening_stopped = True
        own_socket = self.cfg.reuse_port and hasattr(socket, "SO_REUSEPORT")
        for listener in self.sockets:
            # A socket shared with the master and sibling workers keeps its
            # queue for them; only this worker's own (SO_REUSEPORT) one is emptied.
            while own_socket:
                try:
                    client, addr = listener.accept()
                except OSError:  # BlockingIOError: the queue is empty
                    break
                self.nr_conns += 1
                conn = TConn(self.cfg, client, addr, listener.getsockname())
                self._answer_and_close(conn, self._shutting_down)
            listener.close()
        # Heads still arriving get what kept-alive connections get: a short linger.
        deadline = time.monotonic() + STOP_KEEPALIVE_LINGER
        for conn, old in self._heads.items():
            self._heads[conn] = min(old, deadline)
