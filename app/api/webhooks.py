"""Webhook endpoints: where a user's events are POSTed, signed (docs/webhooks.md).

The endpoints API only stores; the relay (`run.py relay`) delivers. A URL is checked here
and again before every delivery.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from flask import Response, request
from marshmallow import Schema

from app.api.common import page, parse_id
from app.domain import ids
from app.domain.errors import CursorNotFound
from app.domain.events import TYPES
from app.domain.repositories import Webhooks
from app.domain.unit_of_work import UnitOfWork
from app.domain.webhooks import DELIVERY, ENDPOINT, Delivery, Endpoint, new_secret, pattern_ok
from app.http import pagination, respond
from app.http.auth import current_user
from app.http.doc import Component, Doc, Link, ParamsDoc, Success, list_of
from app.http.errors import NotFound, ParamProblem
from app.http.fields import Bool, Text, TextList, rfc3339
from app.http.outbound import OutboundPolicy
from app.http.routing import Handler

ENDPOINT_ID, DELIVERY_ID = ids.template(ENDPOINT), ids.template(DELIVERY)
PATTERN_PROBLEM = "must be `*`, an event type, or a resource's prefix with `*` (`line.*`)"
PING = "ping"


class CreateWebhookEndpoint(Schema):
    url = Text(min_length=1, max_length=2048, required=True)
    events = TextList(Text(min_length=1, max_length=64), max_items=len(TYPES) + 8)
    description = Text(min_length=0, max_length=500)

    openapi = ParamsDoc(
        notes={"url": "`https` in production. Its host may not resolve to a loopback, private, "
                      "link-local, multicast or unspecified address unless the server sets "
                      "`WEBHOOK_ALLOW_PRIVATE`; a host written as a number in another form "
                      "than a dotted quad (`2130706433`, `0177.0.0.1`) is refused.",
               "events": "Event types (`line.created`), prefixes (`line.*`) or `*` for all; "
                         "a list, so in a JSON body only (a form cannot carry one)."},
        defaults={"events": ["*"]})


class UpdateWebhookEndpoint(Schema):
    url = Text(min_length=1, max_length=2048)
    events = TextList(Text(min_length=1, max_length=64), max_items=len(TYPES) + 8)
    description = Text(min_length=0, max_length=500, allow_none=True)  # null clears
    disabled = Bool()

    openapi = ParamsDoc(notes={
        "url": "Checked as on creation.",
        "disabled": "`false` enables a disabled endpoint again (its `disabled_reason` is "
                    "cleared and its deliveries resume); `true` pauses it."})


class NoParams(Schema):
    """rotate_secret and ping take no parameters; a body, if any, must still be valid."""


def endpoint_json(endpoint: Endpoint) -> dict[str, Any]:
    return {"id": ENDPOINT_ID % endpoint.id, "url": endpoint.url,
            "events": list(endpoint.events), "description": endpoint.description,
            "disabled": endpoint.disabled, "disabled_reason": endpoint.disabled_reason,
            "created_at": rfc3339(endpoint.created_at)}


def delivery_json(delivery: Delivery) -> dict[str, Any]:
    return {"id": DELIVERY_ID % delivery.id, "event": delivery.event_id,
            "attempt": delivery.attempt, "status": delivery.status,
            "response_status": delivery.response_status, "error": delivery.error,
            "duration_ms": delivery.duration_ms,
            "next_attempt_at": None if delivery.next_attempt_at is None
            else rfc3339(delivery.next_attempt_at),
            "created_at": rfc3339(delivery.created_at)}


def _endpoints(rows: list[Endpoint]) -> list[dict[str, Any]]:
    return [endpoint_json(e) for e in rows]


def _checks(outbound: OutboundPolicy) -> Callable[[dict[str, Any]], list[ParamProblem]]:
    def check(valid: dict[str, Any]) -> list[ParamProblem]:
        problems = []
        if "url" in valid:
            problem = outbound.problem(valid["url"])
            if problem is not None:
                problems.append(ParamProblem(("url",), problem))
        for index, pattern in enumerate(valid.get("events") or ()):
            if not pattern_ok(pattern, TYPES):
                problems.append(ParamProblem((f"events[{index}]",), PATTERN_PROBLEM))
        return problems

    return check


def handle_create_webhook_endpoint(webhooks: Webhooks, outbound: OutboundPolicy,
                                   cap: int) -> Handler:
    """POST /webhook_endpoints: a URL your events are POSTed to, signed with its secret."""
    schema, check = CreateWebhookEndpoint(), _checks(outbound)

    def handler(uow: UnitOfWork | None) -> Response:
        params = respond.decode(schema, check=check)
        secret = new_secret()
        endpoint = webhooks.create(current_user(), params["url"],
                                   list(dict.fromkeys(params.get("events") or ["*"])),
                                   params.get("description"), secret, cap, uow=uow)
        body = {**endpoint_json(endpoint), "secret": secret}
        return respond.created(body, location=f"/webhook_endpoints/{body['id']}")

    return handler


def handle_list_webhook_endpoints(webhooks: Webhooks) -> Handler:
    """GET /webhook_endpoints: your endpoints, oldest first."""

    def handler() -> Response:
        return page("webhook_endpoint", _endpoints, webhooks.list,
                    cursor_ok=lambda c: ids.decode(ENDPOINT, c) is not None)

    return handler


def handle_get_webhook_endpoint(webhooks: Webhooks) -> Handler:
    """GET /webhook_endpoints/{id}: one of your endpoints (its secret is never shown again)."""

    def handler(endpoint_id: str) -> Response:
        endpoint = webhooks.get(current_user(), parse_id(ENDPOINT, endpoint_id))
        if endpoint is None:
            raise NotFound()
        return respond.ok(endpoint_json(endpoint))

    return handler


def handle_update_webhook_endpoint(webhooks: Webhooks, outbound: OutboundPolicy) -> Handler:
    """PATCH /webhook_endpoints/{id}: change its URL, events, description, or disable it."""
    schema, check = UpdateWebhookEndpoint(), _checks(outbound)

    def handler(endpoint_id: str) -> Response:
        rid = parse_id(ENDPOINT, endpoint_id)
        user = current_user()
        if webhooks.get(user, rid) is None:  # 404 before any parameter problem
            raise NotFound()
        params = respond.decode(schema, check=check)
        if "events" in params:
            params["events"] = list(dict.fromkeys(params["events"]))
        endpoint = webhooks.update(user, rid, params)
        if endpoint is None:
            raise NotFound()
        return respond.ok(endpoint_json(endpoint))

    return handler


def handle_delete_webhook_endpoint(webhooks: Webhooks) -> Handler:
    """DELETE /webhook_endpoints/{id}: the endpoint and its deliveries; none is made again."""

    def handler(endpoint_id: str) -> Response:
        if not webhooks.delete(current_user(), parse_id(ENDPOINT, endpoint_id)):
            raise NotFound()
        return respond.no_content()

    return handler


def handle_rotate_webhook_secret(webhooks: Webhooks) -> Handler:
    """POST /webhook_endpoints/{id}/rotate_secret: a new secret; the old one signs beside
    it for 24 hours."""

    def handler(endpoint_id: str) -> Response:
        respond.decode(NoParams())
        secret = new_secret()
        endpoint = webhooks.rotate_secret(current_user(), parse_id(ENDPOINT, endpoint_id),
                                          secret)
        if endpoint is None:
            raise NotFound()
        return respond.ok({**endpoint_json(endpoint), "secret": secret})

    return handler


def handle_ping_webhook_endpoint(webhooks: Webhooks) -> Handler:
    """POST /webhook_endpoints/{id}/ping: a `ping` event is delivered to the endpoint."""

    def handler(endpoint_id: str) -> Response:
        rid, user = parse_id(ENDPOINT, endpoint_id), current_user()
        endpoint = webhooks.get(user, rid)
        if endpoint is None:
            raise NotFound()
        respond.decode(NoParams())
        event_id = f"evt_{user:016x}{secrets.randbits(63) | 1 << 62:016x}"
        body = json.dumps({"id": event_id, "type": PING,
                           "created_at": rfc3339(datetime.now(UTC)), "conversation": None,
                           "data": {"object": endpoint_json(endpoint)}},
                          separators=(",", ":"))
        delivery = webhooks.add_ping(user, rid, event_id, body)
        if delivery is None:
            raise NotFound()
        return respond.ok(delivery_json(delivery), status=202)

    return handler


def handle_list_webhook_deliveries(webhooks: Webhooks) -> Handler:
    """GET /webhook_endpoints/{id}/deliveries: the endpoint's deliveries, newest first."""

    def handler(endpoint_id: str) -> Response:
        rid, user = parse_id(ENDPOINT, endpoint_id), current_user()
        params = pagination.parse_page(request.args)
        cursor = None
        if params.cursor is not None:
            cursor = ids.decode(DELIVERY, params.cursor)
            if cursor is None:
                if webhooks.get(user, rid) is None:
                    raise NotFound()
                raise CursorNotFound(params.cursor_param)
        result = webhooks.deliveries(user, rid, params, cursor)
        if not result.scope_exists:
            raise NotFound()
        if params.cursor is not None and not result.cursor_found:
            raise CursorNotFound(params.cursor_param)
        return respond.ok({"type": "webhook_delivery", "has_more": result.has_more,
                           "data": [delivery_json(Delivery(*d)) for d in result.rows]})

    return handler


