"""bench/crowd.py: a watched stream's body is read through HTTP/1.1 chunked framing, however
the reads cut it (a chunk size line in the middle of an event once hid the event)."""

from __future__ import annotations

import socket

from bench.crowd import _Stream


def test_chunked_framing_is_removed_whatever_the_reads_cut():
    messages = b'id: evt_1\nevent: line.created\ndata: {"a":1}\n\n' * 3
    framed = b"%x\r\n" % len(messages) + messages + b"\r\n" + b"5\r\nhello\r\n"
    for step in (1, 2, 7, 64, len(framed)):
        with socket.socket() as sock:
            stream = _Stream(sock, b"", True, 0)
            stream.chunked = True
            out = b"".join(stream.decode(framed[n:n + step])
                           for n in range(0, len(framed), step))
        assert out == messages + b"hello", step
