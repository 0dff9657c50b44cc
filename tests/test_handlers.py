"""The in-process layer: the real app from new_server(deps) on in-memory repositories.

No PostgreSQL, no gunicorn: Flask's test client talks to the same envelope,
routes and handlers that production serves, in milliseconds, for the dense
logic: validation, error mapping, pagination parameters, ETag/304 and the
idempotency decisions. What only a real database or server can show stays
in the end-to-end suite.
"""

from __future__ import annotations

import pytest

from app.http.tokens import TokenSigner
from app.server import new_server
from tests.fakes import SECRET, fake_deps


class Caller:
    """A user of the in-process app: a test client and a bearer token."""

    def __init__(self, client, token: str | None):
        self.client = client
        self.headers = {"Authorization": f"Bearer {token}"} if token else {}

    def call(self, method: str, path: str, **kwargs):
        headers = {**self.headers, **kwargs.pop("headers", {})}
        return self.client.open(path, method=method, headers=headers, **kwargs)


@pytest.fixture
def deps():
    return fake_deps(MAX_CONVERSATIONS_PER_USER="3", MAX_MOODS_PER_USER="2",
                     MAX_LINES_PER_CONVERSATION="2")


@pytest.fixture
def client(deps):
    return new_server(deps).test_client()


def user_of(deps, client, name: str = "Ada") -> Caller:
    user = deps.users.create(name, None)
    return Caller(client, TokenSigner((SECRET,)).sign(user.id))


@pytest.fixture
def ada(deps, client) -> Caller:
    return user_of(deps, client)


def error_of(response) -> tuple[int, str, object]:
    body = response.get_json()
    assert set(body) <= {"code", "message", "data"}
    return response.status_code, body["code"], body.get("data")


# --- validation ------------------------------------------------------------------------
def test_every_invalid_line_parameter_is_reported_at_once(ada):
    convo = ada.call("POST", "/conversations", json={"heading": "h"}).get_json()
    response = ada.call("POST", f"/conversations/{convo['id']}/lines",
                        json={"animal": "no-such-animal", "mood": "nope", "think": "true",
                              "text": "x" * 1001})
    status, code, data = error_of(response)
    assert (status, code) == (400, "invalid_params")
    assert {tuple(p["params"]) for p in data} == {("animal",), ("mood",), ("think",), ("text",)}
    assert "Parameter `text`" in response.get_json()["message"]


@pytest.mark.parametrize("body,problem", [
    ({"heading": ""}, "must be a string of 1 to 100 characters"),
    ({"heading": 5}, "must be a string of 1 to 100 characters"),
    ({"heading": "a\x00b"}, "must not contain control characters"),
    ({}, "is required"),
])
def test_conversation_heading_rules(ada, body, problem):
    status, code, data = error_of(ada.call("POST", "/conversations", json=body))
    assert (status, code, data) == (400, "invalid_params",
                                    [{"params": ["heading"], "message": problem}])


def test_form_bodies_are_parsed_and_other_types_refused(ada):
    made = ada.call("POST", "/conversations", data="heading=from+a+form",
                    content_type="application/x-www-form-urlencoded")
    assert made.status_code == 201 and made.get_json()["heading"] == "from a form"
    status, code, data = error_of(ada.call("POST", "/conversations", data="<x/>",
                                           content_type="application/xml"))
    assert (status, code) == (415, "unsupported_media_type")
    status, code, data = error_of(ada.call("POST", "/conversations", data="[1]",
                                           content_type="application/json"))
    assert (status, code, data) == (400, "invalid_request",
                                    {"reason": "the JSON body must be an object"})


# --- error mapping -----------------------------------------------------------------------
def test_authentication_errors(client, deps):
    anonymous = Caller(client, None)
    status, code, _ = error_of(anonymous.call("GET", "/conversations"))
    assert (status, code) == (401, "auth_required")
    forged = Caller(client, "usr_0000000000001234.not-a-mac")
    assert error_of(forged.call("GET", "/conversations"))[:2] == (401, "auth_invalid")
    gone = user_of(deps, client)
    deps.users.rows.clear()
    assert error_of(gone.call("GET", "/conversations"))[:2] == (401, "auth_invalid")


def test_routing_errors_come_first_in_the_contracts_shape(ada):
    assert error_of(ada.call("GET", "/no/such/path"))[:2] == (404, "not_found")
    response = ada.call("PUT", "/conversations")
    assert error_of(response) == (405, "method_not_allowed", {"allowed": ["GET", "HEAD", "POST"]})
    assert response.headers["Allow"] == "GET, HEAD, POST"


def test_another_users_objects_are_not_found(deps, client, ada):
    convo = ada.call("POST", "/conversations", json={"heading": "mine"}).get_json()
    bob = user_of(deps, client, "Bob")
    assert error_of(bob.call("GET", f"/conversations/{convo['id']}"))[:2] == (404, "not_found")
    assert error_of(bob.call("DELETE", f"/conversations/{convo['id']}"))[:2] == \
        (404, "not_found")


def test_caps_are_action_not_allowed_with_the_contracts_messages(ada):
    for n in range(3):
        assert ada.call("POST", "/conversations", json={"heading": str(n)}).status_code == 201
    response = ada.call("POST", "/conversations", json={"heading": "one too many"})
    assert error_of(response) == (409, "action_not_allowed",
                                  {"action": "create more than 3 conversations"})
    assert response.get_json()["message"] == "You may not create more than 3 conversations."

    convo = ada.call("GET", "/conversations").get_json()["data"][0]
    for _ in range(2):
        ada.call("POST", f"/conversations/{convo['id']}/lines", json={"text": "hi"})
    response = ada.call("POST", f"/conversations/{convo['id']}/lines", json={"text": "hi"})
    assert response.get_json()["message"] == \
        "You may not add more than 2 lines to a conversation."


