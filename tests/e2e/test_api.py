"""The API contract end to end, through the project's own client, against real SayPI processes."""

from __future__ import annotations

import uuid

import httpx
import pytest
from wcwidth import wcswidth

from app.api.moods import mood_json
from app.client import (
    ActionNotAllowedError,
    AuthInvalidError,
    Client,
    InvalidParamsError,
    NotFoundError,
)
from app.domain.models import BUILTIN_MOODS
from harness.saypi import Server, server_env
from tests.conftest import run_threads

BUILTINS = ["default", "borg", "dead", "greedy", "stoned", "tired", "wired", "young"]


@pytest.fixture(scope="module")
def shared_server(deployed_server):
    """The whole contract on each deployment (tests/conftest.py deployed_server)."""
    return deployed_server


@pytest.fixture
def anon(shared_server):
    client = Client(shared_server.url)
    yield client
    client.close()


def new_user(anon: Client, **fields) -> tuple[Client, dict]:
    user = anon.create_user(**fields)
    return anon.with_token(user["token"]), user


@pytest.fixture
def alice(anon):
    return new_user(anon, name="Alice")[0]


@pytest.fixture
def bob(anon):
    return new_user(anon, name="Bob")[0]


def unique_email() -> str:
    return f"u{uuid.uuid4().hex[:12]}@Example.com"


# --- users ---------------------------------------------------------------------------
def test_create_user_returns_token_once_with_location(anon):
    email = unique_email()
    user = anon.create_user(name="Zoë", email=email)
    response = anon.last_response
    assert response.status_code == 201
    assert response.headers["location"] == f"/users/{user['id']}"
    assert user["id"].startswith("usr_") and user["name"] == "Zoë" and user["email"] == email
    assert user["created_at"].endswith("Z") and user["token"]
    me = anon.with_token(user["token"]).get_user(user["id"])
    assert "token" not in me and me["email"] == email


def test_user_with_no_params_is_created_with_nulls(anon):
    user = anon.create_user()
    assert user["name"] is None and user["email"] is None


def test_email_is_unique_case_insensitively(anon):
    email = unique_email()
    anon.create_user(email=email)
    with pytest.raises(ActionNotAllowedError) as caught:
        anon.create_user(email=email.upper())
    assert caught.value.message == \
        f"You may not use email {email.upper()}, which is already registered."
    assert caught.value.data == {"action": f"use email {email.upper()}, which is already "
                                           "registered"}


@pytest.mark.parametrize("email", ["plain", "@example.com", "a@b", "a b@c.de", "a@@b.c",
                                   "x" * 250 + "@b.cd", "a@.com", 5])
def test_invalid_emails_are_rejected(anon, email):
    with pytest.raises(InvalidParamsError) as caught:
        anon.create_user(email=email)
    assert caught.value.params == {"email"}


def test_every_invalid_param_is_reported_and_messages_are_sentences(anon):
    response = anon.request("POST", "/users", json={"name": "", "email": "nope"})
    body = response.json()
    assert response.status_code == 400 and body["code"] == "invalid_params"
    assert {p for d in body["data"] for p in d["params"]} == {"name", "email"}
    assert body["message"].startswith("Parameter `")
    assert body["message"].endswith(".")


def test_get_patch_and_delete_user(anon):
    client, user = new_user(anon, name="Carol", email=unique_email())
    assert client.update_user(user["id"], name="Caz")["name"] == "Caz"
    unchanged = client.update_user(user["id"])
    assert unchanged["name"] == "Caz" and unchanged["email"] == user["email"]
    cleared = client.update_user(user["id"], email=None)
    assert cleared["email"] is None and cleared["name"] == "Caz"
    client.delete_user(user["id"])
    assert client.last_response.status_code == 204


def test_other_users_are_not_found(anon, alice):
    _, other = new_user(anon)
    for call in (lambda: alice.get_user(other["id"]),
                 lambda: alice.update_user(other["id"], name="x"),
                 lambda: alice.delete_user(other["id"]),
                 lambda: alice.get_user("usr_zzz")):
        with pytest.raises(NotFoundError):
            call()


