"""Events end to end: what each change records, what refused and replayed requests do not,
the list's filters and cursors, retention, and the metrics."""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import psycopg
import pytest

from app.client import Client, InvalidParamsError, NotFoundError
from app.store.events import EventRepository
from harness.saypi import Server, server_env
from tests.conftest import eventually, metric_total
from tests.e2e.test_ratelimit_store import open_db

LINE = {"animal": "default", "mood": "tired", "text": "Moo."}


@pytest.fixture(scope="module")
def server(postgres, tmp_path_factory) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("events")
    env = server_env(postgres.new_database(), tmp, MAX_LINES_PER_CONVERSATION="3",
                     PURGE_INTERVAL_SECONDS="0.5", EVENTS_RETENTION_HOURS="1")
    server = Server(env, tmp / "server.log")
    server.wait_ready()
    yield server
    server.stop()


def new_client(server: Server) -> tuple[Client, dict]:
    anonymous = Client(server.url)
    user = anonymous.create_user(name="Ada")
    return anonymous.with_token(user["token"]), user


def all_events(client: Client, **filters) -> list[dict]:
    return list(client.iter_events(page_size=3, **filters))


def test_each_change_records_its_events_with_the_object_as_the_api_showed_it(server):
    client, user = new_client(server)
    assert all_events(client) == []  # creating the user records nothing
    updated = client.update_user(user["id"], name="Ada L.")
    mood = client.put_mood("sleepy", eyes="-.")
    mood_again = client.put_mood("sleepy", tongue="U ")
    bare = client.create_conversation("Bare")
    convo = client.create_conversation("Farm", lines=[LINE, {**LINE, "mood": "sleepy"}])
    line = client.create_line(convo["id"], text="One more", mood="sleepy")
    renamed = client.update_conversation(bare["id"], "Renamed")
    batch = client.create_lines(bare["id"], [{"text": "a"}, {"text": "b", "think": True}])
    client.delete_line(convo["id"], line["id"])
    client.delete_conversation(convo["id"])
    client.delete_line(bare["id"], batch[0]["id"])
    client.put_mood("gone")
    client.delete_mood("gone")

    events = all_events(client)
    got = [(e["type"], e["conversation"], e["data"]["object"]) for e in events]
    listed_bare = {k: v for k, v in bare.items() if k != "lines"}
    listed_convo = {k: v for k, v in convo.items() if k != "lines"}
    assert got == [
        ("user.updated", None, updated),
        ("mood.created", None, mood),
        ("mood.updated", None, mood_again),
        ("conversation.created", bare["id"], listed_bare),
        ("conversation.created", convo["id"], listed_convo),
        ("line.created", convo["id"], convo["lines"][0]),
        ("line.created", convo["id"], convo["lines"][1]),
        ("line.created", convo["id"], line),
        ("conversation.updated", bare["id"], {k: v for k, v in renamed.items()
                                              if k != "lines"}),
        ("line.created", bare["id"], batch[0]),
        ("line.created", bare["id"], batch[1]),
        ("line.deleted", convo["id"], line),
        ("conversation.deleted", convo["id"], listed_convo),  # its lines: no event each
        ("line.deleted", bare["id"], batch[0]),
        ("mood.created", None, {"name": "gone", "eyes": "oo", "tongue": "  ",
                                "user_defined": True}),
        ("mood.deleted", None, {"name": "gone", "eyes": "oo", "tongue": "  ",
                                "user_defined": True}),
    ]
    # A line's output is as it was: the mood changed since, and still the event does not.
    client.put_mood("sleepy", eyes="@@")
    assert all_events(client)[7]["data"]["object"]["output"] == line["output"]
    ids = [e["id"] for e in events]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    for event in events:
        assert client.get_event(event["id"]) == event
        assert event["created_at"].endswith("Z")


