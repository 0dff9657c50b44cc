"""Builds SayPI's OpenAPI 3.0.3 document from the route table.

Each operation comes from one `Route` and the `Doc` next to its handler; bodies and errors
describe themselves. Built once per worker and served as precomputed bytes; there is no
second table to drift apart. See docs/architecture.md ("The route table").
"""

from __future__ import annotations

import inspect
import json
import logging
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from apispec import APISpec
from apispec.ext.marshmallow import MarshmallowPlugin
from marshmallow import Schema
from marshmallow.fields import Nested

from app.cowsay import BUNDLED_COW_DIR, CowLibrary, Renderer
from app.http.doc import BodyDoc, Component, Doc, ParamsDoc, Success
from app.http.errors import (
    ALL_ERRORS,
    ActionNotAllowed,
    ApiError,
    AuthInvalid,
    AuthRequired,
    IdempotencyKeyInUse,
    IdempotencyKeyReused,
    InternalFailure,
    InvalidParams,
    InvalidRequest,
    PayloadTooLarge,
    RateLimited,
    ServiceUnavailable,
    UnsupportedMediaType,
)
from app.http.routing import Route
from app.openapi import components as c

OPENAPI_VERSION = "3.0.3"
TITLE = "SayPI"


def openapi_path(rule: str) -> str:
    """A Flask rule as an OpenAPI path: `<conversation_id>` becomes `{conversation_id}`."""
    return re.sub(r"<(?:[^:<>]+:)?([^<>]+)>", r"{\1}", rule)


def path_shape(path: str) -> str:
    """A path with every parameter replaced by `{}`, to compare docstrings with rules."""
    return re.sub(r"\{[^}]*\}", "{}", openapi_path(path))


def docstring_route(maker: Callable) -> tuple[str, str] | None:
    """The `METHOD /path` a maker's docstring starts with, if it does."""
    first = (inspect.getdoc(maker) or "").split("\n", 1)[0]
    match = re.match(r"([A-Z]+) (/\S*): ", first)
    return (match.group(1), match.group(2)) if match else None


def operation_id(maker: Callable) -> str:
    return maker.__name__.removeprefix("handle_")


def body_required(schema: type[Schema]) -> bool:
    """Whether a body must be sent: an empty one is `{}`, which a required field refuses."""
    return any(f.required for f in schema().fields.values())


def _doc(route: Route) -> Doc:
    if route.doc is None:
        raise ValueError(f"{route.method} {route.path} has no doc: describe it next to its "
                         "handler, or leave it out of the documented routes")
    return route.doc


def _summary_and_description(doc: Doc, config) -> tuple[str, str]:
    text = inspect.getdoc(doc.maker) or ""
    first, _, rest = text.partition("\n\n")  # the first paragraph, then the others
    text = re.sub(r"^[A-Z]+ /\S*: ", "", " ".join(first.split()))
    text = text[:1].upper() + text[1:]
    summary = text.split(";")[0].rstrip(".")
    parts = [text, rest.strip(), _format(doc.notes, config)]
    return summary, "\n\n".join(part for part in parts if part)


def _format(text: str, config) -> str:
    """Fill in this server's limits: `{max_moods}`, `{max_conversations}`, `{max_lines}`,
    `{max_batch_lines}`, `{retention}` (hours events are kept), `{max_webhook_endpoints}`,
    `{heartbeat}` and `{direct}` (a stream's heartbeat interval, and how long SayPI serves
    one itself)."""
    for name, value in (("max_moods", config.max_moods_per_user),
                        ("max_conversations", config.max_conversations_per_user),
                        ("max_lines", config.max_lines_per_conversation),
                        ("max_batch_lines", config.max_batch_lines),
                        ("retention", config.events_retention_hours),
                        ("max_webhook_endpoints", config.webhook_max_endpoints),
                        ("heartbeat", f"{config.stream_heartbeat_seconds:g}"),
                        ("direct", f"{config.stream_direct_seconds:g}")):
        text = text.replace("{" + name + "}", str(value))
    return text


