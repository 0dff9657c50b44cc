"""Request heads parsed by httptools (llhttp, the C parser uvicorn uses) into gunicorn's Request.

Only a plain head takes this way (origin-form target, a common method, HTTP/1.0 or 1.1, CRLF
lines within gunicorn's limits, no folding, no PROXY line); any other, and any head llhttp
refuses, goes to gunicorn's own parser, so what it refuses is refused as before. docs/worker.md.
"""

from __future__ import annotations

import re

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
# Fields whose value gunicorn's header policy acts on (100-continue, 417) beyond the
# repeat check of singleton fields; their heads go through the policy itself.
_POLICY_FIELDS = frozenset(("EXPECT",))


# Header lines as gunicorn's parser accepts them: a token name right before the colon, a
# value without control characters but HTAB (gunicorn's TOKEN_RE and
# RFC9110_5_5_INVALID_AND_DANGEROUS, checked here in one pass over all the lines).
_INVALID_VALUE = RFC9110_5_5_INVALID_AND_DANGEROUS.pattern
assert _INVALID_VALUE.startswith("[") and _INVALID_VALUE.endswith("]")  # one character class
HEADER_LINES = re.compile(f"(?:{TOKEN_RE.pattern}:[^{_INVALID_VALUE[1:]}*\\r\\n)*")
# httptools validates without calling back: the head is split here, once it passed.
_NO_CALLBACKS = object()


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
        head = data[:end + 2].decode("latin-1")
        lines = head.split("\r\n")
        lines.pop()  # after the last CRLF
        if len(lines) > self.limit_request_fields or head.count("\n") != len(lines) \
                or not HEADER_LINES.fullmatch(head, line_end + 2):
            return None  # too many fields, a bare LF, a folded line or an odd one
        field_size = self.limit_request_field_size
        if field_size > 0 and max(map(len, lines)) + 2 > field_size and \
                max(map(len, lines[1:]), default=0) + 2 > field_size:
            return None
        parts = lines[0].split(" ")
        if len(parts) != 3 or parts[0].encode() not in METHODS or \
                parts[2] not in ("HTTP/1.1", "HTTP/1.0"):
            return None
        method, uri, version_text = parts
        if not uri.startswith("/") or uri.startswith("//") or RFC9112_TARGET_INVALID.search(uri):
            return None
        try:
            httptools.HttpRequestParser(_NO_CALLBACKS).feed_data(data[:end + 4])
        except (httptools.HttpParserError, httptools.HttpParserUpgrade):
            return None
        self.version = (1, 1) if version_text == "HTTP/1.1" else (1, 0)
        secure = self.cfg.secure_scheme_headers
        headers = []
        seen: set[str] = set()
        trust = None
        for line in lines[1:]:
            name, _, value = line.partition(":")
            name = name.upper()
            value = value.strip(" \t")
            if "_" in name or name in secure or name in _POLICY_FIELDS or name in seen:
                if trust is None:
                    trust = (self._peer_trusted_for_forwarded(), [False])
                (trusted_secure, forwarders), scheme_state = trust
                field = self._apply_header_policy(name, value, scheme_state, seen,
                                                  trusted_secure, forwarders)
                if field is not None:
                    headers.append(field)
                continue
            if name in RFC9110_5_3_SINGLETON_FIELDS:
                seen.add(name)
            headers.append((name, value))
        target, _, fragment = uri.partition("#")
        path, _, query = target.partition("?")
        self.method = method
        self.uri, self.path, self.query, self.fragment = uri, path, query, fragment
        self.headers = headers
        return data[end + 4:]


class HttptoolsRequestParser(RequestParser):
    """gunicorn's request parser making `HttptoolsRequest`s."""

    mesg_class = HttptoolsRequest

