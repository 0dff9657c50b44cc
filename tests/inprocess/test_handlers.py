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
from tests.inprocess.fakes import SECRET, fake_deps


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
                     MAX_LINES_PER_CONVERSATION="2", MAX_BATCH_LINES="4")


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


# --- batches, conversations with lines, rendering -----------------------------------------
def new_conversation(caller: Caller) -> str:
    return caller.call("POST", "/conversations", json={"heading": "h"}).get_json()["id"]


def lines_of(caller: Caller, convo: str) -> list[dict]:
    return caller.call("GET", f"/conversations/{convo}/lines").get_json()["data"]


def test_a_batch_names_every_bad_element_by_index_and_creates_nothing(ada, deps):
    assert ada.call("PUT", "/moods/Calm", json={}).status_code == 201
    convo = new_conversation(ada)
    response = ada.call("POST", f"/conversations/{convo}/lines/batch", json={"lines": [
        {"text": "fine", "mood": "calm"}, {"mood": "nope", "text": 5}, "x",
        {"animal": "no-such-animal", "think": "yes", "extra": 1}]})
    status, code, data = error_of(response)
    assert (status, code) == (400, "invalid_params")
    assert [p["params"] for p in data] == [["lines[1].mood"], ["lines[1].text"], ["lines[2]"],
                                           ["lines[3].animal"], ["lines[3].think"]]
    assert "Parameter `lines[2]` must be an object." in response.get_json()["message"]
    assert lines_of(ada, convo) == [] and deps.lines.batches == 0


@pytest.mark.parametrize("body", [{}, {"lines": None}, {"lines": []}, {"lines": {"text": "a"}},
                                  {"lines": "[]"}, {"lines": [{}] * 5}])
def test_a_missing_empty_long_or_non_list_batch_is_invalid_on_lines(ada, body):
    convo = new_conversation(ada)
    status, code, data = error_of(ada.call("POST", f"/conversations/{convo}/lines/batch",
                                           json=body))
    message = "is required" if body.get("lines") is None else \
        "must be a list of 1 to 4 objects"
    assert (status, code, data) == (400, "invalid_params",
                                    [{"params": ["lines"], "message": message}])


def test_a_batch_is_created_in_order_in_the_list_format(ada, deps):
    convo = new_conversation(ada)
    response = ada.call("POST", f"/conversations/{convo}/lines/batch", json={"lines": [
        {"text": "one", "mood": "BORG"}, {"text": "two", "think": True, "animal": "default"}]})
    assert response.status_code == 201
    assert response.headers["Location"] == f"/conversations/{convo}/lines"
    body = response.get_json()
    assert body["type"] == "line" and body["has_more"] is False
    assert [(line["text"], line["mood"], line["think"]) for line in body["data"]] == \
        [("one", "borg", False), ("two", "default", True)]
    assert body["data"] == lines_of(ada, convo)
    assert deps.lines.batches == 1


def test_a_batch_over_the_line_cap_creates_nothing(ada):
    convo = new_conversation(ada)
    ada.call("POST", f"/conversations/{convo}/lines", json={"text": "first"})
    response = ada.call("POST", f"/conversations/{convo}/lines/batch",
                        json={"lines": [{"text": "a"}, {"text": "b"}]})
    assert error_of(response) == (409, "action_not_allowed",
                                  {"action": "add more than 2 lines to a conversation"})
    assert [line["text"] for line in lines_of(ada, convo)] == ["first"]


def test_a_batch_refused_for_a_missing_own_mood_names_its_elements(ada, deps):
    convo = new_conversation(ada)
    # Only user moods are missing: the write finds them (one statement in PostgreSQL).
    response = ada.call("POST", f"/conversations/{convo}/lines/batch",
                        json={"lines": [{"mood": "tired"}, {"mood": "gone"}]})
    assert error_of(response)[2] == [{"params": ["lines[1].mood"],
                                      "message": "must name a built-in mood or one of yours"}]
    assert deps.lines.batches == 1 and lines_of(ada, convo) == []


def test_a_batch_to_another_users_conversation_is_not_found(deps, client, ada):
    convo = new_conversation(ada)
    bob = user_of(deps, client, "Bob")
    response = bob.call("POST", f"/conversations/{convo}/lines/batch",
                        json={"lines": [{"text": "hi"}]})
    assert error_of(response)[:2] == (404, "not_found")
    assert error_of(bob.call("POST", "/conversations/cv_nonsense/lines/batch",
                             json={"lines": [{}]}))[:2] == (404, "not_found")


def test_a_batch_replays_with_its_idempotency_key(ada):
    convo = new_conversation(ada)
    key = {"Idempotency-Key": "batch-1"}
    path = f"/conversations/{convo}/lines/batch"
    first = ada.call("POST", path, json={"lines": [{"text": "a"}]}, headers=key)
    again = ada.call("POST", path, json={"lines": [{"text": "a", "unknown": True}]},
                     headers=key)
    assert again.status_code == 201 and again.get_data() == first.get_data()
    assert again.headers["Idempotent-Replayed"] == "true"
    assert len(lines_of(ada, convo)) == 1
    changed = ada.call("POST", path, json={"lines": [{"text": "b"}]}, headers=key)
    assert error_of(changed)[:2] == (422, "idempotency_key_reused")


