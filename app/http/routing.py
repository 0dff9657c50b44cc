"""The route table's vocabulary, and `register`, which gives a table to Flask.

A `Route` states every fact about one endpoint once, for Flask and the OpenAPI document
alike; `register` does all its work once, refusing a handler that does not match its route.
See docs/architecture.md ("The route table").
"""

from __future__ import annotations

import functools
import inspect
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from enum import Enum
from typing import TYPE_CHECKING

from flask import Flask, Response
from marshmallow import Schema

from app.http.request_state import request_state

if TYPE_CHECKING:
    from app.http.doc import Doc

Handler = Callable[..., Response]  # what a maker returns: a view taking the URL's parts


class Guard(Enum):
    """Who may call a route, and which rate limit applies to it."""

    AUTHED = (True, True)  # a bearer token, then the user's rate limit
    PUBLIC = (False, True)  # anyone, within the client address's rate limit
    OPEN = (False, False)  # anyone, never limited: health, metrics, docs, debug

    def __init__(self, authenticated: bool, limited: bool):
        self.authenticated = authenticated
        self.limited = limited


AUTHED, PUBLIC, OPEN = Guard.AUTHED, Guard.PUBLIC, Guard.OPEN


def by_user() -> str:
    """Idempotency-Key scope: the authenticated user."""
    return f"user:{request_state().user_id}"


def by_client() -> str:
    """Idempotency-Key scope: the client address (for the one unauthenticated write)."""
    return f"ip:{request_state().client_addr}"


BY_USER, BY_CLIENT = by_user, by_client


@dataclass(frozen=True, slots=True)
class Route:
    """One endpoint of the API.

    `body` is the marshmallow schema of the request body (the one the
    handler decodes with): the description shows it, and an idempotent
    route's stored requests are compared after parsing with it.
    `idempotent` is the scope of Idempotency-Keys (`BY_USER`, `BY_CLIENT`);
    None: the route takes none. `doc` describes the operation for the
    OpenAPI document; routes that are not part of it (docs, debug) have none.
    """

    method: str
    path: str  # a Flask rule: /conversations/<conversation_id>
    handler: Handler
    guard: Guard = field(kw_only=True)
    body: type[Schema] | None = field(default=None, kw_only=True)
    idempotent: Callable[[], str] | None = field(default=None, kw_only=True)
    doc: Doc | None = field(default=None, kw_only=True)

    def __post_init__(self) -> None:
        if self.method != self.method.upper():
            raise ValueError(f"{self.method} {self.path}: methods are upper case")
        if self.idempotent is not None and self.body is None:
            raise ValueError(f"{self.method} {self.path}: an idempotent route needs its body "
                             "schema, to compare a replay's parameters")

    @property
    def endpoint(self) -> str:
        return f"{self.method} {self.path}"


def register(app: Flask, routes: Iterable[Route], auth, idempotency) -> None:
    """Add every route to `app`, wrapped as its entry says.

    `auth` supplies the guards (`required`, `public`), `idempotency(schema,
    scope)` the Idempotency-Key wrapper. A duplicate method and path, or a
    handler whose parameters do not match its entry, fails here, at construction.
    """
    for route in routes:
        check_handler(route)
        handler = route.handler
        if route.idempotent is not None and route.body is not None:  # Route: both or neither
            handler = idempotency(route.body(), route.idempotent)(handler)
        if route.guard is AUTHED:
            handler = auth.required(handler)
        elif route.guard is PUBLIC:
            handler = auth.public(handler)
        app.add_url_rule(route.path, endpoint=route.endpoint, view_func=_view(route.path, handler),
                         methods=[route.method], provide_automatic_options=False)


def check_handler(route: Route) -> None:
    """Refuse a handler whose parameters are not its path's variables, plus `uow` exactly
    when the route is idempotent (the Idempotency-Key wrapper passes one by that name)."""
    expected = set(re.findall(r"<(?:[^:<>]+:)?([^<>]+)>", route.path))
    if route.idempotent is not None:
        expected.add("uow")
    parameters = inspect.signature(route.handler).parameters.values()
    if any(p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) for p in parameters):
        return  # a wrapper that passes everything on: its handler was checked when made
    named = {p.name for p in parameters}
    if named != expected:
        missing, extra = sorted(expected - named), sorted(named - expected)
        raise TypeError(
            f"{route.endpoint}: its handler takes ({', '.join(sorted(named))}) but the route "
            f"passes ({', '.join(sorted(expected))})"
            + (f"; missing: {', '.join(missing)}" if missing else "")
            + (f"; not passed: {', '.join(extra)}" if extra else "")
            + ("" if route.idempotent is not None or "uow" not in named
               else " (`uow` comes only with idempotent=)"))


def _view(path: str, handler: Callable) -> Callable:
    """The Flask view of one route.

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

    return view
