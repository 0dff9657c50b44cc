"""Events on every deployment (one PostgreSQL; a streaming replica with Redis; PgBouncer in
transaction mode): a writer reads its events at once, and while the replica's replay is
paused, through another instance."""

from __future__ import annotations

import pytest

from app.client import Client
from tests.conftest import eventually, metric_total
from tests.e2e.test_replicas import start_replicated

LINE = {"animal": "default", "mood": "tired", "text": "Moo."}


@pytest.fixture(scope="module")
def shared_server(deployed_server):
    """This module's SayPI: each deployment in turn."""
    return deployed_server


def test_every_write_is_in_the_next_events_page(shared_server):
    client = Client(shared_server.url)
    client = client.with_token(client.create_user(name="Writer")["token"])
    convo = client.create_conversation("Read my writes")
    last = client.list_events().data[-1]["id"]
    for step in range(20):
        if step % 3 == 2:
            client.update_conversation(convo["id"], f"step {step}")
            expected = ["conversation.updated"]
        elif step % 3 == 1:
            client.create_lines(convo["id"], [LINE, LINE])
            expected = ["line.created", "line.created"]
        else:
            client.create_line(convo["id"], text=f"step {step}")
            expected = ["line.created"]
        page = client.list_events(starting_after=last)
        assert [e["type"] for e in page.data] == expected, step
        last = page.data[-1]["id"]
        assert client.get_event(last)["id"] == last


@pytest.mark.slow
def test_events_are_read_from_the_primary_while_the_replica_lags(
        start_server, pg_cluster, redis_server):
    first, second = start_replicated(start_server, pg_cluster, redis_server.url, count=2,
                                     REPLICA_MAX_LAG_SECONDS="15")
    writer = Client(first.url)
    writer = writer.with_token(writer.create_user(name="Writer")["token"])
    convo = writer.create_conversation("Lagging")
    pg_cluster.wait_replayed()
    pg_cluster.pause_replay()
    try:
        on_second = Client(second.url, writer.token)
        last = on_second.list_events().data[-1]["id"]
        fallbacks = sum(metric_total(second, "db_replica_fallbacks_total", reason=reason)
                        for reason in ("behind", "no_replica"))
        for step in range(5):
            line = writer.create_line(convo["id"], text=f"while paused {step}")
            page = on_second.list_events(starting_after=last)
            assert [e["data"]["object"] for e in page.data] == [line]
            last = page.data[0]["id"]
        assert len(list(on_second.iter_events())) == 6

        def sent_to_the_primary() -> bool:  # the replica lacked the writer's writes
            return sum(metric_total(second, "db_replica_fallbacks_total", reason=reason)
                       for reason in ("behind", "no_replica")) >= fallbacks + 5
        assert eventually(sent_to_the_primary, 10)
    finally:
        pg_cluster.resume_replay()
