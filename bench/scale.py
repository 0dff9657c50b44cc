"""`python -m bench scale`: GET /conversations/{id} with the production rate limits on,
the rate-limit state in PostgreSQL or in Redis, and reads on a streaming replica.

It needs what the issue of scaling past one database added, so it brings its
own: a PostgreSQL primary with a hot standby (PostgreSQL's own tools, as the
test suite makes them: harness/services.py) and a redis-server, on free
loopback ports, stopped at the end. The same seeded data go to the primary
and reach the standby by streaming; the reference app reads the primary.

Rows, interleaved run by run:

- reference: bare Flask + pool, the same query (no rate limiting at all);
- SayPI, rate limits on, state in PostgreSQL (leased like Redis: a busy user's read is one
  statement, the limit's statement only when a lease is taken or given back);
- SayPI, rate limits on, state in Redis, as configured by default: a busy
  user's admissions are leased a few at a time (app/http/ratelimit_leases.py),
  so most requests make no Redis call;
- the same with RATE_LIMIT_LEASE_MAX=1: exact GCRA, one Redis script per
  request;
- SayPI, rate limits on, Redis, and a replica: the reads of users with no
  recent write go to the standby, so the primary does no work for them.

The limits are the production policies with a rate no run can exhaust, so
every request pays for its decision and none is refused. CPU per request is
split by process group: SayPI's workers, the primary's backends, the
standby's backends, redis-server. Round trips per request to the primary
are counted by the wire proxy (bench/pgcount.py) in front of it; Redis calls
per request (script calls, from Redis's own command statistics) during the
timed runs.
"""

from __future__ import annotations

import os
import statistics
import time
from pathlib import Path

import psycopg

from app.store.db import migrate
from bench.pgcount import RoundTripCounter
from bench.scenarios import build_request_files, read_requests, replay
from bench.seed import seed
from bench.servers import Server
from bench.session import summarize
from bench.settings import UNBOUNDED_LIMITS
from bench.wrk import WrkResult
from harness.services import PgCluster, RedisServer, wait_until

ROWS = (
    ("scale_ref", "reference: bare Flask + pool, same query, no rate limiting"),
    ("scale_pg", "GET /conversations/{id}, rate limits on, state in PostgreSQL"),
    ("scale_redis", "GET /conversations/{id}, rate limits on, state in Redis"),
    ("scale_redis_exact", "the same, RATE_LIMIT_LEASE_MAX=1: one Redis call per request"),
    ("scale_replica", "GET /conversations/{id}, rate limits on, Redis, reads on a replica"),
)
GROUPS = ("app", "primary", "replica", "redis")


