"""`python -m bench peer`: SayPI's GET /conversations/{id} beside the async peer.

Rows, interleaved run by run, all answering the same bytes for the same request:

- peer: FastAPI + uvicorn (uvloop, httptools), psycopg AsyncConnectionPool (bench/peer_app.py);
- bare Flask + gunicorn gthread + psycopg pool (bench/reference_apps.py read);
- SayPI in production mode with rate limits off, on with the state in Redis (leases),
  and on with the state in PostgreSQL (the default when REDIS_URL is unset).

Before anything is timed every row's body is compared byte for byte with the peer's
for the same requests; one difference and the command stops without a table. Each
figure is the median of the runs; app CPU per request is the servers' process tree
(every worker) over the requests wrk completed. Writes bench-results/peer.md and .json.
"""

from __future__ import annotations

import os
import statistics
from collections.abc import Mapping
from datetime import UTC, datetime

from bench.scenarios import read_requests
from bench.session import Bench, publish, summarize, with_bench
from bench.settings import UNBOUNDED_LIMITS, BenchSettings
from bench.wrk import WrkResult
from harness.services import RedisServer

PEER = "peer"
ROWS = (
    (PEER, "FastAPI + uvicorn (uvloop, httptools), psycopg async pool, with art"),
    ("flask", "bare Flask + gunicorn gthread + psycopg pool, with art"),
    ("saypi_off", "SayPI, rate limits off"),
    ("saypi_redis", "SayPI, rate limits on, state in Redis (leases)"),
    ("saypi_pg", "SayPI, rate limits on, state in PostgreSQL (the default without Redis)"),
)
COMPARED = 20  # requests whose bodies every row must answer exactly as the peer does


class BodiesDiffer(RuntimeError):
    pass


def row_servers(redis_url: str) -> dict[str, tuple[str, dict[str, str]]]:
    """Each row's server kind (peer, read, saypi) and its settings."""
    return {
        PEER: ("peer", {}),
        "flask": ("read", {}),
        "saypi_off": ("saypi", {}),
        "saypi_redis": ("saypi", {**UNBOUNDED_LIMITS, "REDIS_URL": redis_url}),
        "saypi_pg": ("saypi", UNBOUNDED_LIMITS),
    }


def check_same_bodies(servers: dict, requests: list[tuple[str, str, str, str]]) -> int:
    """Every row answers every compared request with the peer's status and body bytes."""
    compared = 0
    for _method, target, token, _body in requests[:COMPARED]:
        headers = {"Authorization": f"Bearer {token}", "Accept": "application/json"}
        expected = servers[PEER].get(target, headers)
        if expected[0] != 200:
            raise BodiesDiffer(f"the peer answered {expected[0]} to GET {target}")
        for key, server in servers.items():
            got = server.get(target, headers)
            if got != expected:
                raise BodiesDiffer(
                    f"{key} and the peer answer GET {target} differently: {got[0]} "
                    f"{len(got[1])} bytes vs {expected[0]} {len(expected[1])} bytes; first "
                    f"difference at byte {_first_difference(got[1], expected[1])}")
        compared += 1
    return compared


def _first_difference(a: bytes, b: bytes) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y),
                min(len(a), len(b)))


def measure_rows(bench: Bench) -> dict:
    s = bench.settings
    redis = RedisServer().start()
    try:
        plan = row_servers(redis.url)
        servers = {key: bench.start(kind, extra=extra) for key, (kind, extra) in plan.items()}
        requests = read_requests(bench.files["get"])
        compared = check_same_bodies(servers, requests)
        size = len(servers[PEER].get(requests[0][1], {
            "Authorization": f"Bearer {requests[0][2]}"})[1])
        bench.say(f"peer: {len(servers)} servers answer {compared} GETs with the same "
                  f"bytes ({size} bytes the first)")
        bench.extra_roots[redis.process.pid] = "redis"
        for server in servers.values():
            bench.measure(server, "get", s.warmup_seconds)
        collected: dict[str, list[WrkResult]] = {key: [] for key in servers}
        for run in range(s.runs):
            for key, server in servers.items():
                result = bench.measure(server, "get", s.seconds)
                collected[key].append(result)
                app_us = _app_us(result)
                bench.say(f"  {key:<12} run {run + 1}/{s.runs}: {result.rps:8.1f} req/s  "
                          f"p99 {result.latency_ms['p99']:6.2f} ms  app CPU "
                          f"{app_us:6.1f} us/req  errors {result.failed}")
        for server in servers.values():
            bench.stop(server)
    finally:
        bench.extra_roots.clear()
        redis.stop()
    cpus = os.cpu_count() or 1
    rows = {}
    for key, title in ROWS:
        runs = collected[key]
        summary = summarize(runs, cpus)
        rows[key] = {"title": title,
                     **{k: summary[k] for k in ("rps", "p50_ms", "p99_ms", "errors",
                                                "foreign_cpu_pct", "worker_balance")},
                     "runs_rps": [round(r.rps, 1) for r in runs],
                     "app_cpu_us_per_request": round(statistics.median(
                         _app_us(r) for r in runs), 1),
                     "postgres_cpu_us_per_request": summary["cpu_us_per_request"]["postgres"]}
    peer_rps, flask_rps = rows[PEER]["rps"], rows["flask"]["rps"]
    for row in rows.values():
        row["x_peer"] = round(row["rps"] / peer_rps, 3) if peer_rps else None
        row["x_flask"] = round(row["rps"] / flask_rps, 3) if flask_rps else None
    return {"rows": rows, "same_bytes": {"compared": compared, "response_bytes": size},
            "threads": bench.effective_config().threads}


def _app_us(result: WrkResult) -> float:
    cpu = result.cpu_seconds.get("app_user", 0.0) + result.cpu_seconds.get("app_system", 0.0)
    return 1e6 * cpu / result.requests if result.requests else 0.0


def markdown(data: dict) -> str:
    s = data["bench_settings"]
    lines = [
        "# SayPI beside the async peer: GET /conversations/{id} (10 lines, with art)",
        "",
        f"{data['generated_at']}; wrk -c{s['connections']} -t{s['wrk_threads']}, "
        f"{s['runs']} x {s['seconds']} s per row, interleaved, medians; every server 2 "
        f"workers (SayPI and Flask x {data.get('threads', 8)} threads); every row's body "
        f"identical to the peer's "
        f"for {data['same_bytes']['compared']} requests "
        f"({data['same_bytes']['response_bytes']} bytes the first).",
        "",
        "| server | req/s | runs | p99 ms | app CPU us/req | x peer | x Flask |",
        "|---|---:|---|---:|---:|---:|---:|",
    ]
    for row in data["rows"].values():
        runs = ", ".join(f"{v:,.0f}" for v in row["runs_rps"])
        lines.append(f"| {row['title']} | {row['rps']:,.0f} | {runs} | {row['p99_ms']} | "
                     f"{row['app_cpu_us_per_request']} | {row['x_peer']} | {row['x_flask']} |")
    lines.append("")
    return "\n".join(lines)


def peer(env: Mapping[str, str]) -> int:
    settings = BenchSettings.from_env(env)

    def measure(bench: Bench) -> int:
        try:
            data = measure_rows(bench)
        except BodiesDiffer as exc:
            print(f"bench peer: not reported, the bodies differ: {exc}")
            return 1
        data["generated_at"] = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        data["bench_settings"] = settings.as_dict()
        return publish("peer", data, markdown(data))

    return with_bench(env, settings, measure)