# --- one operation --------------------------------------------------------------------------
def _errors_of(route: Route) -> list[type[ApiError]]:
    doc = _doc(route)
    errors: list[type[ApiError]] = list(doc.errors)
    if route.guard.authenticated:
        errors += [AuthRequired, AuthInvalid]
    if route.guard.limited:
        errors.append(RateLimited)
    if route.body is not None:
        errors += [InvalidRequest, InvalidParams, PayloadTooLarge, UnsupportedMediaType]
    if route.idempotent is not None:
        errors += [InvalidParams, IdempotencyKeyInUse, IdempotencyKeyReused]
    if doc.paginated:
        errors.append(InvalidParams)
    if doc.conflicts:
        errors.append(ActionNotAllowed)
    errors.append(InternalFailure)
    if route.guard.limited:  # every route that touches the database
        errors.append(ServiceUnavailable)
    seen: list[type[ApiError]] = []
    for error in errors:
        if error not in seen:
            seen.append(error)
    return seen


def _headers(route: Route, status: int, error_headers: Iterable[str] = ()) -> dict[str, Any]:
    names = ["X-Request-ID"]
    if route.guard.limited:
        names += ["RateLimit", "RateLimit-Policy"]
    if status == 201:
        names.append("Location")
    if _doc(route).etag and route.method == "GET" and status in (200, 304):
        names.append("ETag")
    if route.idempotent is not None and status < 500 and status != 429:
        names.append("Idempotent-Replayed")
    names += [n for n in error_headers if n not in names]
    return {name: c.ref("headers", name) for name in names}


def _error_response(route: Route, status: int, errors: list[type[ApiError]],
                    examples: Mapping[type[ApiError], ApiError], config) -> dict[str, Any]:
    conflicts = _doc(route).conflicts
    refs = [c.ref("schemas", c.error_name(e)) for e in errors]
    schema = refs[0] if len(refs) == 1 else {"oneOf": refs}
    lines_ = []
    for error in errors:
        when = error.when
        if error is ActionNotAllowed and conflicts:
            when = "a rule refuses the action: " + "; ".join(
                f"You may not {_format(a, config)}" for a in conflicts)
        lines_.append(f"`{error.code}`: {when}.")
    media_examples: dict[str, Any] = {}
    for error in errors:
        if error is ActionNotAllowed and conflicts:
            for n, action in enumerate(conflicts):
                media_examples[f"{error.code}_{n + 1}"] = {
                    "value": ActionNotAllowed(_format(action, config)).body()}
        else:
            media_examples[error.code] = {"value": examples[error].body()}
    error_headers: list[str] = []
    for error in errors:
        if error in (RateLimited, ServiceUnavailable):
            error_headers.append("Retry-After")
        if error in (AuthRequired, AuthInvalid):
            error_headers.append("WWW-Authenticate")
    return {
        "description": " ".join(lines_),
        "headers": _headers(route, status, error_headers),
        "content": {"application/json": {"schema": schema, "examples": media_examples}},
    }


def _name(body: Any) -> str:
    """The component name of a response body: a Component's, or the schema class's."""
    return body.name if isinstance(body, Component) else body.__name__


def _success_response(route: Route, success: Success,
                      examples: Mapping[Any, Any]) -> dict[str, Any]:
    response: dict[str, Any] = {"description": success.description,
                                "headers": _headers(route, success.status)}
    body = success.schema
    if body is not None:
        media_type = body.media_type if isinstance(body, Component) else "application/json"
        content = {media_type: {"schema": c.ref("schemas", _name(body)),
                                "example": examples[body]}}
        if success.text is not None:
            content["text/plain"] = {"schema": {"type": "string", "description": success.text},
                                     "example": examples[("text", body)]}
            response["description"] += " " + success.text
        response["content"] = content
    if success.links:
        response["links"] = {
            name: {"operationId": operation_id(link.operation),
                   "parameters": dict(link.parameters), "description": link.description}
            for name, link in success.links.items()}
    return response