def test_refused_and_replayed_writes_record_nothing(server):
    client, _ = new_client(server)
    convo = client.create_conversation("Capped", lines=[LINE, LINE])
    before = all_events(client)
    assert len(before) == 3

    with pytest.raises(InvalidParamsError):  # a refused batch: one mood missing
        client.create_lines(convo["id"], [LINE, {**LINE, "mood": "nope"}])
    refused = client.request("POST", f"/conversations/{convo['id']}/lines/batch",
                             json={"lines": [LINE, LINE]})
    assert refused.status_code == 409  # the cap: 2 + 2 > 3
    assert client.request("POST", f"/conversations/{convo['id']}/lines",
                          json={**LINE, "mood": "nope"}).status_code == 400
    assert all_events(client) == before

    key = {"Idempotency-Key": "events-replay-1"}
    first = client.request("POST", f"/conversations/{convo['id']}/lines", json=LINE,
                           headers=key)
    assert first.status_code == 201
    after_first = all_events(client)
    assert len(after_first) == 4
    replay = client.request("POST", f"/conversations/{convo['id']}/lines", json=LINE,
                            headers=key)
    assert replay.headers.get("Idempotent-Replayed") == "true"
    reused = client.request("POST", f"/conversations/{convo['id']}/lines",
                            json={**LINE, "text": "other"}, headers=key)
    assert reused.status_code == 422
    capped = client.request("POST", f"/conversations/{convo['id']}/lines", json=LINE,
                            headers={"Idempotency-Key": "events-cap-1"})
    assert capped.status_code == 409  # full now, inside the key's unit of work
    assert client.request("DELETE", "/conversations/cv_0000000000000001").status_code == 404
    assert all_events(client) == after_first


def test_another_users_events_are_not_found(server):
    alice, _ = new_client(server)
    bob, _ = new_client(server)
    alice.create_conversation("Private")
    event = all_events(alice)[0]
    with pytest.raises(NotFoundError):
        bob.get_event(event["id"])
    with pytest.raises(InvalidParamsError) as refused:
        bob.list_events(starting_after=event["id"])
    assert refused.value.params == {"starting_after"}
    assert all_events(bob) == []
    for bad in ("evt_1", "evt_" + "0" * 32, "cv_0b6d2f9e4c8a1735", event["id"] + "0"):
        with pytest.raises(NotFoundError):
            alice.get_event(bad)
    assert all_events(bob, conversation=event["conversation"]) == []


def test_filters_by_type_prefix_and_conversation(server):
    client, user = new_client(server)
    one = client.create_conversation("One", lines=[LINE])
    two = client.create_conversation("Two")
    client.create_line(two["id"], text="x")
    client.put_mood("sleepy")
    client.update_conversation(one["id"], "One!")
    client.update_user(user["id"], name="Bea")
    every = all_events(client)

    def types(events):
        return [e["type"] for e in events]

    assert types(all_events(client, type="line.created")) == ["line.created"] * 2
    assert types(all_events(client, type="conversation.*")) == [
        "conversation.created", "conversation.created", "conversation.updated"]
    assert all_events(client, type="conversation.*") == [
        e for e in every if e["type"].startswith("conversation.")]
    assert types(all_events(client, conversation=one["id"])) == [
        "conversation.created", "line.created", "conversation.updated"]
    assert types(all_events(client, conversation=two["id"], type="line.*")) == ["line.created"]
    assert all_events(client, type="mood.deleted") == []
    assert all_events(client, conversation="cv_0000000000000001") == []
    # a cursor may be any of the user's events, whatever the filter
    after_user = all_events(client, type="line.*", starting_after=every[0]["id"])
    assert types(after_user) == ["line.created"] * 2
    with pytest.raises(InvalidParamsError) as refused:
        client.list_events(type="line", conversation="ln_0b6d2f9e4c8a1735")
    assert refused.value.params == {"type", "conversation"}
    for bad in ("*", "line.", "lines.*", "LINE.CREATED", "line.created,mood.*"):
        with pytest.raises(InvalidParamsError):
            client.list_events(type=bad)


def test_cursor_rules(server):
    client, _ = new_client(server)
    client.create_conversation("Paged", lines=[LINE, LINE, LINE])
    for i in range(3):
        client.put_mood(f"m{i}")
    every = all_events(client)
    assert len(every) == 7
    first = client.list_events(limit=2)
    assert first.has_more and first.data == every[:2]
    after = client.list_events(limit=2, starting_after=every[4]["id"])
    assert not after.has_more and after.data == every[5:]
    before = client.list_events(limit=2, ending_before=every[4]["id"])
    assert before.has_more and before.data == every[2:4]
    assert client.list_events(ending_before=every[0]["id"]).data == []
    assert client.list_events(starting_after=every[-1]["id"]).data == []
    for params in ({"starting_after": every[0]["id"], "ending_before": every[1]["id"]},
                   {"starting_after": ""}, {"limit": "0"}, {"limit": "101"},
                   {"starting_after": every[-1]["id"][:-1] + "f"},  # not written yet
                   {"ending_before": "evt_nonsense"}):
        response = client.request("GET", "/events", params=params)
        assert response.status_code == 400, params
        assert response.json()["code"] == "invalid_params"
    unknown = client.request("GET", "/events",
                             params={"starting_after": every[-1]["id"][:-1] + "f"}).json()
    assert unknown["data"][0]["message"] == "must refer to an existing object"


