"""Read-your-writes under single faults, end to end: the suite's primary and hot standby
(replay paused, so any replica read of a new write is stale), redis-servers of the tests'
own, and SayPI instances started through run(). Each test counts stale reads: a line that
answered 201 and then reads as 404, or a conversation read without it.
"""

from __future__ import annotations

import signal
import threading
import time
from collections import Counter

import httpx
import pytest

from harness.services import RedisServer
from tests.conftest import eventually, metric_total, replicated_env, wait_for_replica_reads

pytestmark = pytest.mark.slow
FAST_MONITOR = {"REPLICA_CHECK_INTERVAL": "0.1"}


def instances(start_server, pg_cluster, count: int, redis_url: str | None, **settings):
    env = {**replicated_env(pg_cluster, redis_url or ""), **FAST_MONITOR, **settings}
    if redis_url is None:
        env.pop("REDIS_URL")
    primary = env.pop("DATABASE_URL")
    servers = [start_server(primary, **env) for _ in range(count)]
    for server in servers:
        wait_for_replica_reads(server)
    return servers


def users_with_conversations(server, count: int) -> list[tuple[dict, str]]:
    made = []
    for number in range(count):
        token = httpx.post(server.url + "/users", json={"name": f"u{number}"},
                           timeout=10).json()["token"]
        headers = {"Authorization": f"Bearer {token}"}
        convo = httpx.post(server.url + "/conversations", json={"heading": "h"},
                           headers=headers, timeout=10).json()
        made.append((headers, convo["id"]))
    return made


def post_lines(server, users) -> list[tuple[dict, str, str]]:
    """Each user posts a line, all at once; (headers, conversation, line) of each 201."""
    written: list[tuple[dict, str, str]] = []

    def post(headers, convo_id) -> None:
        answer = httpx.post(f"{server.url}/conversations/{convo_id}/lines",
                            json={"text": "moo"}, headers=headers, timeout=15)
        assert answer.status_code == 201, answer.text
        written.append((headers, convo_id, answer.json()["id"]))

    threads = [threading.Thread(target=post, args=user) for user in users]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(written) == len(users)
    return written


def stale_reads(server, written) -> int:
    """Reads of each written line: a 404 is stale. A 503 (a worker whose pool is still
    reconnecting after a database restart) is asked again, as a client would."""
    stale = 0
    for headers, convo_id, line_id in written:
        for _ in range(50):
            got = httpx.get(f"{server.url}/conversations/{convo_id}/lines/{line_id}",
                            headers=headers, timeout=15)
            if got.status_code != 503:
                break
            time.sleep(0.2)
        assert got.status_code in (200, 404), got.text
        stale += got.status_code == 404
    return stale


def settled_redis() -> RedisServer:
    """A redis-server of this test's own that has kept positions for long (no hold)."""
    redis = RedisServer().start()
    import redis as redis_py

    with redis_py.Redis(host="127.0.0.1", port=redis.port) as client:
        client.set("saypi:wpos:epoch", f"{time.time() - 3600:.3f}")
    return redis


def test_a_redis_stall_during_writes_costs_no_stale_read_on_another_instance(
        start_server, pg_cluster):
    """The writes' positions never reach Redis; the other instance, which saw no failure
    (no health check pings Redis meanwhile), must still not read them from the standby."""
    redis = settled_redis()
    try:
        first, second = instances(start_server, pg_cluster, 2, redis.url,
                                  REPLICA_MAX_LAG_SECONDS="30", REDIS_TIMEOUT="0.1",
                                  HEALTH_CACHE_SECONDS="60")
        users = users_with_conversations(first, 8)
        pg_cluster.wait_replayed()
        pg_cluster.pause_replay()
        written = []
        try:
            # A command sent on an open connection waits in the socket and runs once
            # Redis resumes; after a timeout the thread drops its connection, and its next
            # one times out in its handshake, before the command is sent: two stalls.
            for _ in range(2):
                redis.process.send_signal(signal.SIGSTOP)
                try:
                    written += post_lines(first, users)
                finally:
                    redis.process.send_signal(signal.SIGCONT)
            stale = stale_reads(second, written)
            failures = metric_total(second, "redis_errors_total")
        finally:
            pg_cluster.resume_replay()
        print(f"stale reads after a Redis stall: {stale} of {len(written)}")
        assert failures == 0  # the reading instance really saw no failure
        assert stale == 0
    finally:
        redis.stop()


def test_a_primary_crash_keeps_the_positions_of_writes_the_standby_lacks(
        start_server, pg_cluster):
    """Positions in PostgreSQL (no Redis): an immediate stop, crash recovery, then reads."""
    (server,) = instances(start_server, pg_cluster, 1, None, REPLICA_MAX_LAG_SECONDS="60")
    users = users_with_conversations(server, 12)
    pg_cluster.wait_replayed()
    pg_cluster.pause_replay()
    try:
        written = post_lines(server, users)
        pg_cluster.primary.stop("immediate")
        pg_cluster.primary.start()
        assert eventually(lambda: httpx.get(server.url + "/conversations", headers=users[0][0],
                                            timeout=5).status_code == 200, 30)
        stale = stale_reads(server, written)
    finally:
        pg_cluster.resume_replay()
    print(f"stale reads after a primary crash: {stale} of {len(written)}")
    assert stale == 0


