"""Batches of lines, conversations created with lines, and rendering without storing.

End to end against real SayPI processes and PostgreSQL through the project's
client: validation names every bad element by index, a batch is all or
nothing (a bad element, the line cap, a race at the cap), Idempotency-Key
replays a batch, and POST /render draws with built-in and own moods and
stores nothing. The repository tests at the end count the statements a
batch sends: one.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

import httpx
import psycopg
import pytest

from app.client import (
    ActionNotAllowedError,
    AuthInvalidError,
    Client,
    IdempotencyKeyReusedError,
    InvalidParamsError,
    NotFoundError,
)
from app.domain.errors import LimitReached, MoodMissing
from app.domain.models import NewLine
from app.store.conversations import ConversationRepository
from app.store.lines import LineRepository
from app.store.moods import MoodRepository
from app.store.users import UserRepository
from harness.saypi import Server, server_env
from tests.conftest import run_threads

# On the capped server a batch may hold more lines than a conversation may, so both caps
# can be reached.
LINE_CAP, BATCH_MAX, CONVERSATION_CAP = 6, 8, 12
MOOD_MISSING = "must name a built-in mood or one of yours"


@pytest.fixture(scope="module")
def shared_server(deployed_server):
    """Each deployment in turn (tests/conftest.py deployed_server)."""
    return deployed_server


@pytest.fixture(scope="module")
def capped_server(postgres, tmp_path_factory) -> Iterator[Server]:
    """A SayPI with small caps, so the line cap and MAX_BATCH_LINES are reached quickly."""
    tmp = tmp_path_factory.mktemp("capped")
    env = server_env(postgres.new_database(), tmp, MAX_LINES_PER_CONVERSATION=str(LINE_CAP),
                     MAX_BATCH_LINES=str(BATCH_MAX),
                     MAX_CONVERSATIONS_PER_USER=str(CONVERSATION_CAP))
    server = Server(env, tmp / "server.log")
    server.wait_ready()
    yield server
    server.stop()


def user_of(server: Server) -> Client:
    anon = Client(server.url)
    return anon.with_token(anon.create_user(name="Batcher")["token"])


@pytest.fixture
def me(shared_server) -> Client:
    return user_of(shared_server)


@pytest.fixture
def capped(capped_server) -> Client:
    return user_of(capped_server)


def problems(caught: pytest.ExceptionInfo) -> list[tuple[list[str], str]]:
    return [(p["params"], p["message"]) for p in caught.value.data]


def texts(client: Client, conversation_id: str) -> list[str]:
    return [line["text"] for line in client.iter_lines(conversation_id)]


# --- batches ----------------------------------------------------------------------------
def test_a_batch_creates_its_lines_in_order_in_the_list_format(me):
    convo = me.create_conversation("batch")["id"]
    me.put_mood("Sleepy", eyes="-.", tongue="U ")
    given = [{"text": f"line {n}", "think": n % 2 == 1} for n in range(30)]
    given[3] = {"text": "own mood", "mood": "SLEEPY", "animal": "default"}
    created = me.create_lines(convo, given)
    response = me.last_response
    assert response.status_code == 201
    assert response.headers["location"] == f"/conversations/{convo}/lines"
    body = response.json()
    assert (body["type"], body["has_more"]) == ("line", False)
    assert [line["text"] for line in created] == [line["text"] for line in given]
    assert created[3]["mood"] == "Sleepy" and created[1]["think"] is True
    assert created == list(me.iter_lines(convo))  # each as GET .../lines shows it
    assert me.get_conversation(convo)["lines"] == created
    single = me.create_line(convo, "own mood", mood="sleepy")
    assert single["output"] == created[3]["output"]


def test_every_bad_element_is_named_by_index_at_once(me):
    convo = me.create_conversation("bad batch")["id"]
    me.put_mood("Calm")
    with pytest.raises(InvalidParamsError) as caught:
        me.create_lines(convo, [
            {"text": "fine", "mood": "calm"},
            {"mood": "no such mood", "text": "x" * 1001},
            "not an object",
            {"animal": "no-such-animal", "think": "true", "unknown": 1},
            {"text": "a\x00b", "mood": "borg"},
            {"mood": ""},
        ] + [{"text": "padding"}] * 5 + [{"mood": "gone"}])
    assert problems(caught) == [
        (["lines[1].mood"], MOOD_MISSING),
        (["lines[1].text"], "must be a string of 0 to 1000 characters"),
        (["lines[2]"], "must be an object"),
        (["lines[3].animal"], "must name an animal listed by GET /animals"),
        (["lines[3].think"], "must be a boolean (true or false)"),
        (["lines[4].text"], "must not contain control characters"),
        (["lines[5].mood"], "must be a string of 1 to 30 printable ASCII characters"),
        (["lines[11].mood"], MOOD_MISSING),
    ]
    assert caught.value.message.startswith("Parameter `lines[1].mood` must name")
    assert texts(me, convo) == []


@pytest.mark.parametrize("body", [
    {}, {"lines": None}, {"lines": []}, {"lines": "[]"}, {"lines": {"text": "moo"}},
    {"lines": 3}, {"lines": [{"text": "moo"}] * 101},
])
def test_a_missing_empty_too_long_or_non_list_batch_is_invalid_on_lines(me, body):
    convo = me.create_conversation("no batch")["id"]
    response = me.request("POST", f"/conversations/{convo}/lines/batch", json=body)
    assert response.status_code == 400
    message = "is required" if body.get("lines") is None else \
        "must be a list of 1 to 100 objects"
    assert response.json()["data"] == [{"params": ["lines"], "message": message}]
    assert texts(me, convo) == []


def test_a_form_cannot_carry_a_batch(me):
    convo = me.create_conversation("form")["id"]
    response = me.request("POST", f"/conversations/{convo}/lines/batch",
                          content="lines=moo",
                          headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert response.status_code == 400
    assert response.json()["data"][0]["params"] == ["lines"]


def test_a_batch_for_a_conversation_not_yours_is_not_found(me, shared_server):
    convo = me.create_conversation("mine")["id"]
    other = user_of(shared_server)
    for target in (convo, "cv_0000000000000000", "nonsense"):
        with pytest.raises(NotFoundError):
            other.create_lines(target, [{"text": "hi"}])
    assert texts(me, convo) == []


def test_a_batch_over_the_line_cap_creates_nothing(capped):
    convo = capped.create_conversation("capped")["id"]
    capped.create_lines(convo, [{"text": "a"}, {"text": "b"}, {"text": "c"}])
    with pytest.raises(ActionNotAllowedError) as caught:
        capped.create_lines(convo, [{"text": "d"}, {"text": "e"}, {"text": "f"},
                                    {"text": "g"}])
    assert caught.value.message == \
        f"You may not add more than {LINE_CAP} lines to a conversation."
    assert caught.value.data == {"action": f"add more than {LINE_CAP} lines to a conversation"}
    assert texts(capped, convo) == ["a", "b", "c"]
    # The refused batch left the counter alone: exactly the rest of the cap still fits.
    capped.create_lines(convo, [{"text": "d"}, {"text": "e"}, {"text": "f"}])
    with pytest.raises(ActionNotAllowedError):
        capped.create_line(convo, "g")
    assert texts(capped, convo) == ["a", "b", "c", "d", "e", "f"]


def test_one_bad_element_creates_nothing_and_leaves_the_counter(capped):
    convo = capped.create_conversation("atomic")["id"]
    with pytest.raises(InvalidParamsError) as caught:
        capped.create_lines(convo, [{"text": "a"}, {"text": "b"}, {"mood": "missing"}])
    assert problems(caught) == [(["lines[2].mood"], MOOD_MISSING)]
    assert texts(capped, convo) == []
    capped.create_lines(convo, [{"text": str(n)} for n in range(LINE_CAP)])  # exactly fits
    assert len(texts(capped, convo)) == LINE_CAP


def test_the_batch_limit_is_the_setting(capped):
    convo = capped.create_conversation("limit")["id"]
    with pytest.raises(InvalidParamsError) as caught:
        capped.create_lines(convo, [{"text": "x"}] * (BATCH_MAX + 1))
    assert problems(caught) == [(["lines"], f"must be a list of 1 to {BATCH_MAX} objects")]


def test_two_batches_racing_at_the_cap_never_both_pass(capped):
    """Each batch fits alone, both do not: exactly one wins, every round."""

    def send(convo: str, name: str, barrier: threading.Barrier, outcomes: dict) -> None:
        client = Client(capped.base_url, capped.token)
        try:
            barrier.wait()
            outcomes[name] = len(client.create_lines(convo, [{"text": name}] * 3))
        except ActionNotAllowedError as exc:
            outcomes[name] = exc.code
        finally:
            client.close()

    for round_ in range(8):
        convo = capped.create_conversation(f"race {round_}")["id"]
        capped.create_lines(convo, [{"text": "old"}, {"text": "old"}])  # 2 + 3 fits, 2 + 6 not
        barrier, outcomes = threading.Barrier(2), {}
        run_threads(send, [(convo, name, barrier, outcomes) for name in ("first", "second")])
        assert sorted(outcomes.values(), key=str) == [3, "action_not_allowed"], outcomes
        lines = texts(capped, convo)
        assert len(lines) == 5 and len(set(lines[2:])) == 1


def test_a_batch_is_replayed_by_its_idempotency_key(me):
    convo = me.create_conversation("replayed")["id"]
    batch = [{"text": "once"}, {"text": "only", "mood": "dead"}]
    first = me.create_lines(convo, batch, idempotency_key="batch-key-1")
    original = me.last_response
    again = me.create_lines(convo, [{**batch[0], "ignored": True}, batch[1]],
                            idempotency_key="batch-key-1")
    replay = me.last_response
    assert again == first and replay.content == original.content
    assert replay.status_code == 201 and replay.headers["idempotent-replayed"] == "true"
    assert replay.headers["location"] == original.headers["location"]
    assert "idempotent-replayed" not in original.headers
    assert texts(me, convo) == ["once", "only"]
    with pytest.raises(IdempotencyKeyReusedError):
        me.create_lines(convo, [{"text": "other"}], idempotency_key="batch-key-1")


def test_a_refused_batch_is_replayed_too(capped):
    convo = capped.create_conversation("refused")["id"]
    capped.create_lines(convo, [{"text": "x"}] * (LINE_CAP - 1))
    for _ in range(2):
        with pytest.raises(ActionNotAllowedError):
            capped.create_lines(convo, [{"text": "y"}] * 3, idempotency_key="refused-1")
    assert capped.last_response.headers["idempotent-replayed"] == "true"
    assert len(texts(capped, convo)) == LINE_CAP - 1


# --- conversations with lines ---------------------------------------------------------------
def test_a_conversation_is_created_with_its_lines(me):
    me.put_mood("Proud", eyes="^^")
    convo = me.create_conversation("with lines", lines=[
        {"text": "first"}, {"text": "second", "mood": "proud", "think": True}])
    assert me.last_response.headers["location"] == f"/conversations/{convo['id']}"
    assert [(line["text"], line["mood"]) for line in convo["lines"]] == \
        [("first", "default"), ("second", "Proud")]
    assert me.get_conversation(convo["id"]) == convo
    assert list(me.iter_lines(convo["id"])) == convo["lines"]
    plain = me.create_conversation("without")
    assert plain["lines"] == []


def test_a_conversation_with_a_bad_line_is_not_created(me):
    with pytest.raises(InvalidParamsError) as caught:
        me.create_conversation("", lines=[{"text": "ok"}, {"mood": "nope"}, 7])
    assert [params for params, _ in problems(caught)] == \
        [["heading"], ["lines[1].mood"], ["lines[2]"]]
    with pytest.raises(InvalidParamsError) as caught:
        me.create_conversation("moods only", lines=[{"mood": "tired"}, {"mood": "nope"}])
    assert problems(caught) == [(["lines[1].mood"], MOOD_MISSING)]
    with pytest.raises(InvalidParamsError) as caught:
        me.create_conversation("empty", lines=[])
    assert [params for params, _ in problems(caught)] == [["lines"]]
    assert list(me.iter_conversations()) == []


def test_a_conversation_over_either_cap_is_not_created(capped):
    with pytest.raises(ActionNotAllowedError) as caught:
        capped.create_conversation("too long", lines=[{"text": "x"}] * (LINE_CAP + 1))
    assert caught.value.message == \
        f"You may not add more than {LINE_CAP} lines to a conversation."
    assert list(capped.iter_conversations()) == []
    made = capped.create_conversation("full", lines=[{"text": "x"}] * LINE_CAP)
    with pytest.raises(ActionNotAllowedError):  # its first lines count towards the line cap
        capped.create_line(made["id"], "one more")
    for n in range(CONVERSATION_CAP - 1):
        capped.create_conversation(f"filler {n}")
    with pytest.raises(ActionNotAllowedError) as caught:
        capped.create_conversation("over", lines=[{"text": "y"}])
    assert caught.value.message == \
        f"You may not create more than {CONVERSATION_CAP} conversations."
    assert len(list(capped.iter_conversations())) == CONVERSATION_CAP


def test_a_conversation_with_lines_is_replayed_by_its_idempotency_key(me):
    first = me.create_conversation("keyed", lines=[{"text": "a"}], idempotency_key="cwl-1")
    again = me.create_conversation("keyed", lines=[{"text": "a"}], idempotency_key="cwl-1")
    assert again == first and me.last_response.headers["idempotent-replayed"] == "true"
    assert [c["id"] for c in me.iter_conversations()] == [first["id"]]


# --- rendering ----------------------------------------------------------------------------
def test_render_draws_what_a_line_would_with_built_in_and_own_moods(me):
    convo = me.create_conversation("reference")["id"]
    me.put_mood("Starry", eyes="**", tongue="U ")
    for params in ({"text": "Moo"}, {"text": "Resistance", "mood": "BORG", "think": True},
                   {"text": "twinkle", "mood": "starry", "animal": "default"},
                   {"text": "", "mood": "Starry"}, {"text": "multi\nline\ttext"}):
        line = me.create_line(convo, **params)
        assert me.render(**params) == line["output"], params
        assert me.render_text(**params) == line["output"]
        response = me.last_response
        assert response.headers["content-type"] == "text/plain; charset=utf-8"
        assert response.status_code == 200 and "etag" not in response.headers


def test_render_answers_json_with_only_the_output(me):
    response = me.request("POST", "/render", json={"text": "hi"})
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json; charset=utf-8"
    assert set(response.json()) == {"output"} and "location" not in response.headers


def test_render_validates_as_a_line_does(me, shared_server):
    bad = {"animal": "no-such-animal", "mood": "nope", "think": "yes", "text": "x" * 1001}
    with pytest.raises(InvalidParamsError) as as_render:
        me.render(**bad)
    convo = me.create_conversation("compare")["id"]
    with pytest.raises(InvalidParamsError) as as_line:
        me.create_line(convo, **bad)
    assert as_render.value.data == as_line.value.data
    assert [params for params, _ in problems(as_render)] == \
        [["animal"], ["mood"], ["text"], ["think"]]
    other = user_of(shared_server)
    other.put_mood("secret")
    with pytest.raises(InvalidParamsError) as caught:  # another user's mood is not yours
        me.render("hi", mood="secret")
    assert problems(caught) == [(["mood"], MOOD_MISSING)]


def test_render_stores_nothing(me, shared_server):
    me.put_mood("Fleeting")
    for n in range(3):
        me.render(f"render {n}", mood="fleeting")
    assert list(me.iter_conversations()) == []
    me.delete_mood("Fleeting")  # no line uses it
    with pytest.raises(InvalidParamsError):
        me.render("after", mood="fleeting")


def test_render_needs_a_live_token(shared_server):
    anon = Client(shared_server.url)
    response = anon.request("POST", "/render", json={"text": "hi"})
    assert response.status_code == 401 and response.json()["code"] == "auth_required"
    user = anon.create_user()
    client = anon.with_token(user["token"])
    client.render("alive")
    client.delete_user(user["id"])
    with pytest.raises(AuthInvalidError):
        client.render("gone")
    assert httpx.get(shared_server.url + "/render").status_code == 405


# --- one statement per batch ------------------------------------------------------------
class CountingConnection:
    """A psycopg connection that records the statements sent through `execute`."""

    def __init__(self, conn: psycopg.Connection):
        self.conn = conn
        self.statements: list[str] = []

    def execute(self, sql, params=None, **options):
        self.statements.append(sql)
        return self.conn.execute(sql, params, **options)


class OneConnection:
    """The `db` (app/store/cluster.py's Cluster) repositories take, on one autocommit
    connection whose statements are counted."""

    def __init__(self, conn: psycopg.Connection):
        self.counted = CountingConnection(conn)

    @contextlib.contextmanager
    def connection(self, uow=None):
        yield self.counted

    @contextlib.contextmanager
    def transaction(self, uow=None):
        with self.counted.conn.transaction():
            yield self.counted

    def write(self, user_id, uow=None):
        return self.connection(uow)

    def write_transaction(self, user_id, uow=None):
        return self.transaction(uow)

    def read(self, user_id, fn, *args):
        return fn(self.counted, *args)


@pytest.fixture
def db(postgres) -> Iterator[OneConnection]:
    with psycopg.connect(postgres.new_database(), autocommit=True) as conn:
        conn.execute("SET TimeZone = 'UTC'")
        yield OneConnection(conn)


def test_a_batch_is_one_statement(db):
    user = UserRepository(db).create("Counted", None)
    MoodRepository(db).upsert(user.id, "Mine", "^^", None, cap=10)
    conversations, lines = ConversationRepository(db), LineRepository(db)
    convo = conversations.create(user.id, "counted", cap=10)
    batch = [NewLine("default", n % 3 == 0, ("mine", "BORG", "default")[n % 3], f"line {n}")
             for n in range(100)]
    db.counted.statements.clear()
    created = lines.create_many(user.id, convo.id, batch, cap=1000)
    assert len(db.counted.statements) == 1
    assert [line.text for line in created] == [line.text for line in batch]
    assert [line.mood.name for line in created[:3]] == ["Mine", "borg", "default"]
    assert [line.id for line in conversations.get(user.id, convo.id).lines] == \
        [line.id for line in created]

    db.counted.statements.clear()
    made = conversations.create_with_lines(user.id, "with lines", 10, batch[:5], 1000)
    assert len(db.counted.statements) == 1
    assert [line.text for line in made.lines] == [line.text for line in batch[:5]]
    assert conversations.get(user.id, made.id) == made


def test_a_refused_batch_costs_one_more_statement_to_explain(db):
    user = UserRepository(db).create("Refused", None)
    conversations, lines = ConversationRepository(db), LineRepository(db)
    convo = conversations.create(user.id, "refused", cap=10)
    db.counted.statements.clear()
    with pytest.raises(MoodMissing) as caught:
        lines.create_many(user.id, convo.id, [NewLine("default", False, m, "")
                                              for m in ("default", "nope", "Nope", "borg")],
                          cap=1000)
    assert caught.value.positions == (1, 2) and len(db.counted.statements) == 2
    with pytest.raises(LimitReached):
        lines.create_many(user.id, convo.id, [NewLine("default", False, "default", "")] * 3,
                          cap=2)
    assert conversations.get(user.id, convo.id).lines == ()
    with pytest.raises(LimitReached) as caught:
        conversations.create_with_lines(user.id, "long", 10,
                                        [NewLine("default", False, "default", "")] * 3, 2)
    assert caught.value.kind == LimitReached.LINES
    counts = db.counted.conn.execute(
        "SELECT (SELECT count(*) FROM conversations WHERE user_id = %(u)s), "
        "(SELECT conversation_count FROM users WHERE id = %(u)s), "
        "(SELECT line_count FROM conversations WHERE user_id = %(u)s)", {"u": user.id}).fetchone()
    assert counts == (1, 1, 0)
