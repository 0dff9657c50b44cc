"""gunicorn's HTTP/1 response, its head sent with the first body bytes (docs/worker.md).

gunicorn sends the head and the body in two sends; `OneSendResponse` keeps the head until
the first body bytes (or the response's end) and sends both at once. The framing, header
checks and Connection header are gunicorn's Response, unchanged.
"""

from __future__ import annotations

import email.utils
import functools
import time

from gunicorn import util
from gunicorn.http import wsgi


@functools.lru_cache(maxsize=4)
def http_date(second: int) -> str:
    """The Date header's value for a whole second: formatted once, not per response."""
    return email.utils.formatdate(second, localtime=False, usegmt=True)


class OneSendResponse(wsgi.Response):
    """gunicorn's Response, with its head sent together with the first body bytes."""

    headers_sent: bool  # gunicorn's: the response has begun (here: its head is formatted)

    def __init__(self, req, sock, cfg):
        super().__init__(req, sock, cfg)
        self._head: bytes | None = None  # formatted, not sent yet
        self._head_at_once = False  # sendfile writes the body itself: the head goes first

    def default_headers(self) -> list[str]:
        if self.upgrade:
            connection = "upgrade"
        elif self.should_close():
            connection = "close"
        else:
            connection = "keep-alive"
        version = self.req.version
        headers = [f"HTTP/{version[0]}.{version[1]} {self.status}\r\n",
                   f"Server: {self.version}\r\n",
                   f"Date: {http_date(int(time.time()))}\r\n",
                   f"Connection: {connection}\r\n"]
        if self.chunked:
            headers.append("Transfer-Encoding: chunked\r\n")
        return headers

    def send_headers(self) -> None:
        if self.headers_sent:
            return
        lines = self.default_headers()
        lines.extend([f"{name}: {value}\r\n" for name, value in self.headers])
        lines.append("\r\n")
        head = "".join(lines).encode("latin-1")
        self.headers_sent = True  # from here on, as in gunicorn: the response has begun
        if self._head_at_once:
            self.sock.sendall(head)
        else:
            self._head = head

    def _emit_body(self, data: bytes) -> None:
        head, self._head = self._head, None
        if head is None:
            util.write(self.sock, data, self.chunked)
        elif self.chunked:
            self.sock.sendall(b"%s%X\r\n%s\r\n" % (head, len(data), data))
        else:
            self.sock.sendall(head + data)

    def sendfile(self, respiter) -> bool:
        self._head_at_once = True
        return super().sendfile(respiter)

    def close(self) -> None:
        if not self.headers_sent:
            self.send_headers()
        head, self._head = self._head, None
        end = b"0\r\n\r\n" if self.chunked else b""
        if head is not None or end:
            self.sock.sendall((head or b"") + end)
