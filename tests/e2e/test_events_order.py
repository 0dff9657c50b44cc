"""The event order under concurrency: a reader that polls with `starting_after=<last seen>`
while one user writes through many workers of two instances sees every event exactly once,
in the final order: no event ever appears behind one it has already seen."""

from __future__ import annotations

import itertools
import random
import threading

import pytest

from app.client import Client, NotFoundError
from harness.saypi import server_env

WRITERS = 8
OPS_PER_WRITER = 40


@pytest.fixture
def two_instances(postgres, tmp_path):
    from tests.conftest import Server

    url = postgres.new_database()
    servers = [Server(server_env(url, tmp_path, WEB_CONCURRENCY="2", THREADS="8",
                                 DB_POOL_MAX="8"), tmp_path / f"server-{i}.log")
               for i in range(2)]
    try:
        yield [server.wait_ready() for server in servers]
    finally:
        for server in servers:
            server.stop()


def write(client: Client, conversations: list[str], seed: int, failures: list) -> None:
    """Create lines, rename conversations and delete the lines this writer made."""
    rng = random.Random(seed)
    mine: list[tuple[str, str]] = []
    try:
        for step in range(OPS_PER_WRITER):
            convo = rng.choice(conversations)
            roll = rng.random()
            if roll < 0.55 or not mine:
                line = client.create_line(convo, text=f"w{seed} {step}")
                mine.append((convo, line["id"]))
            elif roll < 0.8:
                client.update_conversation(convo, f"w{seed} {step}")
            else:
                convo, line_id = mine.pop(rng.randrange(len(mine)))
                client.delete_line(convo, line_id)
    except Exception as exc:  # reported by the test, not lost on a thread
        failures.append(exc)


def test_a_polling_reader_sees_every_event_once_in_commit_order(two_instances):
    first = Client(two_instances[0].url)
    user = first.create_user(name="Busy")
    clients = [Client(server.url, user["token"]) for server in two_instances]
    conversations = [clients[0].create_conversation(f"c{i}")["id"] for i in range(3)]

    failures: list[Exception] = []
    writers = [threading.Thread(target=write, args=(clients[i % 2], conversations, i, failures))
               for i in range(WRITERS)]
    seen: list[str] = []
    for thread in writers:
        thread.start()
    done = False
    for turn in itertools.count():
        done = not any(thread.is_alive() for thread in writers)
        reader = clients[turn % 2]  # either instance, either worker
        page = reader.list_events(limit=100, starting_after=seen[-1] if seen else None)
        seen += [event["id"] for event in page.data]
        if done and not page.has_more and not page.data:
            break  # the writers had finished before this empty page was read
    for thread in writers:
        thread.join()
    assert not failures, failures

    final = [event["id"] for event in clients[1].iter_events()]
    assert len(final) == 3 + WRITERS * OPS_PER_WRITER
    assert len(set(seen)) == len(seen), "an event was seen twice"
    missed = sorted(set(final) - set(seen))
    assert not missed, f"{len(missed)} events committed behind one the reader had seen"
    assert seen == final
    for client in clients:
        try:
            client.get_event(final[-1])
        except NotFoundError:  # pragma: no cover - read-your-writes on either instance
            pytest.fail("the last event is not found")
