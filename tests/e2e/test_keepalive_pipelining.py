"""Requests sent back to back on one kept-alive connection, over a raw socket.

A thread that answered a request serves the connection's next one when it is already
whole (docs/worker.md); whatever is not (a probe, a body still arriving, a body over
MAX_BODY_BYTES) goes back to the main loop. Either way every request gets its own
answer, in order.
"""

from __future__ import annotations

import json
import socket

import httpx

HOST = "Host: 127.0.0.1"


class Responses:
    """HTTP/1.1 responses read one by one from a socket, bytes past one kept for the next."""

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.buffer = b""

    def _fill(self) -> None:
        chunk = self.sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"closed; unread: {self.buffer!r}")
        self.buffer += chunk

    def next(self) -> tuple[int, dict, bytes]:
        while b"\r\n\r\n" not in self.buffer:
            self._fill()
        head, _, self.buffer = self.buffer.partition(b"\r\n\r\n")
        status_line, *lines = head.decode("latin-1").split("\r\n")
        headers = {k.strip().lower(): v.strip() for k, v in
                   (line.split(":", 1) for line in lines)}
        length = int(headers.get("content-length", "0"))
        while len(self.buffer) < length:
            self._fill()
        body, self.buffer = self.buffer[:length], self.buffer[length:]
        return int(status_line.split()[1]), headers, body


def request(method: str, path: str, token: str = "", body: bytes = b"") -> bytes:
    lines = [f"{method} {path} HTTP/1.1", HOST]
    if token:
        lines.append(f"Authorization: Bearer {token}")
    if body:
        lines += ["Content-Type: application/json", f"Content-Length: {len(body)}"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def test_back_to_back_requests_get_their_answers_in_order(start_server):
    server = start_server(MAX_BODY_BYTES="4096")
    user = httpx.post(f"{server.url}/users", json={"name": "Piper"}).json()
    token = user["token"]
    heading = json.dumps({"heading": "piped"}).encode()
    sent = [request("GET", "/animals", token),
            request("GET", "/health/live"),
            request("POST", "/conversations", token, heading),
            request("GET", "/conversations?limit=1", token),
            request("GET", "/moods", token),
            request("GET", "/nope", token)]
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(b"".join(sent))
        answers = Responses(sock)
        got = [answers.next() for _ in sent]
        statuses = [status for status, _, _ in got]
        assert statuses == [200, 200, 201, 200, 200, 404], statuses
        created = json.loads(got[2][2])
        assert json.loads(got[3][2])["data"][0]["id"] == created["id"]
        assert len({headers["x-request-id"] for _, headers, _ in got}) == len(sent)
        # the connection is still open: one more request, then a body over the limit
        sock.sendall(request("GET", "/animals", token)
                     + request("POST", "/conversations", token, b"{" + b" " * 5000 + b"}"))
        assert answers.next()[0] == 200
        status, headers, body = answers.next()
        assert status == 413 and headers["connection"] == "close"
        assert json.loads(body)["code"] == "payload_too_large"
