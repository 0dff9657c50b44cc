"""Heads parsed by httptools (app/ops/http_head.py) give gunicorn's Request exactly, or are
left to gunicorn's parser: the same fields, or the same refusal, for every head below."""

from __future__ import annotations

import pytest
from gunicorn.config import Config
from gunicorn.http.parser import RequestParser

from app.ops.http_head import HttptoolsRequest, HttptoolsRequestParser

PEER = ("127.0.0.1", 50000)
FIELDS = ("method", "uri", "path", "query", "fragment", "version", "headers", "scheme",
          "_expected_100_continue", "must_close")

HEADS = [
    b"GET /conversations/cv_1 HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer a.b\r\n\r\n",
    b"GET /c?limit=10&starting_after=cv_2#frag HTTP/1.1\r\nHost: x\r\nAccept:  */*  \r\n\r\n",
    b"HEAD / HTTP/1.0\r\n\r\n",
    b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    b"POST /c HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nContent-Type: a/b\r\n\r\n{}",
    b"POST /c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n",
    b"PATCH /c HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n{}",
    b"PUT /c HTTP/1.0\r\nExpect: 100-continue\r\nContent-Length: 0\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: x\r\nExpect: nothing\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: x\r\nContent-Type: a\r\ncontent-type: b\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: x\r\nX_Forwarded_For: 1.2.3.4\r\nX-A: 1\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: x\r\nX-Forwarded-Proto: https\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: x\r\nX-Forwarded-Proto: https\r\nX-Forwarded-Ssl: off\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: x\r\nX-Empty:\r\nX-B: 2\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: x\r\nX-Fold: a\r\n b\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: x\nX-Bare: lf\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost : x\r\n\r\n",
    b"GET / HTTP/1.1\r\nHo\"st: x\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: x\x00y\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: x\x01y\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: caf\xe9\r\n\r\n",
    b"GET  / HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /\tx HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /a b HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /\x7f HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET //evil/x HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET http://x/y HTTP/1.1\r\nHost: x\r\n\r\n",
    b"OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n",
    b"get / HTTP/1.1\r\nHost: x\r\n\r\n",
    b"BREW / HTTP/1.1\r\nHost: x\r\n\r\n",
    b"CONNECT x:443 HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET / HTTP/1.2\r\nHost: x\r\n\r\n",
    b"GET / HTTP/2.0\r\nHost: x\r\n\r\n",
    b"GET / HTTP/1.1 \r\nHost: x\r\n\r\n",
    b"\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
    b"GET /" + b"a" * 5000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"b" * 9000 + b"\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: x\r\n" + b"".join(b"X-%d: v\r\n" % i for i in range(120)) + b"\r\n",
    b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: +1\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
]


def parse(parser_class, data: bytes):
    cfg = Config()
    try:
        req = next(parser_class(cfg, iter([data]), PEER))
        fields = {name: getattr(req, name) for name in FIELDS}
        return fields | {"body": req.body.read()}
    except Exception as exc:  # the refusal, compared by type
        return type(exc).__name__


@pytest.mark.parametrize("data", HEADS, ids=lambda d: repr(d[:40]))
def test_the_same_request_or_the_same_refusal_as_gunicorns_parser(data):
    assert parse(HttptoolsRequestParser, data) == parse(RequestParser, data)


def test_plain_heads_are_parsed_by_httptools(monkeypatch):
    taken = []
    original = HttptoolsRequest._parse_plain

    def spy(self, data):
        rest = original(self, data)
        taken.append(rest is not None)
        return rest

    monkeypatch.setattr(HttptoolsRequest, "_parse_plain", spy)
    for data in HEADS[:9]:
        parse(HttptoolsRequestParser, data)
    assert taken == [True] * 9
    taken.clear()
    for data in (HEADS[16], HEADS[17], HEADS[23], HEADS[27], HEADS[30], HEADS[36]):
        parse(HttptoolsRequestParser, data)
    assert taken == [False] * 6
