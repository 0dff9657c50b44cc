"""The OpenAPI description: valid, complete and in step with the routes.

The document is built from routes.py's Route entries, the same ones Flask
registers, so it cannot drift from them by construction. The tests here check
that construction: every rule of an app registered from the table (but the
docs' own and debug's) is in the document and nothing else is, and what the
document says about authentication, rate limits, bodies and idempotency
follows the entries (a hand-made table shows it).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import re
from types import SimpleNamespace

import pytest
from flask import Flask
from openapi_schema_validator import OAS30Validator
from openapi_spec_validator import validate as validate_spec
from openapi_spec_validator.validation.exceptions import OpenAPIValidationError

from app.api import conversations, lines, moods, render, users
from app.config import Config
from app.cowsay import BUNDLED_COW_DIR, CowLibrary, Renderer
from app.http import request_state, routing
from app.http.auth import Authenticator
from app.http.doc import Doc, Success
from app.http.errors import ALL_ERRORS
from app.http.idempotency import Idempotency
from app.http.routing import Route, register
from app.http.tokens import TokenSigner
from app.openapi import components
from app.openapi.builder import build_spec, docstring_route, openapi_path, path_shape, spec_json
from routes import documented_routes, routes

CONFIG = Config.from_env({}, ["serve"]).replace(fault_injection=True)

# Every endpoint API.md lists, but /openapi.json and /docs, which describe the others.
CONTRACT = {
    ("POST", "/users"), ("GET", "/users/{user_id}"), ("PATCH", "/users/{user_id}"),
    ("DELETE", "/users/{user_id}"), ("GET", "/animals"),
    ("GET", "/moods"), ("GET", "/moods/{name}"), ("PUT", "/moods/{name}"),
    ("DELETE", "/moods/{name}"),
    ("GET", "/conversations"), ("POST", "/conversations"),
    ("GET", "/conversations/{conversation_id}"), ("PATCH", "/conversations/{conversation_id}"),
    ("DELETE", "/conversations/{conversation_id}"),
    ("GET", "/conversations/{conversation_id}/lines"),
    ("POST", "/conversations/{conversation_id}/lines"),
    ("GET", "/conversations/{conversation_id}/lines/{line_id}"),
    ("DELETE", "/conversations/{conversation_id}/lines/{line_id}"),
    ("POST", "/conversations/{conversation_id}/lines/batch"), ("POST", "/render"),
    ("GET", "/health/live"), ("GET", "/health/ready"), ("GET", "/health/quick"),
    ("GET", "/health/detailed"), ("GET", "/metrics"),
    ("GET", "/events"), ("GET", "/events/{event_id}"), ("GET", "/events/stream"),
    ("POST", "/webhook_endpoints"), ("GET", "/webhook_endpoints"),
    ("GET", "/webhook_endpoints/{endpoint_id}"), ("PATCH", "/webhook_endpoints/{endpoint_id}"),
    ("DELETE", "/webhook_endpoints/{endpoint_id}"),
    ("POST", "/webhook_endpoints/{endpoint_id}/rotate_secret"),
    ("POST", "/webhook_endpoints/{endpoint_id}/ping"),
    ("GET", "/webhook_endpoints/{endpoint_id}/deliveries"),
}

# The statuses API.md gives each endpoint (500 and 503 apply to every API endpoint).
API_ERRORS = {"500", "503"}
AUTHED = {"401", "429"} | API_ERRORS
BODY = {"400", "413", "415"}
IDEMPOTENT = {"400", "409", "422"}
CONTRACT_STATUSES = {
    ("POST", "/users"): {"201", "409", "429"} | BODY | IDEMPOTENT | API_ERRORS,
    ("GET", "/users/{user_id}"): {"200", "304", "404"} | AUTHED,
    ("PATCH", "/users/{user_id}"): {"200", "404", "409"} | BODY | AUTHED,
    ("DELETE", "/users/{user_id}"): {"204", "404"} | AUTHED,
    ("GET", "/animals"): {"200", "304"} | AUTHED,
    ("GET", "/moods"): {"200", "304", "400"} | AUTHED,
    ("GET", "/moods/{name}"): {"200", "304", "404"} | AUTHED,
    ("PUT", "/moods/{name}"): {"200", "201", "409"} | BODY | AUTHED,
    ("DELETE", "/moods/{name}"): {"204", "404", "409"} | AUTHED,
    ("GET", "/conversations"): {"200", "304", "400"} | AUTHED,
    ("POST", "/conversations"): {"201", "409"} | BODY | IDEMPOTENT | AUTHED,
    ("GET", "/conversations/{conversation_id}"): {"200", "304", "404"} | AUTHED,
    ("PATCH", "/conversations/{conversation_id}"): {"200", "404"} | BODY | AUTHED,
    ("DELETE", "/conversations/{conversation_id}"): {"204", "404"} | AUTHED,
    ("GET", "/conversations/{conversation_id}/lines"): {"200", "304", "400", "404"} | AUTHED,
    ("POST", "/conversations/{conversation_id}/lines"):
        {"201", "404", "409"} | BODY | IDEMPOTENT | AUTHED,
    ("GET", "/conversations/{conversation_id}/lines/{line_id}"):
        {"200", "304", "404"} | AUTHED,
    ("DELETE", "/conversations/{conversation_id}/lines/{line_id}"): {"204", "404"} | AUTHED,
    ("POST", "/conversations/{conversation_id}/lines/batch"):
        {"201", "404", "409"} | BODY | IDEMPOTENT | AUTHED,
    ("POST", "/render"): {"200"} | BODY | AUTHED,
    ("GET", "/health/live"): {"200", "500"},
    ("GET", "/health/ready"): {"200", "503", "500"},
    ("GET", "/health/quick"): {"200", "503", "500"},
    ("GET", "/health/detailed"): {"200", "503", "500"},
    ("GET", "/metrics"): {"200", "500"},
    ("GET", "/events"): {"200", "304", "400"} | AUTHED,
    ("GET", "/events/{event_id}"): {"200", "304", "404"} | AUTHED,
    ("POST", "/webhook_endpoints"): {"201", "409"} | BODY | IDEMPOTENT | AUTHED,
    ("GET", "/webhook_endpoints"): {"200", "304", "400"} | AUTHED,
    ("GET", "/webhook_endpoints/{endpoint_id}"): {"200", "304", "404"} | AUTHED,
    ("PATCH", "/webhook_endpoints/{endpoint_id}"): {"200", "404"} | BODY | AUTHED,
    ("DELETE", "/webhook_endpoints/{endpoint_id}"): {"204", "404"} | AUTHED,
    ("POST", "/webhook_endpoints/{endpoint_id}/rotate_secret"): {"200", "404"} | BODY | AUTHED,
    ("POST", "/webhook_endpoints/{endpoint_id}/ping"): {"202", "404"} | BODY | AUTHED,
    ("GET", "/webhook_endpoints/{endpoint_id}/deliveries"):
        {"200", "304", "400", "404"} | AUTHED,
    ("GET", "/events/stream"): {"200", "400", "404", "503"} | AUTHED,
}


def inert_deps(config: Config) -> SimpleNamespace:
    """Dependencies enough to build the route table: nothing here is ever called."""
    return SimpleNamespace(
        config=config, logger=logging.getLogger("test"), lifecycle=None, health=None,
        metrics=None, sample_metrics=None, presence=None, users=None, moods=None,
        conversations=None, lines=None, slow_queries=None, events=None, webhooks=None,
        outbound=None, grip=None, stream_slots=None, stream_settings=None,
        auth=Authenticator(TokenSigner(("a-secret-for-route-tests",)), presence=None),
        idempotency=Idempotency(None, None, None),
        renderer=Renderer(CowLibrary.load([BUNDLED_COW_DIR], logging.getLogger("test"))))


def routed_app() -> Flask:
    """A Flask app with the real route table; the dependencies handlers use are not needed."""
    app = Flask("saypi-routes")
    deps = inert_deps(CONFIG)
    register(app, routes(deps), deps.auth, deps.idempotency)
    return app


DOCUMENTED = documented_routes(inert_deps(CONFIG))


def route_of(method: str, path: str) -> Route:
    """The documented Route of an OpenAPI method and path."""
    rule = re.sub(r"\{(\w+)\}", r"<\1>", path)
    return next(r for r in DOCUMENTED if (r.method, r.path) == (method, rule))


@pytest.fixture(scope="module")
def app() -> Flask:
    return routed_app()


@pytest.fixture(scope="module")
def spec() -> dict:
    return build_spec(CONFIG, DOCUMENTED)


def operations(spec: dict):
    for path, items in spec["paths"].items():
        for method, operation in items.items():
            yield method.upper(), path, operation


def resolve(node, spec: dict):
    """A copy of `node` with every local $ref replaced by its target."""
    if isinstance(node, dict):
        if "$ref" in node:
            target = spec
            for part in node["$ref"].removeprefix("#/").split("/"):
                target = target[part]
            return resolve(target, spec)
        return {key: resolve(value, spec) for key, value in node.items()}
    if isinstance(node, list):
        return [resolve(item, spec) for item in node]
    return node


# --- the document ----------------------------------------------------------------------
def test_spec_is_valid_openapi_3_0_3(spec):
    validate_spec(spec)
    assert spec["openapi"] == "3.0.3"
    assert spec["info"]["title"] == "SayPI" and spec["info"]["description"]


def test_a_broken_spec_is_rejected_by_the_validator(spec):
    broken = copy.deepcopy(spec)
    broken["paths"]["/users"]["post"]["responses"]["201"].pop("description")
    with pytest.raises(OpenAPIValidationError):
        validate_spec(broken)


def test_every_contract_endpoint_is_described_and_nothing_else(spec):
    described = {(method, path) for method, path, _ in operations(spec)}
    assert described == CONTRACT
    assert not any(path.startswith(("/docs", "/openapi", "/debug", "/playground"))
                   for path in spec["paths"])
    assert "/" not in spec["paths"]


@pytest.mark.parametrize(("method", "path"), sorted(CONTRACT_STATUSES))
def test_every_status_of_the_contract_is_documented(spec, method, path):
    documented = set(spec["paths"][path][method.lower()]["responses"])
    assert documented == CONTRACT_STATUSES[(method, path)]


# --- routes and documentation: one table -------------------------------------------------
def registered(app: Flask) -> set[tuple[str, str]]:
    """(method, rule) of every route of an app."""
    return {(method, rule.rule) for rule in app.url_map.iter_rules()
            if rule.endpoint != "static" for method in rule.methods - {"HEAD", "OPTIONS"}}


def test_the_spec_has_exactly_the_registered_operations(app, spec):
    undocumented = {(m, r) for m, r in registered(app)
                    if r in ("/openapi.json", "/docs", "/docs/<asset>", "/playground",
                             "/playground/<asset>", "/", "/events/stream/next")
                    or r.startswith("/debug/")}
    assert {(method, openapi_path(rule)) for method, rule in registered(app) - undocumented} == \
        {(method, path) for method, path, _ in operations(spec)}
    assert {rule for _, rule in undocumented if rule.startswith("/debug/")}, \
        "fault injection is on here, so its routes exist and are left out"


def test_the_served_document_describes_the_registered_documented_routes():
    deps = inert_deps(CONFIG)
    table = routes(deps)
    served = next(r for r in table if r.path == "/openapi.json")
    token = request_state.enter(request_state.RequestState({}, "test", "127.0.0.1"))
    try:
        with Flask("t").test_request_context():
            body = served.handler().get_data()
    finally:
        request_state.leave(token)
    documented = [r for r in table if r.doc is not None]
    assert [(r.method, r.path) for r in documented] == \
        [(r.method, r.path) for r in documented_routes(deps)]
    assert body == spec_json(CONFIG, documented)


def test_a_documented_route_without_a_doc_fails_the_build():
    bare = Route("GET", "/things", lambda: "", guard=routing.AUTHED)
    with pytest.raises(ValueError, match="GET /things has no doc"):
        build_spec(CONFIG, [*DOCUMENTED, bare])


def test_an_idempotent_route_needs_its_body_schema():
    with pytest.raises(ValueError, match="needs its body"):
        Route("POST", "/things", lambda: "", guard=routing.AUTHED, idempotent=routing.BY_USER)


def handle_things():
    """GET /things: the things, to document a hand-made route table."""


def test_authentication_rate_limits_bodies_and_idempotency_come_from_the_route_entries():
    doc = Doc(handle_things, "Users", success=(Success(200, "Things."),))
    table = [
        Route("GET", "/authed", lambda: "", guard=routing.AUTHED, doc=doc),
        Route("GET", "/public", lambda: "", guard=routing.PUBLIC, doc=doc),
        Route("GET", "/open", lambda: "", guard=routing.OPEN, doc=doc),
        Route("POST", "/posted", lambda: "", guard=routing.AUTHED,
              body=conversations.CreateConversation, doc=doc),
        Route("POST", "/idempotent", lambda: "", guard=routing.PUBLIC, body=users.CreateUser,
              idempotent=routing.BY_USER, doc=doc),
    ]
    document = build_spec(CONFIG, table)  # one doc for all: only the entries differ
    ops = {path: operation for method, path, operation in operations(document)}
    assert set(ops) == {"/authed", "/public", "/open", "/posted", "/idempotent"}

    def statuses(path):
        return set(ops[path]["responses"])

    def params(path):
        return {p.get("$ref", "").rsplit("/", 1)[-1] for p in ops[path]["parameters"]}

    def headers(path, status):
        return set(ops[path]["responses"][status]["headers"])

    assert "security" not in ops["/authed"] and statuses("/authed") == {
        "200", "401", "429", "500", "503"}
    assert ops["/public"]["security"] == [] and statuses("/public") == {"200", "429", "500", "503"}
    assert ops["/open"]["security"] == [] and statuses("/open") == {"200", "500"}
    assert {"RateLimit", "RateLimit-Policy"} <= headers("/public", "200")
    assert not {"RateLimit", "RateLimit-Policy"} & headers("/open", "200")

    assert "requestBody" not in ops["/authed"]
    posted = ops["/posted"]["requestBody"]
    assert posted["required"] is True  # CreateConversation requires its heading
    assert posted["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/CreateConversation"}
    assert ops["/idempotent"]["requestBody"]["required"] is False  # CreateUser requires nothing
    assert statuses("/posted") == {"200", "400", "401", "413", "415", "429", "500", "503"}
    assert "Idempotency-Key" not in params("/posted")
    assert "Idempotent-Replayed" not in headers("/posted", "200")

    assert "Idempotency-Key" in params("/idempotent")
    assert "Idempotent-Replayed" in headers("/idempotent", "200")
    assert {"409", "422"} <= statuses("/idempotent")
    codes = {e["value"]["code"] for e in
             ops["/idempotent"]["responses"]["409"]["content"]["application/json"]["examples"]
             .values()}
    assert codes == {"idempotency_key_in_use"}
    assert set(document["components"]["schemas"]) >= {"CreateConversation", "CreateUser"}
    assert "UpdateUser" not in document["components"]["schemas"]  # no route has that body


def test_changing_an_entry_changes_the_document():
    index = next(i for i, r in enumerate(DOCUMENTED) if (r.method, r.path) == ("GET", "/animals"))
    table = list(DOCUMENTED)
    table[index] = dataclasses.replace(table[index], guard=routing.PUBLIC)
    animals = build_spec(CONFIG, table)["paths"]["/animals"]["get"]
    assert animals["security"] == [] and "401" not in animals["responses"]
    assert json.dumps(build_spec(CONFIG, DOCUMENTED)) != json.dumps(build_spec(CONFIG, table))


def test_docstrings_name_the_route_they_document():
    for route in DOCUMENTED:
        found = docstring_route(route.doc.maker)
        assert found is not None, route.doc.maker
        assert (found[0], path_shape(found[1])) == (route.method, path_shape(route.path))


# --- operations ------------------------------------------------------------------------
def test_operations_have_summaries_descriptions_and_unique_ids(spec):
    ids = [operation["operationId"] for _, _, operation in operations(spec)]
    assert len(ids) == len(set(ids)) == len(CONTRACT)
    for _, _, operation in operations(spec):
        assert operation["summary"] and operation["description"] and operation["tags"]
        assert not operation["summary"].endswith(".")
    conversation = spec["paths"]["/conversations/{conversation_id}"]
    assert conversation["patch"]["summary"] == "Change the heading"  # from the docstring
    assert "`heading` is required" in conversation["patch"]["description"]


def test_security_and_headers_of_every_response(spec):
    assert spec["components"]["securitySchemes"]["bearerAuth"] == {
        **spec["components"]["securitySchemes"]["bearerAuth"], "type": "http",
        "scheme": "bearer"}
    assert spec["security"] == [{"bearerAuth": []}]
    for method, path, operation in operations(spec):
        route = route_of(method, path)
        assert ("security" in operation) == (not route.guard.authenticated)
        for status, response in operation["responses"].items():
            headers = response["headers"]
            assert "X-Request-ID" in headers, (method, path, status)
            assert ("RateLimit" in headers) == ("RateLimit-Policy" in headers) == \
                route.guard.limited
            if status == "429" or (status == "503" and route.guard.limited):  # not health 503s
                assert "Retry-After" in headers
            if status == "401":
                assert "WWW-Authenticate" in headers
            if status == "201":
                assert "Location" in headers
            if status in ("200", "304") and method == "GET" and route.doc.etag:
                assert "ETag" in headers
            assert ("Idempotent-Replayed" in headers) == \
                (route.idempotent is not None and int(status) < 500 and status != "429")


def test_parameters_of_lists_posts_and_gets(spec):
    for method, path, operation in operations(spec):
        refs = {p.get("$ref", "").rsplit("/", 1)[-1] for p in operation["parameters"]}
        route = route_of(method, path)
        assert ({"limit", "starting_after", "ending_before"} <= refs) == route.doc.paginated
        creates = any(success.status == 201 for success in route.doc.success)
        # Every POST that creates takes one; POST /render stores nothing, so it takes none.
        assert ("Idempotency-Key" in refs) == (method == "POST" and creates), (method, path)
        assert ("If-None-Match" in refs) == route.doc.etag
        path_params = [p["name"] for p in operation["parameters"] if p.get("in") == "path"]
        assert path_params == re.findall(r"\{(\w+)\}", path)
        if method in ("POST", "PUT", "PATCH"):
            content = operation["requestBody"]["content"]
            assert set(content) == {"application/json", "application/x-www-form-urlencoded"}


def test_error_components_are_the_error_classes(spec):
    schemas = spec["components"]["schemas"]
    assert set(schemas["Error"]["properties"]) == {"code", "message", "data"}
    codes = {}
    for error in ALL_ERRORS:
        component = schemas[f"{error.__name__}Error"]
        assert component["allOf"][0] == {"$ref": "#/components/schemas/Error"}
        assert component["allOf"][1]["properties"]["code"]["enum"] == [error.code]
        codes[f"#/components/schemas/{error.__name__}Error"] = error.status
    for method, path, operation in operations(spec):
        for status, response in operation["responses"].items():
            schema = response.get("content", {}).get("application/json", {}).get("schema", {})
            for ref in [s["$ref"] for s in schema.get("oneOf", [schema]) if "$ref" in s]:
                if ref in codes:
                    assert codes[ref] == int(status), (method, path, status, ref)


def test_schemas_come_from_the_handlers_marshmallow_schemas(spec):
    schemas = spec["components"]["schemas"]
    routed = {route.body for route in DOCUMENTED if route.body is not None}
    for schema in routed:
        assert schemas[schema.__name__]["properties"].keys() == schema().fields.keys()
    for schema in (users.CreateUser, users.UpdateUser, moods.PutMood, lines.CreateLine,
                   conversations.create_conversation_body(CONFIG.max_batch_lines),
                   lines.create_lines_body(CONFIG.max_batch_lines),
                   conversations.UpdateConversation):
        component = schemas[schema.__name__]
        assert set(component["properties"]) == set(schema().fields)
        assert set(component.get("required", [])) == \
            {name for name, f in schema().fields.items() if f.required}
        assert "additionalProperties" not in component  # unknown parameters are ignored
    for schema in (users.UserOut, users.CreatedUserOut, moods.MoodOut, lines.LineOut,
                   render.RenderOut, conversations.ConversationListItemOut,
                   conversations.ConversationOut):
        component = schemas[schema.__name__]
        assert set(component["properties"]) == set(component["required"]) == \
            set(schema().fields)
        assert component["additionalProperties"] is False
    text = schemas["CreateLine"]["properties"]["text"]
    assert (text["maxLength"], text["nullable"], text["default"]) == (1000, True, "")
    assert schemas["UpdateUser"]["properties"]["email"]["nullable"] is True
    assert "clears" in schemas["UpdateUser"]["properties"]["email"]["description"]
    assert schemas["LineOut"]["properties"]["think"] == {"type": "boolean"}
    assert schemas["UserOut"]["properties"]["name"]["nullable"] is True
    batch = schemas["CreateLines"]["properties"]["lines"]
    assert (batch["minItems"], batch["maxItems"], batch["items"]) == (
        1, CONFIG.max_batch_lines, {"$ref": "#/components/schemas/CreateLine"})
    assert schemas["CreateLines"]["required"] == ["lines"]
    first_lines = schemas["CreateConversation"]["properties"]["lines"]
    assert first_lines["nullable"] is True and first_lines["items"] == batch["items"]
    assert schemas["CreateConversation"]["required"] == ["heading"]


def test_patterns_agree_with_the_fields():
    cases = [
        (components.NO_CONTROL, ["", "héllo wörld 你好"], ["a\nb", "\x00", "\x85"]),
        (components.NO_CONTROL_EXCEPT_NEWLINE_TAB, ["a\nb\tc"], ["\r", "\x7f"]),
        (components.EMAIL, ["a@b.cd", "x.y+z@mail.example.com"],
         ["plain", "@b.cd", "a@b", "a b@c.de", "a@@b.c", "a@.com", "a@b.c."]),
        (components.MOOD_NAME, ["sleepy", "Mood 1", "~"], ["", "a/b", "é", "x" * 31]),
        (components.IDEMPOTENCY_KEY, ["k", "x" * 255], ["", "é", "x" * 256]),
    ]
    for pattern, good, bad in cases:
        for value in good:
            assert re.search(pattern, value), (pattern, value)
        for value in bad:
            assert not re.search(pattern, value), (pattern, value)


def _examples(spec: dict):
    """(where, example value, schema) of every example in the document."""
    for name, schema in spec["components"]["schemas"].items():
        if "example" in schema:
            yield f"schema {name}", schema["example"], schema
    for method, path, operation in operations(spec):
        bodies = [("request", operation.get("requestBody", {}).get("content", {}))]
        bodies += [(status, r.get("content", {})) for status, r in operation["responses"].items()]
        for where, content in bodies:
            for media, item in content.items():
                label = f"{method} {path} {where} {media}"
                if "example" in item:
                    yield label, item["example"], item["schema"]
                for name, example in item.get("examples", {}).items():
                    yield f"{label} {name}", example["value"], item["schema"]
        for parameter in operation["parameters"]:
            if "example" in parameter:
                yield f"{method} {path} {parameter['name']}", parameter["example"], \
                    parameter["schema"]


def test_every_example_matches_its_schema(spec):
    checked = 0
    for where, example, schema in _examples(spec):
        resolved = resolve(schema, spec)
        resolved.pop("example", None)
        errors = list(OAS30Validator(resolved).iter_errors(example))
        assert not errors, (where, [e.message for e in errors])
        checked += 1
    assert checked > 100


def test_a_wrong_example_would_be_caught(spec):
    schema = resolve({"$ref": "#/components/schemas/LineOut"}, spec)
    example = {**spec["components"]["schemas"]["LineOut"]["example"], "think": "yes"}
    assert list(OAS30Validator(schema).iter_errors(example))
