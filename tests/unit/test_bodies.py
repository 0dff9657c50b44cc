"""BodyScan: when a request's body has arrived whole, from its head and the bytes so far."""

from __future__ import annotations

import pytest

from app.ops.bodies import AS_IS, COMPLETE, TOO_LARGE, WAIT, BodyScan

POST = b"POST /users HTTP/1.1\r\nHost: x"


def feed(head: bytes, pieces: list[bytes], max_body: int = 100) -> list[int]:
    """The scan's outcome after each piece, as the worker's main loop sees them."""
    scan = BodyScan(head, max_body)
    received = bytearray(head + b"\r\n\r\n")
    start, outcomes = len(received), []
    for piece in pieces:
        received += piece
        outcomes.append(scan.scan(received, start))
    return outcomes


def test_content_length_waits_for_every_byte():
    head = POST + b"\r\nContent-Length: 10"
    assert feed(head, [b"12345", b"6789", b"0GET / HTTP/1.1"]) == [WAIT, WAIT, COMPLETE]


def test_content_length_over_the_limit_is_too_large_at_once():
    assert feed(POST + b"\r\ncontent-length: 101", [b""]) == [TOO_LARGE]


@pytest.mark.parametrize("head", [
    POST,  # no body
    POST + b"\r\nContent-Length: 0",
    POST + b"\r\nContent-Length: 5\r\nContent-Length: 5",
    POST + b"\r\nContent-Length: +5",
    POST + b"\r\nContent-Length: 5\r\nTransfer-Encoding: chunked",
    POST + b"\r\nTransfer-Encoding: gzip",
    POST + b"\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked",
    b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked",
    POST + b"\r\nno colon here",
])
def test_no_body_or_framing_gunicorn_refuses_goes_as_it_is(head):
    assert feed(head, [b"abc"]) == [AS_IS]


def test_chunked_body_complete_after_the_last_chunk_and_trailers():
    head = POST + b"\r\nTransfer-Encoding: gzip, Chunked"
    assert feed(head, [b"5\r\nhel", b"lo\r\n3;x=\"y\"\r\nabc\r\n0\r\n", b"X-T: 1\r\n",
                       b"\r\n"]) == [WAIT, WAIT, WAIT, COMPLETE]
    assert feed(head, [b"0\r", b"\n\r\n"]) == [WAIT, COMPLETE]


def test_chunked_data_over_the_limit_is_too_large_once_it_has_arrived():
    head = POST + b"\r\nTransfer-Encoding: chunked"
    assert feed(head, [b"60\r\n" + b"a" * 0x60 + b"\r\n", b"10\r\n", b"a" * 4, b"a" * 0x10]
                ) == [WAIT, WAIT, WAIT, TOO_LARGE]


def test_chunked_framing_larger_than_its_allowance_is_too_large():
    head = POST + b"\r\nTransfer-Encoding: chunked"
    extension = b"1;" + b"e" * 4000 + b"\r\na\r\n"
    outcomes = feed(head, [extension] * 40, max_body=100)
    assert outcomes[-1] == TOO_LARGE and WAIT in outcomes


@pytest.mark.parametrize("body", [b"zz\r\n", b"5\r\nhelloXX", b"5\r\n" + b"x" * 9000])
def test_malformed_chunks_go_to_gunicorn_as_they_are(body):
    assert feed(POST + b"\r\nTransfer-Encoding: chunked", [body], max_body=100000) == [AS_IS]


def test_expect_100_continue_only_on_http_1_1():
    assert BodyScan(POST + b"\r\nContent-Length: 3\r\nExpect: 100-Continue", 10).expects_continue
    assert not BodyScan(b"POST / HTTP/1.0\r\nContent-Length: 3\r\nExpect: 100-continue",
                        10).expects_continue