def _operation(route: Route, config, error_examples: Mapping[type[ApiError], ApiError],
               examples: Mapping[str, Any]) -> dict[str, Any]:
    doc = _doc(route)
    summary, description = _summary_and_description(doc, config)
    parameters: list[dict[str, Any] | str] = []
    for name in re.findall(r"<(?:[^:<>]+:)?([^<>]+)>", route.path):
        parameters.append({"name": name, "in": "path", "required": True,
                           **c.PATH_PARAMETERS[name]})
    if doc.paginated:
        parameters += ["limit", "starting_after", "ending_before"]
    parameters += list(doc.query)
    if route.idempotent is not None:
        parameters.append("Idempotency-Key")
    if doc.etag:
        parameters.append("If-None-Match")
    parameters.append("X-Request-ID")  # component names; apispec makes them $refs

    responses: dict[str, Any] = {}
    for success in doc.success:
        responses[str(success.status)] = _success_response(route, success, examples)
    if doc.etag:
        responses["304"] = {"description": "Not modified: `If-None-Match` names the current "
                                           "`ETag`. No body.",
                            "headers": _headers(route, 304)}
    by_status: dict[int, list[type[ApiError]]] = {}
    for error in _errors_of(route):
        by_status.setdefault(error.status, []).append(error)
    for status in sorted(by_status):
        if str(status) in responses:  # health 503s are the health body, never an error
            continue
        responses[str(status)] = _error_response(route, status, by_status[status],
                                                 error_examples, config)
    operation: dict[str, Any] = {
        "operationId": operation_id(doc.maker),
        "summary": summary,
        "description": description,
        "tags": [doc.tag],
        "parameters": parameters,
        "responses": dict(sorted(responses.items())),
    }
    if not route.guard.authenticated:
        operation["security"] = []
    if route.body is not None:
        required = body_required(route.body)
        ref = c.ref("schemas", route.body.__name__)
        example = doc.request_example or {}
        operation["requestBody"] = {
            "required": required,
            "description": "A JSON object or a form. " + (
                "Required." if required else
                "Optional: an empty body, of any type, is an empty object."),
            "content": {"application/json": {"schema": ref, "example": example},
                        "application/x-www-form-urlencoded": {
                            "schema": ref,
                            "example": {k: v for k, v in example.items() if v is not None}}},
        }
    return operation


def _responses(routes: Sequence[Route]) -> tuple[list[type[Schema]], list[Component]]:
    """Every response body the routes' docs name, and what those refer to: the marshmallow
    schemas (each after the schemas it nests) and the JSON Schema components."""
    schemas: list[type[Schema]] = []
    components: list[Component] = []

    def add(body: Any) -> None:
        if isinstance(body, Component):
            for required in (*body.requires, *([body.items] if body.items else [])):
                add(required)
            if body not in components:
                components.append(body)
            return
        for field_ in body._declared_fields.values():
            inner = getattr(field_, "inner", field_)  # a List's item field
            if isinstance(inner, Nested) and isinstance(inner.nested, type):
                add(inner.nested)
        if body not in schemas:
            schemas.append(body)

    for route in routes:
        for success in _doc(route).success:
            if success.schema is not None:
                add(success.schema)
    return schemas, components


def _query_parameters(routes: Sequence[Route]) -> dict[str, Mapping[str, Any]]:
    """The query parameters the routes' docs describe beyond the list's, by component name."""
    return {name: parameter for route in routes for name, parameter in _doc(route).query.items()}


def _examples(schemas: Iterable[type[Schema]], components: Iterable[Component],
              renderer: Renderer) -> dict[Any, Any]:
    """Each body's example (and its text/plain form, under ("text", body)), made by its own
    description from the example objects."""
    examples: dict[Any, Any] = {}
    for schema in schemas:
        doc: BodyDoc = schema.openapi  # type: ignore[attr-defined]
        examples[schema] = doc.example(renderer)
        if doc.text_example is not None:
            examples[("text", schema)] = doc.text_example(renderer)
    for component in components:
        if component.example is not None:
            examples[component] = component.example(renderer)
    return examples


