"""Live streams (GET /events/stream): served directly within their bounds, and through a real
Pushpin with exact resume, while others write. docs/streams.md."""

from __future__ import annotations

import contextlib
import re
import signal
import threading
import time
from typing import Any

import httpx
import psycopg
import pytest

from app.client import (
    Client,
    NotFoundError,
    SayPIError,
    ServiceUnavailableError,
    parse_event_stream,
)

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

    def wait_for_first(self, seconds: float) -> None:
        """Until the first message arrived, or `seconds` passed."""
        deadline = time.monotonic() + seconds
        while not self.messages and time.monotonic() < deadline:
            time.sleep(0.02)

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
            reader.wait_for_first(10)
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
    reader.wait_for_first(10)
    me.delete_user(user["id"])
    assert reader.ended.wait(10), "the deleted user's stream is still open"


def test_a_stopping_worker_ends_its_direct_streams_at_once(start_server):
    server = start_server(STREAM_DIRECT_SECONDS="120", STREAM_POLL_SECONDS="0.05",
                          GRACEFUL_TIMEOUT="30")
    me = new_user(server)
    reader = Reader(me)
    reader.wait_for_first(10)
    assert reader.messages
    stopped = time.monotonic()
    server.signal(signal.SIGTERM)
    assert reader.ended.wait(10), "the stream held the stopping worker"
    assert server.process.wait(20) == 0
    assert time.monotonic() - stopped < 20  # well before GRACEFUL_TIMEOUT


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


def test_resuming_from_before_any_event_after_a_purge_yields_one_reset(start_server, postgres):
    """The id a stream gives a user with no events yet ("before any event") resumes with
    every event while none has expired, and with a reset once some have."""
    url = postgres.new_database()
    server = start_server(database_url=url, STREAM_DIRECT_SECONDS="1",
                          STREAM_POLL_SECONDS="0.05")
    me = new_user(server)
    (start,) = [m["id"] for m in list(me.stream_events()) if "id" in m][:1]
    convo = me.create_conversation("first")
    me.update_conversation(convo["id"], "second")
    kept = [e["id"] for e in me.list_events().data]
    assert [m["id"] for m in events_of(list(me.stream_events(last_event_id=start)))] == kept
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("UPDATE events SET created_at = now() - interval '1000 hours' "
                     "WHERE type = 'conversation.created'")
    resets = events_of(list(me.stream_events(last_event_id=start)))
    assert [m["event"] for m in resets] == ["reset"]
    assert resets[0]["id"] == kept[-1]


def test_the_stream_route_is_documented_and_counts_open_streams(start_server):
    server = start_server(STREAM_DIRECT_SECONDS="3", STREAM_POLL_SECONDS="0.1",
                          WEB_CONCURRENCY="1")
    me = new_user(server)
    reader = Reader(me)
    reader.wait_for_first(10)
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


# --- through Pushpin ------------------------------------------------------------------------
GRIP_KEY = "grip-test-key-0123456789abcdef-0123456789"


class Live:
    """SayPI (2 workers) behind a real Pushpin, and a relay publishing to it."""

    def __init__(self, server, relay, pushpin):
        self.server, self.relay, self.pushpin = server, relay, pushpin

    def user(self) -> tuple[Client, dict[str, Any]]:
        anonymous = Client(self.pushpin.url)
        user = anonymous.create_user("live")
        return anonymous.with_token(user["token"]), user


@pytest.fixture(scope="module")
def live(postgres, tmp_path_factory):
    from harness.pushpin import Pushpin, PushpinUnavailable, ensure_pushpin
    from harness.saypi import Server, server_env
    from harness.services import free_port

    tmp = tmp_path_factory.mktemp("live")
    try:
        binary = ensure_pushpin(print)
    except PushpinUnavailable as exc:
        pytest.skip(str(exc))
    url = postgres.new_database()
    # Each process is stopped however the ones after it fail to start (a relay that
    # exits at start must not leave the server and Pushpin running).
    with contextlib.ExitStack() as started:
        server = Server(server_env(url, tmp, GRIP_KEY=GRIP_KEY, STREAM_HEARTBEAT_SECONDS="1",
                                   THREADS="6", DB_POOL_MAX="6"), tmp / "server.log")
        started.callback(server.stop)
        server.wait_ready()
        pushpin = Pushpin(binary, [f"127.0.0.1:{server.port}"], GRIP_KEY, tmp)
        started.callback(pushpin.stop)
        relay_port = free_port()
        relay = Server(server_env(url, tmp, PORT=str(relay_port), RELAY_PORT=str(relay_port),
                                  PUSHPIN_PUBLISH_URLS=pushpin.publish_url,
                                  RELAY_POLL_SECONDS="0.02",
                                  # As the servers' settings set it: the relay keeps its own.
                                  PROMETHEUS_MULTIPROC_DIR=str(tmp / "no-such-directory")),
                       tmp / "relay.log", ["relay"])
        started.callback(relay.stop)
        relay.wait_ready()
        yield Live(server, relay, pushpin)


