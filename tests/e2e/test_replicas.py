"""Reads on a real streaming replica, hot state in a real Redis: read-your-writes and faults.

The suite's own primary and hot standby (harness/services.py PgCluster) and
redis-server; SayPI started through run() with DATABASE_REPLICA_URLS and
REDIS_URL. Replay on the standby is paused to make it lag on purpose.
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
# Rate limits on, every request decided in Redis, at a rate no test exhausts.
LIMITS_ON = {"RATE_LIMIT_USER_PER_MINUTE": "600000", "RATE_LIMIT_USER_BURST": "100000",
             "RATE_LIMIT_IP_PER_MINUTE": "600000", "RATE_LIMIT_IP_BURST": "100000"}


def start_replicated(start_server, pg_cluster, redis_url: str, count: int = 1,
                     wait_for_replica: bool = True, **settings):
    """`count` instances on one fresh database of the cluster; with `wait_for_replica`,
    once each serves reads from the standby (its probe needs a few requests: a test
    whose rate limit would refuse them does not wait)."""
    env = {**replicated_env(pg_cluster, redis_url), **settings}
    primary = env.pop("DATABASE_URL")
    servers = [start_server(primary, **env) for _ in range(count)]
    if wait_for_replica:
        for server in servers:
            wait_for_replica_reads(server)
    return servers


def new_user(server, name: str) -> dict[str, str]:
    user = httpx.post(server.url + "/users", json={"name": name}, timeout=5).json()
    return {"Authorization": f"Bearer {user['token']}"}


def user_with_conversation(server, name: str) -> tuple[dict[str, str], dict]:
    """A new user's headers and a conversation of theirs."""
    headers = new_user(server, name)
    convo = httpx.post(server.url + "/conversations", json={"heading": f"{name}'s"},
                       headers=headers, timeout=5).json()
    return headers, convo


def replica_reads(servers) -> float:
    return sum(metric_total(s, "db_reads_total", pool="replica1") for s in servers)


def replica_state(server) -> dict:
    body = httpx.get(server.url + "/health/detailed", timeout=5).json()
    return body["checks"]["replicas"]["details"]["replica1"]


def test_a_writer_reads_its_writes_while_replay_is_paused_and_others_read_the_replica(
        start_server, pg_cluster, redis_server):
    first, second = start_replicated(start_server, pg_cluster, redis_server.url, count=2,
                                     REPLICA_MAX_LAG_SECONDS="15")
    writer, reader = new_user(first, "writer"), new_user(second, "reader")
    convo = httpx.post(first.url + "/conversations", json={"heading": "lagging"},
                       headers=writer, timeout=5).json()
    theirs = httpx.post(second.url + "/conversations", json={"heading": "theirs"},
                        headers=reader, timeout=5).json()
    # both users' writes so far (and their recorded positions) reach the standby first
    pg_cluster.wait_replayed()
    time.sleep(0.6)  # and every worker's replica monitor has seen it
    pg_cluster.pause_replay()
    try:
        line = httpx.post(f"{first.url}/conversations/{convo['id']}/lines",
                          json={"text": "written while the replica stands still"},
                          headers=writer, timeout=5)
        assert line.status_code == 201
        line_id = line.json()["id"]
        # the standby really lacks it
        assert pg_cluster.standby.execute("SELECT count(*) FROM lines",
                                          dbname=_dbname(first))[0][0] == 0
        for attempt in range(50):
            server = (first, second)[attempt % 2]
            got = httpx.get(f"{server.url}/conversations/{convo['id']}", headers=writer,
                            timeout=5)
            assert got.status_code == 200, got.text
            assert [ln["id"] for ln in got.json()["lines"]] == [line_id], attempt
            listed = httpx.get(f"{server.url}/conversations/{convo['id']}/lines",
                               headers=writer, timeout=5)
            assert [ln["id"] for ln in listed.json()["data"]] == [line_id], attempt

        # the other user, with no write since the replica last replayed, reads the replica
        before = replica_reads([first, second])
        for attempt in range(20):
            server = (first, second)[attempt % 2]
            got = httpx.get(f"{server.url}/conversations/{theirs['id']}", headers=reader,
                            timeout=5)
            assert got.status_code == 200
        assert eventually(lambda: replica_reads([first, second]) >= before + 20, 10)
        # the writer's 100 reads were sent to the primary (each worker folds its counts
        # into the metrics every second): the replica is behind their position, or, on a
        # machine so busy that a worker's monitor sampled the primary too long ago, not
        # trusted at all
        assert eventually(lambda: sum(
            metric_total(s, "db_replica_fallbacks_total", reason=reason)
            for s in (first, second) for reason in ("behind", "unsampled")) >= 100, 10)
    finally:
        pg_cluster.resume_replay()
    # once the standby has replayed the line, the writer's reads go to it too
    assert eventually(lambda: pg_cluster.standby.execute(
        "SELECT count(*) FROM lines", dbname=_dbname(first))[0][0] == 1)
    before = replica_reads([first])

    def read_by_the_replica() -> bool:
        httpx.get(f"{first.url}/conversations/{convo['id']}", headers=writer, timeout=5)
        return replica_reads([first]) > before

    assert eventually(read_by_the_replica, 10, every=0.2)


