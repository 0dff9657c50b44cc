"""Live streams (GET /events/stream): served directly within their bounds, and through a real
Pushpin with exact resume, while others write. docs/streams.md."""

from __future__ import annotations

import threading
import time
from typing import Any

import httpx
import psycopg
import pytest

from app.client import Client, NotFoundError, ServiceUnavailableError, parse_event_stream

pytestmark = pytest.mark.timeout(180)


def events_of(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [m for m in messages if "event" in m]


class Reader:
    """A stream read on a thread of its own: every message, until it ends or is closed."""

    def __init__(self, client: Client, **kwargs: Any):
        self.messages: list[dict[str, Any]] = []
        self.error: BaseException | None = None
        self.ended = threading.Event()
        self._iterator = client.stream_events(**kwargs)
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            for message in self._iterator:
                self.messages.append(message)
        except BaseException as exc:  # reported by the test
            self.error = exc
        finally:
            self.ended.set()

    def events(self) -> list[dict[str, Any]]:
        return events_of(list(self.messages))

    def wait_events(self, count: int, seconds: float = 15.0) -> list[dict[str, Any]]:
        deadline = time.monotonic() + seconds
        while len(self.events()) < count and time.monotonic() < deadline \
                and not self.ended.is_set():
            time.sleep(0.02)
        return self.events()


def new_user(server) -> Client:
    client = Client(server.url)
    user = client.create_user("streamer")
    return client.with_token(user["token"])


def test_a_direct_stream_replays_after_the_cursor_then_follows_new_events(start_server):
    server = start_server(STREAM_DIRECT_SECONDS="20", STREAM_POLL_SECONDS="0.05")
    me = new_user(server)
    convo = me.create_conversation("live", lines=[{"text": "one"}, {"text": "two"}])
    first = me.list_events().data[0]["id"]
    reader = Reader(me, last_event_id=first)
    try:
        replayed = reader.wait_events(2)
        assert [e["event"] for e in replayed] == ["line.created", "line.created"]
        assert [e["data"]["data"]["object"]["text"] for e in replayed] == ["one", "two"]
        assert reader.messages[0]["retry"] >= 1000
        line = me.create_line(convo["id"], text="three")
        live = reader.wait_events(3)[2]
        assert live["event"] == "line.created" and live["data"]["data"]["object"] == line
        assert [e["id"] for e in reader.events()] == \
            [e["id"] for e in me.iter_events(starting_after=first)]
    finally:
        me.close()


def test_a_stream_without_a_cursor_starts_now_with_its_resume_id(start_server):
    server = start_server(STREAM_DIRECT_SECONDS="1", STREAM_POLL_SECONDS="0.05",
                          STREAM_HEARTBEAT_SECONDS="0.3")
    me = new_user(server)
    me.create_conversation("before")
    head = me.list_events().data[-1]["id"]
    messages = list(me.stream_events())
    assert messages[0]["retry"] >= 1000
    assert messages[1] == {"id": head}
    assert not events_of(messages)
    assert {"comment": "heartbeat"} in messages  # idle for a second: heartbeats


def test_direct_streams_are_bounded_per_worker_and_in_time_and_the_api_keeps_answering(
        start_server):
    server = start_server(WEB_CONCURRENCY="1", THREADS="4", STREAM_DIRECT_MAX="2",
                          STREAM_DIRECT_SECONDS="4", STREAM_POLL_SECONDS="0.1")
    me = new_user(server)
    me.create_conversation("busy")
    started = time.monotonic()
    readers = [Reader(me), Reader(me)]
    try:
        for reader in readers:
            deadline = time.monotonic() + 10
            while not reader.messages and time.monotonic() < deadline:
                time.sleep(0.02)
            assert reader.messages, "the stream did not start"
        with pytest.raises(ServiceUnavailableError) as refused:
            next(me.stream_events())
        retry_after = int(me.last_response.headers["Retry-After"])
        assert 1 <= retry_after <= 4
        assert refused.value.status == 503
        # The other threads still serve the API while both streams are open.
        for n in range(5):
            me.create_conversation(f"meanwhile {n}")
            assert me.list_conversations(limit=1).data
        assert not any(r.ended.is_set() for r in readers)
        for reader in readers:
            assert reader.ended.wait(15), "a direct stream outlived STREAM_DIRECT_SECONDS"
            assert reader.error is None
        assert time.monotonic() - started >= 3.5
        # The streams saw the conversations created meanwhile, live.
        assert len(readers[0].events()) == 5
        assert isinstance(next(me.stream_events()), dict)  # a slot is free again
    finally:
        me.close()


def test_a_deleted_users_direct_stream_ends(start_server):
    server = start_server(STREAM_DIRECT_SECONDS="60", STREAM_POLL_SECONDS="0.05")
    anonymous = Client(server.url)
    user = anonymous.create_user("soon gone")
    me = anonymous.with_token(user["token"])
    me.create_conversation("soon gone")
    reader = Reader(me)
    deadline = time.monotonic() + 10
    while not reader.messages and time.monotonic() < deadline:
        time.sleep(0.02)
    me.delete_user(user["id"])
    assert reader.ended.wait(10), "the deleted user's stream is still open"


def test_another_users_conversation_is_404_and_a_bad_cursor_400(start_server):
    server = start_server()
    me, other = new_user(server), new_user(server)
    theirs = other.create_conversation("theirs")
    with pytest.raises(NotFoundError):
        next(me.stream_events(conversation=theirs["id"]))
    response = httpx.get(server.url + "/events/stream",
                         headers={"Authorization": f"Bearer {me.token}",
                                  "Last-Event-ID": other.list_events().data[0]["id"]})
    assert response.status_code == 400
    assert response.json()["data"][0]["params"] == ["Last-Event-ID"]
    assert httpx.get(server.url + "/events/stream").status_code == 401


def test_a_cursor_older_than_the_retention_yields_one_reset(start_server, postgres):
    url = postgres.new_database()
    server = start_server(database_url=url, STREAM_DIRECT_SECONDS="1",
                          STREAM_POLL_SECONDS="0.05")
    me = new_user(server)
    convo = me.create_conversation("old")
    me.update_conversation(convo["id"], "newer")
    old, newest = [e["id"] for e in me.list_events().data]
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("UPDATE events SET created_at = now() - interval '1000 hours' "
                     "WHERE type = 'conversation.created'")
    messages = list(me.stream_events(last_event_id=old))
    resets = events_of(messages)
    assert [m["event"] for m in resets] == ["reset"]
    assert resets[0]["id"] == newest


def test_the_stream_route_is_documented_and_counts_open_streams(start_server):
    server = start_server(STREAM_DIRECT_SECONDS="3", STREAM_POLL_SECONDS="0.1",
                          WEB_CONCURRENCY="1")
    me = new_user(server)
    reader = Reader(me)
    deadline = time.monotonic() + 10
    while not reader.messages and time.monotonic() < deadline:
        time.sleep(0.02)
    metrics = httpx.get(server.url + "/metrics").text
    assert "streams_direct_open 1.0" in metrics
    assert reader.ended.wait(10)
    spec = httpx.get(server.url + "/openapi.json").json()
    assert "text/event-stream" in spec["paths"]["/events/stream"]["get"]["responses"]["200"][
        "content"]


def test_parse_event_stream_reads_the_fields_saypi_sends():
    lines = iter(["retry: 2000", "", "id: evt_1", "", ": heartbeat", "id: evt_2",
                  "event: line.created", 'data: {"a": 1}', ""])
    assert list(parse_event_stream(lines)) == [
        {"retry": 2000}, {"id": "evt_1"}, {"comment": "heartbeat"},
        {"id": "evt_2", "event": "line.created", "data": {"a": 1}}]