def _bodies(routes: Sequence[Route]) -> list[type[Schema]]:
    """Each request body schema, once, in the order of the routes."""
    bodies: list[type[Schema]] = []
    for route in routes:
        if route.body is not None and route.body not in bodies:
            bodies.append(route.body)
    return bodies


def _info_description(config) -> str:
    user_rate, ip_rate = config.rate_limit_user_per_minute, config.rate_limit_ip_per_minute
    limits = (f"On this server: {user_rate} requests per minute per user (burst "
              f"{config.rate_limit_user_burst}) and {ip_rate} per minute per client address "
              f"(burst {config.rate_limit_ip_burst}); 0 means that limit is off.")
    per = config.rate_limit_renders_per_admission
    if per and user_rate:
        limits += (f" A request that renders lines not rendered recently costs one more "
                   f"request of the user's limit per {per} such lines, charged after it "
                   f"answers (its `RateLimit` header shows what is left).")
    return f"""\
SayPI is a cowsay conversation API: users create conversations in which animals speak or
think lines of text, rendered as classic cowsay art.

**Requests.** Write endpoints take a JSON object (`application/json`) or a form
(`application/x-www-form-urlencoded`); an empty body of any type is an empty object, any
other non-empty body is `415`. Unknown parameters are ignored. JSON values must have the
documented type (no coercion); form values are parsed (`think=true`). A JSON `null` for an
optional parameter means "not given", except where a parameter says it clears a value.
Strings may not contain control characters (newline and tab are allowed in a line's `text`)
or unpaired surrogates (`\\ud800` in JSON).
Bodies over {config.max_body_bytes} bytes (`MAX_BODY_BYTES`) are `413`. Routing comes first:
an unknown path is `404` and a wrong method `405 method_not_allowed` with an `Allow` header,
with or without a token.

**Authentication.** `Authorization: Bearer <token>`, the token `POST /users` returns once.
Everything else is yours alone: another user's object is `404`, never `403`. Authenticated
responses carry `Cache-Control: no-store`.

**Errors.** Every error is a JSON `Error` object: `code` (one code, one HTTP status),
`message` (complete sentences) and, for some codes, `data`. No response carries a stack
trace, SQL or a secret.

**Every response** carries `X-Request-ID`. Successful GETs of objects and lists carry an
`ETag` and answer a matching `If-None-Match` with `304`.

**Tracing.** A W3C `traceparent` (and `tracestate`) on a request continues the caller's
trace; a malformed one is ignored. When the server traces, every response carries a
`traceparent` naming the request's own span.

**Creation.** `POST` returns `201` with a `Location`, and takes an optional `Idempotency-Key`.

**Lists** are keyset-paginated with `limit`, `starting_after` and `ending_before`, oldest
first, as `{{"type", "has_more", "data"}}`.

**Rate limits.** Per user once authenticated, per client address before (GCRA), shared by
all processes. Limited responses carry `RateLimit` and `RateLimit-Policy`; an exceeded limit
is `429` with `Retry-After`. {limits} Health, metrics and docs are never limited.

**Object limits** on this server: {config.max_conversations_per_user} conversations and
{config.max_moods_per_user} moods per user, {config.max_lines_per_conversation} lines per
conversation; more is `409 action_not_allowed`. One request creates at most
{config.max_batch_lines} lines (`MAX_BATCH_LINES`: a batch, or a new conversation's `lines`).

**Decisions where the contract is silent** are stated in each operation's description:
malformed ids are `404 not_found` (they name nothing), not `400`; `PATCH
/conversations/{{conversation_id}}` requires `heading`; `PUT /moods/{{name}}` takes no
`Idempotency-Key` (PUT is idempotent by itself); health and metrics responses are never
cached and carry no ETag.
"""


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("saypi")
    except Exception:  # not installed as a distribution (a bare checkout)
        return "0.0.0"