def _postmaster(pgdata: Path) -> int | None:
    try:
        return int((pgdata / "postmaster.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _replica_reads(server: Server) -> float:
    _status, body = server.get("/metrics")
    total = 0.0
    for line in body.decode().splitlines():
        if line.startswith('db_reads_total{pool="replica1"}'):
            total += float(line.rsplit(" ", 1)[1])
    return total


def _wait_for_replica_reads(server: Server, requests) -> None:
    """A fresh Redis holds no write positions: reads stay on the primary for a while."""

    def served_by_replica() -> bool:
        replay(server.port, requests, 20)
        return _replica_reads(server) > 0

    wait_until(served_by_replica, 60, "reads on the replica")


def scale(bench) -> dict:
    """Run the rows on a bench whose database, data and wrk are ready; the results."""
    s = bench.settings
    cluster = PgCluster().start()
    redis = RedisServer().start()
    try:
        primary, standby = cluster.create_database("saypi_bench_scale")
        migrate(primary, bench.logger)
        bench.say(f"scale: seeding the primary ({s.users} users, {s.conversations} "
                  f"conversations x {s.lines} lines)")
        seeded = seed(primary, s.users, s.conversations, s.lines, s.cap_lines, s.phrases,
                      bench.secret)
        with psycopg.connect(primary, autocommit=True) as conn:
            conn.execute("VACUUM ANALYZE")
        cluster.wait_replayed(120)
        work = bench.work / "scale"
        work.mkdir(exist_ok=True)
        files = build_request_files(work, seeded)
        get_file = files["get"]

        row_servers = row_settings(redis.url, standby)
        servers = {key: bench.start(kind, dsn=primary, extra=extra)
                   for key, (kind, extra) in row_servers.items()}
        requests = read_requests(get_file)
        for key, server in servers.items():
            statuses = replay(server.port, requests, 20)
            if set(statuses) != {200}:
                raise RuntimeError(f"scale: {key} answered {dict(statuses)}:\n"
                                   f"{server.log_tail()}")
        replica_server = servers["scale_replica"]
        # a fresh Redis holds no write positions: reads stay on the primary for a while
        _wait_for_replica_reads(replica_server, requests)

        bench.files["scale_get"] = get_file
        bench.extra_roots[redis.process.pid] = "redis"
        for node, group in ((cluster.primary, "primary"), (cluster.standby, "replica")):
            pid = _postmaster(node.pgdata)
            if pid:
                bench.extra_roots[pid] = group

        bench.say("scale: warm-ups")
        for server in servers.values():
            bench.measure(server, "scale_get", s.warmup_seconds)
        collected: dict[str, list[WrkResult]] = {key: [] for key in servers}
        redis_calls: dict[str, list[float]] = {key: [] for key in servers}
        for run in range(s.runs):
            for key, server in servers.items():
                calls_before = redis.script_calls()
                result = bench.measure(server, "scale_get", s.seconds)
                calls = (redis.script_calls() - calls_before) / max(1, result.requests)
                collected[key].append(result)
                redis_calls[key].append(calls)
                bench.say(f"  {key:<17} run {run + 1}/{s.runs}: {result.rps:8.1f} req/s  "
                          f"p99 {result.latency_ms['p99']:6.2f} ms  errors {result.failed}  "
                          f"redis calls/req {calls:.3f}")
        rows = {}
        cpus = os.cpu_count() or 1
        for key, title in ROWS:
            runs = collected[key]
            summary = summarize(runs, cpus)
            rows[key] = {"title": title,
                         **{k: summary[k] for k in ("rps", "p50_ms", "p99_ms", "errors",
                                                    "foreign_cpu_pct")},
                         "cpu_us_per_request": _cpu_per_request(runs),
                         "redis_calls": round(statistics.median(redis_calls[key]), 3)}
        for server in servers.values():
            bench.stop(server)

        bench.say("scale: counting round trips to the primary")
        counts = _round_trips(bench, primary, row_servers, requests)
        for key, value in counts.items():
            rows[key]["primary_round_trips"] = value
        ref_rps = rows["scale_ref"]["rps"]
        for row in rows.values():
            row["x_ref"] = round(row["rps"] / ref_rps, 3) if ref_rps else None
        return {"rows": rows, "postgres": cluster.primary.execute("SHOW server_version")[0][0],
                "where": "a primary and a hot standby made with the system's PostgreSQL "
                         "tools (or pgserver's), and a redis-server, on loopback"}
    finally:
        bench.extra_roots.clear()
        redis.stop()
        cluster.close()


def _cpu_per_request(runs: list[WrkResult]) -> dict[str, float | None]:
    out: dict[str, float | None] = {}
    for group in GROUPS:
        values = [1e6 * (r.cpu_seconds.get(f"{group}_user", 0.0)
                         + r.cpu_seconds.get(f"{group}_system", 0.0)) / r.requests
                  for r in runs if r.requests]
        out[group] = round(statistics.median(values), 1) if values else None
    return out


def row_settings(redis_url: str, standby: str) -> dict[str, tuple[str, dict[str, str]]]:
    """Each row's server: "read" (the reference app) or "saypi", and its settings."""
    redis_limits = {**UNBOUNDED_LIMITS, "REDIS_URL": redis_url}
    return {
        "scale_ref": ("read", {}),
        "scale_pg": ("saypi", UNBOUNDED_LIMITS),
        "scale_redis": ("saypi", redis_limits),
        "scale_redis_exact": ("saypi", {**redis_limits, "RATE_LIMIT_LEASE_MAX": "1"}),
        "scale_replica": ("saypi", {**redis_limits, "DATABASE_REPLICA_URLS": standby}),
    }


def _round_trips(bench, primary: str, rows: dict[str, tuple[str, dict[str, str]]],
                 requests) -> dict:
    """Statements per request the primary receives (second pass of N GETs, one worker)."""
    counter = RoundTripCounter(primary)
    n = bench.settings.count_requests
    # One worker, and no background statements (pool checks, the health refresher),
    # so every statement counted is a request's; the replica monitor stays on (it
    # routes the reads) and its few statements per second show in that row.
    one_worker = {"WEB_CONCURRENCY": "1", "DB_POOL_CHECK_INTERVAL": "3600",
                  "HEALTH_CACHE_SECONDS": "3600"}
    out = {}
    try:
        for key, (kind, extra) in rows.items():
            server = bench.start(kind, dsn=counter.dsn, extra={**one_worker, **extra})
            if key == "scale_replica":
                _wait_for_replica_reads(server, requests)
            replay(server.port, requests, n)  # warm: statements prepared, caches full
            time.sleep(0.3)
            before = counter.snapshot()
            replay(server.port, requests, n)
            time.sleep(0.3)
            out[key] = round(sum((counter.snapshot() - before).values()) / n, 3)
            bench.stop(server)
    finally:
        counter.close()
    return out