# --- descriptions for the OpenAPI document (app/openapi) ----------------------------------

_SAMPLE_CREATED = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
_SAMPLE = Endpoint(0x2F1C4B8D0A6E9375, "https://example.com/saypi/webhooks", ("line.*",),
                   "Our chat bridge", False, None, _SAMPLE_CREATED)
_SAMPLE_SECRET = "whsec_" + "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw9sBzkq7bUqw="
_SAMPLE_DELIVERY = Delivery(0x0B6D2F9E4C8A1735, "evt_2f1c4b8d0a6e9375000000000000002a",
                            2, "pending", 500, "The receiver answered 500.", 131,
                            datetime(2026, 1, 2, 3, 9, 5, tzinfo=UTC), _SAMPLE_CREATED)

_ENDPOINT_PROPERTIES: dict[str, Any] = {
    "id": {"type": "string", "pattern": f"^{ENDPOINT}_[0-9a-f]{{16}}$"},
    "url": {"type": "string"},
    "events": {"type": "array", "items": {"type": "string"},
               "description": "Event types, prefixes (`line.*`) or `*`."},
    "description": {"type": "string", "nullable": True},
    "disabled": {"type": "boolean",
                 "description": "No deliveries are made while it is true."},
    "disabled_reason": {"type": "string", "nullable": True,
                        "description": "Why SayPI disabled it (410 Gone, or 3 days of "
                                       "failures); null when enabled or disabled by you."},
    "created_at": {"type": "string", "format": "date-time"},
}
_ENDPOINT_REQUIRED = list(_ENDPOINT_PROPERTIES)