def build_spec(config, routes: Iterable[Route]) -> dict[str, Any]:
    """The OpenAPI document of `routes` (each with a `doc`), as a dict."""
    routes = list(routes)
    plugin = MarshmallowPlugin()
    spec = APISpec(
        title=TITLE, version=_version(), openapi_version=OPENAPI_VERSION, plugins=[plugin],
        info={"description": _info_description(config)},
        tags=[{"name": "Users", "description": "Sign up, and your own user object."},
              {"name": "Animals", "description": "The cowsay animals this server renders."},
              {"name": "Moods", "description": "Eyes and tongues: eight built-ins plus your "
                                               "own."},
              {"name": "Conversations", "description": "A heading and the lines said in it."},
              {"name": "Lines", "description": "What an animal says or thinks, rendered."},
              {"name": "Events", "description": "Every change you made, in commit order."},
              {"name": "Operations", "description": "Health checks and metrics: never "
                                                    "authenticated or rate limited."}],
        security=[{"bearerAuth": []}],
    )
    if plugin.converter is None:  # set by APISpec's init_spec above
        raise RuntimeError("the marshmallow plugin was not initialised")
    plugin.converter.add_attribute_function(c.field_properties)
    spec.components.security_scheme("bearerAuth", {
        "type": "http", "scheme": "bearer",
        "description": "The token `POST /users` returns, once. Tokens are verified without a "
                       "database round trip and never appear in URLs or logs."})

    response_schemas, components = _responses(routes)
    for schema in response_schemas:
        doc: BodyDoc = schema.openapi  # type: ignore[attr-defined]
        c.response_component(spec, schema, doc.notes, doc.description)
    for schema in _bodies(routes):
        params: ParamsDoc = getattr(schema, "openapi", None) or ParamsDoc()
        c.request_component(spec, schema, params.defaults, params.notes)
    renderer = Renderer(CowLibrary.load([BUNDLED_COW_DIR], logging.getLogger("saypi.openapi")))
    examples = _examples(response_schemas, components, renderer)
    for component in components:
        spec.components.schema(component.name, component=dict(component.schema))

    error_examples = {error: error.example(config) for error in ALL_ERRORS}
    spec.components.schema("Error", component={
        "type": "object", "required": ["code", "message"],
        "description": "The body of every error response.",
        "properties": {
            "code": {"type": "string", "enum": [e.code for e in ALL_ERRORS],
                     "description": "A stable machine string; one code, one HTTP status."},
            "message": {"type": "string", "description": "Complete sentences built only from "
                                                         "the error's own data."},
            "data": {"description": "Structured detail; its shape depends on `code`, and "
                                    "it is absent for codes without detail."},
        },
        "example": error_examples[InvalidParams].body(),
    })
    for error in ALL_ERRORS:
        data = error.data_schema
        properties: dict[str, Any] = {"code": {"type": "string", "enum": [error.code]},
                                      "message": {"type": "string"}}
        if data is not None:
            properties["data"] = data
        spec.components.schema(c.error_name(error), component={
            "description": f"`{error.code}` ({error.status}): {error.when}.",
            "allOf": [c.ref("schemas", "Error"), {
                "type": "object", "required": ["code", "message", *(["data"] if data else [])],
                "additionalProperties": False, "properties": properties}],
            "example": error_examples[error].body(),
        })
    for name, header in c.HEADERS.items():
        spec.components.header(name, header)
    for name, parameter in {**c.PARAMETERS, **_query_parameters(routes)}.items():
        spec.components.parameter(name, parameter["in"], {
            k: v for k, v in parameter.items() if k not in ("in",)})

    paths: dict[str, dict[str, Any]] = {}
    for route in routes:
        paths.setdefault(openapi_path(route.path), {})[route.method.lower()] = _operation(
            route, config, error_examples, examples)
    for path, operations in paths.items():
        spec.path(path=path, operations=operations)
    document = spec.to_dict()
    for body in (*response_schemas, *components):
        if body in examples:
            document["components"]["schemas"][_name(body)]["example"] = examples[body]
    return document


def spec_json(config, routes: Iterable[Route]) -> bytes:
    """The OpenAPI document of `routes`, serialised once."""
    return json.dumps(build_spec(config, routes), ensure_ascii=False, indent=1).encode("utf-8")
