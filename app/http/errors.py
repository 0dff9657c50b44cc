"""The API's errors: the contract's table of codes, the errors as values, and the domain's mapping.

`CODES` gives each code its status and how its message, `data` and headers are built from
the error's own fields; `DOMAIN_ERRORS` says how each domain refusal reads to a client, so no
handler translates one itself. See docs/envelope.md ("Errors").
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, cast

from app.domain.errors import (
    ConversationMissing,
    CursorNotFound,
    DomainError,
    EmailTaken,
    LimitReached,
    MoodInUse,
    MoodMissing,
    UserGone,
    WriteRaced,
)
from app.domain.pages import MAX_LIMIT


@dataclass(frozen=True)
class ParamProblem:
    """One invalid parameter (or group of parameters) and what is wrong with it."""

    params: tuple[str, ...]
    message: str


_FIELDS_AS_DATA: Any = object()  # ErrorCode.data's default: {field: value, ...}


@dataclass(frozen=True, slots=True)
class ErrorCode:
    """One row of API.md's error table.

    `message` and the values of `headers` are str.format templates over the
    error's fields (a list or tuple reads as its items joined by ", "), or a
    function of the error. `data` is a function of the error, None for no
    `data`, or by default the fields as an object. `convert` normalises a
    field as the error is made; `defaults` are the fields a caller may omit.
    """

    code: str
    status: int
    name: str  # the constructor's name: InvalidParams
    fields: tuple[str, ...]
    message: str | Callable[[Any], str]
    headers: Mapping[str, str] = field(default_factory=dict)
    data: Callable[[Any], Any] | None = _FIELDS_AS_DATA
    convert: Mapping[str, Callable[[Any], Any]] = field(default_factory=dict)
    defaults: Mapping[str, Any] = field(default_factory=dict)
    when: str = ""
    data_schema: Mapping[str, Any] | None = None
    example: Callable[[Any, Any], Any] = lambda error, config: error()


def _text(value: Any) -> str:
    return ", ".join(value) if isinstance(value, list | tuple) else str(value)


def _format(template: str | Callable[[Any], str], error: ApiError) -> str:
    if not isinstance(template, str):
        return template(error)
    return template.format_map({name: _text(getattr(error, name))
                                for name in CODES[error.code].fields})


def _whole_seconds(seconds: float) -> int:
    return max(1, math.ceil(seconds))


def _params_message(error: Any) -> str:
    return " ".join(
        f"Parameter {', '.join(f'`{p}`' for p in problem.params)} {problem.message}."
        for problem in error.problems)


def _natural(params: tuple[str, ...]) -> tuple[tuple[Any, ...], ...]:
    """A sort key that puts `lines[2].mood` before `lines[10].mood`."""
    return tuple(tuple(int(part) if i % 2 else part  # split() puts the numbers at odd places
                       for i, part in enumerate(re.split(r"([0-9]+)", name)))
                 for name in params)


def _params_data(error: Any) -> list[dict[str, Any]]:
    return [{"params": list(p.params), "message": p.message} for p in error.problems]


SUPPORTED_MEDIA_TYPES = ("application/json", "application/x-www-form-urlencoded")
_RETRY: dict[str, Any] = {"convert": {"retry_after": _whole_seconds},
                          "headers": {"Retry-After": "{retry_after}"}}
_RETRY_DATA = {"type": "object", "required": ["retry_after"], "additionalProperties": False,
               "properties": {"retry_after": {"type": "integer", "minimum": 1}}}

CODES: dict[str, ErrorCode] = {row.code: row for row in (
    ErrorCode("invalid_request", 400, "InvalidRequest", ("reason",),
              "The request could not be read: {reason}.",
              when="the body does not parse, or its JSON is not an object",
              data_schema={"type": "object", "required": ["reason"],
                           "additionalProperties": False,
                           "properties": {"reason": {"type": "string"}}},
              example=lambda error, config: error("the body is not valid JSON")),
    ErrorCode("invalid_params", 400, "InvalidParams", ("problems",), _params_message,
              data=_params_data,
              convert={"problems": lambda problems: sorted(problems,
                                                        key=lambda p: _natural(p.params))},
              when="parameters are invalid; `data` lists every problem at once",
              data_schema={"type": "array", "minItems": 1, "items": {
                  "type": "object", "required": ["params", "message"],
                  "additionalProperties": False,
                  "properties": {"params": {"type": "array", "minItems": 1,
                                            "items": {"type": "string"}},
                                 "message": {"type": "string"}}}},
              example=lambda error, config: error.one(
                  "limit", f"must be an integer between 1 and {MAX_LIMIT}")),
    ErrorCode("auth_required", 401, "AuthRequired", (),
              "This endpoint requires a bearer token in the Authorization header.",
              headers={"WWW-Authenticate": "Bearer"},
              when="no `Authorization: Bearer` header"),
    ErrorCode("auth_invalid", 401, "AuthInvalid", (), "The bearer token is not valid.",
              headers={"WWW-Authenticate": 'Bearer error="invalid_token"'},
              when="the token is unknown, malformed or forged, or its user was deleted"),
    ErrorCode("not_found", 404, "NotFound", (), "The requested resource does not exist.",
              when="nothing of yours is at this path (another user's object and a malformed "
                   "id are not found too)"),
    ErrorCode("method_not_allowed", 405, "MethodNotAllowed", ("allowed",),
              "This endpoint only allows {allowed}.", headers={"Allow": "{allowed}"},
              convert={"allowed": sorted},
              when="the path exists but not with this method",
              data_schema={"type": "object", "required": ["allowed"],
                           "additionalProperties": False,
                           "properties": {"allowed": {"type": "array",
                                                      "items": {"type": "string"}}}},
              example=lambda error, config: error(["GET", "POST"])),
    ErrorCode("action_not_allowed", 409, "ActionNotAllowed", ("action",),
              "You may not {action}.",
              when="a rule refuses the action named in `data.action`",
              data_schema={"type": "object", "required": ["action"],
                           "additionalProperties": False,
                           "properties": {"action": {"type": "string"}}},
              example=lambda error, config: error(
                  f"create more than {config.max_conversations_per_user} conversations")),
    ErrorCode("idempotency_key_in_use", 409, "IdempotencyKeyInUse", (),
              "A request with this idempotency key is still being processed; retry later.",
              when="the first request with this `Idempotency-Key` is still running; "
                   "retry later"),
    ErrorCode("idempotency_key_reused", 422, "IdempotencyKeyReused", (),
              "This idempotency key was already used with a different method, path or "
              "parameters.",
              when="this `Idempotency-Key` was used with a different method, path or "
                   "parameters"),
    ErrorCode("payload_too_large", 413, "PayloadTooLarge", ("max_bytes",),
              "The request body must not exceed {max_bytes} bytes.",
              when="the body is larger than `MAX_BODY_BYTES`",
              data_schema={"type": "object", "required": ["max_bytes"],
                           "additionalProperties": False,
                           "properties": {"max_bytes": {"type": "integer", "minimum": 0}}},
              example=lambda error, config: error(config.max_body_bytes)),
    ErrorCode("unsupported_media_type", 415, "UnsupportedMediaType", ("supported",),
              "The request body must be one of: {supported}.",
              convert={"supported": list}, defaults={"supported": SUPPORTED_MEDIA_TYPES},
              when="a non-empty body that is neither JSON nor a form",
              data_schema={"type": "object", "required": ["supported"],
                           "additionalProperties": False,
                           "properties": {"supported": {"type": "array",
                                                        "items": {"type": "string"}}}}),
    ErrorCode("rate_limited", 429, "RateLimited", ("retry_after",),
              "Too many requests; retry after {retry_after} seconds.", **_RETRY,
              when="the rate limit is exceeded; retry after `Retry-After` seconds",
              data_schema=_RETRY_DATA, example=lambda error, config: error(12)),
    ErrorCode("internal_failure", 500, "InternalFailure", (),
              "An internal error occurred; it has been logged under this request's id.",
              when="an unexpected failure; details are only in the log, under the "
                   "response's `X-Request-ID`"),
    ErrorCode("service_unavailable", 503, "ServiceUnavailable", ("retry_after",),
              "The service is temporarily unavailable; retry after {retry_after} seconds.",
              defaults={"retry_after": 1}, **_RETRY,
              when="the database is unreachable, the connection pool stayed exhausted, "
                   "or the server is shutting down; retry after `Retry-After` seconds",
              data_schema=_RETRY_DATA, example=lambda error, config: error(1)),
)}


class ApiError(Exception):
    """A user-visible error: a code of CODES and the fields its row builds the body from.

    Made through the constructors below, one per code, whose positional and
    keyword arguments are the row's fields. `status`, `message`, `data` and
    `headers` are read from the row.
    """

    code: str
    status: int  # CODES[code].status, on the class too (for the OpenAPI description)
    when: str  # when it happens, for the OpenAPI description
    data_schema: Mapping[str, Any] | None  # JSON Schema of `data`; None: no `data`

    def __init__(self, *args: Any, **kwargs: Any):
        row = CODES[self.code]
        if len(args) > len(row.fields):
            raise TypeError(f"{row.name} takes the fields {row.fields}, got {args!r}")
        given = {**dict(zip(row.fields, args, strict=False)), **kwargs}
        unknown = set(given) - set(row.fields)
        if unknown:
            raise TypeError(f"{row.name} has no field {', '.join(sorted(unknown))}")
        values = []
        for name in row.fields:
            if name in given:
                value = given[name]
            elif name in row.defaults:
                value = row.defaults[name]
            else:
                raise TypeError(f"{row.name} needs the field {name}")
            convert = row.convert.get(name)
            value = convert(value) if convert is not None else value
            setattr(self, name, value)
            values.append(value)
        super().__init__(*values)

    @property
    def message(self) -> str:
        return _format(CODES[self.code].message, self)

    @property
    def data(self) -> Any:
        row = CODES[self.code]
        if row.data is _FIELDS_AS_DATA:
            return {name: getattr(self, name) for name in row.fields} if row.fields else None
        return row.data(self) if row.data is not None else None

    @property
    def headers(self) -> dict[str, str]:
        return {name: _format(value, self) for name, value in CODES[self.code].headers.items()}

    def body(self) -> dict[str, Any]:
        body: dict[str, Any] = {"code": self.code, "message": self.message}
        data = self.data
        if data is not None:
            body["data"] = data
        return body

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"

    @classmethod
    def example(cls, config: Any) -> ApiError:
        """An instance for the OpenAPI document, with this server's limits."""
        return CODES[cls.code].example(cls, config)


