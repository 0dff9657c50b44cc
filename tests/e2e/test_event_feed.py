"""The relay's feeds: the whole event log read once, in each user's order, however writes
interleave, and never past a transaction that is still open; and `run.py relay` starts and
stops as a process does."""

from __future__ import annotations

import logging
import random
import signal
import sys
import threading
import time

import psycopg
import pytest

from app.client import Client
from app.store.db import Database, PoolSettings
from app.store.event_feed import EventFeed
from harness import ROOT
from harness.saypi import server_env
from harness.services import free_port
from tests.conftest import eventually

USERS = 4
WRITERS_PER_USER = 3
OPS_PER_WRITER = 25


def database(url: str) -> Database:
    db = Database(url, PoolSettings(min_size=1, max_size=4, timeout=10.0, max_waiting=0,
                                    max_idle=60.0, max_lifetime=600.0, connect_timeout=5,
                                    statement_timeout_ms=10_000, check_interval=30.0),
                  logging.getLogger("test.feed"), name="saypi-test-feed")
    db.open(wait_seconds=10)
    return db


def drain(feed: EventFeed, limit: int = 50) -> list[tuple[int, int, str]]:
    """Every event the feed hands on now, as (user, seq, type)."""
    seen = []
    while True:
        with feed.batch(limit) as batch:
            assert batch is not None
            for event in batch.events:
                seen.append((event.user_id, event.seq, event.type))
                batch.handed_on(event)
            if not batch.events:
                return seen


def write(client: Client, conversation: str, seed: int, failures: list) -> None:
    rng = random.Random(seed)
    try:
        for step in range(OPS_PER_WRITER):
            roll = rng.random()
            if roll < 0.5:
                client.create_line(conversation, text=f"w{seed} {step}")
            elif roll < 0.7:
                client.create_lines(conversation, [{"text": f"b{seed} {step} {i}"}
                                                   for i in range(3)])
            elif roll < 0.85:
                client.update_conversation(conversation, f"w{seed} {step}")
            else:
                line = client.create_line(conversation, text="gone")
                client.delete_line(conversation, line["id"])
    except Exception as exc:  # reported by the test, not lost on a thread
        failures.append(exc)


def test_a_feed_hands_on_every_event_once_in_each_users_order_while_users_write(
        postgres, tmp_path):
    from tests.conftest import Server

    url = postgres.new_database()
    server = Server(server_env(url, tmp_path, WEB_CONCURRENCY="2", THREADS="6",
                               DB_POOL_MAX="6"), tmp_path / "server.log").wait_ready()
    db = database(url)
    try:
        feed = EventFeed(db, "test")
        assert drain(feed) == []  # the feed starts at the watermark
        clients, conversations = [], []
        for number in range(USERS):
            user = Client(server.url).create_user(name=f"U{number}")
            client = Client(server.url, user["token"])
            clients.append(client)
            conversations.append(client.create_conversation(f"c{number}")["id"])
        failures: list[Exception] = []
        writers = [threading.Thread(target=write, args=(clients[u], conversations[u],
                                                        u * 100 + w, failures))
                   for u in range(USERS) for w in range(WRITERS_PER_USER)]
        for thread in writers:
            thread.start()
        seen: list[tuple[int, int, str]] = []
        while any(thread.is_alive() for thread in writers):
            seen += drain(feed, limit=7)  # small batches: many stop inside a batch's row
        for thread in writers:
            thread.join()
        assert not failures, failures
        seen += drain(feed)

        with psycopg.connect(url) as conn:
            log = conn.execute("SELECT user_id, seq, last_seq, type FROM events "
                               "ORDER BY user_id, seq").fetchall()
        expected: dict[int, list[tuple[int, str]]] = {}
        for user_id, first, last, event_type in log:
            expected.setdefault(user_id, []).extend(
                (seq, event_type) for seq in range(first, last + 1))
        got: dict[int, list[tuple[int, str]]] = {}
        for user_id, seq, event_type in seen:
            got.setdefault(user_id, []).append((seq, event_type))
        assert len(seen) == len(set(seen))  # no event twice
        assert got == expected  # every event, each user's in order
        assert len(seen) > USERS * WRITERS_PER_USER * OPS_PER_WRITER
    finally:
        db.close()
        server.stop()


def insert_event(conn: psycopg.Connection, user_id: int, seq: int, count: int = 1) -> None:
    conn.execute("INSERT INTO events (user_id, seq, last_seq, type, data) "
                 "VALUES (%s, %s, %s, 'user.updated', %s::jsonb)",
                 (user_id, seq, seq + count - 1, f"[{', '.join(['[0]'] * count)}]"))


def test_an_open_writing_transaction_holds_the_feed_back_until_it_ends(postgres):
    url = postgres.new_database()
    db = database(url)
    try:
        feed = EventFeed(db, "test")
        drain(feed)
        with psycopg.connect(url) as slow, psycopg.connect(url, autocommit=True) as quick:
            insert_event(slow, 9001, 1)  # its transaction stays open, its event unseen
            time.sleep(0.01)
            insert_event(quick, 9002, 1)  # written later, committed at once
            assert drain(feed) == []  # 9002's event waits: 9001's might still commit before it
            slow.commit()
        assert [(u, s) for u, s, _ in drain(feed)] == [(9001, 1), (9002, 1)]
    finally:
        db.close()


