"""Every route of the SayPI API, in one table.

Each entry states its facts once, and both Flask (app/http/routing.py's
`register`) and the OpenAPI document read them: the guard (`AUTHED`: bearer
token, then the user's rate limit; `PUBLIC`: the client address's rate limit;
`OPEN`: neither, for health, metrics and docs), the body schema, the
Idempotency-Key scope (`BY_USER`, `BY_CLIENT`) and the description (`doc`,
kept next to the handler it describes).
"""

from __future__ import annotations

from app.api import animals, conversations, debug, docs, lines, moods, ops, users
from app.http.routing import AUTHED, BY_CLIENT, BY_USER, OPEN, PUBLIC, Route


def routes(d) -> list[Route]:
    """The app's routes, made from its dependencies `d` (app/deps.py's Deps)."""
    return [
        Route("POST", "/users", users.handle_create_user(d.users, d.auth.tokens),
              guard=PUBLIC, body=users.CreateUser, idempotent=BY_CLIENT),
        Route("GET", "/users/<user_id>", users.handle_get_user(d.users),
              guard=AUTHED),
        Route("PATCH", "/users/<user_id>", users.handle_update_user(d.users),
              guard=AUTHED, body=users.UpdateUser),
        Route("DELETE", "/users/<user_id>", users.handle_delete_user(d.users, d.presence),
              guard=AUTHED),

        Route("GET", "/animals", animals.handle_list_animals(d.renderer.library, d.presence),
              guard=AUTHED),

        Route("GET", "/moods", moods.handle_list_moods(d.moods, d.users),
              guard=AUTHED),
        Route("GET", "/moods/<name>", moods.handle_get_mood(d.moods, d.users),
              guard=AUTHED),
        Route("PUT", "/moods/<name>", moods.handle_put_mood(d.moods, d.config.max_moods_per_user),
              guard=AUTHED, body=moods.PutMood),
        Route("DELETE", "/moods/<name>", moods.handle_delete_mood(d.moods, d.users),
              guard=AUTHED),

        Route("GET", "/conversations",
              conversations.handle_list_conversations(d.conversations, d.users),
              guard=AUTHED),
        Route("POST", "/conversations",
              conversations.handle_create_conversation(
                  d.conversations, d.config.max_conversations_per_user),
              guard=AUTHED, body=conversations.CreateConversation, idempotent=BY_USER),
        Route("GET", "/conversations/<conversation_id>",
              conversations.handle_get_conversation(d.conversations, d.users, d.renderer),
              guard=AUTHED),
        Route("PATCH", "/conversations/<conversation_id>",
              conversations.handle_update_conversation(d.conversations, d.users, d.renderer),
              guard=AUTHED, body=conversations.UpdateConversation),
        Route("DELETE", "/conversations/<conversation_id>",
              conversations.handle_delete_conversation(d.conversations, d.users),
              guard=AUTHED),

        Route("GET", "/conversations/<conversation_id>/lines",
              lines.handle_list_lines(d.lines, d.users, d.renderer),
              guard=AUTHED),
        Route("POST", "/conversations/<conversation_id>/lines",
              lines.handle_create_line(d.lines, d.renderer, d.config.max_lines_per_conversation),
              guard=AUTHED, body=lines.CreateLine, idempotent=BY_USER),
        Route("GET", "/conversations/<conversation_id>/lines/<line_id>",
              lines.handle_get_line(d.lines, d.users, d.renderer),
              guard=AUTHED),
        Route("DELETE", "/conversations/<conversation_id>/lines/<line_id>",
              lines.handle_delete_line(d.lines, d.users),
              guard=AUTHED),

        Route("GET", "/health/live", ops.handle_live(), guard=OPEN),
        Route("GET", "/health/ready", ops.handle_ready(d.health, d.lifecycle), guard=OPEN),
        Route("GET", "/health/quick", ops.handle_quick(d.health, d.lifecycle), guard=OPEN),
        Route("GET", "/health/detailed", ops.handle_detailed(d.health, d.lifecycle), guard=OPEN),
        Route("GET", "/metrics", ops.handle_metrics(d.metrics, d.sample_metrics), guard=OPEN),
        Route("GET", "/openapi.json", docs.handle_openapi(d.config), guard=OPEN),
        Route("GET", "/docs", docs.handle_docs(), guard=OPEN),
        Route("GET", "/docs/<asset>", docs.handle_docs_asset(), guard=OPEN),

        *([Route("GET", "/debug/sleep", debug.handle_debug_sleep(), guard=OPEN),
           Route("GET", "/debug/fail", debug.handle_debug_fail(), guard=OPEN),
           Route("GET", "/debug/db-sleep", debug.handle_debug_db_sleep(d.slow_queries),
                 guard=OPEN)]
          if d.config.fault_injection else []),
    ]