def test_retention_boundary_and_purge(server):
    client, user = new_client(server)
    convo = client.create_conversation("Old")
    client.create_line(convo["id"])
    client.create_line(convo["id"])
    every = all_events(client)
    user_id = int(user["id"].split("_")[1], 16)
    with psycopg.connect(server.env["DATABASE_URL"], autocommit=True) as conn:
        # The first two fall just past the 1-hour retention; the third just inside it.
        conn.execute("UPDATE events SET created_at = now() - interval '61 minutes' "
                     "WHERE user_id = %s AND seq <= 2", (user_id,))
        conn.execute("UPDATE events SET created_at = now() - interval '59 minutes' "
                     "WHERE user_id = %s AND seq = 3", (user_id,))
    # Until the purge has run, expired events are already neither listed nor found;
    # afterwards, the same: the purge changes nothing a client sees.
    for _ in range(2):
        assert [e["id"] for e in all_events(client)] == [every[2]["id"]]
        with pytest.raises(NotFoundError):
            client.get_event(every[0]["id"])
        for param in ("starting_after", "ending_before"):
            with pytest.raises(InvalidParamsError) as refused:
                client.list_events(**{param: every[1]["id"]})
            assert refused.value.data[0]["message"] == (
                "names an event older than the 1-hour event retention")
        assert client.list_events(starting_after=every[2]["id"]).data == []

        def purged() -> bool:
            with psycopg.connect(server.env["DATABASE_URL"]) as conn:
                return conn.execute("SELECT count(*) FROM events WHERE user_id = %s",
                                    (user_id,)).fetchone()[0] == 1
        assert eventually(purged, 20)
    assert client.get_conversation(convo["id"])["heading"] == "Old"


def event_rows(server: Server, user_id: int) -> int:
    with psycopg.connect(server.env["DATABASE_URL"]) as conn:
        return conn.execute("SELECT count(*) FROM events WHERE user_id = %s",
                            (user_id,)).fetchone()[0]


def test_deleting_a_user_deletes_their_events(server):
    client, user = new_client(server)
    client.create_conversation("Soon gone", lines=[LINE])
    user_id = int(user["id"].split("_")[1], 16)
    assert event_rows(server, user_id) == 2
    client.delete_user(user["id"])
    assert client.request("GET", "/events").status_code == 401
    # The janitor (every 0.5 s here) deletes them, outside the request.
    assert eventually(lambda: event_rows(server, user_id) == 0, 20)


def test_deleting_a_busy_user_does_not_wait_for_their_events(server):
    """Twelve thousand event rows (more than two of the janitor's batches, seeded straight
    into the table, as a busy user's year would be), and another session holding locks on
    them: deleting the user answers at once (a deletion of the events in the request would
    wait for those locks until the statement timeout), then the janitor deletes them all."""
    client, user = new_client(server)
    client.create_conversation("Busy", lines=[LINE])
    user_id = int(user["id"].split("_")[1], 16)
    dsn = server.env["DATABASE_URL"]
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("INSERT INTO events (user_id, seq, last_seq, type, conversation, data) "
                     "SELECT %s, g, g, 'user.updated', NULL, '[]' "
                     "FROM generate_series(1000, 12999) g", (user_id,))
    with psycopg.connect(dsn) as holder:  # one transaction, until the block ends
        holder.execute("SELECT 1 FROM events WHERE user_id = %s AND seq < 2000 FOR UPDATE",
                       (user_id,))
        client.delete_user(user["id"])
        assert client.request("GET", "/events").status_code == 401
        assert event_rows(server, user_id) > 1000  # what the holder locks is still there
    assert eventually(lambda: event_rows(server, user_id) == 0, 30)
    with psycopg.connect(dsn) as conn:
        assert conn.execute("SELECT count(*) FROM deleted_users WHERE user_id = %s",
                            (user_id,)).fetchone()[0] == 0