def write_mix(client: Client, conversation: str, seed: int, ops: int, failures: list) -> None:
    import random

    rng = random.Random(seed)
    try:
        for step in range(ops):
            roll = rng.random()
            if roll < 0.5:
                client.create_line(conversation, text=f"w{seed} {step}")
            elif roll < 0.65:
                client.create_lines(conversation, [{"text": f"b{seed} {step} {i}"}
                                                   for i in range(3)])
            elif roll < 0.8:
                client.update_conversation(conversation, f"w{seed} {step}")
            elif roll < 0.9:
                client.put_mood(f"m{seed}", eyes="^^")
            else:
                line = client.create_line(conversation, text="gone")
                client.delete_line(conversation, line["id"])
    except Exception as exc:  # reported by the test, not lost on a thread
        failures.append(exc)


def test_through_pushpin_a_reader_gets_every_event_once_in_order_while_another_writes(live):
    me, _ = live.user()
    convo = me.create_conversation("watched")
    reader = Reader(me)
    narrowed = Reader(me, conversation=convo["id"])
    try:
        deadline = time.monotonic() + 15
        while not (reader.messages and narrowed.messages) and time.monotonic() < deadline:
            time.sleep(0.02)
        start = reader.messages[1]["id"]
        other = me.create_conversation("elsewhere")
        failures: list = []
        writers = [threading.Thread(target=write_mix, args=(me, c, seed, 30, failures))
                   for seed, c in ((1, convo["id"]), (2, convo["id"]), (3, other["id"]))]
        for writer in writers:
            writer.start()
        for writer in writers:
            writer.join(120)
        assert not failures, failures
        log = list(me.iter_events(starting_after=start))
        got = reader.wait_events(len(log), 30)
        assert [e["id"] for e in got] == [e["id"] for e in log]
        assert [(e["event"], e["data"]) for e in got] == [(e["type"], e) for e in log]
        mine = list(me.iter_events(starting_after=start, conversation=convo["id"]))
        got = narrowed.wait_events(len(mine), 30)
        assert [e["data"] for e in got] == mine
        assert live.server.process.poll() is None
        relay = httpx.get(live.relay.url + "/metrics").text
        published = re.search(r'^saypi_stream_events_published_total\{pushpin="[^"]+"\} (\S+)',
                              relay, re.MULTILINE)
        assert published and float(published.group(1)) >= len(log), relay
        assert "saypi_stream_publish_lag_seconds_bucket" in relay
        assert "failed; again" not in live.relay.logs()
    finally:
        me.close()
    assert reader.error is None or isinstance(reader.error, httpx.HTTPError)


def test_through_pushpin_streams_hold_no_saypi_thread(live):
    """Many streams open at once through Pushpin while SayPI has 2 x 6 threads."""
    me, _ = live.user()
    readers = [Reader(me) for _ in range(30)]
    try:
        deadline = time.monotonic() + 20
        while not all(r.messages for r in readers) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert all(r.messages for r in readers)
        convo = me.create_conversation("to all")
        for reader in readers:
            got = reader.wait_events(1, 15)
            assert got and got[0]["data"]["data"]["object"]["id"] == convo["id"]
        metrics = httpx.get(live.server.url + "/metrics").text
        assert "streams_direct_open 0.0" in metrics
    finally:
        me.close()


