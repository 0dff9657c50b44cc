"""Request heads parsed by httptools (llhttp, the C parser uvicorn uses) into gunicorn's Request.

Only a plain head takes this way (origin-form target, a common method, HTTP/1.0 or 1.1, CRLF
lines within gunicorn's limits, no folding, no PROXY line); any other, and any head llhttp
refuses, goes to gunicorn's own parser, so what it refuses is refused as before. docs/worker.md.
"""

from __future__ import annotations

import httptools
from gunicorn.http.message import (
    RFC9110_5_3_SINGLETON_FIELDS,
    RFC9110_5_5_INVALID_AND_DANGEROUS,
    RFC9112_TARGET_INVALID,
    TOKEN_RE,
    Request,
)
from gunicorn.http.parser import RequestParser

METHODS = frozenset((b"GET", b"HEAD", b"POST", b"PUT", b"PATCH", b"DELETE", b"OPTIONS"))
VERSIONS = {"1.1": (1, 1), "1.0": (1, 0)}
# Fields whose value gunicorn's header policy acts on (100-continue, 417) beyond the
# repeat check of singleton fields; their heads go through the policy itself.
_POLICY_FIELDS = frozenset(("EXPECT",))


class _Head:
    """httptools' callbacks: the target and the fields, as bytes."""

    __slots__ = ("fields", "url")

    def __init__(self) -> None:
        self.url = b""
        self.fields: list[tuple[bytes, bytes]] = []

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.fields.append((name, value))


class HttptoolsRequest(Request):
    """gunicorn's Request whose plain heads are parsed by httptools; the rest by gunicorn."""

    def parse(self, unreader):
        if self.cfg.proxy_protocol != "off":
            return super().parse(unreader)
        data = unreader.read()
        if not data:
            raise StopIteration()
        rest = self._parse_plain(data)
        if rest is None:
            unreader.unread(data)
            return super().parse(unreader)
        return rest

    def _parse_plain(self, data: bytes) -> bytes | None:
        """Fill method, target, version and headers from a plain head and return what follows
        it; None (nothing set) for any head that is not plain."""
        end = data.find(b"\r\n\r\n")
        line_end = data.find(b"\r\n")
        if end < 0 or line_end <= 0 or line_end > self.limit_request_line > 0:
            return None
        head = data[:end + 2]
        lines = head.count(b"\r\n")
        if head.count(b"\n") != lines or b"\r\n " in head or b"\r\n\t" in head:
            return None  # a bare LF, or obsolete line folding
        fields_limit, field_size = self.limit_request_fields, self.limit_request_field_size
        if lines - 1 >= fields_limit:
            return None
        if field_size > 0 and max(map(len, head[line_end + 2:].split(b"\r\n"))) + 2 > field_size:
            return None
        got = _Head()
        parser = httptools.HttpRequestParser(got)
        try:
            parser.feed_data(data[:end + 4])
        except (httptools.HttpParserError, httptools.HttpParserUpgrade):
            return None
        method, version = parser.get_method(), VERSIONS.get(parser.get_http_version())
        url = got.url
        if method not in METHODS or version is None or len(got.fields) != lines - 1 or \
                data[:line_end] != b"%s %s HTTP/%d.%d" % (method, url, *version) or \
                not url.startswith(b"/") or url.startswith(b"//"):
            return None
        uri = url.decode("latin-1")
        if RFC9112_TARGET_INVALID.search(uri):
            return None
        headers = []
        seen: set[str] = set()
        scheme_state = [False]
        secure, forwarders = self._peer_trusted_for_forwarded()
        policy_for = (_POLICY_FIELDS | set(secure)) if secure else _POLICY_FIELDS
        for raw_name, raw_value in got.fields:
            name = raw_name.decode("latin-1")
            value = raw_value.decode("latin-1").strip(" \t")
            if not TOKEN_RE.fullmatch(name) or RFC9110_5_5_INVALID_AND_DANGEROUS.search(value):
                return None
            headers.append((name.upper(), value))
        self.version = version  # the policy reads it (100-continue in HTTP/1.0)
        kept = []
        for name, value in headers:
            if "_" in name or name in policy_for or name in seen:
                field = self._apply_header_policy(name, value, scheme_state, seen, secure,
                                                  forwarders)
                if field is not None:
                    kept.append(field)
                continue
            if name in RFC9110_5_3_SINGLETON_FIELDS:
                seen.add(name)
            kept.append((name, value))
        target, _, fragment = uri.partition("#")
        path, _, query = target.partition("?")
        self.method = method.decode("ascii")
        self.uri, self.path, self.query, self.fragment = uri, path, query, fragment
        self.headers = kept
        return data[end + 4:]


class HttptoolsRequestParser(RequestParser):
    """gunicorn's request parser making `HttptoolsRequest`s."""

    mesg_class = HttptoolsRequest