def _dbname(server) -> str:
    return server.env["DATABASE_URL"].rsplit("/", 1)[1]


def test_a_lagging_replica_leaves_rotation_and_returns_readiness_untouched(
        start_server, pg_cluster, redis_server):
    (server,) = start_replicated(start_server, pg_cluster, redis_server.url,
                                 REPLICA_MAX_LAG_SECONDS="1", HEALTH_DETAILS="false")
    headers = new_user(server, "lag")
    # each worker has its own monitor: the one answering may not have checked yet
    assert eventually(lambda: replica_state(server)["in_rotation"] is True, 15)
    pg_cluster.pause_replay()
    try:
        httpx.post(server.url + "/conversations", json={"heading": "moves the primary on"},
                   headers=headers, timeout=5)
        # one answer holds all three: two answers may come from two workers' monitors
        states: list[dict] = []
        assert eventually(lambda: states.append(replica_state(server)) or (
            states[-1]["state"] == "lagging" and states[-1]["in_rotation"] is False
            and states[-1]["lag_seconds"] > 1), 15), states[-3:]
        assert "host" not in states[-1]  # hostnames only with HEALTH_DETAILS
        assert httpx.get(server.url + "/health/ready", timeout=5).status_code == 200
        assert httpx.get(server.url + "/conversations", headers=headers,
                         timeout=5).status_code == 200
        assert eventually(lambda: metric_total(server, "db_replica_in_rotation",
                                               replica="replica1") == 0, 15)
        # the reported lag keeps growing past the window of samples the monitor keeps
        # (1 + 2 x 0.25 + 1 s here)
        assert eventually(lambda: replica_state(server)["lag_seconds"] > 5, 15)
    finally:
        pg_cluster.resume_replay()
    assert eventually(lambda: replica_state(server)["in_rotation"] is True, 15)


def run_load(server, users, stop: threading.Event, statuses: Counter, slowest: list) -> None:
    """Reads by users with no recent writes, round robin, until stopped."""
    index = 0
    with httpx.Client(base_url=server.url, timeout=10) as client:
        while not stop.is_set():
            headers, convo_id = users[index % len(users)]
            index += 1
            started = time.monotonic()
            try:
                status = client.get(f"/conversations/{convo_id}", headers=headers).status_code
            except httpx.HTTPError as exc:
                status = type(exc).__name__
            slowest.append(time.monotonic() - started)
            statuses[status] += 1


def test_replica_stopped_under_load_costs_no_error_and_returns_to_rotation(
        start_server, pg_cluster, redis_server):
    (server,) = start_replicated(start_server, pg_cluster, redis_server.url,
                                 HEALTH_DETAILS="true")
    users = []
    for number in range(4):
        headers, convo = user_with_conversation(server, f"load{number}")
        users.append((headers, convo["id"]))
    pg_cluster.wait_replayed()  # so the reads go there
    stop, statuses, latencies = threading.Event(), Counter(), []
    threads = [threading.Thread(target=run_load, args=(server, users, stop, statuses, latencies))
               for _ in range(4)]
    for thread in threads:
        thread.start()
    try:
        time.sleep(1.0)
        served_before = replica_reads([server])
        pg_cluster.standby.stop("immediate")
        assert eventually(lambda: replica_state(server)["state"] == "down", 10)
        time.sleep(2.0)
        pg_cluster.standby.start()
        assert eventually(lambda: replica_state(server)["in_rotation"] is True, 30)
        back = replica_reads([server])
        assert eventually(lambda: replica_reads([server]) > back + 20, 10)
    finally:
        stop.set()
        for thread in threads:
            thread.join()
        if not pg_cluster.standby.running():
            pg_cluster.standby.start()
    assert served_before > 0
    assert set(statuses) == {200}, statuses
    assert sum(statuses.values()) > 100
    fallbacks = sum(metric_total(server, "db_replica_fallbacks_total", reason=reason)
                    for reason in ("no_replica", "replica_failed"))
    assert fallbacks > 0


