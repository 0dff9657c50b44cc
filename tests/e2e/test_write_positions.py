"""The users' last-write positions in Redis, against a real redis-server and PostgreSQL."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import psycopg
import pytest

from app.store.redis_link import RedisDown, RedisLink
from app.store.replication import primary_position
from app.store.write_positions import KEY_PREFIX, PositionsUnavailable, RedisWritePositions
from harness.services import free_port

LOG = logging.getLogger("test.write_positions")


@pytest.fixture
def primary(postgres) -> Iterator[psycopg.Connection]:
    with psycopg.connect(postgres.new_database(), autocommit=True) as conn:
        yield conn


def positions_on(url: str, pause_seconds: float = 60.0) -> RedisWritePositions:
    link = RedisLink(url, timeout=0.5, max_connections=4, logger=LOG,
                     pause_seconds=pause_seconds)
    return RedisWritePositions(link, ttl_seconds=30, hold_seconds=5, logger=LOG)


def test_a_write_records_its_position_even_while_this_workers_breaker_is_open(
        redis_server, primary):
    """One worker lost Redis for a moment (its breaker is open) while the others still reach
    it: the position of a write it serves must reach Redis all the same, or the others
    would route its user's reads by an older one."""
    blipped, other = positions_on(redis_server.url), positions_on(redis_server.url)
    try:
        blipped.link._failed(OSError("a moment's blip on this worker's connection"))
        with pytest.raises(RedisDown):
            blipped.link.execute("PING")  # the breaker holds other calls back
        blipped.record(4242, primary)
        stored = other.link.execute("GET", f"{KEY_PREFIX}4242")
        assert stored is not None and int(stored, 16) <= primary_position(primary)
        assert int(stored, 16) > 0
    finally:
        blipped.link.close()
        other.link.close()


def test_a_dead_redis_keeps_the_position_and_sends_reads_to_the_primary(primary):
    dead = positions_on(f"redis://127.0.0.1:{free_port()}/0", pause_seconds=0.1)
    try:
        dead.record(7, primary)  # the write has committed: no error for it
        assert not dead.trusted()
        with pytest.raises(PositionsUnavailable):
            dead.get(7)
    finally:
        dead.link.close()