def test_mood_rules_map_to_their_errors(ada):
    assert ada.call("PUT", "/moods/happy", json={"eyes": "^^"}).status_code == 201
    assert ada.call("PUT", "/moods/Happy", json={"tongue": "U "}).status_code == 200
    response = ada.call("PUT", "/moods/borg", json={})
    assert response.get_json()["message"] == "You may not update built-in mood borg."
    convo = ada.call("POST", "/conversations", json={"heading": "h"}).get_json()
    ada.call("POST", f"/conversations/{convo['id']}/lines", json={"mood": "happy"})
    response = ada.call("DELETE", "/moods/happy")
    assert response.get_json()["message"] == \
        "You may not delete a mood associated with 1 conversation line."
    assert ada.call("PUT", "/moods/calm", json={}).status_code == 201
    response = ada.call("PUT", "/moods/third", json={})
    assert response.get_json()["message"] == "You may not create more than 2 moods."


# --- pagination parameters -------------------------------------------------------------------
@pytest.mark.parametrize("query,params", [
    ("limit=0", ["limit"]), ("limit=101", ["limit"]), ("limit=", ["limit"]),
    ("limit=ten", ["limit"]), ("limit=" + "9" * 5000, ["limit"]),
    ("starting_after=", ["starting_after"]),
    ("starting_after=cv_0000000000000001&ending_before=cv_0000000000000002",
     ["ending_before", "starting_after"]),
])
def test_bad_list_parameters(ada, query, params):
    status, code, data = error_of(ada.call("GET", f"/conversations?{query}"))
    assert (status, code) == (400, "invalid_params")
    assert [p["params"] for p in data] == [params]


def test_pages_forward_and_backward_and_a_missing_cursor(ada):
    ids = [ada.call("POST", "/conversations", json={"heading": str(n)}).get_json()["id"]
           for n in range(3)]
    first = ada.call("GET", "/conversations?limit=2").get_json()
    assert [c["id"] for c in first["data"]] == ids[:2] and first["has_more"] is True
    rest = ada.call("GET", f"/conversations?limit=2&starting_after={ids[1]}").get_json()
    assert [c["id"] for c in rest["data"]] == ids[2:] and rest["has_more"] is False
    back = ada.call("GET", f"/conversations?limit=1&ending_before={ids[2]}").get_json()
    assert [c["id"] for c in back["data"]] == ids[1:2] and back["has_more"] is True
    missing = error_of(ada.call("GET", "/conversations?starting_after=cv_00000000000fffff"))
    assert missing == (400, "invalid_params", [{"params": ["starting_after"],
                                                "message": "must refer to an existing object"}])


# --- ETag / 304 ---------------------------------------------------------------------------
def test_etags_answer_if_none_match_with_304_and_differ_by_representation(ada):
    convo = ada.call("POST", "/conversations", json={"heading": "tagged"}).get_json()
    path = f"/conversations/{convo['id']}"
    as_json = ada.call("GET", path)
    as_text = ada.call("GET", path, headers={"Accept": "text/plain"})
    assert as_json.headers["ETag"] != as_text.headers["ETag"]
    assert as_text.get_data(as_text=True) == "tagged\n\n"
    again = ada.call("GET", path, headers={"If-None-Match": as_json.headers["ETag"]})
    assert again.status_code == 304 and again.get_data() == b""
    ada.call("PATCH", path, json={"heading": "changed"})
    changed = ada.call("GET", path, headers={"If-None-Match": as_json.headers["ETag"]})
    assert changed.status_code == 200 and changed.headers["ETag"] != as_json.headers["ETag"]


# --- idempotency decisions -----------------------------------------------------------------
def test_a_repeated_key_replays_and_a_changed_request_is_422(ada, deps):
    key = {"Idempotency-Key": "k-1"}
    first = ada.call("POST", "/conversations", json={"heading": "once"}, headers=key)
    replay = ada.call("POST", "/conversations", data="heading=once",
                      content_type="application/x-www-form-urlencoded", headers=key)
    assert replay.status_code == 201 and replay.get_data() == first.get_data()
    assert replay.headers["Idempotent-Replayed"] == "true"
    assert "Idempotent-Replayed" not in first.headers
    assert replay.headers["Location"] == first.headers["Location"]
    assert len(ada.call("GET", "/conversations").get_json()["data"]) == 1
    changed = ada.call("POST", "/conversations", json={"heading": "twice"}, headers=key)
    assert error_of(changed)[:2] == (422, "idempotency_key_reused")


def test_a_key_in_use_is_409_and_a_malformed_key_400(ada, deps):
    deps.idempotency.repo.locked.add((f"user:{next(iter(deps.users.rows))}", "busy"))
    busy = ada.call("POST", "/conversations", json={"heading": "h"},
                    headers={"Idempotency-Key": "busy"})
    assert error_of(busy)[:2] == (409, "idempotency_key_in_use")
    bad = ada.call("POST", "/conversations", json={"heading": "h"},
                   headers={"Idempotency-Key": "x" * 256})
    assert error_of(bad)[:2] == (400, "invalid_params")


def test_a_4xx_outcome_is_recorded_and_replayed(ada):
    key = {"Idempotency-Key": "k-invalid"}
    first = ada.call("POST", "/conversations", json={"heading": ""}, headers=key)
    again = ada.call("POST", "/conversations", json={"heading": ""}, headers=key)
    assert first.status_code == again.status_code == 400
    assert again.headers["Idempotent-Replayed"] == "true"
