"""How an API area describes its operations for the OpenAPI document.

A `Doc` says what a route's entry in routes.py does not: its tag, which
statuses it answers with which bodies, its links, whether it is paginated or
carries ETags, and decisions where the contract is silent. Whether it is
authenticated, rate limited or idempotent, and its body schema, are facts of
the `Route` (app/http/routing.py) and are read from there.

Plain data that imports nothing of SayPI at run time, so every app/api module can
describe its handlers without importing the builder.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from app.http.errors import ApiError


@dataclass(frozen=True, slots=True)
class Link:
    """An OpenAPI link: a later operation that takes a value from this response."""

    operation: Callable  # the target's maker function (its operationId)
    parameters: Mapping[str, str]
    description: str


@dataclass(frozen=True, slots=True)
class Success:
    """One successful status of an operation and what its body is."""

    status: int
    description: str
    schema: str | None = None  # component name; None: no body
    text: str | None = None  # what `Accept: text/plain` returns instead, if it can
    links: Mapping[str, Link] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Doc:
    """The description of one operation.

    `maker` is the maker function of the route's handler: its docstring gives
    the summary and description, its name the operationId. `notes` and
    `conflicts` may name this server's limits as `{max_moods}`,
    `{max_conversations}`, `{max_lines}` and `{max_batch_lines}`.
    """

    maker: Callable
    tag: str
    success: tuple[Success, ...]
    errors: tuple[type[ApiError], ...] = ()  # beyond those the route's facts imply
    paginated: bool = False  # limit, starting_after, ending_before
    etag: bool = False  # successful GETs carry an ETag and answer If-None-Match with 304
    request_example: Mapping[str, Any] | None = None
    body_defaults: Mapping[str, Any] = field(default_factory=dict)  # per body parameter
    body_notes: Mapping[str, str] = field(default_factory=dict)  # per body parameter
    conflicts: tuple[str, ...] = ()  # actions refused with 409 action_not_allowed
    notes: str = ""  # decisions beyond the docstring, where the contract is silent
    query: tuple[str, ...] = ()  # query parameters beyond the list's (component names)