def test_exact_resume_under_churn_with_a_pushpin_restart(live):
    import random

    me, _ = live.user()
    me = Client(live.server.url, me.token)  # writes go to SayPI, not through Pushpin
    convo = me.create_conversation("churn")
    start = me.list_events().data[-1]["id"]
    stop_writing = threading.Event()
    failures: list = []
    subscribers = 20

    def writer(seed: int) -> None:
        rounds = 0
        while not stop_writing.is_set() and rounds < 200:
            write_mix(me, convo["id"], seed * 1000 + rounds, 1, failures)
            rounds += 1
            time.sleep(0.01)

    seen: list[list[str]] = [[] for _ in range(subscribers)]
    connections = [0] * subscribers
    done = threading.Event()
    final: list[str] = []

    def subscriber(n: int) -> None:
        rng = random.Random(n)
        last = start
        client = Client(live.pushpin.url, me.token)
        try:
            while not (done.is_set() and final and last == final[0]):
                cut_after = rng.randint(1, 12)
                try:
                    stream = client.stream_events(last_event_id=last, read_timeout=5)
                    connections[n] += 1
                    count = 0
                    for message in stream:
                        if "event" in message:
                            seen[n].append(message["id"])
                            last = message["id"]
                            count += 1
                        elif "id" in message:
                            last = message["id"]
                        if count >= cut_after or (done.is_set() and final
                                                  and last == final[0]):
                            break
                    stream.close()  # the client cuts the connection
                except (httpx.HTTPError, SayPIError):
                    # Pushpin restarting (refused, or its own 500 "Accept service unavailable"
                    # until its handler is up): reconnect with Last-Event-ID, as clients do.
                    time.sleep(0.1)
        finally:
            client.close()

    threads = [threading.Thread(target=writer, args=(s,)) for s in (1, 2)]
    threads += [threading.Thread(target=subscriber, args=(n,), daemon=True)
                for n in range(subscribers)]
    for thread in threads:
        thread.start()
    time.sleep(3)
    live.pushpin.restart()
    time.sleep(3)
    stop_writing.set()
    for thread in threads[:2]:
        thread.join(60)
    assert not failures, failures
    log = [e["id"] for e in me.iter_events(starting_after=start)]
    assert len(log) > 50
    final.append(log[-1])
    done.set()
    # Every subscriber reaches the log's end within seconds: one that subscribed just after
    # the last events were published (its hold named an earlier one) recovers when the relay
    # seals the quiet channel a second later (docs/streams.md), not when Pushpin asks its
    # recovery link 300 s later.
    deadline = time.monotonic() + 60
    for thread in threads[2:]:
        thread.join(max(0.0, deadline - time.monotonic()))
    me.close()
    for n in range(subscribers):
        assert seen[n] == log, (n, len(seen[n]), len(log))
    # Each subscriber was cut and came back many times (every 1-12 events, and the restart).
    assert min(connections) >= 5, connections
    print(f"churn: {len(log)} events, {sum(connections)} connections")


def test_a_seal_reaches_a_held_stream(live):
    """The relay's seal of a quiet channel repeats its last event's id as id and prev-id;
    Pushpin delivers it only with its id cache off (deploy/pushpin/pushpin.conf), else a
    stream that missed the last event would wait for its link's timeout."""
    from app.domain import ids
    from app.http.grip import user_channel

    me, user = live.user()
    reader = Reader(me)
    try:
        reader.wait_for_first(15)
        me.create_conversation("sealed")
        (event,) = reader.wait_events(1)
        item = {"channel": user_channel(ids.decode(ids.USER, user["id"])),
                "id": event["id"], "prev-id": event["id"],
                "formats": {"http-stream": {"content": ": seal probe\n\n"}}}
        assert httpx.post(live.pushpin.publish_url + "/publish/",
                          json={"items": [item]}).status_code == 200
        deadline = time.monotonic() + 15
        while {"comment": "seal probe"} not in reader.messages \
                and time.monotonic() < deadline:
            time.sleep(0.02)
        assert {"comment": "seal probe"} in reader.messages
    finally:
        me.close()


def test_a_forged_or_missing_grip_sig_never_gets_hold_instructions(live):
    import jwt

    me, _ = live.user()
    headers = {"Authorization": f"Bearer {me.token}"}
    forged = jwt.encode({"iss": "pushpin", "exp": int(time.time()) + 60},
                        "another-key-0123456789abcdef-01234567", algorithm="HS256")
    expired = jwt.encode({"iss": "pushpin", "exp": int(time.time()) - 60}, GRIP_KEY,
                         algorithm="HS256")
    unsigned = jwt.encode({"iss": "pushpin", "exp": int(time.time()) + 60}, None,
                          algorithm="none")
    valid = jwt.encode({"iss": "pushpin", "exp": int(time.time()) + 60}, GRIP_KEY,
                       algorithm="HS256")
    with httpx.Client(base_url=live.server.url, timeout=10) as http:
        for sig in (None, forged, expired, unsigned, "not a jwt"):
            extra = {} if sig is None else {"Grip-Sig": sig}
            with http.stream("GET", "/events/stream", headers={**headers, **extra}) as r:
                # Served directly (or 503 while the direct slots are taken): never held.
                assert r.status_code in (200, 503)
                assert not any(h.lower().startswith("grip-") for h in r.headers), sig
        answer = http.get("/events/stream", headers={**headers, "Grip-Sig": valid})
        assert answer.headers["Grip-Hold"] == "stream"
        link = answer.headers["Grip-Link"].split(">")[0][1:]
        assert http.get(link).status_code == 404  # a recovery link without Grip-Sig
        forged_link = link[:-4] + ("0000" if not link.endswith("0000") else "1111")
        assert http.get(forged_link, headers={"Grip-Sig": valid}).status_code == 404
    me.close()


def test_through_pushpin_another_users_conversation_is_404_and_a_deleted_users_stream_ends(
        live):
    me, user = live.user()
    other, _ = live.user()
    theirs = other.create_conversation("theirs")
    with pytest.raises(NotFoundError):
        next(me.stream_events(conversation=theirs["id"]))
    reader = Reader(me)
    reader.wait_for_first(15)
    assert reader.messages
    me.delete_user(user["id"])
    assert reader.ended.wait(20), "the deleted user's stream is still held"
    me.close()
    other.close()