def _constructor(code: str, base: type[ApiError] = ApiError) -> type[ApiError]:
    row = CODES[code]
    namespace = {"code": code, "status": row.status, "when": row.when,
                 "data_schema": row.data_schema, "__module__": __name__,
                 "__qualname__": row.name, "__doc__": f"`{code}`, {row.status}."}
    return type(row.name, (base,), namespace)


class ParamsError(ApiError):
    """What InvalidParams adds to an ApiError: its typed field, and `one`."""

    problems: list[ParamProblem]

    @classmethod
    def one(cls, param: str, message: str) -> ParamsError:
        """One problem with one parameter."""
        return cls([ParamProblem((param,), message)])


InvalidRequest = _constructor("invalid_request")
InvalidParams = cast("type[ParamsError]", _constructor("invalid_params", ParamsError))
AuthRequired = _constructor("auth_required")
AuthInvalid = _constructor("auth_invalid")
NotFound = _constructor("not_found")
MethodNotAllowed = _constructor("method_not_allowed")
ActionNotAllowed = _constructor("action_not_allowed")
IdempotencyKeyInUse = _constructor("idempotency_key_in_use")
IdempotencyKeyReused = _constructor("idempotency_key_reused")
PayloadTooLarge = _constructor("payload_too_large")
UnsupportedMediaType = _constructor("unsupported_media_type")
RateLimited = _constructor("rate_limited")
InternalFailure = _constructor("internal_failure")
ServiceUnavailable = _constructor("service_unavailable")

