"""Requests SayPI cannot frame, over raw sockets, against a SayPI started through run().

Every one is a client error in the contract's JSON with an X-Request-ID, answered
as HTTP/1.1, and the warning logged about it carries the same request id.
"""

from __future__ import annotations

import json
import re
import socket

import pytest

from tests.conftest import eventually
from tests.e2e.test_slow_clients import read_raw_response

GENERATED_ID = re.compile(r"[0-9a-f]{32}")
BODY = b'{"name": "framed"}'


def exchange(port: int, request: bytes) -> tuple[str, dict, bytes]:
    """Send `request` on a fresh connection; the status line, headers and body of the answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(request)
        return read_raw_response(sock)


def post_users(*headers: str, body: bytes = BODY, version: str = "HTTP/1.1") -> bytes:
    head = "".join(f"{header}\r\n" for header in headers)
    return f"POST /users {version}\r\n{head}\r\n".encode() + body


def chunked(body: bytes) -> bytes:
    return f"{len(body):x}\r\n".encode() + body + b"\r\n0\r\n\r\n"


HOST = "Host: x"
JSON = "Content-Type: application/json"
UNSUPPORTED_CODING = "the transfer coding is not supported (only chunked is)"

CASES = {
    # An unsupported Transfer-Encoding: a client error, not gunicorn's 501 turned into a 500.
    "xchunked": (post_users(HOST, JSON, "Transfer-Encoding: xchunked", body=chunked(BODY)),
                 UNSUPPORTED_CODING),
    "br, chunked": (post_users(HOST, JSON, "Transfer-Encoding: br, chunked",
                               body=chunked(BODY)), UNSUPPORTED_CODING),
    # gunicorn accepts these codings but passes the coded bytes on undecoded.
    "gzip, chunked": (post_users(HOST, JSON, "Transfer-Encoding: gzip, chunked",
                                 body=chunked(BODY)), UNSUPPORTED_CODING),
    "deflate, chunked": (post_users(HOST, JSON, "Transfer-Encoding: deflate, chunked",
                                    body=chunked(BODY)), UNSUPPORTED_CODING),
    "chunked, chunked": (post_users(HOST, JSON, "Transfer-Encoding: chunked, chunked",
                                    body=chunked(BODY)),
                         "the Transfer-Encoding header is invalid"),
    "chunked over HTTP/1.0": (post_users(HOST, JSON, "Transfer-Encoding: chunked",
                                         body=chunked(BODY), version="HTTP/1.0"),
                              "the Transfer-Encoding header is invalid"),
    "obs-fold": (post_users(HOST, JSON, "X-Folded: a", " b", f"Content-Length: {len(BODY)}"),
                 "a header is folded over several lines (obsolete line folding)"),
    "Content-Length: abc": (post_users(HOST, JSON, "Content-Length: abc"),
                            "the Content-Length header is invalid, repeated or sent with "
                            "Transfer-Encoding"),
    "Content-Length: -1": (post_users(HOST, JSON, "Content-Length: -1"),
                           "the Content-Length header is invalid, repeated or sent with "
                           "Transfer-Encoding"),
    "two Content-Lengths": (post_users(HOST, JSON, f"Content-Length: {len(BODY)}",
                                       f"Content-Length: {len(BODY)}"),
                            "the Content-Length header is invalid, repeated or sent with "
                            "Transfer-Encoding"),
    "Content-Length with chunked": (
        post_users(HOST, JSON, f"Content-Length: {len(BODY)}", "Transfer-Encoding: chunked",
                   body=chunked(BODY)),
        "the Content-Length header is invalid, repeated or sent with Transfer-Encoding"),
    "40 KiB head": (post_users(HOST, JSON, *(f"X-Pad-{i}: {'p' * 4000}" for i in range(10)),
                               f"Content-Length: {len(BODY)}"),
                    "the request headers are too large"),
    "bad method": (b"G@T /health/live HTTP/1.1\r\nHost: x\r\n\r\n",
                   "the request method is malformed"),
    "bad request line": (b"GET /health/live\r\nHost: x\r\n\r\n",
                         "the request line is malformed"),
    "request line too long": (f"GET /{'a' * 9000} HTTP/1.1\r\nHost: x\r\n\r\n".encode(),
                              "the request line is too long"),
    "bad header name": (b"GET /health/live HTTP/1.1\r\nHost: x\r\nBad Name: 1\r\n\r\n",
                        "a request header name is malformed"),
    "HTTP/1.1 without Host": (b"GET /health/live HTTP/1.1\r\n\r\n",
                              "the Host header is missing (HTTP/1.1 requires it)"),
    "two Hosts": (b"GET /health/live HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\n",
                  "the Host header is repeated"),
    "two Content-Types": (post_users(HOST, JSON, JSON, f"Content-Length: {len(BODY)}"),
                          "the Content-Type header is repeated"),
    "two Hosts over HTTP/1.0": (b"GET /health/live HTTP/1.0\r\nHost: x\r\nHost: y\r\n\r\n",
                                "the Host header is repeated"),
    "HTTP/1.2": (b"GET /health/live HTTP/1.2\r\nHost: x\r\n\r\n",
                 "the HTTP version is not supported (only HTTP/1.0 and HTTP/1.1 are)"),
    "HTTP/1.9 without Host": (b"GET /health/live HTTP/1.9\r\n\r\n",
                              "the HTTP version is not supported (only HTTP/1.0 and HTTP/1.1 "
                              "are)"),
    "HTTP/2.0": (b"GET /health/live HTTP/2.0\r\nHost: x\r\n\r\n",
                 "the HTTP version is not supported (only HTTP/1.0 and HTTP/1.1 are)"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_badly_framed_requests_are_400_invalid_request_with_a_request_id(shared_server, case):
    request, reason = CASES[case]
    status_line, headers, body = exchange(shared_server.port, request)
    assert status_line.split(" ")[:2] == ["HTTP/1.1", "400"], (status_line, body)
    assert headers["content-type"] == "application/json; charset=utf-8"
    assert headers["connection"] == "close"
    assert json.loads(body) == {"code": "invalid_request",
                                "message": f"The request could not be read: {reason}.",
                                "data": {"reason": reason}}
    request_id = headers.get("x-request-id", "")
    assert GENERATED_ID.fullmatch(request_id), headers

    def warning():  # the line logged about it names the same request id
        for line in shared_server.log_lines():
            if request_id in line and line.startswith("{"):
                return json.loads(line)
        return None

    assert eventually(lambda: warning() is not None, seconds=5), shared_server.logs()[-3000:]
    record = warning()
    assert record["request_id"] == request_id
    assert record["level"] == "WARNING" and record["message"].startswith("Invalid request"), \
        record


def test_well_framed_neighbours_of_the_refused_requests_are_served(shared_server):
    """What the checks above must not refuse: HTTP/1.0 without Host, one chunked coding,
    a client's own request id."""
    status_line, _, body = exchange(shared_server.port, b"GET /health/live HTTP/1.0\r\n\r\n")
    assert status_line.split(" ")[:2] == ["HTTP/1.0", "200"], body
    status_line, _, body = exchange(shared_server.port, post_users(
        HOST, JSON, "Transfer-Encoding: Chunked", "Connection: close", body=chunked(BODY)))
    assert status_line.split(" ")[:2] == ["HTTP/1.1", "201"], body
    status_line, headers, _ = exchange(
        shared_server.port, b"GET /health/live HTTP/1.1\r\nHost: x\r\nX-Request-ID: mine-1\r\n"
                            b"Connection: close\r\n\r\n")
    assert status_line.split(" ")[:2] == ["HTTP/1.1", "200"]
    assert headers["x-request-id"] == "mine-1"
