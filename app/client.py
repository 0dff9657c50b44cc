"""A small typed Python client for the SayPI API.

Built on httpx rather than requests, for its typing and explicit timeouts. One method per
endpoint; `iter_*` methods walk every page; errors are raised as typed exceptions carrying
the contract's code and data.
"""

from __future__ import annotations

import json as _json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, TypedDict
from urllib.parse import quote

import httpx


class User(TypedDict, total=False):
    id: str
    name: str | None
    email: str | None
    created_at: str
    token: str  # only when created


class Mood(TypedDict):
    name: str
    eyes: str
    tongue: str
    user_defined: bool


class Line(TypedDict):
    id: str
    animal: str
    think: bool
    mood: str
    text: str
    output: str
    created_at: str


class Conversation(TypedDict, total=False):
    id: str
    heading: str
    created_at: str
    lines: list[Line]


class Event(TypedDict):
    id: str  # sorts in the order the changes committed
    type: str  # line.created, conversation.deleted, ...
    created_at: str
    conversation: str | None
    data: dict[str, Any]  # {"object": the object after the change (before, for a deletion)}


class WebhookEndpoint(TypedDict, total=False):
    id: str  # we_...
    url: str
    events: list[str]
    description: str | None
    disabled: bool
    disabled_reason: str | None
    created_at: str
    secret: str  # whsec_...: only when created or rotated


class WebhookDelivery(TypedDict):
    id: str  # wd_...
    event: str  # the event id, sent as webhook-id
    attempt: int
    status: str  # pending, succeeded or failed
    response_status: int | None
    error: str | None
    duration_ms: int | None
    next_attempt_at: str | None
    created_at: str


@dataclass(frozen=True)
class Page:
    type: str
    has_more: bool
    data: list[dict[str, Any]]


# --- errors ---------------------------------------------------------------------------
class SayPIError(Exception):
    """An error response from SayPI: its status, code, message, data and headers."""

    code = "unknown"

    def __init__(self, status: int, code: str, message: str, data: Any,
                 headers: httpx.Headers):
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.data = data
        self.headers = headers


class InvalidRequestError(SayPIError):
    code = "invalid_request"


class InvalidParamsError(SayPIError):
    code = "invalid_params"

    @property
    def params(self) -> set[str]:
        return {p for problem in self.data or [] for p in problem["params"]}


class AuthRequiredError(SayPIError):
    code = "auth_required"


class AuthInvalidError(SayPIError):
    code = "auth_invalid"


class NotFoundError(SayPIError):
    code = "not_found"


class MethodNotAllowedError(SayPIError):
    code = "method_not_allowed"


class ActionNotAllowedError(SayPIError):
    code = "action_not_allowed"


class IdempotencyKeyInUseError(SayPIError):
    code = "idempotency_key_in_use"


class IdempotencyKeyReusedError(SayPIError):
    code = "idempotency_key_reused"


class PayloadTooLargeError(SayPIError):
    code = "payload_too_large"


class UnsupportedMediaTypeError(SayPIError):
    code = "unsupported_media_type"


class RateLimitedError(SayPIError):
    code = "rate_limited"


class InternalFailureError(SayPIError):
    code = "internal_failure"


class ServiceUnavailableError(SayPIError):
    code = "service_unavailable"


ERRORS: dict[str, type[SayPIError]] = {
    cls.code: cls for cls in (
        InvalidRequestError, InvalidParamsError, AuthRequiredError, AuthInvalidError,
        NotFoundError, MethodNotAllowedError, ActionNotAllowedError,
        IdempotencyKeyInUseError, IdempotencyKeyReusedError, PayloadTooLargeError,
        UnsupportedMediaTypeError, RateLimitedError, InternalFailureError,
        ServiceUnavailableError)
}


def _raise_for(response: httpx.Response) -> None:
    if response.status_code < 400:
        return
    try:
        body = response.json()
        code, message, data = body["code"], body["message"], body.get("data")
    except (ValueError, KeyError, TypeError):
        code, message, data = "unknown", response.text[:200], None
    raise ERRORS.get(code, SayPIError)(response.status_code, code, message, data,
                                        response.headers)


