"""Every route of the SayPI API, in one table.

Each entry states its facts once (guard, body schema, Idempotency-Key scope, `doc`), and
both Flask and the OpenAPI document read them. Adding an endpoint is one entry here plus its
maker and `Doc` in app/api/<area>.py; see docs/architecture.md.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from app.api import (
    animals,
    conversations,
    debug,
    docs,
    events,
    lines,
    moods,
    ops,
    playground,
    render,
    streams,
    users,
    webhooks,
)
from app.http.routing import AUTHED, BY_CLIENT, BY_USER, OPEN, PUBLIC, Route
from app.openapi.builder import spec_json

if TYPE_CHECKING:
    from app.deps import Deps


def documented_routes(d: Deps) -> list[Route]:
    """The routes the OpenAPI document describes: all but the docs', playground's, debug's."""
    return [
        Route("POST", "/users", users.handle_create_user(d.users, d.auth.tokens),
              guard=PUBLIC, body=users.CreateUser, idempotent=BY_CLIENT,
              doc=users.CREATE_USER_DOC),
        Route("GET", "/users/<user_id>", users.handle_get_user(d.users),
              guard=AUTHED, doc=users.GET_USER_DOC),
        Route("PATCH", "/users/<user_id>", users.handle_update_user(d.users),
              guard=AUTHED, body=users.UpdateUser, doc=users.UPDATE_USER_DOC),
        Route("DELETE", "/users/<user_id>", users.handle_delete_user(d.users, d.presence),
              guard=AUTHED, doc=users.DELETE_USER_DOC),

        Route("GET", "/animals", animals.handle_list_animals(d.renderer.library),
              guard=AUTHED, doc=animals.LIST_ANIMALS_DOC),

        Route("GET", "/moods", moods.handle_list_moods(d.moods),
              guard=AUTHED, doc=moods.LIST_MOODS_DOC),
        Route("GET", "/moods/<name>", moods.handle_get_mood(d.moods),
              guard=AUTHED, doc=moods.GET_MOOD_DOC),
        Route("PUT", "/moods/<name>", moods.handle_put_mood(d.moods, d.config.max_moods_per_user),
              guard=AUTHED, body=moods.PutMood, doc=moods.PUT_MOOD_DOC),
        Route("DELETE", "/moods/<name>", moods.handle_delete_mood(d.moods),
              guard=AUTHED, doc=moods.DELETE_MOOD_DOC),

        Route("GET", "/conversations",
              conversations.handle_list_conversations(d.conversations),
              guard=AUTHED, doc=conversations.LIST_CONVERSATIONS_DOC),
        Route("POST", "/conversations",
              conversations.handle_create_conversation(
                  d.conversations, d.lines, d.renderer, d.config.max_conversations_per_user,
                  d.config.max_lines_per_conversation, d.config.max_batch_lines),
              guard=AUTHED, body=conversations.create_conversation_body(d.config.max_batch_lines),
              idempotent=BY_USER, doc=conversations.CREATE_CONVERSATION_DOC),
        Route("GET", "/conversations/<conversation_id>",
              conversations.handle_get_conversation(d.conversations, d.renderer),
              guard=AUTHED, doc=conversations.GET_CONVERSATION_DOC),
        Route("PATCH", "/conversations/<conversation_id>",
              conversations.handle_update_conversation(d.conversations, d.renderer),
              guard=AUTHED, body=conversations.UpdateConversation,
              doc=conversations.UPDATE_CONVERSATION_DOC),
        Route("DELETE", "/conversations/<conversation_id>",
              conversations.handle_delete_conversation(d.conversations),
              guard=AUTHED, doc=conversations.DELETE_CONVERSATION_DOC),

        Route("GET", "/conversations/<conversation_id>/lines",
              lines.handle_list_lines(d.lines, d.renderer),
              guard=AUTHED, doc=lines.LIST_LINES_DOC),
        Route("POST", "/conversations/<conversation_id>/lines",
              lines.handle_create_line(d.lines, d.renderer, d.config.max_lines_per_conversation),
              guard=AUTHED, body=lines.CreateLine, idempotent=BY_USER, doc=lines.CREATE_LINE_DOC),
        Route("POST", "/conversations/<conversation_id>/lines/batch",
              lines.handle_create_lines(d.lines, d.renderer, d.config.max_lines_per_conversation,
                                        d.config.max_batch_lines),
              guard=AUTHED, body=lines.create_lines_body(d.config.max_batch_lines),
              idempotent=BY_USER, doc=lines.CREATE_LINES_DOC),
        Route("GET", "/conversations/<conversation_id>/lines/<line_id>",
              lines.handle_get_line(d.lines, d.renderer),
              guard=AUTHED, doc=lines.GET_LINE_DOC),
        Route("DELETE", "/conversations/<conversation_id>/lines/<line_id>",
              lines.handle_delete_line(d.lines),
              guard=AUTHED, doc=lines.DELETE_LINE_DOC),

        Route("GET", "/events", events.handle_list_events(d.events, d.renderer),
              guard=AUTHED, doc=events.LIST_EVENTS_DOC),
        Route("GET", "/events/<event_id>", events.handle_get_event(d.events, d.renderer),
              guard=AUTHED, doc=events.GET_EVENT_DOC),
        Route("GET", "/events/stream",
              streams.handle_event_stream(d.events, d.renderer, d.grip, d.stream_slots,
                                          d.stream_settings),
              guard=AUTHED, doc=streams.EVENT_STREAM_DOC),

        Route("POST", "/webhook_endpoints",
              webhooks.handle_create_webhook_endpoint(d.webhooks, d.outbound,
                                                      d.config.webhook_max_endpoints),
              guard=AUTHED, body=webhooks.CreateWebhookEndpoint, idempotent=BY_USER,
              doc=webhooks.CREATE_WEBHOOK_ENDPOINT_DOC),
        Route("GET", "/webhook_endpoints", webhooks.handle_list_webhook_endpoints(d.webhooks),
              guard=AUTHED, doc=webhooks.LIST_WEBHOOK_ENDPOINTS_DOC),
        Route("GET", "/webhook_endpoints/<endpoint_id>",
              webhooks.handle_get_webhook_endpoint(d.webhooks),
              guard=AUTHED, doc=webhooks.GET_WEBHOOK_ENDPOINT_DOC),
        Route("PATCH", "/webhook_endpoints/<endpoint_id>",
              webhooks.handle_update_webhook_endpoint(d.webhooks, d.outbound),
              guard=AUTHED, body=webhooks.UpdateWebhookEndpoint,
              doc=webhooks.UPDATE_WEBHOOK_ENDPOINT_DOC),
        Route("DELETE", "/webhook_endpoints/<endpoint_id>",
              webhooks.handle_delete_webhook_endpoint(d.webhooks),
              guard=AUTHED, doc=webhooks.DELETE_WEBHOOK_ENDPOINT_DOC),
        Route("POST", "/webhook_endpoints/<endpoint_id>/rotate_secret",
              webhooks.handle_rotate_webhook_secret(d.webhooks),
              guard=AUTHED, body=webhooks.NoParams, doc=webhooks.ROTATE_WEBHOOK_SECRET_DOC),
        Route("POST", "/webhook_endpoints/<endpoint_id>/ping",
              webhooks.handle_ping_webhook_endpoint(d.webhooks),
              guard=AUTHED, body=webhooks.NoParams, doc=webhooks.PING_WEBHOOK_ENDPOINT_DOC),
        Route("GET", "/webhook_endpoints/<endpoint_id>/deliveries",
              webhooks.handle_list_webhook_deliveries(d.webhooks),
              guard=AUTHED, doc=webhooks.LIST_WEBHOOK_DELIVERIES_DOC),

        Route("POST", "/render", render.handle_render(d.moods, d.renderer),
              guard=AUTHED, body=lines.CreateLine, doc=render.RENDER_DOC),

        Route("GET", "/health/live", ops.handle_live(),
              guard=OPEN, doc=ops.LIVE_DOC),
        Route("GET", "/health/ready", ops.handle_ready(d.health, d.lifecycle),
              guard=OPEN, doc=ops.READY_DOC),
        Route("GET", "/health/quick", ops.handle_quick(d.health, d.lifecycle),
              guard=OPEN, doc=ops.QUICK_DOC),
        Route("GET", "/health/detailed", ops.handle_detailed(d.health, d.lifecycle),
              guard=OPEN, doc=ops.DETAILED_DOC),
        Route("GET", "/metrics", ops.handle_metrics(d.metrics, d.sample_metrics),
              guard=OPEN, doc=ops.METRICS_DOC),
    ]