def test_a_conversation_is_created_with_its_lines_or_not_at_all(ada):
    made = ada.call("POST", "/conversations", json={"heading": "with lines", "lines": [
        {"text": "moo"}, {"text": "hoo", "animal": "default", "mood": "dead"}]})
    assert made.status_code == 201
    body = made.get_json()
    assert [line["text"] for line in body["lines"]] == ["moo", "hoo"]
    assert ada.call("GET", f"/conversations/{body['id']}").get_json() == body
    bad = ada.call("POST", "/conversations", json={"heading": "", "lines": [{"mood": "x"}]})
    assert [p["params"] for p in error_of(bad)[2]] == [["heading"], ["lines[0].mood"]]
    too_many = ada.call("POST", "/conversations", json={"heading": "h", "lines": [{}] * 3})
    assert error_of(too_many) == (409, "action_not_allowed",
                                  {"action": "add more than 2 lines to a conversation"})
    assert [c["heading"] for c in ada.call("GET", "/conversations").get_json()["data"]] == \
        ["with lines"]


def test_a_conversation_without_lines_still_answers_an_empty_list(ada, deps):
    body = ada.call("POST", "/conversations", json={"heading": "plain", "lines": None}).get_json()
    assert body["lines"] == [] and deps.lines.batches == 0


def test_render_uses_built_in_and_own_moods_and_stores_nothing(ada, deps):
    expected = deps.renderer.render("default", "==", "  ", True, "Resistance")
    response = ada.call("POST", "/render", json={"text": "Resistance", "mood": "Borg",
                                                 "think": True})
    assert response.status_code == 200 and "ETag" not in response.headers
    assert response.get_json() == {"output": expected}
    ada.call("PUT", "/moods/Sleepy", json={"eyes": "-.", "tongue": "U "})
    own = ada.call("POST", "/render", json={"text": "zz", "mood": "SLEEPY"}).get_json()
    assert own == {"output": deps.renderer.render("default", "-.", "U ", False, "zz")}
    text = ada.call("POST", "/render", json={"text": "zz", "mood": "sleepy"},
                    headers={"Accept": "text/plain"})
    assert text.content_type == "text/plain; charset=utf-8"
    assert text.get_data(as_text=True) == own["output"]
    assert ada.call("GET", "/conversations").get_json()["data"] == []
    assert deps.moods.used == {}


def test_render_reports_what_a_line_would_report(ada):
    response = ada.call("POST", "/render", json={"animal": "no-such-animal", "mood": "nope",
                                                 "think": "true", "text": "x" * 1001})
    status, code, data = error_of(response)
    assert (status, code) == (400, "invalid_params")
    assert [p["params"] for p in data] == [["animal"], ["mood"], ["text"], ["think"]]
    assert {"params": ["mood"], "message": "must name a built-in mood or one of yours"} in data


# --- the route table's seams, checked when the app is built ----------------------------
def _register_one(deps, route) -> None:
    from flask import Flask

    from app.http.routing import register

    register(Flask("one-route"), [route], deps.auth, deps.idempotency)


def test_register_refuses_an_idempotent_handler_without_uow(deps):
    from app.api.conversations import CreateConversation
    from app.http.routing import AUTHED, BY_USER, Route

    def handler():  # the Idempotency-Key wrapper would pass uow= on the first request
        return "never"

    route = Route("POST", "/things", handler, guard=AUTHED, body=CreateConversation,
                  idempotent=BY_USER)
    with pytest.raises(TypeError, match=r"POST /things: .*missing: uow"):
        _register_one(deps, route)


def test_register_refuses_uow_on_a_route_that_is_not_idempotent(deps):
    from app.http.routing import AUTHED, Route

    def handler(thing_id, uow):
        return "never"

    route = Route("GET", "/things/<thing_id>", handler, guard=AUTHED)
    with pytest.raises(TypeError, match=r"not passed: uow .*only with idempotent="):
        _register_one(deps, route)


def test_register_refuses_a_handler_that_misses_a_path_variable(deps):
    from app.http.routing import AUTHED, Route

    def handler(thing_id):
        return "never"

    route = Route("GET", "/things/<thing_id>/parts/<part_id>", handler, guard=AUTHED)
    with pytest.raises(TypeError, match=r"missing: part_id"):
        _register_one(deps, route)


def test_the_deleted_user_rule_is_the_guards_for_every_authenticated_route(deps, client, ada):
    """A deleted user's token is auth_invalid on routes that read no table, too."""
    me = ada.call("GET", "/animals")
    assert me.status_code == 200
    user_id = deps.auth.tokens.verify(ada.headers["Authorization"].split()[1])
    deps.users.delete(user_id)
    for method, path in (("GET", "/animals"), ("GET", "/conversations"),
                         ("GET", "/conversations/cv_0123456789abcdef"), ("GET", "/moods/x"),
                         ("POST", "/render")):
        assert error_of(ada.call(method, path, json={"text": "moo"}))[:2] == \
            (401, "auth_invalid"), (method, path)