def test_deleted_users_token_is_invalid_on_every_route(anon):
    client, user = new_user(anon)
    convo = client.create_conversation("Before")
    client.delete_user(user["id"])
    calls = [
        lambda: client.get_user(user["id"]), lambda: client.list_animals(),
        lambda: client.list_moods(), lambda: client.get_mood("default"),
        lambda: client.put_mood("mine"), lambda: client.list_conversations(),
        lambda: client.create_conversation("After"), lambda: client.get_conversation(convo["id"]),
        lambda: client.list_lines(convo["id"]), lambda: client.create_line(convo["id"], "hi"),
        lambda: client.delete_mood("mine"),
    ]
    for call in calls:
        with pytest.raises(AuthInvalidError):
            call()


# --- authentication ----------------------------------------------------------------------
def test_missing_or_non_bearer_header_is_auth_required(shared_server):
    for headers in ({}, {"Authorization": "Basic dXNlcjpwYXNz"}, {"Authorization": "Bearer"}):
        response = httpx.get(shared_server.url + "/conversations", headers=headers)
        assert response.status_code == 401
        assert response.json()["code"] == "auth_required"
        assert response.headers["www-authenticate"].startswith("Bearer")


@pytest.mark.parametrize("token", ["garbage", "usr_0000000000000001.AAAA", "usr_ffff.x",
                                   "usr_0123456789abcdef.", "ünïcødé-tøken", "a" * 5000])
def test_forged_truncated_or_odd_tokens_are_auth_invalid(shared_server, anon, token):
    response = httpx.get(shared_server.url + "/conversations",
                         headers={"Authorization": f"Bearer {token}".encode()})
    assert response.status_code == 401
    assert response.json()["code"] == "auth_invalid"


def test_truncated_real_token_is_auth_invalid(anon):
    _, user = new_user(anon)
    with pytest.raises(AuthInvalidError):
        anon.with_token(user["token"][:-3]).list_conversations()


def test_routing_comes_before_authentication(shared_server):
    assert httpx.get(shared_server.url + "/nothing-here").status_code == 404
    assert httpx.put(shared_server.url + "/conversations").status_code == 405


def test_secret_rotation_first_signs_all_verify(start_server, postgres):
    url = postgres.new_database()
    old = start_server(url, USER_SECRETS="old-secret-0123456789")
    token = Client(old.url).create_user()["token"]
    old.stop()
    rotated = start_server(url, USER_SECRETS="new-secret-0123456789,old-secret-0123456789")
    client = Client(rotated.url)
    client.with_token(token).list_conversations()  # the old token still verifies
    fresh = client.create_user()["token"]
    rotated.stop()
    new_only = start_server(url, USER_SECRETS="new-secret-0123456789")
    client = Client(new_only.url)
    client.with_token(fresh).list_conversations()
    with pytest.raises(AuthInvalidError):
        client.with_token(token).list_conversations()


# --- request bodies ---------------------------------------------------------------------
def test_body_errors_are_in_the_contract_format(alice):
    cases = [
        ({"content": b"{not json", "headers": {"Content-Type": "application/json"}},
         400, "invalid_request"),
        ({"content": b"[1, 2]", "headers": {"Content-Type": "application/json"}},
         400, "invalid_request"),
        ({"content": b"<x/>", "headers": {"Content-Type": "text/xml"}},
         415, "unsupported_media_type"),
        ({"content": b"x" * (100 * 1024), "headers": {"Content-Type": "application/json"}},
         413, "payload_too_large"),
    ]
    for kwargs, status, code in cases:
        response = alice.request("POST", "/conversations", **kwargs)
        assert response.status_code == status, (kwargs, response.text)
        assert response.json()["code"] == code
    assert response.json()["data"] == {"max_bytes": 65536}
    unsupported = alice.request("POST", "/conversations", content=b"<x/>",
                                headers={"Content-Type": "text/xml"}).json()
    assert "application/json" in unsupported["data"]["supported"]


def test_empty_body_of_any_type_is_an_empty_object(anon):
    response = anon.request("POST", "/users", content=b"", headers={"Content-Type": "text/xml"})
    assert response.status_code == 201