def test_a_rolled_back_writer_releases_the_feed_and_leaves_no_event(postgres):
    url = postgres.new_database()
    db = database(url)
    try:
        feed = EventFeed(db, "test")
        drain(feed)
        with psycopg.connect(url) as slow, psycopg.connect(url, autocommit=True) as quick:
            insert_event(slow, 9001, 1)
            insert_event(quick, 9002, 1)
            slow.rollback()
        assert [(u, s) for u, s, _ in drain(feed)] == [(9002, 1)]
    finally:
        db.close()


def test_a_batch_stopped_inside_a_row_of_events_resumes_inside_it(postgres):
    url = postgres.new_database()
    db = database(url)
    try:
        feed = EventFeed(db, "test")
        drain(feed)
        with psycopg.connect(url, autocommit=True) as conn:
            insert_event(conn, 9001, 1, count=5)
            insert_event(conn, 9001, 6)
        with feed.batch() as batch:
            assert batch is not None
            assert [e.seq for e in batch.events] == [1, 2, 3, 4, 5, 6]
            for event in batch.events[:2]:
                batch.handed_on(event)
        with feed.batch() as batch:  # an exception inside drops what it handed on
            assert batch is not None
            with pytest.raises(RuntimeError):
                with feed.batch():
                    pass  # a nested batch of the same feed in another transaction
                raise RuntimeError("the consumer failed")
        assert [s for _, s, _ in drain(feed)] == [3, 4, 5, 6]
    finally:
        db.close()


def test_one_relay_at_a_time_advances_a_feed(postgres):
    url = postgres.new_database()
    db = database(url)
    try:
        first, second = EventFeed(db, "shared"), EventFeed(db, "shared")
        other = EventFeed(db, "other")
        with first.batch() as held:
            assert held is not None
            with second.batch() as refused:
                assert refused is None  # the first holds it until its transaction ends
            with other.batch() as independent:
                assert independent is not None
        with second.batch() as now_free:
            assert now_free is not None
    finally:
        db.close()


def test_the_relay_process_serves_health_and_metrics_and_exits_cleanly_on_sigterm(
        postgres, tmp_path):
    import subprocess

    import httpx

    port = free_port()
    env = server_env(postgres.new_database(), tmp_path, RELAY_PORT=str(port))
    base = f"http://127.0.0.1:{port}"
    log_path = tmp_path / "relay.log"
    with open(log_path, "w") as log:
        relay = subprocess.Popen([sys.executable, str(ROOT / "run.py"), "relay"], cwd=ROOT,
                                 env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            assert eventually(lambda: "relay running" in log_path.read_text(), 30), \
                log_path.read_text()
            assert httpx.get(base + "/health/live").json() == {"status": "ok"}
            ready = httpx.get(base + "/health/ready")
            assert ready.status_code == 200 and ready.json()["status"] == "healthy"
            detailed = httpx.get(base + "/health/detailed").json()
            assert set(detailed["checks"]) == {"database", "migrations", "tasks"}
            metrics = httpx.get(base + "/metrics")
            assert metrics.status_code == 200 and "text/plain" in metrics.headers["content-type"]
            assert httpx.get(base + "/nowhere").status_code == 404
            relay.send_signal(signal.SIGTERM)
            assert relay.wait(30) == 0, log_path.read_text()
        finally:
            if relay.poll() is None:
                relay.kill()
                relay.wait()
    assert "relay stopped" in log_path.read_text()


def test_serve_with_relay_beside_runs_a_relay_and_stops_it_with_the_server(postgres, tmp_path):
    """`make run` (RELAY_BESIDE): one command serves the API and runs a relay on the same
    database; stopping the server stops the relay too."""
    import os
    import re

    import httpx

    from harness.saypi import Server

    relay_port = free_port()
    server = Server(server_env(postgres.new_database(), tmp_path, RELAY_BESIDE="true",
                               RELAY_PORT=str(relay_port)), tmp_path / "server.log")
    relay_pid = None
    try:
        server.wait_ready()
        base = f"http://127.0.0.1:{relay_port}"

        def relay_ready() -> bool:
            try:
                return httpx.get(base + "/health/ready", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        assert eventually(relay_ready, 30), server.logs()
        found = re.search(r"started beside the server: relay \(pid (\d+)\)", server.logs())
        assert found, server.logs()
        relay_pid = int(found.group(1))
        assert server.stop() == 0
        assert "relay stopped" in server.logs()

        def relay_gone() -> bool:
            try:
                os.kill(relay_pid, 0)
            except ProcessLookupError:
                return True
            return False

        assert eventually(relay_gone, 5)
    finally:
        server.stop()
        if relay_pid is not None:
            try:
                os.kill(relay_pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def test_news_says_whether_a_batch_may_find_events(postgres):
    """The one-statement check an idle relay polls with: true while events follow the feed's
    position (inside a row of several too) or the feed has not started, false once read or
    while the position moved less than the gap asked for ago."""
    url = postgres.new_database()
    db = database(url)
    try:
        feed = EventFeed(db, "test")
        assert feed.has_news()  # not started: the first batch starts it
        drain(feed)
        assert not feed.has_news()
        with psycopg.connect(url, autocommit=True) as conn:
            insert_event(conn, 9001, 1, count=3)
        assert feed.has_news()
        with feed.batch() as batch:
            assert batch is not None and [e.seq for e in batch.events] == [1, 2, 3]
            batch.handed_on(batch.events[0])
        assert feed.has_news()  # two events of the row are still to come
        assert not feed.has_news(gap_seconds=60)  # but the position moved just now
        assert [s for _, s, _ in drain(feed)] == [2, 3]
        assert not feed.has_news()
    finally:
        db.close()
