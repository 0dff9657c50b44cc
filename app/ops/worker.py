"""SayPI's gunicorn worker: requests read in the main loop, health on its own lane.

Heads and bodies are read without blocking in the main loop, so a thread never waits on a
client; slow ones are cut off, requests late for a thread are shed with 503, /health/* has
threads of its own, closing connections linger, SIGTERM stops listening at once. See docs/worker.md.
"""

from __future__ import annotations

import errno
import gc
import json
import selectors
import socket
import time
from collections import OrderedDict
from collections.abc import Callable
from concurrent import futures
from datetime import datetime
from functools import partial
from http import HTTPStatus

from gunicorn import http, util
from gunicorn.http import wsgi
from gunicorn.http2 import negotiation
from gunicorn.workers.gthread import STOP_KEEPALIVE_LINGER, TConn, ThreadWorker

from app.http import admission
from app.http.envelope import request_ids
from app.http.errors import ApiError, InvalidRequest, ServiceUnavailable
from app.ops import bodies
from app.ops.framing import framing_refusal, parse_error_answer
from app.ops.http_head import HttptoolsRequestParser
from app.ops.response_writer import OneSendResponse

#: Largest single read of a request head from a client socket.
RECV_BYTES = 65536
#: How long a connection closed after its response keeps reading (and
#: discarding) what its client still sends, so the kernel does not answer
#: those bytes with a reset that could destroy the response in flight.
LINGER_SECONDS = 2.0
LINGER_MAX_BYTES = 65536
#: What a connection whose body was refused unread (over MAX_BODY_BYTES) may
#: still send while it lingers, so its client reads the 413 rather than a reset.
REFUSED_BODY_LINGER_BYTES = 1024 * 1024
HEALTH_PREFIX = b"/health/"
TOO_LARGE_REASON = "the request headers are too large"

# Outcomes of reading a head.
_WAIT, _READY, _TOO_LARGE, _GONE = range(4)
# What a thread returns when it queued its connection's next request itself.
_HANDED_ON = object()


def contract_error_bytes(error: ApiError, request_id: str) -> bytes:
    """A complete HTTP/1.1 response, closing the connection, carrying `error` as JSON."""
    body = json.dumps(error.body(), separators=(",", ":")).encode()
    extra = "".join(f"{name}: {value}\r\n" for name, value in error.headers.items())
    head = (f"HTTP/1.1 {error.status} {HTTPStatus(error.status).phrase}\r\n"
            f"Connection: close\r\nContent-Type: application/json; charset=utf-8\r\n"
            f"X-Content-Type-Options: nosniff\r\nX-Request-ID: {request_id}\r\n{extra}"
            f"Content-Length: {len(body)}\r\n\r\n")
    return head.encode("latin-1") + body


class ModeKeepingSocket(socket.socket):
    """A client socket that skips the system call when told the mode it already has.

    gunicorn sets a connection blocking before every request and bounds the drain of an
    unread body with a timeout it then takes back; CPython makes an ioctl of each, and
    each releases and takes back the GIL, which under load wakes another thread for
    nothing. The mode a socket is in is its timeout (None: blocking, 0.0: non-blocking),
    which Python keeps: asking for the same one again changes nothing.
    """

    __slots__ = ()

    def setblocking(self, flag: bool) -> None:
        if self.gettimeout() != (None if flag else 0.0):
            super().setblocking(flag)

    def settimeout(self, value: float | None) -> None:
        if self.gettimeout() != value:
            super().settimeout(value)


def is_health_request(head: bytes | bytearray) -> bool:
    """Whether a request head's target is under /health/ (cheap: no parsing)."""
    space = head.find(b" ", 0, 24)
    return space > 0 and head.startswith(HEALTH_PREFIX, space + 1)