def test_form_bodies_are_parsed_and_json_is_strict(alice):
    convo = alice.create_conversation("Forms")
    response = alice.request("POST", f"/conversations/{convo['id']}/lines",
                             content=b"text=hi+there&think=true",
                             headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert response.status_code == 201, response.text
    assert response.json()["think"] is True and response.json()["text"] == "hi there"
    for bad in ({"think": "true"}, {"text": 5}, {"mood": ["dead"]}):
        with pytest.raises(InvalidParamsError):
            alice._call("POST", f"/conversations/{convo['id']}/lines", json=bad)


def test_null_means_not_given_and_unknown_params_are_ignored(alice):
    convo = alice.create_conversation("Nulls")
    line = alice._call("POST", f"/conversations/{convo['id']}/lines",
                       json={"animal": None, "mood": None, "text": "x", "colour": "red"})
    assert line["animal"] == "default" and line["mood"] == "default"


def test_control_characters_are_rejected_except_newline_and_tab_in_text(alice):
    with pytest.raises(InvalidParamsError):
        alice.create_conversation("bad\x07heading")
    with pytest.raises(InvalidParamsError):
        alice.create_conversation("bad\u0085heading")
    convo = alice.create_conversation("ok")
    assert alice.create_line(convo["id"], "two\nlines\tand tab")["text"] == "two\nlines\tand tab"
    with pytest.raises(InvalidParamsError):
        alice.create_line(convo["id"], "nul\x00byte")


# --- animals ----------------------------------------------------------------------------
def test_animals_are_sorted_and_include_the_bundled_ones(alice):
    names = alice.list_animals()
    assert names == sorted(names)
    for bundled in ("default", "cat", "owl", "fish", "turtle", "robot"):
        assert bundled in names


# --- moods ------------------------------------------------------------------------------
def test_builtin_moods_come_first_in_order(alice):
    page = alice.list_moods(limit=100)
    assert page.type == "mood"
    assert [m["name"] for m in page.data] == BUILTINS
    assert page.data[2] == {"name": "dead", "eyes": "xx", "tongue": "U ", "user_defined": False}
    # The migration's rows and app/domain/models.py's BUILTIN_MOODS (checks and docs) agree.
    assert page.data == [mood_json(m) for m in BUILTIN_MOODS]


def test_mood_lifecycle(alice, bob):
    created = alice.put_mood("Happy", eyes="^^")
    assert alice.last_response.status_code == 201
    assert alice.last_response.headers["location"] == "/moods/Happy"
    assert created == {"name": "Happy", "eyes": "^^", "tongue": "  ", "user_defined": True}
    updated = alice.put_mood("HAPPY", tongue="P ")
    assert alice.last_response.status_code == 200
    assert updated == {"name": "Happy", "eyes": "^^", "tongue": "P ", "user_defined": True}
    assert alice.get_mood("happy")["name"] == "Happy"
    assert alice.get_mood("BORG")["eyes"] == "=="
    assert [m["name"] for m in alice.iter_moods()] == [*BUILTINS, "Happy"]
    with pytest.raises(NotFoundError):
        bob.get_mood("happy")
    alice.delete_mood("hAppy")
    with pytest.raises(NotFoundError):
        alice.get_mood("happy")
    with pytest.raises(NotFoundError):
        alice.delete_mood("happy")


def test_builtin_moods_cannot_be_changed(alice):
    with pytest.raises(ActionNotAllowedError) as caught:
        alice.put_mood("Borg", eyes="@@")
    assert caught.value.message == "You may not update built-in mood borg."
    with pytest.raises(ActionNotAllowedError) as caught:
        alice.delete_mood("borg")
    assert caught.value.message == "You may not delete built-in mood borg."


@pytest.mark.parametrize("name,body,params", [
    ("x" * 31, {}, {"name"}),
    ("ok", {"eyes": "abc"}, {"eyes"}),
    ("ok", {"tongue": "\u00e9\u00e9"}, {"tongue"}),
    ("ok", {"eyes": 12}, {"eyes"}),
    ("bad\u00e9", {"eyes": "x"}, {"name", "eyes"}),
])
def test_invalid_moods_report_every_problem(alice, name, body, params):
    with pytest.raises(InvalidParamsError) as caught:
        alice._call("PUT", f"/moods/{name}", json=body)
    assert caught.value.params == params


def test_mood_used_by_lines_cannot_be_deleted_and_updates_show_in_lines(alice):
    alice.put_mood("Sly", eyes="<>")
    convo = alice.create_conversation("Sly talk")
    first = alice.create_line(convo["id"], "hi", mood="sly")
    assert first["mood"] == "Sly" and "<>" in first["output"]
    with pytest.raises(ActionNotAllowedError) as caught:
        alice.delete_mood("Sly")
    assert caught.value.message == "You may not delete a mood associated with 1 conversation line."
    alice.create_line(convo["id"], "again", mood="SLY")
    alice.create_line(convo["id"], "and again", mood="sly")
    with pytest.raises(ActionNotAllowedError) as caught:
        alice.delete_mood("sly")
    assert caught.value.message == \
        "You may not delete a mood associated with 3 conversation lines."
    alice.put_mood("sly", eyes="!!")
    lines = alice.get_conversation(convo["id"])["lines"]
    assert all("!!" in line["output"] and "<>" not in line["output"] for line in lines)


def test_mood_cursor_is_the_name_case_insensitively(alice):
    alice.put_mood("Alpha")
    alice.put_mood("Beta")
    page = alice.list_moods(starting_after="YOUNG", limit=1)
    assert [m["name"] for m in page.data] == ["Alpha"] and page.has_more
    page = alice.list_moods(ending_before="beta", limit=2)
    assert [m["name"] for m in page.data] == ["young", "Alpha"] and page.has_more


# --- conversations -------------------------------------------------------------------------
def test_conversation_lifecycle(alice):
    convo = alice.create_conversation("Hello")
    assert alice.last_response.status_code == 201
    assert alice.last_response.headers["location"] == f"/conversations/{convo['id']}"
    assert convo["id"].startswith("cv_") and convo["lines"] == [] and convo["heading"] == "Hello"
    first = alice.create_line(convo["id"], "first")
    second = alice.create_line(convo["id"], "second", animal="cat", think=True, mood="tired")
    got = alice.get_conversation(convo["id"])
    assert [line["id"] for line in got["lines"]] == [first["id"], second["id"]]
    assert alice.update_conversation(convo["id"], "Renamed")["heading"] == "Renamed"
    text = alice.get_conversation_text(convo["id"])
    assert alice.last_response.headers["content-type"] == "text/plain; charset=utf-8"
    assert text == "Renamed\n\n" + first["output"] + second["output"]
    listed = alice.list_conversations(limit=100)
    assert listed.type == "conversation" and "lines" not in listed.data[0]
    alice.delete_conversation(convo["id"])
    assert alice.last_response.status_code == 204
    with pytest.raises(NotFoundError):
        alice.get_conversation(convo["id"])


@pytest.mark.parametrize("heading", ["", "x" * 101, None, 7])
def test_invalid_headings(alice, heading):
    with pytest.raises(InvalidParamsError) as caught:
        alice._call("POST", "/conversations", json={"heading": heading})
    assert caught.value.params == {"heading"}


def test_other_users_conversations_and_lines_are_not_found(alice, bob):
    convo = alice.create_conversation("Private")
    line = alice.create_line(convo["id"], "secret")
    calls = [
        lambda: bob.get_conversation(convo["id"]),
        lambda: bob.update_conversation(convo["id"], "mine"),
        lambda: bob.delete_conversation(convo["id"]),
        lambda: bob.list_lines(convo["id"]),
        lambda: bob.create_line(convo["id"], "intrude"),
        lambda: bob.get_line(convo["id"], line["id"]),
        lambda: bob.delete_line(convo["id"], line["id"]),
        lambda: bob.get_conversation("cv_nonsense"),
    ]
    for call in calls:
        with pytest.raises(NotFoundError):
            call()
    assert alice.get_line(convo["id"], line["id"])["text"] == "secret"


def test_etag_and_if_none_match(alice):
    convo = alice.create_conversation("Cache me")
    alice.create_line(convo["id"], "moo")
    path = f"/conversations/{convo['id']}"
    json_response = alice.request("GET", path)
    etag = json_response.headers["etag"]
    text_response = alice.request("GET", path, headers={"Accept": "text/plain"})
    assert text_response.headers["etag"] != etag
    not_modified = alice.request("GET", path, headers={"If-None-Match": etag})
    assert not_modified.status_code == 304 and not_modified.content == b""
    listing = alice.request("GET", "/conversations")
    assert alice.request("GET", "/conversations", headers={
        "If-None-Match": listing.headers["etag"]}).status_code == 304
    alice.create_line(convo["id"], "changed")
    assert alice.request("GET", path, headers={"If-None-Match": etag}).status_code == 200


# --- lines ----------------------------------------------------------------------------
def test_line_defaults_and_rendering(alice):
    convo = alice.create_conversation("Defaults")
    line = alice.create_line(convo["id"])
    assert line["animal"] == "default" and line["mood"] == "default"
    assert line["think"] is False and line["text"] == ""
    assert line["id"].startswith("ln_") and line["output"].endswith("\n")
    assert alice.last_response.headers["location"] == \
        f"/conversations/{convo['id']}/lines/{line['id']}"
    zero = alice.create_line(convo["id"], "0")
    assert zero["output"].splitlines()[1] == "< 0 >"
    assert alice.get_line_text(convo["id"], zero["id"]) == zero["output"]


def test_all_invalid_line_params_are_reported_together(alice):
    convo = alice.create_conversation("Bad lines")
    with pytest.raises(InvalidParamsError) as caught:
        alice._call("POST", f"/conversations/{convo['id']}/lines",
                    json={"animal": "no-such-animal", "think": "yes", "mood": "no-such-mood",
                          "text": "x" * 1001})
    assert caught.value.params == {"animal", "think", "mood", "text"}
    with pytest.raises(InvalidParamsError) as caught:
        alice.create_line(convo["id"], "hi", mood="nope")
    assert caught.value.params == {"mood"}


def test_lines_list_get_and_delete(alice):
    convo = alice.create_conversation("Lines")
    made = [alice.create_line(convo["id"], f"line {i}") for i in range(3)]
    page = alice.list_lines(convo["id"])
    assert page.type == "line" and [line["id"] for line in page.data] == [m["id"] for m in made]
    assert page.data[0]["output"] == made[0]["output"]
    alice.delete_line(convo["id"], made[1]["id"])
    assert alice.last_response.status_code == 204
    assert [line["id"] for line in alice.iter_lines(convo["id"])] == \
        [made[0]["id"], made[2]["id"]]
    with pytest.raises(NotFoundError):
        alice.get_line(convo["id"], made[1]["id"])


def test_wide_characters_keep_the_balloon_aligned(alice):
    convo = alice.create_conversation("Wide")
    text = "你好，世界！这是一段很长的中文文本，" "用来测试气球的对齐情况。🐄🐄🐄 emoji"  # noqa: RUF001
    line = alice.create_line(convo["id"], text)
    balloon = [row for row in line["output"].splitlines() if row[:1] in "/|\\<"]
    assert len(balloon) > 1
    assert len({wcswidth(row) for row in balloon}) == 1, balloon


# --- pagination ------------------------------------------------------------------------
def test_pagination_forward_and_backward_returns_each_exactly_once(anon):
    client, _ = new_user(anon)
    made = [client.create_conversation(f"c{i}")["id"] for i in range(25)]
    seen, after, pages = [], None, 0
    while True:
        page = client.list_conversations(limit=10, starting_after=after)
        seen += [c["id"] for c in page.data]
        pages += 1
        if not page.has_more:
            break
        after = page.data[-1]["id"]
    assert seen == made and pages == 3
    backward, before = [], None
    page = client.list_conversations(limit=10, ending_before=made[-1])
    assert [c["id"] for c in page.data] == made[14:24] and page.has_more
    while True:
        backward = [c["id"] for c in page.data] + backward
        if not page.has_more:
            break
        before = page.data[0]["id"]
        page = client.list_conversations(limit=10, ending_before=before)
    assert backward == made[:24]
    assert client.list_conversations(limit=10, ending_before=made[3]).has_more is False
    assert list(c["id"] for c in client.iter_conversations(page_size=7)) == made


@pytest.mark.parametrize("params", [
    {"limit": "0"}, {"limit": "101"}, {"limit": "abc"}, {"limit": ""}, {"limit": "-1"},
    {"starting_after": "cv_0000000000000001", "ending_before": "cv_0000000000000002"},
    {"starting_after": "cv_0000000000000001"}, {"ending_before": "nonsense"},
    {"starting_after": ""},
])
def test_bad_list_parameters(alice, params):
    response = alice.request("GET", "/conversations", params=params)
    assert response.status_code == 400
    body = response.json()
    assert body["code"] == "invalid_params"
    if "limit" in params:
        assert body["data"][0]["message"] == "must be an integer between 1 and 100"
    elif len(params) == 1:
        assert body["data"][0]["message"] == "must refer to an existing object"


def test_cursor_of_another_users_object_is_invalid(alice, bob):
    theirs = bob.create_conversation("Bob's")
    response = alice.request("GET", "/conversations", params={"starting_after": theirs["id"]})
    assert response.status_code == 400


# --- object limits ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def capped_server(postgres, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("capped")
    env = server_env(postgres.new_database(), tmp, MAX_CONVERSATIONS_PER_USER="3",
                     MAX_MOODS_PER_USER="2", MAX_LINES_PER_CONVERSATION="2", THREADS="8",
                     DB_POOL_MAX="8")
    server = Server(env, tmp / "server.log").wait_ready()
    yield server
    server.stop()


def test_object_limits(capped_server):
    client, _ = new_user(Client(capped_server.url))
    convos = [client.create_conversation(f"c{i}") for i in range(3)]
    with pytest.raises(ActionNotAllowedError) as caught:
        client.create_conversation("one too many")
    assert caught.value.message == "You may not create more than 3 conversations."
    client.put_mood("one")
    client.put_mood("two")
    with pytest.raises(ActionNotAllowedError) as caught:
        client.put_mood("three")
    assert caught.value.message == "You may not create more than 2 moods."
    assert client.put_mood("two", eyes="@@")["eyes"] == "@@"  # updating at the cap is fine
    client.create_line(convos[0]["id"], "a")
    client.create_line(convos[0]["id"], "b")
    with pytest.raises(ActionNotAllowedError) as caught:
        client.create_line(convos[0]["id"], "c")
    assert caught.value.message == "You may not add more than 2 lines to a conversation."
    client.delete_conversation(convos[1]["id"])
    client.create_conversation("room again")


def test_concurrent_creates_at_the_cap_cannot_all_succeed(capped_server):
    client, user = new_user(Client(capped_server.url))
    results: list[int] = []

    def create(i: int) -> None:
        with httpx.Client(base_url=capped_server.url, timeout=30) as http:
            response = http.post("/conversations", json={"heading": f"race {i}"},
                                 headers={"Authorization": f"Bearer {user['token']}"})
            results.append(response.status_code)

    run_threads(create, [(i,) for i in range(12)])
    assert sorted(results) == [201] * 3 + [409] * 9
    assert len(list(client.iter_conversations())) == 3


def test_deleted_user_is_refused_even_where_it_was_confirmed_before(shared_server, anon):
    """GET /animals reads no table: workers remember confirmed users until a deletion notice."""
    client, user = new_user(anon)
    for _ in range(20):  # new connections each time, so both workers confirm the user
        assert httpx.get(shared_server.url + "/animals",
                         headers={"Authorization": f"Bearer {user['token']}"}).status_code == 200
    client.delete_user(user["id"])
    for _ in range(20):
        response = httpx.get(shared_server.url + "/animals",
                             headers={"Authorization": f"Bearer {user['token']}"})
        assert response.status_code == 401 and response.json()["code"] == "auth_invalid"
