"""CORS header logic on a tiny Flask app shaped like SayPI's (no automatic OPTIONS)."""

from __future__ import annotations

from flask import Flask, jsonify

from app.http.cors import ALLOW_HEADERS, EXPOSE_HEADERS, install_cors

LISTED = "https://app.example.com"


def make_app(origins: tuple[str, ...]) -> Flask:
    app = Flask("cors-test")

    def get_thing():
        response = jsonify({"id": "x"})
        response.headers["ETag"] = '"abc"'
        return response

    def create_thing():
        return jsonify({"id": "y"}), 201, {"Location": "/things/y"}

    app.add_url_rule("/things", "GET /things", get_thing, methods=["GET"],
                     provide_automatic_options=False)
    app.add_url_rule("/things", "POST /things", create_thing, methods=["POST"],
                     provide_automatic_options=False)
    install_cors(app, origins)
    return app


def preflight(client, origin: str, path: str = "/things", method: str = "POST"):
    return client.options(path, headers={
        "Origin": origin, "Access-Control-Request-Method": method,
        "Access-Control-Request-Headers": "authorization, content-type, idempotency-key"})


def cors_headers(response) -> dict[str, str]:
    return {k: v for k, v in response.headers.items() if k.startswith("Access-Control-")}


def test_off_by_default():
    client = make_app(()).test_client()
    response = preflight(client, LISTED)
    assert response.status_code == 405  # routing answers, as without CORS
    assert cors_headers(response) == {}
    response = client.get("/things", headers={"Origin": LISTED})
    assert cors_headers(response) == {}
    assert "Vary" not in response.headers


def test_preflight_from_a_listed_origin():
    client = make_app((LISTED, "http://localhost:3000")).test_client()
    response = preflight(client, LISTED)
    assert response.status_code == 204
    assert response.data == b""
    assert cors_headers(response) == {
        "Access-Control-Allow-Origin": LISTED,
        "Access-Control-Allow-Methods": "GET, POST, PUT, PATCH, DELETE",
        "Access-Control-Allow-Headers": ALLOW_HEADERS,
        "Access-Control-Max-Age": "600",
    }
    assert ALLOW_HEADERS == ("Authorization, Content-Type, Idempotency-Key, X-Request-ID, "
                             "traceparent, tracestate")
    assert response.headers["Vary"] == "Origin"


def test_preflight_comes_before_routing():
    client = make_app((LISTED,)).test_client()
    # a path that exists for other methods, and one that does not exist at all
    for path, method in (("/things", "DELETE"), ("/nowhere", "GET")):
        response = preflight(client, LISTED, path, method)
        assert response.status_code == 204
        assert response.headers["Access-Control-Allow-Origin"] == LISTED


def test_preflight_from_an_unlisted_origin_gets_no_cors_headers():
    client = make_app((LISTED,)).test_client()
    response = preflight(client, "https://evil.example")
    assert response.status_code == 204
    assert cors_headers(response) == {}
    assert response.headers["Vary"] == "Origin"


def test_options_that_is_not_a_preflight_is_routed():
    client = make_app((LISTED,)).test_client()
    assert client.options("/things", headers={"Origin": LISTED}).status_code == 405
    assert client.options("/things", headers={
        "Access-Control-Request-Method": "GET"}).status_code == 405


def test_actual_responses_to_a_listed_origin():
    client = make_app((LISTED,)).test_client()
    for response in (client.get("/things", headers={"Origin": LISTED}),
                     client.post("/things", headers={"Origin": LISTED}),
                     client.get("/missing", headers={"Origin": LISTED})):
        assert cors_headers(response) == {
            "Access-Control-Allow-Origin": LISTED,
            "Access-Control-Expose-Headers": EXPOSE_HEADERS,
        }
        assert response.headers["Vary"] == "Origin"
    exposed = {h.strip() for h in EXPOSE_HEADERS.split(",")}
    assert exposed == {"ETag", "Location", "X-Request-ID", "RateLimit", "RateLimit-Policy",
                       "Retry-After", "Idempotent-Replayed", "traceparent"}


def test_actual_responses_to_others():
    client = make_app((LISTED,)).test_client()
    for headers in ({"Origin": "https://evil.example"}, {"Origin": "null"}, {}):
        response = client.get("/things", headers=headers)
        assert response.status_code == 200
        assert cors_headers(response) == {}
        assert response.headers["Vary"] == "Origin"


def test_origins_compare_without_case_or_trailing_slash():
    client = make_app(("HTTPS://App.Example.com/",)).test_client()
    response = client.get("/things", headers={"Origin": LISTED})
    assert response.headers["Access-Control-Allow-Origin"] == LISTED
    assert "Access-Control-Allow-Origin" not in client.get(
        "/things", headers={"Origin": "https://app.example.com.evil"}).headers
    assert "Access-Control-Allow-Origin" not in client.get(
        "/things", headers={"Origin": "http://app.example.com"}).headers


def test_existing_vary_is_kept():
    app = make_app((LISTED,))

    @app.route("/varied", methods=["GET"], provide_automatic_options=False)
    def varied():
        return "x", 200, {"Vary": "Accept"}

    response = app.test_client().get("/varied", headers={"Origin": LISTED})
    assert {v.strip() for v in response.headers["Vary"].split(",")} == {"Accept", "Origin"}


def test_wildcard_allows_every_origin_without_vary():
    client = make_app(("*",)).test_client()
    response = preflight(client, "https://anyone.example")
    assert response.status_code == 204
    assert response.headers["Access-Control-Allow-Origin"] == "*"
    response = client.get("/things", headers={"Origin": "https://anyone.example"})
    assert response.headers["Access-Control-Allow-Origin"] == "*"
    assert "Vary" not in response.headers
    assert "Access-Control-Allow-Credentials" not in response.headers