def routes(d: Deps) -> list[Route]:
    """Every route of the app, made from its dependencies `d` (app/deps.py's Deps).

    /openapi.json serves the description of exactly the documented routes
    registered beside it, built once here.
    """
    documented = documented_routes(d)
    return [
        *documented,
        Route("GET", "/openapi.json", docs.handle_openapi(spec_json(d.config, documented)),
              guard=OPEN),
        Route("GET", "/docs", docs.handle_docs(), guard=OPEN),
        Route("GET", "/docs/<asset>", docs.handle_docs_asset(), guard=OPEN),
        Route("GET", "/playground", playground.handle_playground(), guard=OPEN),
        Route("GET", "/playground/<asset>", playground.handle_playground_asset(), guard=OPEN),
        Route("GET", "/", playground.handle_root(), guard=OPEN),
        # Pushpin's recovery of a held stream: Grip-Sig and the link's MAC instead of a token.
        Route("GET", streams.LINK_PATH,
              streams.handle_stream_link(d.events, d.renderer, d.grip, d.stream_settings),
              guard=OPEN),

        *([Route("GET", "/debug/sleep", debug.handle_debug_sleep(), guard=OPEN),
           Route("GET", "/debug/fail", debug.handle_debug_fail(), guard=OPEN),
           Route("GET", "/debug/db-sleep", debug.handle_debug_db_sleep(d.slow_queries),
                 guard=OPEN)]
          if d.config.fault_injection else []),
    ]