def test_a_new_instance_keeps_a_long_lagging_standby_out_until_its_lag_is_known(
        start_server, pg_cluster):
    """The user's position has expired while the standby stood still; a new instance's
    first look at the primary cannot tell how far behind the standby is."""
    settings = {"REPLICA_MAX_LAG_SECONDS": "4"}
    (old,) = instances(start_server, pg_cluster, 1, None, **settings)
    ((headers, convo_id),) = users_with_conversations(old, 1)
    pg_cluster.wait_replayed()
    pg_cluster.pause_replay()
    try:
        line = httpx.post(f"{old.url}/conversations/{convo_id}/lines", json={"text": "moo"},
                          headers=headers, timeout=10).json()["id"]
        # 2 x max lag + 4 x check interval + 5: the position expires
        time.sleep(2 * 4 + 4 * 0.1 + 5 + 0.5)
        assert eventually(lambda: httpx.get(old.url + "/health/detailed", timeout=5).json()
                          ["checks"]["replicas"]["details"]["replica1"]["state"] == "lagging")
        env = {k: v for k, v in old.env.items() if k not in ("PORT", "DATABASE_URL")}
        new = start_server(old.env["DATABASE_URL"], **env)
        statuses = Counter(
            httpx.get(f"{new.url}/conversations/{convo_id}/lines/{line}", headers=headers,
                      timeout=10).status_code for _ in range(30))
        replica = httpx.get(new.url + "/health/detailed", timeout=5).json()[
            "checks"]["replicas"]["details"]["replica1"]
    finally:
        pg_cluster.resume_replay()
    print(f"stale reads through a new instance: {statuses[404]} of 30; replica {replica}")
    assert statuses == Counter({200: 30})
    assert replica["in_rotation"] is False


def test_a_hung_standby_leaves_rotation_and_reads_fall_back_to_the_primary(
        start_server, pg_cluster):
    """SIGSTOP on every process of the standby: its connections stay open and nothing
    answers, so a statement timeout never fires; reads must not wait for it."""
    (server,) = instances(start_server, pg_cluster, 1, None, REPLICA_READ_TIMEOUT="0.3",
                          HEALTH_DETAILS="true")
    users = users_with_conversations(server, 4)
    pg_cluster.wait_replayed()
    stop, statuses = threading.Event(), Counter()

    def load(index: int) -> None:
        with httpx.Client(base_url=server.url, timeout=30) as client:
            while not stop.is_set():
                headers, convo_id = users[index % len(users)]
                index += 1
                statuses[client.get(f"/conversations/{convo_id}",
                                    headers=headers).status_code] += 1

    threads = [threading.Thread(target=load, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    frozen = []
    try:
        assert eventually(lambda: metric_total(server, "db_reads_total", pool="replica1") > 20)
        frozen = pg_cluster.standby.freeze()
        # while it is frozen: fresh reads answer (a 10 s client timeout would fail them),
        # and health shows the standby out of rotation
        with httpx.Client(base_url=server.url, timeout=10) as client:
            for headers, convo_id in users:
                assert client.get(f"/conversations/{convo_id}",
                                  headers=headers).status_code == 200
        assert eventually(lambda: httpx.get(server.url + "/health/detailed", timeout=5)
                          .json()["checks"]["replicas"]["details"]["replica1"]["in_rotation"]
                          is False, 10)
        served = sum(statuses.values())
        assert eventually(lambda: sum(statuses.values()) > served + 50, 10)
        assert httpx.get(server.url + "/health/ready", timeout=5).status_code == 200
    finally:
        pg_cluster.standby.thaw(frozen)
        stop.set()
        for thread in threads:
            thread.join()
    assert set(statuses) == {200}, statuses
    assert eventually(lambda: httpx.get(server.url + "/health/detailed", timeout=5)
                      .json()["checks"]["replicas"]["details"]["replica1"]["in_rotation"], 30)


def test_a_restarted_redis_costs_no_failure_for_each_threads_dropped_connection(
        start_server, pg_cluster):
    """Redis restarts while no request needs it: every worker thread's connection is
    dead. Reopening it is no Redis failure, so it restarts no primary-only hold."""
    redis = settled_redis()
    try:
        # no health check pings Redis while it restarts: that would be a real failure
        (server,) = instances(start_server, pg_cluster, 1, redis.url, HEALTH_CACHE_SECONDS="60")
        users = users_with_conversations(server, 4)
        before = metric_total(server, "redis_errors_total")
        redis.restart()  # same port, empty
        with httpx.Client(base_url=server.url, timeout=10) as client:
            for _ in range(10):
                for headers, convo_id in users:
                    assert client.get(f"/conversations/{convo_id}",
                                      headers=headers).status_code == 200
        time.sleep(1.2)  # every worker folds its counts into the metrics each second
        assert metric_total(server, "redis_errors_total") == before
    finally:
        redis.stop()