WEBHOOK_ENDPOINT_OUT = Component("WebhookEndpointOut", {
    "type": "object", "additionalProperties": False, "required": _ENDPOINT_REQUIRED,
    "description": "A URL your events are delivered to.",
    "properties": _ENDPOINT_PROPERTIES,
}, lambda _: endpoint_json(_SAMPLE))
WEBHOOK_ENDPOINT_WITH_SECRET = Component("WebhookEndpointWithSecretOut", {
    "type": "object", "additionalProperties": False,
    "required": [*_ENDPOINT_REQUIRED, "secret"],
    "description": "An endpoint and its signing secret, shown only in this answer.",
    "properties": {**_ENDPOINT_PROPERTIES, "secret": {
        "type": "string", "pattern": "^whsec_[A-Za-z0-9+/=]+$",
        "description": "`whsec_` and the base64 of the key; keep it to verify signatures."}},
}, lambda _: {**endpoint_json(_SAMPLE), "secret": _SAMPLE_SECRET})
WEBHOOK_ENDPOINT_LIST = list_of("WebhookEndpointList", WEBHOOK_ENDPOINT_OUT,
                                "webhook_endpoint", lambda _: {
                                    "type": "webhook_endpoint", "has_more": False,
                                    "data": [endpoint_json(_SAMPLE)]})
WEBHOOK_DELIVERY_OUT = Component("WebhookDeliveryOut", {
    "type": "object", "additionalProperties": False,
    "required": ["id", "event", "attempt", "status", "response_status", "error",
                 "duration_ms", "next_attempt_at", "created_at"],
    "description": "One event's delivery to the endpoint and its latest attempt.",
    "properties": {
        "id": {"type": "string", "pattern": f"^{DELIVERY}_[0-9a-f]{{16}}$"},
        "event": {"type": "string", "pattern": "^evt_[0-9a-f]{32}$",
                  "description": "The event's id, sent as `webhook-id`."},
        "attempt": {"type": "integer", "minimum": 0,
                    "description": "Attempts made so far (an attempt under way counts)."},
        "status": {"type": "string", "enum": ["succeeded", "failed", "pending"],
                   "description": "`failed`: given up after the last retry, or the endpoint "
                                  "answered 410."},
        "response_status": {"type": "integer", "nullable": True,
                            "description": "The latest attempt's HTTP status, if any."},
        "error": {"type": "string", "nullable": True,
                  "description": "What went wrong in the latest attempt, if anything."},
        "duration_ms": {"type": "integer", "nullable": True},
        "next_attempt_at": {"type": "string", "format": "date-time", "nullable": True,
                            "description": "When a pending delivery is tried next."},
        "created_at": {"type": "string", "format": "date-time"},
    },
}, lambda _: delivery_json(_SAMPLE_DELIVERY))
WEBHOOK_DELIVERY_LIST = Component("WebhookDeliveryList", {
    "type": "object", "required": ["type", "has_more", "data"], "additionalProperties": False,
    "description": "One page of deliveries, newest first.",
    "properties": {
        "type": {"type": "string", "enum": ["webhook_delivery"]},
        "has_more": {"type": "boolean", "description": "Whether older deliveries follow this "
                     "page (with `ending_before`: newer ones precede it)."},
        "data": {"type": "array",
                 "items": {"$ref": "#/components/schemas/WebhookDeliveryOut"}},
    },
}, lambda _: {"type": "webhook_delivery", "has_more": False,
              "data": [delivery_json(_SAMPLE_DELIVERY)]}, requires=(WEBHOOK_DELIVERY_OUT,))

