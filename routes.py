"""Every route of the SayPI API, in one file.

Middleware that applies to one route is visible on its line: `authed` (bearer
token, then the user's rate limit), `public` (the client address's rate
limit), `idempotent(schema, scope)` (Idempotency-Key replay). Health, metrics
and docs carry none of them: they are never authenticated or limited.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

from flask import Flask

from app.api import animals, conversations, debug, docs, lines, moods, ops, users
from app.http.request_state import request_state
from app.repo.slow_queries import SlowQueryRepository


def route(app: Flask, method: str, path: str, handler: Callable) -> None:
    """Register one handler for one method and path.

    The request's state learns the route template, which the access log and
    the metrics report (requests that match no route report "unmatched"),
    and a refusal the envelope decided on (a body over the limit) is raised
    here, before the handler and its wrappers.
    """

    @functools.wraps(handler)
    def view(**params):
        state = request_state()
        state.route = path
        if state.refusal is not None:
            raise state.refusal
        return handler(**params)

    app.add_url_rule(path, endpoint=f"{method} {path}", view_func=view, methods=[method],
                     provide_automatic_options=False)


def by_user() -> str:
    return f"user:{request_state().user_id}"


def by_client() -> str:
    return f"ip:{request_state().client_addr}"


def add_routes(app: Flask, config, logger, lifecycle, health, metrics, sample_metrics,
               auth, idempotent, presence, renderer, user_repo, mood_repo,
               conversation_repo, line_repo, db) -> None:
    authed, public = auth.required, auth.public

    route(app, "POST", "/users", public(idempotent(users.CreateUser(), by_client)(
        users.handle_create_user(user_repo, auth.tokens))))
    route(app, "GET", "/users/<user_id>", authed(users.handle_get_user(user_repo)))
    route(app, "PATCH", "/users/<user_id>", authed(users.handle_update_user(user_repo)))
    route(app, "DELETE", "/users/<user_id>", authed(users.handle_delete_user(user_repo, presence)))

    route(app, "GET", "/animals", authed(animals.handle_list_animals(renderer.library,
                                                                     presence)))

    route(app, "GET", "/moods", authed(moods.handle_list_moods(mood_repo, user_repo)))
    route(app, "GET", "/moods/<name>", authed(moods.handle_get_mood(mood_repo, user_repo)))
    route(app, "PUT", "/moods/<name>", authed(moods.handle_put_mood(
        mood_repo, config.max_moods_per_user)))
    route(app, "DELETE", "/moods/<name>", authed(moods.handle_delete_mood(mood_repo,
                                                                          user_repo)))

    route(app, "GET", "/conversations", authed(conversations.handle_list_conversations(
        conversation_repo, user_repo)))
    route(app, "POST", "/conversations", authed(idempotent(
        conversations.CreateConversation(), by_user)(conversations.handle_create_conversation(
            conversation_repo, config.max_conversations_per_user))))
    route(app, "GET", "/conversations/<conversation_id>", authed(
        conversations.handle_get_conversation(conversation_repo, user_repo, renderer)))
    route(app, "PATCH", "/conversations/<conversation_id>", authed(
        conversations.handle_update_conversation(conversation_repo, user_repo, renderer)))
    route(app, "DELETE", "/conversations/<conversation_id>", authed(
        conversations.handle_delete_conversation(conversation_repo, user_repo)))

    route(app, "GET", "/conversations/<conversation_id>/lines", authed(
        lines.handle_list_lines(line_repo, user_repo, renderer)))
    route(app, "POST", "/conversations/<conversation_id>/lines", authed(idempotent(
        lines.CreateLine(), by_user)(lines.handle_create_line(
            line_repo, renderer, config.max_lines_per_conversation))))
    route(app, "GET", "/conversations/<conversation_id>/lines/<line_id>", authed(
        lines.handle_get_line(line_repo, user_repo, renderer)))
    route(app, "DELETE", "/conversations/<conversation_id>/lines/<line_id>", authed(
        lines.handle_delete_line(line_repo, user_repo)))

    route(app, "GET", "/health/live", ops.handle_live())
    route(app, "GET", "/health/ready", ops.handle_ready(health, lifecycle))
    route(app, "GET", "/health/quick", ops.handle_quick(health, lifecycle))
    route(app, "GET", "/health/detailed", ops.handle_detailed(health, lifecycle))
    route(app, "GET", "/metrics", ops.handle_metrics(metrics, sample_metrics))
    route(app, "GET", "/openapi.json", docs.handle_openapi(config))
    route(app, "GET", "/docs", docs.handle_docs())
    route(app, "GET", "/docs/<asset>", docs.handle_docs_asset())

    if config.fault_injection:
        route(app, "GET", "/debug/sleep", debug.handle_debug_sleep())
        route(app, "GET", "/debug/fail", debug.handle_debug_fail())
        route(app, "GET", "/debug/db-sleep", debug.handle_debug_db_sleep(SlowQueryRepository(db)))