def test_redis_stopped_under_load_fails_open_and_never_serves_a_stale_read(
        start_server, pg_cluster):
    redis = RedisServer().start()
    try:
        (server,) = start_replicated(
            start_server, pg_cluster, redis.url, REPLICA_MAX_LAG_SECONDS="15", **LIMITS_ON)
        headers, convo = user_with_conversation(server, "writer")
        pg_cluster.pause_replay()  # from here on, a read from the replica would be stale
        statuses: Counter = Counter()
        stale: list[str] = []
        written: list[str] = []

        def write_and_read(rounds: int) -> None:
            with httpx.Client(base_url=server.url, timeout=10) as client:
                for _ in range(rounds):
                    made = client.post(f"/conversations/{convo['id']}/lines",
                                       json={"text": "moo"}, headers=headers)
                    statuses[made.status_code] += 1
                    if made.status_code != 201:
                        continue
                    written.append(made.json()["id"])
                    got = client.get(f"/conversations/{convo['id']}", headers=headers)
                    statuses[got.status_code] += 1
                    if got.status_code == 200 and made.json()["id"] not in \
                            [ln["id"] for ln in got.json()["lines"]]:
                        stale.append(made.json()["id"])

        write_and_read(10)
        redis.stop()
        write_and_read(30)
        assert httpx.get(server.url + "/health/ready", timeout=5).status_code == 200
        detailed = httpx.get(server.url + "/health/detailed", timeout=5).json()
        assert detailed["checks"]["redis"]["status"] == "degraded"
        redis.start()  # empty: every position recorded before is gone
        write_and_read(30)
        assert not stale
        assert set(statuses) == {200, 201}, statuses
        assert metric_total(server, "rate_limit_store_errors_total") > 0
        assert metric_total(server, "redis_errors_total") > 0
        final = httpx.get(f"{server.url}/conversations/{convo['id']}", headers=headers,
                          timeout=5).json()
        assert sorted(ln["id"] for ln in final["lines"]) == sorted(written)
    finally:
        pg_cluster.resume_replay()
        redis.stop()


def test_rate_limits_in_redis_are_shared_by_two_instances(start_server, pg_cluster,
                                                          redis_server):
    first, second = start_replicated(start_server, pg_cluster, redis_server.url, count=2,
                                     wait_for_replica=False, RATE_LIMIT_USER_PER_MINUTE="1",
                                     RATE_LIMIT_USER_BURST="5")
    headers = new_user(first, "limited")
    answers = [httpx.get((first, second)[i % 2].url + "/conversations", headers=headers,
                         timeout=5) for i in range(8)]
    assert [a.status_code for a in answers] == [200] * 5 + [429] * 3
    assert int(answers[5].headers["Retry-After"]) > 0
    assert answers[0].headers["RateLimit-Policy"] == '"user";q=5;w=300'


@pytest.mark.parametrize("lease_max", ["64", "1"])
def test_leases_spare_redis_calls_and_two_instances_still_admit_exactly_the_burst(
        start_server, pg_cluster, lease_max):
    """A busy user's requests take admissions a lease at a time (RATE_LIMIT_LEASE_MAX=1: a
    Redis call each); across two instances on fresh connections exactly the burst passes."""
    server = RedisServer().start()  # its own: the script calls are counted
    try:
        first, second = start_replicated(start_server, pg_cluster, server.url, count=2,
                                         RATE_LIMIT_USER_PER_MINUTE="1",
                                         RATE_LIMIT_USER_BURST="128",
                                         RATE_LIMIT_LEASE_MAX=lease_max)
        headers = new_user(first, "busy")
        before = server.script_calls()
        with httpx.Client(timeout=5) as keep_alive:  # one connection: one worker of `first`
            statuses = [keep_alive.get(first.url + "/conversations", headers=headers).status_code
                        for _ in range(60)]
        calls = server.script_calls() - before
        assert statuses == [200] * 60
        if lease_max == "1":
            assert calls == 60
        else:  # leases of 1, 4, then 16 (an eighth of the burst); sweeps give some back
            assert calls <= 15, calls

        def burst(count: int) -> list[int]:
            return [httpx.get((first, second)[i % 2].url + "/conversations", headers=headers,
                              timeout=5).status_code for i in range(count)]

        statuses += burst(120)
        time.sleep(3)  # every lease has ended and given back what it did not use
        statuses += burst(40)
        # T is a minute: nothing replenished, and exactly the burst passed in all
        assert statuses.count(200) == 128, statuses
    finally:
        server.stop()


def test_a_redis_that_stops_answering_costs_requests_one_timeout_and_no_error(
        start_server, pg_cluster):
    """SIGSTOP: connections stay open and nothing answers (a hung Redis, not a dead one)."""
    redis = RedisServer().start()
    try:
        (server,) = start_replicated(
            start_server, pg_cluster, redis.url, REDIS_TIMEOUT="0.1", **LIMITS_ON)
        headers, convo = user_with_conversation(server, "patient")
        redis.process.send_signal(signal.SIGSTOP)
        try:
            statuses = Counter()
            with httpx.Client(base_url=server.url, timeout=10) as client:
                for number in range(40):
                    if number % 4 == 0:
                        made = client.post(f"/conversations/{convo['id']}/lines",
                                           json={"text": f"while hung {number}"},
                                           headers=headers)
                        statuses[made.status_code] += 1
                        got = client.get(f"/conversations/{convo['id']}", headers=headers)
                        assert made.json()["id"] in [ln["id"] for ln in got.json()["lines"]]
                    else:
                        got = client.get(f"/conversations/{convo['id']}", headers=headers)
                    statuses[got.status_code] += 1
            assert set(statuses) <= {200, 201}, statuses
            assert metric_total(server, "rate_limit_store_errors_total") > 0
        finally:
            redis.process.send_signal(signal.SIGCONT)
        assert eventually(lambda: httpx.get(server.url + "/health/detailed", timeout=5)
                          .json()["checks"]["redis"]["status"] == "healthy", 15)
    finally:
        redis.stop()