ALL_ERRORS: tuple[type[ApiError], ...] = (
    InvalidRequest, InvalidParams, AuthRequired, AuthInvalid, NotFound, MethodNotAllowed,
    ActionNotAllowed, IdempotencyKeyInUse, IdempotencyKeyReused, PayloadTooLarge,
    UnsupportedMediaType, RateLimited, InternalFailure, ServiceUnavailable,
)
assert [e.code for e in ALL_ERRORS] == list(CODES), "one constructor per code, in table order"


# --- the domain's refusals, as the client reads them ---------------------------------------
MOOD_MISSING = "must name a built-in mood or one of yours"
CURSOR_MISSING = "must refer to an existing object"
LIMIT_ACTIONS = {
    LimitReached.CONVERSATIONS: "create more than {cap} conversations",
    LimitReached.MOODS: "create more than {cap} moods",
    LimitReached.LINES: "add more than {cap} lines to a conversation",
    LimitReached.WEBHOOK_ENDPOINTS: "create more than {cap} webhook endpoints",
}


def _mood_in_use(error: MoodInUse) -> ApiError:
    noun = "line" if error.count == 1 else "lines"
    return ActionNotAllowed(f"delete a mood associated with {error.count} conversation {noun}")


def _mood_missing(error: MoodMissing) -> ApiError:
    """A line's `mood`, or the elements of a `lines` list whose mood is missing."""
    if not error.positions:
        return InvalidParams.one("mood", MOOD_MISSING)
    return InvalidParams([ParamProblem((f"lines[{i}].mood",), MOOD_MISSING)
                          for i in error.positions])


DOMAIN_ERRORS: dict[type[DomainError], Callable[[Any], ApiError]] = {
    UserGone: lambda _: AuthInvalid(),  # the token's user was deleted
    ConversationMissing: lambda _: NotFound(),
    MoodMissing: _mood_missing,
    LimitReached: lambda e: ActionNotAllowed(LIMIT_ACTIONS[e.kind].format(cap=e.cap)),
    MoodInUse: _mood_in_use,
    EmailTaken: lambda e: ActionNotAllowed(f"use email {e.email}, which is already registered"),
    CursorNotFound: lambda e: InvalidParams.one(e.param, CURSOR_MISSING),
    # Raced twice in a row (a unit of work is run again once): nothing was written.
    WriteRaced: lambda _: ServiceUnavailable(retry_after=1),
}


def from_domain(error: DomainError) -> ApiError:
    """The API error a domain refusal is answered with."""
    return DOMAIN_ERRORS[type(error)](error)


def api_error(error: ApiError | DomainError) -> ApiError:
    """An API error as it is; a domain refusal as DOMAIN_ERRORS reads it."""
    return error if isinstance(error, ApiError) else from_domain(error)
