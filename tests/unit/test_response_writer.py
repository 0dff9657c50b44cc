"""Responses written by OneSendResponse (app/ops/response_writer.py) and client sockets that
keep their mode (app/ops/worker.py): the same bytes as gunicorn's Response, in fewer sends."""

from __future__ import annotations

import fcntl
import os
import re
import socket
import tempfile

import pytest
from gunicorn.config import Config
from gunicorn.http import wsgi

from app.ops.http_head import HttptoolsRequestParser
from app.ops.response_writer import OneSendResponse
from app.ops.worker import ModeKeepingSocket

PEER = ("127.0.0.1", 50000)
JSON = [("Content-Type", "application/json"), ("Content-Length", "11"), ("ETag", '"x"')]


class CountingSocket(socket.socket):
    """A real socket that counts the sends made on it."""

    __slots__ = ("sends",)

    def sendall(self, data, flags=0):
        self.sends += 1
        return super().sendall(data, flags)

    def send(self, data, flags=0):
        self.sends += 1
        return super().send(data, flags)


def request_of(head: bytes):
    near, far = socket.socketpair()
    parser = HttptoolsRequestParser(Config(), near, PEER)
    parser.unreader.unread(head)
    request = next(parser)
    near.close()
    far.close()
    return request


def written(response_class, head: bytes, status: str, headers: list, chunks: list[bytes]
            ) -> tuple[bytes, int]:
    """What a response of `response_class` puts on the wire, and in how many sends."""
    near, far = socket.socketpair()
    sock = CountingSocket(fileno=near.detach())
    sock.sends = 0
    response = response_class(request_of(head), sock, Config())
    response.start_response(status, list(headers))
    for chunk in chunks:
        response.write(chunk)
    response.close()
    sock.close()
    wire = received(far)
    return re.sub(rb"Date: [^\r]*\r\n", b"Date: -\r\n", wire), sock.sends


def received(far: socket.socket) -> bytes:
    """Everything the other end sent until it closed; then this end is closed too."""
    wire = b""
    while data := far.recv(65536):
        wire += data
    far.close()
    return wire


CASES = [
    ("GET, a JSON body", b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", "200 OK", JSON,
     [b'{"a":"bcd"}']),
    ("HTTP/1.0", b"GET / HTTP/1.0\r\n\r\n", "200 OK", JSON, [b'{"a":"bcd"}']),
    ("HEAD: the head only", b"HEAD / HTTP/1.1\r\nHost: x\r\n\r\n", "200 OK", JSON,
     [b'{"a":"bcd"}']),
    ("304", b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", "304 Not Modified", [("ETag", '"x"')], []),
    ("204", b"DELETE /c HTTP/1.1\r\nHost: x\r\n\r\n", "204 No Content", [], [b""]),
    ("no length: chunked", b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", "200 OK",
     [("Content-Type", "text/event-stream")], [b"data: 1\n\n", b"data: 2\n\n"]),
    ("no length, HTTP/1.0: closes", b"GET / HTTP/1.0\r\n\r\n", "200 OK",
     [("Content-Type", "text/plain")], [b"a", b"b"]),
    ("a body in parts", b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", "200 OK",
     [("Content-Length", "4")], [b"ab", b"cd"]),
    ("more than the length", b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", "200 OK",
     [("Content-Length", "2")], [b"abcd"]),
    ("closing", b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", "200 OK", JSON,
     [b'{"a":"bcd"}']),
]


@pytest.mark.parametrize(("head", "status", "headers", "chunks"),
                         [case[1:] for case in CASES], ids=[case[0] for case in CASES])
def test_the_same_bytes_as_gunicorn(head, status, headers, chunks):
    ours, _ = written(OneSendResponse, head, status, headers, chunks)
    theirs, _ = written(wsgi.Response, head, status, headers, chunks)
    assert ours == theirs


@pytest.mark.parametrize(("head", "status", "headers", "chunks", "sends", "gunicorns"), [
    (*CASES[0][1:], 1, 2),
    (*CASES[2][1:], 1, 1),
    (*CASES[3][1:], 1, 1),
    (*CASES[4][1:], 1, 1),
    (*CASES[5][1:], 3, 4),  # the head with the first chunk, the second, the end
    (*CASES[7][1:], 2, 3),
], ids=["a body with its length", "HEAD", "304", "204", "chunked", "a body in parts"])
def test_the_head_goes_with_the_first_body_bytes(head, status, headers, chunks, sends,
                                                 gunicorns):
    assert written(OneSendResponse, head, status, headers, chunks)[1] == sends
    assert written(wsgi.Response, head, status, headers, chunks)[1] == gunicorns


def test_a_file_body_goes_after_its_head():
    with tempfile.TemporaryFile() as body:
        body.write(b"file body")
        body.seek(0)
        near, far = socket.socketpair()
        response = OneSendResponse(request_of(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"), near,
                                   Config())
        response.start_response("200 OK", [("Content-Length", "9")])
        response.write_file(wsgi.FileWrapper(body))
        response.close()
        near.close()
        wire = received(far)
    assert wire.startswith(b"HTTP/1.1 200 OK\r\n")
    assert wire.endswith(b"\r\n\r\nfile body")


def _os_nonblocking(sock: socket.socket) -> bool:
    return bool(fcntl.fcntl(sock.fileno(), fcntl.F_GETFL) & os.O_NONBLOCK)


def test_a_mode_keeping_socket_is_always_in_the_mode_it_was_told():
    sock, client = socket.socketpair()
    sock.__class__ = ModeKeepingSocket
    steps = [("setblocking", True, None), ("setblocking", False, 0.0),
             ("setblocking", False, 0.0), ("settimeout", 2.5, 2.5), ("settimeout", 2.5, 2.5),
             ("settimeout", None, None), ("setblocking", True, None), ("settimeout", 0.0, 0.0),
             ("settimeout", 1.0, 1.0), ("setblocking", True, None)]
    try:
        for method, value, timeout in steps:
            getattr(sock, method)(value)
            assert sock.gettimeout() == timeout, (method, value)
            assert _os_nonblocking(sock) == (timeout is not None), (method, value)
        client.sendall(b"x")
        assert sock.recv(1) == b"x"
    finally:
        sock.close()
        client.close()