DELIVERY_NOTES = (
    "Each event matching an enabled endpoint is POSTed to its URL as the event object (JSON), "
    "with the Standard Webhooks headers `webhook-id` (the event id: dedupe by it, a retry "
    "repeats it), `webhook-timestamp` (Unix seconds) and `webhook-signature` (`v1,` and the "
    "base64 HMAC-SHA256 of `{id}.{timestamp}.{body}` keyed with the secret's base64-decoded "
    "bytes; during a rotation one signature per secret, space separated), and "
    "`User-Agent: SayPI-Webhooks/<version>`. Any 2xx within 10 s delivers it; otherwise it "
    "is tried again after about 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 10 h and 10 h, with "
    "jitter (a longer `Retry-After` on 429 or 503 is honoured), then given up. Redirects are "
    "not followed. `410 Gone` disables the endpoint at once; an endpoint whose deliveries "
    "have all failed for 3 days is disabled, with a `disabled_reason`. At least once: an "
    "event may arrive twice. Order is kept only as a best effort; event ids give the true "
    "order.")
_LINKS = {
    "GetWebhookEndpoint": Link(handle_get_webhook_endpoint,
                               {"endpoint_id": "$response.body#/id"}, "Read it back."),
    "ListWebhookDeliveries": Link(handle_list_webhook_deliveries,
                                  {"endpoint_id": "$response.body#/id"},
                                  "Its deliveries."),
}

CREATE_WEBHOOK_ENDPOINT_DOC = Doc(
    handle_create_webhook_endpoint, "Webhooks",
    success=(Success(201, "The new endpoint, with its secret (shown only here).",
                     WEBHOOK_ENDPOINT_WITH_SECRET, links=_LINKS),),
    conflicts=("create more than {max_webhook_endpoints} webhook endpoints",),
    request_example={"url": "https://example.com/saypi/webhooks", "events": ["line.*"]},
    notes=DELIVERY_NOTES)
LIST_WEBHOOK_ENDPOINTS_DOC = Doc(
    handle_list_webhook_endpoints, "Webhooks", etag=True, paginated=True,
    success=(Success(200, "One page of your endpoints, oldest first.",
                     WEBHOOK_ENDPOINT_LIST),),
    notes="The cursors are endpoint ids (`we_...`).")
GET_WEBHOOK_ENDPOINT_DOC = Doc(
    handle_get_webhook_endpoint, "Webhooks", etag=True, errors=(NotFound,),
    success=(Success(200, "The endpoint.", WEBHOOK_ENDPOINT_OUT),))
UPDATE_WEBHOOK_ENDPOINT_DOC = Doc(
    handle_update_webhook_endpoint, "Webhooks", errors=(NotFound,),
    success=(Success(200, "The endpoint, changed.", WEBHOOK_ENDPOINT_OUT),),
    request_example={"disabled": False},
    notes="Omitted parameters keep their values; `description: null` clears it.")
DELETE_WEBHOOK_ENDPOINT_DOC = Doc(
    handle_delete_webhook_endpoint, "Webhooks", errors=(NotFound,),
    success=(Success(204, "Deleted, with its deliveries."),))
ROTATE_WEBHOOK_SECRET_DOC = Doc(
    handle_rotate_webhook_secret, "Webhooks", errors=(NotFound,),
    success=(Success(200, "The endpoint and its new secret (shown only here).",
                     WEBHOOK_ENDPOINT_WITH_SECRET),),
    notes="For 24 hours each delivery carries two signatures, by the new secret and by the "
          "one it replaced, so receivers can switch at their pace. Rotating again within "
          "them drops the oldest. Takes no Idempotency-Key: a retry makes another secret.")
PING_WEBHOOK_ENDPOINT_DOC = Doc(
    handle_ping_webhook_endpoint, "Webhooks", errors=(NotFound,),
    success=(Success(202, "The `ping` delivery, pending.", WEBHOOK_DELIVERY_OUT),),
    notes="The `ping` event (`type: ping`, `data.object` the endpoint) is delivered like "
          "any other, signed, by the relay, even to a disabled endpoint once it is enabled; "
          "it is not in the event log.")
LIST_WEBHOOK_DELIVERIES_DOC = Doc(
    handle_list_webhook_deliveries, "Webhooks", etag=True, paginated=True,
    errors=(NotFound,),
    success=(Success(200, "One page of the endpoint's deliveries, newest first.",
                     WEBHOOK_DELIVERY_LIST),),
    notes="Newest first (unlike the other lists): `starting_after=wd_...` gives older "
          "deliveries, `ending_before` newer ones. One row per event, showing its latest "
          "attempt.")
