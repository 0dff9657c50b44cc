"""How an API area describes its operations for the OpenAPI document.

A `Doc` says what a route's entry does not (tag, statuses and bodies, links, pagination,
ETags, notes). Plain data that imports nothing of SayPI at run time, so every api module can
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
class ParamsDoc:
    """What the document says of a request schema's parameters: set as the schema's `openapi`."""

    notes: Mapping[str, str] = field(default_factory=dict)  # per parameter
    defaults: Mapping[str, Any] = field(default_factory=dict)  # per parameter


@dataclass(frozen=True, slots=True)
class BodyDoc:
    """What the document says of a response schema: set as the schema's `openapi`."""

    description: str
    example: Callable[[Any], Any]  # the renderer -> an example body
    notes: Mapping[str, str] = field(default_factory=dict)  # per property
    text_example: Callable[[Any], str] | None = None  # the renderer -> its text/plain form


@dataclass(frozen=True, slots=True, eq=False)  # compared and hashed by identity
class Component:
    """A response body written as JSON Schema: `requires` are the components it refers to."""

    name: str
    schema: Mapping[str, Any]
    example: Callable[[Any], Any] | None = None  # the renderer -> an example body
    requires: tuple[Any, ...] = ()  # Components, or schema classes with `openapi`
    items: Any = None  # a list's item schema (a marshmallow Schema with `openapi`)
    media_type: str = "application/json"


def list_of(name: str, item: Any, kind: str, example: Callable[[Any], Any]) -> Component:
    """A keyset page of `item` objects (a schema class or a Component):
    `{"type": kind, "has_more", "data"}`."""
    item_name = item.name if isinstance(item, Component) else item.__name__
    return Component(name, {
        "type": "object", "required": ["type", "has_more", "data"],
        "additionalProperties": False,
        "description": f"One page of {kind}s, oldest first.",
        "properties": {
            "type": {"type": "string", "enum": [kind]},
            "has_more": {"type": "boolean", "description": (
                "Whether more objects follow this page (with `ending_before`: precede it).")},
            "data": {"type": "array", "items": {"$ref": f"#/components/schemas/{item_name}"}},
        },
    }, example, items=item)


@dataclass(frozen=True, slots=True)
class Success:
    """One successful status of an operation and what its body is."""

    status: int
    description: str
    # A marshmallow schema with an `openapi` BodyDoc, or a Component; None: no body.
    schema: Any = None
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
    # Query parameters beyond the list's, by component name: OpenAPI parameter objects.
    query: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    etag: bool = False  # successful GETs carry an ETag and answer If-None-Match with 304
    request_example: Mapping[str, Any] | None = None  # the body's schema has the notes
    conflicts: tuple[str, ...] = ()  # actions refused with 409 action_not_allowed
    notes: str = ""  # decisions beyond the docstring, where the contract is silent
