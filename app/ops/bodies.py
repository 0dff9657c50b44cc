"""Whether a request's body has arrived whole, from its head and the bytes received so far.

The worker's main loop uses it to buffer a body before any thread reads it:
`Content-Length` and chunked framing are followed without decoding anything.
"""

from __future__ import annotations

import re

# Outcomes of `BodyScan.scan`.
WAIT, COMPLETE, TOO_LARGE, AS_IS = range(4)

_HEX = re.compile(rb"[0-9a-fA-F]+")
# Most requests have no body: one search in C tells them apart.
_BODY_FIELDS = re.compile(rb"\r\n(?:content-length|transfer-encoding):", re.IGNORECASE)
#: Longest chunk-size line (with extensions) and trailer section followed
#: here; longer ones go to gunicorn's parser, which refuses them.
MAX_CHUNK_LINE = 8190
MAX_TRAILERS = 8190 * 32


class BodyScan:
    """The framing of one request's body, and how far its bytes have arrived.

    `kind` is None with no body, or a framing gunicorn refuses from the head alone. A chunked
    body is too large past `max_body` of data, or twice that plus 64 KiB kept. See docs/worker.md.
    """

    __slots__ = (
        "_data",
        "_next_chunk",
        "expects_continue",
        "kind",
        "length",
        "max_body",
        "max_raw",
    )

    def __init__(self, head: bytes | bytearray, max_body: int):
        self.max_body = max_body
        self.max_raw = 2 * max_body + 65536
        self.kind, self.length, self.expects_continue = _framing(head)
        self._next_chunk = 0  # where the next chunk-size line starts in what was received
        self._data = 0  # data bytes of the chunks before it

    def scan(self, received: bytes | bytearray, start: int) -> int:
        """WAIT, COMPLETE, TOO_LARGE or AS_IS; the body is `received[start:]`, so far."""
        if self.kind is None:
            return AS_IS
        if self.kind == "length":
            if self.length > self.max_body:
                return TOO_LARGE
            return COMPLETE if len(received) - start >= self.length else WAIT
        if self._next_chunk < start:
            self._next_chunk = start
        return self._scan_chunked(received, start)

    def _scan_chunked(self, buf: bytes | bytearray, start: int) -> int:
        pos = self._next_chunk
        while True:
            eol = buf.find(b"\r\n", pos, pos + MAX_CHUNK_LINE + 2)
            if eol < 0:
                if len(buf) - pos > MAX_CHUNK_LINE:
                    return AS_IS  # gunicorn refuses the overlong line
                return self._wait(buf, start)
            size_text = bytes(buf[pos:eol]).split(b";", 1)[0].rstrip(b" \t")
            if not _HEX.fullmatch(size_text):
                return AS_IS  # malformed: gunicorn refuses it, reading nothing more
            size = int(size_text, 16)
            if size == 0:
                return self._scan_trailers(buf, start, eol + 2)
            if self._data + size > self.max_body:
                # Refused once more than max_body has arrived: a client that sends
                # less than it announced has a malformed body, not a large one.
                arrived = min(size, len(buf) - eol - 2)
                if self._data + arrived > self.max_body:
                    return TOO_LARGE
                return self._wait(buf, start)
            end = eol + 2 + size
            if len(buf) < end + 2:
                return self._wait(buf, start)
            if buf[end:end + 2] != b"\r\n":
                return AS_IS
            self._data += size
            pos = self._next_chunk = end + 2

    def _scan_trailers(self, buf: bytes | bytearray, start: int, at: int) -> int:
        if buf[at:at + 2] == b"\r\n" or buf.find(b"\r\n\r\n", at) >= 0:
            return COMPLETE
        if len(buf) - at > MAX_TRAILERS:
            return AS_IS
        return self._wait(buf, start)

    def _wait(self, buf: bytes | bytearray, start: int) -> int:
        return TOO_LARGE if len(buf) - start > self.max_raw else WAIT


def _framing(head: bytes | bytearray) -> tuple[str | None, int, bool]:
    """("length", n, expects 100-continue), ("chunked", 0, ...) or (None, 0, False)."""
    if not _BODY_FIELDS.search(head):
        return None, 0, False
    lines = bytes(head).split(b"\r\n")
    http11 = lines[0].endswith(b" HTTP/1.1")
    length = coding = None
    expects_continue = False
    for line in lines[1:]:
        name, sep, value = line.partition(b":")
        if not sep:
            return None, 0, False
        name = name.lower()
        if name == b"content-length":
            if length is not None:
                return None, 0, False
            length = value.strip(b" \t")
        elif name == b"transfer-encoding":
            if coding is not None:
                return None, 0, False
            coding = value
        elif name == b"expect":
            expects_continue = http11 and value.strip(b" \t").lower() == b"100-continue"
    if coding is not None:
        last = coding.rsplit(b",", 1)[-1].strip(b" \t").lower()
        if length is not None or last != b"chunked" or not http11:
            return None, 0, False
        return "chunked", 0, expects_continue
    if length is None:
        return None, 0, False
    if not (length.isdigit() and length.isascii()):
        return None, 0, False
    n = int(length)
    return ("length", n, expects_continue) if n else (None, 0, False)