def test_metrics_count_events_by_type_and_the_oldest_age(server):
    client, _ = new_client(server)
    # Each worker folds its count into the metric every second: wait until the other
    # tests' events are all in it.
    before = -1.0
    for _ in range(20):
        now = metric_total(server, "events_written_total", type="line.created")
        if now == before:
            break
        before = now
        time.sleep(1.2)
    convo = client.create_conversation("Counted", lines=[LINE, LINE])
    client.create_line(convo["id"])

    def counted() -> bool:
        return metric_total(server, "events_written_total",
                            type="line.created") == before + 3

    assert eventually(counted, 10)
    assert eventually(lambda: metric_total(server, "events_oldest_age_seconds") > 0, 10)
    assert "events_written_total" in httpx.get(server.url + "/metrics").text


def test_event_bodies_match_the_openapi_description(server):
    from openapi_schema_validator import OAS30Validator

    client, user = new_client(server)
    convo = client.create_conversation("Described", lines=[LINE])
    client.update_user(user["id"], email="ada@example.com")
    client.put_mood("sleepy")
    client.delete_conversation(convo["id"])
    spec = httpx.get(server.url + "/openapi.json").json()

    def validate(name: str, body) -> None:
        OAS30Validator({"$ref": f"#/components/schemas/{name}",
                        "components": spec["components"]}).validate(body)

    page = client.request("GET", "/events", params={"limit": 100}).json()
    assert len(page["data"]) == 5
    validate("EventList", page)
    for event in page["data"]:
        validate("EventOut", client.get_event(event["id"]))


def test_a_batchs_events_page_one_by_one_whatever_the_filter(server):
    """A batch's events are stored together; every cursor inside them still works."""
    client, _ = new_client(server)
    convo = client.create_conversation("Batch")
    client.put_mood("between")
    batch = client.create_lines(convo["id"], [{"text": str(i)} for i in range(3)])
    client.put_mood("after")
    every = all_events(client)
    assert [e["type"] for e in every] == ["conversation.created", "mood.created",
                                          *["line.created"] * 3, "mood.created"]
    assert [e["data"]["object"] for e in every[2:5]] == batch
    for filters in ({}, {"type": "line.created"}, {"type": "line.*"},
                    {"conversation": convo["id"]}):
        expected = [e for e in every if (
            e["type"].startswith(filters.get("type", "").rstrip("*"))
            and filters.get("conversation") in (None, e["conversation"]))]
        assert list(client.iter_events(page_size=1, **filters)) == expected, filters
        for i, event in enumerate(expected):
            after = client.list_events(limit=1, starting_after=event["id"], **filters)
            assert after.data == expected[i + 1: i + 2]
            assert after.has_more == (i + 2 < len(expected))
            before = client.list_events(limit=1, ending_before=event["id"], **filters)
            assert before.data == expected[max(0, i - 1): i]
            assert before.has_more == (i > 1)
    for event in every:
        assert client.get_event(event["id"]) == event


def test_one_janitor_round_purges_until_nothing_is_left_within_its_time(postgres):
    """25,000 expired rows and 10 kept: one call, 1,000 rows a statement, deletes every
    expired row (the round used to stop after 10 statements, 10,000 rows, whatever was
    left), and nothing younger than the retention."""
    dsn = postgres.new_database()
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("INSERT INTO events (user_id, seq, last_seq, type, conversation, data, "
                     "created_at) SELECT 5, g, g, 'user.updated', NULL, '[]', "
                     "now() - interval '2 hours' FROM generate_series(1, 25000) g")
        conn.execute("INSERT INTO events (user_id, seq, last_seq, type, conversation, data) "
                     "SELECT 5, g, g, 'user.updated', NULL, '[]' "
                     "FROM generate_series(25001, 25010) g")
    db = open_db(dsn)
    try:
        assert EventRepository(db, retention_hours=1).purge_expired(
            batch=1000, seconds=60) == 25000
    finally:
        db.close()
    with psycopg.connect(dsn) as conn:
        assert conn.execute("SELECT min(seq), count(*) FROM events").fetchone() == (25001, 10)

