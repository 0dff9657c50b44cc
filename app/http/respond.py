"""The one place that reads request bodies and writes responses.

`decode` turns a JSON or form body into validated parameters (or the contract's 400/413/415
errors); `ok`, `created`, `no_content` and `text` write responses, with an ETag on successful
GETs and 304 for a matching If-None-Match.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import parse_qsl

from flask import Request, Response, request
from marshmallow import Schema
from xxhash import xxh3_128_hexdigest

from app.http.errors import (
    CODES,
    ApiError,
    InvalidParams,
    InvalidRequest,
    NotFound,
    ParamProblem,
    UnsupportedMediaType,
)
from app.http.fields import load_params
from app.http.request_state import request_state

JSON_TYPE = "application/json; charset=utf-8"
TEXT_TYPE = "text/plain; charset=utf-8"
FORM_TYPE = "application/x-www-form-urlencoded"


# Built once: json.dumps with options builds a new encoder on every call.
_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))


def encode_json(value: Any) -> bytes:
    return _ENCODER.encode(value).encode("utf-8")


def read_body(req: Request) -> dict[str, Any]:
    """The request's parameters as a dict: JSON object or form fields; empty body -> {}.

    A body over MAX_CONTENT_LENGTH raises werkzeug's 413 while streaming, which
    the middleware answers as payload_too_large.
    """
    raw = req.get_data(cache=True)
    if not raw:
        return {}
    mimetype = req.mimetype
    if mimetype == "application/json" or mimetype.endswith("+json"):
        try:
            value = json.loads(raw)
        except (ValueError, RecursionError):
            raise InvalidRequest("the body is not valid JSON") from None
        if not isinstance(value, dict):
            raise InvalidRequest("the JSON body must be an object") from None
        return value
    if mimetype == FORM_TYPE:
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidRequest("the form body is not valid UTF-8") from None
        try:
            pairs = parse_qsl(text, keep_blank_values=True, strict_parsing=False,
                              errors="strict", max_num_fields=1000)
        except (ValueError, UnicodeDecodeError):
            raise InvalidRequest("the form body could not be parsed") from None
        return {"__form__": True, **dict(pairs)}
    raise UnsupportedMediaType()


Check = Callable[[dict[str, Any]], list[ParamProblem]]


def validate(schema: Schema, params: Mapping[str, Any], check: Check | None = None
             ) -> dict[str, Any]:
    """Validate parameters against a schema; every problem at once as InvalidParams.

    `check` sees the parameters that passed the schema and returns further
    problems (an unknown animal, a missing mood), reported with the others.
    """
    params = dict(params)
    from_form = params.pop("__form__", False)
    loaded, messages = load_params(schema, params, from_form)
    problems = _problems(messages)
    if check is not None:
        problems += check(loaded)
    if problems:
        raise InvalidParams(problems)
    return loaded


def _problems(messages: Any, prefix: str = "") -> list[ParamProblem]:
    """marshmallow's messages as problems; nested ones (a list of objects) are named by
    path: `lines[3].mood`."""
    problems = []
    if isinstance(messages, dict):
        for name, value in messages.items():
            if name == "_schema" and not prefix:
                for item in _flatten(value):
                    params, _, message = item.partition(":")
                    problems.append(ParamProblem(tuple(params.split(",")), message))
                continue
            if isinstance(name, int):
                path = f"{prefix}[{name}]"
            else:
                path = f"{prefix}.{name}" if prefix else name
            if isinstance(value, dict):
                problems += _problems(value, path)
                continue
            for message in _flatten(value):
                problems.append(ParamProblem((path,), message))
    return problems


def _flatten(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [m for v in value.values() for m in _flatten(v)]
    return [m for v in value for m in _flatten(v)]


def decode(schema: Schema, check: Check | None = None) -> dict[str, Any]:
    """Read and validate the current request's body."""
    return validate(schema, read_body(request), check)


# --- responses ----------------------------------------------------------------------
def _etag(body: bytes, kind: str) -> str:
    """A strong validator: a 128-bit hash of the body, seeded by what kind of body it is.

    XXH3 rather than a hashlib digest: no attacker to resist, much faster, and it keeps the GIL
    for bodies under 64 KiB. See docs/envelope.md ("ETags").
    """
    return f'"{xxh3_128_hexdigest(body, zlib.crc32(kind.encode()))}"'


def _tagged(body: bytes, content_type: str, etag: str) -> Response:
    """200 with the body and its ETag, or 304 with no body when the client has it already."""
    if etag in _if_none_match():
        response = Response(status=304)
    else:
        response = Response(body, status=200, content_type=content_type)
    response.headers["ETag"] = etag
    return response


def _with_etag(body: bytes, content_type: str, status: int, kind: str) -> Response:
    if status == 200 and request_state().environ.get("REQUEST_METHOD") in ("GET", "HEAD"):
        return _tagged(body, content_type, _etag(body, kind))
    return Response(body, status=status, content_type=content_type)


def _if_none_match() -> set[str]:
    header = request_state().environ.get("HTTP_IF_NONE_MATCH")
    if not header:
        return set()
    return {part.strip().removeprefix("W/") for part in header.split(",")}


class Static:
    """A body that never changes, tagged once; served with its ETag, or 304."""

    def __init__(self, body: bytes, content_type: str = JSON_TYPE,
                 headers: Mapping[str, str] | None = None):
        self.body = body
        self.content_type = content_type
        self.headers = dict(headers or {})
        self.etag = _etag(body, content_type)

    @classmethod
    def json(cls, value: Any) -> Static:
        return cls(encode_json(value))

    def response(self) -> Response:
        response = _tagged(self.body, self.content_type, self.etag)
        if self.headers:
            response.headers.update(self.headers)
        return response


def serve_named(assets: Mapping[str, Static]) -> Callable[[str], Response]:
    """A handler for `/<asset>` routes: the named Static body, or 404 for any other name."""

    def handler(asset: str) -> Response:
        static = assets.get(asset)
        if static is None:
            raise NotFound()
        return static.response()

    return handler


def ok(value: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> Response:
    response = _with_etag(encode_json(value), JSON_TYPE, status, "j")
    if headers:
        response.headers.update(headers)
    return response


def ok_encoded(body: bytes) -> Response:
    """ok() for a body that is already JSON (UTF-8)."""
    return _with_etag(body, JSON_TYPE, 200, "j")


def created(value: Any, location: str) -> Response:
    return ok(value, status=201, headers={"Location": location})


def no_content() -> Response:
    return Response(status=204)


def text(body: str) -> Response:
    return _with_etag(body.encode("utf-8"), TEXT_TYPE, 200, "t")


def wants_text() -> bool:
    """True when the client prefers text/plain over JSON."""
    accept = request_state().environ.get("HTTP_ACCEPT")
    if not accept or "text/plain" not in accept:
        return False  # the common case, without parsing the header
    return request.accept_mimetypes.best_match(["application/json", "text/plain"]) == \
        "text/plain"


def error_response(error: ApiError) -> Response:
    """The error's body, with the status and headers its code has in the table of codes."""
    response = Response(encode_json(error.body()), status=CODES[error.code].status,
                        content_type=JSON_TYPE)
    for name, value in error.headers.items():
        response.headers[name] = value
    return response