# --- client ---------------------------------------------------------------------------
class Client:
    """One caller of the API; `token` authenticates every request but create_user."""

    def __init__(self, base_url: str, token: str | None = None, timeout: float = 10.0,
                 http: httpx.Client | None = None):
        self.base_url = base_url.rstrip("/")
        self.token = token
        self.http = http or httpx.Client(base_url=self.base_url, timeout=timeout)
        self.last_response: httpx.Response | None = None

    def with_token(self, token: str) -> Client:
        """A client for another user, sharing this one's connections."""
        return Client(self.base_url, token, http=self.http)

    def close(self) -> None:
        self.http.close()

    # --- transport ---
    def request(self, method: str, path: str, *, json: Any = None,
                params: dict[str, Any] | None = None, headers: dict[str, str] | None = None,
                content: bytes | str | None = None) -> httpx.Response:
        """Send a request and return the raw response (no error raised)."""
        all_headers = {}
        if self.token:
            all_headers["Authorization"] = f"Bearer {self.token}"
        all_headers.update(headers or {})
        response = self.http.request(method, path, json=json, params=params,
                                     headers=all_headers, content=content)
        self.last_response = response
        return response

    def _call(self, method: str, path: str, *, json: Any = None,
              params: dict[str, Any] | None = None, headers: dict[str, str] | None = None,
              idempotency_key: str | None = None) -> Any:
        headers = dict(headers or {})
        if idempotency_key is not None:
            headers["Idempotency-Key"] = idempotency_key
        response = self.request(method, path, json=json, params=params, headers=headers)
        _raise_for(response)
        if response.status_code == 204:
            return None
        if response.headers.get("content-type", "").startswith("text/plain"):
            return response.text
        return response.json()

    def _page(self, path: str, limit: int | None, starting_after: str | None,
              ending_before: str | None) -> Page:
        params = {k: v for k, v in (("limit", limit), ("starting_after", starting_after),
                                    ("ending_before", ending_before)) if v is not None}
        body = self._call("GET", path, params=params)
        return Page(body["type"], body["has_more"], body["data"])

    def _iterate(self, path: str, key: str, limit: int) -> Iterator[Any]:
        after = None
        while True:
            page = self._page(path, limit, after, None)
            yield from page.data
            if not page.has_more or not page.data:
                return
            after = page.data[-1][key]

    # --- users ---
    def create_user(self, name: str | None = None, email: str | None = None,
                    idempotency_key: str | None = None) -> User:
        body = {k: v for k, v in (("name", name), ("email", email)) if v is not None}
        return self._call("POST", "/users", json=body, idempotency_key=idempotency_key)

    def get_user(self, user_id: str) -> User:
        return self._call("GET", f"/users/{user_id}")

    def update_user(self, user_id: str, **changes: str | None) -> User:
        return self._call("PATCH", f"/users/{user_id}", json=changes)

    def delete_user(self, user_id: str) -> None:
        self._call("DELETE", f"/users/{user_id}")

    # --- animals ---
    def list_animals(self) -> list[str]:
        return self._call("GET", "/animals")["animals"]

    # --- moods ---
    def list_moods(self, limit: int | None = None, starting_after: str | None = None,
                   ending_before: str | None = None) -> Page:
        return self._page("/moods", limit, starting_after, ending_before)

    def iter_moods(self, page_size: int = 100) -> Iterator[Mood]:
        return self._iterate("/moods", "name", page_size)

    def get_mood(self, name: str) -> Mood:
        return self._call("GET", f"/moods/{quote(name, safe='')}")

    def put_mood(self, name: str, eyes: str | None = None, tongue: str | None = None) -> Mood:
        body = {k: v for k, v in (("eyes", eyes), ("tongue", tongue)) if v is not None}
        return self._call("PUT", f"/moods/{quote(name, safe='')}", json=body)

    def delete_mood(self, name: str) -> None:
        self._call("DELETE", f"/moods/{quote(name, safe='')}")

    # --- conversations ---
    def list_conversations(self, limit: int | None = None, starting_after: str | None = None,
                           ending_before: str | None = None) -> Page:
        return self._page("/conversations", limit, starting_after, ending_before)

    def iter_conversations(self, page_size: int = 100) -> Iterator[Conversation]:
        return self._iterate("/conversations", "id", page_size)

    def create_conversation(self, heading: str, lines: list[dict[str, Any]] | None = None,
                            idempotency_key: str | None = None) -> Conversation:
        """A new conversation; `lines` (line parameters) are created with it, atomically."""
        body: dict[str, Any] = {"heading": heading}
        if lines is not None:
            body["lines"] = lines
        return self._call("POST", "/conversations", json=body, idempotency_key=idempotency_key)

    def get_conversation(self, conversation_id: str) -> Conversation:
        return self._call("GET", f"/conversations/{conversation_id}")

    def get_conversation_text(self, conversation_id: str) -> str:
        return self._call("GET", f"/conversations/{conversation_id}",
                          headers={"Accept": "text/plain"})

    def update_conversation(self, conversation_id: str, heading: str) -> Conversation:
        return self._call("PATCH", f"/conversations/{conversation_id}",
                          json={"heading": heading})

    def delete_conversation(self, conversation_id: str) -> None:
        self._call("DELETE", f"/conversations/{conversation_id}")

    # --- lines ---
    def list_lines(self, conversation_id: str, limit: int | None = None,
                   starting_after: str | None = None,
                   ending_before: str | None = None) -> Page:
        return self._page(f"/conversations/{conversation_id}/lines", limit, starting_after,
                          ending_before)

    def iter_lines(self, conversation_id: str, page_size: int = 100) -> Iterator[Line]:
        return self._iterate(f"/conversations/{conversation_id}/lines", "id", page_size)

    def create_line(self, conversation_id: str, text: str | None = None,
                    animal: str | None = None, think: bool | None = None,
                    mood: str | None = None, idempotency_key: str | None = None) -> Line:
        return self._call("POST", f"/conversations/{conversation_id}/lines",
                          json=_line_params(text, animal, think, mood),
                          idempotency_key=idempotency_key)

    def create_lines(self, conversation_id: str, lines: list[dict[str, Any]],
                     idempotency_key: str | None = None) -> list[Line]:
        """Several lines at once (each a dict of text, animal, think, mood), in order, all or
        none; returns them as created."""
        return self._call("POST", f"/conversations/{conversation_id}/lines/batch",
                          json={"lines": lines}, idempotency_key=idempotency_key)["data"]

    def get_line(self, conversation_id: str, line_id: str) -> Line:
        return self._call("GET", f"/conversations/{conversation_id}/lines/{line_id}")

    def get_line_text(self, conversation_id: str, line_id: str) -> str:
        return self._call("GET", f"/conversations/{conversation_id}/lines/{line_id}",
                          headers={"Accept": "text/plain"})

    def delete_line(self, conversation_id: str, line_id: str) -> None:
        self._call("DELETE", f"/conversations/{conversation_id}/lines/{line_id}")

    # --- events ---
    def list_events(self, limit: int | None = None, starting_after: str | None = None,
                    ending_before: str | None = None, type: str | None = None,
                    conversation: str | None = None) -> Page:
        """A page of your events, oldest first; `type` is a type or a prefix (`line.*`)."""
        params = {k: v for k, v in (("limit", limit), ("starting_after", starting_after),
                                    ("ending_before", ending_before), ("type", type),
                                    ("conversation", conversation)) if v is not None}
        body = self._call("GET", "/events", params=params)
        return Page(body["type"], body["has_more"], body["data"])

    def iter_events(self, starting_after: str | None = None, page_size: int = 100,
                    type: str | None = None, conversation: str | None = None
                    ) -> Iterator[Event]:
        """Every event after `starting_after` (from the first without it), page by page.

        It ends at the last event committed when its last page was read; to
        follow later changes, call it again with the last id it gave.
        """
        after = starting_after
        while True:
            page = self.list_events(page_size, after, None, type, conversation)
            yield from page.data  # type: ignore[misc]
            if not page.has_more or not page.data:
                return
            after = page.data[-1]["id"]

    def get_event(self, event_id: str) -> Event:
        return self._call("GET", f"/events/{event_id}")

    # --- webhooks ---
    def create_webhook_endpoint(self, url: str, events: list[str] | None = None,
                                description: str | None = None,
                                idempotency_key: str | None = None) -> WebhookEndpoint:
        """A new endpoint; its `secret` is in this answer only."""
        body = {k: v for k, v in (("url", url), ("events", events),
                                  ("description", description)) if v is not None}
        return self._call("POST", "/webhook_endpoints", json=body,
                          idempotency_key=idempotency_key)

    def list_webhook_endpoints(self, limit: int | None = None,
                               starting_after: str | None = None,
                               ending_before: str | None = None) -> Page:
        return self._page("/webhook_endpoints", limit, starting_after, ending_before)

    def get_webhook_endpoint(self, endpoint_id: str) -> WebhookEndpoint:
        return self._call("GET", f"/webhook_endpoints/{endpoint_id}")

    def update_webhook_endpoint(self, endpoint_id: str, **changes: Any) -> WebhookEndpoint:
        """Change `url`, `events`, `description` (None clears it) or `disabled`."""
        return self._call("PATCH", f"/webhook_endpoints/{endpoint_id}", json=changes)

    def delete_webhook_endpoint(self, endpoint_id: str) -> None:
        self._call("DELETE", f"/webhook_endpoints/{endpoint_id}")

    def rotate_webhook_secret(self, endpoint_id: str) -> WebhookEndpoint:
        """A new secret (in this answer); the old one signs beside it for 24 hours."""
        return self._call("POST", f"/webhook_endpoints/{endpoint_id}/rotate_secret")

    def ping_webhook_endpoint(self, endpoint_id: str) -> WebhookDelivery:
        """Have a `ping` event delivered to the endpoint; its delivery, pending."""
        return self._call("POST", f"/webhook_endpoints/{endpoint_id}/ping")

    def list_webhook_deliveries(self, endpoint_id: str, limit: int | None = None,
                                starting_after: str | None = None,
                                ending_before: str | None = None) -> Page:
        """A page of the endpoint's deliveries, newest first."""
        return self._page(f"/webhook_endpoints/{endpoint_id}/deliveries", limit,
                          starting_after, ending_before)
    def stream_events(self, conversation: str | None = None, last_event_id: str | None = None,
                      read_timeout: float = 60.0) -> Iterator[dict[str, Any]]:
        """GET /events/stream: each message as it arrives, until the server ends the stream.

        An event is `{"id", "event", "data"}` (`data` parsed from JSON); a message
        with only an id is `{"id"}`, the hint `{"retry": ms}`, a heartbeat
        `{"comment": text}`. Closing the iterator closes the connection.
        """
        headers = {"Accept": "text/event-stream"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        if last_event_id is not None:
            headers["Last-Event-ID"] = last_event_id
        params = {"conversation": conversation} if conversation is not None else None
        timeout = httpx.Timeout(10.0, read=read_timeout)
        with self.http.stream("GET", "/events/stream", params=params, headers=headers,
                              timeout=timeout) as response:
            self.last_response = response
            if response.status_code != 200:
                response.read()
                _raise_for(response)
            yield from parse_event_stream(response.iter_lines())

    # --- rendering ---
    def render(self, text: str | None = None, animal: str | None = None,
               think: bool | None = None, mood: str | None = None) -> str:
        """What a line with these parameters would show (nothing is stored)."""
        return self._call("POST", "/render", json=_line_params(text, animal, think, mood))[
            "output"]

    def render_text(self, text: str | None = None, animal: str | None = None,
                    think: bool | None = None, mood: str | None = None) -> str:
        """render(), asking for text/plain."""
        return self._call("POST", "/render", json=_line_params(text, animal, think, mood),
                          headers={"Accept": "text/plain"})


def _line_params(text: str | None, animal: str | None, think: bool | None,
                 mood: str | None) -> dict[str, Any]:
    return {k: v for k, v in (("text", text), ("animal", animal), ("think", think),
                              ("mood", mood)) if v is not None}


def parse_event_stream(lines: Iterator[str]) -> Iterator[dict[str, Any]]:
    """Server-Sent Events messages from a stream's lines (the fields SayPI sends)."""
    message: dict[str, Any] = {}
    data: list[str] = []
    for line in lines:
        if line == "":
            if data:
                message["data"] = _json.loads("\n".join(data))
            if message:
                yield message
            message, data = {}, []
        elif line.startswith(":"):
            yield {"comment": line[1:].strip()}
        else:
            field, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if field == "data":
                data.append(value)
            elif field == "retry" and value.isdigit():
                message["retry"] = int(value)
            elif field in ("id", "event"):
                message[field] = value