class SayPIWorker(ThreadWorker):
    """gunicorn's gthread worker with heads and bodies read by the main loop (docs/worker.md).

    Errors gunicorn answers itself (malformed request lines, bad headers) are JSON in the
    contract's shape too, with an X-Request-ID: `400 invalid_request` or `500 internal_failure`.
    The configuration arrives as three class attributes, set when the worker class is made.
    """

    header_timeout: float = 5.0
    max_header_bytes: int = 32768
    health_threads: int = 2
    body_timeout: float = 10.0
    max_body_bytes: int = 65536
    queue_timeout: float = 3.0
    alive: bool  # gunicorn's: False once the worker is stopping

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # Insertion order is deadline order: every entry gets now + a constant.
        self._heads: OrderedDict[TConn, float] = OrderedDict()
        self._lingering: OrderedDict[TConn, float] = OrderedDict()
        self._bodies: OrderedDict[TConn, float] = OrderedDict()
        # Requests handed to the API threads and not started yet, with when to shed them.
        self._queued: OrderedDict[futures.Future, tuple[TConn, float]] = OrderedDict()
        self._health_pool: futures.ThreadPoolExecutor | None = None
        self._listening_stopped = False
        self._new_request_id: Callable[[], str]  # made in the worker process: its prefix is random
        self._too_large = InvalidRequest(TOO_LARGE_REASON)
        self._shutting_down = ServiceUnavailable(1)

    def init_process(self):
        self._new_request_id = request_ids()
        self._health_pool = futures.ThreadPoolExecutor(
            max_workers=self.health_threads, thread_name_prefix="saypi-health")
        super().init_process()  # runs the worker until it stops

    def run(self):
        # What exists now (the app, its routes and schemas, its pools, every module) lives
        # as long as the worker. Frozen, it is out of the collector's sight: a full
        # collection walks what requests made since, not the ~90,000 objects of the start,
        # which took 60-95 ms with the GIL held, every thread of the worker stopped
        # (docs/performance.md, "Full collections").
        gc.freeze()
        self.log.info("Worker %s ready: %d objects frozen out of the collector's sight",
                      self.pid, gc.get_freeze_count())
        try:
            super().run()
        finally:
            if self._health_pool is not None:
                self._health_pool.shutdown(wait=False)

    def handle_quit(self, sig, frame):
        if self._health_pool is not None:
            self._health_pool.shutdown(wait=False)
        super().handle_quit(sig, frame)

    # --- answers made without the app: framing and gunicorn's errors ----------------------
    def handle_request(self, req, conn):
        refusal = framing_refusal(req)
        if refusal is not None:
            raise refusal  # to handle_error, by gunicorn's `handle`
        return self._handle_admitted(req, conn)

    def handle_error(self, req, client, addr, exc):
        """gunicorn's answer to what it could not parse or serve, in the contract's JSON
        (its own is an HTML page, without X-Request-ID), logged under that answer's id."""
        request_id = self._new_request_id()
        error = parse_error_answer(exc)
        ip = addr[0] if isinstance(addr, tuple) and addr else addr
        ids = {"request_id": request_id}
        if error.status < 500:
            self.log.warning("Invalid request from ip=%s: %s", ip, exc, extra=ids)
        elif getattr(req, "uri", None) is not None:
            self.log.exception("Error handling request %s %s", getattr(req, "method", ""),
                               req.uri, extra=ids)
        else:
            self.log.exception("Error handling request (no URI read)", extra=ids)
        try:
            util.write_nonblock(client, contract_error_bytes(error, request_id))
        except Exception:
            self.log.debug("Failed to send error message.")

    # --- reading heads in the main loop -----------------------------------------------------
    def accept(self, listener):
        """gunicorn's accept, the client socket made a ModeKeepingSocket."""
        try:
            client_sock, client_addr = listener.accept()
        except OSError as e:
            if e.errno not in (errno.EAGAIN, errno.ECONNABORTED, errno.EWOULDBLOCK):
                raise
            return
        self.nr_conns += 1
        client_sock.__class__ = ModeKeepingSocket
        client_sock.setblocking(True)
        self.enqueue_req(TConn(self.cfg, client_sock, client_addr, listener.getsockname()))

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
            self._await_body(conn, head)
        elif outcome == _TOO_LARGE:
            conn.saypi_head = None
            request_id = self._new_request_id()
            self.log.warning("Invalid request from ip=%s: request head larger than %d bytes",
                             conn.client[0] if isinstance(conn.client, tuple) else conn.client,
                             self.max_header_bytes, extra={"request_id": request_id})
            self._answer_and_close(conn, contract_error_bytes(self._too_large, request_id))
        else:
            self._close(conn)

    def _dispatch(self, conn, pool: futures.ThreadPoolExecutor) -> futures.Future:
        fs = pool.submit(self.handle, conn)
        fs.add_done_callback(lambda fut: self.method_queue.defer(self._finished, conn, fut))
        return fs

    def _finished(self, conn, fs) -> None:
        """On the main loop after a thread served `conn`: keep it alive, or linger and close."""
        self._queued.pop(fs, None)
        try:
            result = fs.result() if not fs.cancelled() else False
        except Exception:
            result = False
        if result is _HANDED_ON:  # its next request is queued: that one's future has it
            return
        if result:
            self.finish_request(conn, fs)  # keep-alive (or gunicorn's deferral)
        else:
            self._linger_close(conn)

    # --- reading bodies in the main loop ----------------------------------------------------
    def _await_body(self, conn, received: bytearray) -> None:
        """Hand `conn` to a thread once its body has arrived too: at once if it has none."""
        conn.saypi_continued = False
        end = received.find(b"\r\n\r\n")
        scan = bodies.BodyScan(received[:end], self.max_body_bytes) if end >= 0 else None
        outcome = scan.scan(received, end + 4) if scan is not None else bodies.AS_IS
        if scan is None or outcome != bodies.WAIT:
            self._body_settled(conn, received, end + 4, outcome)
            return
        conn.saypi_body = (scan, received, end + 4)
        if scan.expects_continue:
            # gunicorn would send it when the application reads the body, but
            # the body is read here, before any thread has the request.
            try:
                conn.sock.send(b"HTTP/1.1 100 Continue\r\n\r\n")
                conn.saypi_continued = True
            except OSError:
                pass
        self._bodies[conn] = time.monotonic() + self.body_timeout
        self.poller.register(conn.sock, selectors.EVENT_READ,
                             partial(self._on_body_readable, conn))

    def _on_body_readable(self, conn, _sock) -> None:
        scan, received, start = conn.saypi_body
        try:
            data = conn.sock.recv(RECV_BYTES)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if data:
            received += data
            outcome = scan.scan(received, start)
            if outcome == bodies.WAIT:
                return
        self.poller.unregister(conn.sock)
        del self._bodies[conn]
        conn.saypi_body = None
        if data:
            self._body_settled(conn, received, start, outcome)
        else:
            self._close(conn)

    def _body_settled(self, conn, received: bytearray, start: int, outcome: int) -> None:
        """Give the request to a thread: whole, or with its head only when the body is refused."""
        too_large = outcome == bodies.TOO_LARGE
        if too_large:
            received = received[:start]  # refused unread: nothing of it is kept
            conn.saypi_linger_bytes = REFUSED_BODY_LINGER_BYTES
        if conn.parser is None:
            conn.parser = HttptoolsRequestParser(self.cfg, conn.sock, conn.client) \
                if self.cfg.protocol == "http" else http.get_parser(self.cfg, conn.sock,
                                                                   conn.client)
        conn.parser.unreader.unread(bytes(received))
        conn.data_ready = True
        conn.saypi_too_large = too_large
        conn.saypi_ready_at = ready_at = time.monotonic()
        health = self._health_pool if is_health_request(received) else None
        conn.saypi_health = health is not None
        if health is not None:
            self._dispatch(conn, health)
        else:
            fs = self._dispatch(conn, self.tpool)
            if not fs.done():
                self._queued[fs] = (conn, ready_at + self.queue_timeout)

    # --- the next request of a kept-alive connection, on the same thread ---------------------
    def handle(self, conn):
        """Serve `conn`'s request; then, while its next request is already whole on the
        socket, serve that one too: here when no request waits for a thread, else queued
        behind those that wait, straight from this thread.

        A kept-alive connection's next request otherwise costs a trip through the main
        loop: the thread's completion callback, the selector (register, wake up,
        unregister), a read, and a hand-over to a thread again. Only a request that
        arrived whole (head and body within MAX_BODY_BYTES, no 100-continue) is kept;
        anything else, or a health probe, goes back to the main loop with its bytes.
        """
        result = super().handle(conn)
        while result is True and self.alive and self._next_is_whole(conn):
            if self.tpool._work_queue.empty():
                result = super().handle(conn)
            elif self._requeue(conn):
                return _HANDED_ON
            else:
                break
        return result

    def _requeue(self, conn) -> bool:
        """Queue `conn`'s next request (already whole) for a thread, as the main loop would."""
        try:
            fs = self.tpool.submit(self.handle, conn)
        except RuntimeError:  # the pool is shutting down: the main loop decides
            return False
        fs.add_done_callback(lambda fut: self.method_queue.defer(self._finished, conn, fut))
        self.method_queue.defer(self._track_queued, fs, conn,
                                conn.saypi_ready_at + self.queue_timeout)
        return True

    def _track_queued(self, fs, conn, deadline: float) -> None:
        """On the main loop: shed a requeued request as any other if it waits too long."""
        if not fs.done():
            self._queued[fs] = (conn, deadline)

    def _next_is_whole(self, conn) -> bool:
        """Whether `conn`'s next request has arrived whole (then it is ready to parse)."""
        if getattr(conn, "saypi_ready_at", None) is None or conn.saypi_health:
            return False  # TLS or HTTP/2, or the health lane
        unreader = conn.parser.unreader
        received = bytearray(unreader.take_buffered())
        try:
            data = conn.sock.recv(RECV_BYTES, socket.MSG_DONTWAIT)
        except OSError:  # BlockingIOError: nothing yet; anything else: the main loop sees it
            data = b""
        received += data
        if not received:
            return False
        if self._scan(received, 0) == _READY and not is_health_request(received):
            end = received.find(b"\r\n\r\n")
            scan = bodies.BodyScan(received[:end], self.max_body_bytes) if end >= 0 else None
            if scan is not None and not scan.expects_continue and \
                    scan.scan(received, end + 4) in (bodies.COMPLETE, bodies.AS_IS):
                unreader.unread(bytes(received))
                conn.saypi_too_large = conn.saypi_continued = False
                conn.saypi_ready_at = time.monotonic()
                return True
        unreader.unread(bytes(received))  # the main loop takes it from here (finish_request)
        return False

    def _keepalive_after(self, conn, keepalive):
        """Whether the connection can be kept: its request's unread body drained first.

        When the main loop read the whole body, what the application left is in the
        parser's buffer: draining it reads no socket, so it needs none of the timeout that
        gunicorn sets (and takes back) on the socket around its drain.
        """
        if keepalive and getattr(conn, "saypi_ready_at", None) is not None \
                and not conn.saypi_too_large:
            return bool(conn.parser.finish_body())
        return super()._keepalive_after(conn, keepalive)

    def _handle_admitted(self, req, conn):
        """On the request's thread: tell the envelope what the main loop learnt (admission.py)."""
        ready_at = getattr(conn, "saypi_ready_at", None)
        if ready_at is None:  # TLS and HTTP/2: read on the thread, as gunicorn does
            return super().handle_request(req, conn)
        too_large = conn.saypi_too_large
        if too_large:
            req.force_close()  # the body is still on the socket, never read
        if too_large or conn.saypi_continued:
            # gunicorn sends 100 Continue as the request starts: not for a
            # refused body, and not a second time.
            req._expected_100_continue = False
        token = admission.admit(admission.Admission(ready_at, too_large))
        try:
            return self._serve(req, conn)
        finally:
            admission.release(token)

    def _serve(self, req, conn) -> bool:
        """gunicorn's ThreadWorker.handle_request, its response written by OneSendResponse
        (head and body in one send). Whether the connection may be kept alive."""
        environ: dict = {}
        resp = None
        try:
            self.cfg.pre_request(self, req)
            request_start = datetime.now()
            resp, environ = wsgi.create(req, conn.sock, conn.client, conn.server, self.cfg,
                                        response_class=OneSendResponse)
            environ["wsgi.multithread"] = True
            self.nr += 1
            if self.nr >= self.max_requests:
                if self.alive:
                    self.log.info("Autorestarting worker after current request.")
                    self.alive = False
                resp.force_close()
            if not self.alive or not self.cfg.keepalive or \
                    len(self.keepalived_conns) >= self.max_keepalived:
                resp.force_close()
            respiter = self.wsgi(environ, resp.start_response)
            try:
                if isinstance(respiter, environ["wsgi.file_wrapper"]):
                    resp.write_file(respiter)
                else:
                    for item in respiter:
                        resp.write(item)
                resp.close()
            finally:
                self.log.access(resp, req, environ, datetime.now() - request_start)
                if hasattr(respiter, "close"):
                    respiter.close()
            return not resp.should_close()
        except OSError:
            raise
        except (Exception, SystemExit) as exc:
            if resp is not None and resp.headers_sent:
                # The response began: another answer on this connection would corrupt it.
                self.log.exception("Error handling request")
                util.close_graceful(conn.sock)
                raise StopIteration() from exc
            raise
        finally:
            try:
                self.cfg.post_request(self, req, environ, resp)
            except Exception:
                self.log.exception("Exception in post_request hook")

    # --- load shedding: requests that waited too long for a thread --------------------------
    def _shed_late_requests(self, now: float) -> None:
        """Answer 503 to queued requests whose wait for a thread used up DB_POOL_TIMEOUT.

        They would only wait for a database connection with no budget left,
        behind requests that are late already: the client gets a fast 503
        with Retry-After instead, and the thread goes to a request in time.
        """
        shed = 0
        while self._queued:
            fs, (conn, deadline) = next(iter(self._queued.items()))
            if deadline > now:
                break
            del self._queued[fs]
            if fs.cancel():  # not started: _finished then closes the connection
                shed += 1
                try:
                    conn.sock.send(self._shed_response())
                except OSError:
                    pass
        if shed:
            self.log.warning("Shed %d request(s) that waited %.1f s for a thread", shed,
                             self.queue_timeout)

    def _shed_response(self) -> bytes:
        return contract_error_bytes(ServiceUnavailable(1), self._new_request_id())

    def wait_for_and_dispatch_events(self, timeout):
        """Wake up in time for the next shedding, not only once a second."""
        if self._queued:
            _, deadline = next(iter(self._queued.values()))
            timeout = min(timeout, max(0.0, deadline - time.monotonic()) + 0.001)
        super().wait_for_and_dispatch_events(timeout)

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
        if not data or conn.saypi_drained >= getattr(conn, "saypi_linger_bytes", LINGER_MAX_BYTES):
            self.poller.unregister(conn.sock)
            del self._lingering[conn]
            self._close(conn)

    def _close(self, conn) -> None:
        self.nr_conns -= 1
        conn.close()

    def murder_pending(self):
        """Each main-loop turn: also cut off late heads and bodies, shed, end lingers."""
        super().murder_pending()
        now = time.monotonic()
        self._shed_late_requests(now)
        for waiting in (self._heads, self._bodies, self._lingering):
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
                self._answer_and_close(
                    conn, contract_error_bytes(self._shutting_down, self._new_request_id()))
            listener.close()
        # Heads still arriving get what kept-alive connections get: a short linger.
        deadline = time.monotonic() + STOP_KEEPALIVE_LINGER
        for conn, old in self._heads.items():
            self._heads[conn] = min(old, deadline)
